"""config.py: the one way every script is configured, and the one atomic file write.

Every script takes `--key=value` settings onto a dataclass: `parse(Config, argv)` types each value
from the field's annotation, rejects unknown keys (listing the valid ones) and answers `-h` with
every setting and the value that would run. A preset is applied first, then the command line.
`UserError` is a mistake in what the user gave us; `main()` prints it as one line, no traceback.

Reading order: model.py, tokenizer.py, tasks.py, config.py (here), train.py, ... Next: train.py.
"""
import ast
import inspect
import json
import os
import re
import sys
import tempfile
from dataclasses import fields, is_dataclass, replace

# where every script looks for data unless told (--data_dir): the DATA_DIR variable, else ./data
DATA_DIR = os.environ.get("DATA_DIR", "data")

class UserError(ValueError):
    """Bad input (a setting, a file, a line of data): shown as one line, no traceback."""

def _convert(f, raw: str):
    """One `--key=value`: literal_eval, checked against the field's type (an int may be a float)."""
    if f.type is bool and raw.lower() in ("true", "false", "1", "0"):
        return raw.lower() in ("true", "1")
    if f.type is str:
        return raw                                         # --out_dir=2024 stays the string "2024"
    try:
        val = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        val = raw
    val = float(val) if f.type is float and type(val) is int else val
    if type(val) is not f.type:
        raise UserError(f"--{f.name}={raw}: expected {f.type.__name__}, got {type(val).__name__}")
    return val

def usage(cfg, doc: str = "") -> str:
    """The first docstring line, then every field with the value it would run with and its comment
    (the `# ...` after the field, in its class or in a dataclass it inherits from)."""
    comments = {}
    for klass in reversed(type(cfg).__mro__):
        if is_dataclass(klass):
            src = inspect.getsource(klass)
            comments.update(re.findall(r"^\s+(\w+):[^#\n]*#\s*(.*)$", src, re.M))
    own = vars(type(cfg)).get("__annotations__", {})       # the script's own settings first
    rows = [f"  {f'--{f.name}={getattr(cfg, f.name)!r}':<34} {comments.get(f.name, '')}"
            for f in sorted(fields(cfg), key=lambda f: f.name not in own)]
    head = doc.strip().splitlines()[0] if doc.strip() else ""
    return "\n".join([head, "settings (--key=value):", *rows])

def parse(cls, argv, presets=None, doc: str = ""):
    """An instance of the dataclass `cls` from `--key=value` arguments; `-h` prints usage(), exits.

    presets: {name: {field: value}} selected by the `preset` field, or a function of the config the
    command line gives (e.g. of its preset and task) returning that dict, or raising UserError.
    Preset values are applied first, then the command line."""
    by_name, kv = {f.name: f for f in fields(cls)}, {}
    for a in argv:
        if a in ("-h", "--help"):
            continue
        k, eq, v = a.removeprefix("--").partition("=")
        if not a.startswith("--") or not eq:
            raise UserError(f"bad argument {a!r}: settings are --key=value (see -h)")
        if k not in by_name:
            raise UserError(f"unknown setting --{k}; valid settings: {', '.join(by_name)}")
        kv[k] = _convert(by_name[k], v)
    cfg = replace(cls(), **kv)
    if presets is not None:
        values = presets(cfg) if callable(presets) else presets.get(cfg.preset)
        if values is None:
            raise UserError(f"unknown preset {cfg.preset!r}; valid presets: {', '.join(presets)}")
        cfg = replace(cls(), **{**values, **kv})
    if any(a in ("-h", "--help") for a in argv):
        print(usage(cfg, doc))
        sys.exit(0)
    return cfg

def check_choice(name: str, value, valid) -> None:
    if value not in valid:
        raise UserError(f"--{name}={value!r} is not one of {', '.join(map(str, valid))}")

def check_range(name: str, value, lo=None, hi=None) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        want = f">= {lo}" if hi is None else f"<= {hi}" if lo is None else f"in [{lo}, {hi}]"
        raise UserError(f"--{name}={value} must be {want}")

def atomic_write(path: str, write) -> None:
    """Write a file through a temporary one beside it and os.replace: nobody ever sees half a file.

    write: bytes, str, or a function of the temporary path (e.g. lambda p: torch.save(obj, p))."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, suffix=".tmp")
    os.close(fd)
    try:
        if callable(write):
            write(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(write.encode() if isinstance(write, str) else write)
        os.chmod(tmp, 0o644)                               # mkstemp's is private; results are not
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise

def write_json(path: str, obj, indent=1) -> None:
    atomic_write(path, json.dumps(obj, ensure_ascii=False, indent=indent))

def main(fn) -> None:
    """Run `fn(sys.argv[1:])`; a UserError (or a missing file) ends it with one line, exit code 2.
    Any other exception is a bug and keeps its traceback."""
    try:
        fn(sys.argv[1:])
    except (UserError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
