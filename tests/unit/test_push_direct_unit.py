"""The push stage over imagekit's own path, with registry.push scripted: its
events reach the display as imagekit events, a transient failure is pushed
again with backoff, an authentication failure never, and what the own path
cannot do goes through the engine instead, saying so."""

from __future__ import annotations

import pytest
from fakes import DIGEST, FakeEngine, image_archive, push_ok

from imagekit import push as push_stage
from imagekit import records, registry, targets
from imagekit.config import load_project
from imagekit.errors import AuthError, DirectPushUnsupported, PushError
from imagekit.events import Info, Progress, PushResult, Warn
from imagekit.layers import Compressing

TAR, IMAGE_ID = image_archive(["x:v1"])
MANIFEST = "sha256:" + "ef" * 32


@pytest.fixture
def proj(offline):
    offline.add("x", {"framework": {"name": "pytorch", "version": "2.13.0"}, "tags": ["v1"],
                      "push": {"repository": "x_train"}})
    p = load_project(offline.root)
    records.write(p, records.BuildRecord(IMAGE_ID, name="x",
                                         smoke=records.SmokeMark(True, "r.json", "t")))
    return p


def _engine(**kw) -> FakeEngine:
    eng = FakeEngine(export=TAR, **kw)
    eng.add_image("x:v1", IMAGE_ID, size=len(TAR))
    return eng


def _script(monkeypatch, runs: list):
    """registry.push answers with runs[i] (a function of the targets) on call i."""
    calls = []

    def fake_push(chunks, targets_, auths, **kw):
        calls.append(([t.ref for t in targets_], auths, kw))
        b"".join(chunks)
        yield from runs[len(calls) - 1](targets_)
    monkeypatch.setattr(registry, "push", fake_push)
    return calls


def _run(proj, eng, **kw):
    kw.setdefault("sleep", lambda s: None)
    target = targets.resolve(proj, eng, "x", error=PushError)
    return list(push_stage.push(proj, target, eng, **kw))


def _pushed(ts):
    for t in ts:
        yield registry.BlobProgress(t.ref, "sha256:" + "aa" * 32, 5, 10)
        yield registry.BlobDone(t.ref, "sha256:" + "aa" * 32, 10, "uploaded", sent=10)
        yield registry.TargetPushed(t.ref, MANIFEST, 1234, 0.5)


def test_events_are_mapped_and_the_result_holds_each_digest(proj, monkeypatch):
    calls = _script(monkeypatch, [lambda ts: iter([Compressing("sha256:bb", 1, 2),
                                                   *_pushed(ts)])])
    events = _run(proj, _engine(), to=["a.example.com/t", "b.example.com/t"])
    assert calls[0][0] == ["a.example.com/t/x_train:v1", "b.example.com/t/x_train:v1"]
    assert calls[0][2]["expect_diff_ids"] == [] and calls[0][2]["format"] == "docker"
    progress = [e for e in events if isinstance(e, Progress)]
    assert {p.status for p in progress} >= {"compressing", "Pushing", "Pushed"}
    res = events[-1]
    assert isinstance(res, PushResult)
    assert [(d.digest, d.via, d.bytes_sent) for d in res.destinations] == \
        [(MANIFEST, "direct", 1234)] * 2
    assert records.read(proj, IMAGE_ID).pushed[0] == f"a.example.com/t/x_train@{MANIFEST}"


def test_a_transient_failure_is_pushed_again_with_backoff(proj, monkeypatch):
    def flaky(ts):
        yield registry.TargetFailed(ts[0].ref, registry.TransientPushError("connection reset"), 7)
    calls = _script(monkeypatch, [flaky, flaky, _pushed])
    waits: list[float] = []
    events = _run(proj, _engine(), to=["a.example.com/t"], retries=3, backoff=1.0,
                  sleep=waits.append)
    assert len(calls) == 3 and waits == [1.0, 2.0]
    assert any(isinstance(e, Warn) and "attempt 1 of 4" in e.message for e in events)
    assert events[-1].destinations[0].attempts == 3
    assert events[-1].destinations[0].bytes_sent == 7 + 7 + 1234


def test_an_auth_failure_is_never_retried(proj, monkeypatch):
    def refused(ts):
        yield registry.TargetFailed(ts[0].ref, AuthError("a.example.com: 401 unauthorized"), 0)
    calls = _script(monkeypatch, [refused, refused])
    with pytest.raises(AuthError) as e:
        _run(proj, _engine(), to=["a.example.com/t"], retries=3)
    assert len(calls) == 1 and e.value.exit_code == 11


def test_what_the_own_path_cannot_do_goes_through_the_engine(proj, monkeypatch):
    def unsupported(ts):
        raise DirectPushUnsupported("the image has foreign (non-distributable) layers")
        yield  # pragma: no cover
    _script(monkeypatch, [unsupported])
    eng = _engine(pushes={"a.example.com/t/x_train": [push_ok()]}, held=DIGEST)
    events = _run(proj, eng, to=["a.example.com/t"])
    said = [e.message for e in events if isinstance(e, Info)]
    assert any("through the engine instead: the image has foreign" in m for m in said)
    assert events[-1].destinations[0].via == "engine"
    assert events[-1].destinations[0].digest == DIGEST


def test_via_engine_never_calls_the_own_path(proj, monkeypatch):
    calls = _script(monkeypatch, [])
    eng = _engine(pushes={"a.example.com/t/x_train": [push_ok()]}, held=DIGEST)
    events = _run(proj, eng, to=["a.example.com/t"], via="engine")
    assert calls == [] and events[-1].destinations[0].via == "engine"


def test_containerd_store_lets_the_engine_push_its_stored_layers(proj, monkeypatch):
    """On the containerd image store the engine holds the layers gzip'd: its own
    push only uploads them, which reading an export cannot beat."""
    calls = _script(monkeypatch, [])
    eng = _engine(pushes={"a.example.com/t/x_train": [push_ok()]}, held=DIGEST,
                  store="containerd")
    events = _run(proj, eng, to=["a.example.com/t"])
    said = [e.message for e in events if isinstance(e, Info)]
    assert calls == [] and any("containerd image store" in m for m in said)
    res = events[-1]
    assert res.destinations[0].via == "engine" and res.bytes_compressed == 0


@pytest.mark.parametrize("fmt", ["docker", "oci-zstd"])
def test_own_path_can_be_asked_for_on_the_containerd_store(proj, monkeypatch, fmt):
    calls = _script(monkeypatch, [lambda ts: iter(_pushed(ts))])
    eng = _engine(store="containerd")
    kw = {"via": "own"} if fmt == "docker" else {"fmt": fmt}   # zstd: only the own path can
    events = _run(proj, eng, to=["a.example.com/t"], **kw)
    assert len(calls) == 1 and events[-1].destinations[0].via == "direct"


def test_classic_store_pushes_on_the_own_path_by_default(proj, monkeypatch):
    calls = _script(monkeypatch, [lambda ts: iter(_pushed(ts))])
    events = _run(proj, _engine(store="classic"), to=["a.example.com/t"])
    assert len(calls) == 1 and events[-1].destinations[0].via == "direct"


def test_containerd_store_image_held_uncompressed_takes_the_own_path(proj, monkeypatch):
    """Loaded from a classic store's save, its layers are stored uncompressed: the
    engine would push them so; the own path compresses them."""
    calls = _script(monkeypatch, [lambda ts: iter(_pushed(ts))])
    eng = _engine(store="containerd")
    eng.uncompressed.add("x:v1")
    events = _run(proj, eng, to=["a.example.com/t"])
    said = [e.message for e in events if isinstance(e, Info)]
    assert len(calls) == 1 and events[-1].destinations[0].via == "direct"
    assert any("uncompressed" in m for m in said)


def test_a_retry_pushes_from_what_the_first_try_read(proj, monkeypatch):
    """The export is read once per push: a later try gets the Image the first
    one read (its blobs kept in the same spool folder), not a new export."""
    read = object()                 # stands for the registry.Image the first try read
    calls = []

    def fake_push(source, targets_, auths, **kw):
        calls.append((source, kw["spool"]))
        if len(calls) == 1:
            b"".join(source)
            yield registry.TargetFailed(targets_[0].ref, registry.TransientPushError("reset"), 7)
            yield registry.PushSummary("sha256:x", "", "m", 0, [], 0.0, 0.0, image=read)
        else:
            yield from _pushed(targets_)
    monkeypatch.setattr(registry, "push", fake_push)
    eng = _engine()
    events = _run(proj, eng, to=["a.example.com/t"])
    assert isinstance(events[-1], PushResult)
    assert len(calls) == 2 and calls[1][0] is read
    assert calls[0][1] == calls[1][1] and not calls[0][1].exists()   # one spool, removed after
    assert len(eng.calls_to("save")) == 1


def test_no_retry_starts_after_the_retry_window(proj, monkeypatch):
    import time
    clock = [0.0]
    monkeypatch.setattr(time, "monotonic", lambda: clock[0])
    calls = []

    def failing(source, targets_, auths, **kw):
        calls.append(1)
        clock[0] += registry.RETRY_WINDOW     # each try takes the whole window
        yield registry.TargetFailed(targets_[0].ref, registry.TransientPushError("reset"), 0)
    monkeypatch.setattr(registry, "push", failing)
    with pytest.raises(PushError, match="after 2 attempts"):
        _run(proj, _engine(), to=["a.example.com/t"], retries=5)
    assert len(calls) == 2


def test_an_unanswered_destination_is_pushed_again_once_at_most(proj, monkeypatch):
    calls = []

    def mute(source, targets_, auths, **kw):
        calls.append(1)
        if len(calls) == 1:
            b"".join(source)
        yield registry.TargetFailed(targets_[0].ref, registry.TransientPushError.timed_out(
            "HEAD blob: no answer in time"), 0)
    monkeypatch.setattr(registry, "push", mute)
    with pytest.raises(PushError, match="after 2 attempts"):
        _run(proj, _engine(), to=["a.example.com/t"], retries=3)
    assert len(calls) == 2


def test_a_registry_that_failed_its_check_is_not_tried_again_around_it(proj, monkeypatch):
    # the check retries by itself (registry._Push.preflight); a second loop of
    # tries around it would ping a dead registry (retries + 1) ** 2 times
    calls = []

    def dead(source, targets_, auths, **kw):
        calls.append(1)
        yield registry.TargetFailed(targets_[0].ref, registry.TransientPushError(
            "GET /v2/ on a.example.com: connection refused"), 0, checked=True)
    monkeypatch.setattr(registry, "push", dead)
    with pytest.raises(PushError) as e:
        _run(proj, _engine(), to=["a.example.com/t"], retries=3)
    assert len(calls) == 1
    assert "push failed: GET /v2/ on a.example.com: connection refused" in e.value.message
    assert "attempt" not in e.value.message
