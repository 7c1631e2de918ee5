"""reproduce.py: run the paper's three experiments end to end and write Tables 1-3 (PAPER.md §4-§5).

A grid of cells, each one subprocess through the CONTRACT.md interface:
  * pre-training cells  `python pretrain.py --task=<source> ...`    -> runs/pt-<source>/ckpt_best.pt
  * fine-tuning cells   `python finetune.py --task=<t> --init=... --seed=<s> ...` -> runs/ft-<method>-<t>-s<s>/
Table 1 (+ Experiment 2): random init, natural, LIME, nonsense summary, nesting language, Set, identity
(+ `--extra_tasks=sort,reverse`) x downstream tasks. Table 2: the stats_init schemes from the Set, LIME and
identity checkpoints. Table 3: pre-attention layer norms set to a constant c. Every table also shows the
random and natural rows, because "% of benefit" = 100 (method - random) / (natural - random) (PAPER.md §5).

Run (from the repo root):
  python reproduce.py --scale=cpu                  # all three tables at CPU scale (resumes where it stopped)
  python reproduce.py --scale=cpu --tables=2       # only Table 2 (+ the random / natural baselines it needs)
  python reproduce.py --scale=cpu --jobs=1         # one cell at a time (the CPU scale runs two, one thread each)
  python reproduce.py --scale=cpu --dry_run        # print the cells and their commands, run nothing
  python reproduce.py --scale=cpu --report_only    # rebuild tables from the finished cells, run nothing
  python reproduce.py --scale=paper --t5_dir=ckpts/t5-small --t5_v11_dir=ckpts/t5-v1_1-small
Outputs in --out (default results/<scale>): table1.md, table2.md, table3.md, results.json (every number),
benefit.svg (bar chart), run.log; runs/<cell-id>/ holds each cell's result.json, stdout.log and checkpoints.
A cell is finished iff its result.json exists (the child writes it atomically); a re-run skips finished
cells and wipes a half-written cell dir, so a killed run loses at most the cell in progress.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from xml.sax.saxutils import escape

from tqdm import tqdm

from tokenizer import get_tokenizer

HERE = Path(__file__).resolve().parent
DOWNSTREAM = ["mtop", "webqsp", "squad", "retrosynthesis", "code_translation", "cnndm_10k"]  # PAPER.md §1
# ---------------------------------------------------------------------------------------------- settings
# T5's SentencePiece model was trained on C4 alone, so every downstream token is a piece natural pre-training
# has seen. Likewise here: a BPE of natural_text alone (tokenizer.default_corpus(natural_only=True)); with the
# mixed corpus, 60% of MTOP's target tokens (pieces like "[IN:") never occur in natural_text (counted)
TOKENIZER_CPU = dict(path="cache/bpe8192-natural.json", size=8192, natural_only=True)
SCALES = {
    "cpu": dict(
        # model.py's `tiny` T5 (d_model 128, 2+2 layers, 2.0M parameters with the 8192-id BPE) for every cell, so
        # a checkpoint loads whole. At this size every source learns its task in 2000 steps (pre-training
        # token accuracy is tabled), where the 9.4M-parameter `cpu` T5 of an earlier grid had not learned
        # Set or identity after 1000 (README). Simple-task bodies of 10-24 tokens (pretrain.py's default);
        # natural text and the nesting language in 128-id inputs (max_len is their corrupted input length)
        pretrain_args={"preset": "default", "model": "tiny", "d_model": 0, "num_layers": 0, "min_len": 10,
                       "max_len": 24, "src_len": 128, "tgt_len": 128, "warmup_steps": 500, "eval_interval": 500},
        # per-source overrides of pretrain_args: LIME's 68-id alphabet prefix makes its inputs 74-200 ids long,
        # so 24 fits none (tasks.py raises); at 128 every mode fits often (35-97% of draws, measured)
        source_args={"lime": {"max_len": 128}, "natural": {"max_len": 128}, "nesting_language": {"max_len": 128}},
        # one step budget for every source, natural included, so sources differ only in their data
        pretrain_steps=2000,
        # natural = span corruption on data_dir/natural_text with the same budget (no T5 checkpoint on CPU)
        natural="pretrain",
        # the BPE every cell shares, made before the first cell (tokenizer.get_tokenizer) if missing
        tokenizer=TOKENIZER_CPU,
        # MTOP alone by default: short inputs and structured targets, cheap to train and beam-decode, and its
        # from-scratch score sits clearly between zero and its ceiling at this size (README); add more with
        # --tasks=mtop,webqsp (not measured end to end)
        tasks=["mtop"],
        # finetune.py's CPU preset (a constant 0.01) on the tiny model for 400 steps, evaluated at 200 and 400,
        # 200 test examples per evaluation; batches of similar lengths (--bucket: MTOP's targets under this BPE
        # run 10-200 ids, and padding each batch to its longest cost 1.5x in step time, measured). Why 400 and
        # not 800 (the grid of commit 6a518db, README): at step 400 every Table 1 row's seed std was at most 0.5
        # points and natural led random by 1.6; by step 800 the stds had grown to 0.3-1.4 and natural's lead
        # had shrunk to 0.5, inside them. This budget measures how far a source carries early
        # fine-tuning, not the converged score the paper reports
        finetune_args={"preset": "cpu", "model": "tiny", "max_steps": 400, "eval_interval": 200, "n_test": 200,
                       "bucket": 50},
        # per-task overrides of finetune_args (none yet at this scale)
        task_args={},
        # default --seeds; fine-tuning is repeated per seed, pre-training runs once per source. Two seeds give
        # every row a spread to compare its differences with
        seeds=2,
        # cells at once, one thread each: this small model gains little from a second thread (pretrain.py's
        # threads note), so two one-thread cells do ~twice the work of one two-thread cell on 2 cores
        jobs=2,
        # Table 3 constants; 0.4 is the README default, the ends show the trend (PAPER.md §4)
        ln_values=[0.1, 0.4, 0.8],
        # exact match is coarse for a tiny model, so validation token accuracy drives % of benefit here;
        # the test score ("score") is tabled beside it
        metric="best_val_token_acc",
    ),
    "paper": dict(
        # T5-small and the paper's pre-training recipe (PAPER.md §2)
        pretrain_args={"preset": "paper"},
        # released pretrain.sh: 80k steps for every synthetic source
        pretrain_steps=80000,
        source_args={},  # the paper's lengths (max_len 220) fit every source
        # natural = the off-the-shelf T5 (--t5_dir; --t5_v11_dir for cnndm_10k), PAPER.md §1.1
        natural="hf",
        tokenizer=None,  # T5's own: every cell gets --tokenizer=<t5_dir>/tokenizer.json (build_cells)
        tasks=list(DOWNSTREAM),  # all six (PAPER.md §1)
        finetune_args={"preset": "paper"},  # Adafactor, constant LR, batch sizes of PAPER.md §1.1
        # released finetune.sh step counts per task (PAPER.md §1.1)
        task_args={t: {"max_steps": s} for t, s in [("cnndm_10k", 100000), ("mtop", 100000), ("webqsp", 50000),
                   ("squad", 250000), ("retrosynthesis", 400000), ("code_translation", 150000)]},
        seeds=1,  # the paper fine-tuned each checkpoint once (its std runs are an appendix study)
        jobs=1,  # one cell owns the GPU (or the whole machine)
        # the internal sweep pre_attn_ln_value_sweep (PAPER.md §4)
        ln_values=[0.05, 0.1, 0.2, 0.4, 0.6, 0.8],
        # the task's main metric (EM, ROUGE-1 for cnndm) at the best-val-token-acc step (PAPER.md §1.2)
        metric="score",
    ),
}
TABLE1_SOURCES = ["lime", "nonsense_summary", "nesting_language", "set", "identity"]
STATS_SOURCES = ["set", "lime", "identity"]  # the checkpoints Table 2 takes statistics from (PAPER.md §4)
STATS_SCHEMES = ["per_param_mean_sd", "per_param_scale", "whole_model_scale", "preattn_ln_per_param_scale"]
LABELS = {"random": "Random init", "lime": "LIME", "nonsense_summary": "Nonsense summary", "set": "Set",
          "nesting_language": "Nesting language", "identity": "Identity", "per_param_mean_sd": "Per Param Mean/SD",
          "per_param_scale": "Per Param Scale", "whole_model_scale": "Whole Model Scale",
          "preattn_ln_per_param_scale": "Pre-attn LN Per Param Scale"}
# the only numbers the paper text gave us (PAPER.md §5), averaged over its six tasks
PAPER_HEADLINE = {"random": "0%", "natural": "100%", "lime": "67%", "set": "65%"}
PAPER_STATS_BEST = "39%"  # the best init scheme of Experiment 3; which scheme it was is not known


@dataclass
class Cell:
    id: str            # folder name under runs/, unique
    kind: str          # "pretrain" | "finetune"
    cmd: list          # ["python", "<script>.py", "--k=v", ...]; the runner swaps in sys.executable
    out_dir: str       # runs/<id>; finished iff out_dir/result.json exists
    deps: list = field(default_factory=list)  # ids of cells that must finish first
    meta: dict = field(default_factory=dict)  # method, label, tables, task, seed, source, eta_kind


def parse_args(argv=None):  # argparse: this is a driver, not a training config (no TrainConfig here)
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--scale", default="cpu", choices=list(SCALES), help="a settings block of SCALES")
    p.add_argument("--tasks", default=None, help="comma list of downstream tasks (default: the scale's)")
    p.add_argument("--seeds", type=int, default=None, help="fine-tuning seeds per cell (default: the scale's)")
    p.add_argument("--tables", default="1,2,3", help="which tables to run, e.g. 1,3")
    p.add_argument("--extra_tasks", default="", help="extra simple tasks as Table 1 sources, e.g. sort,reverse")
    p.add_argument("--ln_values", default=None, help="Table 3 constants c, e.g. 0.05,0.4 (default: the scale's)")
    p.add_argument("--data_dir", default=os.environ.get("DATA_DIR", os.path.relpath(HERE.parent / "shared" / "data")),
                   help="downstream data + natural_text (default $DATA_DIR, else ../shared/data)")
    p.add_argument("--out", default=None, help="output folder (default results/<scale>)")
    p.add_argument("--t5_dir", default=None, help="paper scale: HF folder of the off-the-shelf T5-small")
    p.add_argument("--t5_v11_dir", default=None, help="paper scale: HF folder of T5 v1.1-small (cnndm_10k)")
    p.add_argument("--dry_run", action="store_true", help="print cells and commands, run nothing")
    p.add_argument("--report_only", action="store_true", help="only rebuild tables from finished cells")
    p.add_argument("--jobs", type=int, default=None,
                   help="cells run at once, each child with cores/jobs threads (default: the scale's)")
    p.add_argument("--fail_fast", action="store_true", help="stop at the first failing cell")  # default: go on
    a = p.parse_args(argv)
    a.out = a.out or os.path.join("results", a.scale)
    return a


# ------------------------------------------------------------------------------------------------- grid
def _kv(d):  # a scale's settings dict -> the children's `--key=value` flags (CONTRACT.md)
    return [f"--{k}={v}" for k, v in d.items()]


def build_cells(cfg, args):
    """The grid for the requested tables, in a runnable order (every cell after its dependencies)."""
    tasks = args.tasks.split(",") if args.tasks else list(cfg["tasks"])  # columns of every table
    bad = [t for t in tasks if t not in DOWNSTREAM]  # catch typos here, not an hour into the run
    if bad:
        raise ValueError(f"unknown downstream task(s) {bad}; choose from {DOWNSTREAM}")
    tables = sorted({t.strip() for t in str(args.tables).split(",") if t.strip()})
    if not tables or not set(tables) <= {"1", "2", "3"}:
        raise ValueError(f"--tables must be a comma list of 1, 2, 3, got {args.tables!r}")
    tables = [int(t) for t in tables]
    seeds = range(args.seeds if args.seeds is not None else cfg["seeds"])  # fine-tuning seeds 0..N-1
    if len(seeds) < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    lns = [float(c) for c in args.ln_values.split(",")] if args.ln_values else cfg["ln_values"]
    runs = os.path.join(args.out, "runs")  # one folder per cell; its name is the cell id
    tok = (cfg["tokenizer"] or {}).get("path") or (args.t5_dir and os.path.join(args.t5_dir, "tokenizer.json"))
    tok_arg = [f"--tokenizer={tok}"] if tok else []  # one tokenizer for every cell, so checkpoints fit
    cells, pt_ids = [], set()  # cells in run order; ids of pre-training cells already placed

    def pretrain(source):  # one pre-training cell per source, shared by every table that needs it
        cid = f"pt-{source}"
        if cid not in pt_ids:  # Set/LIME/identity serve Tables 1 and 2 from one checkpoint
            pt_ids.add(cid)
            out = os.path.join(runs, cid)
            # seed 0 for every source: --seeds repeats fine-tuning, not pre-training (PAPER.md §6 has both)
            cmd = ["python", "pretrain.py", f"--task={source}", f"--out_dir={out}",
                   f"--max_steps={cfg['pretrain_steps']}", "--seed=0", f"--data_dir={args.data_dir}", *tok_arg]
            extra = {**cfg["pretrain_args"], **cfg["source_args"].get(source, {})}  # per-source wins
            cells.append(Cell(cid, "pretrain", cmd + _kv(extra), out,
                              meta=dict(source=source, eta_kind="pretrain")))
        # the best-validation checkpoint, the paper's "max val accuracy" rule (PAPER.md §2)
        return cid, os.path.join(runs, cid, "ckpt_best.pt")

    def finetune(method, label, tabs, init_for_task, deps=(), source=None):  # one row: tasks x seeds
        for seed in seeds:  # seed-major, so a whole row exists before its repeats
            for task in tasks:
                cid, out = f"ft-{method}-{task}-s{seed}", os.path.join(runs, f"ft-{method}-{task}-s{seed}")
                cmd = ["python", "finetune.py", f"--task={task}", f"--data_dir={args.data_dir}",
                       f"--init={init_for_task(task)}", f"--out_dir={out}", f"--seed={seed}", *tok_arg]
                extra = {**cfg["finetune_args"], **cfg["task_args"].get(task, {})}  # per-task wins
                cells.append(Cell(cid, "finetune", cmd + _kv(extra), out, list(deps),
                                  dict(method=method, label=label, tables=tabs, task=task, seed=seed,
                                       source=source, eta_kind=f"finetune:{task}")))

    # the two reference rows of every table come first, so partial results already give percentages
    finetune("random", LABELS["random"], tables, lambda t: "scratch")
    if cfg["natural"] == "pretrain":
        pid, ckpt = pretrain("natural")
        finetune("natural", "Natural (span corruption, same steps)", tables, lambda t: ckpt, [pid], "natural")
    else:  # off-the-shelf T5; v1.1 for cnndm_10k as the paper did (PAPER.md §1.1)
        dirs = {"t5_dir": args.t5_dir, "t5_v11_dir": args.t5_v11_dir}
        need = ["t5_dir"] + (["t5_v11_dir"] if "cnndm_10k" in tasks else [])
        for k in need:  # a dry run may show the grid before the checkpoints are downloaded
            if not dirs[k] and not args.dry_run:
                raise ValueError(f"--scale={args.scale} fine-tunes an off-the-shelf T5 as 'natural': pass --{k}=DIR")
        key = lambda t: "t5_v11_dir" if t == "cnndm_10k" else "t5_dir"
        hf = lambda t: "hf:" + (dirs[key(t)] or f"<{key(t).upper()}>")
        finetune("natural", "Natural (off-the-shelf T5" + ("; v1.1 on cnndm_10k)" if len(need) > 1 else ")"),
                 tables, hf)
    if 1 in tables:  # Table 1 and Experiment 2: fine-tune the whole pre-trained checkpoint
        # Experiment 2: any of the 18 simple tasks as one more source (tasks.py names them)
        extra = [t for t in args.extra_tasks.split(",") if t and t not in TABLE1_SOURCES]
        for src in TABLE1_SOURCES + extra:
            pid, ckpt = pretrain(src)
            finetune(src, LABELS.get(src, src), [1], lambda t, c=ckpt: c, [pid], src)  # c=: bind now
    if 2 in tables:  # Table 2: only per-group statistics of the checkpoint are transferred
        for src in STATS_SOURCES:
            pid, ckpt = pretrain(src)
            for sch in STATS_SCHEMES:
                finetune(f"stats-{sch}-{src}", f"{LABELS[sch]} (from {LABELS[src]})", [2],
                         lambda t, s=sch, c=ckpt: f"stats:{s}:{c}", [pid], src)
    if 3 in tables:  # Table 3: no checkpoint at all, pre-attention LN scales = c
        for c in lns:
            finetune(f"ln{c:g}", f"Pre-attn LN = {c:g}", [3], lambda t, c=c: f"preattn_ln:{c:g}")  # 0.4 -> ln0.4
    return cells


# -------------------------------------------------------------------------------------------------- run
def read_result(cell):  # the only "finished" signal: the child writes result.json last, atomically
    path = Path(cell.out_dir) / "result.json"
    # a pre-training cell also needs its checkpoint: results/ is committed without the .pt files, so a
    # fresh checkout re-runs the (seeded, deterministic) pre-training that its unfinished cells need
    if cell.kind == "pretrain" and not (Path(cell.out_dir) / "ckpt_best.pt").exists():
        return None
    return json.loads(path.read_text()) if path.exists() else None


def subprocess_runner(cell, log_path, threads=0):
    """Run one cell's command, all of its output into log_path; returns the exit code. threads > 0 caps the
    child's CPU threads (OMP_NUM_THREADS, which torch reads at start) so parallel cells share the cores."""
    # same interpreter (venv) as ours, scripts found next to this file whatever the working directory
    cmd = [sys.executable, str(HERE / cell.cmd[1]), *cell.cmd[2:]] if cell.cmd[0] == "python" else cell.cmd
    env = dict(os.environ, OMP_NUM_THREADS=str(threads)) if threads > 0 else None
    with open(log_path, "w") as log:  # the terminal keeps only the progress view
        return subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env).returncode


def _fmt(s):  # seconds -> h:mm:ss
    return str(timedelta(seconds=int(s)))


def _eta(cells, durations, jobs=1):
    """Time left = sum over cells of the mean duration of finished cells of the same kind (same task), shared
    by `jobs` parallel workers (a cell's duration was measured with as many cells beside it)."""
    total, untimed = 0.0, 0
    for c in cells:  # a task never timed yet borrows the mean of its kind (all fine-tuning cells)
        same = durations.get(c.meta["eta_kind"]) or [d for k, v in durations.items()
                                                     if k.split(":")[0] == c.kind for d in v]
        total, untimed = (total + statistics.mean(same), untimed) if same else (total, untimed + 1)
    return _fmt(total / jobs) + (f" + {untimed} untimed cells" if untimed else "")


def run_cells(cells, runner=subprocess_runner, fail_fast=False, log_file=None, jobs=1):
    """Run every unfinished cell, up to `jobs` at a time, in grid order as dependencies allow; returns one
    record per cell (status, result, error, wall_s)."""
    by_id = {c.id: c for c in cells}
    for i, c in enumerate(cells):  # the grid must list each dependency before its users
        late = [d for d in c.deps if d not in by_id or cells.index(by_id[d]) > i]
        if late:
            raise ValueError(f"cell {c.id} depends on {late}, which is missing or comes after it")

    def say(msg):  # to the terminal above the bar, and to run.log for the record
        tqdm.write(msg)
        if log_file:
            with open(log_file, "a") as f:
                f.write(time.strftime("%Y-%m-%d %H:%M:%S ") + msg + "\n")
    durations, errors, walls = {}, {}, {}  # seconds per eta_kind; id -> message; id -> seconds
    for c in cells:  # cells finished earlier seed the time estimate with their own wall_s
        r = read_result(c)
        if r and isinstance(r.get("wall_s"), (int, float)):
            durations.setdefault(c.meta["eta_kind"], []).append(r["wall_s"])
    todo = [c for c in cells if read_result(c) is None]  # resuming = skipping every finished cell
    stale = [c.id for c in cells if c.id not in {t.id for t in todo} and (Path(c.out_dir) / "cmd.txt").exists()
             and (Path(c.out_dir) / "cmd.txt").read_text() != " ".join(c.cmd)]
    if stale:  # settings changed since these finished; rerunning silently could waste hours, so ask
        say(f"WARNING: {len(stale)} finished cells ran with other settings; delete their folders to redo "
            f"them: {stale[:5]}{' ...' if len(stale) > 5 else ''}")
    t0 = time.time()
    bar = tqdm(total=len(cells), initial=len(cells) - len(todo), unit="cell", dynamic_ncols=True,
               bar_format="{desc} {bar} {n}/{total} cells [{elapsed}] {postfix}")
    pending, running, stop = list(todo), {}, False  # running: future -> (cell, start time)

    def start(pool, cell):
        out = Path(cell.out_dir)
        if out.exists():  # no result.json: a killed or failed earlier attempt, start it afresh
            shutil.rmtree(out)
        out.mkdir(parents=True)
        (out / "cmd.txt").write_text(" ".join(cell.cmd))  # what produced this result, for the stale check
        eta = _eta(pending + [c for c, _ in running.values()], durations, jobs)  # tqdm's would mix min and h
        say(f"[{bar.n}/{len(cells)} done] running {cell.id} | elapsed {_fmt(time.time() - t0)} | left ~{eta}")
        running[pool.submit(runner, cell, out / "stdout.log")] = (cell, time.time())
        bar.set_description(", ".join(c.id for c, _ in running.values()))
        bar.set_postfix_str(f"left ~{eta}")

    # up to `jobs` cells at once (each child should then use cores/jobs threads); a cell starts once all of
    # its dependencies have finished, so fine-tuning from scratch can run beside a pre-training cell
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        while pending or running:
            busy = {c.id for c in pending} | {c.id for c, _ in running.values()}
            for cell in list(pending):
                if stop or len(running) >= jobs:
                    break
                if any(d in busy for d in cell.deps):  # a dependency is still to come: try later cells
                    continue
                pending.remove(cell)
                bad = [d for d in cell.deps if read_result(by_id[d]) is None]
                if bad:  # a failed pre-training makes its fine-tuning cells pointless
                    errors[cell.id] = f"skipped: dependency {bad} has no result.json"
                    bar.update(1)
                    continue
                start(pool, cell)
            if not running:  # everything left is skipped, or --fail_fast stopped the run
                break
            done, _ = wait(list(running), return_when=FIRST_COMPLETED)
            for fut in done:
                cell, t_start = running.pop(fut)
                try:
                    rc = fut.result()
                except Exception as e:  # a broken runner is reported like a failing child
                    rc = f"runner raised {e!r}"
                walls[cell.id] = time.time() - t_start
                if read_result(cell) is not None:  # success is result.json, whatever the exit code said
                    durations.setdefault(cell.meta["eta_kind"], []).append(walls[cell.id])
                    say(f"finished {cell.id} in {_fmt(walls[cell.id])}")
                else:
                    log = Path(cell.out_dir) / "stdout.log"
                    tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.exists() else ""
                    # the folder stays for inspection; the next run wipes and retries it
                    errors[cell.id] = f"exit code {rc}, no result.json; log tail:\n{tail}"
                    say(f"FAILED {cell.id}: {errors[cell.id]}")
                    stop = stop or fail_fast  # cells already running finish; no new ones start
                bar.update(1)  # failed cells count as visited, so the bar still ends at the total
    bar.close()
    say(f"{len(cells) - len(errors)} of {len(cells)} cells finished, {len(errors)} failed or skipped, "
        f"this invocation took {_fmt(time.time() - t0)}")
    return [dict(id=c.id, kind=c.kind, meta=c.meta, cmd=c.cmd, result=read_result(c), error=errors.get(c.id),
                 wall_s=walls.get(c.id)) for c in cells]


# ---------------------------------------------------------------------------------------------- numbers
def percent_benefit(method, random, natural, eps=1e-9):
    """100 (method - random) / (natural - random) (PAPER.md §5); None when natural ~= random."""
    if method is None or random is None or natural is None or abs(natural - random) < eps:
        return None
    return 100.0 * (method - random) / (natural - random)


def _as_pct(x):
    # accuracies may be written as fractions; shown as % (a real accuracy <= 1% would be misread: n/a here)
    return None if x is None else (100.0 * x if abs(x) <= 1.0 else x)


def _value(result, key):
    """The number `key` from a finetune result.json: top level, else inside "scores"; *acc keys as %."""
    v = result.get(key, result.get("scores", {}).get(key))
    return _as_pct(v) if key.endswith("acc") else v


def _mean(xs):  # mean of what is there; None when nothing is, so a partial grid still renders
    xs = [x for x in xs if x is not None]
    return statistics.mean(xs) if xs else None


def summarize(records, metric="score"):
    """Every number of the tables: per method and task the seeds' mean/std, averages and % of benefit."""
    # pre-training results by source, for the "did the source learn its task" column (issue 7)
    pre = {r["meta"]["source"]: r["result"] for r in records if r["kind"] == "pretrain" and r["result"]}
    methods, tasks, tables = {}, [], set()  # methods keep the grid's order, which is the table's row order
    for r in records:
        if r["kind"] != "finetune":
            continue
        m = r["meta"]
        tasks += [m["task"]] if m["task"] not in tasks else []
        tables |= set(m["tables"])
        src = pre.get(m["source"]) or {}
        row = methods.setdefault(m["method"], dict(
            label=m["label"], tables=m["tables"], source=m["source"], per_task={},
            pretrain_acc=_as_pct(src.get("best_val_token_acc")), pretrain_em=_as_pct(src.get("val_exact_match")),
            # "did it learn?": token accuracy of the best constant output (most common token per position)
            pretrain_const=_as_pct((src.get("baselines") or {}).get("constant", {}).get("token_acc"))))
        cell = row["per_task"].setdefault(m["task"], dict(values=[], scores=[], seeds=[]))
        if r["result"]:  # unfinished or failed cells simply contribute nothing
            cell["values"].append(_value(r["result"], metric))
            cell["scores"].append(r["result"].get("score"))
            cell["seeds"].append(m["seed"])
    for row in methods.values():  # mean ± std over seeds (sample std; 0 for a single seed)
        for t in tasks:
            c = row["per_task"].setdefault(t, dict(values=[], scores=[], seeds=[]))
            vals = [v for v in c["values"] if v is not None]
            c.update(n=len(vals), mean=_mean(vals), std=statistics.stdev(vals) if len(vals) > 1 else 0.0,
                     score_mean=_mean(c["scores"]))
        means = [row["per_task"][t]["mean"] for t in tasks]
        # an average over a subset of tasks would not compare across rows, so only over all of them
        row["avg"] = statistics.mean(means) if None not in means and means else None
    # the reference rows' value for task t (or their average when t is None); None if not run (yet)
    ref = lambda k, t=None: None if k not in methods else (methods[k]["avg"] if t is None
                                                            else methods[k]["per_task"][t]["mean"])
    notes = []
    for t in tasks:  # say where the denominator natural - random misbehaves
        r_, n_ = ref("random", t), ref("natural", t)
        if r_ is None or n_ is None:  # a reference row not run (yet): no denominator to judge
            continue
        if abs(n_ - r_) < 1e-9:
            notes.append(f"{t}: natural == random, so its % of benefit is n/a (division by ~0)")
        elif n_ < r_:
            notes.append(f"{t}: natural scores below random; its % of benefit has the opposite sign")
        rc, nc = methods["random"]["per_task"][t], methods["natural"]["per_task"][t]
        spread = rc["std"] + nc["std"]  # sample stds, known only with 2+ seeds of both rows
        if rc["n"] > 1 and nc["n"] > 1 and 0 < abs(n_ - r_) < spread:
            notes.append(f"{t}: natural - random = {n_ - r_:+.2f} is within the seeds' spread (std {rc['std']:.2f}"
                         f" + {nc['std']:.2f}), so its % of benefit is dominated by noise; compare points")
    for row in methods.values():
        for t in tasks:
            c, r_, n_ = row["per_task"][t], ref("random", t), ref("natural", t)
            c["pct"] = percent_benefit(c["mean"], r_, n_)
            c["na"] = c["pct"] is None and None not in (c["mean"], r_, n_)  # ran, but natural == random
        pcts = [row["per_task"][t]["pct"] for t in tasks]
        # headline: the mean of the per-task percentages, the paper's presumed form (PAPER.md §5);
        # tasks with an n/a percentage are left out of it (see notes)
        row["pct"] = _mean(pcts)
        row["pct_n_tasks"] = sum(p is not None for p in pcts)
        row["pct_of_avg"] = percent_benefit(row["avg"], ref("random"), ref("natural"))
    errors = [dict(id=r["id"], error=r["error"]) for r in records if r.get("error")]  # shown under the tables
    return dict(metric=metric, tasks=tasks, tables=sorted(tables), methods=methods, notes=notes, errors=errors,
                cells=[dict(id=r["id"], done=r["result"] is not None, wall_s=(r["result"] or {}).get("wall_s"))
                       for r in records])


# ---------------------------------------------------------------------------------------------- reports
def _f(x, nd=1):  # a number for a table cell; a dash for "not run (yet)"
    if x is None:
        return "–"
    return f"{x:.{nd}f}".lstrip("-") if round(x, nd) == 0 else f"{x:.{nd}f}"  # no "-0" for a tiny negative


def _ms(c):  # "mean ± std" when several seeds finished
    return _f(c["mean"]) + (f" ± {c['std']:.1f}" if c["n"] > 1 else "")


def _pct_cell(c):  # a per-task % of benefit: n/a when it ran but natural == random, a dash when not run
    return "n/a" if c.get("na") else _f(c["pct"], 0)


def _md(header, rows):  # a GitHub-markdown table
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


TITLES = {1: "Table 1: pre-training sources (Experiments 1 and 2)", 2: "Table 2: initialising from parameter "
          "statistics of a synthetic checkpoint (Experiment 3)", 3: "Table 3: constant pre-attention layer norm"}


def render_tables(summary):
    """{"table1.md": markdown, ...} for every table in the summary."""
    tasks, out = summary["tasks"], {}
    for tab in summary["tables"]:
        rows = [(k, m) for k, m in summary["methods"].items() if tab in m["tables"]]  # random+natural too
        n_seeds = max([c["n"] for _, m in rows for c in m["per_task"].values()] or [0])
        main = [[m["label"], f"{_f(m['pretrain_acc'])} / {_f(m['pretrain_em'])} / {_f(m['pretrain_const'])}"
                 if m["pretrain_acc"] is not None else "–"] + [_ms(m["per_task"][t]) for t in tasks] + [_f(m["avg"]),
                 _f(m["pct"], 0) + ("%" if m["pct"] is not None else "") +
                 (f" ({m['pct_n_tasks']}/{len(tasks)} tasks)" if 0 < m["pct_n_tasks"] < len(tasks) else ""),
                 _f(m["pct_of_avg"], 0), PAPER_HEADLINE.get(k, "")] for k, m in rows]
        text = [f"# {TITLES[tab]}", "",
                f"Metric `{summary['metric']}` (x100 for accuracies), mean ± std over the finished seeds (up to "
                f"{n_seeds}). % of benefit = 100 (method - random) / (natural - random) per task; the **headline "
                "`% benefit` is the mean of the per-task percentages** (PAPER.md §5's presumed form); `% of avg` "
                "applies the formula to the task averages instead. `pre-train acc` = the source's held-out token "
                "accuracy / exact match / token accuracy of a constant output (the bar a source must clear to have "
                "learned anything).", "",
                _md(["method", "pre-train acc / EM / const"] + tasks + ["avg", "% benefit", "% of avg", "paper"], main), "",
                "Per-task % of benefit:", "",
                _md(["method"] + tasks, [[m["label"]] + [_pct_cell(m["per_task"][t]) for t in tasks]
                                         for _, m in rows])]
        if summary["metric"] != "score":  # the task's own test metric, beside the one that drives the %
            text += ["", "Test score (`score`: the task's main metric at the best-validation step):", "",
                     _md(["method"] + tasks, [[m["label"]] + [_f(m["per_task"][t]["score_mean"]) for t in tasks]
                                              for _, m in rows])]
        if tab == 2:
            best = max([m for k, m in rows if k.startswith("stats-") and m["pct"] is not None],
                       key=lambda m: m["pct"], default=None)
            text += ["", f"Paper: parameter statistics (best scheme) reach {PAPER_STATS_BEST} of the benefit; "
                     f"here the best is {best['label'] + ' ' + _f(best['pct'], 0) + '%' if best else 'n/a'}."]
        text += [""] + [f"Note: {n}" for n in summary["notes"]]  # n/a and sign flips, said in words
        text += [f"Failed/skipped: {e['id']}" for e in summary["errors"]]
        out[f"table{tab}.md"] = "\n".join(text).rstrip() + "\n"
    return out


def render_svg(summary):
    """A horizontal bar chart of the headline % of benefit, one bar per method, paper figures as marks."""
    rows = list(summary["methods"].items())
    vals = [m["pct"] for _, m in rows if m["pct"] is not None]
    lo, hi = max(-200.0, min([0.0] + vals)), min(300.0, max([100.0] + vals))  # clip outliers to stay legible
    W, L, R, H, top = 760, 260, 70, 22, 40  # width, label column, right margin, row height, header
    x = lambda v: L + (min(max(v, lo), hi) - lo) / (hi - lo) * (W - L - R)
    colors = {1: "#4c72b0", 2: "#dd8452", 3: "#55a868"}  # one colour per table, grey for the references
    s = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{top + H * len(rows) + 50}" '
         f'font-family="sans-serif" font-size="12">',
         f'<text x="{L}" y="20" font-weight="bold">% of natural pre-training benefit ({escape(summary["metric"])}, '
         f'mean over {len(summary["tasks"])} tasks)</text>']
    for v in (0, 100):  # reference lines: random init and natural pre-training
        s.append(f'<line x1="{x(v):.1f}" y1="{top - 5}" x2="{x(v):.1f}" y2="{top + H * len(rows)}" stroke="#999" '
                 f'stroke-dasharray="4 3"/><text x="{x(v):.1f}" y="{top - 8}" text-anchor="middle">{v}%</text>')
    for i, (k, m) in enumerate(rows):
        y, p = top + i * H, m["pct"]
        x0, x1 = sorted((x(0), x(p if p is not None else 0)))  # bars grow from 0 either way; n/a is empty
        tx, anchor = (x1 + 4, "start") if (p or 0) >= 0 else (x0 - 4, "end")  # value label beyond the bar end
        fill = "#888" if k in ("random", "natural") else colors[min(m["tables"])]
        s.append(f'<text x="{L - 6}" y="{y + 15}" text-anchor="end">{escape(m["label"])}</text>'
                 f'<rect class="bar" x="{x0:.1f}" y="{y + 4}" width="{x1 - x0:.1f}" height="{H - 8}" fill="{fill}"/>'
                 f'<text x="{tx:.1f}" y="{y + 15}" text-anchor="{anchor}">{_f(p, 0) + "%" if p is not None else "n/a"}'
                 '</text>')
        if k in PAPER_HEADLINE and k not in ("random", "natural"):  # the paper's number as a black tick
            px = x(float(PAPER_HEADLINE[k].rstrip("%")))
            s.append(f'<line class="paper" x1="{px:.1f}" y1="{y + 1}" x2="{px:.1f}" y2="{y + H - 1}" '
                     f'stroke="black" stroke-width="3"/>')
    s.append(f'<text x="{L}" y="{top + H * len(rows) + 30}">black ticks: paper (LIME 67%, Set 65%); paper\'s '
             f'best parameter-statistics scheme: {PAPER_STATS_BEST}</text></svg>')
    return "\n".join(s) + "\n"


def _write(path, text):  # atomic, so a reader never sees half a file
    tmp = Path(str(path) + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def main(argv=None):
    args = parse_args(argv)
    cfg = SCALES[args.scale]
    cells = build_cells(cfg, args)
    if args.dry_run:  # the grid and its exact commands, e.g. to check settings before a long run
        for c in cells:
            print(f"{c.id:<45} {' '.join(c.cmd)}")
        n_pt = sum(c.kind == "pretrain" for c in cells)
        print(f"{len(cells)} cells: {n_pt} pre-training, {len(cells) - n_pt} fine-tuning -> {args.out}")
        return 0
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.report_only:  # e.g. from a second terminal while the grid is still running
        records = [dict(id=c.id, kind=c.kind, meta=c.meta, cmd=c.cmd, result=read_result(c), error=None,
                        wall_s=None) for c in cells]
    else:
        jobs = cfg["jobs"] if args.jobs is None else args.jobs  # --jobs=0 is an error, not the default
        if jobs < 1:
            raise ValueError(f"--jobs must be >= 1, got {jobs}")
        if cfg["tokenizer"]:  # made once here, not by two cells racing to train it
            t = cfg["tokenizer"]
            get_tokenizer(args.data_dir, t["size"], t["path"], natural_only=t["natural_only"])
        runner = partial(subprocess_runner, threads=max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0)
        records = run_cells(cells, runner, args.fail_fast, os.path.join(args.out, "run.log"), jobs)
    summary = summarize(records, cfg["metric"])
    # results.json holds every number: summary, settings and each cell's full result.json
    summary.update(scale=args.scale, settings=cfg, args=vars(args), records=records)
    for name, text in render_tables(summary).items():
        _write(Path(args.out) / name, text)
    _write(Path(args.out) / "benefit.svg", render_svg(summary))
    _write(Path(args.out) / "results.json", json.dumps(summary, indent=1, default=str))
    print(f"wrote tables, benefit.svg and results.json to {args.out}")
    return 1 if summary["errors"] else 0  # non-zero when any cell failed, after writing what did finish


if __name__ == "__main__":
    sys.exit(main())
