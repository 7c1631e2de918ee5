"""Speed benchmark of model.py (issue 2): matmul peak, training-step throughput/MFU, decoding throughput.

One run measures, on this machine:
  * the matmul peak in float32 and bfloat16 (best of a few large square matmuls): the MFU denominators;
  * for a preset, batch and lengths, one training step (forward + backward + AdamW step) in float32 and under
    bf16 autocast, eager and torch.compile'd: target tokens/s and MFU (matmul FLOPs, see T5.flops_per_token);
  * greedy and beam-4 decoding with the KV cache: generated tokens/s (EOS disabled, so every row runs the
    full length; beam counts the tokens of the returned beam only);
  * with --compare_hf=True and `transformers` importable: HF T5ForConditionalGeneration with the same config,
    weights and batch, measured in the same process, its steps interleaved with ours, and the median of the
    per-pair ratios (skipped with a message otherwise).
On a GPU (--device=cuda) every timing waits for the GPU to finish (torch.cuda.synchronize), and MFU is also
given against the datasheet peak where model.PEAK_FLOPS knows the card (bf16 dense; float32 as TF32).

Run:  python bench.py                                   # t5-v1_1-small, batch 16, 128 + 128 tokens
      python bench.py --preset=t5-small --batch=8 --compile=False --steps=2
      python bench.py --preset=cpu --batch=4 --src_len=32 --tgt_len=32 --decode_tokens=8   # smoke test
      python bench.py --device=cuda --preset=t5-small --batch=128 --src_len=512 --tgt_len=512 --modes=bf16
Timings on a shared machine are noisy: compare rows of one run, not across runs.
"""
import ast
import sys
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields

import torch

from model import T5, get_config, hf_names
from train import datasheet_peak, estimate_mfu, keep_freed_memory, matmul_peak


MODES = {"fp32": torch.float32, "bf16": torch.bfloat16}  # --modes: precision name -> matmul dtype


@dataclass
class BenchConfig:
    preset: str = "t5-v1_1-small"  # model preset from model.PRESETS
    batch: int = 16  # sequences per training step
    src_len: int = 128  # input tokens per sequence
    tgt_len: int = 128  # target tokens per sequence
    warmup: int = 1  # untimed steps before timing (compiled runs add one more for compilation)
    steps: int = 5  # timed training steps (the median is reported; steps vary by ~5% on a shared machine)
    modes: str = "fp32,bf16"  # which precisions to train in: fp32 and/or bf16 (autocast)
    compile: bool = True  # also time the torch.compile'd model
    decode_batch: int = 16  # sequences per decoding run
    decode_tokens: int = 32  # new tokens per decoded sequence
    compare_hf: bool = False  # also time transformers' T5ForConditionalGeneration (if installed)
    threads: int = 0  # torch threads; 0 keeps torch's default
    device: str = "cpu"  # "cpu", "cuda" or "cuda:N"
    keep_memory: bool = True  # glibc keeps freed memory (model.keep_freed_memory): ~7x faster bf16 steps here
    seed: int = 0


def parse_args(argv) -> BenchConfig:
    cfg, types = BenchConfig(), {f.name: f.type for f in fields(BenchConfig)}
    for arg in argv:
        key, eq, value = arg.removeprefix("--").partition("=")
        if key not in types or not eq:
            raise SystemExit(f"bad argument {arg!r}: use --key=value with key in {', '.join(types)}")
        try:
            v = value if types[key] is str else ast.literal_eval(value)
        except (ValueError, SyntaxError):
            raise SystemExit(f"--{key}: cannot parse {value!r}")
        if type(v) is not types[key]:
            raise SystemExit(f"--{key} must be {types[key].__name__}, got {value!r}")
        setattr(cfg, key, v)
    return cfg


def median(xs):  # the upper median: robust to a neighbour's burst on a shared machine
    return sorted(xs)[len(xs) // 2]


def sync(device):  # a GPU runs asynchronously: wait for it before reading the clock
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device) -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def time_steps(step, warmup, steps, device="cpu") -> float:
    for _ in range(warmup):
        step()
    return median([timed(step, device) for _ in range(steps)])


def train_step(model, batch, bf16, compiled=False, hf=False):
    """A closure running one forward + backward + AdamW step."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # fused: no Python loop over params
    fwd = torch.compile(model) if compiled else model
    autocast = torch.autocast(batch["input_ids"].device.type, dtype=torch.bfloat16) if bf16 else nullcontext()

    def step():
        with autocast:
            out = fwd(**batch)
        loss = out.loss if hf else out[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def bench_train(model, batch, bf16, cfg, compiled=False) -> float:
    """Median seconds of forward + backward + AdamW step."""
    return time_steps(train_step(model, batch, bf16, compiled), cfg.warmup + int(compiled), cfg.steps, cfg.device)


def bench_pair(ours, ref, batch, bf16, cfg, compiled=False):
    """Ours and HF's step, interleaved (who goes first alternates), so that a neighbour's burst or a clock
    change hits both: (our median s, HF median s, median over pairs of HF time / our time)."""
    a = train_step(ours, batch, bf16, compiled)
    b = train_step(ref, batch, bf16, compiled, hf=True)
    for _ in range(cfg.warmup + int(compiled)):
        a(), b()
    ta, tb = [], []
    for i in range(cfg.steps):
        for fn, times in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            times.append(timed(fn, cfg.device))
    return median(ta), median(tb), median([y / x for x, y in zip(ta, tb)])


def bench_decode(model, src, cfg, num_beams) -> float:
    """Generated tokens/s with EOS unreachable, so every row decodes decode_tokens tokens."""
    eos = model.config.eos_token_id
    model.config.eos_token_id = -1
    try:
        sec = time_steps(lambda: model.generate(src, max_new_tokens=cfg.decode_tokens, num_beams=num_beams), 1, 2,
                         cfg.device)
    finally:
        model.config.eos_token_id = eos
    return src.shape[0] * cfg.decode_tokens / sec


def hf_model(model):
    """The same network and weights as a transformers T5ForConditionalGeneration, or None if not installed."""
    try:
        import transformers
    except ImportError:
        print("--compare_hf: transformers is not installed here; skipping the HF rows")
        return None
    c = model.config
    hf_cfg = transformers.T5Config(**asdict(c), is_encoder_decoder=True)
    ref = transformers.T5ForConditionalGeneration(hf_cfg).to(model.shared.weight.device).train()
    names = hf_names(c)
    missing, _ = ref.load_state_dict({names[k]: v for k, v in model.state_dict().items()}, strict=False)
    assert all("embed_tokens" in k or k == "lm_head.weight" for k in missing), missing  # tied aliases only
    return ref


def main(argv=None):
    """Run the benchmark; returns the training rows (name, mode, s/step, tokens/s, MFU, datasheet MFU or None),
    the ours/HF ratios and the decoding rates (greedy, beam-4 tokens/s)."""
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        on_gpu = torch.device(cfg.device).type == "cuda"
    except RuntimeError:
        raise SystemExit(f"--device={cfg.device!r} is not a device: use cpu, cuda or cuda:N")
    bad = [m for m in cfg.modes.split(",") if m not in MODES]
    if bad:
        raise SystemExit(f"--modes: unknown mode {bad[0]!r} (use fp32 and/or bf16)")
    if on_gpu and not torch.cuda.is_available():
        raise SystemExit(f"--device={cfg.device} but CUDA is not available here; use --device=cpu")
    if on_gpu:  # float32 matmuls as TF32, as pretrain.py trains them
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.keep_memory and not keep_freed_memory():
        print("keep_memory: glibc mallopt not available here; continuing with the default allocator")
    torch.manual_seed(cfg.seed)
    mcfg = get_config(cfg.preset)
    model = T5(mcfg).to(cfg.device).train()
    g = torch.Generator().manual_seed(cfg.seed)
    src = torch.randint(3, mcfg.vocab_size, (cfg.batch, cfg.src_len), generator=g).to(cfg.device)
    tgt = torch.randint(3, mcfg.vocab_size, (cfg.batch, cfg.tgt_len), generator=g).to(cfg.device)
    batch = dict(input_ids=src, attention_mask=torch.ones_like(src), labels=tgt)
    fpt = model.flops_per_token(cfg.src_len, cfg.tgt_len)
    tokens = cfg.batch * cfg.tgt_len  # target tokens per step; the encoder's work is inside fpt
    print(f"{cfg.preset}: {model.num_params() / 1e6:.1f}M params, batch {cfg.batch} x ({cfg.src_len} + "
          f"{cfg.tgt_len}), {3 * fpt / 1e6:.0f} MFLOP per target token per training step, "
          f"{torch.cuda.get_device_name(cfg.device) if on_gpu else f'{torch.get_num_threads()} CPU threads'}, "
          f"torch {torch.__version__}")
    peak = {m: matmul_peak(dt, cfg.device, n=8192 if on_gpu else 2048, reps=10) for m, dt in MODES.items()}
    sheet = {m: datasheet_peak(cfg.device, dt) for m, dt in MODES.items()}  # None off known GPUs
    print(f"matmul peak: fp32 {peak['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peak['bf16'] / 1e9:.0f} GFLOP/s" +
          (f"; datasheet fp32 (TF32) {sheet['fp32'] / 1e12:.0f}, bf16 {sheet['bf16'] / 1e12:.0f} TFLOP/s"
           if sheet["bf16"] else ""))

    rows = []  # (name, mode, s/step, tokens/s, MFU vs measured peak, MFU vs datasheet or None)

    def report(name, mode, sec):
        tps = tokens / sec
        mfu = [estimate_mfu(tps, fpt, p) if p else None for p in (peak[mode], sheet[mode])]
        rows.append((name, mode, sec, tps, *mfu))
        print(f"  {name:24s} {mode:5s} {sec * 1e3:9.0f} ms/step {tps:9.0f} tok/s  MFU {mfu[0]:6.1%}" +
              (f" (datasheet {mfu[1]:.1%})" if mfu[1] else ""), flush=True)

    ref = hf_model(model) if cfg.compare_hf else None
    ratios = []  # (eager/compiled, mode, HF time / our time)
    for mode in cfg.modes.split(","):
        for compiled in (False, True) if cfg.compile else (False,):
            kind = "compiled" if compiled else "eager"
            if ref is None:
                report(f"ours {kind}", mode, bench_train(model, batch, mode == "bf16", cfg, compiled))
                continue
            ours_s, hf_s, ratio = bench_pair(model, ref, batch, mode == "bf16", cfg, compiled)
            report(f"ours {kind}", mode, ours_s)
            report(f"HF {kind}", mode, hf_s)
            ratios.append((kind, mode, ratio))
            print(f"  ours / HF, {kind} {mode}: {ratio:.2f}x (median over {cfg.steps} interleaved pairs)", flush=True)

    model.eval()
    dsrc = src[:cfg.decode_batch] if cfg.decode_batch <= cfg.batch else \
        torch.randint(3, mcfg.vocab_size, (cfg.decode_batch, cfg.src_len), generator=g).to(cfg.device)
    greedy, beam = bench_decode(model, dsrc, cfg, 1), bench_decode(model, dsrc, cfg, 4)
    print(f"  decoding fp32, batch {dsrc.shape[0]}, {cfg.decode_tokens} new tokens: greedy {greedy:.0f} tok/s, "
          f"beam-4 {beam:.0f} tok/s")

    print("\n| model | precision | ms/step | target tok/s | MFU | MFU (datasheet) |\n|---|---|---|---|---|---|")
    for name, mode, sec, tps, mfu, mfu_sheet in rows:
        sheet_cell = f"{mfu_sheet:.1%}" if mfu_sheet else "–"
        print(f"| {name} | {mode} | {sec * 1e3:.0f} | {tps:.0f} | {mfu:.1%} | {sheet_cell} |")
    print(f"| decoding greedy / beam-4 | fp32 | | {greedy:.0f} / {beam:.0f} | | |")
    for kind, mode, ratio in ratios:
        print(f"ours / HF, {kind} {mode}: {ratio:.2f}x")
    return rows, ratios, (greedy, beam)


if __name__ == "__main__":
    main()
