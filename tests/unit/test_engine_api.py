"""The engine seam: tests/fakes.FakeEngine and imagekit.engine.Engine both
satisfy every method of the EngineAPI Protocol, and Engine decodes the
engine's wire format (build, push and load streams, `docker info`) into
imagekit's typed items and errors. No engine is needed: Engine runs over
fakes.FakeDockerAPI."""

from __future__ import annotations

import base64
import inspect
import json

import pytest
from fakes import DIGEST, FakeDockerAPI, FakeEngine

from imagekit.engine import (
    BuildCached,
    BuildDone,
    BuildOutput,
    BuildStep,
    Engine,
    EngineAPI,
    ImageInfo,
    LayerProgress,
    PushDone,
)
from imagekit.errors import EngineStreamError

PROTOCOL_METHODS = sorted(n for n, v in vars(EngineAPI).items()
                          if callable(v) and not n.startswith("_"))


def _incompatible(proto, impl) -> list[str]:
    """Why `impl` cannot stand where `proto` is called (empty when it can)."""
    want = [p for p in inspect.signature(proto).parameters.values() if p.name != "self"]
    have = {p.name: p for p in inspect.signature(impl).parameters.values() if p.name != "self"}
    positional = [p.name for p in have.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    problems = []
    for i, p in enumerate(want):
        q = have.get(p.name)
        if q is None:
            problems.append(f"no parameter {p.name}")
            continue
        if p.kind is p.POSITIONAL_OR_KEYWORD and (q.kind is not q.POSITIONAL_OR_KEYWORD
                                                  or positional.index(p.name) != i):
            problems.append(f"{p.name} is not positional at {i}")
        if p.kind is p.KEYWORD_ONLY and q.kind not in (q.KEYWORD_ONLY, q.POSITIONAL_OR_KEYWORD):
            problems.append(f"{p.name} cannot be given by keyword")
        if p.default is not p.empty and q.default is q.empty:
            problems.append(f"{p.name} has no default")
        if p.annotation is not p.empty and q.annotation is not q.empty and \
                str(p.annotation).replace(" ", "") != str(q.annotation).replace(" ", ""):
            problems.append(f"{p.name}: {q.annotation} is not {p.annotation}")
    for q in have.values():
        if q.name not in {p.name for p in want} and q.default is q.empty and \
                q.kind not in (q.VAR_POSITIONAL, q.VAR_KEYWORD):
            problems.append(f"extra required parameter {q.name}")
    return problems


def test_the_protocol_is_not_empty():
    assert {"build", "push", "save", "load", "container", "gpu_capable"} <= set(PROTOCOL_METHODS)


@pytest.mark.parametrize("impl", [FakeEngine, Engine], ids=["FakeEngine", "Engine"])
@pytest.mark.parametrize("method", PROTOCOL_METHODS)
def test_implements_every_protocol_method(impl, method):
    assert callable(getattr(impl, method, None)), f"{impl.__name__} has no {method}"
    assert _incompatible(getattr(EngineAPI, method), getattr(impl, method)) == []


def test_the_compatibility_check_can_fail():
    class Drifted:
        def push(self, repo, tag, auth, extra):
            ...

        def save(self, ref):
            ...

    assert _incompatible(EngineAPI.push, Drifted.push) == \
        ["no parameter repository", "extra required parameter repo", "extra required parameter extra"]
    assert _incompatible(EngineAPI.save, Drifted.save) == ["no parameter chunk_size"]


# -- Engine decodes the wire format ----------------------------------------------

def test_build_stream_is_decoded():
    api = FakeDockerAPI(build=[
        {"stream": "Step 1/3 : FROM python:3.11-slim-bookworm\n"},
        {"stream": " ---> 123\n"},
        {"stream": "Step 2/3 : RUN pip install torch\n"},
        {"stream": " ---> Using cache\n"},
        {"stream": "Step 3/3 : COPY code/ /opt/x/\n"},
        {"stream": "copying\nsecond line\n"},
        {"stream": "Removing intermediate container 42\n"},
        {"aux": {"ID": "sha256:" + "ab" * 32}},
        {"stream": "Successfully built abababababab\n"},
        {"stream": "Successfully tagged x:v1\n"}])
    items = list(Engine(api).build(None, "x:v1"))
    assert items == [BuildStep(1, 3, "FROM python:3.11-slim-bookworm"),
                     BuildStep(2, 3, "RUN pip install torch"), BuildCached(),
                     BuildStep(3, 3, "COPY code/ /opt/x/"), BuildOutput("copying"),
                     BuildOutput("second line"), BuildDone("sha256:" + "ab" * 32)]
    assert api.calls[0][1]["tag"] == "x:v1" and api.calls[0][1]["nocache"] is False


def test_build_stderr_comes_out_without_the_builders_colour_wrapping():
    # what the classic builder sends for a RUN step that writes to stderr in pieces
    api = FakeDockerAPI(build=[
        {"stream": "Step 1/1 : RUN uv pip install x\n"},
        {"stream": "\x1b[91mPrepared 2 packages\x1b[0m"}, {"stream": "\x1b[91m in 444ms\x1b[0m"},
        {"stream": "\x1b[91m\n\x1b[0m"}, {"stream": "\x1b[91m + \x1b[0m\x1b[91mnumpy\n\x1b[0m"},
        {"aux": {"ID": "sha256:" + "cd" * 32}}])
    items = list(Engine(api).build(None, "x:v1"))
    assert items == [BuildStep(1, 1, "RUN uv pip install x"),
                     BuildOutput("Prepared 2 packages in 444ms"), BuildOutput(" + numpy"),
                     BuildDone("sha256:" + "cd" * 32)]


def test_build_error_item_raises_with_the_engines_words():
    msg = "The command '/bin/sh -c pip install nosuchpkg' returned a non-zero code: 1"
    api = FakeDockerAPI(build=[{"stream": "Step 1/1 : RUN pip install nosuchpkg\n"},
                               {"error": msg, "errorDetail": {"message": msg}}])
    seen = []
    with pytest.raises(EngineStreamError) as e:
        for item in Engine(api).build(None, "x:v1"):
            seen.append(item)
    assert e.value.message == msg and e.value.exit_code == 16
    assert seen == [BuildStep(1, 1, "RUN pip install nosuchpkg")]


def test_build_without_an_image_id_is_an_error():
    with pytest.raises(EngineStreamError, match="without an image ID"):
        list(Engine(FakeDockerAPI(build=[{"stream": "Step 1/1 : FROM x\n"}])).build(None, "t"))


def _ok_push(layer="l1"):
    return [{"status": "The push refers to repository [r]"},
            {"status": "Preparing", "progressDetail": {}, "id": layer},
            {"status": "Pushing", "progressDetail": {"current": 10, "total": 20}, "id": layer},
            {"status": "Pushed", "progressDetail": {}, "id": layer},
            {"status": "v1: digest: " + DIGEST + " size: 740"},
            {"progressDetail": {}, "aux": {"Tag": "v1", "Digest": DIGEST, "Size": 740}}]


def test_push_stream_is_decoded_with_the_final_digest():
    api = FakeDockerAPI(push=_ok_push())
    items = list(Engine(api).push("reg/x", "v1", {"username": "u", "password": "p"}))
    assert items == [LayerProgress("l1", "Preparing"), LayerProgress("l1", "Pushing", 10, 20),
                     LayerProgress("l1", "Pushed"), PushDone(DIGEST)]
    sent = api.calls[0][3]["auth_header"]
    assert json.loads(base64.urlsafe_b64decode(sent)) == {"username": "u", "password": "p"}
    assert api.calls[0][3]["platform"] is None       # API 1.41 takes none


def test_error_item_fails_a_push_although_the_stream_ended_normally():
    # the engine's answer is 200 and its stream ends normally: the error is an item in it
    api = FakeDockerAPI(push=[{"status": "Preparing", "progressDetail": {}, "id": "l1"},
                              {"errorDetail": {"message": "manifest invalid: manifest invalid"},
                               "error": "manifest invalid: manifest invalid"},
                              {"progressDetail": {}, "aux": {"Digest": DIGEST}}])
    with pytest.raises(EngineStreamError, match="manifest invalid"):
        list(Engine(api).push("reg/x", "v1", None))


def test_push_without_a_digest_leaves_the_digest_to_the_registry():
    # the containerd store of Engine 26 ends its push stream with no aux digest
    items = list(Engine(FakeDockerAPI(push=_ok_push()[:-1])).push("reg/x", "v1", None))
    assert items[-1] == PushDone("")


def test_push_names_the_images_own_platform_where_the_api_takes_it():
    api = FakeDockerAPI(images={"reg/x:v1": {"Id": "sha256:1", "Os": "linux",
                                             "Architecture": "arm64", "Variant": "v8"}},
                        push=_ok_push(), version="1.47")
    items = list(Engine(api).push("reg/x", "v1", {"username": "u", "password": "p"}))
    (_, repo, tag, sent), = api.calls
    assert (repo, tag) == ("reg/x", "v1")
    assert json.loads(sent["platform"]) == {"os": "linux", "architecture": "arm64",
                                            "variant": "v8"}
    assert json.loads(base64.urlsafe_b64decode(sent["auth_header"]))["username"] == "u"
    assert isinstance(items[-1], PushDone) and items[-1].digest


def test_engine_push_of_an_index_takes_the_registrys_digest():
    from imagekit.destinations import destination
    from imagekit.push_engine import _attempt
    eng = FakeEngine()
    eng.pushes["reg.example.com"] = [[LayerProgress("l1", "Pushed"), PushDone("")]]
    eng.images["reg.example.com/team/x:v1"] = ImageInfo("sha256:" + "1" * 64)
    eng.held = "sha256:" + "2" * 64
    got = _attempt(eng, "x", destination("reg.example.com/team", "x", "v1"), None, lambda _e: None)
    assert got == "sha256:" + "2" * 64


def test_engine_retry_countdown_is_reported_once_per_wait():
    stream = [{"status": f"Retrying in {n} seconds", "progressDetail": {}, "id": "l1"}
              for n in (5, 4, 3, 2, 1, 10, 9, 8)] + _ok_push()
    items = list(Engine(FakeDockerAPI(push=stream)).push("reg/x", "v1", None))
    shown = [i.status for i in items if isinstance(i, LayerProgress) and "retrying" in i.status]
    assert shown == ["engine retrying in 5s", "engine retrying in 10s"]


def test_load_returns_what_the_engine_loaded():
    api = FakeDockerAPI(load=[{"stream": "Loaded image: x:v1\n"},
                              {"stream": "Loaded image ID: sha256:" + "ee" * 32 + "\n"}])
    assert Engine(api).load(iter([b"ab", b"cd"])) == ["x:v1", "sha256:" + "ee" * 32]
    assert api.calls == [("load", b"abcd")]


def test_load_error_item_raises():
    api = FakeDockerAPI(load=[{"errorDetail": {"message": "unexpected EOF"},
                               "error": "unexpected EOF"}])
    with pytest.raises(EngineStreamError, match="unexpected EOF"):
        Engine(api).load(iter([b"x"]))


def test_image_facts_and_a_missing_image():
    api = FakeDockerAPI(images={"x:v1": {"Id": "sha256:" + "ab" * 32, "Size": 7,
                                         "Config": {"Labels": {"a": "b"}}, "RepoTags": ["x:v1"]}})
    info = Engine(api).image("x:v1")
    assert (info.id, info.size, info.labels, info.tags) == ("sha256:" + "ab" * 32, 7, {"a": "b"},
                                                           ["x:v1"])
    assert Engine(api).image("nope:v1") is None
