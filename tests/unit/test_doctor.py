"""`imagekit doctor` with the fake engine: each finding on its own line, a fix
under what is missing or wrong, the typed result with --json, exit 5 and one
line with no engine; Engine.facts decoding `docker info` / `docker version`;
the buildx plugin found as the docker CLI finds it."""

from __future__ import annotations

import io
import json
import os
import sys
from pathlib import Path

import pytest
from fakes import FakeDockerAPI, FakeEngine, NoEngine

from imagekit import cli
from imagekit import doctor as doctor_mod
from imagekit.config import load_project
from imagekit.engine import Buildx, Engine, EngineFacts, find_buildx, wire
from imagekit.errors import EngineUnavailable
from imagekit.events import DoctorResult

BUILDX = Buildx("0.13.1", "/usr/libexec/docker/cli-plugins/docker-buildx", True)
NO_BUILDX = Buildx(problem="docker: 'buildx' is not a docker command.")
FACTS = EngineFacts("unix:///var/run/docker.sock", server_version="26.1.5", api_version="1.45",
                    os="linux", arch="x86_64", store="classic", storage_driver="overlay2",
                    buildkit=True)


MEASURE_FREE_SPACE = doctor_mod.free_space


@pytest.fixture(autouse=True)
def roomy_disk(monkeypatch):
    """The machine running the tests may be short of disk; the low-disk check is tested alone."""
    monkeypatch.setattr(doctor_mod, "free_space", lambda path: 100 * 10**9)


def facts(**changes) -> EngineFacts:
    return EngineFacts(**{**FACTS.__dict__, **changes})


@pytest.fixture
def proj(project, tmp_path):
    """The test project, its wheelhouse in tmp_path (two wheels, one hard-linked
    twice), the base image named in its imagekit.toml."""
    house = tmp_path / "wheels"
    (house / ".imagekit" / "dl").mkdir(parents=True)
    (house / "a-1.0-py3-none-any.whl").write_bytes(b"a" * 10_000)
    (house / "b-1.0-py3-none-any.whl").write_bytes(b"b" * 20_000)
    os.link(house / "b-1.0-py3-none-any.whl", house / ".imagekit" / "dl" / "b-1.0-py3-none-any.whl")
    toml = project.root / "imagekit.toml"
    text = toml.read_text()
    assert text.count("[pip]\n") == 1
    toml.write_text(text.replace("[pip]\n", f'[pip]\nwheelhouse = "{house}"\n'))
    return load_project(project.root)


def result(project, engine, buildx=BUILDX, **kw) -> DoctorResult:
    [r] = list(doctor_mod.doctor(project, engine, buildx=lambda: buildx, **kw))
    return r


def check(r: DoctorResult, name: str):
    [c] = [c for c in r.checks if c.name == name]
    return c


def engine_with_base(project, **kw) -> FakeEngine:
    e = FakeEngine(**kw)
    e.add_image(project.config.base.image)
    return e


def test_a_healthy_machine(proj, monkeypatch):
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    r = result(proj, engine_with_base(proj, engine_facts=FACTS))
    assert [c.name for c in r.checks] == ["engine", "version", "store", "builders", "gpu", "base",
                                          "wheelhouse"]
    assert r.problems == []
    assert check(r, "engine").found == "unix:///var/run/docker.sock (the default socket)"
    assert check(r, "version").found == "Docker Engine 26.1.5, API 1.45, linux/x86_64"
    assert check(r, "store").found == "classic (overlay2)"
    assert r.builders == ["classic", "buildkit"] and r.buildx == "0.13.1"
    assert "buildx 0.13.1 at /usr/libexec/docker/cli-plugins/docker-buildx" in \
        check(r, "builders").found
    assert check(r, "gpu").found.startswith("none")
    assert r.base_image == "imagekit/base:bookworm" and r.base_present
    assert r.wheelhouse == str(proj.wheelhouse)
    assert 30_000 <= r.wheelhouse_bytes < 60_000     # the hard link counted once
    assert r.free_bytes > 0 and "free there" in check(r, "wheelhouse").found


def test_where_the_engine_was_found(proj, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
    r = result(proj, engine_with_base(proj, engine_facts=facts(where="tcp://127.0.0.1:2375")))
    assert check(r, "engine").found == "tcp://127.0.0.1:2375 (DOCKER_HOST)"
    monkeypatch.delenv("DOCKER_HOST")
    r = result(proj, engine_with_base(proj, engine_facts=facts(
        where="unix:///home/u/.docker/desktop/docker.sock", context="desktop-linux")))
    assert r.via == "docker context desktop-linux"
    assert check(r, "engine").found == \
        "unix:///home/u/.docker/desktop/docker.sock (docker context desktop-linux)"


def test_missing_base_image_names_the_command(proj):
    r = result(proj, FakeEngine(engine_facts=FACTS))
    c = check(r, "base")
    assert not c.ok and not r.base_present
    assert c.found == "imagekit/base:bookworm: not in the engine"
    assert c.fix.startswith("imagekit base bootstrap")


def test_no_base_section_is_not_a_problem(project):
    (project.root / "imagekit.toml").unlink()
    r = result(load_project(project.root), FakeEngine(engine_facts=FACTS))
    assert check(r, "base").ok and r.base_image == ""


def test_no_buildx_plugin(proj):
    r = result(proj, engine_with_base(proj, engine_facts=FACTS), buildx=NO_BUILDX)
    c = check(r, "builders")
    assert not c.ok and "buildx" in c.fix and "docker-buildx" in c.fix
    assert "not a docker command" in c.found
    assert r.builders == ["classic", "buildkit"] and r.buildx == ""


def test_an_old_engine(proj):
    r = result(proj, engine_with_base(proj, engine_facts=facts(server_version="20.10.24+dfsg1",
                                                               api_version="1.41",
                                                               buildkit=False)))
    assert "legacy layout" in check(r, "version").found
    c = check(r, "builders")
    assert not c.ok and "23 or later" in c.fix
    assert r.builders == ["classic"]


def test_containerd_store(proj):
    r = result(proj, engine_with_base(proj, engine_facts=facts(store="containerd",
                                                               storage_driver="overlayfs")))
    assert r.store == "containerd"
    assert check(r, "store").found.startswith("containerd image store (overlayfs)")


@pytest.mark.parametrize(("runtime", "cdi", "words"), [
    (True, 0, "nvidia runtime"), (False, 2, "2 CDI GPU devices"),
    (True, 1, "nvidia runtime, 1 CDI GPU device:")])
def test_gpu(proj, runtime, cdi, words):
    r = result(proj, engine_with_base(proj, engine_facts=facts(gpu_runtime=runtime, cdi_gpus=cdi)))
    assert words in check(r, "gpu").found and r.gpu_runtime == runtime and r.cdi_gpus == cdi


def test_remote_engine_cannot_reach_the_wheelhouse(proj):
    r = result(proj, engine_with_base(proj, engine_facts=facts(where="ssh://me@gpu-box")))
    c = check(r, "wheelhouse")
    assert not c.ok and "index_url" in c.fix


def test_low_disk(proj, monkeypatch):
    monkeypatch.setattr(doctor_mod, "free_space", lambda path: 2 * 10**9)
    c = check(result(proj, engine_with_base(proj, engine_facts=FACTS)), "wheelhouse")
    assert not c.ok and "2.0 GB free" in c.found and "[pip] wheelhouse" in c.fix


def test_index_url_instead_of_a_wheelhouse(project):
    (project.root / "imagekit.toml").write_text(
        '[pip]\nindex_url = "https://mirror.example/simple"\n')
    r = result(load_project(project.root), FakeEngine(engine_facts=FACTS))
    assert check(r, "wheelhouse").found == \
        "none: builds install from [pip] index_url https://mirror.example/simple"
    assert r.wheelhouse == ""


def test_wheelhouse_not_made_yet(project, tmp_path):
    (project.root / "imagekit.toml").write_text(f'[pip]\nwheelhouse = "{tmp_path}/none/yet"\n')
    r = result(load_project(project.root), FakeEngine(engine_facts=FACTS))
    c = check(r, "wheelhouse")
    assert c.ok and "not made yet" in c.found and r.wheelhouse_bytes == 0 and r.free_bytes > 0


# ---------------------------------------------------------- command line ----
@pytest.fixture
def run(monkeypatch, capsys):
    monkeypatch.delenv("IMAGEKIT_DEBUG", raising=False)
    monkeypatch.setattr(doctor_mod, "find_buildx", lambda: BUILDX)

    def go(engine, *args: str) -> tuple[int, str, str]:
        class Connect:
            @classmethod
            def connect(cls, *a, **kw):
                return engine.connect() if engine is NoEngine else engine

        monkeypatch.setattr(cli, "Engine", Connect)
        monkeypatch.setattr(sys, "argv", ["imagekit", *args])
        monkeypatch.setattr(sys, "stdin", io.StringIO(""))
        capsys.readouterr()
        try:
            cli.main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        cap = capsys.readouterr()
        return code, cap.out, cap.err

    return go


def test_cli_lines_and_fixes(proj, run):
    code, out, err = run(FakeEngine(engine_facts=FACTS), "-C", str(proj.root), "--output",
                         "plain", "doctor")
    assert code == 0 and err == ""
    lines = out.splitlines()
    assert lines[0].split()[0] == "engine"
    assert any(x.startswith("version ") and "26.1.5" in x for x in lines)
    assert any(x.startswith("builders ") and "builds use buildkit" in x for x in lines)
    base = lines.index(next(x for x in lines if x.startswith("base ")))
    assert lines[base + 1].split() == ["fix:", "imagekit", "base", "bootstrap", "(or",
                                       "`imagekit", "build`", "makes", "it", "first)"]
    assert lines[-1] == "1 thing to fix (above)"


def test_cli_json(proj, run):
    code, out, err = run(engine_with_base(proj, engine_facts=FACTS), "-C", str(proj.root),
                         "--json", "doctor")
    assert code == 0 and err == ""
    [line] = out.splitlines()
    obj = json.loads(line)
    assert obj["event"] == "result" and obj["stage"] == "doctor"
    data = obj["data"]
    assert data["server_version"] == "26.1.5" and data["api_version"] == "1.45"
    assert data["store"] == "classic" and data["builders"] == ["classic", "buildkit"]
    assert data["buildx"] == "0.13.1" and data["base_present"] is True
    assert data["builder"] == "buildkit" and "buildx 0.13.1" in data["builder_reason"]
    assert all(set(c) == {"name", "found", "ok", "fix"} for c in data["checks"])


@pytest.mark.parametrize("as_json", [False, True])
def test_cli_no_engine_is_exit_5_in_one_line(proj, run, as_json):
    code, out, err = run(NoEngine, "-C", str(proj.root), *(["--json"] if as_json else []),
                         "doctor")
    assert code == 5 and out == ""
    assert len(err.strip().splitlines()) == 1, err
    if as_json:
        assert json.loads(err)["exit_code"] == 5


def test_cli_bad_config_is_a_finding(project, run):
    (project.root / "imagekit.toml").write_text("[pip]\nport = 1\n")
    code, out, err = run(FakeEngine(engine_facts=FACTS), "-C", str(project.root), "--output",
                         "plain", "doctor")
    assert code == 0 and err == ""
    line = next(x for x in out.splitlines() if x.startswith("config "))
    assert "imagekit.toml" in line and "pip.port" in line


# ----------------------------------------------------- Engine.facts decoding ----
class VersionedAPI(FakeDockerAPI):
    def __init__(self, *, version: dict, **kw):
        super().__init__(**kw)
        self._version_answer = version

    def version(self):
        return self._version_answer


@pytest.mark.parametrize(("info", "version", "want"), [
    ({"Driver": "overlay2", "DriverStatus": [["Backing Filesystem", "extfs"]], "OSType": "linux",
      "Architecture": "x86_64", "Runtimes": {"runc": {}}},
     {"Version": "26.1.5+dfsg1", "ApiVersion": "1.45"},
     {"store": "classic", "storage_driver": "overlay2", "buildkit": True, "gpu_runtime": False,
      "cdi_gpus": 0, "server_version": "26.1.5+dfsg1", "api_version": "1.45"}),
    ({"Driver": "overlayfs", "DriverStatus": [["driver-type", "io.containerd.snapshotter.v1"]],
      "Runtimes": {"runc": {}, "nvidia": {}},
      "DiscoveredDevices": [{"Source": "cdi", "ID": "nvidia.com/gpu=0"},
                            {"Source": "cdi", "ID": "nvidia.com/gpu=all"},
                            {"Source": "cdi", "ID": "vendor.com/fpga=0"}]},
     {"Version": "29.0.1", "ApiVersion": "1.52"},
     {"store": "containerd", "storage_driver": "overlayfs", "buildkit": True,
      "gpu_runtime": True, "cdi_gpus": 2}),
    ({"Driver": "overlay2"}, {"Version": "20.10.24+dfsg1", "ApiVersion": "1.41"},
     {"store": "classic", "buildkit": False}),
])
def test_engine_facts_decode_docker_info(info, version, want):
    f = Engine(VersionedAPI(info=info, version=version), "unix:///x.sock").facts()
    assert {k: getattr(f, k) for k in want} == want
    assert f.where == "unix:///x.sock"


# ------------------------------------------------------------------ buildx ----
def _exe(path: Path, body: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


@pytest.fixture
def cli_dirs(tmp_path, monkeypatch):
    """An empty PATH and Docker config of the test's own; no system plugin folders."""
    bin_, config = tmp_path / "bin", tmp_path / "dockercfg"
    bin_.mkdir()
    monkeypatch.setenv("PATH", str(bin_))
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    monkeypatch.setattr("imagekit.engine.buildx.CLI_PLUGIN_DIRS", ())
    return bin_, config


def test_buildx_through_the_docker_cli(cli_dirs):
    bin_, config = cli_dirs
    _exe(bin_ / "docker", 'echo "github.com/docker/buildx v0.17.1 257815a"')
    _exe(config / "cli-plugins" / "docker-buildx", "exit 0")
    assert find_buildx() == Buildx("0.17.1", str(config / "cli-plugins" / "docker-buildx"), True)


def test_buildx_plugin_the_cli_cannot_run(cli_dirs):
    bin_, config = cli_dirs
    _exe(bin_ / "docker", "echo \"docker: 'buildx' is not a docker command.\" >&2; exit 1")
    _exe(config / "cli-plugins" / "docker-buildx",
         'echo "github.com/docker/buildx 0.13.1+ds1 0.13.1+ds1-3"')
    bx = find_buildx()
    assert not bx.works and bx.version == "0.13.1+ds1"
    assert "not a docker command" in bx.problem and "docker-buildx is there" in bx.problem


def test_no_docker_cli_and_no_plugin(cli_dirs):
    assert find_buildx() == Buildx(problem="no docker CLI on PATH")


def test_buildx_that_hangs_is_given_up(cli_dirs):
    bin_, _ = cli_dirs
    _exe(bin_ / "docker", "exec /bin/sleep 30")
    bx = find_buildx(timeout=0.3)
    assert not bx.works and "did not answer within 0.3s" in bx.problem


def test_a_socket_the_user_may_not_open_is_said_so(monkeypatch):
    def denied(self, *args, **kw):     # every request, whether or not an engine runs here
        try:
            raise PermissionError(13, "Permission denied")
        except PermissionError as e:
            raise wire.ConnectFailed(str(e)) from e

    monkeypatch.setattr(wire.Api, "request", denied)
    monkeypatch.setenv("DOCKER_HOST", "unix:///var/run/docker.sock")
    with pytest.raises(EngineUnavailable) as e:
        Engine.connect(timeout=5)
    assert "permission denied: add your user to the docker group" in str(e.value)
    assert "nothing listens" not in str(e.value)



def test_free_space_is_measured_on_the_nearest_existing_folder(tmp_path):
    import shutil
    free = shutil.disk_usage(tmp_path).free
    for path in (tmp_path, tmp_path / "not" / "made" / "yet"):
        assert abs(MEASURE_FREE_SPACE(path) - free) < 10**9     # other writers may move it a little
