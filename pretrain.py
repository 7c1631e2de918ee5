"""pretrain.py: pre-train the T5 of model.py on a synthetic task of tasks.py, then print held-out
exact match and token accuracy next to what copying the input or a constant output scores.
`--preset=cpu` (the default) learns Set on a 2-core CPU in minutes; `--preset=paper` is T5's
recipe on t5-small (80k steps, batch 128, lengths 512); `-h` prints every setting as it would run.

    python pretrain.py --task=lime              # any task of tasks.py, or a mixture 'set+lime'
    torchrun --standalone --nproc_per_node=8 pretrain.py --preset=paper --micro_batch_size=16
    python pretrain.py --init=resume --task=lime  # go on exactly in out/lime: saved settings, argv

Reading order: ..., config.py, train.py, pretrain.py (here), metrics.py, ... Next: metrics.py.
"""
import os, time
from contextlib import closing
from dataclasses import asdict, dataclass
from itertools import count

import torch
from torch.utils.data import DataLoader, Dataset

import config
from model import PRESETS as MODEL_PRESETS, T5, get_config
from tasks import TASKS, TaskStream, collate, get_task
from tokenizer import Vocab, load_tokenizer
from train import TrainConfig, check_train_config, evaluate, micro_batch, parse_run, train

@dataclass
class PretrainConfig(TrainConfig):
    preset: str = "cpu"            # the recipe, "cpu" or "paper" (PRESETS), then the command line
    task: str = "set"              # a name in tasks.TASKS or a mixture "a+b+c"
    data_dir: str = config.DATA_DIR  # the data folder; only the `natural` task reads files
    tokenizer: str = ""            # a tokenizer file (tokenizer.py; `natural` needs one): the vocab
    init: str = "scratch"          # "scratch" or "resume" (out_dir/ckpt_last.pt, exactly)
    vocab_size: int = 256          # synthetic vocabulary size without --tokenizer (paper: 32100)
    min_len: int = 10              # body lengths of the simple tasks (paper: 10..220); max_len also
    max_len: int = 24              # bounds LIME, nesting_language and natural (input length)
    n_task_tokens: int = 0         # > 0: random-token tasks use the first n content ids; 0 = all
    model: str = "tiny"            # a model.PRESETS name
    dropout: float = 0.0           # paper: 0.1; a short run learns faster without
    workers: int = 0               # processes making batches ahead, per rank; 0 = in the loop

PRESETS = dict(cpu={}, paper=dict(   # --preset: cpu = the defaults above, paper = T5's recipe
    model="t5-small", vocab_size=32100, min_len=10, max_len=220, src_len=512, tgt_len=512,
    dropout=0.1, lr=0.01, warmup_steps=10000, max_steps=80000, batch_size=128, micro_batch_size=32,
    eval_interval=5000, eval_batches=20, ckpt_interval=5000, threads=0, workers=4))  # 4 x 3k ex/s
# At CPU scale, room for the long inputs: LIME's (a 68-id alphabet prefix), the corrupted ones, and
# nonsense documents (BPE: ~340 ids, summaries ~180, at most ~500 and ~570), which nothing cuts
CPU_TASKS = {t: dict(max_len=128, src_len=128, tgt_len=128) for t in
             ("lime", "lime_induct", "lime_deduct", "lime_abduct", "natural", "nesting_language")}
CPU_TASKS["nonsense_summary"] = dict(src_len=512, tgt_len=512)

def parse_config(argv) -> tuple:
    """The settings that will run, and on --init=resume the checkpoint to continue (else None)."""
    def recipe(c):         # the preset's values; at CPU scale a mixture takes every part's lengths
        config.check_choice("preset", c.preset, PRESETS)
        parts = [CPU_TASKS.get(t.strip(), {}) for t in c.task.split("+") if c.preset == "cpu"]
        return {k: v for d in [PRESETS[c.preset], *parts] for k, v in d.items()}
    return parse_run(PretrainConfig, argv, recipe, __doc__,
                     same_run=("task", "model", "vocab_size", "tokenizer"))

class TaskData(Dataset):
    """train()'s `train_data`, its state the position: a DataLoader over this map-style dataset,
    item k the examples [start + k*n, start + (k+1)*n) of the task's stream, collated; with
    workers > 0 made a few ahead in forked processes (they inherit the task: its lambdas do not
    pickle), the same batches. DataLoader stops them if dropped, on Ctrl-C or if this one dies."""

    def __init__(self, task, seed: int, src_len: int, tgt_len: int, workers: int = 0):
        self.task, self.seed, self.lens, self.workers = task, seed, (src_len, tgt_len), workers
        self.position, self.start, self.n, self.batches = 0, 0, 0, None   # batches: from start

    def __getitem__(self, k: int) -> dict:
        stream = TaskStream(self.task, self.seed, "train", self.start + k * self.n)
        return collate(stream.next_examples(self.n), *self.lens)[0]

    def next_batch(self, n: int) -> dict:
        if self.batches is None or n != self.n:            # first use, a resume, another size
            self.close()
            self.start, self.n = self.position, n          # generator: DataLoader's seeding
            self.batches = iter(DataLoader(                # leaves the global RNG (dropout's)
                self, batch_size=None, sampler=count(), generator=torch.Generator(),
                num_workers=self.workers, multiprocessing_context="fork" if self.workers else None))
        self.position += n
        return next(self.batches)

    def close(self):                                       # dropping the iterator stops the workers
        self.batches = None

    def state_dict(self) -> dict:
        return dict(position=self.position)

    def load_state_dict(self, s: dict):                   # the batches made ahead are dropped
        self.position, self.batches = s["position"], None

def baselines(examples, vocab) -> dict:
    """Trivial outputs scored on the held-out examples: the input copied (after the task prefix,
    up to the first sentinel), and the best constant output (each position's commonest token)."""
    sources, targets = zip(*examples)
    def score(preds):
        right = sum(a == b for p, t in zip(preds, targets) for a, b in zip(p, t))
        return dict(exact_match=sum(p == t for p, t in zip(preds, targets)) / len(targets),
                    token_acc=right / sum(map(len, targets)))
    copies = [s[next((i for i, x in enumerate(s, 1) if vocab.is_sentinel(x)), 0):] for s in sources]
    columns = [[t[i] for t in targets if len(t) > i] for i in range(max(map(len, targets)))]
    constant = [max(set(c), key=c.count) for c in columns]
    return dict(copy=score(copies), constant=score([constant] * len(targets)))

def main(argv):
    cfg, resume = parse_config(argv)
    for t in cfg.task.split("+"):
        config.check_choice("task", t.strip(), TASKS)
    config.check_choice("model", cfg.model, MODEL_PRESETS)
    config.check_choice("init", cfg.init, ("scratch", "resume"))
    config.check_range("dropout", cfg.dropout, 0, 1)
    for name in ("n_task_tokens", "workers"):
        config.check_range(name, getattr(cfg, name), lo=0)
    check_train_config(cfg, world := int(os.environ.get("WORLD_SIZE", "1")), resume is not None)
    tok = load_tokenizer(cfg.tokenizer) if cfg.tokenizer else None
    vocab = tok or Vocab(cfg.vocab_size)
    task = get_task(cfg.task, vocab, tokenizer=tok, data_dir=cfg.data_dir, min_len=cfg.min_len,
                    max_len=cfg.max_len, n_task_tokens=cfg.n_task_tokens or None)
    torch.manual_seed(cfg.seed)       # T5X's init, the same on every rank (a resume: train() loads)
    model = T5(get_config(cfg.model, vocab_size=vocab.model_vocab_size, dropout_rate=cfg.dropout))
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"{cfg.task}: {model.num_params() / 1e6:.2f}M parameters, {asdict(model.config)}")
    n, mbs = cfg.eval_batches * cfg.batch_size, micro_batch(cfg, world)
    held_out = TaskStream(task, cfg.seed, "validation").next_examples(n)   # the split's start
    val = [collate(held_out[i:i + mbs], cfg.src_len, cfg.tgt_len)[0] for i in range(0, n, mbs)]
    t0, data = time.time(), TaskData(task, cfg.seed, cfg.src_len, cfg.tgt_len, cfg.workers)
    with closing(data):                                    # however train() ends: stop the workers
        out = train(cfg, model, data, lambda m, step: evaluate(
            m, val, max_new_tokens=cfg.tgt_len, decode=tok.decode if tok else None),
            resume=resume, log_extra=dict(task=cfg.task))
    if out["rank"] == 0:
        m, base = out["metrics"], baselines(held_out, vocab)
        cut = sum(len(s) > cfg.src_len or len(t) > cfg.tgt_len for s, t in held_out) / n
        print(f"\n{cfg.task}, step {out['step']}, {time.time() - t0:.0f} s (best token accuracy "
              f"{out['best_token_acc']:.1%} at step {out['best_step']}), {n} held-out examples"
              f" ({cut:.0%} cut to --src_len/--tgt_len):")
        for name, r in [("model", m), *base.items()]:      # vs the copy and constant outputs
            print(f"  {name:<8} exact match {r['exact_match']:6.1%}, "
                  f"token accuracy {r['token_acc']:6.1%}")
        config.write_json(os.path.join(cfg.out_dir, "result.json"), dict(   # last: "finished"
            task=cfg.task, step=out["step"], best_val_token_acc=out["best_token_acc"],
            best_step=out["best_step"], **{f"val_{k}": v for k, v in m.items()}, baselines=base,
            cut_fraction=cut, wall_s=time.time() - t0, config=asdict(cfg)))
    return out

if __name__ == "__main__":
    config.main(main)
