"""reproduce.py: the paper's three experiments end to end, written up as Tables 1-3.

A grid of cells, each a child process at --preset=<scale>: pretrain.py once per source
(runs/pt-<source>), finetune.py per method, task and seed (runs/ft-<method>-<task>-s<seed>).
Table 1: pre-training sources (+ --extra_tasks: Experiment 2); Table 2: stats_init schemes; Table 3:
pre-attention layer norms = c. Writes table<n>.md, results.json, benefit.svg and run.log to --out;
exits 1 if a cell failed. A cell is done iff its result.json exists (the child writes it last)
and its dependencies are the runs it was made from (plan()); a re-run skips done cells, resumes
killed ones from their checkpoint, and re-runs the rest. Children die with this process.
Run: python reproduce.py --scale=cpu [--tables=1,3] [--jobs=1] [--dry_run=1] [--report_only=1]
     python reproduce.py --scale=paper --t5_dir=data/t5-small --t5_v11_dir=data/t5-v1_1-small
Reading order: model.py, tokenizer.py, tasks.py, config.py, train.py, pretrain.py, metrics.py,
finetune.py, stats_init.py, reproduce.py (here), bench.py, data.py. Next: bench.py.
"""
import hashlib, json, os, shutil, signal, statistics, subprocess, sys, time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from xml.sax.saxutils import escape

import config
from tasks import TASKS
from tokenizer import get_tokenizer

DOWNSTREAM = ["mtop", "webqsp", "squad", "retrosynthesis", "code_translation", "cnndm_10k"]
# The grid's design; the recipes (model, lengths, optimiser) are the scripts' own --preset=<scale>.
SCALES = {
    "cpu": dict(
        # one budget for every source, natural too, so sources differ only in their data; the
        # tiny T5 learns every source's task in 2000 steps (pre-training token accuracy is tabled)
        pretrain=dict(max_steps=2000),
        # early fine-tuning, not convergence: at step 400 each Table 1 row's seed std was <= 0.5
        # and natural led random by 1.6 points; at 800 the lead was 0.5 (results/log.md)
        finetune=dict(max_steps=400, eval_interval=200, n_test=200),
        natural="pretrain",  # span corruption on data_dir/natural_text (no T5 checkpoint on CPU)
        # T5's SentencePiece saw C4 alone, so: a BPE of natural_text alone (with the mixed corpus,
        # 60% of MTOP's target tokens never occur in natural_text), made before the first cell
        tokenizer=dict(path="cache/bpe8192-natural.json", size=8192),
        tasks=["mtop"],  # cheap to decode; from scratch it scores well between 0 and its ceiling
        seeds=2,  # fine-tuning repeats (pre-training runs once): every row gets a spread
        jobs=2,  # a 2nd thread gains this model little: two 1-thread cells do ~2x the work
        ln_values=[0.1, 0.4, 0.8],  # Table 3's c: 0.4 in the middle, the ends show the trend
        metric="best_val_token_acc"),  # exact match is too coarse for a tiny model
    "paper": dict(
        pretrain={}, finetune={},  # the presets' own budgets are the released scripts'
        natural="hf", tokenizer=None,  # the off-the-shelf T5 and its tokenizer.json, as the paper
        tasks=DOWNSTREAM, seeds=1, jobs=1,  # the paper fine-tuned each checkpoint once; one GPU
        ln_values=[0.05, 0.1, 0.2, 0.4, 0.6, 0.8],  # the original code's pre-attention LN sweep
        metric="score")}  # the task's main metric at the best-validation-token-accuracy step
TABLE1_SOURCES = ["lime", "nonsense_summary", "nesting_language", "set", "identity"]
STATS_SOURCES = ["set", "lime", "identity"]  # the checkpoints Table 2 takes statistics from
STATS_SCHEMES = ["per_param_mean_sd", "per_param_scale", "whole_model_scale",
                 "preattn_ln_per_param_scale"]
LABELS = dict(zip(["random", "natural"] + TABLE1_SOURCES + STATS_SCHEMES, [
    "Random init", "Natural (span corruption, same steps)", "LIME", "Nonsense summary",
    "Nesting language", "Set", "Identity", "Per Param Mean/SD", "Per Param Scale",
    "Whole Model Scale", "Pre-attn LN Per Param Scale"]))
PUBLISHED = {"random": "0%", "natural": "100%", "lime": "67%", "set": "65%"}  # its six-task means
PUBLISHED_STATS_BEST = "39%"  # Experiment 3's best init scheme; which one it was is not known

@dataclass
class ReproduceConfig:
    scale: str = "cpu"             # a block of SCALES: "cpu" or "paper"
    tasks: str = ""                # downstream tasks, e.g. "mtop,webqsp" ("" = the scale's)
    seeds: int = 0                 # fine-tuning seeds per row (0 = the scale's)
    tables: str = "1,2,3"          # which tables to run, e.g. "1,3"
    extra_tasks: str = ""          # more simple tasks as Table 1 sources, e.g. "sort,reverse"
    ln_values: str = ""            # Table 3's constants c, e.g. "0.05,0.4" ("" = the scale's)
    data_dir: str = config.DATA_DIR  # the downstream tasks' folders and natural_text/
    out: str = ""                  # output folder ("" = results/<scale>)
    t5_dir: str = ""               # paper scale: HF folder of the off-the-shelf T5-small
    t5_v11_dir: str = ""           # paper scale: HF folder of T5 v1.1-small (cnndm_10k)
    dry_run: bool = False          # print the cells and their commands, run nothing
    report_only: bool = False      # only rebuild the tables and benefit.svg from results.json
    jobs: int = 0                  # cells at once, each child with cores/jobs threads (0 = scale's)
    fail_fast: bool = False        # start no cell after the first failure

@dataclass
class Cell:
    id: str            # folder name under runs/, unique
    kind: str          # "pretrain" | "finetune"
    cmd: list          # ["python", "<script>.py", "--k=v", ...]; the runner swaps in sys.executable
    out_dir: str       # runs/<id>; finished iff out_dir/result.json exists
    deps: list = field(default_factory=list)  # ids of cells that must finish first
    meta: dict = field(default_factory=dict)  # method, label, tables, task, seed, source, eta_kind

def _lists(cfg):
    """[tasks, tables, ln_values, extra_tasks] as lists, or a UserError naming the bad key."""
    sources, out = [t for t in TASKS if t != "natural"], []  # natural is a row of its own
    for key, conv, ok in [("tasks", str, DOWNSTREAM), ("tables", int, [1, 2, 3]),
                          ("ln_values", float, None), ("extra_tasks", str, sources)]:
        raw = getattr(cfg, key)
        try:
            vals = [conv(x) for x in raw.replace(" ", "").split(",") if x]
        except ValueError:
            vals = None
        if vals is None or not (vals or key == "extra_tasks") or not set(vals) <= set(ok or vals):
            want = ", ".join(map(str, ok)) if ok else "numbers"
            raise config.UserError(f"--{key}={raw!r}: expected a comma list of {want}")
        out.append(vals)
    return out

def get_config(argv) -> ReproduceConfig:
    """The command line over the scale's defaults (what 0 and "" stand for), all checked."""
    def scale_defaults(c):  # an explicit --seeds=0 stays 0, and is refused below
        config.check_choice("scale", c.scale, SCALES)
        s = SCALES[c.scale]
        return dict(tasks=",".join(s["tasks"]), seeds=s["seeds"], jobs=s["jobs"],
                    ln_values=",".join(map(str, s["ln_values"])), out=f"results/{c.scale}")
    cfg = config.parse(ReproduceConfig, argv, scale_defaults, __doc__)
    config.check_range("seeds", cfg.seeds, 1)
    config.check_range("jobs", cfg.jobs, 1)
    _lists(cfg)
    return cfg

def check_inputs(cfg):
    """A UserError naming every input the cells would miss, raised before the first cell starts."""
    tasks, hf = _lists(cfg)[0], SCALES[cfg.scale]["natural"] == "hf"
    w = "model.safetensors|pytorch_model.bin"  # and every cell reads t5_dir's tokenizer.json
    need = [("data_dir", t) for t in tasks + ["natural_text"] * (not hf)]
    need += [("t5_dir", n) for n in ("config.json", "tokenizer.json", w)] * hf
    need += [("t5_v11_dir", n) for n in ("config.json", w)] * (hf and "cnndm_10k" in tasks)
    missing = [os.path.join(d, n.replace("|", " or ")) if d else f"--{k}=DIR" for k, n in need
               for d in [getattr(cfg, k)]
               if not (d and any(os.path.exists(os.path.join(d, x)) for x in n.split("|")))]
    if missing:
        raise config.UserError(f"--scale={cfg.scale} needs " + ", ".join(dict.fromkeys(missing)))

def build_cells(cfg):
    """The grid for the requested tables, in a runnable order (each cell after its dependencies)."""
    s, (tasks, tables, lns, extra), cells = SCALES[cfg.scale], _lists(cfg), []
    tok = s["tokenizer"]["path"] if s["tokenizer"] else f"{cfg.t5_dir or '<T5_DIR>'}/tokenizer.json"
    # the scale's recipe, one tokenizer for every cell (so checkpoints load whole), the budgets
    common = lambda kind: [f"--preset={cfg.scale}", f"--data_dir={cfg.data_dir}",
                           f"--tokenizer={tok}", *[f"--{k}={v}" for k, v in s[kind].items()]]
    out = lambda cid: os.path.join(cfg.out, "runs", cid)  # one folder per cell, named by its id

    def pretrain(src):  # one cell per source, shared by every table that needs it
        cid = f"pt-{src}"
        if all(c.id != cid for c in cells):  # seed 0 always: --seeds repeats fine-tuning only
            cells.append(Cell(cid, "pretrain", ["python", "pretrain.py", f"--task={src}",
                              f"--out_dir={out(cid)}", "--seed=0", *common("pretrain")], out(cid),
                              meta=dict(source=src, eta_kind="pretrain")))
        return [cid], os.path.join(out(cid), "ckpt_best.pt")  # best validation: the paper's rule

    def finetune(method, tabs, init, deps=(), src=None, label=None):  # a row: tasks x seeds
        for seed in range(cfg.seeds):  # seed-major, so a whole row exists before its repeats
            for t in tasks:
                cid = f"ft-{method}-{t}-s{seed}"
                cmd = ["python", "finetune.py", f"--task={t}", f"--init={init(t)}",
                       f"--out_dir={out(cid)}", f"--seed={seed}", *common("finetune")]
                cells.append(Cell(cid, "finetune", cmd, out(cid), list(deps), dict(
                    method=method, label=label or LABELS.get(method, method), tables=tabs,
                    task=t, seed=seed, source=src, eta_kind=f"finetune:{t}")))

    # the two reference rows of every table come first, so partial results already give percentages
    finetune("random", tables, lambda t: "scratch")
    if s["natural"] == "pretrain":
        deps, ckpt = pretrain("natural")
        finetune("natural", tables, lambda t: ckpt, deps, "natural")
    else:  # the off-the-shelf T5; placeholders let a dry run show the grid before the download
        key = lambda t: "t5_v11_dir" if t == "cnndm_10k" else "t5_dir"
        hf = lambda t: "hf:" + (getattr(cfg, key(t)) or f"<{key(t).upper()}>")
        v11 = "; v1.1 on cnndm_10k" if "cnndm_10k" in tasks else ""
        finetune("natural", tables, hf, label=f"Natural (off-the-shelf T5{v11})")
    for src in (TABLE1_SOURCES + [t for t in extra if t not in TABLE1_SOURCES]) * (1 in tables):
        deps, ckpt = pretrain(src)  # Table 1 and Experiment 2: fine-tune the whole checkpoint
        finetune(src, [1], lambda t, c=ckpt: c, deps, src)  # c=ckpt: bound now, not at the call
    for src in STATS_SOURCES * (2 in tables):  # Table 2: only per-group statistics transfer
        deps, ckpt = pretrain(src)
        for sch in STATS_SCHEMES:
            finetune(f"stats-{sch}-{src}", [2], lambda t, s=sch, c=ckpt: f"stats:{s}:{c}", deps,
                     src, f"{LABELS[sch]} (from {LABELS[src]})")
    for c in lns * (3 in tables):  # Table 3: no checkpoint, pre-attention LN scales = c (ln0.4)
        finetune(f"ln{c:g}", [3], lambda t, c=c: f"preattn_ln:{c:g}", label=f"Pre-attn LN = {c:g}")
    return cells

def read_result(cell):
    """The cell's result.json, else None (whether it may be reused is plan()'s question)."""
    path = Path(cell.out_dir) / "result.json"
    return json.loads(path.read_text()) if path.exists() else None

# A cell's child asks the kernel for SIGTERM when its parent dies (even by kill -9), and gives up
# if that parent is already gone; then it runs the script as `python script.py ...` would.
LAUNCH = ("import ctypes, os, runpy, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGTERM); "
          "os.getppid() == int(sys.argv[1]) or sys.exit('parent gone'); sys.argv = sys.argv[2:]; "
          "sys.path[0] = os.path.dirname(sys.argv[0]); runpy.run_path(sys.argv[0], "
          "run_name='__main__')")

def subprocess_runner(cell, log_path, threads=0):
    """Run one cell's command, all its output appended to log_path; returns the exit code. The
    child dies with us. threads > 0 caps its threads (OMP_NUM_THREADS) so parallel cells share."""
    # the same interpreter (venv) as ours; the scripts found next to this file, whatever the cwd
    script = str(Path(__file__).resolve().parent / cell.cmd[1])
    cmd = [sys.executable, "-c", LAUNCH, str(os.getpid()), script, *cell.cmd[2:]]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads > 0 else None
    with open(log_path, "a") as log:
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode

def exit_on_signals():
    """Ctrl-C or SIGTERM ends the grid at once: its exit takes the children with it (LAUNCH),
    where the thread pool would wait for them to finish. Files are written atomically."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda n, frame: os._exit(128 + n))

def fingerprint(cell):
    """Which run a finished cell is: the hash of its result.json (None if unfinished)."""
    path = Path(cell.out_dir) / "result.json"
    return hashlib.sha1(path.read_bytes()).hexdigest() if path.exists() else None

def _made_from(cell) -> dict:  # {dependency: its fingerprint} as the cell started (deps.json)
    path = Path(cell.out_dir) / "deps.json"
    return json.loads(path.read_text()) if path.exists() else {}

def plan(cells, say=print) -> set:
    """The ids of the cells to run. A finished cell is reused only if each dependency is still
    the run it was made from; otherwise it runs again, with its dependants. A pre-training cell
    whose checkpoint is gone (results/ is committed without .pt files) runs again only if a
    dependant must run, and then every dependant runs again too: no table mixes two runs."""
    prints, made = {c.id: fingerprint(c) for c in cells}, {c.id: _made_from(c) for c in cells}
    run = {cid for cid, p in prints.items() if p is None}
    while True:
        again = {}
        for c in (c for c in cells if c.id not in run):
            stale = [d for d in c.deps if d in run or made[c.id].get(d) != prints[d]]
            if stale:
                again[c.id] = f"{', '.join(stale)} is not the run it was made from"
            elif c.kind == "pretrain" and not (Path(c.out_dir) / "ckpt_best.pt").exists() and \
                    any(c.id in o.deps and o.id in run for o in cells):
                again[c.id] = "a dependant must run and the checkpoint is gone"
        if not again:
            return run
        for cid, why in again.items():
            say(f"re-running {cid}: {why}")
        run |= set(again)

def _prepare(cell, cells, say):
    """The cell's folder for a start: a killed attempt of the same command with the same
    dependencies resumes from its ckpt_last.pt; anything else starts afresh. The cell to run."""
    by_id = {c.id: c for c in cells}
    folder, deps = Path(cell.out_dir), {d: fingerprint(by_id[d]) for d in cell.deps}
    cmd = folder / "cmd.txt"
    if (folder / "ckpt_last.pt").exists() and cmd.exists() and cmd.read_text() == " ".join(
            cell.cmd) and _made_from(cell) == deps and fingerprint(cell) is None:
        say(f"resuming {cell.id} from its last checkpoint")
        return replace(cell, cmd=cell.cmd[:2] + ["--init=resume", f"--out_dir={cell.out_dir}"])
    shutil.rmtree(folder, ignore_errors=True)
    config.atomic_write(str(cmd), " ".join(cell.cmd))
    config.write_json(str(folder / "deps.json"), deps)
    return cell

def _fmt(s):  # seconds -> h:mm:ss
    return f"{int(s) // 3600}:{int(s) // 60 % 60:02d}:{int(s) % 60:02d}"

def _eta(cells, durations, jobs=1):
    """Time left = sum over cells of the mean duration of finished cells of the same kind (task),
    shared by `jobs` parallel workers (each duration was measured with as many cells beside it)."""
    total, untimed = 0.0, 0
    for c in cells:  # a task never timed yet borrows the mean of its kind (all fine-tuning cells)
        same = durations.get(c.meta["eta_kind"]) or [d for k, v in durations.items()
                                                     if k.split(":")[0] == c.kind for d in v]
        total, untimed = (total + statistics.mean(same), untimed) if same else (total, untimed + 1)
    return _fmt(total / jobs) + (f" + {untimed} untimed cells" if untimed else "")

def _failure(cell, fut):  # None when the cell wrote its result.json (whatever the exit code said)
    e = fut.exception()  # a broken runner is reported like a failing child
    rc = f"runner raised {e!r}" if e else fut.result()
    log = Path(cell.out_dir) / "stdout.log"  # the folder stays for inspection; the next run retries
    tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.exists() else ""
    return None if read_result(cell) else f"exit code {rc}, no result.json; log tail:\n{tail}"

def _record(c, error=None, wall_s=None):  # a cell in results.json; one finished earlier: its wall_s
    res = read_result(c)
    return dict(id=c.id, kind=c.kind, meta=c.meta, cmd=c.cmd, result=res, error=error,
                wall_s=(res or {}).get("wall_s") if wall_s is None else wall_s)

def run_cells(cells, runner=subprocess_runner, fail_fast=False, log_file=None, jobs=1):
    """Run every unfinished cell, up to `jobs` at a time, in grid order as dependencies allow (a
    cell starts once they have finished); returns one record per cell (result, error, wall_s)."""
    pos = {c.id: i for i, c in enumerate(cells)}
    for c in cells:  # the grid must list each dependency before its users
        if any(pos.get(d, len(cells)) > pos[c.id] for d in c.deps):
            raise ValueError(f"cell {c.id} depends on {c.deps}: one is missing or comes after it")

    def say(msg):  # to the terminal, and to run.log for the record
        print(msg, flush=True)
        if log_file:
            with open(log_file, "a") as f:
                f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + msg + "\n")
    to_run, durations, errors, walls = plan(cells, say), {}, {}, {}
    done = {c.id: None if c.id in to_run else read_result(c) for c in cells}
    for c in [c for c in cells if isinstance((done[c.id] or {}).get("wall_s"), (int, float))]:
        durations.setdefault(c.meta["eta_kind"], []).append(done[c.id]["wall_s"])  # seeds the ETA
    pending = [c for c in cells if done[c.id] is None]  # resuming = skipping every finished cell
    t0, running, stop = time.time(), {}, False  # running: future -> (cell, start time)
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            busy = {c.id for c in pending} | {c.id for c, _ in running.values()}
            for cell in [c for c in pending if not any(d in busy for d in c.deps)]:
                if stop or len(running) >= jobs:
                    break
                pending.remove(cell)
                if any(read_result(cells[pos[d]]) is None for d in cell.deps):  # failed: pointless
                    errors[cell.id] = f"skipped: a dependency of {cell.deps} has no result.json"
                    continue
                eta = _eta(pending + [c for c, _ in running.values()], durations, jobs)
                say(f"[{len(cells) - len(pending) - len(running) - 1}/{len(cells)} done] running "
                    f"{cell.id} | elapsed {_fmt(time.time() - t0)} | left ~{eta}")
                fut = pool.submit(runner, _prepare(cell, cells, say),
                                  Path(cell.out_dir) / "stdout.log")
                running[fut] = (cell, time.time())
            if not running:  # everything left is skipped, or --fail_fast stopped the run
                break
            for fut in wait(list(running), return_when=FIRST_COMPLETED)[0]:
                cell, t_start = running.pop(fut)
                walls[cell.id], err = time.time() - t_start, _failure(cell, fut)
                if err is None:
                    durations.setdefault(cell.meta["eta_kind"], []).append(walls[cell.id])
                    say(f"finished {cell.id} in {_fmt(walls[cell.id])}")
                else:  # cells already running finish; with fail_fast no new ones start
                    errors[cell.id], stop = err, stop or fail_fast
                    say(f"FAILED {cell.id}: {err}")
    say(f"{len(cells) - len(errors)} of {len(cells)} cells finished, {len(errors)} failed or "
        f"skipped, this invocation took {_fmt(time.time() - t0)}")
    return [_record(c, errors.get(c.id), walls.get(c.id)) for c in cells]

def percent_benefit(method, random, natural, eps=1e-9):
    """100 (method - random) / (natural - random); None when natural ~= random or one is missing."""
    if method is None or random is None or natural is None or abs(natural - random) < eps:
        return None
    return 100.0 * (method - random) / (natural - random)

def _pct(x):  # accuracies may be fractions, shown as % (so a real accuracy <= 1% would be misread)
    return None if x is None else (100.0 * x if abs(x) <= 1.0 else x)

def _mean(xs):  # mean of what is there; None when nothing is, so a partial grid still renders
    xs = [x for x in xs if x is not None]
    return statistics.mean(xs) if xs else None

def summarize(records, metric="score"):
    """Every number of the tables: per method and task the seeds' mean/std, averages, % benefit."""
    pre = {r["meta"]["source"]: r["result"] or {} for r in records if r["kind"] == "pretrain"}
    ft = [r for r in records if r["kind"] == "finetune"]
    tasks, methods = list(dict.fromkeys(r["meta"]["task"] for r in ft)), {}  # both in grid order
    for r in ft:
        m, res, src = r["meta"], r["result"], pre.get(r["meta"]["source"], {})
        const = (src.get("baselines") or {}).get("constant", {})  # did it learn? beat this output
        row = methods.setdefault(m["method"], dict(
            label=m["label"], tables=m["tables"], source=m["source"], runs={t: [] for t in tasks},
            pretrain_acc=_pct(src.get("best_val_token_acc")),
            pretrain_em=_pct(src.get("val_exact_match")),
            pretrain_const=_pct(const.get("token_acc"))))
        if res:  # unfinished or failed cells contribute nothing; "score" may sit in "scores"
            v = res.get(metric, res.get("scores", {}).get(metric))
            v = _pct(v) if metric.endswith("acc") else v
            row["runs"][m["task"]].append((v, res.get("score")))
    for row in methods.values():  # mean ± std over seeds (sample std; 0 for a single seed)
        row["per_task"] = {}
        for t, runs in row.pop("runs").items():
            v = [v for v, _ in runs if v is not None]
            row["per_task"][t] = dict(n=len(v), mean=_mean(v), score_mean=_mean(s for _, s in runs),
                                      std=statistics.stdev(v) if len(v) > 1 else 0.0)
        means = [c["mean"] for c in row["per_task"].values()]
        # an average over a subset of tasks would not compare across rows, so only over all of them
        row["avg"] = statistics.mean(means) if means and None not in means else None

    def ref(t):  # [random, natural] on task t (their averages for t=None); None if not run (yet)
        return [None if k not in methods else methods[k]["per_task"][t]["mean"] if t
                else methods[k]["avg"] for k in ("random", "natural")]
    for row in methods.values():
        for t, c in row["per_task"].items():  # n/a: it ran, but natural == random
            c["pct"] = percent_benefit(c["mean"], *ref(t))
            c["na"] = c["pct"] is None and None not in [c["mean"], *ref(t)]
        pcts = [c["pct"] for c in row["per_task"].values()]
        # headline: the mean of the per-task percentages (the paper's presumed form), n/a left out
        row.update(pct=_mean(pcts), pct_n_tasks=sum(p is not None for p in pcts),
                   pct_of_avg=percent_benefit(row["avg"], *ref(None)))
    notes = [n for t in tasks if None not in ref(t) for n in _notes(t, methods)]
    return dict(metric=metric, tasks=tasks, methods=methods, notes=notes,
                errors=[dict(id=r["id"], error=r["error"]) for r in records if r.get("error")],
                tables=sorted({t for m in methods.values() for t in m["tables"]}))

def _notes(t, methods):  # where the denominator natural - random of task t misbehaves, in words
    rc, nc = methods["random"]["per_task"][t], methods["natural"]["per_task"][t]
    d, spread = nc["mean"] - rc["mean"], rc["std"] + nc["std"]  # stds known with 2+ seeds of each
    if abs(d) < 1e-9:
        return [f"{t}: natural == random, so its % of benefit is n/a (division by ~0)"]
    notes = [f"{t}: natural scores below random; its % of benefit has the opposite sign"] * (d < 0)
    if rc["n"] > 1 and nc["n"] > 1 and abs(d) < spread:
        notes.append(f"{t}: natural - random = {d:+.2f} is within the seeds' spread (std "
                     f"{rc['std']:.2f} + {nc['std']:.2f}), so its % of benefit is dominated by "
                     "noise; compare points")
    return notes

def _f(x, nd=1):  # a number for a table cell, a dash for "not run (yet)", no "-0" for a tiny minus
    return "–" if x is None else f"{x:.{nd}f}".lstrip("-") if round(x, nd) == 0 else f"{x:.{nd}f}"

def _md(header, rows):  # a GitHub-markdown table
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])

TITLES = {1: "Table 1: pre-training sources (Experiments 1 and 2)", 2: "Table 2: initialising from "
          "parameter statistics of a synthetic checkpoint (Experiment 3)",
          3: "Table 3: constant pre-attention layer norm"}
INTRO = ("Metric `{}` (x100 for accuracies), mean ± std over the finished seeds (up to {}). % of "
         "benefit = 100 (method - random) / (natural - random) per task; the **headline `% "
         "benefit` is the mean of the per-task percentages** (the paper's presumed form); `% of "
         "avg` applies the formula to the task averages instead. `pre-train acc` = the source's "
         "held-out token accuracy / exact match / token accuracy of a constant output (the bar a "
         "source must clear to have learned anything).")

def _row(k, m, n):  # a method's row of a table's main part, over n tasks
    part = f" ({m['pct_n_tasks']}/{n} tasks)" if 0 < m["pct_n_tasks"] < n else ""
    pre = " / ".join(_f(m[f"pretrain_{s}"]) for s in ("acc", "em", "const"))
    return [m["label"], "–" if m["pretrain_acc"] is None else pre,
            *[_f(c["mean"]) + f" ± {c['std']:.1f}" * (c["n"] > 1) for c in m["per_task"].values()],
            _f(m["avg"]), _f(m["pct"], 0) + "%" * (m["pct"] is not None) + part,
            _f(m["pct_of_avg"], 0), PUBLISHED.get(k, "")]

def render_tables(summary):
    """{"table1.md": markdown, ...} for every table in the summary."""
    tasks, out = summary["tasks"], {}
    for tab in summary["tables"]:
        rows = [(k, m) for k, m in summary["methods"].items() if tab in m["tables"]]  # refs too
        n_seeds = max([c["n"] for _, m in rows for c in m["per_task"].values()] or [0])
        per_task = lambda fn: _md(["method", *tasks], [
            [m["label"], *map(fn, m["per_task"].values())] for _, m in rows])
        head = ["method", "pre-train acc / EM / const", *tasks, "avg", "% benefit", "% of avg",
                "paper"]
        text = [f"# {TITLES[tab]}", "", INTRO.format(summary["metric"], n_seeds), "",
                _md(head, [_row(k, m, len(tasks)) for k, m in rows]), "", "Per-task % of benefit:",
                "", per_task(lambda c: "n/a" if c["na"] else _f(c["pct"], 0))]
        if summary["metric"] != "score":  # the task's own test metric, beside the one behind the %
            text += ["", "Test score (`score`: the task's main metric at the best-validation "
                     "step):", "", per_task(lambda c: _f(c["score_mean"]))]
        if tab == 2:
            best = max([m for k, m in rows if k.startswith("stats-") and m["pct"] is not None],
                       key=lambda m: m["pct"], default=None)
            here = f"{best['label']} {_f(best['pct'], 0)}%" if best else "n/a"
            text += ["", "Paper: parameter statistics (best scheme) reach "
                     f"{PUBLISHED_STATS_BEST} of the benefit; here the best is {here}."]
        text += [""] + [f"Note: {n}" for n in summary["notes"]]  # n/a and sign flips, in words
        text += [f"Failed/skipped: {e['id']}" for e in summary["errors"]]
        out[f"table{tab}.md"] = "\n".join(text).rstrip() + "\n"
    return out

def render_svg(summary):
    """A horizontal bar chart of the headline % of benefit per method; black ticks: the paper's."""
    rows = list(summary["methods"].items())
    vals = [m["pct"] for _, m in rows if m["pct"] is not None]
    lo, hi = max(-200.0, min([0.0] + vals)), min(300.0, max([100.0] + vals))  # clip outliers
    x = lambda v: 260 + (min(max(v, lo), hi) - lo) / (hi - lo) * 430
    end = 40 + 22 * len(rows)  # 22 pixels a row, below a 40-pixel header
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="760" height="{end + 50}" '
         'font-family="sans-serif" font-size="12">', '<text x="260" y="20" font-weight="bold">% of '
         f'natural pre-training benefit ({escape(summary["metric"])}, mean over '
         f'{len(summary["tasks"])} tasks)</text>']
    s += [f'<line x1="{x(v):.1f}" y1="35" x2="{x(v):.1f}" y2="{end}" stroke="#999" stroke-dasharray'
          f'="4 3"/><text x="{x(v):.1f}" y="32" text-anchor="middle">{v}%</text>' for v in (0, 100)]
    for y, (k, m) in zip(range(40, end, 22), rows):
        p, ref = m["pct"], k in ("random", "natural")
        x0, x1 = sorted((x(0), x(p or 0)))  # bars grow from 0 either way; n/a is empty
        tx, anchor = (x1 + 4, "start") if (p or 0) >= 0 else (x0 - 4, "end")  # label past the bar
        fill = "#888" if ref else ["#4c72b0", "#dd8452", "#55a868"][min(m["tables"]) - 1]
        s.append(f'<text x="254" y="{y + 15}" text-anchor="end">{escape(m["label"])}</text><rect '
                 f'class="bar" x="{x0:.1f}" y="{y + 4}" width="{x1 - x0:.1f}" height="14" fill='
                 f'"{fill}"/><text x="{tx:.1f}" y="{y + 15}" text-anchor="{anchor}">'
                 f'{"n/a" if p is None else _f(p, 0) + "%"}</text>')
        if k in PUBLISHED and not ref:  # the paper's figure
            px = x(float(PUBLISHED[k][:-1]))
            s.append(f'<line class="paper" x1="{px:.1f}" y1="{y + 1}" x2="{px:.1f}" y2="{y + 21}" '
                     'stroke="black" stroke-width="3"/>')
    s.append(f'<text x="260" y="{end + 30}">black ticks: paper (LIME 67%, Set 65%); paper\'s best '
             f'parameter-statistics scheme: {PUBLISHED_STATS_BEST}</text></svg>')
    return "\n".join(s) + "\n"

def main(argv):
    cfg = get_config(argv)
    s, cells = SCALES[cfg.scale], build_cells(cfg)
    if cfg.dry_run:  # the grid and its exact commands, e.g. to check settings before a long run
        n_pt = sum(c.kind == "pretrain" for c in cells)
        print("\n".join(f"{c.id:<45} {' '.join(c.cmd)}" for c in cells))
        print(f"{len(cells)} cells: {n_pt} pre-training, {len(cells) - n_pt} fine-tuning -> "
              f"{cfg.out}")
        return 0
    if cfg.report_only:  # the tables again from results.json alone: no cell folder is read
        if not os.path.exists(path := os.path.join(cfg.out, "results.json")):
            raise config.UserError(f"--report_only: {path} does not exist (run the grid first)")
        with open(path) as f:
            saved = json.load(f)
        summary = summarize(saved["records"], saved["settings"]["metric"])
    else:
        check_inputs(cfg)  # before any cell, not once per failing cell
        if s["tokenizer"]:  # made once here, not by two cells racing to train it
            get_tokenizer(cfg.data_dir, s["tokenizer"]["size"], s["tokenizer"]["path"],
                          natural_only=True)
        os.makedirs(cfg.out, exist_ok=True)
        exit_on_signals()
        threads = max(1, (os.cpu_count() or 1) // cfg.jobs) if cfg.jobs > 1 else 0  # 0: its own
        records = run_cells(cells, lambda c, log: subprocess_runner(c, log, threads),
                            cfg.fail_fast, os.path.join(cfg.out, "run.log"), cfg.jobs)
        summary = summarize(records, s["metric"])
        # results.json holds every number: summary, settings and each cell's full result.json
        config.write_json(os.path.join(cfg.out, "results.json"), dict(
            summary, scale=cfg.scale, settings=s, args=asdict(cfg), records=records))
    for name, text in {**render_tables(summary), "benefit.svg": render_svg(summary)}.items():
        config.atomic_write(os.path.join(cfg.out, name), text)
    print(f"wrote tables, benefit.svg{'' if cfg.report_only else ' and results.json'} to {cfg.out}")
    return 1 if summary["errors"] else 0  # non-zero when a cell failed, after writing what finished

if __name__ == "__main__":
    config.main(lambda argv: sys.exit(main(argv)))
