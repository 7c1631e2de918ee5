"""Tests for reproduce.py: the grid, the runner (a fake one: no training), the numbers, the reports.

Run: python -m pytest -q tests/test_reproduce.py
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import reproduce as R  # noqa: E402
from tasks import SIMPLE  # noqa: E402


def fake_score(m):  # made up but deterministic: per method, task and seed
    return 10.0 + 3 * len(m["method"]) + m["seed"] + (5 if m["task"] == "mtop" else 0)


class FakeRunner:
    """Stands in for subprocess_runner: writes a result.json as the child would; counts calls."""

    def __init__(self, fail=()):
        self.calls, self.fail, self.threads = [], set(fail), set()

    def __call__(self, cell, log_path, threads=0):
        self.calls.append(cell.id)
        self.threads.add(threads)
        Path(log_path).write_text(f"line 1\nlast words of {cell.id}\n")
        if cell.id in self.fail:
            return 3  # like a crashed child: exit code, no result.json
        out = Path(cell.out_dir)
        if cell.kind == "pretrain":
            (out / "ckpt_best.pt").write_bytes(b"fake")
            res = dict(task=cell.meta["source"], best_val_token_acc=0.9, val_exact_match=0.5,
                       wall_s=1.0, baselines=dict(constant=dict(token_acc=0.25)))
        else:
            s = fake_score(cell.meta)
            res = dict(task=cell.meta["task"], score=s, best_val_token_acc=s / 100, n_test=50,
                       wall_s=2.0)
        (out / "result.json").write_text(json.dumps(res))
        return 0


def grid(tmp_path, *flags):
    argv = ["--scale=cpu", f"--out={tmp_path / 'out'}", "--data_dir=D", *flags]
    return R.build_cells(R.get_config(argv))


SMALL = ("--tasks=mtop", "--parts=table1", "--seeds=2")


def data_dir(tmp_path, *names):  # a data folder holding the given task folders
    for n in names:
        (tmp_path / "data" / n).mkdir(parents=True)
    return str(tmp_path / "data")


def test_the_cpu_grid():
    d = R.DESIGN["cpu"]
    cells = R.build_cells(R.get_config(["--out=o", "--data_dir=D"]))
    ids = [c.id for c in cells]
    n_ft = 7 * 3 * 3 + 16 * 2 + 4 * 3 * 3 + 6 * 3   # Table 1, sweep, Table 2, Table 3
    assert len(ids) == len(set(ids)) == 22 + n_ft    # a cell two parts share is listed once
    assert sum(c.kind == "pretrain" for c in cells) == 22 == 3 + 18 + 1
    assert ids[0] == "pt-natural"                  # the longest cell starts first
    t1 = [c for c in cells if "table1" in c.meta.get("parts", [])]
    assert len(t1) == 7 * len(d["tasks"]) * d["seeds"]   # rows x tasks x seeds
    first = d["tasks"][0]
    assert next(c for c in cells if c.id == f"ft-set-{first}-s0").meta["parts"] == ["table1",
                                                                                   "sweep"]
    sweep = {c.meta["source"] for c in cells if c.meta.get("parts") == ["sweep"]}
    assert sweep == set(SIMPLE) - {"set", "identity"}   # theirs come from Table 1
    tok = f"--tokenizer={d['tokenizer']['path']}"   # one for all: checkpoints fit
    assert all(c.cmd.count(tok) == 1 for c in cells)
    steps = {c.id: [a for a in c.cmd if a.startswith("--max_steps")] for c in cells}
    assert steps["pt-natural"] == [f"--max_steps={d['natural_steps']}"]
    assert steps["pt-set"] == [f"--max_steps={d['pretrain_steps']}"]
    assert not any(v for k, v in steps.items() if k.startswith("ft-"))  # finetune.py's recipe
    last = d["tasks"][-1]
    ft = next(c for c in cells if c.id == f"ft-lime-{last}-s1")
    assert ft.cmd == ["python", "finetune.py", f"--task={last}",
                      f"--init={os.path.join('o', 'runs', 'pt-lime', 'ckpt_best.pt')}",
                      f"--out_dir={os.path.join('o', 'runs', ft.id)}", "--seed=1",
                      "--preset=cpu", "--data_dir=D", tok]
    assert ft.deps == ["pt-lime"]
    pos = {cid: i for i, cid in enumerate(ids)}
    assert all(pos[d] < pos[c.id] for c in cells for d in c.deps)


def test_rerun_skips_finished_cells(tmp_path):
    cells = grid(tmp_path, *SMALL)
    first = FakeRunner()
    R.run_cells(cells, first)
    assert sorted(first.calls) == sorted(c.id for c in cells)
    again = FakeRunner()
    records = R.run_cells(grid(tmp_path, *SMALL), again)
    assert again.calls == [] and all(r["result"] for r in records)
    assert {r["commit"] for r in records} == {R.commit()}  # provenance of every cell


def test_killed_cell_is_rerun_from_scratch(tmp_path):
    cells = grid(tmp_path, *SMALL)
    R.run_cells(cells, FakeRunner())
    killed = Path(cells[-1].out_dir)  # a run killed mid-cell leaves a folder without result.json
    (killed / "result.json").unlink()
    (killed / "half_written.tmp").write_text("junk")
    runner = FakeRunner()
    R.run_cells(cells, runner)
    assert runner.calls == [cells[-1].id]
    assert not (killed / "half_written.tmp").exists() and (killed / "result.json").exists()


def test_fresh_checkout_without_checkpoints_reuses_a_whole_grid_and_never_mixes_runs(tmp_path):
    """results/ is committed without .pt files. A finished grid stays as it is; once a cell needs
    a checkpoint that is gone, its pre-training runs again and so does every cell made from it."""
    cells = grid(tmp_path, *SMALL)
    R.run_cells(cells, FakeRunner())
    for c in cells:
        if c.kind == "pretrain":
            (Path(c.out_dir) / "ckpt_best.pt").unlink()
    runner = FakeRunner()
    R.run_cells(cells, runner)
    assert runner.calls == []                              # nothing needs a checkpoint
    (Path(cells[-1].out_dir) / "result.json").unlink()     # ft-identity-mtop-s1
    source = f"pt-{cells[-1].meta['source']}"
    made_from = sorted(c.id for c in cells if source in c.deps)
    assert len(made_from) == 2                             # two seeds
    runner = FakeRunner()
    R.run_cells(cells, runner, log_file=tmp_path / "run.log")
    assert sorted(runner.calls) == sorted([source, *made_from])
    log = (tmp_path / "run.log").read_text()
    assert f"re-running {source}: a dependant must run" in log
    assert f"re-running {made_from[0]}: {source} is not the run it was made from" in log


def test_a_rerun_dependency_reruns_its_dependants_only(tmp_path):
    cells = grid(tmp_path, *SMALL)
    R.run_cells(cells, FakeRunner())
    pt = next(c for c in cells if c.id == "pt-set")
    (Path(pt.out_dir) / "result.json").write_text('{"task": "set", "wall_s": 9}')  # another run
    runner = FakeRunner()
    R.run_cells(cells, runner)
    assert sorted(runner.calls) == ["ft-set-mtop-s0", "ft-set-mtop-s1"]


def test_killed_cell_resumes_from_its_checkpoint(tmp_path):
    cells = grid(tmp_path, *SMALL)
    R.run_cells(cells, FakeRunner())
    cell = next(c for c in cells if c.id == "ft-set-mtop-s0")
    folder = Path(cell.out_dir)
    (folder / "result.json").unlink()                      # killed after a checkpoint
    (folder / "ckpt_last.pt").write_bytes(b"step 200")
    seen = []
    runner = lambda c, log, threads=0: seen.append(c.cmd) or FakeRunner()(c, log)  # noqa: E731
    R.run_cells(cells, runner)
    assert seen == [["python", "finetune.py", "--init=resume", f"--out_dir={cell.out_dir}"]]
    assert (folder / "ckpt_last.pt").read_bytes() == b"step 200"   # not wiped
    (folder / "result.json").unlink()
    info = json.loads((folder / "cell.json").read_text())
    (folder / "cell.json").write_text(json.dumps(dict(info, cmd=["python", "finetune.py"])))
    seen.clear()                                           # another command: afresh
    R.run_cells(cells, runner)
    assert seen == [cell.cmd] and not (folder / "ckpt_last.pt").exists()


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGINT"])
def test_children_die_with_the_grid(tmp_path, sig):
    """A cell's child must not outlive a reproduce.py killed outright, or stopped by Ctrl-C."""
    child = tmp_path / "child.py"
    child.write_text("import os, time, sys\nopen(sys.argv[1], 'w').write(str(os.getpid()))\n"
                     "time.sleep(60)\n")
    parent = tmp_path / "parent.py"
    parent.write_text(
        f"import sys; sys.path.insert(0, {str(Path(R.__file__).parent)!r}); import reproduce as R\n"
        f"cell = R.Cell('c', 'finetune', ['python', {str(child)!r}, {str(tmp_path / 'pid')!r}], "
        f"{str(tmp_path / 'c')!r})\nR.exit_on_signals()\nR.run_cells([cell])\n")
    proc = subprocess.Popen([sys.executable, str(parent)], stdout=subprocess.DEVNULL)
    for _ in range(600):                                   # a busy machine starts slowly
        if (tmp_path / "pid").exists() and (tmp_path / "pid").read_text():
            break
        time.sleep(0.05)
    pid = int((tmp_path / "pid").read_text())
    proc.send_signal(getattr(signal, sig))
    proc.wait(timeout=30)
    for _ in range(100):                                   # the kernel's SIGTERM, then it is gone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        pytest.fail("the child outlived its parent")


def test_failure_is_recorded_dependents_skipped_others_run(tmp_path):
    cells = grid(tmp_path, *SMALL)
    runner = FakeRunner(fail={"pt-lime"})
    records = {r["id"]: r for r in R.run_cells(cells, runner)}
    err = records["pt-lime"]["error"]
    assert "exit code 3" in err and "last words of pt-lime" in err
    assert "skipped" in records["ft-lime-mtop-s0"]["error"]
    assert "ft-lime-mtop-s0" not in runner.calls
    assert records["ft-set-mtop-s0"]["result"] is not None  # the rest of the grid went on


class SlowRunner(FakeRunner):
    """A FakeRunner that takes a little time and records when each cell started and ended."""

    def __init__(self, fail=()):
        super().__init__(fail)
        self.lock, self.live, self.peak, self.span = threading.Lock(), 0, 0, {}

    def __call__(self, cell, log_path):
        with self.lock:
            self.live += 1
            self.peak = max(self.peak, self.live)
            t0 = time.monotonic()
        time.sleep(0.02)
        rc = super().__call__(cell, log_path)
        with self.lock:
            self.live -= 1
            self.span[cell.id] = (t0, time.monotonic())
        return rc


def test_parallel_jobs_respect_dependencies_and_the_cap(tmp_path):
    cells = grid(tmp_path, "--tasks=mtop", "--parts=table1,table2", "--seeds=2")
    runner = SlowRunner(fail={"pt-identity"})
    records = {r["id"]: r for r in R.run_cells(cells, runner, jobs=3)}
    assert runner.peak == 3  # never more than `jobs` cells at once, and the cap was used
    for c in cells:
        if c.id in runner.span:  # a cell starts only after every dependency has ended
            assert all(runner.span[d][1] <= runner.span[c.id][0] for d in c.deps)
    skipped = {cid for cid, r in records.items() if r["error"] and "skipped" in r["error"]}
    assert skipped == {c.id for c in cells if c.deps == ["pt-identity"]} and skipped
    assert all(records[c.id]["result"] for c in cells if c.id not in skipped | {"pt-identity"})
    # fine-tuning from scratch does not wait for any pre-training: it starts beside the first cells
    first_pt_end = min(runner.span[c.id][1] for c in cells if c.kind == "pretrain")
    assert runner.span["ft-random-mtop-s0"][0] < first_pt_end


def test_eta_is_shared_by_parallel_jobs():
    cells = [R.Cell(f"c{i}", "finetune", [], "x", meta=dict(task="mtop")) for i in range(4)]
    assert R._eta(cells, {("finetune", "mtop"): [60.0]}) == "0:04:00"
    assert R._eta(cells, {("finetune", "mtop"): [60.0]}, jobs=2) == "0:02:00"
    assert R._eta(cells, {("finetune", "webqsp"): [30.0]}) == "0:02:00"   # its kind's mean
    assert R._eta(cells, {}) == "0:00:00 + 4 untimed cells"


@pytest.mark.parametrize("flag, match", [
    ("--tasks=mtop,imagenet", "--tasks='mtop,imagenet': expected a comma list of mtop, webqsp"),
    ("--parts=table4", "--parts='table4': expected a comma list of table1, sweep"),
    ("--ln_values=abc", "--ln_values='abc': expected a comma list of numbers"),
    ("--seeds=0", "--seeds=0 must be >= 1"),
    ("--jobs=0", "--jobs=0 must be >= 1"),  # not silently the design's default
    ("--scale=gpu", "--scale='gpu' is not one of cpu, paper"),
    ("--jobs=two", "--jobs=two: expected int"),
])
def test_bad_settings_are_user_errors_naming_the_key(tmp_path, flag, match):
    with pytest.raises(R.config.UserError, match=re.escape(match)):
        R.main(["--scale=cpu", f"--out={tmp_path}", flag])
    assert not (tmp_path / "runs").exists()


def test_defaults_come_from_the_design_and_help_works(capsys):
    cpu, paper = R.get_config([]), R.get_config(["--scale=paper", "--seeds=3"])
    assert (cpu.tasks, cpu.seeds, cpu.sweep_seeds, cpu.jobs, cpu.out) == (
        ",".join(R.DESIGN["cpu"]["tasks"]), 3, 2, 2, "results/cpu")
    assert cpu.ln_values == "0.05,0.1,0.2,0.4,0.6,0.8"
    assert paper.tasks == ",".join(R.DOWNSTREAM) and paper.seeds == 3 and paper.jobs == 1
    with pytest.raises(SystemExit):
        R.get_config(["--scale=paper", "-h"])
    assert "--tasks='mtop,webqsp,squad" in capsys.readouterr().out  # -h: the values that would run


def test_paper_scale_checks_its_inputs_before_the_first_cell(tmp_path, monkeypatch):
    runner = FakeRunner()
    monkeypatch.setattr(R, "subprocess_runner", runner)
    t5 = tmp_path / "t5"
    t5.mkdir()
    (t5 / "config.json").write_text("{}")
    base = ["--scale=paper", "--tasks=mtop,cnndm_10k", "--parts=table3", "--ln_values=0.4",
            f"--out={tmp_path / 'o'}", f"--data_dir={data_dir(tmp_path, 'mtop')}"]
    with pytest.raises(R.config.UserError, match=r"--t5_dir=DIR.*--t5_v11_dir=DIR") as e:
        R.main(base)
    missing = str(e.value).split("needs")[1]  # of the data, only cnndm_10k's folder is missing
    assert "cnndm_10k" in missing and "mtop" not in missing
    with pytest.raises(R.config.UserError, match=r"tokenizer.json, .*model.safetensors or pytorch"):
        R.main(base + [f"--t5_dir={t5}", f"--t5_v11_dir={t5}"])
    assert runner.calls == []  # no cell started
    for f in ["tokenizer.json", "model.safetensors"]:
        (t5 / f).write_text("x")
    (tmp_path / "data" / "cnndm_10k").mkdir()
    assert R.main(base + [f"--t5_dir={t5}", f"--t5_v11_dir={t5}"]) == 0 and runner.calls


def test_paper_grid_uses_the_off_the_shelf_t5(tmp_path, capsys):
    cfg = R.get_config(["--scale=paper", "--tasks=mtop,cnndm_10k", "--t5_dir=T5",
                        "--t5_v11_dir=V11", "--parts=table1"])
    inits = {c.meta["task"]: c.cmd for c in R.build_cells(cfg) if c.meta.get("method") == "natural"}
    assert "--init=hf:T5" in inits["mtop"] and "--init=hf:V11" in inits["cnndm_10k"]
    assert all("--preset=paper" in c and "--tokenizer=T5/tokenizer.json" in c
               for c in inits.values())
    cells = R.build_cells(cfg)
    assert not any(a.startswith("--max_steps") for c in cells for a in c.cmd)  # the presets'
    assert R.main(["--scale=paper", "--parts=table3", f"--out={tmp_path}", "--dry_run=1"]) == 0
    assert "--init=preattn_ln:0.4" in capsys.readouterr().out


def rec(method, task, seed, score, parts=("table1",), source=None):
    meta = dict(method=method, label=method.upper(), parts=list(parts), task=task, seed=seed,
                source=source)
    return dict(id=f"ft-{method}-{task}-s{seed}", kind="finetune", meta=meta, error=None,
                commit="abc", result=dict(score=score, best_val_token_acc=score / 100, n_test=99))


def toy_records():
    """mtop: random 10/12, natural 30/32, lime 18/22 (pct 40, 50 -> 45... by hand below);
    retro: random 20/21, natural 21/22 (margin 1 < 3 x 0.71: left out of the averages)."""
    both = ("table1", "table3")
    recs = [dict(id="pt-lime", kind="pretrain", meta=dict(source="lime"), error=None,
                 commit="abc", result=dict(best_val_token_acc=0.975, val_exact_match=0.5,
                                           baselines=dict(constant=dict(token_acc=0.25))))]
    for seed, (r, n, lime, r2, n2) in enumerate([(10, 30, 18, 20, 21), (12, 32, 22, 21, 22)]):
        recs += [rec("random", "mtop", seed, r, both), rec("natural", "mtop", seed, n, both),
                 rec("lime", "mtop", seed, lime, source="lime"),
                 rec("random", "retrosynthesis", seed, r2, both),
                 rec("natural", "retrosynthesis", seed, n2, both),
                 rec("lime", "retrosynthesis", seed, 50, source="lime")]
    return recs + [rec("ln0.4", "mtop", 0, 16, ("table3",))]


def test_summarize_means_margins_benefit_and_intervals():
    s = R.summarize(toy_records())
    assert s["margins"]["mtop"]["ok"] and not s["margins"]["retrosynthesis"]["ok"]
    assert s["margins"]["mtop"]["diff"] == pytest.approx(20)
    lime = s["methods"]["lime"]
    mtop = lime["per_task"]["mtop"]
    assert (mtop["n"], mtop["mean"], mtop["std"]) == (2, 20, pytest.approx(8 ** 0.5))
    assert mtop["pct"] == pytest.approx(100 * (20 - 11) / (31 - 11))
    assert lime["per_task"]["retrosynthesis"]["pct"] == pytest.approx(100 * 29.5 / 1)
    assert lime["pct"] == pytest.approx(45) and lime["pct_tasks"] == 1   # retro left out
    lo, hi = lime["pct_ci"]
    assert lo < 45 < hi and lo >= 100 * (18 - 12) / (32 - 10) - 1e-9   # bounded by the extremes
    assert hi <= 100 * (22 - 10) / (30 - 12) + 1e-9
    ln = s["methods"]["ln0.4"]
    assert ln["pct"] == pytest.approx(25) and ln["pct_ci"][0] <= 25 <= ln["pct_ci"][1]
    assert s["methods"]["natural"]["pct"] == pytest.approx(100)
    assert lime["pretrain"] == [0.975, 0.5, 0.25]
    assert R.summarize(toy_records()) == s                  # the same draws every time


def test_verdict_rule():
    m = lambda pct, lo, hi: dict(pct=pct, pct_ci=[lo, hi], pct_tasks=3)  # noqa: E731
    v = lambda *a: R._verdict(m(*a), 65, "claim")["verdict"]  # noqa: E731
    assert v(60, 40, 80) == "reproduced"                     # holds 65, excludes 0
    assert v(20, 5, 40) == "not reproduced" and v(120, 90, 150) == "not reproduced"
    assert v(30, -20, 80) == "inconclusive"                  # holds both 65 and 0
    assert R._verdict(None, 65, "claim")["verdict"] == "inconclusive"
    none = dict(pct=None, pct_ci=[None, None], pct_tasks=0)  # no task with the margin
    assert R._verdict(none, 65, "claim")["verdict"] == "inconclusive"


def test_sweep_ranking_and_rank_intervals():
    recs = toy_records()
    for seed in (0, 1):
        for src, score in [("set", 28 + seed), ("copy", 14 + 3 * seed), ("sort", 20 + seed)]:
            recs.append(rec(src, "mtop", seed, score, ("sweep",), src))
    for r in recs:
        if r["meta"].get("method") in ("random", "natural"):
            r["meta"]["parts"].append("sweep")
    s = R.summarize(recs)
    assert s["sweep"]["order"] == ["set", "sort", "copy"]
    assert s["sweep"]["rank_ci"]["set"] == [1, 1]            # its worst seed beats the others
    assert s["sweep"]["rank_ci"]["sort"][0] >= 2
    v = s["verdicts"][-1]
    assert v["claim"].startswith("Set ranks near the top") and v["verdict"] == "reproduced"
    assert "sweep.md" in R.render_all([s]) and "sweep.svg" in R.render_all([s])


def test_sweep_reports_each_source_on_the_sweep_task_alone():
    """Set also has Table 1 rows: the sweep's chart and table show its % on MTOP, not its mean
    over Table 1's tasks; labels read as words; the chart's title names the tasks averaged."""
    recs = toy_records()
    for seed in (0, 1):
        recs += [rec("set", "mtop", seed, 16 + 2 * seed, ("table1", "sweep"), "set"),  # 30%
                 rec("random", "webqsp", seed, 10 + seed), rec("natural", "webqsp", seed, 20 + seed),
                 rec("set", "webqsp", seed, 20 + seed, source="set"),          # 100% on webqsp
                 rec("copy", "mtop", seed, 14 + 3 * seed, ("sweep",), "copy"),
                 rec("stats-x-set", "mtop", seed, 21, ("table2",), "set")]
    s = R.summarize(recs)
    assert s["methods"]["set"]["pct"] == pytest.approx((30 + 100) / 2)
    out = R.render_all([s])
    ns = "{http://www.w3.org/2000/svg}"
    texts = [t.text for t in ET.fromstring(out["sweep.svg"]).iter(f"{ns}text")]
    assert texts[texts.index("SET") + 1].startswith("30% [")        # label, then its number
    row = next(line for line in out["sweep.md"].splitlines() if line.startswith("| SET |"))
    assert row.split(" | ")[3].startswith("30% [")   # method, pre-train, mtop, % of benefit
    benefit = ET.fromstring(out["benefit.svg"])
    assert "mean over mtop, webqsp (tasks with the margin)" in next(benefit.iter(f"{ns}text")).text
    ticks = [line for line in benefit.iter(f"{ns}line") if line.get("stroke-width") == "3"]
    assert len(ticks) == 3                     # LIME's 67, Set's 65, the best scheme's 39
    cells = {c.id: c for c in R.build_cells(R.get_config(["--scale=cpu"]))}
    assert cells["ft-nonsense_summary-mtop-s0"].meta["label"] == "Nonsense summary"
    assert cells["ft-stats-per_param_scale-lime-mtop-s0"].meta["label"] == \
        "Per param scale (from LIME)"
    assert cells["ft-last_token-mtop-s0"].meta["label"] == "Last token"


def test_reports_hold_rows_numbers_and_verdicts():
    s, acc = R.summarize(toy_records()), R.summarize(toy_records(), "token_acc")
    assert acc["methods"]["lime"]["per_task"]["mtop"]["mean"] == pytest.approx(20)  # x100 of .2
    out = R.render_all([s, acc])
    assert {"table1.md", "table3.md", "verdict.md", "benefit.svg", "benefit_acc.svg"} <= set(out)
    assert "## The same on validation token accuracy" in out["table1.md"]
    assert "## On the paper's metric" in out["verdict.md"]
    assert "## On validation token accuracy" in out["verdict.md"]
    lime_row = next(line for line in out["table1.md"].splitlines() if line.startswith("| LIME |"))
    for expected in ["97.5 / 50.0 / 25.0", "20.0 ± 2.8", "50.0", "45% [", "67%"]:
        assert expected in lime_row, (expected, lime_row)
    assert "retrosynthesis: natural - random = +1.00" in out["table1.md"]
    assert "BELOW the 3x margin" in out["table1.md"] and "99 test examples" in out["table1.md"]
    assert "LN0.4" in out["table3.md"] and "LIME" not in out["table3.md"]
    assert "LIME keeps ~67%" in out["verdict.md"] and "Code: abc" in out["verdict.md"]


def test_chart_labels_never_clip_and_numbers_never_overlap():
    rows = [("A very long label for one method (from Identity)", 45.0, [10.0, 80.0], 67.0, "#4c72b0"),
            ("Short", -150.0, [-200.0, -90.0], None, "#888"), ("n/a", None, [None, None], None, "#888")]
    title = "A long title, longer than the plot: " + "x" * 100
    root = ET.fromstring(R.render_svg(title, rows, "note"))
    ns = "{http://www.w3.org/2000/svg}"
    texts = list(root.iter(f"{ns}text"))
    width = float(root.get("width"))
    label = next(t for t in texts if t.text == rows[0][0])
    assert float(label.get("x")) >= 7 * len(rows[0][0])      # room for the whole label at its left
    nums = [t for t in texts if t.text and t.text.endswith("]")]
    bars = [float(r.get("x")) + float(r.get("width")) for r in root.iter(f"{ns}rect")
            if r.get("height") == "14"]
    assert len(nums) == 2 and all(float(t.get("x")) > max(bars) for t in nums)  # own column
    assert all(float(t.get("x")) + 7 * len(t.text or "") <= width for t in texts
               if t.get("text-anchor") is None)           # nothing runs past the right edge


def test_main_end_to_end_with_fake_runner(tmp_path, monkeypatch):
    runner, made = FakeRunner(), []
    monkeypatch.setattr(R, "subprocess_runner", runner)
    # the shared tokenizer is made once, before any cell runs (here: recorded, not trained)
    monkeypatch.setattr(R, "get_tokenizer", lambda *a, **k: made.append((a, k, len(runner.calls))))
    data, out = data_dir(tmp_path, "mtop", "natural_text"), tmp_path / "out"
    argv = ["--scale=cpu", "--tasks=mtop", "--parts=table1,table2,table3", "--ln_values=0.4",
            "--seeds=2", f"--out={out}", f"--data_dir={data}"]
    assert R.main(argv) == 0 and len(runner.calls) == 1 + 14 + 5 + 24 + 2
    tok = R.DESIGN["cpu"]["tokenizer"]
    assert made == [((data, tok["size"], tok["path"]), {"natural_only": True}, 0)]
    assert runner.threads == {max(1, os.cpu_count() // R.DESIGN["cpu"]["jobs"])}
    names = ["table1.md", "table2.md", "table3.md", "verdict.md", "benefit.svg",
             "benefit_acc.svg"]
    for name in names + ["results.json", "run.log"]:
        assert (out / name).exists(), name
    results = json.loads((out / "results.json").read_text())
    assert all(r["commit"] == R.commit() and r["cmd"] for r in results["records"])
    assert results["design"] == json.loads(json.dumps(R.DESIGN["cpu"]))
    reports = {n: (out / n).read_text() for n in names}
    assert R.main(argv + ["--dry_run=1"]) == 0 and len(made) == 1  # dry runs train nothing
    again = FakeRunner()
    monkeypatch.setattr(R, "subprocess_runner", again)
    assert R.main(argv) == 0 and again.calls == []  # resumed: nothing left to run
    for n in names:
        (out / n).unlink()
    shutil.rmtree(out / "runs")                    # report_only reads results.json, nothing else
    before, n_made = (out / "results.json").read_bytes(), len(made)
    assert R.main(argv + ["--report_only=1"]) == 0 and len(made) == n_made
    assert (out / "results.json").read_bytes() == before  # not rewritten
    assert {n: (out / n).read_text() for n in names} == reports  # byte for byte the same
    assert sorted(p.name for p in out.iterdir()) == sorted(names + ["results.json", "run.log"])
    (out / "results.json").unlink()
    with pytest.raises(R.config.UserError, match=r"results\.json does not exist"):
        R.main(argv + ["--report_only=1"])


def test_table_numbers_never_show_minus_zero():
    cases = [(-0.0, 0), (-0.3, 0), (-0.04, 1), (-0.6, 0), (12.345, 1), (None, 1)]
    assert [R._f(x, n) for x, n in cases] == ["0", "0", "0.0", "-1", "12.3", "–"]
    svg = ET.fromstring(R.render_svg("t", [("LIME", 17.2, [-0.3, 30.4], 67, "#4c72b0")], "n"))
    assert "17% [0, 30]" in [t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")]
