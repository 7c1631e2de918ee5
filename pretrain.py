"""Pre-train the T5 of model.py on a synthetic task of tasks.py (PAPER.md §2); also the training loop
that finetune.py reuses.

The paper pre-trains T5-small v1.0 on one synthetic task (Set, LIME, ...) with T5's own recipe: Adafactor
(T5 settings, PAPER.md §1.1), learning rate 1/sqrt(max(step, 10000)), batch 128, lengths 512/512, dropout 0.1,
80k steps, validation token accuracy every 5k steps on 20 batches, checkpoints every 5k: `--preset=paper`.
The defaults are a small run that learns Set on a 2-core CPU in a few minutes and ends by printing its
held-out exact match and token accuracy next to what copying the input or a constant output scores.

    python pretrain.py                                        # the default CPU run (Set)
    python pretrain.py --task=lime --max_steps=3000           # any task of tasks.py, or a mixture 'set+lime'
    python pretrain.py --preset=paper --task=set --out_dir=out-set                  # one GPU
    torchrun --standalone --nproc_per_node=8 pretrain.py --preset=paper --task=set --micro_batch_size=16
    python pretrain.py --init_from=resume --out_dir=out-set   # continue exactly where it stopped
    python pretrain.py -h                                     # every setting with its default

Settings are `--key=value` (values parsed with ast.literal_eval, strings may be bare). On resume the
settings saved in the checkpoint are the base and the command line overrides them (e.g. --max_steps).

The loop, for finetune.py:
    train(cfg, model, train_data, eval_fn, *, resume=None, log_extra=None) -> dict
      cfg        TrainConfig, or any dataclass with the fields train() reads: out_dir, seed, device, dtype,
                 compile, threads and eval_at_start (optional), optimizer, lr, lr_schedule, warmup_steps, weight_decay,
                 max_steps, batch_size, micro_batch_size, grad_clip, z_loss, src_len, tgt_len,
                 eval_interval, eval_batches, log_interval, ckpt_interval (meanings: see TrainConfig).
      model      nn.Module on CPU with a .config dataclass and forward(input_ids, attention_mask, labels,
                 z_loss) -> (logits, mean loss over labels != -100), like model.T5; train() moves it.
      train_data next_batch(n) -> dict(input_ids, attention_mask, labels) of n right-padded examples
                 (labels -100 on padding), state_dict(), load_state_dict(), optionally close() (called when
                 train() returns or raises). Every process reads the same global batch of batch_size examples
                 and keeps examples rank::world of it.
      eval_fn    eval_fn(model, step) -> dict of floats including "token_acc"; run on rank 0 only, on the
                 uncompiled module in eval mode under autocast. ckpt_best.pt follows the best token_acc.
      resume     a checkpoint dict (load_checkpoint) to continue: weights, optimizer, step, RNG, data.
      log_extra  dict of constant fields added to every line of out_dir/log.jsonl.
      returns    dict(step, losses (one per step run), metrics (last eval), best_token_acc, best_step, rank)
"""
import multiprocessing
import os
import signal
import sys
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from functools import partial

import torch
from tqdm import tqdm

import config
from config import UserError, write_json
from model import PRESETS as MODEL_PRESETS, T5, T5Config, get_config
from tasks import TASKS, TaskStream, collate, get_task
from tokenizer import Vocab, load_tokenizer
from train import check_train_config, evaluate, ids_to_str, load_checkpoint, train


@dataclass
class TrainConfig:
    # -- run
    preset: str = "default"        # "default" (small CPU run) or "paper" (PAPER.md §2), applied before other overrides
    task: str = "set"              # a name in tasks.TASKS or a mixture "a+b+c"
    out_dir: str = "out"           # ckpt_last.pt, ckpt_best.pt and log.jsonl go here
    data_dir: str = ""             # the shared data folder; only the `natural` task reads files
    tokenizer: str = ""            # tokenizer file (tokenizer.load_tokenizer); `natural` needs one; sets the vocab
    init_from: str = "scratch"     # "scratch", "resume" (out_dir/ckpt_last.pt, exactly) or a checkpoint (weights only)
    seed: int = 0                  # model init, dropout and the deterministic data stream
    # -- data
    vocab_size: int = 256          # tokenizer size n of the synthetic vocabulary (paper: T5's 32100)
    min_len: int = 10              # body length range of the simple tasks (paper: 10..220, PAPER.md §3.0) ...
    max_len: int = 24              # ... short bodies let the default CPU run learn Set within minutes
    n_task_tokens: int = 0         # > 0: random-token tasks draw from the first n content ids only (PAPER §6); 0 = all
    src_len: int = 64              # inputs longer than this are cut (paper: 512)
    tgt_len: int = 64              # targets too; also the greedy decoding budget at eval (paper: 512)
    # -- model
    model: str = "cpu"             # a preset of model.PRESETS
    d_model: int = 128             # > 0 overrides the preset's width (d_kv = d_model // num_heads, d_ff = 4 d_model)
    num_layers: int = 2            # > 0 overrides the preset's depth, encoder and decoder alike
    dropout: float = 0.0           # paper: 0.1; a short run learns faster without
    # -- optimisation
    optimizer: str = "adafactor"   # "adafactor" (T5's, the paper's) or "adamw"
    lr: float = 0.01               # peak learning rate (Adafactor: relative step size; paper 0.01)
    lr_schedule: str = "rsqrt"     # "rsqrt": lr*sqrt(warmup/max(step, warmup)), T5's rsqrt_decay; or "constant"
    warmup_steps: int = 1000       # rsqrt: steps at the flat peak before the decay (T5 has no ramp; paper 10k)
    weight_decay: float = 0.0      # AdamW only
    max_steps: int = 3000          # optimizer steps (paper: 80k)
    batch_size: int = 32           # examples per optimizer step over all processes and micro-steps (paper: 128)
    micro_batch_size: int = 32     # examples per forward; grad accumulation = batch_size / (micro_batch_size * world)
    grad_clip: float = 0.0         # global grad-norm clip, 0 = off (T5 has none: Adafactor clips its updates)
    z_loss: float = 0.0            # T5X z-loss coefficient (paper: 0 in pre-training, 1e-4 in fine-tuning)
    # -- evaluation, logging, checkpoints
    eval_interval: int = 500       # steps between held-out evaluations (paper: 5000)
    eval_batches: int = 4          # held-out batches of batch_size examples per evaluation (paper: 20)
    log_interval: int = 100        # steps between log lines
    ckpt_interval: int = 500       # steps between ckpt_last.pt writes (paper: 5000)
    # -- system
    device: str = "auto"           # "auto" (cuda if available), "cpu", "cuda", "cuda:1", ...
    dtype: str = "bfloat16"        # autocast dtype: "bfloat16", "float32", or "float16" (CUDA only, with GradScaler)
    compile: bool = False          # torch.compile the training forward (eval and checkpoints use the plain module)
    threads: int = 1               # CPU threads (torch.set_num_threads), 0 = torch's default; see setup_runtime
    workers: int = 0               # processes generating training batches ahead (per rank), 0 = in the training loop


PRESETS = {
    "default": {},
    # PAPER.md §2: the recipe of every synthetic pre-training in the paper (T5's own); the model is t5-small
    "paper": dict(model="t5-small", d_model=0, num_layers=0, vocab_size=32100, min_len=10, max_len=220,
                  src_len=512, tgt_len=512, dropout=0.1, optimizer="adafactor", lr=0.01, lr_schedule="rsqrt",
                  warmup_steps=10000, max_steps=80000, batch_size=128, micro_batch_size=32, grad_clip=0.0,
                  z_loss=0.0, eval_interval=5000, eval_batches=20, log_interval=100, ckpt_interval=5000, threads=0,
                  workers=4),  # 4 x 3k examples/s (nesting_language, the slowest) = ~90 batches/s >> steps/s
}

# ----------------------------------------------------------------------------- pre-training data and evaluation
class TaskData:
    """tasks.TaskStream + tasks.collate as the `train_data` of train(); its state is the stream position.

    workers > 0 builds the batches in that many background processes, a few batches ahead of the training
    step, so slow generators (nonsense_summary, nesting_language, natural) never stall the accelerator. A batch
    is the examples [position, position + n) either way: the sequence, and an exact resume, do not depend on
    `workers`. Tasks hold lambdas, which do not pickle, so each worker rebuilds its own with `build`, a
    picklable zero-argument callable (e.g. a functools.partial of tasks.get_task) returning the same task."""

    def __init__(self, task, seed: int, src_len: int, tgt_len: int, workers: int = 0, build=None):
        if workers > 0 and build is None:
            raise ValueError("TaskData(workers > 0) needs `build` to rebuild the task in the worker processes")
        self.task, self.seed, self.src_len, self.tgt_len = task, seed, src_len, tgt_len
        self.stream, self.truncated = TaskStream(task, seed, "train"), 0
        self.workers, self.build, self.pool = workers, build, None
        self.ahead = deque()                               # batches in the making: ((start, n), future)

    def next_batch(self, n: int) -> dict:
        if not self.workers:
            batch, truncated = collate(self.stream.next_examples(n), self.src_len, self.tgt_len)
        else:
            start = self.stream.position
            if self.pool is None:                          # on first use (after CUDA/DDP setup), or after close()
                # spawn, not fork: a fresh interpreter inherits no CUDA context, thread pools or held locks
                self.pool = ProcessPoolExecutor(self.workers, multiprocessing.get_context("spawn"),
                                                initializer=_worker_init, initargs=(self.build, os.getpid()))
            if self.ahead and self.ahead[0][0] != (start, n):  # a new position or batch size: drop what is ahead
                while self.ahead:
                    self.ahead.pop()[1].cancel()
            while len(self.ahead) < 2 * self.workers:      # keep every worker busy, with one batch to spare each
                s = start + n * len(self.ahead)
                self.ahead.append(((s, n), self.pool.submit(_worker_batch, self.seed, s, n, self.src_len,
                                                            self.tgt_len)))
            arrays, truncated = self.ahead.popleft()[1].result()   # a worker that died raises BrokenProcessPool
            batch = {k: torch.from_numpy(v) for k, v in arrays.items()}
            self.stream.position += n
        self.truncated += truncated                        # examples cut to src_len/tgt_len so far
        return batch

    def close(self):
        """Stop the workers (train() calls this however it ends); a later next_batch starts them again."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)   # waits for the batches in progress, then joins
            self.pool, self.ahead = None, deque()

    def state_dict(self) -> dict:
        return dict(position=self.stream.position, truncated=self.truncated)

    def load_state_dict(self, s: dict):
        self.stream, self.truncated = TaskStream(self.task, self.seed, "train", start=s["position"]), s["truncated"]


_worker = {}                                               # in a worker process: its `build` and task


def _worker_init(build, parent):
    # Ctrl-C reaches the whole process group; only the main process acts on it (train() then closes the pool)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)                               # one core per worker: no oversubscription
    _worker["build"] = build
    threading.Thread(target=_exit_with, args=(parent,), daemon=True).start()


def _exit_with(parent):
    """A main process killed outright (SIGKILL, SIGTERM) runs no cleanup: its workers then leave by themselves."""
    while os.getppid() == parent:
        time.sleep(1)
    os._exit(0)


def _worker_batch(seed, start, n, src_len, tgt_len):
    if "task" not in _worker:                              # built here, not in _worker_init, so that an error
        _worker["task"] = _worker["build"]()               # reaches next_batch with its message
    batch, truncated = collate(TaskStream(_worker["task"], seed, "train", start).next_examples(n), src_len, tgt_len)
    return {k: v.numpy() for k, v in batch.items()}, truncated   # numpy: plain pickling, no shared-memory handles



def baselines(examples, vocab) -> dict:
    """Trivial outputs scored on the same held-out examples: the input copied (without the task prefix, up to
    the first sentinel) and the best constant output (the most common target token at each position)."""
    def score(preds):
        right = sum(sum(a == b for a, b in zip(p, t)) for p, (_, t) in zip(preds, examples))
        return dict(exact_match=sum(p == t for p, (_, t) in zip(preds, examples)) / len(examples),
                    token_acc=right / sum(len(t) for _, t in examples))
    copies = [s[next((i + 1 for i, x in enumerate(s) if vocab.is_sentinel(x)), 0):] for s, _ in examples]
    columns = [[t[i] for _, t in examples if len(t) > i] for i in range(max(len(t) for _, t in examples))]
    constant = [max(set(c), key=c.count) for c in columns]
    return dict(copy=score(copies), constant=score([constant] * len(examples)))


def build_model(cfg, vocab, model_config: dict = None):
    """T5 from a model.PRESETS name plus cfg's overrides, or from a checkpoint's model_config."""
    if model_config is not None:
        return T5(T5Config(**model_config))
    over = dict(vocab_size=vocab.model_vocab_size, dropout_rate=cfg.dropout)
    if cfg.num_layers > 0:
        over.update(num_layers=cfg.num_layers, num_decoder_layers=cfg.num_layers)
    if cfg.d_model > 0:
        over.update(d_model=cfg.d_model, d_kv=cfg.d_model // get_config(cfg.model).num_heads, d_ff=4 * cfg.d_model)
    return T5(get_config(cfg.model, **over))               # T5X default init (PAPER.md §2) from torch's RNG


def main(argv):
    cfg = config.parse(TrainConfig, argv, PRESETS, __doc__)
    resume = None
    if cfg.init_from == "resume":                          # the saved settings, then this command line
        resume = load_checkpoint(os.path.join(cfg.out_dir, "ckpt_last.pt"))
        saved = {k: v for k, v in resume["config"].items() if k != "preset"}
        cfg = config.parse(TrainConfig, argv, lambda c: {**saved, "init_from": "resume"}, __doc__)
    if any(t not in TASKS for t in cfg.task.split("+")):
        raise ValueError(f"unknown task {cfg.task!r}; valid tasks (or 'a+b' mixtures): {', '.join(TASKS)}")
    if cfg.model not in MODEL_PRESETS:
        raise ValueError(f"unknown model preset {cfg.model!r}; valid: {', '.join(MODEL_PRESETS)}")
    check_train_config(cfg, int(os.environ.get("WORLD_SIZE", "1")))
    tokenizer = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
    vocab = tokenizer or Vocab(cfg.vocab_size)
    build = partial(get_task, cfg.task, vocab, tokenizer=tokenizer, data_dir=cfg.data_dir or None,
                    min_len=cfg.min_len, max_len=cfg.max_len,      # picklable: TaskData's workers call it
                    n_task_tokens=cfg.n_task_tokens or None)
    task = build()

    # -- model: fresh (seeded: every rank builds the same one), resumed, or initialised from a checkpoint
    torch.manual_seed(cfg.seed)
    if resume is not None:
        model = build_model(cfg, vocab, resume["model_config"])
    elif cfg.init_from != "scratch":
        init = load_checkpoint(cfg.init_from)
        model = build_model(cfg, vocab, {**init["model_config"], "dropout_rate": cfg.dropout})
        model.load_state_dict(init["model"])
    else:
        model = build_model(cfg, vocab)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{cfg.task}: {model.num_params() / 1e6:.2f}M parameters, {asdict(model.config)}")

    # -- data: the training stream and a fixed held-out set (the validation split, from its start)
    train_data = TaskData(task, cfg.seed, cfg.src_len, cfg.tgt_len, cfg.workers, build)
    held_out = TaskStream(task, cfg.seed, "validation").next_examples(cfg.eval_batches * cfg.batch_size)
    mbs = cfg.micro_batch_size
    val_batches = [collate(held_out[i:i + mbs], cfg.src_len, cfg.tgt_len)[0] for i in range(0, len(held_out), mbs)]
    decode = tokenizer.decode if tokenizer else ids_to_str
    eval_fn = lambda m, step: evaluate(m, val_batches, max_new_tokens=cfg.tgt_len, decode=decode)  # noqa: E731

    t0 = time.time()
    out = train(cfg, model, train_data, eval_fn, resume=resume, log_extra=dict(task=cfg.task))
    if out["rank"] == 0:
        m = out["metrics"]
        print(f"\n{cfg.task}, {len(held_out)} held-out examples, step {out['step']}, {time.time() - t0:.0f} s: "
              f"exact match {100 * m['exact_match']:.1f}%, token accuracy {100 * m['token_acc']:.1f}% "
              f"(best token accuracy {100 * out['best_token_acc']:.1f}% at step {out['best_step']})")
        base = baselines(held_out, vocab)
        for name, b in base.items():
            print(f"  baseline, {name} output: exact match {100 * b['exact_match']:.1f}%, "
                  f"token accuracy {100 * b['token_acc']:.1f}%")
        # the summary reproduce.py tables (written last and atomically: its presence means "finished")
        result = dict(task=cfg.task, step=out["step"], best_val_token_acc=out["best_token_acc"],
                      best_step=out["best_step"], val_token_acc=m["token_acc"], val_exact_match=m["exact_match"],
                      baselines=base, wall_s=time.time() - t0, config=asdict(cfg))
        write_json(os.path.join(cfg.out_dir, "result.json"), result)
    return out


if __name__ == "__main__":
    config.main(main)
