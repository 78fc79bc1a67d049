"""The README's exit-code table is the contract: it lists exactly the codes
imagekit.errors.EXIT_CODES has and every error class uses, and each code that
needs no engine is triggered here through the real command line (the ones that
need an engine are in tests/engine/test_exit_codes_engine.py). Every failure
is one JSON error object on stderr with --json, and no traceback."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from helpers import REPO, Project, imagekit, one_error

from imagekit import errors

# codes triggered in this file / in tests/engine/test_exit_codes_engine.py
HERE = {0, 1, 2, 3, 4, 5, 7, 18, 130}
ENGINE = {6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 19, 130}   # 19: tests/engine/test_reproduce.py


def readme_codes() -> dict[int, str]:
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Exit codes", 1)[1].split("\n## ", 1)[0]
    return {int(m[1]): m[2].strip() for m in re.finditer(r"^\|\s*(\d+)\s*\|\s*(.+?)\s*\|\s*$",
                                                          section, re.MULTILINE)}


def error_classes() -> list[type]:
    found, todo = [], [errors.ImagekitError]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


def test_readme_table_and_errors_agree():
    documented = readme_codes()
    assert len(documented) >= 15, documented
    assert sorted(documented) == sorted(code for code, _ in errors.EXIT_CODES), (
        "README exit codes vs imagekit.errors.EXIT_CODES: only in the README "
        f"{sorted(set(documented) - {c for c, _ in errors.EXIT_CODES})}, only in errors.py "
        f"{sorted({c for c, _ in errors.EXIT_CODES} - set(documented))}")


def test_every_error_class_uses_a_listed_code():
    listed = {code for code, _ in errors.EXIT_CODES}
    unlisted = {cls.__name__: cls.exit_code for cls in error_classes()
                if cls.exit_code not in listed}
    assert unlisted == {}


def test_every_listed_code_is_triggered_by_a_test():
    assert {code for code, _ in errors.EXIT_CODES} <= HERE | ENGINE


def test_0_success():
    r = imagekit("--json", "version", timeout=60)
    assert r.code == 0 and r.stderr == "" and r.stdout.strip(), r.output


@pytest.mark.parametrize("args", [
    pytest.param(["smoke", "x", "--steps", "0"], id="bad-flag-value"),
    pytest.param(["push", "x", "--username", "u"], id="password-not-from-stdin"),
    pytest.param(["push", "x", "--to", "http://registry.example.com/team"], id="bad-destination"),
    pytest.param(["save", "x", "--tar", "--gz"], id="conflicting-flags"),
])
def test_2_usage(project: Project, args):
    one_error(project.run("--json", *args, timeout=60), 2)


def test_18_a_lock_imagekit_did_not_write(project: Project):
    project.copy("ssd-mxnet-cpu", "mx")
    (project.root / "images" / "mx" / "requirements.lock").write_text("mxnet==1.9.1\n")
    r = project.run("--json", "lock", "--check")
    obj = one_error(r, 18)
    assert obj["message"].endswith("images/mx/requirements.lock:1: not a pinned, hashed "
                                   "requirement (name==version --hash=sha256:…); run "
                                   "`imagekit lock mx`")


def test_3_invalid_spec(project: Project):
    project.add("bad", {"framework": {"name": "tensorflow", "version": "2.21.0"}, "bogus": 1})
    obj = one_error(project.run("--json", "validate", "bad", timeout=60), 3)
    assert "bogus" in obj["message"]


def test_3_invalid_config(project: Project):
    (project.root / "imagekit.toml").write_text("[pip]\nport = 'not a port'\n")
    project.add("ok", {"framework": {"name": "tensorflow", "version": "2.21.0"}})
    obj = one_error(project.run("--json", "validate", "ok", timeout=60), 3)
    assert "imagekit.toml" in obj["message"]


def test_4_impossible_combination(project: Project):
    project.add("old", {"framework": {"name": "tensorflow", "version": "1.0.0"}})
    obj = one_error(project.run("--json", "validate", "old", timeout=60), 4)
    assert "not in the compatibility matrix" in obj["message"]


def test_5_no_engine(project: Project):
    r = project.run("--json", "inspect", "anything:1", env={"DOCKER_HOST": "tcp://127.0.0.1:1"},
                    timeout=60)
    assert "no Docker engine answers at tcp://127.0.0.1:1" in one_error(r, 5)["message"]


def test_7_fetch(project: Project):
    """A package no wheelhouse holds, and an index that does not answer."""
    (project.root / "imagekit.toml").write_text(
        '[pip]\nwheelhouse = "wheelhouse"\nindex_url = "http://127.0.0.1:1/simple"\n'
        "port = 17461\n")
    project.add("fetchy", {"framework": {"name": "pytorch", "version": "2.13.0"},
                           "pip": ["imagekit-no-such-package==0.0.1"]})
    obj = one_error(project.run("--json", "fetch", "fetchy", timeout=120), 7)
    assert "imagekit-no-such-package" in obj["message"]


def _main(monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    """imagekit's entry point, in this process."""
    from imagekit import cli
    monkeypatch.setattr(sys, "argv", ["imagekit", *argv])
    with pytest.raises(SystemExit) as ended:
        cli.main()
    return ended.value.code, capsys.readouterr().err


def test_1_internal_error_is_one_line(monkeypatch, capsys, project: Project):
    """A real bug (here: one planted in the catalog listing) exits 1, one line."""
    from imagekit import cli

    def broken(*a, **k):
        raise RuntimeError("planted bug")

    monkeypatch.setattr(cli, "load_project", broken)
    monkeypatch.delenv("IMAGEKIT_DEBUG", raising=False)
    code, err = _main(monkeypatch, capsys, "--json", "-C", str(project.root), "list")
    assert code == 1
    [line] = err.strip().splitlines()
    obj = json.loads(line)
    assert obj["exit_code"] == 1 and "RuntimeError: planted bug" in obj["message"]
    assert "Traceback" not in err


def test_130_interrupted_is_one_line(monkeypatch, capsys, project: Project):
    from imagekit import cli

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "load_project", interrupted)
    code, err = _main(monkeypatch, capsys, "--json", "-C", str(project.root), "list")
    assert code == 130
    [line] = err.strip().splitlines()
    assert json.loads(line)["exit_code"] == 130


class _Exited(Exception):
    def __init__(self, code: int):
        super().__init__(code)
        self.code = code


def test_the_command_exits_with_mains_code_after_flushing(monkeypatch, capsys, project: Project):
    """`imagekit` (cli.run) ends the process with main()'s exit code, its
    output flushed; a bug under IMAGEKIT_DEBUG still raises (its traceback)."""
    from imagekit import cli

    def exit_(code):
        raise _Exited(code)

    monkeypatch.setattr(cli.os, "_exit", exit_)
    monkeypatch.setattr(sys, "argv", ["imagekit", "-C", str(project.root), "version"])
    with pytest.raises(_Exited) as ended:
        cli.run()
    assert ended.value.code == 0
    assert capsys.readouterr().out.strip() == cli.__version__
    monkeypatch.setattr(sys, "argv", ["imagekit", "-C", str(project.root), "push", "--username",
                                      "u"])
    with pytest.raises(_Exited) as ended:
        cli.run()
    assert ended.value.code == 2
    assert "--username needs --password-stdin" in capsys.readouterr().err

    def broken(*a, **k):
        raise RuntimeError("planted bug")

    monkeypatch.setattr(cli, "load_project", broken)
    monkeypatch.setenv("IMAGEKIT_DEBUG", "1")
    monkeypatch.setattr(sys, "argv", ["imagekit", "-C", str(project.root), "list"])
    with pytest.raises(RuntimeError, match="planted bug"):
        cli.run()


def _start(args: list[str], env: dict[str, str], after: str = "") -> subprocess.CompletedProcess:
    """imagekit's entry point (imagekit.start:run, what the installed command
    calls) in a fresh interpreter, output piped; AFTER runs in place of its
    final os._exit."""
    code = ("import os, sys\n"
            f"sys.argv = ['imagekit'] + {args!r}\n"
            "leave = os._exit\n"
            "def ended(code):\n"
            f"    {after or 'pass'}\n"
            "    sys.stdout.flush(); sys.stderr.flush(); leave(code)\n"
            "import imagekit.cli\n"
            "imagekit.cli.os._exit = ended\n"
            "from imagekit.start import run\n"
            "run()\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=60)


def test_the_entry_point_runs_the_command_and_loads_no_rich_for_a_pipe(tmp_path):
    """`imagekit` exits with the verb's code; a verb whose output goes to a pipe
    does not load rich (the live view's library), an error still reads as one
    line; the cyclic collector is back on for the verb's own work; pydantic's
    plugin search is off unless the user set it."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYDANTIC_DISABLE_PLUGINS",
                                                             "FORCE_COLOR", "TTY_COMPATIBLE",
                                                             "TTY_INTERACTIVE")}
    report = ("import gc; print('rich' in sys.modules, gc.isenabled(), "
              "os.environ.get('PYDANTIC_DISABLE_PLUGINS'), file=sys.stderr)")
    done = _start(["-C", str(tmp_path), "matrix"], env, report)
    assert done.returncode == 0, done.stderr
    assert "tensorflow" in done.stdout
    assert done.stderr.strip() == "False True __all__"
    done = _start(["-C", str(tmp_path), "--json", "matrix"], {**env, "PYDANTIC_DISABLE_PLUGINS":
                                                               "logfire"}, report)
    assert done.returncode == 0 and done.stdout.startswith("{")
    assert done.stderr.strip() == "False True logfire"
    done = _start(["-C", str(tmp_path), "push", "--username", "u"], env)
    assert done.returncode == 2
    assert len(done.stderr.splitlines()) == 1
    assert done.stderr.startswith("imagekit: --username needs --password-stdin")
