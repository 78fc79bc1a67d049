"""Publish against a real engine and real registries: push (with htpasswd auth,
retries, two registries at once, the smoke gate), save and load round trips in
every format, Ctrl-C, a full disk, damaged archives.

The registries are Debian's docker-registry (distribution 2.8) built FROM the
bootstrapped base and started by pytest-docker from registry/docker-compose.yml
under a unique compose project; `down -v --rmi local` removes them. The image
under test is a tiny one built FROM the base (a random payload makes its layer
unique); every image made here is removed at teardown."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import docker
import pytest
import requests
from helpers import REPO, Project, docker_cli, unique

from imagekit import records
from imagekit.config import load_project
from imagekit.engine import identity_of

REGISTRY_DIR = Path(__file__).resolve().parent / "registry"
# Test-only credentials, baked into the test registry's htpasswd (registry/Dockerfile).
USER, PASSWORD = "imagekit-test", "not-a-real-secret-4711"
WRONG = "wrong-password-8d1f0c"
AUTH_ENV = {"IMAGEKIT_REGISTRY_USER": USER, "IMAGEKIT_REGISTRY_PASSWORD": PASSWORD}
MANIFEST_V2 = "application/vnd.docker.distribution.manifest.v2+json"


# -- pytest-docker: Debian's docker-compose v1, our compose file, a unique project

@pytest.fixture(scope="session")
def docker_compose_command() -> str:
    return "docker-compose"


@pytest.fixture(scope="session")
def docker_compose_file() -> str:
    return str(REGISTRY_DIR / "docker-compose.yml")


@pytest.fixture(scope="session")
def docker_compose_project_name() -> str:
    return unique("ikpub").replace("-", "")


@pytest.fixture(scope="session")
def docker_setup() -> list[str]:
    return ["up --build -d"]


@pytest.fixture(scope="session")
def docker_cleanup() -> list[str]:
    return ["down -v --rmi local --remove-orphans"]


def _answers_401(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 401
    except requests.RequestException:
        return False


@pytest.fixture(scope="session")
def registries(base_image, docker_services, docker_ip, docker_compose_project_name, docker_api):
    """service -> (host:port, container id), each answering 401 on /v2/."""
    out = {}
    for service in ("registry", "registry2", "flaky"):
        port = docker_services.port_for(service, 5000)
        docker_services.wait_until_responsive(
            check=lambda p=port: _answers_401(f"http://{docker_ip}:{p}/v2/"), timeout=90, pause=0.5)
        [c] = docker_api.containers(all=True, filters={"label": [
            f"com.docker.compose.project={docker_compose_project_name}",
            f"com.docker.compose.service={service}"]})
        out[service] = (f"{docker_ip}:{port}", c["Id"])
    return out


# -- the image under test -----------------------------------------------------

class Tiny:
    def __init__(self, project: Project, name: str, image_id: str, repo: str):
        self.project, self.name, self.image_id, self.repo = project, name, image_id, repo
        self.ref = f"{name}:test"

    def run(self, *args: str, env: dict | None = None, input: str | None = None,
            timeout: int = 300):
        return self.project.run(*args, env=env, input=input, timeout=timeout)


def _build_tiny(docker_api, ref: str) -> str:
    dockerfile = ("FROM imagekit/base:bookworm\n"
                  f"RUN head -c 3000000 /dev/urandom > /opt/payload-{unique('p')}.bin\n")
    for item in docker_api.build(fileobj=io.BytesIO(dockerfile.encode()), tag=ref, rm=True,
                                 forcerm=True, decode=True):
        assert "error" not in item, item
    return docker_api.inspect_image(ref)["Id"]


def _tiny_project(tmp_path_factory, docker_api, *, smoke_passed: bool | None) -> Tiny:
    project = Project(tmp_path_factory.mktemp("publish") / "proj")
    (project.root / "imagekit.toml").write_text("[bases]\n")   # nothing is built through imagekit
    name = unique("pubtiny")
    repo = name.replace("-", "_") + "_train"
    project.add(name, {"framework": {"name": "pytorch", "version": "2.13.0"}, "tags": ["test"],
                       "push": {"repository": repo}})
    image_id = _build_tiny(docker_api, f"{name}:test")
    if smoke_passed is not None:
        key = identity_of(docker_api.inspect_image(image_id))   # what records are keyed on
        records.write(load_project(project.root), records.BuildRecord(
            key, engine_id=image_id, name=name, framework="pytorch", version="2.13.0", device="cpu",
            smoke=records.SmokeMark(smoke_passed, "written by the test")))
    return Tiny(project, name, image_id, repo)


def _remove(docker_api, image_id: str) -> None:
    try:
        docker_api.remove_image(image_id, force=True)   # every tag, the push refs too
    except docker.errors.NotFound:
        pass


@pytest.fixture(scope="session")
def tiny(base_image, tmp_path_factory, docker_api):
    """A tiny image that has passed its smoke test (a record says so)."""
    t = _tiny_project(tmp_path_factory, docker_api, smoke_passed=True)
    yield t
    _remove(docker_api, t.image_id)


@pytest.fixture(scope="session")
def tiny_to_save(base_image, tmp_path_factory, docker_api):
    """Another one for save/load, which removes and restores it."""
    t = _tiny_project(tmp_path_factory, docker_api, smoke_passed=True)
    yield t
    _remove(docker_api, t.image_id)


def _events(stdout: str) -> list[dict]:
    return [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]


def _result(stdout: str, stage: str) -> dict:
    return next(e["data"] for e in _events(stdout) if e["event"] == "result" and e["stage"] == stage)


def _one_line(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def _manifest_digest(where: str, repo: str, tag: str) -> str:
    r = requests.get(f"http://{where}/v2/{repo}/manifests/{tag}", auth=(USER, PASSWORD),
                     headers={"Accept": MANIFEST_V2}, timeout=10)
    r.raise_for_status()
    digest = "sha256:" + hashlib.sha256(r.content).hexdigest()
    assert r.headers["Docker-Content-Digest"] == digest
    return digest


def _no_secret(text: str, *secrets: str) -> None:
    for s in secrets:
        assert s not in text


def _files_hold(root: Path, secret: str) -> list[str]:
    return [str(p) for p in root.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()]


# -- push -----------------------------------------------------------------------

def test_push_then_pull_back_by_digest(tiny, registries, docker_api):
    where, _ = registries["registry"]
    r = tiny.run("--json", "push", tiny.name, "--to", f"{where}/team", env=AUTH_ENV)
    assert r.code == 0, r.output[-3000:]
    [dest] = _result(r.stdout, "push")["destinations"]
    repo = f"{where}/team/{tiny.repo}"
    assert dest["ref"] == f"{repo}:test" and dest["digest"].startswith("sha256:")
    # the registry itself holds that manifest under the tag
    assert _manifest_digest(where, f"team/{tiny.repo}", "test") == dest["digest"]
    # pull back by digest (the push ref is dropped first, so the pull must resolve it)
    docker_api.remove_image(f"{repo}:test")
    for item in docker_api.pull(f"{repo}@{dest['digest']}", auth_config={
            "username": USER, "password": PASSWORD}, stream=True, decode=True):
        assert "error" not in item, item
    pulled = docker_api.inspect_image(f"{repo}@{dest['digest']}")
    assert pulled["Id"] == tiny.image_id
    assert f"{repo}@{dest['digest']}" in pulled["RepoDigests"]
    _no_secret(r.output, PASSWORD)
    assert _files_hold(tiny.project.root, PASSWORD) == []


def _auth_failures(docker_api, cid: str) -> int:
    return docker_api.logs(cid).decode(errors="replace").count("error authenticating user")


def test_wrong_password_is_one_line_one_attempt_and_never_shown(tiny, registries, docker_api):
    where, cid = registries["registry"]
    before = _auth_failures(docker_api, cid)
    r = tiny.run("--json", "push", tiny.name, "--to", f"{where}/team", "--username", USER,
                 "--password-stdin", input=WRONG + "\n")
    assert r.code == 11, r.output[-3000:]
    line = _one_line(r.stderr)
    assert "authentication failed" in line and "not retried" in line
    events = _events(r.stdout)
    assert not [e for e in events if e["event"] == "warning" and "retrying" in e["message"]]
    assert not [e for e in events if e["event"] == "result"]
    # one attempt: the engine asks once per layer (2 layers, a HEAD and a POST each);
    # a retry storm would multiply this
    failures = _auth_failures(docker_api, cid) - before
    assert 1 <= failures <= 6, failures
    _no_secret(r.output, WRONG, PASSWORD)
    _no_secret(docker_api.logs(cid).decode(errors="replace"), WRONG)
    assert _files_hold(tiny.project.root, WRONG) == []


def test_smoke_gate_refuses_an_untested_image(base_image, tmp_path_factory, registries, docker_api):
    untested = _tiny_project(tmp_path_factory, docker_api, smoke_passed=None)
    try:
        where, _ = registries["registry"]
        r = untested.run("push", untested.name, "--to", f"{where}/team", env=AUTH_ENV)
        assert r.code == 12, r.output
        assert "has not passed its smoke test" in _one_line(r.stderr)
        assert docker_api.images(name=f"{where}/team/{untested.repo}") == []   # not even retagged
        r = untested.run("push", untested.name, "--to", f"{where}/team", "--no-smoke-gate",
                         env=AUTH_ENV)
        assert r.code == 0, r.output[-3000:]
        assert "smoke gate off (--no-smoke-gate)" in r.stdout
    finally:
        _remove(docker_api, untested.image_id)


def test_registry_stopped_mid_push_retries_then_fails(tiny, registries, docker_api):
    where, cid = registries["flaky"]
    cmd = [sys.executable, "-m", "imagekit", "-C", str(tiny.project.root), "--json", "push",
           tiny.name, "--to", f"{where}/team", "--retries", "2"]
    p = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, **AUTH_ENV}, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    stderr: list[str] = []
    reader = threading.Thread(target=lambda: stderr.append(p.stderr.read()), daemon=True)
    reader.start()
    events, killed = [], False
    try:
        for line in p.stdout:
            if not line.startswith("{"):
                continue
            ev = json.loads(line)
            events.append(ev)
            if not killed and ev["event"] == "progress" and ev["status"] == "Pushing":
                docker_api.kill(cid)   # the registry dies in the middle of a layer upload
                killed = True
        code = p.wait(timeout=240)
    finally:
        if p.poll() is None:
            p.kill()
    reader.join(timeout=10)
    assert killed, "the push never started uploading"
    assert code == 10, "".join(stderr)
    line = _one_line("".join(stderr))
    # the push as a whole once more; that try's registry check retried by itself (with
    # backoff) and failed, and is not tried again around it
    assert "push failed after 2 attempts" in line and "connection refused" in line
    retries = [e for e in events if e["event"] == "warning" and " attempt " in e["message"]
               and "retrying in" in e["message"]]
    assert len(retries) == 1, [e["message"] for e in retries]
    checks = [e for e in events if e["event"] == "warning" and "registry check failed" in
              e["message"]]
    assert len(checks) == 2, [e["message"] for e in checks]     # --retries 2
    assert not [e for e in events if e["event"] == "result"]
    assert not [e for e in events if e["event"] == "info" and "pushed " in e["message"]]


def test_a_retagged_image_is_smoked_and_pushed_by_its_reference(mxnet_image, child_of, registries,
                                                                docker_api):
    """Seed 000's user: a training image known only by some other reference
    (`docker tag`, then `docker rmi` of the catalog tag) is smoke-tested from its
    labels and pushed into a namespace, the gate going by image ID."""
    built = child_of(mxnet_image, "retag", {"description": "retagged by the test"})
    other = f"some/{unique('other')}:ref"
    assert docker_cli("tag", built.ref, other).returncode == 0
    assert docker_cli("rmi", built.ref).returncode == 0
    try:
        r = built.project.run("--json", "smoke", other, timeout=600)
        assert r.code == 0, r.output[-3000:]
        smoke = _result(r.stdout, "smoke")
        assert smoke["passed"] and smoke["framework_check"]["framework"] == "mxnet", smoke
        where, _ = registries["registry"]
        r = built.project.run("--json", "push", other, "--to", f"{where}/team", env=AUTH_ENV,
                              timeout=600)
        assert r.code == 0, r.output[-3000:]
        [dest] = _result(r.stdout, "push")["destinations"]
        repo = other.split(":")[0].split("/")[-1]
        assert dest["ref"] == f"{where}/team/{repo}:ref", dest
        assert _manifest_digest(where, f"team/{repo}", "ref") == dest["digest"]
        # a reference the engine does not hold: one line naming the pull to run
        missing = f"some/{unique('never-pulled')}:1"
        for verb in ("smoke", "push"):
            r = built.project.run(verb, missing)
            assert r.code == 2, r.output
            assert f"docker pull {missing}" in _one_line(r.stderr)
    finally:
        _remove(docker_api, built.image_id)


def test_push_to_two_registries_at_once(tiny, registries):
    (a, _), (b, _) = registries["registry"], registries["registry2"]
    r = tiny.run("--json", "push", tiny.name, "--to", f"{a}/one", "--to", f"{b}/two/deep",
                 "--tag", "both", env=AUTH_ENV)
    assert r.code == 0, r.output[-3000:]
    dests = _result(r.stdout, "push")["destinations"]
    assert [d["ref"] for d in dests] == [f"{a}/one/{tiny.repo}:both", f"{b}/two/deep/{tiny.repo}:both"]
    assert _manifest_digest(a, f"one/{tiny.repo}", "both") == dests[0]["digest"]
    assert _manifest_digest(b, f"two/deep/{tiny.repo}", "both") == dests[1]["digest"]
    # both were under way together: each had shown progress before either finished
    events = _events(r.stdout)
    first_done = next(i for i, e in enumerate(events)
                      if e["event"] == "info" and e["message"].startswith("pushed "))
    started = {e["item"].split()[0] for e in events[:first_done]
               if e["event"] == "progress" and e["status"] != "compressing"}
    assert started == {f"{a}/one", f"{b}/two/deep"}


def test_credentials_from_the_docker_config_file(tiny, registries, tmp_path):
    import base64
    where, _ = registries["registry2"]
    token = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {where: {"auth": token}}}))
    r = tiny.run("--json", "push", tiny.name, "--to", f"{where}/fromconfig",
                 env={"DOCKER_CONFIG": str(tmp_path)})
    assert r.code == 0, r.output[-3000:]
    [dest] = _result(r.stdout, "push")["destinations"]
    assert _manifest_digest(where, f"fromconfig/{tiny.repo}", "test") == dest["digest"]
    _no_secret(r.output, PASSWORD, token)


# -- save / load -----------------------------------------------------------------

@pytest.mark.parametrize("fmt,ext", [("zip", "zip"), ("zip-compat", "zip"), ("tar", "tar"),
                                     ("gz", "tar.gz")])
def test_save_rmi_load_round_trip(tiny_to_save, tmp_path, docker_api, fmt, ext):
    t = tiny_to_save
    out = tmp_path / f"{t.name}.{ext}"
    r = t.run("--json", "save", t.name, f"--{fmt}", "-o", str(out))
    assert r.code == 0, r.output[-3000:]
    res = _result(r.stdout, "save")
    assert res["image_id"] == t.image_id and res["bytes"] == out.stat().st_size
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [out.name, out.name + ".sha256", out.name + ".json"])
    assert subprocess.run(["sha256sum", "-c", out.name + ".sha256"], cwd=tmp_path,
                          capture_output=True).returncode == 0
    manifest = json.loads((tmp_path / (out.name + ".json")).read_text())
    assert manifest["image_id"] == t.image_id and manifest["tags"] == [t.ref]
    assert manifest["smoke"]["passed"] is True and manifest["framework"] == "pytorch"
    if fmt == "zip":
        with zipfile.ZipFile(out) as zf:
            assert zf.testzip() is None and zf.namelist() == [f"{t.name}-test.tar"]
        if Path("/usr/bin/unzip").exists():
            u = subprocess.run(["unzip", "-t", str(out)], capture_output=True, text=True)
            assert u.returncode == 0 and "No errors detected" in u.stdout, u.stdout + u.stderr
    elif fmt == "zip-compat":
        assert out.read_bytes()[257:262] == b"ustar"   # what `docker save -o x.zip` makes

    docker_api.remove_image(t.image_id, force=True)
    assert docker_api.images(name=t.name) == []
    if fmt == "zip-compat":   # the platform's way: plain `docker load -i`
        d = docker_cli("load", "-i", str(out))
        assert d.returncode == 0, d.stderr
    else:
        r = t.run("--json", "load", str(out))
        assert r.code == 0, r.output[-3000:]
        res = _result(r.stdout, "load")
        assert res["refs"] == [t.ref] and res["image_id"] == t.image_id
        assert res["checksum"] == "verified" and res["manifest"] == "config digest matches"
    assert docker_api.inspect_image(t.ref)["Id"] == t.image_id


def test_interrupted_save_leaves_nothing(mxnet_image, tmp_path):
    """Ctrl-C in the middle of the stream (a 470 MB image, so there is a middle)."""
    t = mxnet_image
    out = tmp_path / "x.zip"
    cmd = [sys.executable, "-m", "imagekit", "-C", str(t.project.root), "--json", "save", t.name,
           "--zip", "-o", str(out)]
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stdout:
            if line.startswith("{") and json.loads(line)["event"] == "progress":
                p.send_signal(signal.SIGINT)
                break
        p.stdout.read()
        code = p.wait(timeout=60)
        stderr = p.stderr.read()
    finally:
        if p.poll() is None:
            p.kill()
    assert code == 130, stderr
    assert "interrupted" in _one_line(stderr)
    assert list(tmp_path.iterdir()) == []


def test_full_disk_is_exit_15_and_leaves_nothing(tiny_to_save, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    m = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)
    if m.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {m.stderr.strip()}")
    try:
        r = tiny_to_save.run("save", tiny_to_save.name, "--gz", "-o", str(mnt / "x.tar.gz"))
        assert r.code == 15, r.output[-2000:]
        assert "disk full" in _one_line(r.stderr)
        assert list(mnt.iterdir()) == []
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.fixture(scope="module")
def saved(tiny_to_save, tmp_path_factory):
    """One real ZIP and one tar of the save image, to damage."""
    d = tmp_path_factory.mktemp("damage")
    out = {}
    for fmt, name in (("zip", "x.zip"), ("tar", "x.tar")):
        r = tiny_to_save.run("save", tiny_to_save.name, f"--{fmt}", "-o", str(d / name))
        assert r.code == 0, r.output[-2000:]
        out[fmt] = d / name
    return out


def _damaged(src: Path, dst: Path, how: str, sidecar: bool) -> Path:
    data = src.read_bytes()
    if how == "truncate":
        data = data[: len(data) // 2]
    else:   # flip bytes late in the archive: in the image's own (last) layer
        b = bytearray(data)
        at = len(b) - len(b) // 20
        for i in range(at, at + 256):
            b[i] ^= 0xA5
        data = bytes(b)
    dst.write_bytes(data)
    if sidecar:
        for ext in (".sha256", ".json"):
            text = src.with_name(src.name + ext).read_text().replace(src.name, dst.name)
            dst.with_name(dst.name + ext).write_text(text)
    return dst


@pytest.mark.parametrize("fmt,how,sidecar,words", [
    ("zip", "truncate", False, "not a complete ZIP archive"),
    ("zip", "corrupt", False, "corrupt"),
    ("zip", "corrupt", True, "checksum mismatch"),
    ("tar", "truncate", False, "unexpected EOF"),
    ("tar", "truncate", True, "checksum mismatch"),
])
def test_damaged_archive_is_refused_at_load(saved, tiny_to_save, tmp_path, docker_api, fmt, how,
                                            sidecar, words):
    bad = _damaged(saved[fmt], tmp_path / f"bad.{fmt}", how, sidecar)
    r = tiny_to_save.run("load", str(bad))
    assert r.code == 14, r.output[-2000:]
    assert words in _one_line(r.stderr)
