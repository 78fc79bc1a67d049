"""Credentials are bound to the registry hosts they were given for: a real push
(imagekit's own path, and through the engine) to a listener on 127.0.0.1 that
answers 401 with a Basic challenge and records every Authorization header.
Credentials reach it only when it was named for them (--to on the same command
line, or IMAGEKIT_REGISTRY); a host named by a spec's push.registries never gets
them. The secret is never printed."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import threading
import uuid

import pytest
from auth_listener import AuthListener
from helpers import REPO, Project, unique

PATHS = [pytest.param([], id="own-path"), pytest.param(["--via-engine"], id="via-engine")]


@pytest.fixture(scope="module")
def listener():
    with AuthListener() as lst:
        yield lst


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, docker_api, listener):
    """A one-file image made with `docker import` (no base needed) and a spec for
    it whose push.registries names the listener."""
    name = unique("ikcred")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = uuid.uuid4().hex.encode() * 64
        info = tarfile.TarInfo("payload.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    docker_api.import_image_from_data(buf.getvalue(), repository=name, tag="test")
    project = Project(tmp_path_factory.mktemp("creds") / "proj")
    (project.root / "imagekit.toml").write_text("[bases]\n")
    project.add(name, {"framework": {"name": "pytorch", "version": "2.13.0"}, "tags": ["test"],
                       "push": {"repository": name.replace("-", "_"),
                                "registries": [f"{listener.host}/team"]}})
    yield project, name
    for img in docker_api.images(name=name) + docker_api.images(name=f"{listener.host}/team/*"):
        for ref in img.get("RepoTags") or []:
            docker_api.remove_image(ref, force=True)


def _push(tiny, listener, tmp_path, *args, env=None, input=None):
    project, name = tiny
    listener.clear()
    env = {"DOCKER_CONFIG": str(tmp_path / "no-docker-config"), "IMAGEKIT_REGISTRY": "",
           "IMAGEKIT_REGISTRY_USER": "", "IMAGEKIT_REGISTRY_PASSWORD": "", **(env or {})}
    return project.run("--json", "push", name, "--no-smoke-gate", "--retries", "0", *args,
                       env=env, input=input, timeout=180)


def _refused(r, secret: str) -> dict:
    """Exit 11 (or 10), one JSON error line, the secret nowhere."""
    assert secret not in r.stdout and secret not in r.stderr
    assert "Traceback" not in r.stderr
    [line] = r.stderr.strip().splitlines()
    err = json.loads(line)
    assert r.code in (10, 11) and err["exit_code"] == r.code, err
    return err


@pytest.mark.parametrize("via", PATHS)
def test_env_credentials_never_reach_a_host_the_spec_names(tiny, listener, tmp_path, via):
    secret = f"env-secret-{uuid.uuid4().hex}"
    r = _push(tiny, listener, tmp_path, *via,
              env={"IMAGEKIT_REGISTRY_USER": "ci-bot", "IMAGEKIT_REGISTRY_PASSWORD": secret})
    _refused(r, secret)
    assert listener.seen, "the push never reached the listener"
    assert listener.authorizations() == []
    assert not [s for s in listener.seen if s.method in ("PUT", "PATCH")], listener.seen
    warned = [json.loads(x)["message"] for x in r.stdout.splitlines() if '"warn' in x]
    assert any("not sent to" in w and listener.host in w for w in warned), warned


def _push_until_authorized(tiny, listener, tmp_path, *args, env=None, input=None):
    """A push that should hand the listener credentials. The engine retries an
    upload refused with 401 for about a minute once it has sent them, so a push
    still running when they arrived is stopped with Ctrl-C (SIGINT)."""
    project, name = tiny
    listener.clear()
    env = {**os.environ, "DOCKER_CONFIG": str(tmp_path / "no-docker-config"),
           "IMAGEKIT_REGISTRY": "", "IMAGEKIT_REGISTRY_USER": "", "IMAGEKIT_REGISTRY_PASSWORD": "",
           **(env or {})}
    proc = subprocess.Popen([sys.executable, "-m", "imagekit", "-C", str(project.root), "--json",
                             "push", name, "--no-smoke-gate", "--retries", "0", *args],
                            cwd=REPO, env=env, text=True, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    result: dict = {}
    talk = threading.Thread(target=lambda: result.update(
        zip(("out", "err"), proc.communicate(input=input, timeout=120), strict=True)),
        daemon=True)
    talk.start()
    arrived = listener.wait_for_authorization(60)
    try:
        proc.wait(timeout=2)           # imagekit's own path ends by itself at once
    except subprocess.TimeoutExpired:
        pass
    interrupted = proc.poll() is None
    if interrupted:
        proc.send_signal(signal.SIGINT)
    talk.join(timeout=130)
    return arrived, interrupted, proc.returncode, result.get("out", ""), result.get("err", "")


def _ended(code: int, out: str, err: str, interrupted: bool, secret: str) -> None:
    """Refused (11), or interrupted (130) after the credentials arrived; one JSON
    error line either way, and the secret nowhere."""
    assert secret not in out and secret not in err
    assert "Traceback" not in err
    [line] = err.strip().splitlines()
    obj = json.loads(line)
    assert code == (130 if interrupted else 11) and obj["exit_code"] == code, obj


@pytest.mark.parametrize("via", PATHS)
def test_command_line_credentials_reach_the_to_host(tiny, listener, tmp_path, via):
    """The positive control: the listener does see credentials given for it."""
    secret = f"cli-secret-{uuid.uuid4().hex}"
    arrived, interrupted, code, out, err = _push_until_authorized(
        tiny, listener, tmp_path, *via, "--to", f"{listener.host}/team", "--username", "u",
        "--password-stdin", input=secret + "\n")
    assert arrived, (out[-1500:], err)
    assert {s.basic() for s in listener.seen if s.authorization} == {f"u:{secret}"}
    assert not [s for s in listener.seen if s.method in ("PUT", "PATCH")], listener.seen
    _ended(code, out, err, interrupted, secret)


@pytest.mark.parametrize("via", PATHS)
def test_env_credentials_reach_the_to_host(tiny, listener, tmp_path, via):
    secret = f"env-secret-{uuid.uuid4().hex}"
    arrived, interrupted, code, out, err = _push_until_authorized(
        tiny, listener, tmp_path, *via, "--to", f"{listener.host}/team",
        env={"IMAGEKIT_REGISTRY_USER": "ci-bot", "IMAGEKIT_REGISTRY_PASSWORD": secret})
    assert arrived, (out[-1500:], err)
    assert {s.basic() for s in listener.seen if s.authorization} == {f"ci-bot:{secret}"}
    _ended(code, out, err, interrupted, secret)


@pytest.mark.parametrize("via", PATHS)
def test_env_credentials_named_for_another_host_stay_there(tiny, listener, tmp_path, via):
    secret = f"env-secret-{uuid.uuid4().hex}"
    r = _push(tiny, listener, tmp_path, *via, "--to", f"{listener.host}/team",
              env={"IMAGEKIT_REGISTRY_USER": "ci-bot", "IMAGEKIT_REGISTRY_PASSWORD": secret,
                   "IMAGEKIT_REGISTRY": "other-host.example:5000"})
    _refused(r, secret)
    assert listener.seen, "the push never reached the listener"
    assert listener.authorizations() == []
