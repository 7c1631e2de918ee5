"""reproduce.py: the paper's three experiments as one resumable grid, with intervals and verdicts.

A cell is a child process: pretrain.py per source (runs/pt-<source>), finetune.py per method, task
and seed (runs/ft-<method>-<task>-s<seed>). Parts: table1 (random, natural, LIME, nonsense summary,
nesting language, Set, Identity), sweep (Experiment 2: the 18 simple tasks), table2 (statistics of
Set, LIME, Identity), table3 (constant pre-attention norm). A finished cell is reused only if its
dependencies are the runs it was made from; a killed one resumes from its checkpoint; children die
with this process. Writes the reports, results.json and run.log to --out.
    python reproduce.py --scale=cpu   # the CPU grid (~8.5 h on 2 cores), resumable; --dry_run=True
    python reproduce.py --scale=cpu --report_only=True   # the reports again from results.json
    python reproduce.py --scale=paper --t5_dir=data/t5-small --t5_v11_dir=data/t5-v1_1-small
Reading order: ..., stats_init.py, reproduce.py (here), bench.py, data.py. Next: bench.py.
"""
import hashlib, json, os, shutil, signal, statistics, subprocess, sys, time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from xml.sax.saxutils import escape

import numpy as np

import config
from tokenizer import get_tokenizer

DOWNSTREAM = ["mtop", "webqsp", "squad", "retrosynthesis", "code_translation", "cnndm_10k"]
# The experiment's design; the recipes (model, lengths, fine-tuning budget and test size per task)
# are the scripts' own --preset=<scale>. results/cpu/DESIGN.md says why each value.
DESIGN = {
    "cpu": dict(pretrain_steps=1000, natural_steps=10000,   # natural: 10x a synthetic source
                natural="pretrain",   # span corruption of natural_text/, this BPE (T5's saw C4)
                tokenizer=dict(path="cache/bpe8192-natural.json", size=8192),
                tasks=["mtop", "webqsp", "retrosynthesis"],  # Table 1's; other parts: the first
                seeds=3, sweep_seeds=2, jobs=2, ln_values=[0.05, 0.1, 0.2, 0.4, 0.6, 0.8]),
    "paper": dict(pretrain_steps=None, natural_steps=None,   # the preset's 80k steps
                  natural="hf", tokenizer=None,  # the off-the-shelf T5 and its tokenizer.json
                  tasks=DOWNSTREAM, seeds=1, sweep_seeds=1, jobs=1,   # fine-tuned once, 1 GPU
                  ln_values=[0.05, 0.1, 0.2, 0.4, 0.6, 0.8])}
PARTS = ["table1", "sweep", "table2", "table3"]
TABLE1_SOURCES = ["lime", "nonsense_summary", "nesting_language", "set", "identity"]
STATS_SOURCES = ["set", "lime", "identity"]
STATS_SCHEMES = ["per_param_mean_sd", "per_param_scale", "whole_model_scale",
                 "preattn_ln_per_param_scale"]
LABELS = dict(random="Random init", natural="Natural pre-training", lime="LIME",
              per_param_mean_sd="Per Param Mean/SD", preattn_ln_per_param_scale="Pre-attn LN PPS")
name = lambda key: LABELS.get(key, key.replace("_", " ").capitalize())  # noqa: E731  as reported
PAPER = {"lime": 67.0, "set": 65.0, "stats": 39.0}   # % of benefit, means over six tasks
BOOTSTRAP = 2000                                    # resamples of the seeds, numpy seed 0

@dataclass
class ReproduceConfig:
    scale: str = "cpu"             # a DESIGN: "cpu" or "paper"
    parts: str = ",".join(PARTS)   # which parts to run, a comma list
    tasks: str = ""                # Table 1's downstream tasks ("" = the design's)
    seeds: int = 0                 # fine-tuning seeds per row (0 = the design's)
    sweep_seeds: int = 0           # seeds per sweep source (0 = the design's)
    ln_values: str = ""            # Table 3's constants c ("" = the design's)
    data_dir: str = config.DATA_DIR  # the downstream tasks' folders and natural_text/
    out: str = ""                  # output folder ("" = results/<scale>)
    t5_dir: str = ""               # paper scale: HF folder of the off-the-shelf T5-small
    t5_v11_dir: str = ""           # paper scale: HF folder of T5 v1.1-small (cnndm_10k)
    jobs: int = 0                  # cells at once, each with cores/jobs threads (0 = design's)
    dry_run: bool = False          # print the cells and their commands, run nothing
    report_only: bool = False      # only rebuild the reports from results.json

@dataclass
class Cell:
    id: str            # folder name under runs/, unique
    kind: str          # "pretrain" | "finetune"
    cmd: list          # ["python", "<script>.py", "--k=v", ...]; run with our interpreter
    out_dir: str       # runs/<id>
    deps: list = field(default_factory=list)  # ids of cells that must finish first
    meta: dict = field(default_factory=dict)  # method, label, parts, task, seed, source

def _list(cfg, key, conv=str, valid=None) -> list:  # --key="a,b": checked, converted
    try:
        vals = [conv(x) for x in getattr(cfg, key).replace(" ", "").split(",") if x]
    except ValueError:
        vals = []
    if vals and set(vals) <= set(valid or vals):
        return vals
    raise config.UserError(f"--{key}={getattr(cfg, key)!r}: expected a comma list of "
                           + (", ".join(valid) if valid else "numbers"))

def get_config(argv) -> ReproduceConfig:
    """The command line over the design's defaults (what 0 and "" stand for), all checked."""
    def defaults(c):
        config.check_choice("scale", c.scale, DESIGN)
        d = DESIGN[c.scale]
        return dict(tasks=",".join(d["tasks"]), seeds=d["seeds"], sweep_seeds=d["sweep_seeds"],
                    jobs=d["jobs"], ln_values=",".join(map(str, d["ln_values"])),
                    out=f"results/{c.scale}")
    cfg = config.parse(ReproduceConfig, argv, defaults, __doc__)
    [config.check_range(key, getattr(cfg, key), 1) for key in ("seeds", "sweep_seeds", "jobs")]
    _list(cfg, "parts", valid=PARTS), _list(cfg, "tasks", valid=DOWNSTREAM)
    _list(cfg, "ln_values", float)
    return cfg

def check_inputs(cfg):
    """A UserError naming every input the cells would miss, raised before the first cell starts."""
    tasks, hf = _list(cfg, "tasks"), DESIGN[cfg.scale]["natural"] == "hf"
    w = "model.safetensors|pytorch_model.bin"
    need = [("data_dir", t) for t in tasks + ["natural_text"] * (not hf)]
    need += [("t5_dir", n) for n in ("config.json", "tokenizer.json", w)] * hf
    need += [("t5_v11_dir", n) for n in ("config.json", w)] * (hf and "cnndm_10k" in tasks)
    missing = [os.path.join(d, n.replace("|", " or ")) if d else f"--{k}=DIR" for k, n in need
               for d in [getattr(cfg, k)]
               if not (d and any(os.path.exists(os.path.join(d, x)) for x in n.split("|")))]
    if missing:
        raise config.UserError(f"--scale={cfg.scale} needs " + ", ".join(dict.fromkeys(missing)))

def build_cells(cfg) -> list:
    """The grid of the requested parts, each cell after its dependencies, the long natural
    pre-training first; a cell two parts share (e.g. ft-set-mtop-s0) is listed once."""
    from tasks import SIMPLE  # here: the runner itself never imports torch
    d, parts, tasks = DESIGN[cfg.scale], _list(cfg, "parts"), _list(cfg, "tasks")
    tok = d["tokenizer"]["path"] if d["tokenizer"] else f"{cfg.t5_dir or '<T5_DIR>'}/tokenizer.json"
    common = [f"--preset={cfg.scale}", f"--data_dir={cfg.data_dir}", f"--tokenizer={tok}"]
    out, cells = lambda cid: os.path.join(cfg.out, "runs", cid), {}

    def pretrain(src):  # seed 0: --seeds repeats fine-tuning only
        cid, steps = f"pt-{src}", d["natural_steps" if src == "natural" else "pretrain_steps"]
        cells.setdefault(cid, Cell(cid, "pretrain", [
            "python", "pretrain.py", f"--task={src}", f"--out_dir={out(cid)}", "--seed=0",
            *common, *[f"--max_steps={steps}"] * bool(steps)], out(cid), meta=dict(source=src)))
        return [cid], os.path.join(out(cid), "ckpt_best.pt")   # best validation: the paper's

    def finetune(method, part, init, task_list, seeds, deps=(), src=None, label=None):
        for seed in range(seeds):  # seed-major: a whole row exists before its repeats
            for t in task_list:
                cid = f"ft-{method}-{t}-s{seed}"
                if cid in cells:
                    cells[cid].meta["parts"].append(part)
                    continue
                cells[cid] = Cell(cid, "finetune", [
                    "python", "finetune.py", f"--task={t}", f"--init={init(t)}",
                    f"--out_dir={out(cid)}", f"--seed={seed}", *common], out(cid), list(deps),
                    dict(method=method, label=label or name(method),
                         parts=[part], task=t, seed=seed, source=src))

    nat_deps, nat_ckpt = pretrain("natural") if d["natural"] == "pretrain" else ([], None)
    key = lambda t: "t5_v11_dir" if t == "cnndm_10k" else "t5_dir"  # noqa: E731  v1.1: CNNDM
    natural = lambda t: nat_ckpt or "hf:" + (getattr(cfg, key(t)) or f"<{key(t).upper()}>")  # noqa
    for part in parts:  # the references first: partial grids already give percentages
        ts = tasks if part == "table1" else tasks[:1]
        finetune("random", part, lambda t: "scratch", ts, cfg.seeds)
        finetune("natural", part, natural, ts, cfg.seeds, nat_deps, "natural")
    sources = [(s, "table1", tasks, cfg.seeds) for s in TABLE1_SOURCES * ("table1" in parts)]
    sources += [(s, "sweep", tasks[:1], cfg.sweep_seeds) for s in [*SIMPLE] * ("sweep" in parts)]
    for src, part, ts, n in sources:  # fine-tune the whole checkpoint
        deps, ckpt = pretrain(src)
        finetune(src, part, lambda t, c=ckpt: c, ts, n, deps, src)
    for src in STATS_SOURCES * ("table2" in parts):  # only per-group statistics transfer
        deps, ckpt = pretrain(src)
        for sch in STATS_SCHEMES:
            finetune(f"stats-{sch}-{src}", "table2", lambda t, s=sch, c=ckpt: f"stats:{s}:{c}",
                     tasks[:1], cfg.seeds, deps, src, f"{name(sch)} (from {name(src)})")
    for c in _list(cfg, "ln_values", float) * ("table3" in parts):  # no checkpoint at all
        finetune(f"ln{c:g}", "table3", lambda t, c=c: f"preattn_ln:{c:g}", tasks[:1], cfg.seeds,
                 label=f"Pre-attn LN = {c:g}")
    return list(cells.values())

# ----------------------------------------------------------------------------- running the cells
def read(cell, name="result.json"):
    """A file of the cell's folder: result.json (written last: "finished") or cell.json (written
    first: its command, its dependencies' runs and the code's commit); None if absent."""
    return json.loads(p.read_text()) if (p := Path(cell.out_dir) / name).exists() else None

def fingerprint(cell):  # which run a finished cell is
    return hashlib.sha1(p.read_bytes()).hexdigest() if (p := Path(cell.out_dir) /
                                                         "result.json").exists() else None

def commit() -> str:
    """The code's git commit, '+dirty' if it has uncommitted changes ('unknown' outside git)."""
    git = lambda *a: subprocess.run(["git", *a], capture_output=True, text=True,  # noqa: E731
                                    cwd=Path(__file__).parent).stdout.strip()
    return (git("rev-parse", "HEAD") or "unknown") + "+dirty" * bool(
        git("status", "--porcelain", "--untracked-files=no"))

def plan(cells, say=print) -> set:
    """The ids of the cells to run. A finished cell is reused only if each dependency is still
    the run it was made from; otherwise it runs again, with its dependants. A pre-training cell
    whose checkpoint is gone (results/ is committed without .pt files) runs again only if a
    dependant must run, and then every dependant runs again too: no table mixes two runs."""
    prints = {c.id: fingerprint(c) for c in cells}
    made = {c.id: (read(c, "cell.json") or {}).get("deps", {}) for c in cells}
    run = {cid for cid, p in prints.items() if p is None}
    while True:
        again = {}
        for c in (c for c in cells if c.id not in run):
            if stale := [d for d in c.deps if d in run or made[c.id].get(d) != prints[d]]:
                again[c.id] = f"{', '.join(stale)} is not the run it was made from"
            elif c.kind == "pretrain" and not (Path(c.out_dir) / "ckpt_best.pt").exists() and \
                    any(c.id in o.deps and o.id in run for o in cells):
                again[c.id] = "a dependant must run and the checkpoint is gone"
        if not again:
            return run
        for cid, why in again.items():
            say(f"re-running {cid}: {why}")
        run |= set(again)

def _prepare(cell, cells, code, say):
    """The cell's folder for a start: a killed attempt of the same command with the same
    dependencies resumes from its ckpt_last.pt; anything else starts afresh. The cell to run."""
    folder, old = Path(cell.out_dir), read(cell, "cell.json") or {}
    deps = {d: fingerprint(c) for c in cells for d in cell.deps if c.id == d}
    if (folder / "ckpt_last.pt").exists() and (old.get("cmd"), old.get("deps")) == (
            cell.cmd, deps) and fingerprint(cell) is None:
        say(f"resuming {cell.id} from its last checkpoint")
        return replace(cell, cmd=cell.cmd[:2] + ["--init=resume", f"--out_dir={cell.out_dir}"])
    shutil.rmtree(folder, ignore_errors=True)
    config.write_json(str(folder / "cell.json"), dict(cmd=cell.cmd, deps=deps, commit=code))
    return cell

# A cell's child asks the kernel for SIGTERM when its parent dies (even by kill -9), and gives up
# if that parent is already gone; then it runs the script as `python script.py ...` would.
LAUNCH = ("import ctypes, os, runpy, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGTERM); "
          "os.getppid() == int(sys.argv[1]) or sys.exit('parent gone'); sys.argv = sys.argv[2:]; "
          "sys.path[0] = os.path.dirname(sys.argv[0]); runpy.run_path(sys.argv[0], "
          "run_name='__main__')")

def subprocess_runner(cell, log_path, threads=0):
    """Run one cell's command with our interpreter, its output appended to log_path; returns the
    exit code. threads > 0 caps its threads (OMP_NUM_THREADS) so that parallel cells share."""
    script = str(Path(__file__).resolve().parent / cell.cmd[1])
    cmd = [sys.executable, "-c", LAUNCH, str(os.getpid()), script, *cell.cmd[2:]]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads > 0 else None
    with open(log_path, "a") as log:
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode

def exit_on_signals():  # at once: the children die with us (LAUNCH); files are written atomically
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda n, frame: os._exit(128 + n))

def _fmt(s):  # seconds -> h:mm:ss
    return f"{int(s) // 3600}:{int(s) // 60 % 60:02d}:{int(s) % 60:02d}"

def _eta(cells, durations, jobs=1):  # per cell: the mean time of its kind and task (or kind)
    total, untimed = 0.0, 0
    for c in cells:
        same = durations.get((c.kind, c.meta.get("task"))) or [
            x for k, v in durations.items() if k[0] == c.kind for x in v]
        total, untimed = total + (statistics.mean(same) if same else 0), untimed + (not same)
    return _fmt(total / jobs) + (f" + {untimed} untimed cells" if untimed else "")

def _failure(cell, fut):  # None when the cell wrote its result.json (whatever the exit code)
    rc = f"runner raised {e!r}" if (e := fut.exception()) else fut.result()
    log = Path(cell.out_dir) / "stdout.log"  # the folder stays for inspection; a re-run retries
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.exists() else ""
    return None if read(cell) else f"exit code {rc}, no result.json; log tail:\n{tail}"

def run_cells(cells, runner=subprocess_runner, log_file=None, jobs=1) -> list:
    """Run every cell plan() selects, up to `jobs` at a time, in grid order as dependencies allow;
    returns one record per cell: what ran, from which commit, its result or error."""
    pos = {c.id: i for i, c in enumerate(cells)}
    for c in cells:  # the grid must list each dependency before its users
        if any(pos.get(d, len(cells)) > pos[c.id] for d in c.deps):
            raise ValueError(f"cell {c.id} depends on {c.deps}: one is missing or comes after it")

    def say(msg):  # to the terminal, and to run.log for the record
        print(msg, flush=True)
        with open(log_file or os.devnull, "a") as f:
            f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + msg + "\n")
    to_run, durations, errors, code = plan(cells, say), {}, {}, commit()
    pending, t0, running = [c for c in cells if c.id in to_run], time.time(), {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            busy = {c.id for c in pending} | {c.id for c, _ in running.values()}
            for cell in [c for c in pending if not any(d in busy for d in c.deps)]:
                if len(running) >= jobs:
                    break
                pending.remove(cell)
                if any(read(cells[pos[d]]) is None for d in cell.deps):
                    errors[cell.id] = f"skipped: a dependency of {cell.deps} has no result.json"
                    continue
                eta = _eta(pending + [c for c, _ in running.values()], durations, jobs)
                say(f"[{len(cells) - len(pending) - len(running) - 1}/{len(cells)} done] running "
                    f"{cell.id} | elapsed {_fmt(time.time() - t0)} | left ~{eta}")
                fut = pool.submit(runner, _prepare(cell, cells, code, say),
                                  Path(cell.out_dir) / "stdout.log")
                running[fut] = (cell, time.time())
            for fut in wait(list(running), return_when=FIRST_COMPLETED)[0] if running else ():
                cell, start = running.pop(fut)
                if err := _failure(cell, fut):
                    errors[cell.id] = err
                    say(f"FAILED {cell.id}: {err}")
                    continue
                durations.setdefault((cell.kind, cell.meta.get("task")), []).append(
                    time.time() - start)
                say(f"finished {cell.id} in {_fmt(time.time() - start)}")
    say(f"{len(cells) - len(errors)} of {len(cells)} cells finished, {len(errors)} failed or "
        f"skipped; this invocation took {_fmt(time.time() - t0)}")
    return [dict(id=c.id, kind=c.kind, meta=c.meta, cmd=c.cmd, error=errors.get(c.id),
                 commit=(read(c, "cell.json") or {}).get("commit"), result=read(c)) for c in cells]

# ----------------------------------------------------------------------------- the numbers
def _interval(xs) -> list:  # the central 95% of the finite bootstrap values
    xs = np.asarray(xs)[np.isfinite(xs)]
    return [float(x) for x in np.percentile(xs, [2.5, 97.5])] if len(xs) else [None, None]

MEASURES = {"score": ("the paper's metric", "each task's main metric on its test examples (exact "
                       "match; ROUGE-1 for CNNDM) at the step of best validation token accuracy"),
            "token_acc": ("validation token accuracy", "the best validation token accuracy "
                          "(teacher forced, x100), the score's selection criterion")}

def summarize(records, measure="score") -> dict:
    """Every number of the reports, on one measure: "score" (the task's main metric at the best
    validation token accuracy, the paper's) or "token_acc" (that accuracy, x100). Per method and
    task: the seeds' mean and sample std, the % of natural's benefit 100 (method - random) /
    (natural - random); per method the mean % over its tasks where natural beats random by at
    least 3 pooled seed stds, with a 95% interval from BOOTSTRAP resamples of each cell's seeds."""
    pre = {r["meta"]["source"]: r["result"] or {} for r in records if r["kind"] == "pretrain"}
    ft = [r for r in records if r["kind"] == "finetune"]
    tasks, scores, methods, n_test = list(dict.fromkeys(r["meta"]["task"] for r in ft)), {}, {}, {}
    for r in ft:
        m, res, src = r["meta"], r["result"], pre.get(r["meta"]["source"], {})
        row = methods.setdefault(m["method"], dict(
            label=m["label"], parts=m["parts"], source=m["source"], tasks=[], per_task={},
            pretrain=[src.get("best_val_token_acc"), src.get("val_exact_match"),
                      ((src.get("baselines") or {}).get("constant") or {}).get("token_acc")]))
        row["tasks"] += [m["task"]] * (m["task"] not in row["tasks"])
        if res:
            scores.setdefault((m["method"], m["task"]), []).append(
                res["score"] if measure == "score" else 100 * res["best_val_token_acc"])
            n_test[m["task"]] = res.get("n_test")
    rng, boot = np.random.default_rng(0), {}
    for (k, t), x in scores.items():  # in grid order: the same draws every time
        boot[k, t] = np.array(x)[rng.integers(0, len(x), (BOOTSTRAP, len(x)))].mean(1)
        methods[k]["per_task"][t] = dict(n=len(x), mean=statistics.mean(x), std=statistics.stdev(
            x) if len(x) > 1 else 0.0)
    margins = {}
    for t in tasks:
        r, n = (methods.get(k, {}).get("per_task", {}).get(t) for k in ("random", "natural"))
        if r and n:
            d, pooled = n["mean"] - r["mean"], ((r["std"] ** 2 + n["std"] ** 2) / 2) ** 0.5
            margins[t] = dict(diff=d, pooled_std=pooled, ok=pooled > 0 and d >= 3 * pooled,
                              ref=[r["mean"], n["mean"]])
    for k, m in methods.items():
        pcts, draws = [], []
        for t, c in ((t, c) for t, c in m["per_task"].items() if t in margins):
            (r, n), rb = margins[t]["ref"], boot["random", t]
            with np.errstate(divide="ignore", invalid="ignore"):  # natural = random: inf
                b = 100 * (boot[k, t] - rb) / (boot["natural", t] - rb)
            c.update(pct=100 * (c["mean"] - r) / (n - r) if n != r else None, pct_ci=_interval(b))
            if margins[t]["ok"] and c["pct"] is not None:
                pcts, draws = pcts + [c["pct"]], draws + [b]
        m.update(pct=statistics.mean(pcts) if pcts else None, pct_tasks=len(pcts),
                 pct_ci=_interval(np.mean(draws, 0)) if draws else [None, None])
    sweep = _sweep(methods, boot, tasks[0] if tasks else None)
    return dict(measure=measure, tasks=tasks, methods=methods, margins=margins, sweep=sweep,
                n_test=n_test, verdicts=_verdicts(methods, sweep), commits=sorted(
                    {r["commit"] or "unknown" for r in records if r["result"]}),
                errors=[dict(id=r["id"], error=r["error"]) for r in records if r.get("error")])

def _sweep(methods, boot, task) -> dict:
    """Experiment 2: the sources ranked by mean score on `task`; each one's 95% rank interval
    over the bootstrap draws (rank 1 = best)."""
    keys = [k for k, m in methods.items() if "sweep" in m["parts"] and k not in
            ("random", "natural") and (k, task) in boot]
    if not keys:
        return {}
    ranks = 1 + np.argsort(np.argsort(-np.stack([boot[k, task] for k in keys]), 0), 0)
    return dict(task=task, order=sorted(keys, key=lambda k: -methods[k]["per_task"][task]["mean"]),
                rank_ci={k: [int(x) for x in np.percentile(ranks[i], [2.5, 97.5],
                                                           method="nearest")]
                         for i, k in enumerate(keys)})

def _verdict(m, paper, claim) -> dict:
    """The rule, fixed before the grid ran: reproduced if the 95% interval holds the paper's figure
    and excludes 0; not reproduced if it excludes the paper's figure; else (or with no task where
    natural clears its margin) inconclusive."""
    lo, hi = (m or {}).get("pct_ci") or (None, None)
    v = "inconclusive" if lo is None else "reproduced" if lo <= paper <= hi and lo > 0 else \
        "not reproduced" if not lo <= paper <= hi else "inconclusive"
    why = "no task where natural beats random by 3 seed stds" if lo is None else dict(
        reproduced="the interval holds the paper's figure and excludes 0", inconclusive="the "
        "interval holds both 0 and the paper's figure").get(v, "it excludes the paper's figure")
    return dict(claim=claim, paper=paper, ours=m and m["pct"], ci=[lo, hi], verdict=v, why=why)

def _verdicts(methods, sweep) -> list:
    best = max([m for k, m in methods.items() if k.startswith("stats-") and m["pct"] is not None],
               key=lambda m: m["pct"], default=None)
    out = [_verdict(methods.get("lime"), PAPER["lime"], "LIME keeps ~67% of the benefit"),
           _verdict(methods.get("set"), PAPER["set"], "Set keeps ~65% of the benefit"),
           _verdict(best, PAPER["stats"], "Parameter statistics alone keep ~39% (best scheme"
                    + (f": {best['label']})" if best else ")"))]
    if "set" in sweep.get("rank_ci", {}):  # near the top: rank <= 4 of 18, the top quarter
        (lo, hi), n = sweep["rank_ci"]["set"], len(sweep["order"])
        v = "reproduced" if hi <= 4 else "not reproduced" if lo > 4 else "inconclusive"
        out.append(dict(claim=f"Set ranks near the top of the {n} simple tasks (rank <= 4)",
                        paper=None, ours=sweep["order"].index("set") + 1, ci=[lo, hi], verdict=v,
                        why="the 95% bootstrap interval of Set's rank"))
    return out

# ----------------------------------------------------------------------------- the reports
def _f(x, nd=1):  # a table number; a dash for "not run (yet)"; never "-0"
    return "–" if x is None else f"{x:.{nd}f}".lstrip("-") if round(x, nd) == 0 else f"{x:.{nd}f}"

def _pct(c):  # "67% [52, 80]"
    lo, hi = c.get("pct_ci") or (None, None)
    return "–" if c.get("pct") is None else f"{_f(c['pct'], 0)}% [{_f(lo, 0)}, {_f(hi, 0)}]"

def _md(header, rows):
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(map(str, r)) + " |" for r in rows])

TITLES = dict(table1="Table 1: pre-training sources (Experiment 1)", sweep="Experiment 2: the 18 "
              "simple tasks as sources, ranked", table2="Table 2: a fresh model drawn from a "
              "checkpoint's parameter statistics", table3="Table 3: constant pre-attention norm")
INTRO = ("Measure: {}, mean ± std over up to {} seeds. % of benefit = 100 (method - random) / "
         "(natural - random), averaged over the tasks where natural beats random by at least 3 "
         "pooled seed stds; [95% interval] over {} bootstrap resamples of the seeds. Pre-train: "
         "the source's held-out token accuracy / exact match / that of the best constant output.")

def render_part(s, part) -> str:
    tasks = s["tasks"] if part == "table1" else s["tasks"][:1]
    keys = [k for k, m in s["methods"].items() if part in m["parts"]]
    keys = ["random", "natural", *s["sweep"]["order"]] if part == "sweep" else keys
    ms = [s["methods"][k] for k in keys if k in s["methods"]]
    cell = lambda m, t: "–" if (c := m["per_task"].get(t)) is None else _f(c["mean"]) + (  # noqa
        f" ± {c['std']:.1f}" if c["n"] > 1 else "")
    pre = lambda m: " / ".join(_f(x and 100 * x) for x in m["pretrain"]) if m["source"] else "–"
    n = max([c["n"] for m in s["methods"].values() for c in m["per_task"].values()] or [0])
    text = [f"# {TITLES[part]}" if s["measure"] == "score" else "## The same on validation token "
            "accuracy (a secondary measure)", "", INTRO.format(MEASURES[s["measure"]][1], n,
                                                               BOOTSTRAP), "", _md(
        ["method", "pre-train", *tasks, "% of benefit [95%]", "paper"],
        [[m["label"], pre(m), *[cell(m, t) for t in tasks], _pct(m["per_task"].get(tasks[0], {})
                                                                 if part == "sweep" else m),
          f"{PAPER[k]:.0f}%" if k in PAPER else ""] for k, m in zip(keys, ms)])]
    if part == "sweep" and s["sweep"]:
        text += ["", "95% interval of each source's rank: " + ", ".join(
            f"{k} {lo}-{hi}" for k, (lo, hi) in s["sweep"]["rank_ci"].items())]
    if part == "table1":
        text += ["", "% of benefit [95%] per task:", "", _md(["method", *tasks], [
            [m["label"], *[_pct(m["per_task"].get(t, {})) for t in tasks]] for m in ms])]
    for t, g in ((t, s["margins"][t]) for t in tasks if t in s["margins"]):
        text.append(f"\n{t}: natural - random = {g['diff']:+.2f}, pooled seed std "
                    f"{g['pooled_std']:.2f}: {'at least' if g['ok'] else 'BELOW'} the 3x margin, "
                    f"{'used in' if g['ok'] else 'left out of'} the % averages; "
                    f"{s['n_test'].get(t)} test examples." * (s["measure"] == "score"))
    return "\n".join(text + [f"Failed/skipped: {e['id']}" for e in s["errors"]]) + "\n"

def render_verdicts(s) -> str:
    ci = lambda v: f" [{_f(v['ci'][0], 0)}, {_f(v['ci'][1], 0)}]"  # noqa: E731
    rows = [[v["claim"], f"{v['paper']:.0f}%" if v["paper"] else "", ("–" if v["ours"] is None
             else f"{v['ours']:.0f}%" if v["paper"] else f"rank {v['ours']}") + ci(v),
             f"**{v['verdict']}**: {v['why']}"] for v in s["verdicts"]]
    head = ["claim", "paper", "ours [95%]", "verdict"]
    return "\n".join([f"## On {MEASURES[s['measure']][0]}", "", _md(head, rows), "",
                      "Code: " + ", ".join(s["commits"])]) + "\n"

def render_svg(title, rows, note) -> str:
    """A horizontal bar chart that cannot clip or overlap: a label column sized to the longest
    label, the bars with their 95% whiskers, then the numbers in a column of their own. rows:
    (label, value, [lo, hi], paper value or None, colour); black ticks mark the paper."""
    W, lw, h = 360, 12 + 7 * max([len(r[0]) for r in rows] + [10]), 22
    vals = [x for r in rows for x in (r[1], *r[2]) if x is not None]
    lo, hi, end = min([0.0] + vals), max([100.0] + vals), 50 + h * len(rows)
    x = lambda v: lw + 10 + (v - lo) / (hi - lo) * W  # noqa: E731
    width = max(lw + W + 150, 20 + 7.5 * len(title), 20 + 7 * len(note))  # 7-7.5 px a character
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width:.0f}" height="{end + 40}" '
         'font-family="DejaVu Sans, Arial, sans-serif" font-size="12">',
         '<rect width="100%" height="100%" fill="white"/>',
         f'<text x="10" y="20" font-weight="bold">{escape(title)}</text>']
    s += [f'<line x1="{x(v):.1f}" y1="38" x2="{x(v):.1f}" y2="{end}" stroke="#999" '
          f'stroke-dasharray="4 3"/><text x="{x(v):.1f}" y="34" text-anchor="middle">{v}%</text>'
          for v in (0, 100)]
    for y, (label, v, (a, b), paper, color) in zip(range(44, end, h), rows):
        s.append(f'<text x="{lw}" y="{y + 15}" text-anchor="end">{escape(label)}</text>')
        if v is not None:
            x0, x1 = sorted((x(0), x(v)))
            s.append(f'<rect x="{x0:.1f}" y="{y + 4}" width="{x1 - x0:.1f}" height="14" '
                     f'fill="{color}"/>')
        if a is not None:
            s.append(f'<path d="M{x(a):.1f} {y + 11}H{x(b):.1f}M{x(a):.1f} {y + 6}V{y + 16}'
                     f'M{x(b):.1f} {y + 6}V{y + 16}" stroke="black" fill="none"/>')
        if paper is not None:
            s.append(f'<line x1="{x(paper):.1f}" y1="{y + 1}" x2="{x(paper):.1f}" y2="{y + 21}"'
                     ' stroke="black" stroke-width="3"/>')
        s.append(f'<text x="{lw + W + 20}" y="{y + 15}">{_pct(dict(pct=v, pct_ci=[a, b]))}</text>')
    return "\n".join(s + [f'<text x="10" y="{end + 25}">{escape(note)}</text></svg>']) + "\n"

def render_all(summaries) -> dict:
    """{file name: text} of every report, from the summaries of the two MEASURES."""
    out, note = {"verdict.md": "# Verdicts\n"}, ("whiskers: 95% bootstrap interval over seeds; "
                                                  "black ticks: the paper's six-task figures")
    for s in summaries:
        m, ts, tag = s["methods"], s["tasks"] or ["-"], "" if s["measure"] == "score" else "_acc"
        color = dict(table1="#4c72b0", sweep="#4c72b0", table2="#dd8452", table3="#55a868")
        def bar(k, nums=None):  # a chart row; nums: the % shown, default the method's mean one
            nums, paper = nums or m[k], PAPER["stats"] if k.startswith("stats-") else PAPER.get(k)
            return (m[k]["label"], nums.get("pct"), nums.get("pct_ci", [None] * 2), paper,
                    "#888" if k in ("random", "natural") else color[m[k]["parts"][0]])
        best = [max([k for k in m if p in m[k]["parts"] and m[k]["pct"] is not None and k not in (
            "random", "natural")], key=lambda k: m[k]["pct"], default=None) for p in PARTS[2:]]
        for p in (p for p in PARTS if any(p in x["parts"] for x in m.values())):
            out[f"{p}.md"] = out.get(f"{p}.md", "") + "\n" * bool(tag) + render_part(s, p)
        out["verdict.md"] += "\n" + render_verdicts(s)
        what, ok = f"% of natural pre-training's benefit on {MEASURES[s['measure']][0]}", [
            t for t in ts if s["margins"].get(t, {}).get("ok")]   # the tasks in the averages
        out[f"benefit{tag}.svg"] = render_svg(f"{what}: mean over {', '.join(ok) or 'no task'} "
                                              "(tasks with the margin); Tables 2-3: best row",
            [bar(k) for k in m if "table1" in m[k]["parts"]] + [bar(k) for k in best if k], note)
        if s["sweep"]:
            out[f"sweep{tag}.svg"] = render_svg(f"Experiment 2, ranked: {what}, on {ts[0]}", [
                bar(k, m[k]["per_task"][ts[0]]) for k in s["sweep"]["order"]], note)  # its task
    return out

def main(argv):
    cfg = get_config(argv)
    d, cells = DESIGN[cfg.scale], build_cells(cfg)
    if cfg.dry_run:  # the grid and its exact commands
        print("\n".join(f"{c.id:<50} {' '.join(c.cmd)}" for c in cells))
        n_pt = sum(c.kind == "pretrain" for c in cells)
        print(f"{len(cells)} cells: {n_pt} pre-training, {len(cells) - n_pt} fine-tuning")
        return 0
    if cfg.report_only:  # the reports again from results.json alone: no cell folder is read
        if not os.path.exists(path := os.path.join(cfg.out, "results.json")):
            raise config.UserError(f"--report_only: {path} does not exist (run the grid first)")
        records = json.loads(Path(path).read_text())["records"]
    else:
        check_inputs(cfg)  # before any cell, not once per failing cell
        if d["tokenizer"]:  # made once here, not by two cells racing to train it
            get_tokenizer(cfg.data_dir, d["tokenizer"]["size"], d["tokenizer"]["path"],
                          natural_only=True)
        os.makedirs(cfg.out, exist_ok=True)
        exit_on_signals()
        threads = max(1, (os.cpu_count() or 1) // cfg.jobs)
        records = run_cells(cells, lambda c, log: subprocess_runner(c, log, threads),
                            os.path.join(cfg.out, "run.log"), cfg.jobs)
    summaries = [summarize(records, measure) for measure in MEASURES]
    if not cfg.report_only:
        config.write_json(os.path.join(cfg.out, "results.json"), dict(
            design=d, args=asdict(cfg), summaries=summaries, records=records))
    for name, text in render_all(summaries).items():
        config.atomic_write(os.path.join(cfg.out, name), text)
    print(render_all(summaries)["verdict.md"] + f"wrote the reports to {cfg.out}")
    return 1 if summaries[0]["errors"] else 0

if __name__ == "__main__":
    config.main(lambda argv: sys.exit(main(argv)))
