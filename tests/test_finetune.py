"""finetune.py: data layouts and their errors, the tokenized cache, settings checked up front,
best-step selection, every --init kind, bucketed epochs, and a tiny run that learns."""
import json
import os
import random

import pytest
import torch

import finetune
import model as model_lib
from config import UserError
from finetune import EpochData, load_data, load_split
from metrics import compute_metrics
from tokenizer import load_tokenizer, train_bpe
from train import load_checkpoint, micro_batch

TINY = model_lib.T5Config(vocab_size=512, d_model=32, d_kv=8, d_ff=64, num_layers=1,
                          num_decoder_layers=1, num_heads=2)


def get_finetune_config(argv):                             # the settings; the resume is None
    cfg, resume = finetune.get_finetune_config(argv)
    assert resume is None
    return cfg


def write(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:                            # bytes as given: bad UTF-8 on purpose
        f.write(b"\n".join(x if isinstance(x, bytes) else x.encode() for x in lines) + b"\n")


def evaluations(out_dir):                                  # (step, val token acc, val loss)
    with open(out_dir / "log.jsonl") as f:
        return [(r["step"], r["val_token_acc"], r["val_loss"]) for r in map(json.loads, f)
                if "val_token_acc" in r]


def write_task(folder, rows_by_split):
    for split, rows in rows_by_split.items():
        write(folder / "mtop" / f"{split}.jsonl",
              [json.dumps(dict(source=s, target=t)) for s, t in rows])


def test_jsonl_layout_with_squad_answers(tmp_path):
    write(tmp_path / "squad" / "test.jsonl", [
        json.dumps(dict(source="question: q context: c", target="Paris",
                        answers=["Paris", "the city of Paris"])),
        "",                                                # a blank line is skipped, not an example
        json.dumps(dict(source="s2", target="t2")),
    ])
    rows = load_split(str(tmp_path), "squad", "test")
    assert [r["answers"] for r in rows] == [["Paris", "the city of Paris"], ["t2"]]
    assert rows[1]["source"] == "s2"


def test_original_tsv_layout_uses_valid_txt(tmp_path):
    write(tmp_path / "mtop" / "valid.txt", ["what time is it\t[IN:GET_TIME ]", "hi\tthere"])
    rows = load_split(str(tmp_path), "mtop", "validation")
    assert [(r["source"], r["target"]) for r in rows] == [("what time is it", "[IN:GET_TIME ]"),
                                                          ("hi", "there")]


OK = '{"source": "a", "target": "b"}'


@pytest.mark.parametrize("name,lines,message", [
    ("train.jsonl", [OK, '{"source": "a", "target": '], r"train.jsonl:2: not valid JSON"),
    ("train.jsonl", ['{"source": "a", "target": 3}'], r"train.jsonl:1: expected an object with"),
    ("train.jsonl", ['{"source": "a", "target": "b", "answers": [1]}'], r"jsonl:1: 'answers' must"),
    ("train.txt", ["a\tb", "a\tb\tc"], r"train.txt:2: expected 'input<TAB>target', found 3"),
    ("train.txt", ["no tab here"], r"train.txt:1: expected 'input<TAB>target', found 1"),
    ("train.jsonl", [OK, b'{"source": "caf\xe9", "target": "b"}'], r"l:2: not UTF-8 \(byte 16 "),
    ("train.txt", ["a\tb", b"x\t\xff"], r"train.txt:2: not UTF-8"),
])
def test_bad_lines_name_file_and_line(tmp_path, name, lines, message):
    write(tmp_path / "t" / name, lines)
    with pytest.raises(UserError, match=message):
        load_split(str(tmp_path), "t", "train")


def test_missing_split_lists_both_layouts(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"test\.jsonl and .*test\.txt"):
        load_split(str(tmp_path), "mtop", "test")


def test_presets_and_overrides():
    cfg = get_finetune_config(["--task=retrosynthesis"])
    assert cfg.preset == "cpu" and cfg.lr == 0.03
    assert cfg.src_len == finetune.TASKS["retrosynthesis"]["cpu"]["src_len"]
    paper = get_finetune_config(["--task=webqsp", "--preset=paper", "--lr=0.01"])
    assert (paper.src_len, paper.tgt_len, paper.batch_size, paper.max_steps, paper.lr) == \
        (2048, 256, 32, 50_000, 0.01)
    assert (paper.model, paper.eval_batches, paper.n_test, paper.micro_batch_size) == \
        ("t5-small", 128, 5000, 32)
    assert paper.ckpt_interval == paper.eval_interval == 5000 and paper.bucket == 0
    assert not paper.lowercase
    assert get_finetune_config(["--task=retrosynthesis", "--preset=paper"]).lr == 3e-3
    # one CPU budget for every task: 300 steps, three evaluations, greedy decoding of 1000 test
    # examples (code translation: 200), bucketed, the tiny T5; the paper preset keeps beam 4
    assert (cfg.max_steps, cfg.eval_interval, cfg.bucket, cfg.model) == (300, 100, 50, "tiny")
    mtop = get_finetune_config(["--task=mtop"])
    assert (mtop.max_steps, mtop.eval_interval, mtop.bucket, mtop.n_test) == (300, 100, 50, 1000)
    assert (mtop.num_beams, paper.num_beams) == (1, 4)
    assert (mtop.lr_schedule, mtop.z_loss, mtop.dropout, mtop.eval_at_start) == \
        ("constant", 1e-4, 0.1, False)
    retro = get_finetune_config(["--task=retrosynthesis", "--max_steps=300"])
    assert retro.max_steps == 300                          # flags still win
    cnndm = get_finetune_config(["--preset=paper", "--task=cnndm_10k"])
    assert cnndm.lowercase and cnndm.n_test == 20_000
    assert get_finetune_config(["--task=cnndm_10k"]).lowercase
    with pytest.raises(UserError, match="--task='imdb' is not one of cnndm_10k, mtop"):
        get_finetune_config(["--task=imdb"])
    with pytest.raises(UserError, match="--preset='gpu' is not one of cpu, paper"):
        get_finetune_config(["--preset=gpu"])
    with pytest.raises(UserError, match="unknown setting --lr_max"):
        get_finetune_config(["--lr_max=1"])


def test_micro_batch_size_defaults_to_batch_size():
    assert micro_batch(get_finetune_config(["--batch_size=16"])) == 16
    assert micro_batch(get_finetune_config(["--batch_size=16", "--micro_batch_size=8"])) == 8
    with pytest.raises(ValueError, match="not divisible"):
        get_finetune_config(["--batch_size=16", "--micro_batch_size=5"])


def test_help_prints_the_values_that_run_for_the_task(capsys):
    with pytest.raises(SystemExit):
        get_finetune_config(["--task=code_translation", "-h"])
    out = capsys.readouterr().out                       # the task's own values, then the scale's
    assert "--n_test=200" in out and "--src_len=256" in out and "--max_steps=300" in out
    assert "--bucket=50" in out and "--model='tiny'" in out
    with pytest.raises(SystemExit):
        get_finetune_config(["--task=mtop", "--preset=paper", "-h"])
    assert "--max_steps=100000" in capsys.readouterr().out


@pytest.mark.parametrize("arg,message", [
    ("--num_beams=0", "--num_beams=0 must be >= 1"), ("--max_decode=0", "--max_decode=0 must be"),
    ("--n_test=-1", "--n_test=-1 must be >= 0"),
    ("--bucket=-1", "--bucket=-1 must be >= 0"), ("--tokenizer_size=100", "must be >= 359"),
    ("--model=huge", "--model='huge' is not one of"), ("--dtype=int8", "--dtype='int8' is not one"),
    ("--init=preattn_ln:abc", "expected preattn_ln:<c>, a number c > 0"),
    ("--init=preattn_ln:0", "expected preattn_ln:<c>"),
    ("--init=stats:per_param_scale", "expected stats:<scheme>:<checkpoint>"),
    ("--init=stats:bogus:x.pt", "unknown init scheme 'bogus'"),
])
def test_bad_settings_are_refused_before_any_work(tmp_path, arg, message):
    with pytest.raises(ValueError, match=message):          # UserError, or train.py's check
        finetune.main([arg, f"--data_dir={tmp_path}", f"--cache_dir={tmp_path / 'cache'}",
                       f"--out_dir={tmp_path / 'out'}"])
    assert os.listdir(tmp_path) == []                      # no tokenizer trained, nothing written
    assert get_finetune_config(["--init=preattn_ln:0.4"]).init == "preattn_ln:0.4"


def test_missing_init_and_tokenizer_files_fail_before_any_work(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"--init=.*nope.pt: .*nope.pt does not exist"):
        get_finetune_config([f"--init={tmp_path / 'nope.pt'}"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        get_finetune_config([f"--init=stats:per_param_scale:{tmp_path / 'nope.pt'}"])
    path = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match=r"--tokenizer=.*nope.json does not exist; make"):
        finetune.main([f"--tokenizer={path}", f"--data_dir={tmp_path}",
                       f"--out_dir={tmp_path / 'out'}"])
    assert not path.exists() and not (tmp_path / "out").exists()


def test_tokenized_cache_is_keyed_on_the_data_file(tmp_path, capsys):
    tok = train_bpe(["hello world, hello there"] * 5, size=400, progress=False)
    tok.save(str(tmp_path / "tok.json"))
    ids = lambda text: tok.encode(text) + [tok.eos_id]     # noqa: E731
    for folder, word in (("a", "hello"), ("b", "there")):
        write_task(tmp_path / folder, {s: [(f"{word} {i}", "world" * (i % 3 + 1)) for i in range(7)]
                                       for s in ("train", "validation", "test")})

    def load(folder, *extra):
        cfg = get_finetune_config([f"--data_dir={tmp_path / folder}",
                                   f"--cache_dir={tmp_path / 'c'}", *extra])
        out = load_data(cfg, tok, str(tmp_path / "tok.json"))
        return {k: v[1] for k, v in out.items()}, capsys.readouterr().out

    a, _ = load("a")
    assert all(s[-1] == tok.eos_id and t[-1] == tok.eos_id for s, t in a["train"])
    assert a["train"][0] == (ids("hello 0"), ids("world"))
    again, said = load("a")
    assert again == a and "stale" not in said              # read back from the cache
    b, said = load("b")                                    # the same task from another --data_dir
    assert b["train"][0][0] == ids("there 0") and "stale" in said
    assert os.path.realpath(tmp_path / "a") in said       # the old path is named
    write(tmp_path / "b" / "mtop" / "train.jsonl", [json.dumps(dict(source="sun", target="moon"))])
    rewritten, said = load("b")                            # the same file, rewritten
    assert rewritten["train"] == [(ids("sun"), ids("moon"))] and "stale" in said
    os.utime(tmp_path / "b" / "mtop" / "train.jsonl", (1, 1))
    assert load("b") == (rewritten, "")                    # keyed by content, not by its time
    assert load("b", "--lowercase=True")[0] == rewritten   # (nothing to lowercase here)


def test_epoch_order_and_exact_resume():
    pairs = [([5] * (i + 1) + [1], [6, 1]) for i in range(7)]
    a, b = EpochData(pairs, 3, 16, 16), EpochData(pairs, 3, 16, 16)
    first = [a.next_batch(3)["input_ids"] for _ in range(5)]  # 15 examples: two epoch boundaries
    b.load_state_dict(dict(position=6))
    assert torch.equal(b.next_batch(3)["input_ids"], first[2])  # resume continues the same order
    assert a.state_dict() == dict(position=15)
    c = EpochData(pairs, 3, 16, 16)
    c.next_batch(1)
    epoch0, epoch1 = c.order(0, 1), c.order(1, 1)
    assert sorted(epoch0) == sorted(epoch1) == list(range(7)) and epoch0 != epoch1  # reshuffled


def test_bucketed_batches_cut_padding_and_cover_each_epoch_once():
    rng = random.Random(0)
    lens = [rng.randint(1, 56) for _ in range(103)]  # targets about as long as sources, as in data
    pairs = [([5] * n + [1], [6] * (n + rng.randint(0, 6)) + [1]) for n in lens]
    padded = lambda d: sum(b["input_ids"].numel() + b["labels"].numel()  # noqa: E731
                           for b in (d.next_batch(8) for _ in range(12)))
    plain, bucketed = EpochData(pairs, 0, 64, 64), EpochData(pairs, 0, 64, 64, bucket=4)
    assert padded(bucketed) < 0.75 * padded(plain)
    d = EpochData(pairs, 0, 64, 64, bucket=4)
    d.next_batch(8)  # 103 examples -> 12 batches of 8 per epoch; the 7 left over differ per epoch
    epochs = [d.order(e, 8) for e in range(2)]
    assert all(len(set(e)) == 96 for e in epochs) and set(epochs[0]) != set(epochs[1])
    a, b = EpochData(pairs, 0, 64, 64, bucket=4), EpochData(pairs, 0, 64, 64, bucket=4)
    first = [a.next_batch(8)["input_ids"] for _ in range(15)]  # crosses the epoch boundary at 12
    b.load_state_dict(dict(position=13 * 8))
    assert torch.equal(b.next_batch(8)["input_ids"], first[13])  # resume continues the same order
    with pytest.raises(UserError, match="--bucket needs a batch of 8 examples, has 3"):
        EpochData(pairs[:3], 0, 64, 64, bucket=4).next_batch(8)


def test_every_init_kind_and_the_vocabulary_check(tmp_path, monkeypatch):
    tok = train_bpe(["abc def"] * 3, size=400, progress=False)   # 512 embedding rows
    monkeypatch.setitem(model_lib.PRESETS, "tiny", TINY)
    source, path = model_lib.T5(TINY), str(tmp_path / "ck.pt")
    torch.save(dict(model=source.state_dict(), model_config=TINY.__dict__, step=0, config={}), path)
    build = lambda init: finetune.build_model(get_finetune_config([f"--init={init}"]), tok)  # noqa
    loaded = build(path)
    assert all(torch.equal(p, q) for p, q in zip(loaded.state_dict().values(),
                                                 source.state_dict().values()))
    assert loaded.config.dropout_rate == 0.1               # fine-tuning's, not the checkpoint's
    drawn = build(f"stats:per_param_scale:{path}")         # a fresh draw of the source's shape
    assert drawn.config.d_model == 32 and not torch.equal(drawn.shared.weight, source.shared.weight)
    norms = [p for n, p in build("preattn_ln:0.4").named_parameters()
             if n.endswith("attn_norm.weight")]
    assert norms and all(torch.all(p == 0.4) for p in norms)
    assert build("scratch").config.vocab_size == 512
    wide = model_lib.T5Config(**{**TINY.__dict__, "vocab_size": 1024})
    torch.save(dict(model=model_lib.T5(wide).state_dict(), model_config=wide.__dict__, step=0,
                    config={}), path)
    with pytest.raises(UserError, match="1024 embedding rows but the tokenizer needs 512"):
        build(path)


REVERSE_WORDS = "red blue green cat dog sun moon tree".split()


def reverse_task(tmp_path, monkeypatch):
    """A 'reverse three words' task, its BPE and a small T5 as "tiny": the settings to run it."""
    rng = random.Random(0)
    rows = lambda n: [(" ".join(w), " ".join(reversed(w)))  # noqa: E731
                      for w in (rng.sample(REVERSE_WORDS, 3) for _ in range(n))]
    data = tmp_path / "data"
    write_task(data, dict(train=rows(400), validation=rows(64), test=rows(48)))
    monkeypatch.setitem(model_lib.PRESETS, "tiny", model_lib.T5Config(
        vocab_size=512, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
        num_heads=4))
    tok = train_bpe([" ".join(REVERSE_WORDS)] * 20, size=400, progress=False)
    tok.save(str(tmp_path / "tok.json"))
    return [f"--data_dir={data}", "--task=mtop", f"--tokenizer={tmp_path / 'tok.json'}",
            f"--cache_dir={tmp_path / 'cache'}", "--batch_size=32", "--lr=0.01", "--src_len=16",
            "--tgt_len=16", "--max_decode=8", "--num_beams=2", "--dtype=float32", "--device=cpu",
            "--threads=1", "--eval_batches=2", "--n_test=0"]


def test_tiny_finetuning_run_learns_and_decodes_once_at_the_best_step(tmp_path, monkeypatch):
    """Exact match on the test split must rise from 0; the test split is decoded once, by the
    checkpoint of the best validation token accuracy (its score is that checkpoint's)."""
    args = reverse_task(tmp_path, monkeypatch)
    decodes, real = [], finetune.decode_all
    monkeypatch.setattr(finetune, "decode_all", lambda *a: decodes.append(1) or real(*a))
    torch.manual_seed(0)
    result = finetune.main(args + [f"--out_dir={tmp_path / 'out'}", "--max_steps=100",
                                   "--eval_interval=50", "--dropout=0.0", "--eval_at_start=True",
                                   "--lr=0.03"])
    assert len(decodes) == 1 and result["score"] > 50.0, result
    steps, curve, _ = zip(*evaluations(tmp_path / "out"))
    assert steps == (0, 50, 100) and curve[0] < curve[-1]
    best = load_checkpoint(str(tmp_path / "out" / "ckpt_best.pt"))
    assert best["step"] == result["best_step"] == 50 * curve.index(max(curve))
    cfg = get_finetune_config(args + ["--dropout=0.0"])
    net = model_lib.T5(model_lib.T5Config(**best["model_config"]))
    net.load_state_dict(best["model"])
    tok, rows = load_tokenizer(str(tmp_path / "tok.json")), load_split(cfg.data_dir, "mtop", "test")
    preds = real(net.eval(), [tok.encode(r["source"]) + [tok.eos_id] for r in rows], tok, cfg)
    assert compute_metrics("em,f1", preds, [r["target"] for r in rows])["em"] == result["score"]
    on_disk = json.load(open(tmp_path / "out" / "result.json"))
    assert on_disk["score"] == result["score"] and on_disk["n_test"] == 48
    assert on_disk["config"]["micro_batch_size"] == 0 and on_disk["config"]["bucket"] == 50


def test_resume_is_exact_and_keeps_the_init(tmp_path, monkeypatch):
    args = reverse_task(tmp_path, monkeypatch) + ["--dropout=0.1", "--eval_interval=3",
                                                  "--ckpt_interval=3", "--log_interval=1"]
    full = finetune.main(args + [f"--out_dir={tmp_path / 'a'}", "--max_steps=6"])
    finetune.main(args + [f"--out_dir={tmp_path / 'b'}", "--max_steps=3"])
    (tmp_path / "b" / "result.json").unlink()              # as if killed after its checkpoint
    resumed = finetune.main([f"--out_dir={tmp_path / 'b'}", "--init=resume", "--max_steps=6"])
    losses = lambda d: [r["loss"] for r in map(json.loads, open(d / "log.jsonl")) if "loss" in r]
    assert len(losses(tmp_path / "a")) == 6 and losses(tmp_path / "a") == losses(tmp_path / "b")
    a, b = (load_checkpoint(str(tmp_path / d / "ckpt_last.pt"))["model"] for d in "ab")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (resumed["score"], resumed["init"]) == (full["score"], "scratch")
    assert evaluations(tmp_path / "b") == evaluations(tmp_path / "a") and \
        [e[0] for e in evaluations(tmp_path / "a")] == [3, 6]   # every evaluation, resumed ones too
    with pytest.raises(UserError, match=r"--task='webqsp', but .* trained with task='mtop'"):
        finetune.main([f"--out_dir={tmp_path / 'b'}", "--init=resume", "--task=webqsp"])
    with pytest.raises(UserError, match=r"holds a run .*--init=resume.*--overwrite=True"):
        finetune.main(args + [f"--out_dir={tmp_path / 'b'}"])


def test_default_output_folder_is_per_task_and_checkpoints_fit_the_run():
    for task in finetune.TASKS:
        cfg = get_finetune_config([f"--task={task}"])
        assert cfg.out_dir == f"out/{task}" and cfg.ckpt_interval <= cfg.max_steps
