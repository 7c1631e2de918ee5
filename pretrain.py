"""pretrain.py: pre-train the T5 of model.py on a synthetic task of tasks.py.

`--preset=paper` is the paper's T5 recipe on t5-small (80k steps, batch 128, lengths 512);
the default `--preset=cpu` learns Set on a 2-core CPU in minutes. At the end it prints held-out
exact match and token accuracy next to what copying the input or a constant output scores.

    python pretrain.py --task=lime              # any task of tasks.py, or a mixture 'set+lime'
    torchrun --standalone --nproc_per_node=8 pretrain.py --preset=paper --micro_batch_size=16
    python pretrain.py --init=resume --task=lime  # go on exactly in out/lime: saved settings, argv
    python pretrain.py -h                       # every setting, as it would run

Reading order: ..., config.py, train.py, pretrain.py (here), metrics.py, ... Next: metrics.py.
"""
import multiprocessing
import os
import signal
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from functools import partial

import torch

import config
from config import UserError, check_choice, check_range
from model import PRESETS as MODEL_PRESETS, T5, T5Config, get_config
from tasks import TASKS, TaskStream, collate, get_task
from tokenizer import Vocab, load_tokenizer
from train import TrainConfig, check_train_config, evaluate, ids_to_str, load_checkpoint
from train import micro_batch, parse_run, train

@dataclass
class PretrainConfig(TrainConfig):
    """The loop's settings (TrainConfig), and what to pre-train on, from what."""
    preset: str = "cpu"            # the recipe, "cpu" or "paper" (PRESETS), then the command line
    task: str = "set"              # a name in tasks.TASKS or a mixture "a+b+c"
    data_dir: str = config.DATA_DIR  # the data folder; only the `natural` task reads files
    tokenizer: str = ""            # a tokenizer file (tokenizer.py; `natural` needs one): the vocab
    init: str = "scratch"          # "scratch", "resume" (out_dir/ckpt_last.pt) or a checkpoint file
    vocab_size: int = 256          # synthetic vocabulary size without --tokenizer (paper: 32100)
    min_len: int = 10              # body lengths of the simple tasks (paper: 10..220); max_len also
    max_len: int = 24              # bounds LIME, nesting_language and natural (input length)
    n_task_tokens: int = 0         # > 0: random-token tasks use the first n content ids; 0 = all
    model: str = "tiny"            # a model.PRESETS name
    dropout: float = 0.0           # paper: 0.1; a short run learns faster without
    workers: int = 0               # processes making batches ahead, per rank; 0 = in the loop

# The recipes of --preset: "cpu" (Set on a 2-core CPU in minutes) and "paper" (T5's, on t5-small)
PRESETS = {
    "cpu": {},                     # the defaults of PretrainConfig and TrainConfig above
    "paper": dict(model="t5-small", vocab_size=32100, min_len=10, max_len=220, src_len=512,
                  tgt_len=512, dropout=0.1, lr=0.01, warmup_steps=10000, max_steps=80000,
                  batch_size=128, micro_batch_size=32, eval_interval=5000, eval_batches=20,
                  ckpt_interval=5000, threads=0, workers=4),   # 4 x 3k examples/s >> steps/s
}
# At CPU scale, room for the long inputs: LIME's (a 68-id alphabet prefix) and the corrupted ones
CPU_TASKS = {t: dict(max_len=128, src_len=128, tgt_len=128) for t in
             ("lime", "lime_induct", "lime_deduct", "lime_abduct", "natural", "nesting_language")}

def parse_config(argv) -> tuple:
    """The settings that will run, and on --init=resume the checkpoint to continue (else None)."""
    def recipe(c):         # the preset's values; a mixture takes every part's lengths
        check_choice("preset", c.preset, PRESETS)
        parts = [CPU_TASKS.get(t.strip(), {}) for t in c.task.split("+")] \
            if c.preset == "cpu" else []
        return {k: v for d in [PRESETS[c.preset], *parts] for k, v in d.items()}
    return parse_run(PretrainConfig, argv, recipe, __doc__,
                     same_run=("task", "model", "vocab_size", "tokenizer"))

# ----------------------------------------------------------------------------- pre-training data
class TaskData:
    """tasks.TaskStream + tasks.collate as the `train_data` of train(); its state is the position.
    workers > 0 makes batches a few ahead in background processes, each rebuilding the task with
    `build` (tasks hold lambdas, which do not pickle): a picklable zero-argument callable. A batch
    is the examples [position, position + n) either way: the data does not depend on `workers`."""

    def __init__(self, task, seed: int, src_len: int, tgt_len: int, workers: int = 0, build=None):
        self.task, self.seed, self.lens = task, seed, (src_len, tgt_len)
        self.workers, self.build, self.pool = workers, build, None
        self.stream, self.truncated = TaskStream(task, seed, "train"), 0
        self.ahead = deque()                               # in the making: ((start, n), job)

    def next_batch(self, n: int) -> dict:
        if not self.workers:
            batch, truncated = collate(self.stream.next_examples(n), *self.lens)
        else:
            start = self.stream.position
            if self.pool is None:      # on first use (after CUDA/DDP set-up), or after close()
                # spawn, not fork: a fresh interpreter inherits no CUDA context, threads or locks
                self.pool = ProcessPoolExecutor(self.workers, multiprocessing.get_context("spawn"),
                                                initializer=_worker_init,
                                                initargs=(self.build, os.getpid()))
            if self.ahead and self.ahead[0][0] != (start, n):   # moved, or another size: drop
                while self.ahead:
                    self.ahead.pop()[1].cancel()
            while len(self.ahead) < 2 * self.workers:      # every worker busy, one batch to spare
                s = start + n * len(self.ahead)
                job = self.pool.submit(_worker_batch, self.seed, s, n, self.lens)
                self.ahead.append(((s, n), job))
            arrays, truncated = self.ahead.popleft()[1].result()   # a dead worker raises here
            batch = {k: torch.from_numpy(v) for k, v in arrays.items()}
            self.stream.position += n
        self.truncated += truncated                        # examples cut to src_len/tgt_len so far
        return batch

    def close(self):
        """Stop the workers (main() calls this however train() ends); next_batch restarts them."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)   # waits for those in progress
            self.pool, self.ahead = None, deque()

    def state_dict(self) -> dict:
        return dict(position=self.stream.position, truncated=self.truncated)

    def load_state_dict(self, s: dict):
        self.stream = TaskStream(self.task, self.seed, "train", start=s["position"])
        self.truncated = s["truncated"]

_worker = {}                                               # in a worker process: `build`, its task

def _worker_init(build, parent):
    # Ctrl-C reaches the whole process group; only the main process acts (train() closes the pool)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    torch.set_num_threads(1)                               # one core per worker
    _worker["build"] = build
    def exit_with_parent():                 # one killed outright (SIGKILL) runs no clean-up
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(0)
    threading.Thread(target=exit_with_parent, daemon=True).start()

def _worker_batch(seed, start, n, lens):
    if "task" not in _worker:                              # here, not in _worker_init: an error
        _worker["task"] = _worker["build"]()               # reaches next_batch with its message
    examples = TaskStream(_worker["task"], seed, "train", start).next_examples(n)
    batch, truncated = collate(examples, *lens)
    return {k: v.numpy() for k, v in batch.items()}, truncated   # numpy: plain pickling

def baselines(examples, vocab) -> dict:
    """Trivial outputs scored on the held-out examples: the input copied (after the task prefix,
    up to the first sentinel), and the best constant output (each position's commonest token)."""
    targets = [t for _, t in examples]
    def score(preds):
        right = sum(a == b for p, t in zip(preds, targets) for a, b in zip(p, t))
        return dict(exact_match=sum(p == t for p, t in zip(preds, targets)) / len(targets),
                    token_acc=right / sum(map(len, targets)))
    copies = [s[next((i + 1 for i, x in enumerate(s) if vocab.is_sentinel(x)), 0):]
              for s, _ in examples]
    columns = [[t[i] for t in targets if len(t) > i] for i in range(max(map(len, targets)))]
    constant = [max(set(c), key=c.count) for c in columns]
    return dict(copy=score(copies), constant=score([constant] * len(targets)))

def build_model(cfg: PretrainConfig, vocab, ckpt: dict = None) -> T5:
    """A fresh T5 of preset cfg.model (T5X's init, from torch's RNG), or a checkpoint's, with
    cfg.dropout; for --init=<ckpt> its model and vocabulary must be the ones asked for."""
    want = get_config(cfg.model, vocab_size=vocab.model_vocab_size, dropout_rate=cfg.dropout)
    if ckpt is None:
        return T5(want)
    have = T5Config(**{**ckpt["model_config"], "dropout_rate": cfg.dropout})
    diff = [k for k, v in asdict(want).items() if getattr(have, k) != v]
    show = lambda c: ", ".join(f"{k}={getattr(c, k)}" for k in diff)  # noqa: E731
    if diff and cfg.init != "resume":                      # (a resume checks its saved settings)
        raise UserError(f"--init={cfg.init} is another model ({show(have)}) than --model/"
                        f"--vocab_size/--tokenizer give ({show(want)})")
    return T5(have)

def main(argv):
    cfg, resume = parse_config(argv)
    for t in cfg.task.split("+"):
        check_choice("task", t.strip(), TASKS)
    check_choice("model", cfg.model, MODEL_PRESETS)
    check_range("dropout", cfg.dropout, 0, 1)
    for name in ("n_task_tokens", "workers"):
        check_range(name, getattr(cfg, name), lo=0)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    check_train_config(cfg, world, resume is not None)
    tokenizer = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
    vocab = tokenizer or Vocab(cfg.vocab_size)
    build = partial(get_task, cfg.task, vocab, tokenizer=tokenizer, data_dir=cfg.data_dir,
                    min_len=cfg.min_len, max_len=cfg.max_len,   # picklable: for TaskData's workers
                    n_task_tokens=cfg.n_task_tokens or None)
    task = build()
    torch.manual_seed(cfg.seed)                            # every rank builds the same model
    init = resume or (load_checkpoint(cfg.init) if cfg.init != "scratch" else None)
    model = build_model(cfg, vocab, init)
    if init is not None and resume is None:
        model.load_state_dict(init["model"])               # --init=<ckpt>: its weights only
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{cfg.task}: {model.num_params() / 1e6:.2f}M parameters, {asdict(model.config)}")

    n, mbs = cfg.eval_batches * cfg.batch_size, micro_batch(cfg, world)
    held_out = TaskStream(task, cfg.seed, "validation").next_examples(n)   # the split's start
    val = [collate(held_out[i:i + mbs], cfg.src_len, cfg.tgt_len)[0] for i in range(0, n, mbs)]
    decode = tokenizer.decode if tokenizer else ids_to_str
    t0, data = time.time(), TaskData(task, cfg.seed, cfg.src_len, cfg.tgt_len, cfg.workers, build)
    try:
        out = train(cfg, model, data, lambda m, step: evaluate(m, val, max_new_tokens=cfg.tgt_len,
                                                               decode=decode),
                    resume=resume, log_extra=dict(task=cfg.task))
    finally:
        data.close()                                       # however train() ends: stop the workers
    if out["rank"] == 0:
        m, base = out["metrics"], baselines(held_out, vocab)
        print(f"\n{cfg.task}, step {out['step']}, {time.time() - t0:.0f} s (best token accuracy "
              f"{out['best_token_acc']:.1%} at step {out['best_step']}), {n} held-out examples:")
        for name, r in [("model", m), *base.items()]:      # vs the copy and constant outputs
            print(f"  {name:<8} exact match {r['exact_match']:6.1%}, "
                  f"token accuracy {r['token_acc']:6.1%}")
        # what reproduce.py tables, written last (atomically): it means "finished"
        config.write_json(os.path.join(cfg.out_dir, "result.json"), dict(
            task=cfg.task, step=out["step"], best_val_token_acc=out["best_token_acc"],
            best_step=out["best_step"], **{f"val_{k}": v for k, v in m.items()}, baselines=base,
            wall_s=time.time() - t0, config=asdict(cfg)))
    return out

if __name__ == "__main__":
    config.main(main)
