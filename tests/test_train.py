"""train.py's pieces: Adafactor against a hand-computed step, the schedule, the setting checks,
the checkpoint loader's errors. The loop itself runs through pretrain.py: tests/test_pretrain.py."""
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from config import UserError
from train import Adafactor, TrainConfig, check_train_config, get_lr, load_checkpoint, micro_batch


def adafactor_reference(w, grads, lr):
    """T5's Adafactor written out with plain numpy float64, one step per gradient."""
    w = w.astype(np.float64)
    r = c = v = None
    for t, g in enumerate(grads, start=1):
        g = g.astype(np.float64)
        beta2 = 1.0 - t ** -0.8
        g2 = g * g + 1e-30
        if min(w.shape) >= 128:                            # factored: row, column means
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
    ws = [rng.normal(size=shape).astype(np.float32) for _ in range(2)]   # same shape: one stack
    ws[1] *= 1e-5                                          # RMS below eps2: the 1e-3 floor
    grads = [[rng.normal(size=shape).astype(np.float32) * s for s in (1.0, 3.0, 0.1)] for _ in ws]
    grads[0][1][0, 0] = 50.0                               # a spike: update clipping
    ps = [torch.nn.Parameter(torch.from_numpy(w.copy())) for w in ws]
    opt = Adafactor(ps, lr=0.01)
    for step in range(3):
        for p, g in zip(ps, grads):
            p.grad = torch.from_numpy(g[step])
        opt.step()
    for p, w, g in zip(ps, ws, grads):                     # the total update, float32 vs float64
        want = adafactor_reference(w, g, 0.01) - w
        np.testing.assert_allclose(p.detach().numpy() - w, want, rtol=1e-4,
                                   atol=1e-4 * np.abs(want).max())
    assert ("v_row" in opt.state[ps[0]]) == (shape == (128, 256))   # factored if both dims >= 128


def test_lr_schedule():
    paper = TrainConfig(lr=0.01, warmup_steps=10000)       # 1/sqrt(max(step, 10000))
    assert get_lr(0, paper) == pytest.approx(0.01) and get_lr(9999, paper) == pytest.approx(0.01)
    assert get_lr(40000, paper) == pytest.approx(1 / math.sqrt(40000))
    assert get_lr(400, TrainConfig(lr=0.003, warmup_steps=100)) == pytest.approx(0.0015)
    assert get_lr(123, TrainConfig(lr=1e-3, lr_schedule="constant")) == 1e-3


def test_micro_batch_size_0_is_the_whole_batch_of_each_process():
    cfg = TrainConfig(batch_size=32)
    assert cfg.micro_batch_size == 0 and micro_batch(cfg) == 32 and micro_batch(cfg, 2) == 16
    assert micro_batch(replace(cfg, micro_batch_size=8), 2) == 8
    check_train_config(cfg, 2)
    check_train_config(replace(cfg, micro_batch_size=8), 2)   # 2 micro-steps on each of 2


@pytest.mark.parametrize("change,message", [
    (dict(lr=-1.0), r"--lr=-1\.0 must be in \(0, 1\]"),
    (dict(lr=0.0), r"--lr=0\.0 must be in \(0, 1\]"),
    (dict(lr=2.0), r"--lr=2\.0 must be in \(0, 1\]"),
    (dict(max_steps=0), r"--max_steps=0 must be >= 1"),
    (dict(warmup_steps=0), r"--warmup_steps=0 must be >= 1"),
    (dict(eval_batches=0), r"--eval_batches=0 must be >= 1"),
    (dict(src_len=0), r"--src_len=0 must be >= 1"),
    (dict(z_loss=-1e-4), r"--z_loss=-0\.0001 must be >= 0"),
    (dict(micro_batch_size=-2), r"--micro_batch_size=-2 must be >= 0"),
    (dict(micro_batch_size=5), r"--batch_size=32 is not divisible by micro_batch_size 5 x 1"),
    (dict(batch_size=1), r"--batch_size=1 is not divisible by micro_batch_size 0 x 2"),
    (dict(lr_schedule="cosine"), r"--lr_schedule='cosine' is not one of rsqrt, constant"),
    (dict(dtype="fp8"), r"--dtype='fp8' is not one of auto, bfloat16, float32, float16"),
])
def test_bad_loop_settings_are_user_errors(change, message):
    with pytest.raises(UserError, match=message):
        check_train_config(replace(TrainConfig(), **change), world=2 if "batch_size" in change
                           else 1)


def test_load_checkpoint_errors_are_one_line_and_name_the_file(tmp_path):
    good = tmp_path / "good.pt"
    torch.save(dict(model={}, model_config={}, step=3), good)
    assert load_checkpoint(str(good))["step"] == 3
    (tmp_path / "empty.pt").write_bytes(b"")
    (tmp_path / "random.pt").write_bytes(np.random.default_rng(0).bytes(1000))
    (tmp_path / "text.pt").write_bytes(b"not a checkpoint at all")
    (tmp_path / "cut.pt").write_bytes(good.read_bytes()[:300])
    torch.save(dict(weights={}), tmp_path / "other.pt")
    cases = [("nope.pt", r"nope\.pt does not exist"), ("empty.pt", r"empty\.pt is empty$"),
             ("random.pt", r"random\.pt is not a torch checkpoint \(unreadable: \w+"),
             ("text.pt", r"text\.pt is not a torch checkpoint \(unreadable: "),
             ("cut.pt", r"cut\.pt is not a torch checkpoint \(unreadable: RuntimeError: "),
             ("other.pt", r"other\.pt lacks \['model', 'model_config'\]")]
    for name, message in cases:
        with pytest.raises(UserError, match=message) as e:
            load_checkpoint(str(tmp_path / name))
        assert "\n" not in str(e.value) and "weights_only" not in str(e.value)


def test_dtype_auto_is_float32_on_a_cpu_and_bfloat16_on_cuda():
    """A CPU without AVX-512 BF16 emulates bf16 matmuls (13x slower steps on an AVX2 EPYC): the
    default must not pick it there, and float32 gives every CPU the same numbers."""
    from train import amp_dtype, autocast
    assert TrainConfig().dtype == "auto"
    assert amp_dtype("cpu", "auto") == "float32" and amp_dtype("cuda", "auto") == "bfloat16"
    assert amp_dtype("cpu", "bfloat16") == "bfloat16"           # an explicit choice is kept
    with autocast("cpu", "auto"):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("cpu", "bfloat16"):
        assert torch.is_autocast_enabled("cpu")


def test_peak_flops_stops_growing_at_a_slow_matmul(monkeypatch):
    """The warm-up decides the size: it doubles from 256 while a matmul takes under 50 ms, so the
    peak of an emulated dtype takes seconds, not minutes."""
    import train
    sizes, clock, real_full = [], iter(range(10**6)), torch.full
    def full(shape, *a, **k):
        sizes.append(shape[0])
        return real_full(shape, *a, **k)
    monkeypatch.setattr(train.torch, "full", full)
    monkeypatch.setattr(train.time, "perf_counter",
                        lambda: next(clock) * (0.3 if sizes[-1] > 512 else 0.01))
    peak = train.peak_flops.__wrapped__("cpu", torch.float32, n=4096, reps=2)   # not cached
    assert peak == pytest.approx(2 * 1024 ** 3 / 0.3)
    assert sizes == [256, 512, 1024]
    sizes.clear()
    train.peak_flops.__wrapped__("cpu", torch.float32, n=512, reps=2)
    assert sizes == [256, 512]


def test_peak_flops_is_a_rate_and_leaves_the_rng_alone():
    from train import peak_flops
    torch.manual_seed(0)
    expect = torch.rand(3)
    torch.manual_seed(0)
    peak = peak_flops.__wrapped__("cpu", torch.float32, n=64, reps=3)
    assert math.isfinite(peak) and peak > 1e6  # FLOP/s: any CPU does 64^3 matmuls at > 1 MFLOP/s
    assert torch.equal(torch.rand(3), expect)


def test_peak_flops_of_a_known_gpu_is_its_datasheet(monkeypatch):
    import train
    monkeypatch.setattr(train, "peak_flops", train.peak_flops.__wrapped__)   # not cached
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert train.peak_flops("cuda") == 989e12  # dense bf16
    assert train.peak_flops("cuda:0", torch.float32) == 989e12 / 2  # float32 runs as TF32
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA GTX 1080")

    class Measured(Exception):
        pass

    def full(*args, **kw):
        raise Measured
    monkeypatch.setattr(torch, "full", full)
    with pytest.raises(Measured):                          # an unknown card: a peak is measured
        train.peak_flops("cuda")


def test_evaluate_scores_and_prints_the_first_mistakes(capsys, one_thread):
    from model import T5, get_config
    from tasks import collate
    from train import evaluate
    torch.manual_seed(0)
    model = T5(get_config("tiny", vocab_size=64)).eval()   # untrained: every output is wrong
    batch = collate([([5, 6, 7, 1], [8, 9, 1])] * 3 + [([10, 11, 1], [12, 1])] * 2, 8, 8)[0]
    out = evaluate(model, [batch], max_new_tokens=4, show=2)
    assert set(out) == {"loss", "token_acc", "exact_match"} and out["exact_match"] == 0
    assert 0 <= out["token_acc"] < 1 and out["loss"] > 0
    assert capsys.readouterr().out.count("  source: 5 6 7 1\n  target: 8 9 1\n  output: ") == 2
    assert evaluate(model, [batch], max_new_tokens=4, greedy=False).keys() == {"loss", "token_acc"}
    assert capsys.readouterr().out == ""                   # no decoding, nothing to show
