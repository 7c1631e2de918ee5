"""config.py: typed --key=value parsing, presets, -h, errors, atomic writes, main()'s exit."""
import json
import os
import subprocess
import sys
from dataclasses import dataclass

import pytest

import config
from config import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclass
class Base:
    lr: float = 0.1                # the learning rate
    name: str = "x"                # a name
    flag: bool = False             # a switch


@dataclass
class Cfg(Base):
    preset: str = "small"          # the recipe
    steps: int = 3                 # how many


PRESETS = {"small": dict(steps=5), "big": dict(steps=50, lr=0.5)}


def recipe(c):                                             # what the scripts pass as `presets`
    config.check_choice("preset", c.preset, PRESETS)
    return PRESETS[c.preset]


def test_values_are_typed_from_the_annotations():
    cfg = config.parse(Cfg, ["--lr=1", "--name=2024", "--steps=7"])
    assert (cfg.lr, cfg.name, cfg.steps) == (1.0, "2024", 7) and isinstance(cfg.lr, float)
    assert config.parse(Cfg, ["--name=a b"]).name == "a b"
    with pytest.raises(UserError, match=r"--steps=1\.5: expected int, got float"):
        config.parse(Cfg, ["--steps=1.5"])
    with pytest.raises(UserError, match=r"--lr=fast: expected float, got str"):
        config.parse(Cfg, ["--lr=fast"])


@pytest.mark.parametrize("raw,value", [("True", True), ("true", True), ("1", True),
                                       ("False", False), ("false", False), ("0", False)])
def test_bool_forms(raw, value):
    assert config.parse(Cfg, [f"--flag={raw}"]).flag is value


def test_bad_arguments_name_the_key_and_what_is_valid():
    with pytest.raises(UserError, match=r"--flag=yes: expected bool"):
        config.parse(Cfg, ["--flag=yes"])
    with pytest.raises(UserError, match=r"unknown setting --stepz; valid settings: lr, name, flag, "
                                        r"preset, steps"):
        config.parse(Cfg, ["--stepz=1"])
    with pytest.raises(UserError, match=r"bad argument 'steps=1': settings are --key=value"):
        config.parse(Cfg, ["steps=1"])
    with pytest.raises(UserError, match=r"--preset='huge' is not one of small, big"):
        config.parse(Cfg, ["--preset=huge"], recipe)
    with pytest.raises(UserError, match=r"--name='z' is not one of a, b"):
        config.check_choice("name", "z", ("a", "b"))
    with pytest.raises(UserError, match=r"--lr=2 must be in \[0, 1\]"):
        config.check_range("lr", 2, 0, 1)
    with pytest.raises(UserError, match=r"--steps=0 must be >= 1"):
        config.check_range("steps", 0, lo=1)


def test_presets_apply_first_and_are_a_function_of_other_fields():
    cfg = config.parse(Cfg, ["--preset=big", "--lr=0.2"], recipe)
    assert (cfg.steps, cfg.lr) == (50, 0.2)                # the command line wins
    assert config.parse(Cfg, [], recipe).steps == 5        # the default preset applies too
    assert config.parse(Cfg, []).steps == 3                # no presets: the defaults
    by_name = lambda c: dict(steps=len(c.name) * 10)       # noqa: E731
    assert config.parse(Cfg, ["--name=abc"], by_name).steps == 30
    assert config.parse(Cfg, ["--name=abc", "--steps=1"], by_name).steps == 1


def test_help_prints_the_values_that_would_run_with_inherited_comments(capsys):
    with pytest.raises(SystemExit) as e:
        config.parse(Cfg, ["--preset=big", "-h"], recipe, "The tool.\n\nMore.")
    out = capsys.readouterr().out
    assert e.value.code == 0 and out.startswith("The tool.\n")
    assert "--steps=50" in out and "--lr=0.5" in out                    # the preset's values
    assert "the learning rate" in out and "how many" in out             # both classes' comments
    assert out.splitlines()[2].startswith("  --preset='big'")           # the subclass's first


def test_atomic_write_and_write_json(tmp_path):
    path = str(tmp_path / "sub" / "f.txt")
    config.atomic_write(path, "text")
    config.atomic_write(path, b"bytes")
    assert open(path, "rb").read() == b"bytes"
    config.atomic_write(path, lambda tmp: open(tmp, "w").write("by a function"))
    assert open(path).read() == "by a function"

    def failing(tmp):
        open(tmp, "w").write("half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        config.atomic_write(path, failing)
    assert open(path).read() == "by a function" and os.listdir(tmp_path / "sub") == ["f.txt"]
    config.write_json(str(tmp_path / "r.json"), {"é": 1})
    assert json.load(open(tmp_path / "r.json", encoding="utf-8")) == {"é": 1}


def test_main_prints_a_user_error_as_one_line_and_exits_2():
    code = ("import config, sys\n"
            "def bad(argv): raise config.UserError('--x=1 is wrong')\n"
            "def bug(argv): raise KeyError('a bug')\n"
            "config.main(bad if sys.argv[1] == 'bad' else bug)")
    run = lambda arg: subprocess.run([sys.executable, "-c", code, arg], cwd=ROOT,  # noqa: E731
                                     capture_output=True, text=True, timeout=60)
    bad, bug = run("bad"), run("bug")
    assert bad.returncode == 2 and bad.stderr == "error: --x=1 is wrong\n"
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "KeyError" in bug.stderr
