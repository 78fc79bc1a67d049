"""The build stage against a fake engine (no Docker): stream parsing, failure
reporting, the build context, and the no-engine error."""

from __future__ import annotations

import io
import tarfile

import pytest
from helpers import imagekit

from imagekit.build import build
from imagekit.context import context_tar
from imagekit.config import load_project
from imagekit.errors import BuildError
from imagekit.events import Built, Cached, Step


class FakeEngine:
    def __init__(self, stream):
        self.stream = stream
        self.images = {}
        self.tagged = []

    def build(self, context, tag, network_mode=None, pull=False, nocache=False):
        self.context = context.getvalue()
        self.network_mode = network_mode
        yield from self.stream
        self.images[tag] = {"Id": "sha256:" + "ab" * 32}

    def image(self, ref):
        return self.images.get(ref)

    def tag(self, image, repo, tag):
        self.tagged.append((image, repo, tag))


def _project(project):
    cfg = project.root / "imagekit.toml"
    cfg.write_text("[bases]\n")  # no wheelhouse: no server needed
    project.add("x", {"framework": {"name": "pytorch", "version": "2.13.0"},
                      "code": {"src": "code", "dest": "/opt/x"}, "tags": ["v1", "latest"]},
                {"code/train.py": "print('hi')\n", "code/__pycache__/t.pyc": "junk",
                 "code/data/a.txt": "a"})
    return load_project(project.root)


def test_stream_to_events_and_record(project):
    p = _project(project)
    stream = [{"stream": "Step 1/3 : FROM python:3.11-slim-bookworm\n"},
              {"stream": " ---> 123\n"},
              {"stream": "Step 2/3 : RUN pip install torch\n"},
              {"stream": " ---> Using cache\n"},
              {"stream": "Step 3/3 : COPY code/ /opt/x/\n"},
              {"stream": "copying\n"},
              {"aux": {"ID": "sha256:" + "ab" * 32}},
              {"stream": "Successfully built abababababab\n"}]
    eng = FakeEngine(stream)
    events = list(build(p.catalog.resolve("x"), p, eng))
    steps = [e for e in events if isinstance(e, Step)]
    assert [s.index for s in steps] == [1, 2, 3] and steps[0].total == 3
    assert len([e for e in events if isinstance(e, Cached)]) == 1
    built = events[-1]
    assert isinstance(built, Built) and built.cached_steps == 1 and built.refs == ["x:v1", "x:latest"]
    assert eng.tagged == [("sha256:" + "ab" * 32, "x", "latest")]
    assert eng.network_mode is None
    assert (p.state_dir / "builds").is_dir()


def test_failed_step_names_step_and_log_tail(project):
    p = _project(project)
    stream = [{"stream": "Step 1/2 : FROM python:3.11-slim-bookworm\n"},
              {"stream": "Step 2/2 : RUN pip install nosuchpkg\n"},
              {"stream": "ERROR: No matching distribution found for nosuchpkg\n"},
              {"error": "The command '/bin/sh -c pip install nosuchpkg' returned a non-zero code: 1",
               "errorDetail": {"message": "The command '/bin/sh -c pip install nosuchpkg' "
                                          "returned a non-zero code: 1"}}]
    with pytest.raises(BuildError) as e:
        list(build(p.catalog.resolve("x"), p, FakeEngine(stream)))
    assert "step 2/2" in e.value.message and "RUN pip install nosuchpkg" in e.value.message
    assert any("No matching distribution" in d for d in e.value.details)
    assert e.value.exit_code == 6


def test_context_holds_only_what_the_dockerfile_uses(project):
    p = _project(project)
    plan = p.catalog.resolve("x")
    a = context_tar("FROM x\n", plan.spec.code_dir).getvalue()
    b = context_tar("FROM x\n", plan.spec.code_dir).getvalue()
    assert a == b
    names = tarfile.open(fileobj=io.BytesIO(a)).getnames()
    assert names == ["Dockerfile", "code/data", "code/data/a.txt", "code/train.py"]


def test_no_engine_one_line_and_exit_code(project):
    _project(project)
    r = project.run("build", "x", env={"DOCKER_HOST": "unix:///tmp/imagekit-no-engine.sock"})
    assert r.code == 5, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "no Docker engine answers" in lines[0]
    assert "make engine" in lines[0] and "Traceback" not in r.output


def test_help_for_every_verb():
    for verb in ("list", "validate", "render", "fetch", "build", "lint", "matrix"):
        r = imagekit(verb, "--help")
        assert r.code == 0 and "Usage" in r.stdout, verb
    r = imagekit("base", "bootstrap", "--help")
    assert r.code == 0
