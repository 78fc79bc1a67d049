"""Test helpers: run the real CLI in a subprocess, make throwaway projects."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def imagekit(*args: str, cwd: Path | None = None, env: dict | None = None,
             input: str | None = None, timeout: int = 1800) -> Run:
    full_env = {**os.environ, **(env or {})}
    p = subprocess.run([sys.executable, "-m", "imagekit", *args], cwd=cwd or REPO,
                       env=full_env, capture_output=True, text=True, input=input,
                       timeout=timeout)
    return Run(p.returncode, p.stdout, p.stderr)


def unique(prefix: str) -> str:
    return f"{prefix}-t{uuid.uuid4().hex[:8]}"


class Project:
    """A throwaway project folder: imagekit.toml (the repo's: the user's shared
    wheelhouse, so tests and builds share downloads) and copies of catalog
    specs under new, unique names."""

    def __init__(self, root: Path):
        self.root = root
        (root / "images").mkdir(parents=True, exist_ok=True)
        (root / "imagekit.toml").write_text((REPO / "imagekit.toml").read_text())

    def add(self, name: str, spec: dict, files: dict[str, str] | None = None) -> Path:
        d = self.root / "images" / name
        d.mkdir(parents=True, exist_ok=True)
        (d / "image.yaml").write_text(yaml.safe_dump({"name": name, **spec}, sort_keys=False))
        for rel, text in (files or {}).items():
            f = d / rel
            f.parent.mkdir(parents=True, exist_ok=True)
            f.write_text(text)
        return d

    def copy(self, catalog_name: str, new_name: str, **changes) -> Path:
        src = REPO / "images" / catalog_name
        spec = yaml.safe_load((src / "image.yaml").read_text())
        spec.pop("name")
        if "parent" in spec and "parent" not in changes:
            raise ValueError("copy the parent too and pass parent=")
        spec.update(changes)
        d = self.add(new_name, spec)
        code = spec.get("code", {}).get("src")
        if code:
            shutil.copytree((src / code).resolve(), d / "code",
                            ignore=shutil.ignore_patterns("__pycache__"))
            spec["code"]["src"] = "code"
            (d / "image.yaml").write_text(yaml.safe_dump({"name": new_name, **spec},
                                                         sort_keys=False))
        return d

    def run(self, *args: str, **kw) -> Run:
        return imagekit("-C", str(self.root), *args, **kw)



def leftovers(docker_api, ref: str) -> list[str]:
    """Containers and volumes imagekit made for this image that still exist
    (other imagekit runs on the same engine do not count)."""
    label = {"label": f"io.imagekit.for={ref}"}
    cs = docker_api.containers(all=True, filters=label)
    vs = docker_api.volumes(filters=label).get("Volumes") or []
    return [c["Id"][:12] for c in cs] + [v["Name"] for v in vs]


def docker_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, cwd=REPO)


def one_error(r, code: int) -> dict:
    """Exit `code`, and with --json exactly one error object on stderr."""
    assert "Traceback" not in r.stderr, r.stderr
    assert r.code == code, r.output[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    obj = json.loads(lines[0])
    assert obj["event"] == "error" and obj["exit_code"] == code and obj["message"], obj
    return obj


# Linux counts in a child's peak RSS the memory of the process it was forked
# from (exec records the old address space's high-water mark), so the command
# is started by this small launcher, not by pytest, and its peak read there.
LAUNCHER = r"""
import json, os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])
_, status, usage = os.wait4(pid, 0)
with open(os.environ["RUSAGE_OUT"], "w") as f:
    json.dump({"code": os.waitstatus_to_exitcode(status), "maxrss_kb": usage.ru_maxrss}, f)
"""


def measured(cmd: list[str], tmp_path: Path, env: dict | None = None,
             timeout: float = 60) -> tuple[int, str, str, float, int]:
    """(exit code, stdout, stderr, seconds, peak RSS in KB) of CMD, a Python
    command line (the interpreter's arguments), run in a process of its own."""
    stamp = time.monotonic_ns()
    out, err, usage = (tmp_path / f"{stamp}.{x}" for x in ("out", "err", "rusage"))
    env = {**os.environ, **(env or {}), "RUSAGE_OUT": str(usage)}
    env.pop("IMAGEKIT_DEBUG", None)
    start = time.monotonic()
    with out.open("wb") as o, err.open("wb") as e:
        p = subprocess.Popen([sys.executable, "-c", LAUNCHER, *cmd], cwd=REPO, env=env,
                             stdout=o, stderr=e, stdin=subprocess.DEVNULL,
                             start_new_session=True)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, 9)
            p.wait()
            raise AssertionError(f"{cmd[-3:]} ran past {timeout} s") from None
    seconds = time.monotonic() - start
    got = json.loads(usage.read_text())
    return got["code"], out.read_text(), err.read_text(), seconds, got["maxrss_kb"]


def drive(gen) -> tuple[list, object]:
    """(the events a stage generator yields, the value it returns)."""
    events = []
    while True:
        try:
            events.append(next(gen))
        except StopIteration as stop:
            return events, stop.value
