"""train.py: the training loop that pretrain.py and finetune.py share, and what it needs.

Adafactor (T5's), the learning-rate schedule, checkpoints (save, the one loader, exact resume), device,
dtype and DDP set-up, held-out evaluation, and the MFU helpers the loop logs with.

Reading order: ... config.py, train.py (here), pretrain.py, finetune.py ... Next: pretrain.py.
"""
import ctypes
import json
import math
import os
import random
import time
from collections import defaultdict
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from datetime import timedelta
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

from config import UserError

CHOICES = dict(optimizer=("adafactor", "adamw"), lr_schedule=("rsqrt", "constant"),
               dtype=("bfloat16", "float32", "float16"))

@dataclass
class TrainConfig:
    """The settings the loop reads; pretrain.py and finetune.py subclass it with their own."""
    out_dir: str = "out"           # ckpt_last.pt, ckpt_best.pt and log.jsonl go here
    seed: int = 0                  # model init, dropout and the data order
    src_len: int = 64              # inputs longer than this are cut
    tgt_len: int = 64              # targets too
    # -- optimisation
    optimizer: str = "adafactor"   # "adafactor" (T5's) or "adamw"
    lr: float = 0.01               # peak learning rate (Adafactor: relative step size)
    lr_schedule: str = "rsqrt"     # "rsqrt": lr * sqrt(warmup / max(step, warmup)), T5's; or "constant"
    warmup_steps: int = 1000       # rsqrt: steps at the flat peak before the decay
    weight_decay: float = 0.0      # AdamW only
    max_steps: int = 3000          # optimizer steps
    batch_size: int = 32           # examples per optimizer step, over all processes and micro-steps
    micro_batch_size: int = 0      # examples per forward (0 = batch_size); the rest is gradient accumulation
    grad_clip: float = 0.0         # global grad-norm clip, 0 = off (Adafactor clips its updates)
    z_loss: float = 0.0            # T5X's z-loss coefficient
    # -- evaluation, logging, checkpoints
    eval_interval: int = 500       # steps between held-out evaluations
    eval_batches: int = 4          # held-out batches of batch_size examples per evaluation
    eval_at_start: bool = True     # also evaluate at step 0
    log_interval: int = 100        # steps between log lines
    ckpt_interval: int = 500       # steps between ckpt_last.pt writes
    # -- system
    device: str = "auto"           # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    dtype: str = "bfloat16"        # autocast dtype: bfloat16, float32, or float16 (CUDA only, GradScaler)
    compile: bool = False          # torch.compile the training forward (eval and checkpoints use the plain one)
    threads: int = 1               # CPU threads (torch.set_num_threads), 0 = torch's default


def check_train_config(cfg, world: int = 1):
    """User-facing checks of the fields train() reads; each error names the valid choices."""
    for name, valid in CHOICES.items():
        if getattr(cfg, name) not in valid:
            raise ValueError(f"--{name}={getattr(cfg, name)!r} is not one of {', '.join(valid)}")
    for name in ("max_steps", "batch_size", "micro_batch_size", "eval_interval", "eval_batches", "log_interval",
                 "ckpt_interval", "src_len", "tgt_len", "warmup_steps"):
        if getattr(cfg, name) < 1:
            raise ValueError(f"--{name} must be >= 1, got {getattr(cfg, name)}")
    if cfg.batch_size % (cfg.micro_batch_size * world):
        raise ValueError(f"batch_size {cfg.batch_size} is not divisible by micro_batch_size {cfg.micro_batch_size}"
                         f" x world size {world}")


# ----------------------------------------------------------------------------- optimizer and schedule
class Adafactor(torch.optim.Optimizer):
    """Adafactor exactly as T5/T5X pre-trained with it (Shazeer & Stern 2018; PAPER.md §1.1).

    No momentum. Second moments decay with beta2_t = 1 - t^-0.8 (step 1 keeps grad^2 alone) and are factored
    into row and column means for tensors whose last two dims are both >= 128: V ~ outer(R, C) / mean(R).
    With eps1 = 1e-30 added to grad^2, the update u = g / sqrt(V) is divided by max(1, RMS(u) / 1.0) (update
    clipping) and scaled by lr * max(RMS(param), eps2 = 1e-3) ("multiply_by_parameter_scale"), so `lr` is a
    relative step size. Tensors of one shape (and step) are stacked and updated together: a step costs a
    handful of ops per distinct shape, not per tensor.
    """

    def __init__(self, params, lr=0.01, decay_rate=0.8, clip_threshold=1.0, eps1=1e-30, eps2=1e-3,
                 min_dim_to_factor=128):
        super().__init__(params, dict(lr=lr, decay_rate=decay_rate, clip_threshold=clip_threshold, eps1=eps1,
                                      eps2=eps2, min_dim_to_factor=min_dim_to_factor))

    @staticmethod
    def _factored(shape, group):
        return len(shape) >= 2 and min(shape[-2:]) >= group["min_dim_to_factor"]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            batches = defaultdict(list)                    # (shape, dtype, device, step) -> tensors
            for p in (p for p in group["params"] if p.grad is not None):
                s = self.state[p]
                if not s:                                  # lazy init: zero second moments, in float32
                    s["step"] = 0
                    if self._factored(p.shape, group):
                        s["v_row"] = p.new_zeros(p.shape[:-1], dtype=torch.float32)
                        s["v_col"] = p.new_zeros(p.shape[:-2] + p.shape[-1:], dtype=torch.float32)
                    else:
                        s["v"] = torch.zeros_like(p, dtype=torch.float32)
                s["step"] += 1
                batches[(p.shape, p.dtype, p.device, s["step"])].append(p)
            for ps in batches.values():
                self._update(ps, group)
        return loss

    def _update(self, ps, group):
        shape, states = ps[0].shape, [self.state[p] for p in ps]
        beta2 = 1.0 - states[0]["step"] ** -group["decay_rate"]
        g = torch.stack([p.grad for p in ps]).float()      # [k, *shape]
        g2 = g.square().add_(group["eps1"])
        if self._factored(shape, group):
            r = torch.stack([s["v_row"] for s in states]).mul_(beta2).add_(g2.mean(-1), alpha=1 - beta2)
            c = torch.stack([s["v_col"] for s in states]).mul_(beta2).add_(g2.mean(-2), alpha=1 - beta2)
            torch._foreach_copy_([s["v_row"] for s in states], list(r.unbind(0)))
            torch._foreach_copy_([s["v_col"] for s in states], list(c.unbind(0)))
            # 1/sqrt(V), V = R C^T / mean(R): a row factor [k, .., m, 1] times a column factor [k, .., 1, n]
            u = g * (r / r.mean(-1, keepdim=True)).rsqrt().unsqueeze(-1) * c.rsqrt().unsqueeze(-2)
        else:
            v = torch.stack([s["v"] for s in states]).mul_(beta2).add_(g2, alpha=1 - beta2)
            torch._foreach_copy_([s["v"] for s in states], list(v.unbind(0)))
            u = g * v.rsqrt()
        per_tensor = (len(ps),) + (1,) * len(shape)        # one scalar per tensor, broadcast over it
        rms_u = u.flatten(1).square().mean(1).sqrt().view(per_tensor)
        rms_p = (torch.stack(torch._foreach_norm(ps)).float() / math.sqrt(ps[0].numel())).view(per_tensor)
        scale = group["lr"] * rms_p.clamp(min=group["eps2"]) / (rms_u / group["clip_threshold"]).clamp(min=1.0)
        torch._foreach_sub_(ps, list((u * scale).to(ps[0].dtype).unbind(0)))


def make_optimizer(cfg, model):
    if cfg.optimizer == "adafactor":
        return Adafactor(model.parameters(), lr=cfg.lr)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def get_lr(step: int, cfg) -> float:
    """Learning rate of optimizer step `step` (0-based). T5's "rsqrt_decay" (PAPER.md §2): flat at cfg.lr for
    warmup_steps, then ∝ 1/sqrt(step); with lr 0.01 and warmup 10000 it is 1/sqrt(max(step, 10000))."""
    if cfg.lr_schedule == "constant":
        return cfg.lr
    return cfg.lr * math.sqrt(cfg.warmup_steps / max(step, cfg.warmup_steps))


# ----------------------------------------------------------------------------- checkpoints
def save_checkpoint(ckpt: dict, path: str):
    tmp = path + ".tmp"                                    # then rename: never a half-written checkpoint
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint {path} does not exist (train first, or check --out_dir/--init_from)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:                                 # truncated zip, not a torch file, foreign pickle...
        raise RuntimeError(f"checkpoint {path} is corrupt or unreadable: {type(e).__name__}: {e}") from e
    missing = {"model", "model_config"} - set(ckpt if isinstance(ckpt, dict) else ())
    if missing:
        raise RuntimeError(f"checkpoint {path} is not a pretrain.py checkpoint: it lacks {sorted(missing)}")
    return ckpt


def rng_state(device_type: str) -> dict:
    """Every RNG the run may draw from, as tensors and lists that torch.load(weights_only=True) accepts."""
    version, mt, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    return dict(torch=torch.get_rng_state(), cuda=torch.cuda.get_rng_state() if device_type == "cuda" else None,
                python=[version, list(mt), gauss],
                numpy=[torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached])


def set_rng_state(s: dict):
    torch.set_rng_state(s["torch"])
    if s["cuda"] is not None:
        torch.cuda.set_rng_state(s["cuda"])
    random.setstate((s["python"][0], tuple(s["python"][1]), s["python"][2]))
    np.random.set_state(("MT19937", s["numpy"][0].numpy().astype(np.uint32), *s["numpy"][1:]))


# ----------------------------------------------------------------------------- runtime: device, dtype, DDP
def peak_flops(rt) -> float:
    """MFU's denominator: a known GPU's datasheet peak (model.PEAK_FLOPS), else a peak measured by timing
    matmuls in the run's dtype (CPUs, other GPUs)."""
    dtype = getattr(torch, rt.dtype)
    n = 4096 if rt.device_type == "cuda" else 1024
    return datasheet_peak(rt.device, dtype) or matmul_peak(dtype, rt.device, n=n)


def setup_runtime(cfg) -> SimpleNamespace:
    """Process group (when launched by torchrun), device, threads, autocast context and GradScaler."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device_type = torch.device(device).type
    except RuntimeError as e:
        raise ValueError(f"--device={cfg.device!r} is not a device: use auto, cpu, cuda or cuda:N") from e
    if device_type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device={cfg.device} but CUDA is not available; use --device=cpu")
    if cfg.dtype == "float16" and device_type != "cuda":
        raise ValueError("--dtype=float16 needs CUDA (it goes with a GradScaler); on CPU use bfloat16 or float32")
    if world > 1:
        if device_type == "cuda":
            device = f"cuda:{local_rank}"                  # one GPU per process
            torch.cuda.set_device(device)
        if not dist.is_initialized():
            # generous timeout: the other ranks wait in a collective while rank 0 evaluates
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo", timeout=timedelta(hours=2))
    if device_type == "cpu":
        keep_freed_memory()                                # reuse freed activations instead of re-faulting pages
    if device_type == "cpu" and getattr(cfg, "threads", 0) > 0:
        # A small model gains little from a second thread, and on a CPU shared with other jobs the threads
        # wait for each other: 145 ms/step with 1 thread vs 750 ms with 2, measured on this busy 2-core box.
        torch.set_num_threads(cfg.threads)
    if device_type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True       # TF32 for whatever runs in float32
        torch.backends.cudnn.allow_tf32 = True
    amp = {"bfloat16": torch.bfloat16, "float16": torch.float16}.get(cfg.dtype)
    ctx = torch.autocast(device_type, dtype=amp) if amp else nullcontext()
    # T5 overflows in fp16 without loss scaling (STYLE.md); for the other dtypes the scaler is a no-op
    scaler = torch.amp.GradScaler("cuda", enabled=cfg.dtype == "float16")
    return SimpleNamespace(world=world, rank=rank, master=rank == 0, device=device, device_type=device_type,
                           dtype=cfg.dtype, ctx=ctx, scaler=scaler)


def shape_batch(batch: dict, full=None) -> dict:
    """Drop all-padding columns (right padding is masked and T5's positions are relative, so only the cost
    changes), or with full=(src_len, tgt_len) pad to fixed shapes, which torch.compile wants."""
    mask, labels = batch["attention_mask"], batch["labels"]
    s, t = full or (int(mask.sum(1).max()), int((labels != -100).sum(1).max()))
    fit = lambda x, n, v: torch.nn.functional.pad(x[:, :n], (0, max(0, n - x.shape[1])), value=v)  # noqa: E731
    return dict(input_ids=fit(batch["input_ids"], s, 0), attention_mask=fit(mask, s, 0), labels=fit(labels, t, -100))


# ----------------------------------------------------------------------------- the training loop
def train(cfg, model, train_data, eval_fn, *, resume=None, log_extra=None) -> dict:
    try:
        return _train(cfg, model, train_data, eval_fn, resume=resume, log_extra=log_extra)
    finally:                                               # an error or Ctrl-C too: stop TaskData's workers
        getattr(train_data, "close", lambda: None)()


def _train(cfg, model, train_data, eval_fn, *, resume=None, log_extra=None) -> dict:
    rt = setup_runtime(cfg)
    check_train_config(cfg, rt.world)
    accum = cfg.batch_size // (cfg.micro_batch_size * rt.world)
    raw = model.to(rt.device)                              # evaluated and saved: never compiled nor wrapped
    raw.train()
    optimizer = make_optimizer(cfg, raw)
    step, best, best_step = 0, -1.0, -1
    if resume is not None:                                 # continue exactly: weights, moments, RNG, data
        raw.load_state_dict(resume["model"])
        optimizer.load_state_dict(resume["optimizer"])
        if rt.scaler.is_enabled() and resume.get("scaler"):
            rt.scaler.load_state_dict(resume["scaler"])
        train_data.load_state_dict(resume["data"])
        step, best, best_step = resume["step"], resume["best_token_acc"], resume["best_step"]
        if len(resume["rng"]) == rt.world:
            set_rng_state(resume["rng"][rt.rank])
        else:                                              # another world size: the dropout streams restart
            torch.manual_seed(cfg.seed + 1000 * step + rt.rank)
    else:
        torch.manual_seed(cfg.seed + rt.rank)              # dropout stream, distinct per rank
    ddp = DDP(raw, device_ids=[torch.device(rt.device).index] if rt.device_type == "cuda" else None) \
        if rt.world > 1 else None
    fwd = torch.compile(ddp or raw) if cfg.compile else (ddp or raw)
    full = (cfg.src_len, cfg.tgt_len) if cfg.compile else None   # fixed shapes: no recompiles

    os.makedirs(cfg.out_dir, exist_ok=True)
    last_path, best_path = os.path.join(cfg.out_dir, "ckpt_last.pt"), os.path.join(cfg.out_dir, "ckpt_best.pt")
    log_file = open(os.path.join(cfg.out_dir, "log.jsonl"), "a" if resume else "w") if rt.master else None

    def log(record):                                       # rank 0: one JSON line per event
        if log_file:
            log_file.write(json.dumps({**record, **(log_extra or {})}) + "\n")
            log_file.flush()

    def checkpoint():                                      # collective: gathers every rank's RNG state
        rngs = [rng_state(rt.device_type)]
        if rt.world > 1:
            rngs = [None] * rt.world
            dist.all_gather_object(rngs, rng_state(rt.device_type))
        return dict(model=raw.state_dict(), optimizer=optimizer.state_dict(), scaler=rt.scaler.state_dict(),
                    step=step, config=asdict(cfg), model_config=asdict(raw.config), rng=rngs,
                    data=train_data.state_dict(), best_token_acc=best, best_step=best_step)

    peak = peak_flops(rt) if rt.master else 1.0
    flops_per_token = getattr(raw, "flops_per_token", None)
    pbar = tqdm(total=cfg.max_steps, initial=step, disable=not rt.master, dynamic_ncols=True, desc="train")
    losses, metrics, start, saved_step = [], {}, step, (step if resume else None)
    meter = dict(time=0.0, steps=0, loss=0.0, tokens=0, flops=0.0)
    while True:
        last = step == cfg.max_steps
        # -- evaluate, then write last/best. Both depend only on `step`, so every rank reaches the RNG
        #    gather in checkpoint() at the same time.
        # (a cfg may skip the step-0 evaluation: fine-tuning's beam decoding of an untrained model is costly)
        is_eval = (step % cfg.eval_interval == 0 and (step > start or getattr(cfg, "eval_at_start", True))) or last
        is_ckpt = (step % cfg.ckpt_interval == 0 and step > start) or last
        if is_eval or is_ckpt:
            improved = False
            if is_eval and rt.master:
                raw.eval()
                with rt.ctx:
                    metrics = eval_fn(raw, step)
                raw.train()
                tqdm.write(f"eval step {step}: " + " | ".join(f"{k} {v:.4f}" for k, v in metrics.items()))
                log(dict(step=step, **{f"val_{k}": v for k, v in metrics.items()}))
                improved = metrics["token_acc"] > best     # the paper keeps the best validation token accuracy
                best, best_step = (metrics["token_acc"], step) if improved else (best, best_step)
            ckpt = checkpoint()
            if rt.master and (is_ckpt or improved):
                save_checkpoint(ckpt, last_path)           # `last` = the newest good state
                saved_step = step
                if improved:
                    save_checkpoint(ckpt, best_path)
            del ckpt
        if last:
            break

        # -- one optimizer step on a global batch; rank r keeps examples r::world, in micro-batches
        t_step = time.perf_counter()
        lr = get_lr(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        batch = train_data.next_batch(cfg.batch_size)
        n_target = int((batch["labels"] != -100).sum())    # loss = mean over the global batch's target tokens
        mine = {k: v[rt.rank::rt.world] for k, v in batch.items()}
        step_loss = torch.zeros((), device=rt.device)
        for micro in range(accum):
            mb = {k: v[micro * cfg.micro_batch_size:(micro + 1) * cfg.micro_batch_size] for k, v in mine.items()}
            mb = {k: v.to(rt.device, non_blocking=True) for k, v in shape_batch(mb, full).items()}
            n_micro = int((mb["labels"] != -100).sum())
            # gradients sync (all-reduce) on the last micro-step only
            with (nullcontext() if ddp is None or micro == accum - 1 else ddp.no_sync()), rt.ctx:
                _, loss = fwd(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"], labels=mb["labels"],
                              z_loss=cfg.z_loss)
                loss = loss.float() * (n_micro / n_target)  # this micro-batch's share of the global mean
            rt.scaler.scale(loss * rt.world).backward()    # x world: DDP averages the gradients over ranks
            step_loss += loss.detach()
            meter["tokens"] += int(mb["attention_mask"].sum()) + n_micro
            if flops_per_token:                            # training = forward + backward (2x) matmul FLOPs
                s, t = mb["input_ids"].shape[1], mb["labels"].shape[1]
                meter["flops"] += 3 * flops_per_token(s, t) * mb["labels"].shape[0] * t
        if rt.world > 1:
            dist.all_reduce(step_loss)                     # every rank sees the global loss, and any NaN
        loss_value = step_loss.item()
        rt.scaler.unscale_(optimizer)
        params = [p for p in raw.parameters() if p.grad is not None]
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf))
        # stop before a NaN/inf step touches the weights (only fp16 may see inf gradients: the scaler skips those)
        if not math.isfinite(loss_value) or not (math.isfinite(grad_norm) or rt.scaler.is_enabled()):
            pbar.close()
            raise FloatingPointError(
                f"loss is {loss_value} (grad norm {grad_norm}) at step {step + 1}: stopping. Last good checkpoint: "
                + (f"{last_path} (step {saved_step}), untouched" if saved_step is not None else "none written yet")
                + "; try a lower --lr or --dtype=float32.")
        rt.scaler.step(optimizer)
        rt.scaler.update()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        losses.append(loss_value)
        pbar.update(1)

        # -- log: step | loss | lr | grad_norm | ms/step | tok/s | MFU, averaged over the interval
        meter["steps"] += 1
        meter["loss"] += loss_value
        meter["time"] += time.perf_counter() - t_step     # training only, evaluation excluded
        if step % cfg.log_interval == 0 or step == cfg.max_steps:
            dt = meter["time"]
            rec = dict(step=step, loss=meter["loss"] / meter["steps"], lr=lr, grad_norm=grad_norm,
                       ms_per_step=1000 * dt / meter["steps"], tok_per_s=meter["tokens"] * rt.world / dt,
                       mfu=meter["flops"] / dt / peak)
            pbar.set_postfix(loss=f"{rec['loss']:.4f}")
            if rt.master:
                tqdm.write(f"step {step:>6} | loss {rec['loss']:.4f} | lr {lr:.2e} | grad_norm {grad_norm:.3f} | "
                           f"{rec['ms_per_step']:.0f} ms/step | {rec['tok_per_s']:,.0f} tok/s | "
                           f"MFU {100 * rec['mfu']:.2f}%")
            log(rec)
            meter = dict(time=0.0, steps=0, loss=0.0, tokens=0, flops=0.0)
    pbar.close()
    if log_file:
        log_file.close()
    if rt.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return dict(step=step, losses=losses, metrics=metrics, best_token_acc=best, best_step=best_step, rank=rt.rank)



def ids_to_str(ids) -> str:
    return " ".join(map(str, ids))


@torch.no_grad()
def evaluate(model, batches, *, max_new_tokens: int, decode=ids_to_str, show: int = 3, greedy: bool = True) -> dict:
    """Teacher-forced token accuracy (the paper's checkpoint-selection metric, PAPER.md §1.2), loss and
    greedy exact match over held-out batches; prints `show` mistakes: source, target, output.
    greedy=False skips decoding (finetune.py decodes the test split with beam search instead)."""
    device, eos, pad = next(model.parameters()).device, model.config.eos_token_id, model.config.pad_token_id
    n_tok = n_right = n_ex = n_exact = 0
    loss_sum, mistakes = 0.0, []
    for b in batches:
        b = {k: v.to(device) for k, v in shape_batch(b).items()}
        logits, loss = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"])
        mask = b["labels"] != -100
        n_right += int(((logits.argmax(-1) == b["labels"]) & mask).sum())
        n_tok += int(mask.sum())
        loss_sum += float(loss) * int(mask.sum())
        if not greedy:
            continue
        generated = model.generate(b["input_ids"], b["attention_mask"], max_new_tokens=max_new_tokens)
        for i, row in enumerate(generated.tolist()):
            pred = row[:row.index(eos) + 1] if eos in row else row   # up to and including EOS
            while pred and pred[-1] == pad and eos not in pred:
                pred.pop()                                 # padding after the whole batch ended
            want = b["labels"][i][mask[i]].tolist()
            n_ex, n_exact = n_ex + 1, n_exact + (pred == want)
            if pred != want and len(mistakes) < show:
                mistakes.append((b["input_ids"][i][b["attention_mask"][i].bool()].tolist(), want, pred))
    for src, want, pred in mistakes:
        tqdm.write(f"  source: {decode(src)[:150]}\n  target: {decode(want)[:150]}\n"
                   f"  output: {decode(pred)[:150] or '-'}")
    out = dict(loss=loss_sum / max(n_tok, 1), token_acc=n_right / max(n_tok, 1))
    return dict(out, exact_match=n_exact / max(n_ex, 1)) if greedy else out




# ----------------------------------------------------------------------------- MFU and CPU memory
def keep_freed_memory():
    """Make glibc keep freed memory instead of returning it to the OS.

    PyTorch's CPU allocator is plain malloc: every activation above glibc's mmap threshold is a fresh mmap,
    and the kernel zero-fills its pages on first touch. In this VM that costs up to ~10 us per 4 KiB page,
    i.e. ~0.3 s for one [2048, 32128] float32 logits buffer, every step. With mmap off and trimming off,
    the heap reaches its peak size in the first steps and is then reused (measured: ~200k page faults per
    t5-v1_1-small step before, ~0 after; bf16 steps ~7x faster). Process-wide: call it once at start-up.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # from glibc's malloc.h
    return bool(libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, -1))


def matmul_peak(dtype=torch.float32, device="cpu", n=1024, reps=5) -> float:
    """Best FLOP/s of an n x n x n matmul over `reps` timings: the realistic ceiling MFU is measured against.
    The best, not the mean, so one busy moment on a shared machine cannot inflate the MFU; torch.full, not
    randn, so a caller's RNG stream stays untouched."""
    a = torch.full((n, n), 0.5, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if torch.device(device).type == "cuda" else (lambda: None)
    a @ a                                                  # warm-up
    sync()
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ a
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


# Dense bf16 tensor-core peaks (FLOP/s) from the datasheets; float32 runs use TF32 at half of these.
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}


def datasheet_peak(device, dtype=torch.bfloat16):
    """The datasheet peak of a known GPU for bf16 (or float32 as TF32) matmuls; None for CPUs and other GPUs."""
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    peak = next((p for key, p in PEAK_FLOPS.items() if key in name), None)
    return peak / 2 if peak and dtype == torch.float32 else peak


def estimate_mfu(tokens_per_s, flops_per_token, peak_flops, training=True) -> float:
    """Model FLOPs utilisation: achieved matmul FLOP/s over the peak (training = 3x forward FLOPs)."""
    return tokens_per_s * flops_per_token * (3 if training else 1) / peak_flops
