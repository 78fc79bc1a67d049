"""The engine itself goes away in the middle of a command: the second engine
(never the first) is stopped (SIGTERM, as `systemctl stop docker` does) or
crashes (SIGKILL) during a smoke run, a push and a build. Each time imagekit
exits with the documented code and one line (with --json: one error object),
no traceback; once the engine is back, the next imagekit command that
connects to it leaves no container or volume imagekit made, and no tag a push
or build half made, on that engine or in the registry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
import yaml
from helpers import REPO, Project, imagekit, unique

sys.path.insert(0, str(Path(__file__).resolve().parent / "registry"))
from regtools import Registry  # noqa: E402
from second_engine import free_port  # noqa: E402

SIGNALS = [pytest.param(signal.SIGTERM, id="stopped"), pytest.param(signal.SIGKILL, id="crashed")]
OWNED = {"label": ["io.imagekit.owned=true"]}


@pytest.fixture
def engine2(second_engine, remote_tf):
    """The second engine, running and holding tf_image; running again afterwards."""
    assert remote_tf.image_there == remote_tf.built.image_id, "tf_image is not on the 2nd engine"
    second_engine.ensure_running()
    yield second_engine
    second_engine.ensure_running()


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with Registry(tmp_path_factory.mktemp("faultreg")) as reg:
        yield reg


class Running:
    """An imagekit command in a subprocess; its output collected as it comes."""

    def __init__(self, project: Path, *args: str, env: dict | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "imagekit", "-C", str(project), "--json", *args], cwd=REPO,
            env={**os.environ, **(env or {})}, text=True, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE)
        self.out: list[str] = []
        self.err: list[str] = []
        self.readers = [threading.Thread(target=lambda f=f, to=to: to.extend(f), daemon=True)
                        for f, to in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for t in self.readers:
            t.start()

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode

    def said(self, event: str) -> bool:
        return any(f'"event": "{event}"' in line for line in list(self.out))

    def until(self, check, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return
            if self.proc.poll() is not None:
                self.finish()
                pytest.fail(f"imagekit ended (exit {self.returncode}) before {what}:\n"
                            f"{''.join(self.out)[-2000:]}\n{''.join(self.err)[-2000:]}")
            time.sleep(0.2)
        self.proc.kill()
        self.finish()
        pytest.fail(f"timed out waiting for {what}")

    def finish(self, timeout: float = 120) -> str:
        """Wait for the end; its stderr."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"imagekit did not end within {timeout}s after the engine went away:\n"
                        f"{''.join(self.out)[-1500:]}\n{''.join(self.err)[-1500:]}")
        for t in self.readers:
            t.join(timeout=10)
        return "".join(self.err)


def _one_error(proc: Running, err: str, problems: list[str]) -> dict:
    """The one JSON error object on stderr, its exit code the process's own."""
    lines = err.strip().splitlines()
    if "Traceback" in err or len(lines) != 1:
        problems.append(f"stderr is not one line: {err[-1500:]}")
        return {}
    try:
        obj = json.loads(lines[0])
    except ValueError:
        problems.append(f"stderr is not a JSON error object: {lines[0]}")
        return {}
    if obj.get("event") != "error" or obj.get("exit_code") != proc.returncode:
        problems.append(f"exit {proc.returncode}, error object {obj}")
    return obj


def _lost(proc: Running, err: str, url: str, problems: list[str]) -> None:
    """Exit 5 and the one line saying which engine was lost."""
    obj = _one_error(proc, err, problems)
    if proc.returncode != 5 or not obj.get("message", "").startswith(
            f"lost the Docker engine at {url}"):
        problems.append(f"expected exit 5 'lost the Docker engine at {url}…', got exit "
                        f"{proc.returncode}: {obj.get('message', err[-500:])}")


def _reconnect(url: str) -> None:
    """The next imagekit command against that engine: any that connects sweeps
    what a dead imagekit process left there; this one connects, then finds no
    image of that name (exit 2)."""
    r = imagekit("inspect", f"{unique('nothing')}:1", env={"DOCKER_HOST": url}, timeout=120)
    assert r.code == 2, r.output


def _owned(api) -> list[str]:
    cs = api.containers(all=True, filters=OWNED)
    vs = api.volumes(filters=OWNED).get("Volumes") or []
    return [f"container {c['Names'][0]} {c['Status']}" for c in cs] + \
        [f"volume {v['Name']}" for v in vs]


def _tags(api, prefix: str) -> list[str]:
    return [t for img in api.images() for t in img.get("RepoTags") or [] if t.startswith(prefix)]


@pytest.mark.parametrize("sig", SIGNALS)
def test_engine_lost_during_smoke(engine2, remote_tf, sig):
    built, api = remote_tf.built, engine2.api()

    def training() -> bool:
        return any(m.get("Destination") == "/data/data"
                   for c in api.containers(filters=OWNED) for m in c.get("Mounts") or [])

    proc = Running(built.project.root, "smoke", built.name, "--engine", engine2.url,
                   "--steps", "100000")
    proc.until(training, 240, "the training container to run on the second engine")
    engine2.stop(sig)
    err = proc.finish()
    problems: list[str] = []
    _lost(proc, err, engine2.url, problems)
    engine2.start()
    left = _owned(api)
    _reconnect(engine2.url)
    if _owned(api):
        problems.append(f"left after the next connect: {_owned(api)} (before it: {left})")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("via, sig", [
    pytest.param("direct", signal.SIGTERM, id="own-path-stopped"),
    pytest.param("engine", signal.SIGKILL, id="via-engine-crashed")])
def test_engine_lost_during_push(engine2, remote_tf, registry, via, sig):
    """imagekit's own push path is stopped while it reads the engine's export (the
    big layer is compressed before it is sent); the engine's push once it uploads."""
    built, api = remote_tf.built, engine2.api()
    spec = yaml.safe_load((built.project.root / "images" / built.name / "image.yaml").read_text())
    repository = (spec.get("push") or {}).get("repository") or built.name
    namespace = f"t{uuid.uuid4().hex[:8]}"
    repo_dir = registry.storage / "docker/registry/v2/repositories" / namespace / repository

    def under_way() -> bool:
        if via == "direct":       # the tags are made and the engine's export is being read
            return proc.said("progress")
        uploads = repo_dir / "_uploads"
        return uploads.is_dir() and any(uploads.iterdir())

    proc = Running(built.project.root, "push", built.name, "--to", f"{registry.host}/{namespace}",
                   "--no-smoke-gate", "--retries", "0", *(["--via-engine"] if via == "engine" else []),
                   env={"DOCKER_HOST": engine2.url})
    proc.until(under_way, 120, "the push to be under way")
    engine2.stop(sig)
    err = proc.finish()
    problems: list[str] = []
    _lost(proc, err, engine2.url, problems)
    engine2.start()
    _reconnect(engine2.url)
    made = _tags(api, f"{registry.host}/")
    if made:
        problems.append(f"tags made for the push are left on the engine: {made}")
        for ref in made:
            api.remove_image(ref)
    tags = requests.get(f"http://{registry.host}/v2/{namespace}/{repository}/tags/list", timeout=10)
    if tags.status_code != 404 and tags.json().get("tags"):
        problems.append(f"the registry shows a tag: {tags.text}")
    if _owned(api):
        problems.append(f"left after the next connect: {_owned(api)}")
    assert not problems, "\n".join(problems)


@pytest.fixture(scope="module")
def base_on_engine2(second_engine, base_image):
    """The bootstrapped base on the second engine (a root image builds FROM it)."""
    second_engine.ensure_running().load_from_first(base_image)
    return base_image


@pytest.mark.parametrize("sig,builder", [
    pytest.param(signal.SIGTERM, "classic", id="stopped-classic"),
    pytest.param(signal.SIGKILL, "classic", id="crashed-classic"),
    pytest.param(signal.SIGKILL, "buildkit", id="crashed-buildkit")])
def test_engine_lost_during_build(engine2, base_on_engine2, tf_image, tmp_path, sig, builder):
    """A root image (the TensorFlow spec plus an apt package) built on the second
    engine, which holds its base: the engine goes away during its first RUN step
    (the classic builder's container; BuildKit's process for that step)."""
    project = Project(tmp_path / "proj")
    toml = project.root / "imagekit.toml"
    toml.write_text(toml.read_text().replace("port = 17311", f"port = {free_port()}"))
    name = unique("faultbuild")
    project.copy("ocr-cpu", name, tags=["test"], apt=["file"])
    api = engine2.api()

    def step_running() -> bool:
        if builder == "classic":
            return bool(api.containers())
        return subprocess.run(["pgrep", "-f", "install -y --no-install-recommends file"],
                              capture_output=True).returncode == 0

    proc = Running(project.root, "build", name, "--builder", builder,
                   env={"DOCKER_HOST": engine2.url})
    proc.until(step_running, 300, "a build step to run on the second engine")
    time.sleep(1)
    engine2.stop(sig)
    err = proc.finish()
    problems: list[str] = []
    obj = _one_error(proc, err, problems)
    if proc.returncode not in (5, 6):
        problems.append(f"exit {proc.returncode}, not 5 or 6: {obj}")
    engine2.start()
    _reconnect(engine2.url)
    if _tags(api, f"{name}:"):
        problems.append(f"the build's tag is left: {_tags(api, f'{name}:')}")
    left = api.containers(all=True)
    if left:
        problems.append(f"build containers are left: {[(c['Names'], c['Status']) for c in left]}")
        for c in left:
            api.remove_container(c["Id"], force=True)
    if _owned(api):
        problems.append(f"left after the next connect: {_owned(api)}")
    print(f"exit {proc.returncode}: {obj.get('message')}")
    assert not problems, "\n".join(problems)
