"""Bit-for-bit rebuilds on the real engine (BuildKit, the default builder):
`imagekit build --check-reproducible` builds the smallest catalog image twice
with no cache and finds every layer above the base alike (and the image ID);
a step that writes the time is named, with its path, and exits 19. Neither
run leaves its two throwaway images behind."""

from __future__ import annotations

import json

import pytest
from helpers import REPO, docker_cli, one_error, unique

from imagekit.engine import find_buildx

pytestmark = pytest.mark.skipif(not find_buildx().works, reason="no buildx plugin")


def _result(r) -> dict:
    found = [e for x in r.stdout.splitlines() if x.startswith("{")
             if (e := json.loads(x))["event"] == "result" and e["stage"] == "reproduce"]
    assert len(found) == 1, r.output[-3000:]
    return found[0]["data"]


def _throwaways(name: str) -> list[str]:
    listed = docker_cli("images", "--format", "{{.Repository}}:{{.Tag}}", name).stdout.split()
    return [x for x in listed if ":reproduce-" in x]


def test_two_cold_builds_of_the_smallest_image_are_alike(project, base_image):
    name = unique("repro")
    project.copy("ssd-mxnet-cpu", name, tags=["test"])
    r = project.run("--json", "build", "--check-reproducible", name, timeout=1800)
    assert r.code == 0, r.output[-3000:]
    got = _result(r)
    assert got["builder"] == "buildkit" and got["total"] >= 5
    assert got["identical"] == got["total"], [x for x in got["layers"] if not x["same"]]
    assert got["image_ids"][0] == got["image_ids"][1]       # the image config too
    assert len(got["seconds"]) == 2
    assert _throwaways(name) == []


def test_a_step_that_writes_the_time_is_named_with_its_path(project, base_image):
    """A project's own partial adds `RUN date +%s%N > /stamp`: exit 19, the
    layer of that step named with /stamp, every other layer alike."""
    name = unique("repro-stamp")
    project.copy("ssd-mxnet-cpu", name, tags=["test"])
    own = project.root / "templates" / "partials"
    own.mkdir(parents=True)
    own.joinpath("python.j2").write_text(
        (REPO / "templates" / "partials" / "python.j2").read_text()
        + "{{ run }} date +%s%N > /stamp\n")
    r = project.run("--json", "build", "--check-reproducible", name, timeout=1800)
    err = one_error(r, 19)
    assert "/stamp" in err["message"], err
    got = _result(r)
    differ = [x for x in got["layers"] if not x["same"]]
    assert len(differ) == 1 and got["identical"] == got["total"] - 1, differ
    assert differ[0]["step"].startswith("RUN date"), differ[0]
    stamp = {d["path"]: d for d in differ[0]["paths"]}["/stamp"]
    assert "content" in stamp["what"] and "mtime" in stamp["what"], stamp
    assert _throwaways(name) == []
