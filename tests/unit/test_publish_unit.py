"""Push, save and load against fake engines (no Docker): reading the whole push
stream, retries and the auth rule, the smoke gate, destinations and
credentials; every archive format written and read back, nothing left behind
on failure, disk full, Ctrl-C; corrupt and truncated archives refused."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import subprocess
import tarfile
import threading
import zipfile
from pathlib import Path

import pytest
from helpers import imagekit

from imagekit import push as push_stage
from imagekit import save as save_stage
from imagekit.build import update_record
from imagekit.config import load_project
from imagekit.display import Display
from imagekit.engine import EngineError
from imagekit.errors import (
    AuthError,
    DiskFullError,
    Interrupted,
    LoadError,
    PushError,
    SaveError,
    SmokeGateError,
)
from imagekit.events import Info, Progress, Result, Warn

IMAGE_ID = "sha256:" + "ab" * 32
DIGEST = "sha256:" + "cd" * 32
SECRET = "s3cret-Passw0rd"


def _tar_bytes(size: int = 300_000) -> bytes:
    """A tar shaped like `docker save` output (contents do not matter here)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in [("manifest.json", b'[{"RepoTags": ["x:v1"]}]'),
                           ("layer/layer.tar", bytes(range(256)) * (size // 256))]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


TAR = _tar_bytes()


class FakeEngine:
    def __init__(self, pushes=None, held=DIGEST, export=TAR, chunk=65536, fail_after=None,
                 auth=None):
        self.pushes = pushes or {}
        self.attempts: dict[str, int] = {}
        self.held = held
        self.export, self.chunk, self.fail_after = export, chunk, fail_after
        self.tagged = []
        self.auth = auth
        self.loaded = b""
        self.lock = threading.Lock()
        self.barrier: threading.Barrier | None = None

    def image(self, ref):
        return {"Id": IMAGE_ID, "Size": len(self.export)} if ref == "x:v1" else None

    def tag(self, image, repo, tag):
        self.tagged.append((image, repo, tag))

    def registry_auth(self, registry):
        return self.auth

    def push(self, repo, tag, auth):
        with self.lock:
            n = self.attempts[repo] = self.attempts.get(repo, 0) + 1
        if self.barrier is not None:
            self.barrier.wait()
        streams = self.pushes.get(repo.split("/")[0])
        stream = streams[min(n, len(streams)) - 1]
        yield from stream

    def distribution_digest(self, ref, auth):
        return self.held

    def save(self, ref, chunk_size=0):
        for i in range(0, len(self.export), self.chunk):
            if self.fail_after is not None and i >= self.fail_after:
                raise self.fail_with
            yield self.export[i:i + self.chunk]

    fail_with: BaseException = EngineError("export of x:v1 broke off: connection reset")

    def load(self, data):
        for block in data:
            self.loaded += block
        yield {"stream": "Loaded image: x:v1\n"}


def ok_stream(layer="l1"):
    return [{"status": "The push refers to repository [r]"},
            {"status": "Preparing", "progressDetail": {}, "id": layer},
            {"status": "Pushing", "progressDetail": {"current": 10, "total": 20}, "id": layer},
            {"status": "Pushed", "progressDetail": {}, "id": layer},
            {"status": "v1: digest: " + DIGEST + " size: 740"},
            {"progressDetail": {}, "aux": {"Tag": "v1", "Digest": DIGEST, "Size": 740}}]


def err_stream(message):
    return [{"status": "Preparing", "progressDetail": {}, "id": "l1"},
            {"errorDetail": {"message": message}, "error": message}]


@pytest.fixture
def proj(project):
    project.root.joinpath("imagekit.toml").write_text("[bases]\n")
    project.add("x", {"framework": {"name": "pytorch", "version": "2.13.0"}, "tags": ["v1"],
                      "push": {"repository": "x_train", "registries": ["reg.example.com/team"]}})
    return load_project(project.root)


@pytest.fixture
def passed(proj):
    update_record(proj, IMAGE_ID, name="x", smoke={"passed": True})
    return proj


@pytest.fixture
def out_dir(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d


def _push(p, engine, **kw):
    kw.setdefault("sleep", lambda s: None)
    return list(push_stage.push(p, "x", engine, **kw))


# -- push -------------------------------------------------------------------

@pytest.mark.parametrize("message,kind", [
    ("unauthorized: authentication required", "auth"),
    ("denied: requested access to the resource is denied", "auth"),
    ("no basic auth credentials", "auth"),
    ("dial tcp 127.0.0.1:5000: connect: connection refused", "transient"),
    ("read tcp 1.2.3.4:5->6.7.8.9:443: read: connection reset by peer", "transient"),
    ('Put "http://127.0.0.1:5000/v2/x/blobs/uploads/": EOF', "transient"),
    ("received unexpected HTTP status: 502 Bad Gateway", "transient"),
    ("received unexpected HTTP status: 503 Service Unavailable", "transient"),
    ("manifest invalid: manifest invalid", "fatal"),
    ("An image does not exist locally with the tag: 127.0.0.1:5000/x", "fatal"),
    ("name unknown: repository name not known to registry 127.0.0.1:5000", "fatal"),
])
def test_classify(message, kind):
    assert push_stage.classify(message) == kind


def test_destinations_parse_and_refuse():
    d = push_stage.destination("registry.example.com/myteam/", "ocr_gpu_train", "v1.0")
    assert d.ref == "registry.example.com/myteam/ocr_gpu_train:v1.0"
    assert push_stage.destination("localhost:5000", "r", "t").ref == "localhost:5000/r:t"
    assert push_stage.destination("127.0.0.1:5000/a/b", "r", "t").repo == "127.0.0.1:5000/a/b/r"
    for bad in ["myteam", "https://registry.example.com/team", "reg.example.com/Team",
                "reg.example.com/te am"]:
        with pytest.raises(PushError):
            push_stage.destination(bad, "r", "t")
    with pytest.raises(PushError):
        push_stage.destination("localhost:5000/t", "r", "-bad")


def test_credentials_order_and_secrecy():
    env = {"IMAGEKIT_REGISTRY_USER": "envuser", "IMAGEKIT_REGISTRY_PASSWORD": "envpw"}
    c = push_stage.credentials("me", SECRET, environ=env)
    assert c.username == "me" and c.source == "--username/--password-stdin"
    assert SECRET not in repr(c)
    assert push_stage.credentials(environ=env).username == "envuser"
    assert push_stage.credentials(environ={}) is None
    with pytest.raises(AuthError, match="IMAGEKIT_REGISTRY_PASSWORD"):
        push_stage.credentials(environ={"IMAGEKIT_REGISTRY_USER": "u"})
    with pytest.raises(AuthError):
        push_stage.credentials("me", "", environ={})


def test_push_reports_registry_digest(passed):
    eng = FakeEngine({"reg.example.com": [ok_stream()]})
    events = _push(passed, eng)
    res = events[-1]
    assert isinstance(res, Result) and res.stage == "push"
    dest = res.data["destinations"][0]
    assert dest["ref"] == "reg.example.com/team/x_train:v1" and dest["digest"] == DIGEST
    assert dest["pinned"] == f"reg.example.com/team/x_train@{DIGEST}"
    assert eng.tagged == [(IMAGE_ID, "reg.example.com/team/x_train", "v1")]
    assert any(isinstance(e, Progress) and e.status == "Pushing" and e.total == 20 for e in events)
    json.dumps(res.to_dict())


def test_error_event_fails_push_even_though_the_stream_ended_normally(passed):
    # docker-py returns the stream and never raises: the error is an item in it
    eng = FakeEngine({"reg.example.com": [err_stream("manifest invalid: manifest invalid")]})
    with pytest.raises(PushError, match="manifest invalid") as e:
        _push(passed, eng)
    assert type(e.value) is PushError and eng.attempts == {"reg.example.com/team/x_train": 1}


def test_digest_must_match_the_registry(passed):
    eng = FakeEngine({"reg.example.com": [ok_stream()]}, held="sha256:" + "ee" * 32)
    with pytest.raises(PushError, match="registry holds"):
        _push(passed, eng, retries=0)


def test_transient_failure_is_retried_with_backoff(passed):
    eng = FakeEngine({"reg.example.com": [err_stream("connection reset by peer"), ok_stream()]})
    waits = []
    events = _push(passed, eng, sleep=waits.append, backoff=2.0)
    assert isinstance(events[-1], Result) and events[-1].data["destinations"][0]["attempts"] == 2
    assert waits == [2.0]
    assert any(isinstance(e, Warn) and "attempt 1 of 4 failed" in e.message for e in events)


def test_dead_registry_gives_up_and_reports_nothing_pushed(passed):
    dead = err_stream("dial tcp 127.0.0.1:5000: connect: connection refused")
    eng = FakeEngine({"reg.example.com": [dead]})
    waits = []
    seen = []
    with pytest.raises(PushError, match="after 3 attempts") as e:
        for ev in push_stage.push(passed, "x", eng, retries=2, backoff=1.0, sleep=waits.append):
            seen.append(ev)
    assert e.value.exit_code == 10 and waits == [1.0, 2.0]
    assert not [ev for ev in seen if isinstance(ev, Result)]
    assert not [ev for ev in seen if isinstance(ev, Info) and "pushed " in ev.message]


def test_auth_failure_is_never_retried_and_never_shows_the_password(passed):
    echo = f"unauthorized: authentication required (user me, password {SECRET})"
    eng = FakeEngine({"reg.example.com": [err_stream(echo)] * 5})
    creds = push_stage.Credentials("me", SECRET, "--username/--password-stdin")
    with pytest.raises(AuthError) as e:
        _push(passed, eng, creds=creds, retries=5)
    assert e.value.exit_code == 11 and eng.attempts == {"reg.example.com/team/x_train": 1}
    assert SECRET not in e.value.message and "not retried" in e.value.message
    assert "--username/--password-stdin" in e.value.message


def test_no_credentials_found_says_where_to_put_them(passed):
    eng = FakeEngine({"reg.example.com": [err_stream("no basic auth credentials")]})
    with pytest.raises(AuthError, match="no credentials found for reg.example.com"):
        _push(passed, eng)


def test_smoke_gate(proj):
    eng = FakeEngine({"reg.example.com": [ok_stream()]})
    with pytest.raises(SmokeGateError) as e:
        _push(proj, eng)
    assert e.value.exit_code == 12 and "--no-smoke-gate" in e.value.message
    assert eng.attempts == {} and eng.tagged == []
    events = _push(proj, eng, smoke_gate=False)
    warns = [e for e in events if isinstance(e, Warn)]
    assert warns and "--no-smoke-gate" in warns[0].message and "NOT passed" in warns[0].message
    assert events[-1].data["smoke_gate"] == "off"


def test_two_registries_are_pushed_at_once(passed):
    eng = FakeEngine({"a.example.com": [ok_stream("la")], "b.example.com:5000": [ok_stream("lb")]})
    eng.barrier = threading.Barrier(2, timeout=10)   # deadlocks unless both pushes run together
    events = _push(passed, eng, to=["a.example.com/t1", "b.example.com:5000/t2"])
    dests = events[-1].data["destinations"]
    assert [d["ref"] for d in dests] == ["a.example.com/t1/x_train:v1",
                                         "b.example.com:5000/t2/x_train:v1"]
    assert all(d["digest"] == DIGEST for d in dests)


def test_one_of_two_failing_names_both_outcomes(passed):
    eng = FakeEngine({"a.example.com": [ok_stream()],
                      "b.example.com": [err_stream("unauthorized: authentication required")]})
    with pytest.raises(AuthError) as e:
        _push(passed, eng, to=["a.example.com/t", "b.example.com/t"])
    assert "1 of 2 destinations failed" in e.value.message
    assert any("a.example.com/t/x_train:v1: pushed" in d for d in e.value.details)


def test_engine_retry_countdown_is_shown_once_per_wait(passed):
    stream = [{"status": f"Retrying in {n} seconds", "progressDetail": {}, "id": "l1"}
              for n in (5, 4, 3, 2, 1, 10, 9, 8)] + ok_stream()
    events = _push(passed, FakeEngine({"reg.example.com": [stream]}))
    shown = [e.status for e in events if isinstance(e, Progress) and "retrying" in e.status]
    assert shown == ["engine retrying in 5s", "engine retrying in 10s"]


def test_nowhere_to_push(project):
    project.root.joinpath("imagekit.toml").write_text("[bases]\n")
    project.add("x", {"framework": {"name": "pytorch", "version": "2.13.0"}, "tags": ["v1"]})
    with pytest.raises(PushError, match="nowhere to push"):
        _push(load_project(project.root), FakeEngine())


# -- save -------------------------------------------------------------------

def _save(p, eng, fmt, out, **kw):
    return list(save_stage.save(p, "x", eng, fmt=fmt, output=out, **kw))


def _leftovers(d: Path) -> list[str]:
    return sorted(x.name for x in d.iterdir())


@pytest.mark.parametrize("fmt", ["zip", "zip-compat", "tar", "gz"])
def test_save_every_format_round_trips(passed, out_dir, fmt):
    out = out_dir / f"x.{save_stage.FORMATS[fmt]}"
    update_record(passed, IMAGE_ID, framework="pytorch", version="2.13.0", device="cpu")
    events = _save(passed, FakeEngine(chunk=7000), fmt, out)
    res = events[-1]
    assert isinstance(res, Result) and res.stage == "save" and res.data["tar_bytes"] == len(TAR)
    data = out.read_bytes()
    if fmt == "zip":
        with zipfile.ZipFile(out) as zf:
            assert zf.testzip() is None and zf.namelist() == ["x-v1.tar"]
            assert zf.read("x-v1.tar") == TAR
        if Path("/usr/bin/unzip").exists():
            assert subprocess.run(["unzip", "-tq", str(out)], capture_output=True).returncode == 0
    elif fmt == "gz":
        assert gzip.decompress(data) == TAR
    else:
        assert data == TAR
    sha, man = save_stage.sidecars(out)
    assert sha.read_text() == f"{hashlib.sha256(data).hexdigest()}  {out.name}\n"
    m = json.loads(man.read_text())
    assert m["image_id"] == IMAGE_ID and m["tags"] == ["x:v1"] and m["bytes"] == len(data)
    assert m["framework"] == "pytorch" and m["device"] == "cpu" and m["smoke"]["passed"] is True
    assert _leftovers(out.parent) == sorted([out.name, sha.name, man.name])
    # and load reads it back, checking the checksum and the image ID
    eng = FakeEngine()
    events = list(save_stage.load(out, eng))
    assert eng.loaded == TAR
    assert events[-1].data["checksum"] == "verified"
    assert events[-1].data["manifest"] == "image ID matches"


def test_default_path_and_folder_output(passed, out_dir, monkeypatch):
    monkeypatch.chdir(out_dir)
    _save(passed, FakeEngine(), "gz", None)
    assert (out_dir / "x-v1.tar.gz").is_file()
    (out_dir / "d").mkdir()
    _save(passed, FakeEngine(), "zip", out_dir / "d")
    assert (out_dir / "d" / "x-v1.zip").is_file()


def test_failed_export_leaves_nothing_and_keeps_an_older_file(passed, out_dir):
    out = out_dir / "x.zip"
    out.write_bytes(b"older archive")
    eng = FakeEngine(chunk=1000, fail_after=50_000)
    with pytest.raises(SaveError, match="connection reset") as e:
        _save(passed, eng, "zip", out)
    assert e.value.exit_code == 13
    assert out.read_bytes() == b"older archive" and _leftovers(out_dir) == ["x.zip"]


def test_disk_full_is_one_line_and_leaves_nothing(passed, out_dir, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(save_stage.os, "fsync", full)
    with pytest.raises(DiskFullError) as e:
        _save(passed, FakeEngine(), "gz", out_dir / "x.tar.gz")
    assert e.value.exit_code == 15 and "disk full" in e.value.message
    assert "\n" not in e.value.message and _leftovers(out_dir) == []


def test_ctrl_c_during_export_leaves_nothing(passed, out_dir):
    eng = FakeEngine(chunk=1000, fail_after=20_000)
    eng.fail_with = KeyboardInterrupt()
    with pytest.raises(Interrupted) as e:
        _save(passed, eng, "zip", out_dir / "x.zip")
    assert e.value.exit_code == 130 and _leftovers(out_dir) == []


def test_closing_the_stage_midway_leaves_nothing(passed, out_dir, monkeypatch):
    monkeypatch.setattr(save_stage, "PROGRESS_EVERY", 0.0)
    gen = save_stage.save(passed, "x", FakeEngine(chunk=1000), fmt="zip",
                          output=out_dir / "x.zip")
    assert any(isinstance(next(gen), Progress) for _ in range(4))
    gen.close()   # what the CLI does when Ctrl-C lands in the display
    assert _leftovers(out_dir) == []


def test_save_refuses_unbuilt_image(passed, out_dir):
    with pytest.raises(SaveError, match="not built"):
        _save(passed, FakeEngine(), "zip", out_dir / "x.zip", tag="nope")
    with pytest.raises(SaveError, match="does not exist"):
        _save(passed, FakeEngine(), "zip", out_dir / "no" / "x.zip")


def test_zip64_records_are_written(passed, out_dir):
    out = out_dir / "x.zip"
    _save(passed, FakeEngine(), "zip", out)
    data = out.read_bytes()
    assert data.startswith(b"PK\x03\x04") and b"PK\x06\x06" in data and b"PK\x06\x07" in data
    with zipfile.ZipFile(out) as zf:
        info = zf.infolist()[0]
        assert info.flag_bits & 0x08 and info.file_size == len(TAR)
        assert info.external_attr >> 16 == 0o100644


# -- load -------------------------------------------------------------------

def _saved(passed, out_dir, fmt, name):
    out = out_dir / name
    _save(passed, FakeEngine(), fmt, out)
    return out


def test_checksum_mismatch_is_refused_before_loading(passed, out_dir):
    out = _saved(passed, out_dir, "tar", "x.tar")
    data = bytearray(out.read_bytes())
    data[1000] ^= 0xFF
    out.write_bytes(bytes(data))
    eng = FakeEngine()
    with pytest.raises(LoadError, match="checksum mismatch") as e:
        list(save_stage.load(out, eng))
    assert e.value.exit_code == 14 and eng.loaded == b""


@pytest.mark.parametrize("fmt,name,damage,words", [
    ("zip", "x.zip", "truncate", "not a complete ZIP"),
    ("zip", "x.zip", "flip", "corrupt"),
    ("gz", "x.tar.gz", "truncate", "truncated"),
    ("gz", "x.tar.gz", "flip", "corrupt"),
])
def test_damaged_archive_without_sidecar_is_refused(passed, out_dir, fmt, name, damage, words):
    out = _saved(passed, out_dir, fmt, name)
    for side in save_stage.sidecars(out):
        side.unlink()
    data = out.read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 2]
    else:
        b = bytearray(data)
        for i in range(len(b) // 3, len(b) // 3 + 64):
            b[i] ^= 0x5A
        data = bytes(b)
    out.write_bytes(data)
    with pytest.raises(LoadError, match=words) as e:
        list(save_stage.load(out, FakeEngine()))
    assert "\n" not in e.value.message


def test_image_id_must_match_manifest(passed, out_dir):
    out = _saved(passed, out_dir, "zip", "x.zip")
    man = save_stage.sidecars(out)[1]
    m = json.loads(man.read_text())
    m["image_id"] = "sha256:" + "99" * 32
    man.write_text(json.dumps(m))
    with pytest.raises(LoadError, match="says sha256:9999"):
        list(save_stage.load(out, FakeEngine()))


def test_not_an_archive(out_dir):
    f = out_dir / "x.zip"
    f.write_bytes(b"hello, this is not an image" * 40)
    with pytest.raises(LoadError, match="not an image archive"):
        list(save_stage.load(f, FakeEngine()))
    with pytest.raises(LoadError, match="no such file"):
        list(save_stage.load(out_dir / "missing.zip", FakeEngine()))


def test_engine_error_in_load_stream(out_dir):
    f = out_dir / "x.tar"
    f.write_bytes(TAR)

    class Refuses(FakeEngine):
        def load(self, data):
            for _ in data:
                pass
            yield {"errorDetail": {"message": "unexpected EOF"}, "error": "unexpected EOF"}
    with pytest.raises(LoadError, match="the engine refused the archive: unexpected EOF"):
        list(save_stage.load(f, Refuses()))


# -- display and CLI ----------------------------------------------------------

def test_plain_display_of_publish_results(capsys, passed, out_dir):
    push_events = _push(passed, FakeEngine({"reg.example.com": [ok_stream()]}))
    save_events = _save(passed, FakeEngine(), "zip", out_dir / "x.zip")
    load_events = list(save_stage.load(out_dir / "x.zip", FakeEngine()))
    with Display("plain") as d:
        for ev in push_events + save_events + load_events:
            d.show(ev)
    out = capsys.readouterr().out
    assert f"reg.example.com/team/x_train:v1  {DIGEST}" in out
    assert "saved x:v1" in out and "loaded x:v1" in out and "l1 Pushing 0.0/0.0 MB" in out


def test_cli_usage_errors(out_dir):
    r = imagekit("-C", str(out_dir), "save", "x", "--zip", "--tar")
    assert r.code == 2 and "choose one of" in r.output
    r = imagekit("-C", str(out_dir), "push", "x", "--username", "me")
    assert r.code == 2 and "--password-stdin" in r.output


@pytest.mark.parametrize("fmt", ["zip", "gz"])
def test_stdlib_zlib_fallback_writes_the_same_formats(passed, out_dir, monkeypatch, fmt):
    import zlib
    from imagekit import archive
    monkeypatch.setattr(archive, "deflate", zlib)
    out = out_dir / f"x.{save_stage.FORMATS[fmt]}"
    _save(passed, FakeEngine(), fmt, out)
    if fmt == "zip":
        with zipfile.ZipFile(out) as zf:
            assert zf.testzip() is None and zf.read("x-v1.tar") == TAR
    else:
        assert gzip.decompress(out.read_bytes()) == TAR


def test_docker_config_file_credentials(tmp_path, monkeypatch):
    import base64

    from imagekit.engine import Engine
    token = base64.b64encode(f"cfguser:{SECRET}".encode()).decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"127.0.0.1:5000": {"auth": token}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    found = Engine(api=None).registry_auth("127.0.0.1:5000")
    assert found["username"] == "cfguser" and found["password"] == SECRET
    assert Engine(api=None).registry_auth("other.example.com") is None
