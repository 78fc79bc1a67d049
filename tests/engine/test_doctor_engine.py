"""`imagekit doctor` against the real engine: what it says about the engine's
version, image store and builders is what the engine itself reports; with
DOCKER_HOST at a dead socket it is exit 5 and one line."""

from __future__ import annotations

import json
import re
import socket
import subprocess

import docker.errors
import pytest
from helpers import Project

pytestmark = pytest.mark.engine


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Project:
    return Project(tmp_path_factory.mktemp("doctor") / "proj")


def _truth(docker_api) -> dict:
    info, ver = docker_api.info(), docker_api.version()
    status = dict(info.get("DriverStatus") or [])
    store = "containerd" if status.get("driver-type") == "io.containerd.snapshotter.v1" \
        else "classic"
    return {"version": ver["Version"], "api": ver["ApiVersion"], "store": store,
            "driver": info["Driver"], "major": int(re.match(r"\d+", ver["Version"])[0])}


def _buildx() -> str:
    try:
        p = subprocess.run(["docker", "buildx", "version"], capture_output=True, text=True,
                           timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    m = re.search(r"buildx\s+v?(\S+)", p.stdout)
    return m[1] if p.returncode == 0 and m else ""


def _line(out: str, name: str) -> str:
    [line] = [x for x in out.splitlines() if x.split()[:1] == [name]]
    return line


def test_doctor_says_what_the_engine_is(project, docker_api):
    t = _truth(docker_api)
    r = project.run("--output", "plain", "doctor", timeout=120)
    assert r.code == 0, r.output
    assert r.stderr == ""
    assert f"Docker Engine {t['version']}, API {t['api']}" in _line(r.stdout, "version")
    store = _line(r.stdout, "store")
    assert (f"classic ({t['driver']})" in store) if t["store"] == "classic" else \
        store.split(None, 1)[1].startswith(f"containerd image store ({t['driver']})")
    builders = _line(r.stdout, "builders")
    bx = _buildx()
    if t["major"] >= 23 and bx:      # what `imagekit build` uses, and why
        assert "builds use buildkit: the engine has BuildKit" in builders
        assert f"buildx {bx}" in builders
    elif t["major"] >= 23:
        assert "builds use classic" in builders and "no buildx plugin" in builders
    else:
        assert "builds use classic" in builders and "has no BuildKit built in" in builders
    assert _line(r.stdout, "engine") and _line(r.stdout, "gpu") and _line(r.stdout, "wheelhouse")
    try:
        docker_api.inspect_image("imagekit/base:bookworm")
        assert _line(r.stdout, "base").endswith(")")             # in the engine (its ID)
    except docker.errors.ImageNotFound:
        assert "imagekit base bootstrap" in r.stdout


def test_doctor_json(project, docker_api):
    t = _truth(docker_api)
    r = project.run("--json", "doctor", timeout=120)
    assert r.code == 0, r.output
    [line] = r.stdout.splitlines()
    obj = json.loads(line)
    assert obj["event"] == "result" and obj["stage"] == "doctor"
    d = obj["data"]
    assert (d["server_version"], d["api_version"]) == (t["version"], t["api"])
    assert (d["store"], d["storage_driver"]) == (t["store"], t["driver"])
    assert d["builders"] == (["classic", "buildkit"] if t["major"] >= 23 else ["classic"])
    assert d["buildx"] == _buildx()
    assert d["builder"] == ("buildkit" if t["major"] >= 23 and d["buildx"] else "classic")
    assert [c["name"] for c in d["checks"]][:5] == ["engine", "version", "store", "builders", "gpu"]


@pytest.mark.parametrize("kind", ["no-file", "stale-socket"])
@pytest.mark.parametrize("as_json", [False, True], ids=["plain", "json"])
def test_doctor_with_a_dead_docker_host_is_exit_5_in_one_line(project, tmp_path, kind, as_json):
    path = tmp_path / "dead.sock"
    if kind == "stale-socket":            # a socket file nobody listens on
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(path))
        s.close()
    r = project.run(*(["--json"] if as_json else []), "doctor",
                    env={"DOCKER_HOST": f"unix://{path}"}, timeout=120)
    assert r.code == 5, r.output
    assert "Traceback" not in r.stderr and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    text = json.loads(lines[0])["message"] if as_json else lines[0]
    assert str(path) in text and "make engine" in text and "DOCKER_HOST" in text
