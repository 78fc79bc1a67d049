"""Push, save and load against the fake engine (no Docker): a refused push
fails, retries and the auth rule, the smoke gate, destinations and
credentials (and which registry gets which); every archive format written
and read back, nothing left behind on failure, disk full, Ctrl-C; corrupt
and truncated archives refused."""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import subprocess
import threading
import zipfile
from pathlib import Path

import pytest
from fakes import DIGEST, FakeEngine, as_loaded, image_archive, push_error, push_ok
from helpers import imagekit

from imagekit import load as load_stage
from imagekit import push as push_stage
from imagekit import records, targets
from imagekit import save as save_stage
from imagekit.config import load_project
from imagekit.errors import (
    AuthError,
    DiskFullError,
    EngineError,
    Interrupted,
    LoadError,
    PushError,
    SaveError,
    SmokeGateError,
    UsageError,
)
from imagekit.events import Info, Progress, PushResult, SaveResult, Warn

TAR, IMAGE_ID = image_archive(["x:v1"])
SECRET = "s3cret-Passw0rd"
SPEC_HOST = "reg.example.com"


def engine(**kw) -> FakeEngine:
    """The fake engine holding x:v1 (exported as TAR)."""
    kw.setdefault("export", TAR)
    eng = FakeEngine(**kw)
    eng.add_image("x:v1", IMAGE_ID, size=len(TAR))
    return eng


@pytest.fixture
def proj(offline):
    offline.add("x", {"framework": {"name": "pytorch", "version": "2.13.0"}, "tags": ["v1"],
                      "push": {"repository": "x_train", "registries": [f"{SPEC_HOST}/team"]}})
    return load_project(offline.root)


@pytest.fixture
def passed(proj):
    records.write(proj, records.BuildRecord(IMAGE_ID, name="x",
                                            smoke=records.SmokeMark(True, "r.json", "t")))
    return proj


@pytest.fixture
def out_dir(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d


def _push(p, eng, name="x", **kw):
    """The stage over the engine's own push (the direct path has its own tests,
    against real registries and in test_push_direct_unit)."""
    kw.setdefault("sleep", lambda s: None)
    kw.setdefault("via", "engine")
    target = targets.resolve(p, eng, name, error=PushError)
    return list(push_stage.push(p, target, eng, **kw))


def _auth(user, pw, host):
    return {"username": user, "password": pw, "serveraddress": host}


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
        with pytest.raises(UsageError) as e:
            push_stage.destination(bad, "r", "t")
        assert e.value.exit_code == 2
    with pytest.raises(UsageError):
        push_stage.destination("localhost:5000/t", "r", "-bad")


def test_credentials_order_and_secrecy():
    env = {"IMAGEKIT_REGISTRY_USER": "envuser", "IMAGEKIT_REGISTRY_PASSWORD": "envpw"}
    c = push_stage.credentials("me", SECRET, environ=env, to=["a.example.com/t"])
    assert c.username == "me" and c.source == "--username/--password-stdin"
    assert SECRET not in repr(c)
    assert push_stage.credentials(environ=env).username == "envuser"
    assert push_stage.credentials(environ={}) is None
    with pytest.raises(UsageError, match="IMAGEKIT_REGISTRY_PASSWORD"):
        push_stage.credentials(environ={"IMAGEKIT_REGISTRY_USER": "u"})
    with pytest.raises(UsageError):
        push_stage.credentials("me", "", environ={}, to=["a.example.com/t"])
    with pytest.raises(UsageError, match="--username needs --to"):
        push_stage.credentials("me", SECRET, environ={})
    with pytest.raises(UsageError, match="not a registry host"):
        push_stage.credentials(environ={**env, "IMAGEKIT_REGISTRY": "https://x"})


def test_credentials_are_bound_to_hosts():
    env = {"IMAGEKIT_REGISTRY_USER": "u", "IMAGEKIT_REGISTRY_PASSWORD": "p"}
    to = ["a.example.com/t", "b.example.com:5000/t/deep"]
    assert push_stage.credentials("me", SECRET, to=to).hosts == {"a.example.com",
                                                                 "b.example.com:5000"}
    assert push_stage.credentials(environ=env, to=to).hosts == {"a.example.com",
                                                                "b.example.com:5000"}
    named = {**env, "IMAGEKIT_REGISTRY": "c.example.com"}
    assert push_stage.credentials(environ=named, to=to).hosts == {"c.example.com"}
    assert push_stage.credentials(environ=env).hosts is None


def test_push_reports_registry_digest(passed):
    eng = engine()
    events = _push(passed, eng)
    res = events[-1]
    assert isinstance(res, PushResult) and res.stage == "push" and res.smoke_passed
    (dest,) = res.destinations
    assert dest.ref == f"{SPEC_HOST}/team/x_train:v1" and dest.digest == DIGEST
    assert dest.pinned == f"{SPEC_HOST}/team/x_train@{DIGEST}" and dest.attempts == 1
    assert eng.tagged == [(IMAGE_ID, f"{SPEC_HOST}/team/x_train", "v1")]
    assert any(isinstance(e, Progress) and e.status == "Pushing" and e.total == 20 for e in events)
    assert eng.calls_to("distribution_digest") == [{"ref": dest.ref, "auth": None}]
    data = json.loads(json.dumps(res.to_dict()))
    assert data["event"] == "result" and data["stage"] == "push" and data["image"] == "x"
    assert data["data"]["destinations"][0]["digest"] == DIGEST


def test_registry_refusal_in_the_stream_fails_the_push(passed):
    eng = engine(pushes={SPEC_HOST: [push_error("manifest invalid: manifest invalid")]})
    with pytest.raises(PushError, match="manifest invalid") as e:
        _push(passed, eng)
    assert type(e.value) is PushError and eng.attempts == {f"{SPEC_HOST}/team/x_train": 1}


def test_digest_must_match_the_registry(passed):
    eng = engine(held="sha256:" + "ee" * 32)
    with pytest.raises(PushError, match="registry holds"):
        _push(passed, eng, retries=0)


def test_transient_failure_is_retried_with_backoff(passed):
    eng = engine(pushes={SPEC_HOST: [push_error("connection reset by peer"), push_ok()]})
    waits = []
    events = _push(passed, eng, sleep=waits.append, backoff=2.0)
    assert isinstance(events[-1], PushResult) and events[-1].destinations[0].attempts == 2
    assert waits == [2.0]
    assert any(isinstance(e, Warn) and "attempt 1 of 4 failed" in e.message for e in events)


def test_dead_registry_gives_up_and_reports_nothing_pushed(passed):
    eng = engine(pushes={SPEC_HOST: [push_error("dial tcp 127.0.0.1:5000: connect: connection "
                                                "refused")]})
    waits = []
    seen = []
    target = targets.resolve(passed, eng, "x")
    with pytest.raises(PushError, match="after 3 attempts") as e:
        for ev in push_stage.push(passed, target, eng, retries=2, backoff=1.0,
                                  sleep=waits.append, via="engine"):
            seen.append(ev)
    assert e.value.exit_code == 10 and waits == [1.0, 2.0]
    assert not [ev for ev in seen if isinstance(ev, PushResult)]
    assert not [ev for ev in seen if isinstance(ev, Info) and "pushed " in ev.message]


def test_one_try_is_one_attempt(passed):
    eng = engine(pushes={SPEC_HOST: [push_error("connect: connection refused")]})
    target = targets.resolve(passed, eng, "x")
    with pytest.raises(PushError, match="push failed after 1 attempt: "):
        list(push_stage.push(passed, target, eng, retries=0, sleep=lambda s: None, via="engine"))


def test_auth_failure_is_never_retried_and_never_shows_the_password(passed):
    echo = f"unauthorized: authentication required (user me, password {SECRET})"
    eng = engine(pushes={"a.example.com": [push_error(echo)] * 5})
    creds = push_stage.credentials("me", SECRET, to=["a.example.com/team"])
    with pytest.raises(AuthError) as e:
        _push(passed, eng, creds=creds, to=["a.example.com/team"], retries=5)
    assert e.value.exit_code == 11 and eng.attempts == {"a.example.com/team/x_train": 1}
    assert SECRET not in e.value.message and "not retried" in e.value.message
    assert "--username/--password-stdin" in e.value.message


def test_no_credentials_found_says_where_to_put_them(passed):
    eng = engine(pushes={SPEC_HOST: [push_error("no basic auth credentials")]})
    with pytest.raises(AuthError, match=f"no credentials found for {SPEC_HOST}"):
        _push(passed, eng)


def test_smoke_gate(proj):
    eng = engine()
    with pytest.raises(SmokeGateError) as e:
        _push(proj, eng)
    assert e.value.exit_code == 12 and "--no-smoke-gate" in e.value.message
    assert eng.attempts == {} and eng.tagged == []
    events = _push(proj, eng, smoke_gate=False)
    warns = [e for e in events if isinstance(e, Warn)]
    assert warns and "--no-smoke-gate" in warns[0].message and "NOT passed" in warns[0].message
    assert events[-1].smoke_gate == "off" and events[-1].smoke_passed is False


def test_two_registries_are_pushed_at_once(passed):
    eng = engine(pushes={"a.example.com": [push_ok("la")], "b.example.com:5000": [push_ok("lb")]})
    eng.barrier = threading.Barrier(2, timeout=10)   # deadlocks unless both pushes run together
    events = _push(passed, eng, to=["a.example.com/t1", "b.example.com:5000/t2"])
    dests = events[-1].destinations
    assert [d.ref for d in dests] == ["a.example.com/t1/x_train:v1",
                                      "b.example.com:5000/t2/x_train:v1"]
    assert all(d.digest == DIGEST for d in dests)


def test_one_of_two_failing_names_both_outcomes(passed):
    eng = engine(pushes={"b.example.com": [push_error("unauthorized: authentication required")]})
    with pytest.raises(AuthError) as e:
        _push(passed, eng, to=["a.example.com/t", "b.example.com/t"])
    assert "1 of 2 destinations failed" in e.value.message
    assert any("a.example.com/t/x_train:v1: pushed" in d for d in e.value.details)


def test_engine_retry_status_reaches_the_display(passed):
    from imagekit.engine import LayerProgress
    eng = engine(pushes={SPEC_HOST: [[LayerProgress("l1", "engine retrying in 5s"), *push_ok()]]})
    events = _push(passed, eng)
    assert [e.status for e in events if isinstance(e, Progress) and "retrying" in e.status] == \
        ["engine retrying in 5s"]


def test_nowhere_to_push(offline):
    offline.add("x", {"framework": {"name": "pytorch", "version": "2.13.0"}, "tags": ["v1"]})
    with pytest.raises(UsageError, match="nowhere to push"):
        _push(load_project(offline.root), engine())


def test_any_image_reference_is_pushed_under_its_own_name(passed):
    eng = engine()
    eng.add_image("ghcr.io/org/trainer:2.1", IMAGE_ID)
    events = _push(passed, eng, "ghcr.io/org/trainer:2.1", to=["a.example.com/t"])
    assert events[-1].destinations[0].ref == "a.example.com/t/trainer:2.1"
    assert events[-1].source == "ghcr.io/org/trainer:2.1"


# -- which registry gets which credentials --------------------------------------
# Explicit credentials go only to the --to hosts; the environment's only to
# IMAGEKIT_REGISTRY's host or the --to hosts; neither ever to a host that a spec
# (push.registries) names. Elsewhere the Docker config file's answer is sent.

ENV = {"IMAGEKIT_REGISTRY_USER": "envuser", "IMAGEKIT_REGISTRY_PASSWORD": SECRET}
CONFIG_AUTH = {"username": "cfg", "password": "from-config", "serveraddress": SPEC_HOST}


def _sent(eng: FakeEngine) -> dict[str, dict | None]:
    """registry host -> the auth its push and its digest check received."""
    got: dict[str, dict | None] = {}
    for c in eng.push_calls:
        got[c.repository.split("/")[0]] = c.auth
    for q in eng.calls_to("distribution_digest"):
        assert got[q["ref"].split("/")[0]] == q["auth"]
    return got


def test_explicit_credentials_go_to_the_to_hosts_only(passed):
    to = ["a.example.com/t", "b.example.com:5000/t"]
    creds = push_stage.credentials("me", SECRET, environ={}, to=to)
    eng = engine(auths={"a.example.com": {"username": "cfg", "password": "x"}})
    _push(passed, eng, creds=creds, to=to)
    assert _sent(eng) == {"a.example.com": _auth("me", SECRET, "a.example.com"),
                          "b.example.com:5000": _auth("me", SECRET, "b.example.com:5000")}
    # bound to a.example.com, they are not sent to any other host
    creds = push_stage.credentials("me", SECRET, environ={}, to=["a.example.com/t"])
    eng = engine(auths={SPEC_HOST: CONFIG_AUTH})
    events = _push(passed, eng, creds=creds)
    assert _sent(eng) == {SPEC_HOST: CONFIG_AUTH}
    assert any(isinstance(e, Warn) and f"not sent to {SPEC_HOST}" in e.message for e in events)


def test_environment_credentials_never_go_to_a_spec_registry(passed):
    creds = push_stage.credentials(environ=ENV)
    eng = engine(auths={SPEC_HOST: CONFIG_AUTH})
    events = _push(passed, eng, creds=creds)
    assert _sent(eng) == {SPEC_HOST: CONFIG_AUTH}
    warn = next(e.message for e in events if isinstance(e, Warn))
    assert "IMAGEKIT_REGISTRY" in warn and SECRET not in warn
    eng = engine()
    _push(passed, eng, creds=push_stage.credentials(
        environ={**ENV, "IMAGEKIT_REGISTRY": "other.example.com"}))
    assert _sent(eng) == {SPEC_HOST: None}


def test_environment_credentials_go_to_imagekit_registry_host(passed):
    eng = engine(auths={SPEC_HOST: CONFIG_AUTH})
    _push(passed, eng, creds=push_stage.credentials(environ={**ENV, "IMAGEKIT_REGISTRY": SPEC_HOST}))
    assert _sent(eng) == {SPEC_HOST: _auth("envuser", SECRET, SPEC_HOST)}


def test_environment_credentials_go_to_the_to_hosts(passed):
    to = ["a.example.com/t", "b.example.com/t"]
    eng = engine()
    _push(passed, eng, to=to, creds=push_stage.credentials(environ=ENV, to=to))
    assert _sent(eng) == {"a.example.com": _auth("envuser", SECRET, "a.example.com"),
                          "b.example.com": _auth("envuser", SECRET, "b.example.com")}
    # IMAGEKIT_REGISTRY names the one host they are for
    eng = engine()
    env = {**ENV, "IMAGEKIT_REGISTRY": "a.example.com"}
    _push(passed, eng, to=to, creds=push_stage.credentials(environ=env, to=to))
    assert _sent(eng) == {"a.example.com": _auth("envuser", SECRET, "a.example.com"),
                          "b.example.com": None}


def test_no_credentials_sends_the_config_files_per_host(passed):
    eng = engine(auths={"a.example.com": {"username": "ca", "password": "pa"}})
    _push(passed, eng, to=["a.example.com/t", "b.example.com/t"])
    assert _sent(eng) == {"a.example.com": {"username": "ca", "password": "pa"},
                          "b.example.com": None}


# -- save -------------------------------------------------------------------

def _save(p, eng, fmt, out, tag=None, **kw):
    target = targets.resolve(p, eng, "x", tag, error=SaveError)
    return list(save_stage.save(p, target, eng, fmt=fmt, output=out, **kw))


def _leftovers(d: Path) -> list[str]:
    return sorted(x.name for x in d.iterdir())


@pytest.mark.parametrize("fmt", ["zip", "zip-compat", "tar", "gz"])
def test_save_every_format_round_trips(passed, out_dir, fmt):
    out = out_dir / f"x.{save_stage.FORMATS[fmt]}"
    eng = engine(chunk=7000)
    events = _save(passed, eng, fmt, out)
    res = events[-1]
    assert isinstance(res, SaveResult) and res.stage == "save" and res.tar_bytes == len(TAR)
    assert eng.calls_to("save")[0]["ref"] == "x:v1"
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
    assert res.sha256 == hashlib.sha256(data).hexdigest() and res.bytes == len(data)
    m = json.loads(man.read_text())
    assert m["image_id"] == IMAGE_ID and m["tags"] == ["x:v1"] and m["bytes"] == len(data)
    assert m["framework"] == "pytorch" and m["device"] == "cpu" and m["smoke"]["passed"] is True
    assert _leftovers(out.parent) == sorted([out.name, sha.name, man.name])
    # and load reads it back, checking the checksum and the image ID
    fresh = FakeEngine()
    events = list(load_stage.load(out, fresh))
    assert fresh.received == as_loaded(TAR) and not fresh.load_aborted
    assert events[-1].checksum == "verified" and events[-1].manifest == "config digest matches"
    assert events[-1].refs == ["x:v1"] and events[-1].image_id == IMAGE_ID
    assert fresh.images["x:v1"].id == IMAGE_ID


def test_default_path_and_folder_output(passed, out_dir, monkeypatch):
    monkeypatch.chdir(out_dir)
    _save(passed, engine(), "gz", None)
    assert (out_dir / "x-v1.tar.gz").is_file()
    (out_dir / "d").mkdir()
    _save(passed, engine(), "zip", out_dir / "d")
    assert (out_dir / "d" / "x-v1.zip").is_file()


def test_a_reference_is_saved_under_a_file_safe_name(passed, out_dir, monkeypatch):
    monkeypatch.chdir(out_dir)
    eng = engine()
    eng.add_image("ghcr.io/org/trainer:2.1", IMAGE_ID)
    target = targets.resolve(passed, eng, "ghcr.io/org/trainer:2.1")
    events = list(save_stage.save(passed, target, eng, fmt="tar"))
    assert Path(events[-1].path) == out_dir / "trainer-2.1.tar"
    assert json.loads((out_dir / "trainer-2.1.tar.json").read_text())["tags"] == \
        ["ghcr.io/org/trainer:2.1"]


def test_failed_export_leaves_nothing_and_keeps_an_older_file(passed, out_dir):
    out = out_dir / "x.zip"
    out.write_bytes(b"older archive")
    eng = engine(chunk=1000, fail_after=50_000,
                 fail_with=EngineError("export of x:v1 broke off: connection reset"))
    with pytest.raises(SaveError, match="connection reset") as e:
        _save(passed, eng, "zip", out)
    assert e.value.exit_code == 13
    assert out.read_bytes() == b"older archive" and _leftovers(out_dir) == ["x.zip"]


def test_disk_full_is_one_line_and_leaves_nothing(passed, out_dir, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(save_stage.os, "fsync", full)
    with pytest.raises(DiskFullError) as e:
        _save(passed, engine(), "gz", out_dir / "x.tar.gz")
    assert e.value.exit_code == 15 and "disk full" in e.value.message
    assert "\n" not in e.value.message and _leftovers(out_dir) == []


def test_ctrl_c_during_export_leaves_nothing(passed, out_dir):
    eng = engine(chunk=1000, fail_after=20_000, fail_with=KeyboardInterrupt())
    with pytest.raises(Interrupted) as e:
        _save(passed, eng, "zip", out_dir / "x.zip")
    assert e.value.exit_code == 130 and _leftovers(out_dir) == []


def test_closing_the_stage_midway_leaves_nothing(passed, out_dir, monkeypatch):
    monkeypatch.setattr(save_stage, "PROGRESS_EVERY", 0.0)
    eng = engine(chunk=1000)
    gen = save_stage.save(passed, targets.resolve(passed, eng, "x"), eng, fmt="zip",
                          output=out_dir / "x.zip")
    assert any(isinstance(next(gen), Progress) for _ in range(4))
    gen.close()   # what the CLI does when Ctrl-C lands in the display
    assert _leftovers(out_dir) == []


def test_save_refuses_unbuilt_image(passed, out_dir):
    with pytest.raises(SaveError, match="not built") as e:
        _save(passed, engine(), "zip", out_dir / "x.zip", tag="nope")
    assert "imagekit build x" in e.value.message
    with pytest.raises(SaveError, match="does not exist"):
        _save(passed, engine(), "zip", out_dir / "no" / "x.zip")
    with pytest.raises(UsageError, match="unknown archive format"):
        _save(passed, engine(), "rar", out_dir / "x.rar")


def test_empty_export_is_refused(passed, out_dir):
    with pytest.raises(SaveError, match="exported nothing"):
        _save(passed, engine(export=b""), "tar", out_dir / "x.tar")
    assert _leftovers(out_dir) == []


def test_zip64_records_are_written(passed, out_dir):
    out = out_dir / "x.zip"
    _save(passed, engine(), "zip", out)
    data = out.read_bytes()
    assert data.startswith(b"PK\x03\x04") and b"PK\x06\x06" in data and b"PK\x06\x07" in data
    with zipfile.ZipFile(out) as zf:
        info = zf.infolist()[0]
        assert info.flag_bits & 0x08 and info.file_size == len(TAR)
        assert info.external_attr >> 16 == 0o100644


@pytest.mark.parametrize("fmt", ["zip", "gz"])
def test_stdlib_zlib_fallback_writes_the_same_formats(passed, out_dir, monkeypatch, fmt):
    import zlib

    from imagekit import archive
    monkeypatch.setattr(archive, "deflate", zlib)
    out = out_dir / f"x.{save_stage.FORMATS[fmt]}"
    _save(passed, engine(), fmt, out)
    if fmt == "zip":
        with zipfile.ZipFile(out) as zf:
            assert zf.testzip() is None and zf.read("x-v1.tar") == TAR
    else:
        assert gzip.decompress(out.read_bytes()) == TAR


# -- load -------------------------------------------------------------------

def _saved(passed, out_dir, fmt, name):
    out = out_dir / name
    _save(passed, engine(), fmt, out)
    return out


def test_checksum_mismatch_is_refused_before_loading(passed, out_dir):
    out = _saved(passed, out_dir, "tar", "x.tar")
    data = bytearray(out.read_bytes())
    data[1000] ^= 0xFF
    out.write_bytes(bytes(data))
    eng = FakeEngine()
    with pytest.raises(LoadError, match="checksum mismatch") as e:
        list(load_stage.load(out, eng))
    assert e.value.exit_code == 14 and eng.calls_to("load") == [] and eng.images == {}


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
    eng = FakeEngine()
    with pytest.raises(LoadError, match=words) as e:
        list(load_stage.load(out, eng))
    assert "\n" not in e.value.message and e.value.exit_code == 14
    assert eng.images == {}


@pytest.mark.parametrize("field", ["config_digest", "image_id"])   # image_id: older sidecars
def test_image_id_must_match_manifest(passed, out_dir, field):
    out = _saved(passed, out_dir, "zip", "x.zip")
    man = save_stage.sidecars(out)[1]
    m = json.loads(man.read_text())
    if field == "image_id":
        del m["config_digest"]
    m[field] = "sha256:" + "99" * 32
    man.write_text(json.dumps(m))
    eng = FakeEngine()
    with pytest.raises(LoadError, match="says sha256:9999"):
        list(load_stage.load(out, eng))
    assert eng.load_aborted and eng.images == {}


def test_not_an_archive(out_dir):
    f = out_dir / "x.zip"
    f.write_bytes(b"hello, this is not an image" * 40)
    with pytest.raises(LoadError, match="not an image archive"):
        list(load_stage.load(f, FakeEngine()))
    with pytest.raises(UsageError, match="no such file"):
        list(load_stage.load(out_dir / "missing.zip", FakeEngine()))


def test_engine_refusal_of_the_archive(out_dir):
    f = out_dir / "x.tar"
    f.write_bytes(TAR)
    eng = FakeEngine(load_error="unexpected EOF")
    with pytest.raises(LoadError, match="the engine refused the archive: unexpected EOF"):
        list(load_stage.load(f, eng))
    assert eng.received == as_loaded(TAR) and eng.images == {}


# -- display and CLI ------------------------------------------------------------

def test_plain_display_of_publish_results(capsys, passed, out_dir):
    from imagekit.display import Display
    push_events = _push(passed, engine())
    save_events = _save(passed, engine(), "zip", out_dir / "x.zip")
    load_events = list(load_stage.load(out_dir / "x.zip", FakeEngine()))
    with Display("plain") as d:
        for ev in push_events + save_events + load_events:
            d.show(ev)
    out = capsys.readouterr().out
    assert f"{SPEC_HOST}/team/x_train:v1  {DIGEST}" in out
    assert "x: saved x:v1" in out and f"loaded x:v1 ({IMAGE_ID})" in out
    assert f"x: {SPEC_HOST}/team l1 Pushing 10/20 B" in out



def test_cli_usage_errors(out_dir):
    r = imagekit("-C", str(out_dir), "save", "x", "--zip", "--tar")
    assert r.code == 2 and "choose one of" in r.output
    r = imagekit("-C", str(out_dir), "push", "x", "--username", "me")
    assert r.code == 2 and "--password-stdin" in r.output


def test_docker_config_file_credentials(tmp_path, monkeypatch):
    import base64

    from imagekit.engine import Engine
    token = base64.b64encode(f"cfguser:{SECRET}".encode()).decode()
    (tmp_path / "config.json").write_text(json.dumps({"auths": {"127.0.0.1:5000": {"auth": token}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(tmp_path))
    found = Engine(api=None).registry_auth("127.0.0.1:5000")
    assert found["username"] == "cfguser" and found["password"] == SECRET
    assert Engine(api=None).registry_auth("other.example.com") is None

