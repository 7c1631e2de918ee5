"""Tests for reproduce.py: the grid, the runner (a fake one: no training), the numbers, the reports.

Run: python -m pytest -q tests/test_reproduce.py
"""
import json
import math
import os
import re
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
                       wall_s=1.0)
        else:  # a made-up but deterministic score per method, task and seed
            m = cell.meta
            score = 10.0 + 3 * len(m["method"]) + m["seed"] + (5 if m["task"] == "mtop" else 0)
            res = dict(task=m["task"], score=score, best_val_token_acc=score / 100, wall_s=2.0)
        (out / "result.json").write_text(json.dumps(res))
        return 0


def grid(tmp_path, *flags):
    argv = ["--scale=cpu", f"--out={tmp_path / 'out'}", "--data_dir=D", *flags]
    return R.build_cells(R.get_config(argv))


def data_dir(tmp_path, *names):  # a data folder holding the given task folders
    for n in names:
        (tmp_path / "data" / n).mkdir(parents=True)
    return str(tmp_path / "data")


def test_rerun_skips_finished_cells(tmp_path):
    cells = grid(tmp_path, "--tasks=mtop", "--tables=1,3", "--ln_values=0.4")
    first = FakeRunner()
    R.run_cells(cells, first)
    assert len(first.calls) == len(cells) and len(set(first.calls)) == len(cells)
    again = FakeRunner()
    records = R.run_cells(grid(tmp_path, "--tasks=mtop", "--tables=1,3", "--ln_values=0.4"), again)
    assert again.calls == [] and all(r["result"] for r in records)


def test_killed_cell_is_rerun_from_scratch(tmp_path):
    cells = grid(tmp_path, "--tasks=mtop", "--tables=3", "--ln_values=0.4")
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
    cells = grid(tmp_path, "--tasks=mtop", "--tables=1", "--extra_tasks=")
    R.run_cells(cells, FakeRunner())
    for c in cells:
        if c.kind == "pretrain":
            (Path(c.out_dir) / "ckpt_best.pt").unlink()
    runner = FakeRunner()
    R.run_cells(cells, runner)
    assert runner.calls == []                              # nothing needs a checkpoint
    (Path(cells[-1].out_dir) / "result.json").unlink()     # e.g. ft-identity-mtop-s1
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
    cells = grid(tmp_path, "--tasks=mtop", "--tables=1", "--extra_tasks=")
    R.run_cells(cells, FakeRunner())
    pt = next(c for c in cells if c.id == "pt-set")
    (Path(pt.out_dir) / "result.json").write_text('{"task": "set", "wall_s": 9}')  # another run
    runner = FakeRunner()
    R.run_cells(cells, runner)
    assert sorted(runner.calls) == ["ft-set-mtop-s0", "ft-set-mtop-s1"]


def test_killed_cell_resumes_from_its_checkpoint(tmp_path):
    cells = grid(tmp_path, "--tasks=mtop", "--tables=1", "--extra_tasks=")
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
    (folder / "cmd.txt").write_text("python finetune.py --lr=0.5")  # another command: afresh
    seen.clear()
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
    for _ in range(200):
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
    cells = grid(tmp_path, "--tasks=mtop", "--tables=1")
    runner = FakeRunner(fail={"pt-lime"})
    records = {r["id"]: r for r in R.run_cells(cells, runner)}
    err = records["pt-lime"]["error"]
    assert "exit code 3" in err and "last words of pt-lime" in err
    assert "skipped" in records["ft-lime-mtop-s0"]["error"]
    assert "ft-lime-mtop-s0" not in runner.calls
    assert records["ft-set-mtop-s0"]["result"] is not None  # the rest of the grid went on
    stop = FakeRunner(fail={"ft-random-mtop-s0"})
    R.run_cells(grid(tmp_path / "b", "--tasks=mtop", "--tables=1"), stop, fail_fast=True)
    assert stop.calls == ["ft-random-mtop-s0"]


def test_dependency_order(tmp_path):
    cells = grid(tmp_path, "--tasks=mtop,retrosynthesis", "--seeds=2", "--extra_tasks=sort")
    runner = FakeRunner()
    R.run_cells(cells, runner)
    pos = {cid: i for i, cid in enumerate(runner.calls)}
    ft = [c for c in cells if c.kind == "finetune"]
    for c in ft:  # after the pre-training it loads (Table 1) or takes statistics from (Table 2)
        assert all(pos[d] < pos[c.id] for d in c.deps)
        init = next(a for a in c.cmd if a.startswith("--init="))
        if c.meta["source"] and c.meta["method"] != "natural":
            assert c.deps == [f"pt-{c.meta['source']}"] and f"pt-{c.meta['source']}" in init
    stats = [c for c in ft if c.meta["method"].startswith("stats-")]
    assert len(stats) == 3 * 4 * 2 * 2  # sources x schemes x tasks x seeds
    assert {c.meta["source"] for c in stats} == {"set", "lime", "identity"}
    # natural + 5 Table 1 sources + sort, no duplicates
    assert sum(c.kind == "pretrain" for c in cells) == 7
    tok = f"--tokenizer={R.SCALES['cpu']['tokenizer']['path']}"  # one for all: checkpoints fit
    assert all(c.cmd.count(tok) == 1 for c in cells)
    assert all(sum(a.startswith("--tokenizer=") for a in c.cmd) == 1 for c in cells)
    # a cell passes the recipe by name, its identity and the grid's budgets, nothing else
    out = tmp_path / "out" / "runs"
    pt = next(c for c in cells if c.id == "pt-lime")
    assert pt.cmd == ["python", "pretrain.py", "--task=lime", f"--out_dir={out / 'pt-lime'}",
                      "--seed=0", "--preset=cpu", "--data_dir=D", tok, "--max_steps=2000"]
    ft = next(c for c in cells if c.id == "ft-lime-retrosynthesis-s1")
    assert ft.cmd == ["python", "finetune.py", "--task=retrosynthesis",
                      f"--init={out / 'pt-lime' / 'ckpt_best.pt'}", f"--out_dir={out / ft.id}",
                      "--seed=1", "--preset=cpu", "--data_dir=D", tok, "--max_steps=400",
                      "--eval_interval=200", "--n_test=200"]
    with pytest.raises(ValueError, match="comes after"):
        R.run_cells(list(reversed(cells)), FakeRunner())


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
    cells = grid(tmp_path, "--tasks=mtop", "--tables=1,2,3")
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
    cells = [R.Cell(f"c{i}", "finetune", [], "x", meta=dict(eta_kind="finetune:mtop"))
             for i in range(4)]
    assert R._eta(cells, {"finetune:mtop": [60.0]}) == "0:04:00"
    assert R._eta(cells, {"finetune:mtop": [60.0]}, jobs=2) == "0:02:00"


@pytest.mark.parametrize("flag, match", [
    ("--tasks=mtop,imagenet", "--tasks='mtop,imagenet': expected a comma list of mtop, webqsp"),
    ("--tables=4", "--tables='4': expected a comma list of 1, 2, 3"),
    ("--ln_values=abc", "--ln_values='abc': expected a comma list of numbers"),
    ("--extra_tasks=sortt", "--extra_tasks='sortt'"),
    ("--seeds=0", "--seeds=0 must be >= 1"),
    ("--jobs=0", "--jobs=0 must be >= 1"),  # not silently the scale's default
    ("--scale=gpu", "--scale='gpu' is not one of cpu, paper"),
    ("--jobs=two", "--jobs=two: expected int"),
])
def test_bad_settings_are_user_errors_naming_the_key(tmp_path, flag, match):
    with pytest.raises(R.config.UserError, match=re.escape(match)):
        R.main(["--scale=cpu", f"--out={tmp_path}", flag])
    assert not (tmp_path / "runs").exists()


def test_defaults_come_from_the_scale_and_help_works(capsys):
    cpu, paper = R.get_config([]), R.get_config(["--scale=paper", "--seeds=3"])
    assert (cpu.tasks, cpu.seeds, cpu.jobs, cpu.ln_values, cpu.out) == (
        "mtop", 2, 2, "0.1,0.4,0.8", "results/cpu")
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
    base = ["--scale=paper", "--tasks=mtop,cnndm_10k", "--tables=3", "--ln_values=0.4",
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
                        "--t5_v11_dir=V11", "--tables=3"])
    inits = {c.meta["task"]: c.cmd for c in R.build_cells(cfg) if c.meta["method"] == "natural"}
    assert "--init=hf:T5" in inits["mtop"] and "--init=hf:V11" in inits["cnndm_10k"]
    assert all("--preset=paper" in c and "--tokenizer=T5/tokenizer.json" in c
               for c in inits.values())
    assert not any(a.startswith("--max_steps") for c in inits.values() for a in c)  # the preset's
    # a dry run shows the grid before the checkpoints are downloaded
    assert R.main(["--scale=paper", "--tables=3", f"--out={tmp_path}", "--dry_run=1"]) == 0
    assert "--init=hf:<T5_V11_DIR>" in capsys.readouterr().out


def test_percent_benefit_arithmetic():
    assert R.percent_benefit(50, 20, 80) == pytest.approx(50.0)  # 30 of 60
    assert R.percent_benefit(10, 20, 80) == pytest.approx(-100 / 6)  # worse than random
    assert R.percent_benefit(95, 20, 80) == pytest.approx(125.0)  # better than natural
    assert R.percent_benefit(50, 20, 20) is None and R.percent_benefit(None, 20, 80) is None


def rec(method, task, seed, score, tables=(1,), source=None):
    meta = dict(method=method, label=method.upper(), tables=list(tables), task=task, seed=seed,
                source=source)
    return dict(id=f"ft-{method}-{task}-s{seed}", kind="finetune", meta=meta, error=None,
                result=dict(score=score, best_val_token_acc=score / 100))


def toy_records():
    """random 10/20, natural 30/60, lime 20±2.83/32 on mtop/retro: hand-computed below."""
    return [dict(id="pt-lime", kind="pretrain", meta=dict(source="lime"), error=None,
                 result=dict(best_val_token_acc=0.975, val_exact_match=0.5,
                             baselines=dict(constant=dict(token_acc=0.25),
                                            copy=dict(token_acc=0.1)))),
            rec("random", "mtop", 0, 10, (1, 3)), rec("random", "retrosynthesis", 0, 20, (1, 3)),
            rec("natural", "mtop", 0, 30, (1, 3)), rec("natural", "retrosynthesis", 0, 60, (1, 3)),
            rec("lime", "mtop", 0, 18, source="lime"), rec("lime", "mtop", 1, 22, source="lime"),
            rec("lime", "retrosynthesis", 0, 32, source="lime"), rec("ln0.4", "mtop", 0, 10, (3,)),
            rec("ln0.4", "retrosynthesis", 0, 40, (3,))]


def test_summarize_means_std_and_benefit():
    s = R.summarize(toy_records(), metric="score")
    lime = s["methods"]["lime"]
    assert lime["per_task"]["mtop"]["mean"] == pytest.approx(20)
    assert lime["per_task"]["mtop"]["n"] == 2
    assert lime["per_task"]["mtop"]["std"] == pytest.approx(math.sqrt(8))  # sample std of 18, 22
    assert lime["per_task"]["mtop"]["pct"] == pytest.approx(50)  # (20-10)/(30-10)
    assert lime["per_task"]["retrosynthesis"]["pct"] == pytest.approx(30)  # (32-20)/(60-20)
    assert lime["pct"] == pytest.approx(40)  # headline: mean of per-task percentages
    assert lime["avg"] == pytest.approx(26) and lime["pct_of_avg"] == pytest.approx(100 * 11 / 30)
    assert lime["pretrain_acc"] == pytest.approx(97.5)
    assert lime["pretrain_const"] == pytest.approx(25)
    assert s["methods"]["random"]["pct"] == 0
    assert s["methods"]["natural"]["pct"] == pytest.approx(100)
    acc = R.summarize(toy_records(), metric="best_val_token_acc")  # fractions are shown as %
    assert acc["methods"]["lime"]["per_task"]["retrosynthesis"]["mean"] == pytest.approx(32)


def test_natural_equal_random_gives_na():
    recs = [r for r in toy_records() if r["id"] != "ft-natural-mtop-s0"]
    recs.append(rec("natural", "mtop", 0, 10, (1, 3)))
    s = R.summarize(recs, metric="score")
    assert s["methods"]["lime"]["per_task"]["mtop"]["pct"] is None
    lime = s["methods"]["lime"]
    assert lime["pct"] == pytest.approx(30) and lime["pct_n_tasks"] == 1
    assert any("n/a" in n for n in s["notes"])
    assert "n/a" in R.render_tables(s)["table1.md"]


def test_note_when_natural_minus_random_is_within_seed_spread():
    notes = lambda recs: R.summarize(recs, metric="score")["notes"]
    # mtop: random 11 ± 1.41, natural 22 ± 11.3 -> +11 < 12.7
    recs = toy_records() + [rec("random", "mtop", 1, 12, (1, 3)), rec("natural", "mtop", 1, 14,
                                                                      (1, 3))]
    spread = "mtop: natural - random = +11.00 is within the seeds' spread"
    assert any(n.startswith(spread) for n in notes(recs))
    assert not any("spread" in n for n in notes(toy_records()))  # one seed: the spread is unknown
    recs = toy_records() + [rec("random", "mtop", 1, 11, (1, 3)), rec("natural", "mtop", 1, 31,
                                                                      (1, 3))]
    assert not any("spread" in n for n in notes(recs))  # +20.5 >> 0.71 + 0.71


def test_render_tables_contains_rows_and_numbers():
    tables = R.render_tables(R.summarize(toy_records(), metric="score"))
    assert set(tables) == {"table1.md", "table3.md"}
    t1 = tables["table1.md"]
    lime_row = next(line for line in t1.splitlines() if line.startswith("| LIME |"))
    for expected in ["97.5 / 50.0", "20.0 ± 2.8", "32.0", "26.0", "40%", "37", "67%"]:
        assert expected in lime_row, (expected, lime_row)
    assert "| RANDOM |" in t1 and "| NATURAL |" in t1 and "LN0.4" not in t1
    t3 = tables["table3.md"]
    assert "| LN0.4 |" in t3 and "LIME" not in t3 and "| mtop | retrosynthesis |" in t3


def test_svg_is_xml_with_one_bar_per_method():
    s = R.summarize(toy_records(), metric="score")
    root = ET.fromstring(R.render_svg(s))
    bars = [e for e in root.iter("{http://www.w3.org/2000/svg}rect") if e.get("class") == "bar"]
    assert len(bars) == len(s["methods"]) == 4
    assert all(float(b.get("width")) >= 0 for b in bars)


def test_main_end_to_end_with_fake_runner(tmp_path, monkeypatch):
    runner, made = FakeRunner(), []
    monkeypatch.setattr(R, "subprocess_runner", runner)
    # the shared tokenizer is made once, before any cell runs (here: recorded, not trained)
    monkeypatch.setattr(R, "get_tokenizer", lambda *a, **k: made.append((a, k, len(runner.calls))))
    data, out = data_dir(tmp_path, "mtop", "natural_text"), tmp_path / "out"
    argv = ["--scale=cpu", "--tasks=mtop", "--tables=1,2,3", "--ln_values=0.4", f"--out={out}",
            f"--data_dir={data}"]
    assert R.main(argv) == 0 and len(runner.calls) == 46
    tok = R.SCALES["cpu"]["tokenizer"]
    assert made == [((data, tok["size"], tok["path"]), {"natural_only": True}, 0)]
    # parallel cells share the cores
    assert runner.threads == {max(1, os.cpu_count() // R.SCALES["cpu"]["jobs"])}
    for name in ["table1.md", "table2.md", "table3.md", "benefit.svg", "results.json", "run.log"]:
        assert (out / name).exists(), name
    assert "Paper: parameter statistics" in (out / "table2.md").read_text()
    results = json.loads((out / "results.json").read_text())
    assert results["methods"]["lime"]["pretrain_acc"] == 90.0
    assert all(isinstance(r["wall_s"], float) for r in results["records"])
    names = ["table1.md", "table2.md", "table3.md", "benefit.svg"]
    tables = {n: (out / n).read_text() for n in names}
    assert R.main(argv + ["--dry_run=1"]) == 0 and len(made) == 1  # dry runs train nothing
    again = FakeRunner()
    monkeypatch.setattr(R, "subprocess_runner", again)
    assert R.main(argv) == 0 and again.calls == []  # resumed: nothing left to run
    # finished cells keep their own wall_s, not null
    assert json.loads((out / "results.json").read_text())["records"][0]["wall_s"] == 2.0
    for n in tables:
        (out / n).unlink()
    import shutil
    shutil.rmtree(out / "runs")                    # report_only reads results.json, nothing else
    files = sorted(p.name for p in out.iterdir()) + [n for n in names]
    before, made_before = (out / "results.json").read_bytes(), len(made)
    assert R.main(argv + ["--report_only=1"]) == 0 and len(made) == made_before
    assert again.calls == [] and (out / "results.json").read_bytes() == before  # not rewritten
    assert {n: (out / n).read_text() for n in names} == tables  # byte for byte the same tables
    assert sorted(p.name for p in out.iterdir()) == sorted(files)   # and nothing else written
    (out / "results.json").unlink()
    with pytest.raises(R.config.UserError, match=r"results\.json does not exist"):
        R.main(argv + ["--report_only=1"])


def test_table_numbers_never_show_minus_zero():
    cases = [(-0.0, 0), (-0.3, 0), (-0.04, 1), (-0.6, 0), (12.345, 1), (None, 1)]
    assert [R._f(x, n) for x, n in cases] == ["0", "0", "0.0", "-1", "12.3", "–"]
