"""Tests of bench.py (issue 2): its arguments and one tiny end-to-end run on the CPU. No timing is asserted.

Run: python -m pytest -q tests/test_bench.py
"""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import bench  # noqa: E402
from model import T5, get_config  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

TINY_RUN = ["--preset=tiny", "--batch=2", "--src_len=8", "--tgt_len=6", "--warmup=0", "--steps=1",
            "--compile=False", "--decode_batch=3", "--decode_tokens=2"]


def test_arguments_are_checked():
    with pytest.raises(SystemExit, match="bad argument '--stpes=2'"):
        bench.parse_args(["--stpes=2"])
    with pytest.raises(SystemExit, match="--steps must be int"):
        bench.parse_args(["--steps=2.5"])
    with pytest.raises(SystemExit, match="not a device"):
        bench.main(TINY_RUN + ["--device=gpu0"])
    with pytest.raises(SystemExit, match="unknown mode 'fp16'"):
        bench.main(TINY_RUN + ["--modes=fp16"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where CUDA is missing")
def test_cuda_without_a_gpu_says_so():
    with pytest.raises(SystemExit, match="CUDA is not available"):
        bench.main(TINY_RUN + ["--device=cuda"])


def test_tiny_run_reports_consistent_rows(capsys):
    rows, ratios, (greedy, beam) = bench.main(TINY_RUN)
    assert [(r[0], r[1]) for r in rows] == [("ours eager", "fp32"), ("ours eager", "bf16")]
    fpt = T5(get_config("tiny")).flops_per_token(8, 6)
    out = capsys.readouterr().out
    for name, mode, sec, tps, mfu, mfu_sheet in rows:
        assert sec > 0 and tps == pytest.approx(2 * 6 / sec)  # target tokens per second
        assert mfu_sheet is None  # no datasheet peak for a CPU
        peak = 3 * fpt * tps / mfu  # MFU = training FLOP/s (forward x3) over the measured matmul peak
        assert 1e8 < peak < 1e14, peak  # a plausible FLOP/s, so MFU is a ratio to a rate, not a bare count
        assert f"| {name} | {mode} | {sec * 1e3:.0f} | {tps:.0f} | {mfu:.1%} | – |" in out
    assert ratios == []  # no --compare_hf
    assert greedy > 0 and beam > 0
