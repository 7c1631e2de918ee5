"""bench.py: the training-step speed of model.py's T5, optionally against HF's T5: the median
forward + backward + AdamW step per precision of --modes (bf16: autocast), eager and compiled, as
target tokens/s and MFU (peak: a known GPU's datasheet, else a measured matmul, as in train.py).
    python bench.py --model=tiny --batch=4 --src_len=32 --tgt_len=32 --steps=2 --modes=bf16
    python bench.py --device=cuda --model=t5-small --batch=128 --src_len=512 --tgt_len=512
Reading order: ..., reproduce.py, bench.py (here), data.py. Next: data.py.
"""
import time
from dataclasses import asdict, dataclass
from statistics import median_high  # the upper median: robust to one slow step

import torch

import config
from model import T5, get_config, hf_names
from train import TrainConfig, peak_flops, setup_runtime

MODES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # --modes: precision -> matmul dtype

@dataclass
class BenchConfig:
    model: str = "t5-v1_1-small"   # a model.PRESETS name
    device: str = "cpu"            # cpu, cuda or cuda:N
    batch: int = 16                # sequences per training step
    src_len: int = 128             # input tokens per sequence
    tgt_len: int = 128             # target tokens per sequence
    steps: int = 5                 # timed steps (the median is reported)
    modes: str = "fp32,bf16"       # precisions: fp32 and/or bf16 (autocast)
    compile: bool = True           # also time the torch.compile'd models
    compare_hf: bool = False       # also time transformers' T5 (needs transformers installed)

def time_steps(models: list, batch: dict, bf16: bool, compiled: bool, n: int) -> list:
    """n timings (s) of a training step of each model (ours, HF), after 1 warm-up (compiled: 2)."""
    fwds = [torch.compile(m) if compiled else m for m in models]
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-4, fused=True) for m in models]
    times, dev = [[] for _ in models], batch["labels"].device
    for i in range(1 + compiled + n):  # in turns of alternating order: a burst hits all alike
        for j in range(len(models))[::1 if i % 2 == 0 else -1]:
            t = time.perf_counter()
            with torch.autocast(dev.type, torch.bfloat16, enabled=bf16):
                out = fwds[j](**batch)
            (out[1] if isinstance(models[j], T5) else out.loss).backward()
            opts[j].step()
            opts[j].zero_grad(set_to_none=True)
            if dev.type == "cuda":  # GPUs run asynchronously
                torch.cuda.synchronize(dev)
            times[j].append(time.perf_counter() - t)
    return [t[1 + compiled:] for t in times]  # the warm-up left out

def hf_model(model: T5):
    """transformers' T5ForConditionalGeneration with `model`'s config and weights (and logits)."""
    try:
        import transformers
    except ImportError:
        raise config.UserError("--compare_hf=True needs the transformers package") from None
    hf_cfg = transformers.T5Config(**asdict(model.config), is_encoder_decoder=True)
    hf_cfg.tie_word_embeddings = model.config.tie_word_embeddings  # transformers 5 forces True
    ref = transformers.T5ForConditionalGeneration(hf_cfg).to(model.shared.weight.device).train()
    ref.set_input_embeddings(ref.shared)  # re-tie both stacks' embeddings, which that untied
    names = hf_names(model.config)
    ref.load_state_dict({names[k]: v for k, v in model.state_dict().items()}, strict=False)
    return ref

def main(argv: list[str]) -> list[dict]:
    """Time the steps, print a table; returns its rows (dicts: the columns, hf_over_ours on HF)."""
    cfg = config.parse(BenchConfig, argv, doc=__doc__)
    for m in (modes := cfg.modes.split(",")):
        config.check_choice("modes", m, MODES)
    dev = setup_runtime(TrainConfig(device=cfg.device, threads=0)).device  # checks, TF32
    model = T5(get_config(cfg.model)).to(dev).train()
    src, tgt = (torch.randint(3, model.config.vocab_size, (cfg.batch, n)).to(dev)
                for n in (cfg.src_len, cfg.tgt_len))
    batch = dict(input_ids=src, attention_mask=torch.ones_like(src), labels=tgt)
    models = [model, hf_model(model)] if cfg.compare_hf else [model]
    fpt = model.flops_per_token(cfg.src_len, cfg.tgt_len)  # the encoder's work is inside it
    peaks = {m: peak_flops(dev, MODES[m]) for m in modes}
    print(f"{cfg.model}: {model.num_params() / 1e6:.1f}M params, {3 * fpt / 1e6:.0f} MFLOP per "
          "target token; peak TFLOP/s", {m: round(p / 1e12, 2) for m, p in peaks.items()})
    print("| model | mode | ms/step | target tok/s | MFU | HF / ours |\n|---|---|---|---|---|---|")
    rows = []
    for mode, kind in [(m, k) for m in modes for k in ("eager", "compiled")[:1 + cfg.compile]]:
        times = time_steps(models, batch, mode == "bf16", kind == "compiled", cfg.steps)
        for who, t in zip(("ours", "HF"), times):
            tok_s = cfg.batch * cfg.tgt_len / (sec := median_high(t))
            ratio = median_high([b / a for a, b in zip(*times)]) if who == "HF" else None
            rows.append(dict(model=f"{who} {kind}", mode=mode, sec=sec, tok_s=tok_s,
                             hf_over_ours=ratio, mfu=tok_s * fpt * 3 / peaks[mode]))   # 3: fwd+bwd
            print(f"| {who} {kind} | {mode} | {sec * 1e3:.0f} | {tok_s:.0f} | "
                  f"{rows[-1]['mfu']:.1%} | {f'{ratio:.2f}' if ratio else ''} |")
    return rows

if __name__ == "__main__":
    config.main(main)
