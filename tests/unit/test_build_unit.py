"""The build stage against the fake engine (no Docker): build items to
events and a record, failure reporting, the build context, and the
no-engine error."""

from __future__ import annotations

import io
import socket
import tarfile

import pytest
from fakes import IMAGE_ID, FakeEngine
from helpers import imagekit

from imagekit import records
from imagekit.build import build
from imagekit.config import load_project
from imagekit.context import context_tar
from imagekit.engine import BuildCached, BuildDone, BuildOutput, BuildStep
from imagekit.errors import BuildError, EngineStreamError
from imagekit.events import Built, Cached, Log, Step


def _project(project):
    project.add("x", {"framework": {"name": "pytorch", "version": "2.13.0"},
                      "code": {"src": "code", "dest": "/opt/x"}, "tags": ["v1", "latest"]},
                {"code/train.py": "print('hi')\n", "code/__pycache__/t.pyc": "junk",
                 "code/data/a.txt": "a"})
    return load_project(project.root)


def test_build_items_to_events_and_record(offline):
    p = _project(offline)
    eng = FakeEngine(builds=[BuildStep(1, 3, "FROM python:3.11-slim-bookworm"),
                             BuildStep(2, 3, "RUN pip install torch"), BuildCached(),
                             BuildStep(3, 3, "COPY code/ /opt/x/"), BuildOutput("copying"),
                             BuildDone(IMAGE_ID)])
    events = list(build(p.catalog.resolve("x"), p, eng))
    steps = [e for e in events if isinstance(e, Step)]
    assert [s.index for s in steps] == [1, 2, 3] and steps[0].total == 3
    assert [e.index for e in events if isinstance(e, Cached)] == [2]
    assert [e.line for e in events if isinstance(e, Log)] == ["copying"]
    built = events[-1]
    assert isinstance(built, Built) and built.cached_steps == 1 and built.steps == 3
    assert built.refs == ["x:v1", "x:latest"] and built.image_id == IMAGE_ID
    assert eng.tagged == [(IMAGE_ID, "x", "latest")]
    (call,) = eng.calls_to("build")
    assert call["tag"] == "x:v1" and call["network_mode"] is None and call["nocache"] is False
    rec = records.read(p, IMAGE_ID)
    assert rec.name == "x" and rec.refs == ["x:v1", "x:latest"] and rec.cached_steps == 1
    assert rec.framework == "pytorch" and "FROM " in rec.dockerfile and rec.steps == 3
    log = (p.state_dir / "logs" / "x.build.log").read_text()
    assert "Step 2/3 : RUN pip install torch\n ---> Using cache\n" in log and "copying" in log


def test_no_cache_is_passed_on(offline):
    p = _project(offline)
    eng = FakeEngine()
    list(build(p.catalog.resolve("x"), p, eng, nocache=True))
    assert eng.calls_to("build")[0]["nocache"] is True


def test_a_served_wheelhouse_gives_the_build_the_host_network(project, tmp_path):
    with socket.socket() as s:           # a free port, so no other build's server is in the way
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (project.root / "imagekit.toml").write_text(
        f'[pip]\nwheelhouse = "{tmp_path / "wh"}"\nport = {port}\n')
    p = _project(project)
    eng = FakeEngine()
    list(build(p.catalog.resolve("x"), p, eng))
    assert eng.calls_to("build")[0]["network_mode"] == "host"


def test_failed_step_names_step_and_log_tail(offline):
    p = _project(offline)
    msg = "The command '/bin/sh -c pip install nosuchpkg' returned a non-zero code: 1"
    eng = FakeEngine(builds=[BuildStep(1, 2, "FROM python:3.11-slim-bookworm"),
                             BuildStep(2, 2, "RUN pip install nosuchpkg"),
                             BuildOutput("ERROR: No matching distribution found for nosuchpkg"),
                             EngineStreamError(msg)])
    with pytest.raises(BuildError) as e:
        list(build(p.catalog.resolve("x"), p, eng))
    assert "step 2/2" in e.value.message and "RUN pip install nosuchpkg" in e.value.message
    assert msg in e.value.message
    assert any("No matching distribution" in d for d in e.value.details)
    assert e.value.details[-1].startswith("full log: ") and e.value.exit_code == 6
    assert records.read(p, IMAGE_ID) is None and eng.built == []


def test_missing_parent_is_named(offline):
    _project(offline)
    offline.add("kid", {"parent": "x", "tags": ["v1"]})
    p = load_project(offline.root)
    with pytest.raises(BuildError, match=r"parent image x:v1 is not built; run `imagekit build x`"):
        list(build(p.catalog.resolve("kid"), p, FakeEngine()))


def test_context_holds_only_what_the_dockerfile_uses(offline):
    p = _project(offline)
    plan = p.catalog.resolve("x")
    a = context_tar("FROM x\n", plan.spec.code_dir).getvalue()
    b = context_tar("FROM x\n", plan.spec.code_dir).getvalue()
    assert a == b
    names = tarfile.open(fileobj=io.BytesIO(a)).getnames()
    assert names == ["Dockerfile", "code", "code/data", "code/data/a.txt", "code/train.py"]


def test_the_engine_gets_that_context(offline):
    p = _project(offline)
    eng = FakeEngine()
    list(build(p.catalog.resolve("x"), p, eng))
    names = tarfile.open(fileobj=io.BytesIO(eng.contexts["x:v1"])).getnames()
    assert names == ["Dockerfile", "code", "code/data", "code/data/a.txt", "code/train.py"]


def test_no_engine_one_line_and_exit_code(offline):
    _project(offline)
    r = offline.run("build", "x", env={"DOCKER_HOST": "unix:///tmp/imagekit-no-engine.sock"})
    assert r.code == 5, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Docker engine answers" in lines[0]
    assert "make engine" in lines[0] and "Traceback" not in r.output


def test_help_for_every_verb():
    for verb in ("list", "validate", "render", "fetch", "build", "lint", "matrix", "smoke", "push",
                 "save", "load", "inspect", "new"):
        r = imagekit(verb, "--help")
        assert r.code == 0 and "Usage" in r.stdout, verb
    r = imagekit("base", "bootstrap", "--help")
    assert r.code == 0
