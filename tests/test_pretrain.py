"""Tests of pretrain.py: Adafactor against a hand-computed step, the LR schedule, exact resume, DDP (2 CPU
processes, gloo) == one process, gradient accumulation == one big batch, NaN handling, checkpoint errors and
config parsing. Tiny models, a few steps each.   Run: python -m pytest -q tests/test_pretrain.py
"""
import json
import math
import multiprocessing
import os
import random
import re
import subprocess
import sys
from functools import partial

import numpy as np
import pytest
import torch

import pretrain
import config
from pretrain import TaskData, TrainConfig, main
from train import Adafactor, get_lr, load_checkpoint
from tasks import get_task
from tokenizer import Vocab

def parse_config(argv):
    return config.parse(TrainConfig, argv, pretrain.PRESETS)


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a 1+1-layer, width-32 T5 on Set bodies of 10..16 tokens, float32: a step takes milliseconds
TINY = ["--vocab_size=256", "--d_model=32", "--num_layers=1", "--min_len=10", "--max_len=16", "--src_len=24",
        "--tgt_len=24", "--batch_size=8", "--micro_batch_size=8", "--eval_batches=1", "--log_interval=1",
        "--device=cpu", "--dtype=float32", "--seed=1"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def run(out_dir, *args):
    return main(TINY + [f"--out_dir={out_dir}", *args])


def params(path):
    return load_checkpoint(str(path))["model"]


# ----------------------------------------------------------------------------- Adafactor
def adafactor_reference(w, grads, lr):
    """T5's Adafactor written out with plain numpy float64 (PAPER.md §1.1), one step per gradient."""
    w = w.astype(np.float64)
    r = c = v = None
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        beta2 = 1.0 - t ** -0.8
        g2 = g * g + 1e-30
        if min(w.shape) >= 128:                            # factored: row and column means of grad^2
            r = (beta2 * r if r is not None else 0) + (1 - beta2) * g2.mean(axis=1)
            c = (beta2 * c if c is not None else 0) + (1 - beta2) * g2.mean(axis=0)
            vhat = np.outer(r, c) / r.mean()
        else:
            v = (beta2 * v if v is not None else 0) + (1 - beta2) * g2
            vhat = v
        u = g / np.sqrt(vhat)
        u = u / max(1.0, math.sqrt((u * u).mean()) / 1.0)  # update clipping at RMS 1
        w = w - lr * max(math.sqrt((w * w).mean()), 1e-3) * u
    return w


@pytest.mark.parametrize("shape", [(2, 3), (128, 256)])
def test_adafactor_matches_hand_computed_steps(shape):
    rng = np.random.default_rng(0)
    ws = [rng.normal(size=shape).astype(np.float32) for _ in range(2)]   # two same-shape tensors: one group
    ws[1] *= 1e-5                                          # RMS below eps2: exercises the 1e-3 floor
    grads = [[rng.normal(size=shape).astype(np.float32) * s for s in (1.0, 3.0, 0.1)] for _ in ws]
    grads[0][1][0, 0] = 50.0                               # a spike large enough to trigger update clipping
    ps = [torch.nn.Parameter(torch.from_numpy(w.copy())) for w in ws]
    opt = Adafactor(ps, lr=0.01)
    for step in range(3):
        for p, g in zip(ps, grads):
            p.grad = torch.from_numpy(g[step])
        opt.step()
    for p, w, g in zip(ps, ws, grads):                     # compare the total update, float32 vs float64
        want = adafactor_reference(w, g, 0.01) - w
        np.testing.assert_allclose(p.detach().numpy() - w, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    assert ("v_row" in opt.state[ps[0]]) == (shape == (128, 256))   # factored only when both dims >= 128


def test_lr_schedule():
    paper = parse_config(["--preset=paper"])
    assert get_lr(0, paper) == pytest.approx(0.01)         # 1/sqrt(max(step, 10000))
    assert get_lr(9999, paper) == pytest.approx(0.01)
    assert get_lr(40000, paper) == pytest.approx(1 / math.sqrt(40000))
    assert get_lr(80000, paper) == pytest.approx(1 / math.sqrt(80000))
    cfg = TrainConfig(lr=0.003, lr_schedule="rsqrt", warmup_steps=100)
    assert get_lr(400, cfg) == pytest.approx(0.0015)
    assert get_lr(123, TrainConfig(lr=1e-3, lr_schedule="constant")) == 1e-3


# ----------------------------------------------------------------------------- loop: resume, accumulation, DDP
def test_resume_is_bitwise_identical(tmp_path):
    common = ["--dropout=0.1", "--eval_interval=3", "--ckpt_interval=3"]   # dropout: its RNG must be restored
    full = run(tmp_path / "a", "--max_steps=6", *common)
    first = run(tmp_path / "b", "--max_steps=3", *common)
    second = main([f"--out_dir={tmp_path / 'b'}", "--init_from=resume", "--max_steps=6"])
    assert len(full["losses"]) == 6 and first["losses"] + second["losses"] == full["losses"]   # exactly
    a, b = params(tmp_path / "a" / "ckpt_last.pt"), params(tmp_path / "b" / "ckpt_last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a) and not any(k.startswith("_orig_mod") for k in a)
    ckpt = load_checkpoint(str(tmp_path / "b" / "ckpt_last.pt"))
    assert ckpt["step"] == 6 and ckpt["config"]["max_steps"] == 6 and ckpt["data"]["position"] == 6 * 8
    assert (tmp_path / "b" / "ckpt_best.pt").exists()
    log = [json.loads(line) for line in open(tmp_path / "b" / "log.jsonl")]
    assert {"step", "loss", "lr", "grad_norm", "ms_per_step", "tok_per_s", "mfu"} <= set(log[-1] | log[-2])
    assert any("val_token_acc" in r for r in log)


def test_grad_accumulation_equals_one_big_batch(tmp_path):
    run(tmp_path / "big", "--max_steps=3", "--dropout=0.0")
    run(tmp_path / "acc", "--max_steps=3", "--dropout=0.0", "--micro_batch_size=2")   # 4 micro-steps
    a, b = params(tmp_path / "big" / "ckpt_last.pt"), params(tmp_path / "acc" / "ckpt_last.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)


def test_ddp_two_processes_equal_one(tmp_path):
    args = TINY + ["--max_steps=3", "--dropout=0.0", "--eval_interval=100"]
    one = run(tmp_path / "one", "--max_steps=3", "--dropout=0.0", "--eval_interval=100")
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "pretrain.py",
           *args, "--micro_batch_size=4", f"--out_dir={tmp_path / 'two'}"]   # 2 ranks x 4 = the same batch of 8
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = params(tmp_path / "one" / "ckpt_last.pt"), params(tmp_path / "two" / "ckpt_last.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
    assert one["step"] == 3 and load_checkpoint(str(tmp_path / "two" / "ckpt_last.pt"))["step"] == 3


def test_bfloat16_adamw_and_init_from_a_checkpoint(tmp_path):
    out = run(tmp_path / "a", "--max_steps=2", "--dtype=bfloat16", "--optimizer=adamw", "--lr=1e-3")
    assert len(out["losses"]) == 2 and all(math.isfinite(x) for x in out["losses"])
    b = run(tmp_path / "b", "--max_steps=1", f"--init_from={tmp_path / 'a' / 'ckpt_last.pt'}")  # weights only
    assert b["step"] == 1 and load_checkpoint(str(tmp_path / "b" / "ckpt_last.pt"))["step"] == 1


# ----------------------------------------------------------------------------- background batch generation
def test_worker_batches_equal_main_process_batches_and_workers_stop():
    build = partial(get_task, "set", Vocab(256), min_len=10, max_len=16)
    ref, bg = (TaskData(build(), 1, 16, 16, workers=w, build=build) for w in (0, 2))   # 16: some examples cut

    def same(n, steps):
        for _ in range(steps):
            a, b = ref.next_batch(n), bg.next_batch(n)
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
        assert bg.state_dict() == ref.state_dict()
    try:
        same(8, 5)
        assert ref.state_dict()["position"] == 40 and ref.state_dict()["truncated"] > 0
        for data in (ref, bg):                             # a resume: the batches prefetched are dropped
            data.load_state_dict(dict(position=12, truncated=3))
        same(8, 3)
        same(5, 2)                                         # another batch size
        assert len(multiprocessing.active_children()) == 2
    finally:
        bg.close()
    assert multiprocessing.active_children() == []         # joined: no zombies


def test_train_with_workers_matches_and_stops_them_even_on_ctrl_c(tmp_path, monkeypatch):
    a = run(tmp_path / "a", "--max_steps=3", "--eval_interval=100")
    b = run(tmp_path / "b", "--max_steps=3", "--eval_interval=100", "--workers=2")
    assert a["losses"] == b["losses"] and multiprocessing.active_children() == []
    evaluate, calls = pretrain.evaluate, []

    def interrupted(*args, **kw):                          # Ctrl-C during the evaluation at step 2
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return evaluate(*args, **kw)
    monkeypatch.setattr(pretrain, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "c", "--max_steps=4", "--eval_interval=2", "--workers=2")
    assert multiprocessing.active_children() == []


# ----------------------------------------------------------------------------- failures
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    real_t5 = pretrain.T5

    def poisoned(config):                                  # the 5th training forward returns NaN
        model, calls = real_t5(config), [0]
        forward = model.forward

        def patched(*a, **k):
            logits, loss = forward(*a, **k)
            calls[0] += model.training
            return logits, (loss * float("nan") if model.training and calls[0] >= 5 else loss)
        model.forward = patched
        return model
    monkeypatch.setattr(pretrain, "T5", poisoned)
    with pytest.raises(FloatingPointError, match=r"loss is nan .*at step 5.*ckpt_last\.pt \(step 4\), untouched"):
        run(tmp_path, "--max_steps=8", "--ckpt_interval=2", "--eval_interval=100")
    ckpt = load_checkpoint(str(tmp_path / "ckpt_last.pt"))
    assert ckpt["step"] == 4 and all(torch.isfinite(v).all() for v in ckpt["model"].values())


def test_missing_or_corrupt_checkpoint_fails_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ckpt_last\.pt does not exist"):
        run(tmp_path, "--init_from=resume")
    (tmp_path / "ckpt_last.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(RuntimeError, match=r"ckpt_last\.pt is corrupt"):
        run(tmp_path, "--init_from=resume")
    with pytest.raises(FileNotFoundError, match=r"nope\.pt does not exist"):
        run(tmp_path, f"--init_from={tmp_path / 'nope.pt'}")


def test_bad_settings_list_the_valid_choices(capsys):
    with pytest.raises(ValueError, match=r"unknown setting --lrr; valid settings: preset, task, .*max_steps"):
        parse_config(["--lrr=0.1"])
    with pytest.raises(ValueError, match=r"--max_steps=1\.5: expected int"):
        parse_config(["--max_steps=1.5"])
    with pytest.raises(ValueError, match=r"--compile=yes: expected bool"):
        parse_config(["--compile=yes"])
    with pytest.raises(ValueError, match="unknown preset 'huge'; valid presets: default, paper"):
        parse_config(["--preset=huge"])
    with pytest.raises(ValueError, match=r"unknown task 'sett'; valid tasks .*identity, set, delete.*lime"):
        main(TINY + ["--task=sett"])
    with pytest.raises(ValueError, match=r"unknown model preset 'big'; valid: cpu, tiny, t5-small"):
        main(TINY + ["--model=big"])
    with pytest.raises(ValueError, match=r"--optimizer='sgd' is not one of adafactor, adamw"):
        main(TINY + ["--optimizer=sgd"])
    with pytest.raises(ValueError, match="not divisible"):
        main(TINY + ["--micro_batch_size=3"])
    with pytest.raises(ValueError, match="float16 needs CUDA"):
        main(TINY + ["--dtype=float16", "--max_steps=1"])
    with pytest.raises(SystemExit):
        parse_config(["-h"])
    assert re.search(r"--batch_size=32 +examples per optimizer step", capsys.readouterr().out)


def test_overrides_are_typed_and_presets_apply_first():
    cfg = parse_config(["--preset=paper", "--max_steps=5", "--lr=1", "--out_dir=out-set", "--compile=True"])
    assert (cfg.max_steps, cfg.lr, cfg.out_dir, cfg.compile) == (5, 1.0, "out-set", True)
    assert (cfg.batch_size, cfg.src_len, cfg.model, cfg.eval_batches) == (128, 512, "t5-small", 20)
    assert isinstance(cfg.lr, float)


def test_n_task_tokens_restricts_the_random_tokens(tmp_path, monkeypatch):
    import pretrain
    seen = []

    def spy(*args, **kw):  # the task main() builds, recorded
        seen.append(get_task(*args, **kw))
        return seen[-1]
    monkeypatch.setattr(pretrain, "get_task", spy)
    run(tmp_path, "--max_steps=1", "--n_task_tokens=20")
    from tasks import content_ids
    targets = {t for _, tgt in (seen[0].example(random.Random(i)) for i in range(50)) for t in tgt[:-1]}
    assert targets <= set(content_ids(Vocab(256), 20)) and len(targets) > 10  # Set's output: body tokens only
