"""Tests of bench.py: its settings and one tiny run on the CPU (no timing is asserted); with
transformers installed, that the HF model it builds computes our logits.

Run: python -m pytest -q tests/test_bench.py
"""
import copy
from types import SimpleNamespace

import pytest
import torch

import bench
from config import UserError
from model import T5, get_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TINY_RUN = ["--model=tiny", "--batch=2", "--src_len=8", "--tgt_len=6", "--steps=1",
            "--compile=False"]


def test_settings_are_checked(capsys):
    with pytest.raises(UserError, match="unknown setting --stpes"):
        bench.main(["--stpes=2"])
    with pytest.raises(UserError, match="--steps=2.5: expected int"):
        bench.main(["--steps=2.5"])
    with pytest.raises(UserError, match="--device='gpu0' is not one"):
        bench.main(TINY_RUN + ["--device=gpu0"])
    with pytest.raises(UserError, match="--modes='fp16' is not one of fp32, bf16"):
        bench.main(TINY_RUN + ["--modes=fp16"])
    with pytest.raises(UserError, match="unknown model preset"):
        bench.main(["--model=huge"])
    with pytest.raises(SystemExit) as e:
        bench.main(["-h"])
    assert e.value.code == 0 and "--compare_hf=False" in capsys.readouterr().out


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message where CUDA is missing")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(UserError, match="CUDA is not available"):
        bench.main(TINY_RUN + ["--device=cuda"])


def test_tiny_run_reports_consistent_rows(capsys, monkeypatch):
    peaks, peak_flops = {}, bench.peak_flops  # train.py's, recorded
    monkeypatch.setattr(bench, "peak_flops",
                        lambda dev, dtype: peaks.setdefault(dtype, peak_flops(dev, dtype, n=256)))
    rows = bench.main(TINY_RUN)
    assert [(r["model"], r["mode"]) for r in rows] == [("ours eager", "fp32"),
                                                       ("ours eager", "bf16")]
    fpt = T5(get_config("tiny")).flops_per_token(8, 6)
    out = capsys.readouterr().out
    for r in rows:
        assert r["sec"] > 0 and r["tok_s"] == pytest.approx(2 * 6 / r["sec"])  # target tokens/s
        assert r["hf_over_ours"] is None  # no --compare_hf
        peak = peaks[bench.MODES[r["mode"]]]
        assert 1e8 < peak < 1e14, peak  # a plausible FLOP/s (a CPU has no datasheet peak)
        assert r["mfu"] == pytest.approx(3 * fpt * r["tok_s"] / peak)  # training: 3x forward's
        assert (f"| {r['model']} | {r['mode']} | {r['sec'] * 1e3:.0f} | {r['tok_s']:.0f} | "
                f"{r['mfu']:.1%} |  |") in out


def test_compare_hf_without_transformers_is_one_line(monkeypatch):
    import builtins
    real_import = builtins.__import__
    def no_transformers(name, *args, **kw):
        if name == "transformers":
            raise ImportError(name)
        return real_import(name, *args, **kw)
    monkeypatch.setattr(builtins, "__import__", no_transformers)
    with pytest.raises(UserError, match="--compare_hf=True needs the transformers package"):
        bench.main(TINY_RUN + ["--compare_hf=True"])


def test_compare_hf_interleaves_the_models(monkeypatch):
    order = []

    class FakeHF(torch.nn.Module):  # transformers' T5 stand-in: our weights, HF's output type
        def __init__(self, model):
            super().__init__()
            self.t5 = copy.deepcopy(model)
            model.register_forward_pre_hook(lambda *_: order.append("ours"))

        def forward(self, **batch):
            order.append("HF")
            return SimpleNamespace(loss=self.t5(**batch)[1])

    monkeypatch.setattr(bench, "hf_model", FakeHF)
    monkeypatch.setattr(bench, "peak_flops", lambda dev, dtype: 1e12)   # tested above
    rows = bench.main(TINY_RUN + ["--modes=fp32", "--steps=3", "--compare_hf=True"])
    assert [r["model"] for r in rows] == ["ours eager", "HF eager"]
    assert rows[0]["hf_over_ours"] is None and rows[1]["hf_over_ours"] > 0
    # a warm-up turn, then 3 timed ones; who goes first alternates
    assert order == ["ours", "HF", "HF", "ours", "ours", "HF", "HF", "ours"]


@pytest.mark.parametrize("preset", ["tiny", "t5-v1_1-small"])  # tied relu, untied gated-gelu
def test_hf_model_is_ours(preset):
    pytest.importorskip("transformers")
    torch.manual_seed(0)
    model = T5(get_config(preset, num_layers=1, num_decoder_layers=2))
    ref = bench.hf_model(model)
    n = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert n(ref) == n(model)  # untied stays untied; the embeddings shared as ours
    assert (ref.lm_head.weight is ref.shared.weight) == model.config.tie_word_embeddings
    x, y = torch.randint(3, 1000, (2, 8)), torch.randint(3, 1000, (2, 6))
    with torch.no_grad():
        ours = model.eval()(input_ids=x, labels=y)[0]
        theirs = ref.eval()(input_ids=x, labels=y).logits
    torch.testing.assert_close(theirs, ours, rtol=1e-4, atol=1e-4)


def test_compare_hf_rows():
    pytest.importorskip("transformers")
    rows = bench.main(TINY_RUN + ["--modes=fp32", "--steps=2", "--compare_hf=True"])
    assert [r["model"] for r in rows] == ["ours eager", "HF eager"]
    assert rows[0]["hf_over_ours"] is None and rows[1]["hf_over_ours"] > 0
