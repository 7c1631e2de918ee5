"""train.py: the training loop of pretrain.py and finetune.py (imported, never run), and what it
needs: Adafactor (T5X's), the lr schedule, checkpoints (the one loader, exact resume), device, dtype
and DDP set-up, held-out evaluation, the log line's MFU, and last, marked off, the CPU speed-up.

Reading order: ..., tasks.py, config.py, train.py (here), pretrain.py, ... Next: pretrain.py.
"""
import ctypes, functools, json, math, os, random, re, time
from collections import defaultdict
from contextlib import nullcontext, suppress
from dataclasses import asdict, dataclass, fields
from datetime import timedelta
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from config import UserError, atomic_write, check_choice, check_range, parse

@dataclass
class TrainConfig:
    """The settings the loop reads; pretrain.py and finetune.py subclass it with their own."""
    out_dir: str = ""              # ckpt_last.pt, ckpt_best.pt, log.jsonl ("" = out/<task>)
    overwrite: bool = False        # a scratch run may replace the run in out_dir (else: refused)
    seed: int = 0                  # model init, dropout and the data order
    src_len: int = 64              # inputs longer than this are cut
    tgt_len: int = 64              # targets too
    lr: float = 0.01               # peak learning rate (Adafactor's relative step size)
    lr_schedule: str = "rsqrt"     # "rsqrt": lr * sqrt(warmup / max(step, warmup)); "constant"
    warmup_steps: int = 1000       # rsqrt: steps at the flat peak before the decay
    max_steps: int = 3000          # optimizer steps
    batch_size: int = 32           # examples per optimizer step, over all processes and micro-steps
    micro_batch_size: int = 0      # examples per forward and process (0 = batch_size / processes)
    z_loss: float = 0.0            # T5X's z-loss coefficient
    eval_interval: int = 500       # steps between held-out evaluations
    eval_batches: int = 4          # held-out batches of batch_size examples per evaluation
    eval_at_start: bool = True     # also evaluate at step 0
    log_interval: int = 100        # steps between log lines
    ckpt_interval: int = 500       # steps between ckpt_last.pt writes
    device: str = "auto"           # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    dtype: str = "auto"            # auto (CUDA: bfloat16, CPU: float32), bfloat16, float32, float16
    compile: bool = False          # torch.compile the training forward (not eval nor checkpoints)
    threads: int = 1               # CPU threads (torch.set_num_threads), 0 = torch's default

def micro_batch(cfg: TrainConfig, world: int = 1) -> int:
    """Examples per forward and process: micro_batch_size, or for 0 the whole share of the batch."""
    return cfg.micro_batch_size or cfg.batch_size // world

RUN_FILES = ("ckpt_last.pt", "ckpt_best.pt", "log.jsonl", "result.json")   # what a run leaves

def check_train_config(cfg: TrainConfig, world: int = 1, resume: bool = False) -> None:
    """The loop's settings, checked before any work (a fresh run must not replace another)."""
    found = [f for f in RUN_FILES if os.path.exists(os.path.join(cfg.out_dir, f))]
    if found and not resume and not cfg.overwrite:
        raise UserError(f"--out_dir={cfg.out_dir} holds a run ({', '.join(found)}): continue it "
                        "with --init=resume, replace it with --overwrite=True, or pick another")
    check_choice("lr_schedule", cfg.lr_schedule, ("rsqrt", "constant"))
    check_choice("dtype", cfg.dtype, ("auto", "bfloat16", "float32", "float16"))
    for name in ("max_steps", "batch_size", "warmup_steps", "eval_interval", "eval_batches",
                 "log_interval", "ckpt_interval", "src_len", "tgt_len"):
        check_range(name, getattr(cfg, name), lo=1)
    for name in ("micro_batch_size", "z_loss", "threads"):
        check_range(name, getattr(cfg, name), lo=0)
    if not 0 < cfg.lr <= 1:
        raise UserError(f"--lr={cfg.lr} must be in (0, 1]")
    if (micro := micro_batch(cfg, world)) < 1 or cfg.batch_size % (micro * world):
        raise UserError(f"--batch_size={cfg.batch_size} is not divisible by micro_batch_size "
                        f"{micro} x {world} process(es)")

# ----------------------------------------------------------------------------- optimizer, schedule
class Adafactor(torch.optim.Optimizer):
    """Adafactor as T5X pre-trains with it (Shazeer & Stern 2018): no momentum; second moments
    decay with beta2_t = 1 - t^-0.8 and are factored, V ~ outer(R, C) / mean(R), when the last two
    dims are both >= 128; u = g / sqrt(V) is clipped to RMS <= 1 and scaled by
    lr * max(RMS(param), 1e-3): `lr` is a relative step size. Tensors of one shape and step are
    updated as one stack: a few ops per distinct shape, not per tensor."""

    def __init__(self, params, lr=0.01):                   # T5X's constants are written below
        super().__init__(params, dict(lr=lr))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            batches = defaultdict(list)                    # (shape, dtype, device, step) -> tensors
            for p in (p for p in group["params"] if p.grad is not None):
                s, f32 = self.state[p], dict(dtype=torch.float32)
                if not s and p.dim() >= 2 and min(p.shape[-2:]) >= 128:
                    s.update(v_row=p.new_zeros(p.shape[:-1], **f32),    # factored: row and
                             v_col=p.new_zeros(p.shape[:-2] + p.shape[-1:], **f32))  # column means
                elif not s:
                    s["v"] = torch.zeros_like(p, **f32)
                s["step"] = s.get("step", 0) + 1
                batches[(p.shape, p.dtype, p.device, s["step"])].append(p)
            for ps in batches.values():
                self._update(ps, group["lr"])

    def _update(self, ps, lr):
        states = [self.state[p] for p in ps]
        beta2 = 1.0 - states[0]["step"] ** -0.8
        g = torch.stack([p.grad for p in ps]).float()      # [k, *shape]
        g2 = g.square().add_(1e-30)
        def decay(key, new):                               # the moving average, k tensors at once
            v = torch.stack([s[key] for s in states]).mul_(beta2).add_(new, alpha=1 - beta2)
            torch._foreach_copy_([s[key] for s in states], list(v.unbind(0)))
            return v
        if "v_row" in states[0]:   # 1/sqrt(V), V = R C^T / mean(R): [k, .., m, 1] x [k, .., 1, n]
            r, c = decay("v_row", g2.mean(-1)), decay("v_col", g2.mean(-2))
            u = g * (r / r.mean(-1, keepdim=True)).rsqrt().unsqueeze(-1) * c.rsqrt().unsqueeze(-2)
        else:
            u = g * decay("v", g2).rsqrt()
        per_tensor = (len(ps),) + (1,) * ps[0].dim()       # a scalar per tensor, broadcast over it
        rms_u = u.flatten(1).square().mean(1).sqrt().view(per_tensor)
        rms_p = torch.stack(torch._foreach_norm(ps)).float() / math.sqrt(ps[0].numel())
        scale = lr * rms_p.view(per_tensor).clamp(min=1e-3) / rms_u.clamp(min=1.0)   # RMS(u) <= 1
        torch._foreach_sub_(ps, list((u * scale).to(ps[0].dtype).unbind(0)))

def get_lr(step: int, cfg: TrainConfig) -> float:
    """The lr of step `step` (0-based). T5's "rsqrt_decay": cfg.lr for warmup_steps, then ∝
    1/sqrt(step): lr 0.01 with warmup 10000 is 1/sqrt(max(step, 10000)). Or "constant"."""
    rsqrt = cfg.lr_schedule == "rsqrt"
    return cfg.lr * (math.sqrt(cfg.warmup_steps / max(step, cfg.warmup_steps)) if rsqrt else 1.0)

# ----------------------------------------------------------------------------- checkpoints
def load_checkpoint(path: str) -> dict:
    """The project's one checkpoint loader: a dict with at least "model" and "model_config"."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint {path} does not exist (train first, or see --out_dir/--init)")
    if os.path.getsize(path) == 0:
        raise UserError(f"checkpoint {path} is empty")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:       # truncated, random bytes, a foreign pickle: say so, not torch's
        why = str(e).partition("WeightsUnpickler error:")[2] or str(e)   # advice to load unsafely
        why = re.split(r"\.\s|\n", why.strip())[0]
        raise UserError(f"checkpoint {path} is not a torch checkpoint (unreadable: "
                        f"{type(e).__name__}: {why})") from None
    if missing := {"model", "model_config"} - set(ckpt if isinstance(ckpt, dict) else ()):
        raise UserError(f"checkpoint {path} lacks {sorted(missing)}: not one of this project's")
    return ckpt

def parse_run(cls, argv, recipe, doc: str, same_run) -> tuple:
    """config.parse for pretrain.py and finetune.py: the preset's values (recipe(settings)), or on
    --init=resume those saved in out_dir (default out/<task>)/ckpt_last.pt, then the command line,
    which may not change a `same_run` key of a resume. Returns (settings, checkpoint or None)."""
    ckpt = {}
    def presets(c):
        out_dir = c.out_dir or f"out/{c.task}"
        if c.init != "resume":
            return dict(recipe(c), out_dir=out_dir)
        ckpt.update(load_checkpoint(path := os.path.join(out_dir, "ckpt_last.pt")))
        if "config" not in ckpt:
            raise UserError(f"{path} holds no settings: train() did not write it")
        known = {f.name for f in fields(cls)}
        return {k: v for k, v in ckpt["config"].items() if k in known} | dict(out_dir=out_dir)
    cfg = parse(cls, argv, presets, doc)
    for k in same_run if ckpt else ():                     # a resume continues the same run
        if getattr(cfg, k) != ckpt["config"].get(k):
            raise UserError(f"--{k}={getattr(cfg, k)!r}, but {cfg.out_dir}/ckpt_last.pt was "
                            f"trained with {k}={ckpt['config'].get(k)!r}: a resume is the same run")
    return cfg, ckpt or None

# ----------------------------------------------------------------------------- runtime: device, DDP
def setup_runtime(cfg: TrainConfig) -> SimpleNamespace:
    """Process group (when launched by torchrun), device, threads, autocast context, GradScaler."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    device = cfg.device if cfg.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    try:
        kind = torch.device(device).type
    except RuntimeError:
        raise UserError(f"--device={cfg.device!r} is not one: auto, cpu, cuda or cuda:N") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device={cfg.device} but CUDA is not available; use --device=cpu")
    if cfg.dtype == "float16" and kind != "cuda":
        raise UserError("--dtype=float16 needs CUDA (it goes with a GradScaler); on CPU: float32")
    if world > 1 and kind == "cuda":
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"   # one GPU per process
        torch.cuda.set_device(device)
    if world > 1 and not dist.is_initialized():            # long timeout: rank 0 evaluates alone
        dist.init_process_group("nccl" if kind == "cuda" else "gloo", timeout=timedelta(hours=2))
    if kind == "cpu":      # 1 thread by default: on a busy CPU a 2nd waits (145 vs 750 ms/step)
        keep_freed_memory()                                # see the end of this file
        torch.set_num_threads(cfg.threads or torch.get_num_threads())   # 0: left as it is
    else:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.dtype == "float16")   # T5 overflows fp16
    return SimpleNamespace(world=world, rank=rank, master=rank == 0, device=device, scaler=scaler,
                           device_type=kind, ctx=autocast(kind, cfg.dtype))   # (else: no-op)

def amp_dtype(device_type: str, dtype: str) -> str:
    """--dtype, "auto" resolved: bfloat16 on CUDA, float32 on CPUs (bf16 emulated: ~45x slower)."""
    return dtype if dtype != "auto" else "bfloat16" if device_type == "cuda" else "float32"

def autocast(device_type: str, dtype: str):
    """The mixed-precision context of --dtype: autocast to bf16/fp16, none for float32."""
    amp = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(amp_dtype(device_type, dtype))
    return torch.autocast(device_type, amp) if amp else nullcontext()

def shape_batch(batch: dict, full=None) -> dict:
    """Drop all-padding columns (right padding is masked and T5's positions are relative: only
    the cost changes), or with full=(src_len, tgt_len) pad to fixed shapes, as compile wants."""
    mask, labels = batch["attention_mask"], batch["labels"]
    s, t = full or (int(mask.sum(1).max()), int((labels != -100).sum(1).max()))
    def fit(x, n, v):
        return torch.nn.functional.pad(x[:, :n], (0, max(0, n - x.shape[1])), value=v)
    return dict(input_ids=fit(batch["input_ids"], s, 0), attention_mask=fit(mask, s, 0),
                labels=fit(labels, t, -100))

# ----------------------------------------------------------------------------- the training loop
def train(cfg: TrainConfig, model, train_data, eval_fn, *, resume=None, log_extra=None) -> dict:
    """Train a model.T5 for cfg.max_steps steps. train_data: next_batch(n) (collate's dict: every
    rank draws the global batch, keeps rows rank::world), state_dict(), load_state_dict(s).
    eval_fn(model, step) -> metrics with "token_acc" (rank 0; ckpt_best.pt keeps the best). resume:
    a checkpoint to continue exactly; log_extra: fields for every log.jsonl line. Returns
    dict(step, losses, metrics (the last), best_token_acc, best_step, rank)."""
    rt = setup_runtime(cfg)
    check_train_config(cfg, rt.world, resume is not None)
    run = _start(cfg, rt, model, train_data, resume)
    def log(rec: dict, line: str):                         # rank 0: the console and log.jsonl
        if rt.master:
            tqdm.write(line)
            with open(os.path.join(cfg.out_dir, "log.jsonl"), "a") as f:
                print(json.dumps(rec | (log_extra or {})), file=f)
    run.log = log
    peak = peak_flops(rt.device, getattr(torch, amp_dtype(rt.device_type, cfg.dtype)),   # for MFU
                      4096 if rt.device_type == "cuda" else 1024) if rt.master else 1.0
    meter = np.zeros(5)                                    # seconds, steps, loss, tokens, FLOPs
    with tqdm(total=cfg.max_steps, initial=run.step, disable=not rt.master, desc="train") as bar:
        while _evaluate_and_save(run, eval_fn):            # False at max_steps
            t0 = time.perf_counter()
            lr, loss, grad_norm, tokens, flops = _optimizer_step(run)
            meter += (time.perf_counter() - t0, 1, loss, tokens, flops)   # training time only
            bar.update(1)
            if run.step % cfg.log_interval and run.step < cfg.max_steps:
                continue
            (dt, n, loss, tokens, flops), meter = meter, np.zeros(5)   # averages over the interval
            ms, tok_s, mfu = 1000 * dt / n, tokens * rt.world / dt, flops / dt / peak
            line = (f"step {run.step:>6} | loss {loss / n:.4f} | lr {lr:.2e} | grad_norm "
                    f"{grad_norm:.3f} | {ms:.0f} ms/step | {tok_s:,.0f} tok/s | MFU {mfu:.2%}")
            log(dict(step=run.step, loss=loss / n, lr=lr, grad_norm=grad_norm, ms_per_step=ms,
                     tok_per_s=tok_s, mfu=mfu), line)
    if rt.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return dict(step=run.step, losses=run.losses, metrics=run.metrics, rank=rt.rank,
                best_token_acc=run.best_token_acc, best_step=run.best_step)

def _start(cfg, rt, model, data, resume) -> SimpleNamespace:
    """The run: model, optimizer and data, fresh or resumed exactly, and the training forward."""
    raw = model.to(rt.device).train()                      # evaluated, saved: not compiled/wrapped
    opt = Adafactor(raw.parameters(), lr=cfg.lr)
    run = SimpleNamespace(cfg=cfg, rt=rt, raw=raw, optimizer=opt, data=data, step=0, losses=[],
                          best_token_acc=-1.0, best_step=-1, saved_step=None, metrics={},
                          last_path=os.path.join(cfg.out_dir, "ckpt_last.pt"))
    torch.manual_seed(cfg.seed + rt.rank)                  # dropout stream, distinct per rank
    os.makedirs(cfg.out_dir, exist_ok=True)
    if resume is not None:                                 # weights, moments, data position, RNGs
        keys = ("optimizer", "step", "rng", "data", "best_token_acc", "best_step")
        if missing := [k for k in keys if k not in resume]:
            raise UserError(f"the checkpoint to resume lacks {missing}: it is not train()'s")
        for part, key in ((raw, "model"), (opt, "optimizer"), (data, "data")):
            part.load_state_dict(resume[key])
        if resume.get("scaler"):                           # float16's (if disabled: ignored)
            rt.scaler.load_state_dict(resume["scaler"])
        run.step = run.saved_step = resume["step"]
        run.best_token_acc, run.best_step = resume["best_token_acc"], resume["best_step"]
        if len(resume["rng"]) != rt.world:                 # another world size: new dropout streams
            torch.manual_seed(cfg.seed + 1000 * run.step + rt.rank)
        else:
            rng = resume["rng"][rt.rank]
            torch.set_rng_state(rng["torch"])
            random.setstate(rng["python"])
            if rng["cuda"] is not None:
                torch.cuda.set_rng_state(rng["cuda"])
    elif rt.master:                                        # --overwrite: no old file outlives it
        for f in set(RUN_FILES) & set(os.listdir(cfg.out_dir)):
            os.remove(os.path.join(cfg.out_dir, f))
    run.start, run.micro = run.step, micro_batch(cfg, rt.world)
    run.ddp = DDP(raw) if rt.world > 1 else None           # its inputs are on its device already
    run.fwd = torch.compile(run.ddp or raw) if cfg.compile else (run.ddp or raw)
    run.full = (cfg.src_len, cfg.tgt_len) if cfg.compile else None   # fixed shapes: no recompiles
    return run

def _evaluate_and_save(run, eval_fn) -> bool:
    """Where the step calls for it, evaluate (rank 0) and save the run's whole state, every rank's
    RNGs too, to ckpt_last.pt and, if token accuracy improved, ckpt_best.pt. False at the end."""
    cfg, rt, step, last = run.cfg, run.rt, run.step, run.step == run.cfg.max_steps
    is_eval = last or (step % cfg.eval_interval == 0 and (step > run.start or cfg.eval_at_start))
    is_ckpt = last or (step % cfg.ckpt_interval == 0 and step > run.start)
    if not (is_eval or is_ckpt):
        return True
    improved = False
    if is_eval and rt.master:
        with rt.ctx:
            run.metrics = eval_fn(run.raw.eval(), step)
        run.raw.train()
        run.log({"step": step} | {f"val_{k}": v for k, v in run.metrics.items()},
                f"eval step {step}: " + " | ".join(f"{k} {v:.4f}" for k, v in run.metrics.items()))
        if improved := run.metrics["token_acc"] > run.best_token_acc:   # the paper keeps the best
            run.best_token_acc, run.best_step = run.metrics["token_acc"], step
    rng = dict(torch=torch.get_rng_state(), python=random.getstate(),   # Python's: a fork's data
               cuda=torch.cuda.get_rng_state() if rt.device_type == "cuda" else None)
    rngs = [rng] * rt.world
    if rt.world > 1:
        dist.all_gather_object(rngs, rng)                  # all ranks take part
    if rt.master and (is_ckpt or improved):
        ckpt = dict(model=run.raw.state_dict(), optimizer=run.optimizer.state_dict(), rng=rngs,
                    scaler=rt.scaler.state_dict(), step=step, config=asdict(cfg),
                    model_config=asdict(run.raw.config), data=run.data.state_dict(),
                    best_token_acc=run.best_token_acc, best_step=run.best_step)
        for path in [run.last_path] + [os.path.join(cfg.out_dir, "ckpt_best.pt")] * improved:
            atomic_write(path, lambda tmp: torch.save(ckpt, tmp))   # last: the newest good state
        run.saved_step = step
    return not last

def _optimizer_step(run) -> tuple:
    """One optimizer step on a global batch; rank r keeps examples r::world, in micro-batches.
    Returns lr, loss, grad norm, and the tokens and matmul FLOPs of this process."""
    cfg, rt, micro = run.cfg, run.rt, run.micro
    accum, lr = cfg.batch_size // (micro * rt.world), get_lr(run.step, cfg)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    batch = run.data.next_batch(cfg.batch_size)
    n_target = int((batch["labels"] != -100).sum())        # loss: mean over the global batch's
    step_loss, tokens, flops = torch.zeros((), device=rt.device), 0, 0.0
    for i in range(accum):
        mb = {k: v[rt.rank::rt.world][i * micro:(i + 1) * micro] for k, v in batch.items()}
        mb = {k: v.to(rt.device, non_blocking=True) for k, v in shape_batch(mb, run.full).items()}
        n_micro = int((mb["labels"] != -100).sum())
        sync = run.ddp is None or i == accum - 1           # gradients all-reduce on the last one
        with (nullcontext() if sync else run.ddp.no_sync()), rt.ctx:   # this micro-batch's share:
            loss = run.fwd(**mb, z_loss=cfg.z_loss)[1].float() * (n_micro / n_target)
        rt.scaler.scale(loss * rt.world).backward()        # x world: DDP averages over the ranks
        step_loss += loss.detach()
        tokens += int(mb["attention_mask"].sum()) + n_micro
        (rows, s), t = mb["input_ids"].shape, mb["labels"].shape[1]   # forward + 2x for backward:
        flops += 3 * run.raw.flops_per_token(s, t) * rows * t
    if rt.world > 1:
        dist.all_reduce(step_loss)                         # all ranks see the global loss, any NaN
    loss = step_loss.item()
    rt.scaler.unscale_(run.optimizer)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.raw.parameters(), math.inf))  # only logged
    # stop before a NaN/inf step touches the weights (fp16 may see inf gradients: the scaler skips)
    if not math.isfinite(loss) or not (math.isfinite(grad_norm) or rt.scaler.is_enabled()):
        good = run.saved_step is not None and f"{run.last_path} (step {run.saved_step}), untouched"
        raise FloatingPointError(f"loss is {loss} (grad norm {grad_norm}) at step {run.step + 1}: "
                                 f"stopping. Last good checkpoint: {good or 'none yet'}; try a "
                                 "lower --lr or --dtype=float32.")
    rt.scaler.step(run.optimizer)
    rt.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    run.step += 1
    run.losses.append(loss)
    return lr, loss, grad_norm, tokens, flops

# Dense bf16 tensor-core peaks (FLOP/s) from the datasheets; float32 runs use TF32 at half of these.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}
@functools.cache  # measured once per process
def peak_flops(device, dtype=torch.bfloat16, n=4096, reps=5) -> float:
    """MFU's denominator: a known GPU's datasheet peak, else the best FLOP/s of `reps` square
    matmuls (a busy moment cannot inflate the MFU; torch.full leaves the RNG alone), their size
    doubled from 256 up to n while one takes under 50 ms: an emulated dtype costs seconds."""
    name = torch.cuda.get_device_name(device) if torch.device(device).type == "cuda" else ""
    if peak := next((p for key, p in PEAK_FLOPS.items() if key in name), None):
        return peak / 2 if dtype == torch.float32 else peak
    def seconds(a):
        t0 = time.perf_counter()
        (a @ a).sum().item()                               # .item() waits for a GPU too
        return time.perf_counter() - t0
    size = 256                                             # the first timing of a size: warm-up
    while seconds(a := torch.full((size, size), 0.5, dtype=dtype, device=device)) <= 0.05 \
            and size < n:
        size *= 2
    return 2 * size ** 3 / min(seconds(a) for _ in range(reps))

# ----------------------------------------------------------------------------- held-out evaluation
@torch.no_grad()
def evaluate(model, batches, *, max_new_tokens: int, decode=None, show: int = 3,
             greedy: bool = True) -> dict:
    """Teacher-forced token accuracy (the paper's checkpoint-selection metric), loss and greedy
    exact match (greedy=False: none) of held-out batches; prints the first `show` mistakes."""
    decode = decode or (lambda ids: " ".join(str(i) for i in ids if i))   # None: ids, but pad (0)
    device, eos = next(model.parameters()).device, model.config.eos_token_id
    n_tok, n_right, n_ex, n_exact, loss_sum = 0, 0, 0, 0, 0.0
    for b in batches:
        b = {k: v.to(device) for k, v in shape_batch(b).items()}
        logits, loss = model(**b)
        mask = b["labels"] != -100
        n_right += int(((logits.argmax(-1) == b["labels"]) & mask).sum())
        n_tok, loss_sum = n_tok + int(mask.sum()), loss_sum + float(loss) * int(mask.sum())
        if not greedy:
            continue
        out = model.generate(b["input_ids"], b["attention_mask"], max_new_tokens=max_new_tokens)
        for i, row in enumerate(out.tolist()):
            pred = row[:row.index(eos) + 1] if eos in row else row   # up to and including EOS
            want = b["labels"][i][mask[i]].tolist()
            n_ex, n_exact = n_ex + 1, n_exact + (pred == want)
            if pred != want and n_ex - n_exact <= show:
                src = b["input_ids"][i][b["attention_mask"][i].bool()].tolist()
                tqdm.write(f"  source: {decode(src)[:150]}\n  target: {decode(want)[:150]}\n"
                           f"  output: {decode(pred)[:150] or '-'}")
    out = dict(loss=loss_sum / max(n_tok, 1), token_acc=n_right / max(n_tok, 1))
    return dict(out, exact_match=n_exact / max(n_ex, 1)) if greedy else out

# ============================================================================= CPU only
def keep_freed_memory() -> None:
    """The one CPU-only speed-up (setup_runtime calls it; delete both to go without): glibc keeps
    freed memory. Else each activation above malloc's mmap threshold is a fresh mmap, zero-filled on
    first touch (~0.3 s/step for [2048, 32128] float32 logits); CPU MTOP cell: 0.72x the time."""
    with suppress(OSError):                                # no glibc: nothing to tune
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-4, 0)                                # M_MMAP_MAX (glibc's malloc.h): no mmap
        libc.mallopt(-1, -1)                               # M_TRIM_THRESHOLD: never give back
