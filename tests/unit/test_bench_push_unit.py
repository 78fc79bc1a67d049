"""bench/run.py's reading of `imagekit --json` output (measurements 4, 7 and 8),
fed a canned event stream: no engine, no registry."""

from __future__ import annotations

import argparse
import importlib.util
import json
import shlex
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def run():
    spec = importlib.util.spec_from_file_location("bench_run", REPO / "bench" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture
def bench(run, tmp_path):
    args = argparse.Namespace(project=REPO, image="ocr-cpu", workdir=str(tmp_path), runs=1, quick=True,
                              jobs=2)
    b = run.Bench(args)
    yield b
    b.cleanup()


def stream(events: list[dict]) -> str:
    return "printf '%s\\n' " + " ".join(shlex.quote(json.dumps(e)) for e in events)


EVENTS = [
    {"event": "progress", "image": "x", "item": "layer sha256:0123456789ab", "current": 1, "total": 9,
     "status": "compressing"},
    {"event": "progress", "image": "x", "item": "127.0.0.1:5000/team/r aaaaaaaaaaaa", "current": 33554432,
     "total": 90000000, "status": "Pushing"},
    {"event": "warning", "image": "x", "message": "127.0.0.1:5000/team/r:v1: blob aaaaaaaaaaaa resumed at "
                                                  "33554432 bytes"},
    {"event": "progress", "image": "x", "item": "127.0.0.1:5000/team/r aaaaaaaaaaaa", "current": 90000000,
     "total": 90000000, "status": "Pushed"},
    {"event": "info", "image": "x", "message": "read the image once: 1 layers, 200 MB, 90 MB compressed, "
                                               "in 12.5s"},
    {"event": "progress", "image": "x", "item": "127.0.0.1:5000/team/r bbbbbbbbbbbb", "current": 1234,
     "total": 1234, "status": "Pushed"},
]


def result(via: str) -> dict:
    return {"event": "result", "image": "x", "stage": "push",
            "data": {"destinations": [{"ref": "r", "via": via, "bytes_sent": 90001234}]}}


def test_push_json_profile(run, bench):
    seen = []
    secs, prof = bench.push_json(stream([*EVENTS, result("direct")]), lambda ev, now: seen.append(ev))
    assert prof["blobs"] == {"aaaaaaaaaaaa": 90000000, "bbbbbbbbbbbb": 1234}
    assert prof["export"] == 12.5
    assert {"first_compressed", "first_chunk", "export_at"} <= set(prof)
    assert prof["destinations"][0]["bytes_sent"] == 90001234
    assert len(seen) == len(EVENTS) + 1 and secs >= 0
    assert run.went_on(prof["warnings"]) == "33.6 MB"


def test_push_json_refuses_a_push_on_another_path_than_measured(run, bench):
    with pytest.raises(run.BenchError, match="did not push via direct"):
        bench.push_json(stream([*EVENTS, result("engine")]))
    with pytest.raises(run.BenchError, match="did not push via engine"):
        bench.push_json(stream([*EVENTS, result("direct")]), via="engine")


def test_went_on(run):
    assert run.went_on(["r: blob abc started again (the registry lost the upload)", "other"]) \
        == "from 0 (started again)"
    assert run.went_on([]) == "-"


def test_builder_lines_are_not_installer_output(run):
    """The classic builder's line after a step's commit, with the color reset an
    installer's stderr left before it, does not count as the installer's output."""
    def engine(line: str) -> bool:
        return bool(run.ENGINE_LINE.match(run.ANSI.sub("", line)))
    assert engine("\x1b[0mRemoving intermediate container 8fc0a0a0c067")
    assert engine(" ---> 81bd418ff85b")
    assert not engine("\x1b[0m\x1b[91m + absl-py==2.5.1")
    assert not engine("Successfully installed tensorflow-2.21.0")
