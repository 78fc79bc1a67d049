"""The smoke stage against the fake engine's scripted containers (no Docker):
the framework check's report, the image's own training with resume and
expected output, how each failure is reported, that every container and
volume is removed, and the smoke mark stored under the image ID."""

from __future__ import annotations

import json

import pytest
from fakes import FakeEngine

from imagekit import records, targets
from imagekit.config import load_project
from imagekit.errors import GpuUnavailable, SmokeError
from imagekit.events import Log, SmokeResult, Warn
from imagekit.smoke import NETWORK_OFF, NO_GPU_NOTE, REPORT_MARK, SmokeTarget, smoke

IID = "sha256:" + "ab" * 32
TRAIN = "python /opt/x/train.py"


def report(**kw) -> str:
    rep = {"framework": "pytorch", "version": "2.13.0", "python": "3.11", "device": "cpu",
           "device_name": "x86_64", "steps": 50, "loss_first": 14.6, "loss_last": 0.01,
           "steps_per_sec": 99.0, "ok": True, **kw}
    return REPORT_MARK + json.dumps(rep)


@pytest.fixture
def proj(offline):
    offline.add("x", {"framework": {"name": "pytorch", "version": "2.13.0"}, "tags": ["v1"],
                      "code": {"src": "code", "dest": "/opt/x"}, "train": {"command": TRAIN},
                      "smoke": {"steps": 5, "resume": True, "resume_args": "--resume",
                                "expect": ["*.pt"]}},
                {"code/train.py": "print('hi')\n"})
    return load_project(offline.root)


def engine(gpu: bool = False) -> FakeEngine:
    eng = FakeEngine(gpu=gpu)
    eng.add_image("x:v1", IID)
    eng.on_run("_check.py", logs=["training tiny model", report()])
    eng.on_run(TRAIN, logs=["step 5"], writes={"/data/output": ["ckpt/model.pt"]})
    eng.on_run("--resume", logs=["resumed from step 5", "step 10"])
    return eng


def _smoke(p, eng, name="x", **kw):
    target = SmokeTarget.of(targets.resolve(p, eng, name, error=SmokeError), kw.pop("command", None))
    return list(smoke(target, p, eng, **kw))


def _all_removed(eng: FakeEngine) -> bool:
    return all(c.removed for c in eng.containers) and not any(eng.volumes.values())


def test_a_passing_smoke_test(proj):
    eng = engine()
    events = _smoke(proj, eng)
    res = events[-1]
    assert isinstance(res, SmokeResult) and res.passed and res.error is None
    assert res.image == "x" and res.ref == "x:v1" and res.image_id == IID
    fc = res.framework_check
    assert fc.framework == "pytorch" and fc.loss_last == 0.01 and fc.wall_seconds >= 0
    tr = res.training
    assert [r.command for r in tr.runs] == [["python", "/opt/x/train.py", "--steps", "5"],
                                            ["python", "/opt/x/train.py", "--steps", "10", "--resume"]]
    assert tr.resumed_from == 5 and tr.output_files == ["ckpt/model.pt"]
    assert [e.line for e in events if isinstance(e, Log)][:1] == ["training tiny model"]
    # the check got its files; no container had a network or a GPU; all removed
    check = eng.containers[0]
    assert "imagekit/checks/pytorch_check.py" in check.file_names()
    assert "imagekit/checks/harness.py" in check.file_names()
    assert not any(c.network or c.gpus for c in eng.containers)
    assert _all_removed(eng) and len(eng.volumes) == 2
    assert records.smoke_passed(proj, IID)
    stored = json.loads((proj.state_dir / "smoke" / f"{'ab' * 8}.json").read_text())
    assert stored["passed"] is True and stored["ref"] == "x:v1"


def test_training_failure_is_reported_with_its_tail(proj):
    eng = engine()
    eng.on_run(TRAIN, logs=["Traceback", "ValueError: bad"], exit_code=1)
    with pytest.raises(SmokeError) as e:
        _smoke(proj, eng)
    assert e.value.exit_code == 8 and "training exited with code 1: ValueError: bad" in e.value.message
    assert "| ValueError: bad" in e.value.details and e.value.details[-1].startswith("full log: ")
    assert _all_removed(eng) and not records.smoke_passed(proj, IID)
    assert json.loads((proj.state_dir / "smoke" / f"{'ab' * 8}.json").read_text())["error"]


def test_a_run_that_does_not_resume_fails(proj):
    eng = engine()
    eng.on_run("--resume", logs=["starting over at step 0"])
    with pytest.raises(SmokeError, match="did not resume from the first"):
        _smoke(proj, eng)
    assert _all_removed(eng)


def test_missing_expected_output_fails(proj):
    eng = engine()
    eng.on_run(f"{TRAIN} --steps 5", writes={"/data/output": ["log.txt"]})
    with pytest.raises(SmokeError, match=r"expected output \*\.pt did not appear .*found: log.txt"):
        _smoke(proj, eng)


def test_a_hanging_container_times_out_and_is_removed(proj):
    eng = engine()
    eng.on_run("_check.py", hang=True)
    with pytest.raises(SmokeError, match="framework check timed out after 7s"):
        _smoke(proj, eng, timeout=7)
    assert _all_removed(eng)


def test_no_network_is_named_when_the_log_says_so(proj):
    eng = engine()
    eng.on_run(TRAIN, exit_code=1, logs=[
        "urllib.error.URLError: <urlopen error [Errno -3] Temporary failure in name resolution>"])
    with pytest.raises(SmokeError) as e:
        _smoke(proj, eng)
    assert NETWORK_OFF in e.value.message


def test_gpu_image_on_an_engine_without_gpu(offline):
    offline.add("g", {"framework": {"name": "pytorch", "version": "2.13.0"}, "device": "gpu",
                      "tags": ["v1"], "smoke": {"framework_check": True}})
    p = load_project(offline.root)
    eng = FakeEngine(gpu=False)
    eng.add_image("g:v1", IID)
    eng.on_run("_check.py", logs=[report(gpu_readiness={"cuda_build": "12.4"})])
    events = _smoke(p, eng, "g")
    assert any(isinstance(e, Warn) and e.message == NO_GPU_NOTE for e in events)
    assert events[-1].note == NO_GPU_NOTE and not eng.containers[0].gpus
    with pytest.raises(GpuUnavailable) as e:
        _smoke(p, eng, "g", gpu="require")
    assert e.value.exit_code == 9


def test_gpus_requested_and_refused_inside_the_container(offline):
    offline.add("g", {"framework": {"name": "pytorch", "version": "2.13.0"}, "device": "gpu",
                      "tags": ["v1"]})
    p = load_project(offline.root)
    eng = FakeEngine(gpu=True)
    eng.add_image("g:v1", IID)
    eng.on_run("_check.py", exit_code=2, logs=[report(ok=False, reason="CUDA driver too old")])
    with pytest.raises(GpuUnavailable, match="CUDA driver too old"):
        _smoke(p, eng, "g", gpu="require")
    assert eng.containers[0].gpus and "--device gpu" in " ".join(eng.containers[0].command)


def test_an_image_from_outside_the_catalog_is_probed(offline):
    p = load_project(offline.root)
    eng = FakeEngine()
    eng.add_image("ghcr.io/org/trainer:1", IID)
    eng.on_run("importlib", logs=['{"framework": "mxnet", "version": "1.9.1"}'])
    eng.on_run("mxnet_check.py", logs=[report(framework="mxnet", version="1.9.1")])
    eng.on_run("train.py", writes={"/data/output": ["w.params"]})
    res = _smoke(p, eng, "ghcr.io/org/trainer:1", command="python train.py --epochs 1")[-1]
    assert res.passed and res.framework_check.framework == "mxnet"
    assert res.training.runs[0].command == ["python", "train.py", "--epochs", "1"]
    assert _all_removed(eng)


def test_smoke_of_an_image_that_is_gone(proj):
    eng = engine()
    target = SmokeTarget.of(targets.resolve(proj, eng, "x"))
    eng.images.clear()
    with pytest.raises(SmokeError, match="not in the engine; run `imagekit build x`"):
        list(smoke(target, proj, eng))
