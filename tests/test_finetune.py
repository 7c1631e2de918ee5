"""finetune.py: data layouts and their errors, best-step selection, init checks, and a tiny run that learns."""
import json
import os
import random

import pytest
import torch

import finetune
import model as model_lib
from finetune import EpochData, get_finetune_config, load_split, select_best, tokenize_split
from tokenizer import train_bpe


def write(path, lines):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")


def test_jsonl_layout_with_squad_answers(tmp_path):
    write(tmp_path / "squad" / "test.jsonl", [
        json.dumps(dict(source="question: q context: c", target="Paris", answers=["Paris", "the city of Paris"])),
        "",                                                # a blank line is skipped, not an example
        json.dumps(dict(source="s2", target="t2")),
    ])
    rows = load_split(str(tmp_path), "squad", "test")
    assert [r["answers"] for r in rows] == [["Paris", "the city of Paris"], ["t2"]]
    assert rows[1]["source"] == "s2"


def test_original_tsv_layout_uses_valid_txt(tmp_path):
    write(tmp_path / "mtop" / "valid.txt", ["what time is it\t[IN:GET_TIME ]", "hi\tthere"])
    rows = load_split(str(tmp_path), "mtop", "validation")
    assert [(r["source"], r["target"]) for r in rows] == [("what time is it", "[IN:GET_TIME ]"), ("hi", "there")]


@pytest.mark.parametrize("name,lines,message", [
    ("train.jsonl", ['{"source": "a", "target": "b"}', '{"source": "a", "target": '], r"train.jsonl:2: not valid JSON"),
    ("train.jsonl", ['{"source": "a", "target": 3}'], r"train.jsonl:1: expected an object with string fields"),
    ("train.jsonl", ['{"source": "a", "target": "b", "answers": [1]}'], r"train.jsonl:1: 'answers' must be"),
    ("train.txt", ["a\tb", "a\tb\tc"], r"train.txt:2: expected 'input<TAB>target', found 3"),
    ("train.txt", ["no tab here"], r"train.txt:1: expected 'input<TAB>target', found 1"),
])
def test_bad_lines_name_file_and_line(tmp_path, name, lines, message):
    write(tmp_path / "t" / name, lines)
    with pytest.raises(ValueError, match=message):
        load_split(str(tmp_path), "t", "train")


def test_missing_split_lists_both_layouts(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"test\.jsonl and .*test\.txt"):
        load_split(str(tmp_path), "mtop", "test")


def test_best_step_is_max_val_token_acc_earliest_on_tie():
    history = [dict(step=0, val_token_acc=0.1, em=0.0), dict(step=10, val_token_acc=0.5, em=20.0),
               dict(step=20, val_token_acc=0.5, em=40.0), dict(step=30, val_token_acc=0.4, em=60.0)]
    best = select_best(history)
    assert best["step"] == 10 and best["em"] == 20.0       # not the max-over-steps metric (60)
    with pytest.raises(ValueError, match="no evaluation"):
        select_best([])


def test_presets_and_overrides():
    cfg = get_finetune_config(["--task=retrosynthesis"])
    assert cfg.preset == "cpu" and cfg.lr == 0.01 and cfg.src_len == finetune.CPU_TASKS["retrosynthesis"]["src_len"]
    paper = get_finetune_config(["--task=webqsp", "--preset=paper", "--lr=0.01"])
    assert (paper.src_len, paper.tgt_len, paper.batch_size, paper.max_steps, paper.lr) == (2048, 256, 32, 50_000, 0.01)
    assert get_finetune_config(["--task=retrosynthesis", "--preset=paper"]).lr == 3e-3
    # the CPU preset's retrosynthesis run: 1500 steps, evaluated once, bucketed (README's 14-minute run);
    # the other tasks keep the preset's 800 steps, two evaluations and unbucketed batches
    assert (cfg.max_steps, cfg.eval_interval, cfg.bucket) == (1500, 1500, 50)
    mtop = get_finetune_config(["--task=mtop"])
    assert (mtop.max_steps, mtop.eval_interval, mtop.bucket) == (800, 400, 0)
    assert get_finetune_config(["--task=retrosynthesis", "--max_steps=300"]).max_steps == 300  # flags still win
    assert get_finetune_config(["--preset=paper", "--task=cnndm_10k"]).lowercase
    with pytest.raises(ValueError, match="valid tasks: cnndm_10k, mtop"):
        get_finetune_config(["--task=imdb"])
    with pytest.raises(ValueError, match="unknown setting --lr_max"):
        get_finetune_config(["--lr_max=1"])


def test_tokenize_cache_round_trip_and_epoch_order(tmp_path):
    tok = train_bpe(["hello world, hello there"] * 5, size=400, progress=False)
    rows = [dict(source=f"hello {i}", target="world" * (i % 3)) for i in range(7)]
    cache = str(tmp_path / "c.pt")
    pairs = tokenize_split(rows, tok, lowercase=False, cache_path=cache)
    assert all(s[-1] == tok.eos_id and t[-1] == tok.eos_id for s, t in pairs)
    assert tokenize_split(rows, tok, lowercase=False, cache_path=cache) == pairs   # read back from the cache
    a, b = EpochData(pairs, 3, 16, 16), EpochData(pairs, 3, 16, 16)
    first = [a.next_batch(3)["input_ids"] for _ in range(5)]   # 15 examples: crosses two epoch boundaries
    b.load_state_dict(dict(position=6, truncated=0))
    assert torch.equal(b.next_batch(3)["input_ids"], first[2])  # resume continues the same order
    c = EpochData(pairs, 3, 16, 16)
    epoch0, epoch1 = [c._index(i) for i in range(7)], [c._index(i) for i in range(7, 14)]
    assert sorted(epoch0) == sorted(epoch1) == list(range(7)) and epoch0 != epoch1   # each epoch a new permutation


def test_checkpoint_with_wrong_vocabulary_fails_clearly(tmp_path):
    tok = train_bpe(["abc def"] * 3, size=400, progress=False)
    mc = model_lib.T5Config(vocab_size=1024, d_model=32, d_kv=8, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2)
    path = str(tmp_path / "ck.pt")
    torch.save(dict(model=model_lib.T5(mc).state_dict(), model_config=mc.__dict__, step=0, config={}), path)
    cfg = get_finetune_config([f"--init={path}"])
    with pytest.raises(ValueError, match="1024 embedding rows but the tokenizer needs 512"):
        finetune.build_model(cfg, tok)


def test_named_tokenizer_that_is_missing_fails_instead_of_being_trained(tmp_path):
    path = tmp_path / "nope.json"
    with pytest.raises(FileNotFoundError, match=r"--tokenizer=.*nope.json does not exist; make one with"):
        finetune.main([f"--tokenizer={path}", f"--data_dir={tmp_path}", f"--out_dir={tmp_path / 'out'}"])
    assert not path.exists() and not (tmp_path / "out").exists()


def test_tiny_finetuning_run_learns(tmp_path, monkeypatch):
    """A 'reverse three words' task: exact match on the test split must rise from 0 during training."""
    rng = random.Random(0)
    words = "red blue green cat dog sun moon tree".split()
    def rows(n):
        out = []
        for _ in range(n):
            w = rng.sample(words, 3)
            out.append(json.dumps(dict(source=" ".join(w), target=" ".join(reversed(w)))))
        return out
    data = tmp_path / "data"
    write(data / "mtop" / "train.jsonl", rows(400))
    write(data / "mtop" / "validation.jsonl", rows(64))
    write(data / "mtop" / "test.jsonl", rows(48))
    tiny = model_lib.T5Config(vocab_size=512, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_decoder_layers=2,
                              num_heads=4)
    monkeypatch.setitem(model_lib.PRESETS, "tiny", tiny)
    tok = train_bpe([" ".join(words)] * 20, size=400, progress=False)
    tok.save(str(tmp_path / "tok.json"))
    torch.manual_seed(0)
    result = finetune.main([f"--data_dir={data}", "--task=mtop", "--model=tiny", f"--tokenizer={tmp_path / 'tok.json'}",
                            f"--cache_dir={tmp_path / 'cache'}", f"--out_dir={tmp_path / 'out'}", "--max_steps=150",
                            "--eval_interval=75", "--batch_size=32", "--micro_batch_size=32", "--lr=0.01",
                            "--src_len=16", "--tgt_len=16", "--max_decode=8", "--num_beams=2", "--dropout=0.0",
                            "--dtype=float32", "--device=cpu", "--eval_batches=2", "--n_test=0", "--eval_at_start=True"])
    curve = [h["em"] for h in result["history"]]
    assert curve[0] == 0.0 and curve[-1] > 50.0, curve
    on_disk = json.load(open(tmp_path / "out" / "result.json"))
    assert on_disk["score"] == result["score"] and on_disk["best_step"] == select_best(result["history"])["step"]
    assert os.path.exists(tmp_path / "out" / "ckpt_best.pt")


def test_bucketed_batches_cut_padding_and_cover_each_epoch_once():
    rng = random.Random(0)
    lens = [rng.randint(1, 56) for _ in range(103)]  # targets about as long as their sources, as in real data
    pairs = [([5] * n + [1], [6] * (n + rng.randint(0, 6)) + [1]) for n in lens]
    padded = lambda d: sum(b["input_ids"].numel() + b["labels"].numel() for b in (d.next_batch(8) for _ in range(12)))
    assert padded(EpochData(pairs, 0, 64, 64, bucket=4)) < 0.75 * padded(EpochData(pairs, 0, 64, 64))
    d = EpochData(pairs, 0, 64, 64, bucket=4)
    d.next_batch(8)  # 103 examples -> 12 batches of 8 per epoch; the 7 left over differ between epochs
    epochs = [[d._index(i) for i in range(e * 96, (e + 1) * 96)] for e in range(2)]
    assert all(len(set(e)) == 96 for e in epochs) and set(epochs[0]) != set(epochs[1])
    a, b = EpochData(pairs, 0, 64, 64, bucket=4), EpochData(pairs, 0, 64, 64, bucket=4)
    first = [a.next_batch(8)["input_ids"] for _ in range(15)]  # crosses the epoch boundary at batch 12
    b.load_state_dict(dict(position=13 * 8, truncated=0))
    assert torch.equal(b.next_batch(8)["input_ids"], first[13])  # resume continues the same order
    with pytest.raises(ValueError, match="batches of 8"):
        a.next_batch(4)
