"""The display renders every stage result: plain lines (checked line by line),
--json (the documented {"event": "result", "image", "stage", "data"} shape),
and the rich view (into a recording console)."""

from __future__ import annotations

import dataclasses
import io
import json

import pytest
from rich.console import Console

from imagekit import display as display_mod
from imagekit.display import Display
from imagekit.events import (
    BaseResult,
    Built,
    Cached,
    CatalogEntry,
    CatalogResult,
    Checked,
    DoctorCheck,
    DoctorResult,
    Failed,
    FetchResult,
    FrameworkReport,
    GraphResult,
    ImageOutcome,
    Info,
    InspectResult,
    LayerCheck,
    LayerReport,
    LoadResult,
    LockResult,
    Log,
    MatrixResult,
    MatrixRow,
    NotebookResult,
    PathDifference,
    PlatformRow,
    PlatformsResult,
    Progress,
    PushedDestination,
    PushResult,
    ReproduceResult,
    SaveResult,
    SbomResult,
    Skipped,
    SmokeResult,
    StageResult,
    Step,
    TrainingResult,
    TrainingRun,
    Warn,
    WastedPath,
)

IID = "sha256:" + "ab" * 32
DIGEST = "sha256:" + "cd" * 32

RESULTS: dict[type, StageResult] = {r.__class__: r for r in [
    FetchResult("x", downloaded=3, bytes=12_300_000, wheelhouse="/wh"),
    BaseResult("imagekit/base:bookworm", image_id=IID, made=True, size=1),
    GraphResult("", {"a": ImageOutcome("ok"), "bb": ImageOutcome("failed", "bb: build failed", 6),
                     "c": ImageOutcome("skipped", "its parent bb failed")}),
    SmokeResult("x", ref="x:v1", image_id=IID, log="/l.log", passed=True, seconds=12.5,
                note="ran on CPU: this engine has no GPU",
                framework_check=FrameworkReport("pytorch", "2.13.0", "3.11", "cpu", "x86_64", steps=50,
                                                loss_first=14.6, loss_last=0.001,
                                                steps_per_sec=120.0, ok=True),
                training=TrainingResult(10, [TrainingRun(["python", "t.py"], 0, 1.5),
                                             TrainingRun(["python", "t.py"], 0, 2.0)], 10,
                                        ["a", "b"]),
                notebook=NotebookResult("/imagekit/smoke/lab", 3.2)),
    PushResult("x", image_id=IID, source="x:v1", smoke_passed=True,
               destinations=[PushedDestination("r.example.com/t/x:v1", "r.example.com/t/x", "v1",
                                               DIGEST, f"r.example.com/t/x@{DIGEST}", 1, 2.0)]),
    SaveResult("x", path="/o/x.zip", format="zip", bytes=500_000, tar_bytes=1_000_000,
               sha256="ee" * 32, sha256_file="/o/x.zip.sha256", manifest_file="/o/x.zip.json",
               image_id=IID, ref="x:v1", seconds=1.5, mb_per_s=0.7),
    LoadResult("x", path="/o/x.zip", format="zip", refs=["x:v1"], image_id=IID,
               checksum="verified", manifest="image ID matches"),
    ReproduceResult("x", builder="buildkit", base="b:1", base_layers=1, identical=1, total=2,
                    seconds=[9.04, 8.26], image_ids=[IID, DIGEST], source_date_epoch=315532800,
                    layers=[LayerCheck(2, "RUN a", [IID, IID]),
                            LayerCheck(3, "RUN date > /stamp", [IID, DIGEST], same=False,
                                       paths=[PathDifference("/stamp", ["content"], "A", "B")],
                                       paths_total=3, why="because")]),
    LockResult("x", path="images/x/requirements.lock", packages=33,
               steps={"framework": 31, "pip": 33}, added=["six"], changed=["numpy"],
               written=True, replaced=True, epoch=1796417488, digest="sha256:" + "cd" * 32,
               seconds=0.7),
    SbomResult("x", ref="x:v1", image_id=IID, path="/o/x.sbom.json", python_packages=33,
               debian_packages=118, cuda_libraries=1, wheel_hashes=31, seconds=1.2),
    InspectResult("x:v1", image_id=IID, size=5,
                  layers=[LayerReport(3_000_000, 1_000_000, "RUN a"), LayerReport(7, 0, "RUN b")],
                  total_bytes=3_000_007, wasted_bytes=1_000_000, efficiency=0.666,
                  top_wasted=[WastedPath("big", 1_000_000)], python_packages={"torch": "2.13.0"},
                  labels={"io.imagekit.framework": "pytorch"}),
    CatalogResult("", folder="/p/images", entries=[
        CatalogEntry("x", "pytorch 2.13.0", "cpu", "3.11", "-", "-", "-", "v1", "desc")]),
    MatrixResult("", rows=[MatrixRow("pytorch", "2.13.0", "3.11", "torch==2.13.0", "torch==2.13.0",
                                     "12.4 / 9 (wheels)", "nvidia/cuda"),
                           MatrixRow("tensorflow", "1.6.0", refused="needs CUDA 9")]),
    PlatformsResult("", rows=[PlatformRow("sagemaker", "output=/opt/ml/model", "root", 64,
                                          "writable", "none", 1, "IMAGE train", "shipped",
                                          "SageMaker training jobs")]),
    DoctorResult("", where="unix:///var/run/docker.sock", server_version="26.1.5",
                 checks=[DoctorCheck("engine", "unix:///var/run/docker.sock (the default socket)"),
                         DoctorCheck("base", "b:1: not in the engine", ok=False,
                                     fix="imagekit base bootstrap")]),
]}

PLAIN: dict[type, list[str]] = {
    FetchResult: ["x: fetched 3 files (12.3 MB) into /wh"],
    BaseResult: ["made imagekit/base:bookworm (sha256:abababababab)"],
    GraphResult: ["a   ok", "bb  failed   bb: build failed", "c   skipped  its parent bb failed"],
    SmokeResult: ["x: smoke passed in 12.5s (sha256:abababababab)",
                  "  framework  pytorch 2.13.0 on cpu (x86_64)",
                  "  steps      50, loss 14.6 -> 0.001, 120.0 steps/s",
                  "  training   2 runs (1.5s, 2.0s), resumed from step 10; 2 output files",
                  "  notebook   JupyterLab answered at /imagekit/smoke/lab in 3.2s",
                  "  note       ran on CPU: this engine has no GPU",
                  "  log        /l.log"],
    PushResult: ["x: pushed sha256:abababababab to 1 destination (smoke test passed)",
                 f"  r.example.com/t/x:v1  {DIGEST}"],
    SaveResult: ["x: saved x:v1 (sha256:abababababab) to /o/x.zip",
                 "  zip, 0.5 MB, 50% of the tar, 1.5s (0.7 MB/s read)",
                 f"  sha256 {'ee' * 32}  (/o/x.zip.sha256; manifest /o/x.zip.json)"],
    LoadResult: [f"loaded x:v1 ({IID}) from /o/x.zip",
                 "  checksum verified; manifest: image ID matches"],
    ReproduceResult: ["x: NOT reproducible: 1/2 layers above the base (b:1) identical across two "
                      "cold builds with buildkit (9.0s and 8.3s; SOURCE_DATE_EPOCH 315532800)",
                      "  image IDs sha256:abababababab and sha256:cdcdcdcdcdcd (the image config "
                      "differs)",
                      "  layer 2   same   sha256:abababababab  RUN a",
                      "  layer 3   DIFFERS sha256:abababababab vs sha256:cdcdcdcdcdcd  RUN date > "
                      "/stamp",
                      "    /stamp  content: A | B",
                      "    (2 more paths differ)",
                      "    why: because"],
    LockResult: ["x: wrote images/x/requirements.lock: 33 packages pinned with their sha256 "
                 "(framework 31, pip 33) in 0.7s",
                 "  1 added, 1 changed since the last lock: six, numpy",
                 "  its builds use SOURCE_DATE_EPOCH 1796417488; sha256:cdcdcdcdcdcd"],
    SbomResult: ["x: bill of materials of x:v1 (sha256:abababababab) to /o/x.sbom.json in 1.2s",
                 "  33 Python packages (31 with their wheel's sha256), 118 Debian packages, "
                 "1 CUDA library; CycloneDX 1.5"],
    InspectResult: ["x:v1  sha256:abababababab  3.0 MB in 2 layers; wasted 1.00 MB, efficiency 66.60%",
                    "layer\tsize MB\twasted MB\tcreated by",
                    "1\t3.0\t1.00\tRUN a",
                    "2\t0.0\t0.00\tRUN b",
                    "  wasted     1.00 MB  big",
                    "python packages (1): torch==2.13.0",
                    "  label io.imagekit.framework=pytorch"],
    CatalogResult: ["imagekit catalog (/p/images)",
                    "name\tframework\tdevice\tpython\tcuda\tparent\tjupyter\ttags\tdescription",
                    "x\tpytorch 2.13.0\tcpu\t3.11\t-\t-\t-\tv1\tdesc"],
    MatrixResult: ["imagekit compatibility matrix"],
    PlatformsResult: ["platform profiles (imagekit smoke NAME --platform P)",
                      "name\tmounts\tuser\tshm mb\troot fs\tnetwork\tnodes\tstart\tsource",
                      "sagemaker\toutput=/opt/ml/model\troot\t64\twritable\tnone\t1\tIMAGE train"
                      "\tshipped",
                      "sagemaker: SageMaker training jobs"],
    DoctorResult: ["engine  unix:///var/run/docker.sock (the default socket)",
                   "base    b:1: not in the engine",
                   "        fix: imagekit base bootstrap",
                   "1 thing to fix (above)"],
}


def _plain(capsys, *events) -> list[str]:
    with Display("plain") as d:
        for ev in events:
            d.show(ev)
    return [line.rstrip() for line in capsys.readouterr().out.splitlines()]


def test_every_stage_result_type_is_covered_here():
    def all_subclasses(cls):
        for sub in cls.__subclasses__():
            yield sub
            yield from all_subclasses(sub)
    assert set(all_subclasses(StageResult)) <= set(RESULTS), "add the new result type to this test"


@pytest.mark.parametrize("kind", list(RESULTS), ids=lambda k: k.__name__)
def test_plain_lines(capsys, kind):
    lines = _plain(capsys, RESULTS[kind])
    want = PLAIN[kind]
    assert lines[:len(want)] == want


def test_plain_matrix_table(capsys):
    lines = _plain(capsys, RESULTS[MatrixResult])
    head = lines[1].split("\t")
    assert head[:8] == ["framework", "version", "python", "cpu install", "gpu install", "cuda",
                        "gpu base", "refused"]
    rows = [dict(zip(head, line.split("\t"), strict=False)) for line in lines[2:]]
    assert rows[0]["version"] == "2.13.0" and rows[0]["gpu base"] == "nvidia/cuda"
    assert rows[1]["framework"] == "tensorflow" and rows[1]["refused"] == "needs CUDA 9"


def test_a_single_ok_build_needs_no_summary(capsys):
    assert _plain(capsys, GraphResult("", {"a": ImageOutcome("ok")})) == []


@pytest.mark.parametrize("kind", list(RESULTS), ids=lambda k: k.__name__)
def test_json_is_the_documented_result_shape(capsys, kind):
    result = RESULTS[kind]
    with Display("json") as d:
        d.show(result)
    (line,) = capsys.readouterr().out.splitlines()
    got = json.loads(line)
    assert list(got) == ["event", "image", "stage", "data"]
    assert got["event"] == "result" and got["stage"] == kind.stage and got["image"] == result.image
    want = dataclasses.asdict(result)
    want.pop("image")
    assert got["data"] == json.loads(json.dumps(want))


def test_json_keys_that_scripts_read(capsys):
    with Display("json") as d:
        for kind in (SmokeResult, PushResult, LoadResult, InspectResult):
            d.show(RESULTS[kind])
    smoke, push, load, inspect = (json.loads(x)["data"] for x in capsys.readouterr().out.splitlines())
    assert smoke["ref"] == "x:v1" and smoke["passed"] is True
    assert smoke["framework_check"]["loss_last"] == 0.001 and smoke["training"]["resumed_from"] == 10
    assert push["destinations"][0]["pinned"] == f"r.example.com/t/x@{DIGEST}"
    assert load["refs"] == ["x:v1"] and load["image_id"] == IID
    assert inspect["wasted_bytes"] == 1_000_000 and inspect["layers"][0]["wasted"] == 1_000_000


@pytest.mark.parametrize("kind", list(RESULTS), ids=lambda k: k.__name__)
def test_rich_view_renders_every_result(monkeypatch, kind):
    console = Console(file=io.StringIO(), width=200, force_terminal=False, highlight=False)
    monkeypatch.setattr(display_mod, "out", console)
    with Display("rich") as d:
        d.show(RESULTS[kind])
    text = console.file.getvalue()
    tables = {GraphResult: "its parent bb failed", InspectResult: "RUN a", CatalogResult: "desc",
              MatrixResult: "needs CUDA 9", PlatformsResult: "IMAGE train"}
    assert tables.get(kind, PLAIN[kind][0]) in text


def test_build_events_in_plain_lines(capsys):
    lines = _plain(capsys, Step("x", 1, 2, "FROM base"), Cached("x", 1), Log("x", "hello"),
                   Built("x", IID, ["x:v1", "x:latest"], 3.25, 2, 1, "/l"),
                   Skipped("y", "its parent x failed"), Failed("z", "z: boom"),
                   Warn("x", "careful"), Warn("", "global"), Info("x", "note"), Info("", "bare"),
                   Checked("x", "validate"))
    assert lines == ["x: step 1/2 FROM base", "x:   cached", "x: | hello",
                     "x: built sha256:abababababab as x:v1, x:latest in 3.2s (1/2 steps from cache)",
                     "y: skipped: its parent x failed", "z: failed: z: boom",
                     "x: warning: careful", "warning: global", "x: note", "bare", "ok  x"]


@pytest.mark.parametrize("printed, shown", [
    ("\x1b[1;31mred\x1b[0m text", "red text"),                    # colours
    ("\x1b]0;owned\x07title", "title"),                           # window title (OSC)
    ("\x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\", "link"),     # hyperlink (OSC 8)
    ("\x1b[2J\x1b[Hcleared", "cleared"),                          # clear screen, cursor home
    ("\x1bcreset", "reset"),                                      # full reset (RIS)
    ("10%\r50%\r100%", "100%"),                                    # a progress bar
    ("a\tb", "a   b"),
    ("bell\x07", "bell\\x07"), ("nul\x00", "nul\\x00"), ("ls\u2028x", "ls\\u2028x"),
])
def test_what_a_container_prints_is_shown_not_obeyed(capsys, printed, shown):
    assert _plain(capsys, Log("x", printed)) == [f"x: | {shown}"]


def test_plain_progress_prints_each_change_of_status(capsys):
    lines = _plain(capsys, Progress("x", "r/t l1", 0, 20, "Preparing"),
                   Progress("x", "r/t l1", 10, 20_000_000, "Pushing"),
                   Progress("x", "r/t l1", 11, 20_000_000, "Pushing"),
                   Progress("x", "r/t l1", 0, 0, "Pushed"))
    assert lines == ["x: r/t l1 Preparing 0/20 B", "x: r/t l1 Pushing 0.0/20.0 MB",
                     "x: r/t l1 Pushed"]
    lines = _plain(capsys, Progress("x", "r/t cfg", 7_310, 7_310, "Pushed"))
    assert lines == ["x: r/t cfg Pushed 7.3/7.3 kB"]


def test_json_mode_writes_every_event(capsys):
    with Display("json") as d:
        d.show(Step("x", 1, 2, "FROM base"))
        d.show(Progress("x", "layer", 1, 2, "Pushing"))
    step, prog = (json.loads(x) for x in capsys.readouterr().out.splitlines())
    assert step == {"event": "step", "image": "x", "index": 1, "total": 2, "instruction": "FROM base"}
    assert prog["event"] == "progress" and prog["current"] == 1


@pytest.mark.parametrize("compressed, stored, line", [
    (2_353_304_576, None, "  bytes compressed: 2353304576 (2353 MB)"),
    (0, 5, "  bytes compressed: 0; 5 layers sent as the engine stored them"),
    (512, None, "  bytes compressed: 512"),
])
def test_push_says_what_it_compressed(capsys, compressed, stored, line):
    r = dataclasses.replace(RESULTS[PushResult], bytes_compressed=compressed,
                            layers_as_stored=stored)
    assert _plain(capsys, r)[-1] == line
