"""Every verb on the engines users run besides the suite's own (Engine 26,
classic store): Engine 20.10 and Engine 26 with the containerd image store
(tests/engine/compat.py starts them beside the first).

On each, with DOCKER_HOST pointing at it, one round trip of a copy of the
smallest catalog image (ssd-mxnet-cpu): build, smoke, inspect, push on
imagekit's own path and through the engine (pulled back into the first engine:
same config digest, same layer diff IDs), save in every format and load each
into the engine with the other image store (20.10 classic <-> 26 containerd),
then push from there, which must pass the smoke gate (the smoke test passed on
the same image, by config digest, on the first engine it ran on), and doctor
(skipped, saying so, while there is no `imagekit doctor`).

Each step is one test; a step whose input a failed step should have made is
skipped, naming that step. The registry is Debian's docker-registry as a process
on 127.0.0.1 (tests/engine/registry/regtools.py), with htpasswd auth."""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from pathlib import Path

import docker
import pytest
import requests
from compat import config_digest, diff_ids
from helpers import Project, imagekit, unique

sys.path.insert(0, str(Path(__file__).resolve().parent / "registry"))
from regtools import Registry, basic_registry  # noqa: E402

USER, PASSWORD = "imagekit-test", "pw-for-compat-tests-only-51c3"
AUTH_ENV = {"IMAGEKIT_REGISTRY_USER": USER, "IMAGEKIT_REGISTRY_PASSWORD": PASSWORD}
MANIFESTS = ", ".join(["application/vnd.docker.distribution.manifest.v2+json",
                       "application/vnd.oci.image.manifest.v1+json",
                       "application/vnd.docker.distribution.manifest.list.v2+json",
                       "application/vnd.oci.image.index.v1+json"])
CATALOG_IMAGE = "ssd-mxnet-cpu"
FORMATS = {"zip": ".zip", "zip-compat": ".zip", "tar": ".tar", "gz": ".tar.gz"}
# what each engine is, as `docker info` says and as `imagekit doctor` should say it
ENGINES = {"engine_2010": ("20.10.", "classic"), "engine_26_containerd": ("26.1.", "containerd")}
OTHER = {"engine_2010": "engine_26_containerd", "engine_26_containerd": "engine_2010"}


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    with basic_registry(tmp_path_factory.mktemp("compatreg"), USER, PASSWORD) as r:
        yield r


class Trip:
    """One engine's round trip: what each step made, for the steps after it."""

    def __init__(self, key: str, engine, other, project: Project, name: str, registry: Registry,
                 main_api):
        self.key, self.engine, self.other, self.project = key, engine, other, project
        self.name, self.ref, self.registry, self.main_api = name, f"{name}:test", registry, main_api
        self.done: dict[str, object] = {}        # step -> what it made
        self.pulled: list[str] = []              # refs pulled into the first engine

    def run(self, *args: str, engine=None, timeout: int = 600, env: dict | None = None):
        where = engine or self.engine
        started = time.monotonic()
        r = self.project.run("--json", *args, env={"DOCKER_HOST": where.url, **AUTH_ENV,
                                                   **(env or {})}, timeout=timeout)
        print(f"[{self.key}] imagekit {' '.join(args)} on {where.label}: exit {r.code} in "
              f"{time.monotonic() - started:.1f}s")
        return r

    def need(self, *steps: str):
        for step in steps:
            if step not in self.done:
                pytest.skip(f"needs the {step} step, which did not pass on {self.engine.label}")
        return [self.done[s] for s in steps]


@pytest.fixture(scope="module", params=list(ENGINES))
def trip(request, registry, docker_api, tmp_path_factory):
    engine = request.getfixturevalue(request.param)
    other = request.getfixturevalue(OTHER[request.param])
    project = Project(tmp_path_factory.mktemp("compat") / "proj")
    toml = project.root / "imagekit.toml"
    toml.write_text(toml.read_text().replace("port = 17311", "port = 17392"))
    name = unique("compat")
    project.copy(CATALOG_IMAGE, name, tags=["test"])
    r = project.run("fetch", name, timeout=1200)
    assert r.code == 0, r.output[-3000:]
    t = Trip(request.param, engine, other, project, name, registry, docker_api)
    started = time.monotonic()
    yield t
    print(f"[{t.key}] round trip took {time.monotonic() - started:.0f}s")
    for ref in t.pulled:
        try:
            docker_api.remove_image(ref, force=True)
        except docker.errors.NotFound:
            pass
    for step, path in t.done.items():        # archives a failed load left
        if step.startswith("save "):
            for f in path.parent.glob(path.name + "*"):
                f.unlink()


def _events(stdout: str) -> list[dict]:
    return [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]


def _result(r, stage: str) -> dict:
    found = [e["data"] for e in _events(r.stdout) if e.get("event") == "result"
             and e.get("stage") == stage]
    assert found, f"no {stage} result: {r.output[-2000:]}"
    return found[-1]


def _ok(r, what: str) -> None:
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    assert r.code == 0, f"{what} exit {r.code}: {r.output[-3000:]}"


def _manifest(registry: Registry, repo: str, ref: str) -> tuple[str, dict]:
    """(digest, manifest) the registry holds for repo:ref (an index: its amd64 manifest)."""
    url = f"http://{registry.host}/v2/{repo}/manifests/{ref}"
    r = requests.get(url, auth=(USER, PASSWORD), headers={"Accept": MANIFESTS}, timeout=10)
    r.raise_for_status()
    digest = "sha256:" + hashlib.sha256(r.content).hexdigest()
    assert r.headers["Docker-Content-Digest"] == digest
    body = r.json()
    if "manifests" in body:
        inner = next(m["digest"] for m in body["manifests"]
                     if (m.get("platform") or {}).get("architecture") == "amd64")
        return digest, _manifest(registry, repo, inner)[1]
    return digest, body


def _pull_into_first(trip: Trip, repo_ref: str) -> dict:
    """`docker pull` into the first engine (classic store: the ID is the config digest)."""
    for item in trip.main_api.pull(repo_ref, auth_config={"username": USER, "password": PASSWORD},
                                   stream=True, decode=True):
        assert "error" not in item, item
    trip.pulled.append(repo_ref)
    return trip.main_api.inspect_image(repo_ref)


def _check_pushed(trip: Trip, dest: dict, namespace: str) -> None:
    """The registry holds what was reported, with the source's config and layers,
    and a pull of it is the same image."""
    built = trip.done["build"]
    repo = f"{namespace}/{trip.name}"
    assert dest["ref"] == f"{trip.registry.host}/{repo}:test", dest
    digest, manifest = _manifest(trip.registry, repo, "test")
    assert dest["digest"] == digest, (dest, digest)
    assert manifest["config"]["digest"] == built["config"], \
        f"pushed config {manifest['config']['digest']}, the engine's is {built['config']}"
    assert len(manifest["layers"]) == len(built["diff_ids"])
    pulled = _pull_into_first(trip, f"{trip.registry.host}/{repo}@{digest}")
    assert pulled["Id"] == built["config"], "pulled back, the config digest differs"
    assert pulled["RootFS"]["Layers"] == built["diff_ids"], "pulled back, the layers differ"


# -- the steps, in order ------------------------------------------------------------------

def test_doctor_names_the_engine_and_its_store(trip):
    help_ = imagekit("doctor", "--help", timeout=60)
    if help_.code != 0:
        pytest.skip("imagekit doctor is not there yet (`imagekit doctor --help`: "
                    f"{(help_.stderr or help_.stdout).strip().splitlines()[-1:]})")
    r = trip.project.run("doctor", env={"DOCKER_HOST": trip.engine.url}, timeout=120)
    assert "Traceback" not in r.stderr, r.stderr[-3000:]
    out = r.output
    version, store = ENGINES[trip.key]
    server = trip.engine.info()["ServerVersion"]
    assert server.split("+")[0] in out, f"doctor does not name Engine {server}:\n{out}"
    if store == "containerd":
        assert re.search(r"containerd[- ]?(image )?store|snapshotter", out, re.I), out
    else:
        assert re.search(r"overlay2|classic", out, re.I), out
        assert "io.containerd.snapshotter" not in out, out


def test_build(trip):
    r = trip.run("build", trip.name, timeout=1200)
    _ok(r, "build")
    api = trip.engine.api()
    built = {"id": api.inspect_image(trip.ref)["Id"], "config": config_digest(trip.engine, trip.ref),
             "diff_ids": diff_ids(trip.engine, trip.ref)}
    # the premise of the identity checks: only the classic store's ID is the config digest
    assert (built["id"] == built["config"]) != trip.engine.containerd_store, built
    trip.done["build"] = built


def test_smoke(trip):
    (built,) = trip.need("build")
    r = trip.run("smoke", trip.name, timeout=900)
    _ok(r, "smoke")
    data = _result(r, "smoke")
    assert data["passed"] is True and data["error"] is None, data
    assert data["image_id"] == built["id"], (data["image_id"], built)
    assert trip.engine.api().containers(all=True) == [], "smoke left containers"
    trip.done["smoke"] = data


def test_inspect(trip):
    (built,) = trip.need("build")
    r = trip.run("inspect", trip.name, timeout=600)
    _ok(r, "inspect")
    data = _result(r, "inspect")
    assert data["image_id"] == built["id"]
    assert data["layers"] and data["total_bytes"] > 100_000_000, data["layers"]
    assert data["python_packages"].get("mxnet") == "1.9.1", data["python_packages"]


def test_push_on_imagekits_own_path(trip):
    """The default (--via auto) on the classic store; asked for on the containerd store,
    where every layer is sent as stored."""
    trip.need("build", "smoke")
    how = ["--via", "own"] if trip.engine.containerd_store else []
    r = trip.run("push", trip.name, *how, "--to", f"{trip.registry.host}/team", timeout=900)
    _ok(r, "push")
    [dest] = _result(r, "push")["destinations"]
    assert dest["via"] == "direct", f"a plain registry v2 must take imagekit's own path: {dest}"
    _check_pushed(trip, dest, "team")
    compressed = _result(r, "push")["bytes_compressed"]
    if trip.engine.containerd_store:      # every layer stored gzip'd: sent as it is
        assert compressed == 0, f"the containerd store's layers were compressed again: {compressed}"
    else:
        assert compressed > 0
    trip.done["push"] = dest


def test_push_through_the_engine(trip):
    """Asked for on the classic store; the default (--via auto) on the containerd
    store, where the engine pushes its stored layers and nothing is compressed."""
    trip.need("build", "smoke")
    how = [] if trip.engine.containerd_store else ["--via-engine"]
    r = trip.run("push", trip.name, *how, "--to", f"{trip.registry.host}/team-engine",
                 timeout=900)
    _ok(r, f"push {' '.join(how)}")
    [dest] = _result(r, "push")["destinations"]
    assert dest["via"] == "engine", dest
    if trip.engine.containerd_store:
        assert _result(r, "push")["bytes_compressed"] == 0
    _check_pushed(trip, dest, "team-engine")


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_save(trip, fmt, tmp_path_factory):
    """One archive per format, with its .sha256 and a .json naming the config digest
    (the image's identity on every store; the containerd store's image ID is not it)."""
    (built,) = trip.need("build")
    path = tmp_path_factory.mktemp("saved") / f"{trip.name}-test{FORMATS[fmt]}"
    r = trip.run("save", trip.name, f"--{fmt}", "-o", str(path), timeout=600)
    _ok(r, f"save --{fmt}")
    saved = _result(r, "save")
    assert path.is_file() and Path(saved["sha256_file"]).is_file() and \
        Path(saved["manifest_file"]).is_file(), saved
    trip.done[f"save {fmt}"] = path
    sidecar = json.loads(Path(saved["manifest_file"]).read_text())
    assert built["config"] in (sidecar.get("config_digest"), sidecar.get("image_id")), \
        f"{Path(saved['manifest_file']).name} does not name the config digest {built['config']}"


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_load_on_the_other_store(trip, fmt):
    """`imagekit load` of each archive on the engine with the other image store:
    checksum and identity checked, the image there under its tag, same config and
    layers."""
    (built, path) = trip.need("build", f"save {fmt}")
    other = trip.other
    try:
        other.api().remove_image(trip.ref, force=True)      # a previous format's load
    except docker.errors.NotFound:
        pass
    try:
        r = trip.run("load", str(path), engine=other, timeout=600)
    finally:
        for f in path.parent.glob(path.name + "*"):          # 4 formats x 2 engines: disk
            f.unlink()
    _ok(r, f"load of the --{fmt} archive on {other.label}")
    loaded = _result(r, "load")
    assert loaded["checksum"] == "verified", loaded
    assert "matches" in loaded["manifest"], loaded
    assert trip.ref in loaded["refs"] or f"docker.io/library/{trip.ref}" in loaded["refs"], loaded
    assert config_digest(other, trip.ref) == built["config"]
    assert diff_ids(other, trip.ref) == built["diff_ids"]
    assert loaded["image_id"] == other.api().inspect_image(trip.ref)["Id"], loaded
    trip.done["load"] = fmt


def test_push_from_the_other_store_passes_the_smoke_gate(trip):
    """The image loaded on the other engine is the one smoke-tested here: its push
    there passes the smoke gate with no --no-smoke-gate."""
    (built, _, fmt) = trip.need("build", "smoke", "load")
    r = trip.run("push", trip.name, "--to", f"{trip.registry.host}/team-other",
                 engine=trip.other, timeout=900)
    _ok(r, f"push on {trip.other.label} (loaded from --{fmt})")
    data = _result(r, "push")
    assert data["smoke_gate"] == "on" and data["smoke_passed"] is True, data
    [dest] = data["destinations"]
    digest, manifest = _manifest(trip.registry, f"team-other/{trip.name}", "test")
    assert dest["digest"] == digest
    assert manifest["config"]["digest"] == built["config"]


def test_a_registry_build_cache(trip, tmp_path):
    """The last step of the trip. Containerd store (BuildKit through buildx):
    `--cache-to` exports every layer's cache to a registry; with the engine's
    own build cache emptied and the image gone, `--cache-from` takes every
    step from it. Engine 20.10 (the classic builder): one line says it cannot,
    and the build goes on without it."""
    (_,) = trip.need("build")
    with Registry(tmp_path / "cachereg") as reg:
        cache = f"{reg.host}/cache"
        r = trip.run("build", trip.name, "--cache-to", cache, timeout=1200)
        _ok(r, "build --cache-to")
        warnings = [e["message"] for e in _events(r.stdout) if e["event"] == "warning"]
        if not trip.engine.containerd_store:
            assert len(warnings) == 1 and "classic builder cannot use a registry build cache" \
                in warnings[0], warnings
            return
        assert warnings == [], warnings
        tags = requests.get(f"http://{reg.host}/v2/cache/tags/list", timeout=10).json()
        assert tags["tags"] == [trip.name], tags
        api = trip.engine.api()
        api.remove_image(trip.ref, force=True)
        api._post(api._url("/build/prune"), params={"all": "true"})   # BuildKit's own cache
        r = trip.run("build", trip.name, "--cache-from", cache, timeout=1200)
        _ok(r, "build --cache-from")
        ev = _events(r.stdout)
        steps = {e["index"] for e in ev if e["event"] == "step"
                 and not e["instruction"].startswith("FROM ")}
        cached = {e["index"] for e in ev if e["event"] == "cached"}
        assert steps and cached == steps, (steps, cached)
