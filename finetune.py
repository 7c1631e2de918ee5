"""finetune.py: fine-tune a T5 on one of the paper's six downstream tasks, scored as the paper does.

It trains (train.py) from scratch, a pretrain.py checkpoint, a Hugging Face T5 or a stats_init.py
init; the checkpoint of best validation token accuracy then beam-decodes the test split once (the
paper's rule): out_dir/result.json. Data: <data_dir>/<task>/{train,validation,test}.jsonl
({"source", "target"}; SQuAD adds "answers") or the released {train,valid,test}.txt
(input<TAB>target), EOS appended, no task prefix (as the paper).
    python finetune.py --task=mtop --init=out/set/ckpt_best.pt  # or scratch, stats:<s>:<ckpt>, ...
    python finetune.py --preset=paper --task=squad --init=hf:t5-small --tokenizer=t5/tokenizer.json
    python finetune.py --init=resume --task=mtop  # continue out/mtop exactly; -h: every setting
Reading order: ..., metrics.py, finetune.py (here), stats_init.py, ... Next: stats_init.py.
"""
import functools, hashlib, json, os, random, time
from dataclasses import asdict, dataclass, replace

import torch
from tqdm import tqdm

import config
from metrics import compute_metrics
from model import PRESETS as MODEL_PRESETS, T5, T5Config, get_config
from stats_init import init_from_stats, load_source, parse_spec, preattn_ln_init
from tasks import collate
from tokenizer import get_tokenizer, load_tokenizer
from train import TrainConfig, autocast, check_train_config, evaluate, load_checkpoint
from train import micro_batch, parse_run, train

# Per task: the CPU scale-down (lengths cover ~all examples under the 8192-id BPE), metrics.py's
# metric, the score the paper reports, the released scripts' values (PAPER's order); and recipe().
PAPER = ("src_len", "tgt_len", "batch_size", "max_steps", "lr", "eval_interval", "max_decode")
TASKS = {
    "cnndm_10k": dict(cpu=dict(src_len=512, tgt_len=128, n_test=100), metric="rouge",
                      score="rouge1", paper=(512, 256, 128, 100_000, 1e-3, 10_000, 148)),
    "mtop": dict(cpu=dict(src_len=64, tgt_len=128), metric="em,f1", score="em",
                 paper=(1024, 128, 128, 100_000, 1e-3, 10_000, 128)),
    "webqsp": dict(cpu=dict(src_len=64, tgt_len=128), metric="em,f1", score="em",
                   paper=(2048, 256, 32, 50_000, 1e-3, 5_000, 256)),
    # SMILES: test EM stays near 0 in the CPU budget (0.7% after 1200 steps at lr 0.01)
    "retrosynthesis": dict(cpu=dict(src_len=160, tgt_len=160), metric="em", score="em",
                           paper=(256, 256, 128, 400_000, 3e-3, 10_000, 256)),
    "code_translation": dict(cpu=dict(src_len=256, tgt_len=256, n_test=200), metric="em",
                             score="em", paper=(1024, 1024, 32, 150_000, 3e-3, 10_000, 1024)),
    "squad": dict(cpu=dict(src_len=384, tgt_len=32), metric="squad", score="em",
                  paper=(512, 128, 128, 250_000, 1e-3, 10_000, 128)),
}
PAIR = ("source", "target")
SPLIT_FILES = {"train": ("train.jsonl", "train.txt"),  # our layout, then the original release's
               "validation": ("validation.jsonl", "valid.txt"), "test": ("test.jsonl", "test.txt")}

def recipe(preset: str, task: str) -> dict:
    """What --preset gives --task: the scale's values, then the task's own."""
    config.check_choice("task", task, TASKS)
    config.check_choice("preset", preset, ("cpu", "paper"))
    cnndm, own = task == "cnndm_10k", TASKS[task]["cpu"]  # the paper's CNNDM-10K was lowercased
    if preset == "paper":  # T5-small (--init=hf:..., --tokenizer=...); test capped as released
        own = dict(zip(PAPER, TASKS[task]["paper"]))
        return dict(own, model="t5-small", eval_batches=128, n_test=20_000 if cnndm else 5000,
                    lowercase=cnndm, micro_batch_size=32, ckpt_interval=own["eval_interval"])
    # the tiny T5 for 300 steps (what the CPU grid affords), lr 0.03 (1e-3 learns little this soon),
    # greedy decoding (beam 4 costs ~4x), 1000 test examples, bucket (~1.5x faster): results/cpu
    return {**dict(model="tiny", lr=0.03, max_steps=300, eval_interval=100, n_test=1000, bucket=50,
                   num_beams=1, lowercase=cnndm, max_decode=own["tgt_len"]), **own}

@dataclass
class FinetuneConfig(TrainConfig):
    lr_schedule: str = "constant"  # the paper's
    z_loss: float = 1e-4           # T5X's fine-tuning default
    eval_batches: int = 16         # validation batches of batch_size for token accuracy
    eval_at_start: bool = False    # also evaluate (token accuracy) at step 0
    log_interval: int = 50         # steps between log lines
    ckpt_interval: int = 200       # steps between ckpt_last.pt writes (a kill loses fewer)
    threads: int = 0               # CPU threads (torch.set_num_threads), 0 = torch's default
    preset: str = "cpu"            # "cpu" (minutes on a laptop) or "paper", then --task's values
    task: str = "mtop"             # one of TASKS
    data_dir: str = config.DATA_DIR  # holds <task>/{train,validation,test}.jsonl, natural_text/
    init: str = "scratch"  # scratch, <.pt>, hf:<dir>, stats:<scheme>:<ckpt>, preattn_ln:<c>, resume
    tokenizer: str = ""            # a tokenizer file; "" = cache_dir/bpe<size>.json, made if absent
    tokenizer_size: int = 8192     # BPE size (ids incl. 100 sentinels) when training one
    cache_dir: str = "cache"       # the trained BPE and the tokenized splits
    lowercase: bool = False        # lowercase source and target
    bucket: int = 0                # > 0: batches of similar lengths, sorted in chunks of this many
    model: str = "tiny"            # model.PRESETS name for --init=scratch and preattn_ln
    dropout: float = 0.1           # the paper's
    n_test: int = 0                # test examples decoded; 0 = all
    num_beams: int = 4             # beams (the paper: 4, brevity penalty alpha 0.6); 1 = greedy
    max_decode: int = 128          # decoding budget in tokens

def get_finetune_config(argv) -> tuple:
    """Checked settings (defaults, --preset's or a resume's, then argv) and the resume (or None)."""
    cfg, resume = parse_run(FinetuneConfig, argv, lambda c: recipe(c.preset, c.task), __doc__,
                            same_run=("task", "tokenizer", "tokenizer_size", "lowercase"))
    for name, lo in dict(num_beams=1, max_decode=1, n_test=0, bucket=0, tokenizer_size=359).items():
        config.check_range(name, getattr(cfg, name), lo)  # 359: a BPE's specials, bytes, sentinels
    config.check_range("dropout", cfg.dropout, 0.0, 0.99)
    config.check_choice("model", cfg.model, MODEL_PRESETS)
    if resume:                                             # it keeps its --init
        cfg = replace(cfg, init=resume["config"]["init"])
    elif (path := parse_spec(cfg.init)[2]) and not os.path.exists(path):
        raise FileNotFoundError(f"--init={cfg.init}: {path} does not exist")
    if cfg.tokenizer and not os.path.exists(cfg.tokenizer):  # a named file is read, never made
        raise FileNotFoundError(f"--tokenizer={cfg.tokenizer} does not exist; make one with "
                                f"`python tokenizer.py --path={cfg.tokenizer}` or leave it out")
    check_train_config(cfg, resume=resume is not None)
    return cfg, resume

def load_split(data_dir, task, split) -> list:
    """[{source, target, answers}]; a bad line fails with its file:line, none is dropped (the
    original reader dropped lines with extra tabs)."""
    paths = [os.path.join(data_dir, task, name) for name in SPLIT_FILES[split]]
    if not (path := next(filter(os.path.exists, paths), None)):
        raise FileNotFoundError(f"no {split} split of {task!r}: looked for {' and '.join(paths)}")
    with open(path, "rb") as f:
        lines = [(f"{path}:{n}", raw) for n, raw in enumerate(f, 1) if raw.strip()]
    rows, jsonl = [], path.endswith(".jsonl")
    for where, raw in lines:
        try:
            line = raw.decode("utf-8")
            obj = json.loads(line) if jsonl else dict(zip(PAIR, line.rstrip("\r\n").split("\t")))
        except UnicodeDecodeError as e:
            raise config.UserError(f"{where}: not UTF-8 (byte {e.start + 1} of the line)") from None
        except json.JSONDecodeError as e:
            raise config.UserError(f"{where}: not valid JSON ({e.msg})") from None
        if not jsonl and (n := line.count("\t") + 1) != 2:
            raise config.UserError(f"{where}: expected 'input<TAB>target', found {n} fields")
        if not (isinstance(obj, dict) and all(isinstance(obj.get(k), str) for k in PAIR)):
            raise config.UserError(f"{where}: expected an object with string 'source' and 'target'")
        answers = obj.get("answers") or [obj["target"]]  # SQuAD is scored against every answer
        if not (isinstance(answers, list) and all(isinstance(a, str) for a in answers)):
            raise config.UserError(f"{where}: 'answers' must be a list of strings")
        rows.append(dict(source=obj["source"], target=obj["target"], answers=answers))
    if not rows:
        raise config.UserError(f"{path}: no examples")
    return rows

def load_data(cfg: FinetuneConfig, tok, tok_path: str) -> dict:
    """{split: (rows, [(source ids + EOS, target ids + EOS)])}, source and target lowercased with
    --lowercase. The ids are cached under a hash of the rows and the tokenizer file."""
    with open(tok_path, "rb") as f:
        tok_hash = hashlib.sha1(f.read()).hexdigest()[:10]
    rows = {split: [dict(r, **{k: r[k].lower() for k in PAIR}) if cfg.lowercase else r
                    for r in load_split(cfg.data_dir, cfg.task, split)] for split in SPLIT_FILES}
    key = hashlib.sha1(json.dumps([rows, tok_hash]).encode()).hexdigest()
    cache = f"{cfg.cache_dir}/{cfg.task}-{tok_hash}{'-lc' * cfg.lowercase}.pt"
    ids = torch.load(cache, weights_only=True) if os.path.exists(cache) else {}
    if ids.get("key") != key:                              # flat ids: source, target, source, ...
        if ids:
            print(f"{cache} is stale (made from {ids['data_dir']}): rebuilding")
        seqs = [tok.encode(r[k]) + [tok.eos_id] for split in rows.values()
                for r in tqdm(split, desc="tokenize", leave=False, mininterval=2) for k in PAIR]
        ids = dict(key=key, data_dir=os.path.realpath(cfg.data_dir), lens=torch.tensor(
            [len(s) for s in seqs]), ids=torch.tensor([i for s in seqs for i in s]).int())
        config.atomic_write(cache, lambda p: torch.save(ids, p))
    seqs = iter(t.tolist() for t in ids["ids"].split(ids["lens"].tolist()))
    return {split: (r, [(next(seqs), next(seqs)) for _ in r]) for split, r in rows.items()}

class EpochData:
    """train()'s `train_data`: epochs shuffled by (seed, epoch); the state, one position, resumes
    the same batches. bucket > 0 cuts padding (T5 packs; sorting is simpler): chunks of `bucket`
    batches sorted by length, cut into batches, shuffled; each epoch drops its len % n leftover."""
    def __init__(self, pairs, seed: int, src_len: int, tgt_len: int, bucket: int = 0):
        self.pairs, self.seed, self.bucket, self.lens = pairs, seed, bucket, (src_len, tgt_len)
        self.position, self.sizes = 0, [len(s) + len(t) for s, t in pairs]

    @functools.lru_cache(maxsize=1)                       # batches rarely cross epochs
    def order(self, epoch: int, n: int) -> list:  # the example indices of `epoch`, n at a time
        order, rng = list(range(len(self.pairs))), random.Random(f"{self.seed}/epoch{epoch}")
        rng.shuffle(order)
        if self.bucket:                                    # chunk boundaries fall between batches
            order, chunk = order[:len(order) - len(order) % n], self.bucket * n
            order = [k for c in range(0, len(order), chunk)
                     for k in sorted(order[c:c + chunk], key=self.sizes.__getitem__)]
            batches = [order[b:b + n] for b in range(0, len(order), n)]
            rng.shuffle(batches)
            order = [k for batch in batches for k in batch]
        return order

    def next_batch(self, n: int) -> dict:
        if self.bucket and len(self.pairs) < n:
            raise config.UserError(f"--bucket needs a batch of {n} examples, has {len(self.pairs)}")
        per_epoch = len(self.pairs) - (len(self.pairs) % n if self.bucket else 0)
        at, self.position = self.position, self.position + n
        ks = [self.order(i // per_epoch, n)[i % per_epoch] for i in range(at, at + n)]
        return collate([self.pairs[k] for k in ks], *self.lens)[0]

    def state_dict(self) -> dict:
        return dict(position=self.position)

    def load_state_dict(self, s: dict):
        self.position = s["position"]

def build_model(cfg: FinetuneConfig, tok) -> T5:
    """The network --init names, with cfg.dropout; its vocabulary must fit the tokenizer's."""
    torch.manual_seed(cfg.seed)                            # default init of every fresh tensor
    kind, arg, path = parse_spec(cfg.init)
    state, source = load_source(path) if path else \
        ({}, get_config(cfg.model, vocab_size=tok.model_vocab_size))
    model = T5(replace(source, dropout_rate=cfg.dropout))
    if kind == "stats":                                    # Table 2: a fresh draw of its statistics
        init_from_stats(model, state, arg, cfg.seed)
    elif kind == "preattn_ln":                             # Table 3: constant pre-attention norms
        preattn_ln_init(model, arg)
    elif path:                                             # every weight
        model.load_state_dict(state)
    if (n := tok.model_vocab_size) != model.config.vocab_size:
        raise config.UserError(f"--init={cfg.init}: {model.config.vocab_size} embedding rows but "
                               f"the tokenizer needs {n}; pre-train with this --tokenizer")
    return model

def decode_all(model, sources, tok, cfg: FinetuneConfig) -> list:
    """Beam-search predictions (text) for lists of source ids, batched by length: less padding."""
    device, preds, mbs = next(model.parameters()).device, [None] * len(sources), micro_batch(cfg)
    order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
    for i in tqdm(range(0, len(order), mbs), desc="decode", leave=False, mininterval=2):
        batch, _ = collate([(sources[j], [tok.eos_id]) for j in order[i:i + mbs]], cfg.src_len, 1)
        out = model.generate(batch["input_ids"].to(device), batch["attention_mask"].to(device),
                             max_new_tokens=cfg.max_decode, num_beams=cfg.num_beams)
        for j, row in zip(order[i:i + mbs], out.tolist()):
            preds[j] = tok.decode(row)                     # decode() skips pad and EOS
    return preds

def main(argv):
    cfg, resume = get_finetune_config(argv)
    spec, t0, mbs = TASKS[cfg.task], time.time(), micro_batch(cfg)
    tok_path = cfg.tokenizer or os.path.join(cfg.cache_dir, f"bpe{cfg.tokenizer_size}.json")
    tok = load_tokenizer(tok_path) if cfg.tokenizer else \
        get_tokenizer(cfg.data_dir, cfg.tokenizer_size, tok_path)
    data, n_val = load_data(cfg, tok, tok_path), cfg.eval_batches * cfg.batch_size
    train_pairs, val_pairs = data["train"][1], data["validation"][1][:n_val]
    test_rows, test_pairs = (x[:cfg.n_test or None] for x in data["test"])
    val_batches = [collate(val_pairs[i:i + mbs], cfg.src_len, cfg.tgt_len)[0]
                   for i in range(0, len(val_pairs), mbs)]
    cut = sum(len(s) > cfg.src_len or len(t) > cfg.tgt_len for s, t in train_pairs)
    print(f"{cfg.task}: {len(train_pairs)} train ({cut} cut to {cfg.src_len}/{cfg.tgt_len}), "
          f"{len(val_pairs)} validation, {len(test_pairs)} test; {tok_path}: {tok.size} ids")
    model = T5(T5Config(**{**resume["model_config"], "dropout_rate": cfg.dropout})) if resume \
        else build_model(cfg, tok)                         # a resume loads its weights in train()
    print(f"init {cfg.init}{' (resumed)' * bool(resume)}: {model.num_params() / 1e6:.2f}M params")
    out = train(cfg, model, EpochData(train_pairs, cfg.seed, cfg.src_len, cfg.tgt_len, cfg.bucket),
                lambda m, step: evaluate(m, val_batches, max_new_tokens=0, greedy=False),
                resume=resume, log_extra=dict(task=cfg.task, init=cfg.init))
    if out["rank"] != 0:                                   # under torchrun only rank 0 evaluated
        return None
    # The paper's rule: the test score at the step of best validation token accuracy (the earliest
    # on a tie), so the test split is decoded once, by ckpt_best.pt, not at every evaluation.
    model.load_state_dict(load_checkpoint(os.path.join(cfg.out_dir, "ckpt_best.pt"))["model"])
    with autocast(next(model.parameters()).device.type, cfg.dtype):
        preds = decode_all(model.eval(), [s for s, _ in test_pairs], tok, cfg)
    refs = [r["answers"] if spec["metric"] == "squad" else r["target"] for r in test_rows]
    scores = compute_metrics(spec["metric"], preds, refs)
    print(f"  e.g. target: {str(refs[0])[:120]}\n       output: {preds[0][:120]}")
    result = dict(task=cfg.task, init=cfg.init, seed=cfg.seed, metric=spec["score"],
                  score=scores[spec["score"]], best_step=out["best_step"],
                  best_val_token_acc=out["best_token_acc"], scores=scores,
                  n_test=len(test_pairs), wall_s=time.time() - t0, config=asdict(cfg))
    config.write_json(os.path.join(cfg.out_dir, "result.json"), result)  # last: "finished"
    print(f"\n{cfg.task} ({cfg.init}): test {spec['score']} {result['score']:.2f} at step "
          f"{out['best_step']} (validation token accuracy {100 * out['best_token_acc']:.1f}%)")
    return result

if __name__ == "__main__":
    config.main(main)
