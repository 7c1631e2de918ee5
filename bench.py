"""bench.py: the training-step speed of model.py's T5 (tokens/s, MFU), optionally against HF's T5.

Times forward + backward + AdamW steps in each precision of --modes (bf16: autocast), eager and
compiled, after a warm-up: the median step as target tokens/s and MFU (T5.flops_per_token) against
the measured matmul peak and a known GPU's datasheet peak. --compare_hf=True times transformers'
T5 (same config and weights) interleaved with ours: the median over the pairs of HF's time / ours.
    python bench.py --model=tiny --batch=4 --src_len=32 --tgt_len=32 --steps=2 --modes=bf16
    python bench.py --device=cuda --model=t5-small --batch=128 --src_len=512 --tgt_len=512
Reading order: ..., reproduce.py, bench.py (here), data.py. Next: data.py.
"""
import re
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from statistics import median_high  # the upper median: robust to one slow step

import torch

import config
from model import T5, get_config, hf_names
from train import datasheet_peak, estimate_mfu, keep_freed_memory, matmul_peak

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

def train_step(model, batch, bf16: bool, compiled: bool):
    """A closure running one forward + backward + AdamW step of `model` (ours or HF's)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # fused: no loop over params
    fwd, device_type = torch.compile(model) if compiled else model, batch["labels"].device.type
    def step():
        with torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else nullcontext():
            out = fwd(**batch)
        (out[1] if isinstance(model, T5) else out.loss).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return step

def time_steps(steps: list, n: int, warmup: int, device) -> list:
    """n timings (seconds) of each closure in `steps`, in turns whose order alternates, so that a
    neighbour's burst or a clock change on a shared machine hits them all alike."""
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)  # GPUs: async
    for step in steps * warmup:
        step()
    times = [[] for _ in steps]
    for i in range(n):
        for j in range(len(steps))[::1 if i % 2 == 0 else -1]:
            sync()
            t = time.perf_counter()
            steps[j]()
            sync()
            times[j].append(time.perf_counter() - t)
    return times

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
    modes = cfg.modes.split(",")
    for m in modes:
        config.check_choice("modes", m, MODES)
    if not re.fullmatch(r"cpu|cuda(:\d+)?", cfg.device):
        raise config.UserError(f"--device={cfg.device!r} is not a device: cpu, cuda or cuda:N")
    on_gpu = cfg.device.startswith("cuda")
    if on_gpu and not torch.cuda.is_available():
        raise config.UserError(f"--device={cfg.device} but CUDA is not available here")
    if on_gpu:  # float32 matmuls as TF32, as train.py runs them
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    keep_freed_memory()  # glibc keeps freed memory, as train.py on a CPU (no harm on a GPU)
    torch.manual_seed(0)
    model = T5(get_config(cfg.model)).to(cfg.device).train()
    src, tgt = (torch.randint(3, model.config.vocab_size, (cfg.batch, n)).to(cfg.device)
                for n in (cfg.src_len, cfg.tgt_len))
    batch = dict(input_ids=src, attention_mask=torch.ones_like(src), labels=tgt)
    models = [model, hf_model(model)] if cfg.compare_hf else [model]
    fpt = model.flops_per_token(cfg.src_len, cfg.tgt_len)  # the encoder's work is inside it
    peaks = {m: (matmul_peak(MODES[m], cfg.device, n=8192 if on_gpu else 2048, reps=10),
                 datasheet_peak(cfg.device, MODES[m])) for m in modes}
    print(f"{cfg.model}: {model.num_params() / 1e6:.1f}M params, batch {cfg.batch} x ({cfg.src_len}"
          f" + {cfg.tgt_len}), {3 * fpt / 1e6:.0f} MFLOP per target token; measured matmul peak "
          + ", ".join(f"{m} {p / 1e12:.2f}" for m, (p, _) in peaks.items()) + " TFLOP/s")
    print("| model | precision | ms/step | target tok/s | MFU | MFU (datasheet) | HF / ours |\n"
          "|---|---|---|---|---|---|---|")
    rows = []
    for mode in modes:
        for compiled in (False, True) if cfg.compile else (False,):
            steps = [train_step(m, batch, mode == "bf16", compiled) for m in models]
            times = time_steps(steps, cfg.steps, 1 + compiled, cfg.device)  # compiling: 1 more
            for who, t in zip(("ours", "HF"), times):
                sec = median_high(t)
                tok_s = cfg.batch * cfg.tgt_len / sec
                mfu, sheet = (estimate_mfu(tok_s, fpt, p) if p else None for p in peaks[mode])
                ratio = median_high([b / a for a, b in zip(*times)]) if who == "HF" else None
                name = f"{who} {'compiled' if compiled else 'eager'}"
                rows.append(dict(model=name, mode=mode, sec=sec, tok_s=tok_s, mfu=mfu,
                                 mfu_datasheet=sheet, hf_over_ours=ratio))
                print(f"| {name} | {mode} | {sec * 1e3:.0f} | {tok_s:.0f} | {mfu:.1%} | "
                      f"{f'{sheet:.1%}' if sheet else '–'} | {f'{ratio:.2f}' if ratio else ''} |")
    return rows

if __name__ == "__main__":
    config.main(main)
