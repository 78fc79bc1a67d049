"""BuildKit builds through buildx on the real engine: the default builder,
RUN steps with no network (a step that tries to reach the host fails under
BuildKit and reaches it under the classic builder), the classic builder on
request, a failing step, and a builder on a second engine over TCP (built
there with the wheels sent through the session, smoke-tested there)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import threading

import docker
import pytest
from helpers import REPO, docker_cli, leftovers, unique

from imagekit.engine import find_buildx

pytestmark = pytest.mark.skipif(not find_buildx().works, reason="no buildx plugin")

PROBE = ('python3 -c "import socket; socket.create_connection((\'{host}\', {port}), timeout=5)" '
         "&& echo REACHED-THE-HOST-{token} || echo NO-NETWORK-{token}")


def _gateway(docker_api) -> str:
    """The host's address on the engine's default bridge (docker0)."""
    ipam = docker_api.inspect_network("bridge")["IPAM"]["Config"]
    return ipam[0]["Gateway"]


class _Listener:
    """A TCP port on every host address that accepts and closes."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("0.0.0.0", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            conn.close()

    def close(self):
        self.sock.close()


def _events(r) -> list[dict]:
    return [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]


def test_no_run_step_reaches_the_network_under_buildkit(project, base_image, docker_api):
    """A project's own partial adds a RUN (imagekit's `run` prefix) that
    connects to a port on the host. Under BuildKit, the default here, it
    cannot; under the classic builder (host network) the same step can."""
    listener = _Listener()
    gateway = _gateway(docker_api)
    name = unique("nonet")
    token = name.rsplit("-", 1)[-1]
    own = project.root / "templates" / "partials"
    own.mkdir(parents=True)
    partial = (REPO / "templates" / "partials" / "python.j2").read_text()
    own.joinpath("python.j2").write_text(
        partial + "{{ run }} " + PROBE.format(host=gateway, port=listener.port, token=token)
        + " {{ builder }}\n")
    project.add(name, {"framework": {"name": "pytorch", "version": "2.13.0"}, "tags": ["test"]})
    try:
        r = project.run("--json", "build", name, timeout=1800)
        assert r.code == 0, r.output[-3000:]
        info = [e["message"] for e in _events(r) if e["event"] == "info"]
        assert any(m.startswith("builder: buildkit") for m in info), info
        logs = [e["line"] for e in _events(r) if e["event"] == "log"]
        assert any(f"NO-NETWORK-{token}" in x for x in logs), logs[-20:]
        assert not any(f"REACHED-THE-HOST-{token}" in x for x in logs)
        # the probe works: the classic builder's steps have the host's network
        r = project.run("--json", "build", name, "--builder", "classic", timeout=1800)
        assert r.code == 0, r.output[-3000:]
        logs = [e["line"] for e in _events(r) if e["event"] == "log"]
        assert any(f"REACHED-THE-HOST-{token}" in x for x in logs), logs[-20:]
        assert any(m.startswith("builder: classic") for m in
                   [e["message"] for e in _events(r) if e["event"] == "info"])
        torch = docker_cli("run", "--rm", f"{name}:test", "python", "-c",
                           "import torch; print('torch', torch.__version__)")
        assert torch.returncode == 0 and "torch 2.13.0" in torch.stdout, torch.stderr
    finally:
        listener.close()
        docker_cli("rmi", "-f", f"{name}:test")


def test_a_failing_step_under_buildkit_is_exit_6_with_its_log(project, base_image, docker_api):
    """A RUN step that prints and exits 42 (a project's own partial) under
    BuildKit: exit 6, one first line naming the step and BuildKit's words,
    then its last log lines and the log file's path."""
    name = unique("bk-broken")
    project.add(name, {"framework": {"name": "pytorch", "version": "2.13.0"}, "tags": ["test"]})
    (project.root / "imagekit.toml").write_text(
        (project.root / "imagekit.toml").read_text() + '\n[build]\nbuilder = "buildkit"\n')
    own = project.root / "templates" / "partials"
    own.mkdir(parents=True)
    own.joinpath("python.j2").write_text(
        (REPO / "templates" / "partials" / "python.j2").read_text()
        + f"{{{{ run }}}} echo last-words-before-failing {name} && exit 42\n")
    r = project.run("build", name, timeout=1800)
    try:
        assert r.code == 6, r.output[-2000:]
        lines = r.stderr.strip().splitlines()
        assert "build failed at step" in lines[0] and "exit code: 42" in lines[0], lines[0]
        assert "`RUN echo last-words-before-failing" in lines[0]
        assert any("last-words-before-failing" in x for x in lines[1:])
        assert lines[-1].strip().startswith("full log: ")
        log = lines[-1].strip().removeprefix("full log: ")
        assert "last-words-before-failing" in open(log).read()
        assert "Traceback" not in r.output
    finally:
        docker_cli("rmi", "-f", f"{name}:test")


@pytest.fixture
def context_to(second_engine, tmp_path):
    """A docker context (in a Docker config of its own) for the second engine:
    buildx shows it as a builder of the same name (docker driver)."""
    config = tmp_path / "docker-config"
    config.mkdir()
    name = unique("ikt-ctx")
    env = {"DOCKER_CONFIG": str(config)}
    r = subprocess.run(["docker", "context", "create", name, "--docker",
                        f"host={second_engine.url}"], capture_output=True, text=True,
                       env={**__import__("os").environ, **env})
    assert r.returncode == 0, r.stderr
    yield name, env
    shutil.rmtree(config, ignore_errors=True)


def test_a_builder_on_another_engine(session_project, base_image, second_engine, context_to,
                                     docker_api):
    """`imagekit build NAME --builder B`, B a buildx builder on a second engine
    over TCP: built there (the wheels sent through the build session), not
    here; `imagekit smoke NAME --engine URL` finds it there and trains;
    nothing left on either engine."""
    builder, env = context_to
    api2 = second_engine.api()
    second_engine.load_from_first(base_image)       # its base, as `docker pull` would bring it
    name = unique("far")
    r = session_project.run("new", name, "--framework", "pytorch")
    assert r.code == 0, r.output
    ref = f"{name}:v1.0"
    try:
        r = session_project.run("--json", "build", name, "--builder", builder, env=env,
                                timeout=1800)
        assert r.code == 0, r.output[-3000:]
        info = [e["message"] for e in _events(r) if e["event"] == "info"]
        assert any(m.startswith(f"builder: {builder}") and second_engine.url in m
                   for m in info), info
        there = api2.inspect_image(ref)
        assert there["Config"]["Labels"]["io.imagekit.name"] == name
        with pytest.raises(docker.errors.ImageNotFound):
            docker_api.inspect_image(ref)
        r = session_project.run("--json", "smoke", name, "--engine", second_engine.url,
                                env=env, timeout=900)
        assert r.code == 0, r.output[-3000:]
        result = next(e for e in _events(r) if e["event"] == "result")
        assert result["data"]["passed"] is True
        with pytest.raises(docker.errors.ImageNotFound):   # nothing shipped back or here
            docker_api.inspect_image(ref)
        assert api2.containers(all=True) == []
        assert (api2.volumes().get("Volumes") or []) == []
        assert leftovers(docker_api, ref) == []
        # --load: the same build (every step cached there), the image also loaded here
        r = session_project.run("--json", "build", name, "--builder", builder, "--load",
                                env=env, timeout=1800)
        assert r.code == 0, r.output[-3000:]
        assert docker_api.inspect_image(ref)["RootFS"] == api2.inspect_image(ref)["RootFS"]
        assert any("shipped" in e.get("message", "") for e in _events(r)), r.stdout[-2000:]
    finally:
        docker_cli("rmi", "-f", ref)
        try:
            api2.remove_image(ref, force=True)
        except docker.errors.APIError:
            pass
        shutil.rmtree(session_project.root / "images" / name, ignore_errors=True)


def test_a_new_port_or_wheelhouse_path_keeps_every_layer(project, base_image, docker_api):
    """Under BuildKit neither [pip] port nor the wheelhouse's path is in the
    Dockerfile, and the wheels context is the same files: after changing
    either, the rebuild takes every step from the cache."""
    from imagekit.config import cache_dir
    name = unique("bk-cache")
    project.add(name, {"framework": {"name": "pytorch", "version": "2.13.0"}, "tags": ["test"]})
    toml = project.root / "imagekit.toml"
    try:
        first = project.run("--json", "build", name, timeout=1800)
        assert first.code == 0, first.output[-2000:]

        def all_cached(r) -> None:
            assert r.code == 0, r.output[-2000:]
            ev = _events(r)
            steps = {e["index"] for e in ev if e["event"] == "step"
                     and not e["instruction"].startswith("FROM ")}
            cached = {e["index"] for e in ev if e["event"] == "cached"}
            assert steps and steps == cached, (steps, cached)

        toml.write_text(toml.read_text().replace("port = 17311", "port = 17399"))
        assert "17399" in toml.read_text()
        all_cached(project.run("--json", "build", name, timeout=1800))
        # the same wheels under another path (hard links: no copy of gigabytes)
        moved = project.root / "elsewhere-wheels"
        src = cache_dir() / "wheelhouse"
        subprocess.run(["cp", "-al", str(src), str(moved)], check=True)
        toml.write_text(toml.read_text() + f'wheelhouse = "{moved}"\n')
        all_cached(project.run("--json", "build", name, timeout=1800))
    finally:
        docker_cli("rmi", "-f", f"{name}:test")
