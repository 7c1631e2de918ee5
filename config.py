"""config.py: the scripts' `--key=value` parser onto a settings dataclass, UserError (a user's
mistake, which main() prints as one line) and the one atomic file write. Imported, never run.

Reading order: model.py, tokenizer.py, tasks.py, config.py (here), train.py, ... Next: train.py.
"""
import ast, inspect, json, os, re, sys, tempfile
from dataclasses import fields, is_dataclass
from pathlib import Path

DATA_DIR = os.environ.get("DATA_DIR", "data")     # every --data_dir's default: $DATA_DIR or ./data

class UserError(ValueError):
    """Bad input (a setting, a file, a line of data): shown as one line, no traceback."""

def _convert(f, raw: str):
    """One `--key=value`: literal_eval, checked against the field's type (an int may be a float)."""
    if f.type is str or f.type is bool and raw.lower() in ("true", "false", "1", "0"):
        return raw if f.type is str else raw.lower() in ("true", "1")   # --out_dir=2024: "2024"
    try:
        val = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        val = raw
    val = float(val) if f.type is float and type(val) is int else val
    if type(val) is not f.type:
        raise UserError(f"--{f.name}={raw}: expected {f.type.__name__}, got {type(val).__name__}")
    return val

def parse(cls, argv, presets=None, doc: str = ""):
    """The dataclass `cls` from `--key=value` arguments, over the {field: value} of presets(the
    command line's settings), which may raise UserError. -h: print each setting as it would run."""
    by_name, kv, wants_help = {f.name: f for f in fields(cls)}, {}, {"-h", "--help"} & set(argv)
    for a in (a for a in argv if a not in wants_help):
        k, eq, v = a.removeprefix("--").partition("=")
        if not a.startswith("--") or not eq:
            raise UserError(f"bad argument {a!r}: settings are --key=value (see -h)")
        if k not in by_name:
            raise UserError(f"unknown setting --{k}; valid settings: {', '.join(by_name)}")
        kv[k] = _convert(by_name[k], v)
    cfg = cls(**kv) if presets is None else cls(**{**presets(cls(**kv)), **kv})
    if wants_help:        # the doc's first line, each setting and its `# comment`, own ones first
        comments = {k: c for klass in reversed(cls.__mro__) if is_dataclass(klass) for k, c in
                    re.findall(r"^\s+(\w+):[^#\n]*#\s*(.*)$", inspect.getsource(klass), re.M)}
        rows = [f"  {f'--{f.name}={getattr(cfg, f.name)!r}':<34} {comments.get(f.name, '')}"
                for f in sorted(by_name.values(), key=lambda f: f.name not in cls.__annotations__)]
        print((doc.strip().splitlines() or [""])[0], "settings (--key=value):", *rows, sep="\n")
        sys.exit(0)
    return cfg

def check_choice(name: str, value, valid) -> None:
    if value not in valid:
        raise UserError(f"--{name}={value!r} is not one of {', '.join(map(str, valid))}")

def check_range(name: str, value, lo, hi=None) -> None:
    if value < lo or (hi is not None and value > hi):
        want = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
        raise UserError(f"--{name}={value} must be {want}")

def atomic_write(path: str, write) -> None:
    """Write a file through a temporary one beside it and os.replace: nobody ever sees half a file.
    write: bytes, str, or a function of the temporary path (e.g. lambda p: torch.save(obj, p))."""
    os.makedirs(folder := os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(fd)
    try:
        if callable(write):
            write(tmp)
        else:
            Path(tmp).write_bytes(write.encode() if isinstance(write, str) else write)
        os.chmod(tmp, 0o644)                               # mkstemp's is private; results are not
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise

def write_json(path: str, obj, indent=1) -> None:
    atomic_write(path, json.dumps(obj, ensure_ascii=False, indent=indent))

def main(fn) -> None:
    """fn(sys.argv[1:]); a UserError or missing file: one line, exit code 2 (a bug: traceback)."""
    try:
        fn(sys.argv[1:])
    except (UserError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
