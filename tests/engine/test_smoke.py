"""The smoke gate against the real engine: real training in TensorFlow,
PyTorch and MXNet images; broken images fail with one clear line; nothing is
left behind."""

from __future__ import annotations

import json

import pytest
from helpers import imagekit, leftovers, unique

from imagekit.engine import Engine, identity_of


def _smoke(built, *args):
    return built.project.run("--json", "smoke", built.name, *args, timeout=900)


def _report(r):
    events = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    return next(e["data"] for e in events if e["event"] == "result" and e["stage"] == "smoke")


@pytest.mark.parametrize("fixture,framework", [("tf_image", "tensorflow"),
                                               ("torch_image", "pytorch"),
                                               ("mxnet_image", "mxnet")])
def test_framework_check_and_own_training(request, fixture, framework, docker_api):
    built = request.getfixturevalue(fixture)
    r = _smoke(built)
    assert leftovers(docker_api, built.ref) == []
    assert r.code == 0, r.output[-3000:]
    rep = _report(r)
    fc = rep["framework_check"]
    assert fc["framework"] == framework and fc["device"] == "cpu"
    assert fc["loss_last"] < 0.5 * fc["loss_first"] and fc["steps_per_sec"] > 0
    tr = rep["training"]
    assert len(tr["runs"]) == 2 and tr["resumed_from"] == tr["steps"]
    assert tr["output_files"]
    assert rep["passed"] is True
    # stored with the build record, keyed by the image's identity (the same on every store)
    raw = docker_api.inspect_image(built.ref)
    assert rep["image_id"] == raw["Id"]
    key = identity_of(raw)
    rec = built.project.root / ".imagekit" / "builds" / f"{key.removeprefix('sha256:')[:16]}.json"
    assert json.loads(rec.read_text())["smoke"]["passed"] is True


def test_rich_summary_names_device_loss_and_speed(mxnet_image, docker_api):
    r = mxnet_image.project.run("smoke", mxnet_image.name, "--steps", "5", timeout=900)
    assert leftovers(docker_api, mxnet_image.ref) == []
    assert r.code == 0, r.output[-2000:]
    assert "on cpu" in r.stdout and "loss" in r.stdout and "steps/s" in r.stdout
    assert "log " in r.stdout


SHADOW = {"shadow/mxnet/__init__.py": "raise ImportError('libmxnet.so: simulated broken build')\n"}

BROKEN = [
    ("import-fails", {"code": {"src": "shadow", "dest": "/opt/shadow"},
                      "env": {"PYTHONPATH": "/opt/shadow"}}, SHADOW,
     ["framework check failed", "import mxnet failed", "simulated broken build"]),
    ("diverges", {"env": {"IMAGEKIT_CHECK_LR": "1e6"}}, None,
     ["framework check failed", "loss diverged"]),
    ("hangs", {"train": {"command": "python -c 'import time; time.sleep(3600)'"},
               "smoke": {"framework_check": False, "timeout": 8}}, None,
     ["training timed out after 8s", "container was removed"]),
    ("crashes", {"train": {"command": "python -c 'raise SystemExit(\"boom: out of memory\")'"},
                 "smoke": {"framework_check": False}}, None,
     ["training exited with code 1", "boom: out of memory"]),
    ("no-checkpoint", {"train": {"command": "python -c 'print(\"trained, saved nothing\")'"},
                       "smoke": {"framework_check": False, "expect": ["model.ckpt*"]}}, None,
     ["expected output model.ckpt*", "did not appear"]),
    ("no-resume", {"train": {"command": "python -c 'print(\"fresh start\")'"},
                   "smoke": {"framework_check": False, "resume": True}}, None,
     ["did not resume", "resumed from step 10"]),
]


@pytest.mark.parametrize("case", BROKEN, ids=[c[0] for c in BROKEN])
def test_broken_images_fail_clearly(mxnet_image, child_of, docker_api, case):
    prefix, spec, files, words = case
    built = child_of(mxnet_image, f"broken-{prefix}", spec, files)
    r = built.project.run("smoke", built.name, timeout=600)
    assert r.code == 8, r.output[-2000:]
    first = r.stderr.strip().splitlines()[0]
    for w in words:
        assert w in first, (w, first)
    assert "Traceback" not in r.output
    assert leftovers(docker_api, built.ref) == []


def test_gpu_training_when_the_engine_has_one(session_project, docker_api, base_image):
    if not Engine.connect().gpu_capable():
        pytest.skip("no GPU on this engine (no nvidia runtime or CDI GPU device in docker info)")
    name = unique("ocr-gpu")
    session_project.copy("ocr-gpu", name, tags=["test"])
    assert session_project.run("fetch", name, timeout=1800).code == 0
    assert session_project.run("build", name, timeout=1800).code == 0
    try:
        r = session_project.run("--json", "smoke", name, "--gpu", "require", timeout=1800)
        assert r.code == 0, r.output[-2000:]
        assert _report(r)["framework_check"]["device"] == "gpu"
    finally:
        docker_api.remove_image(f"{name}:test", force=True)


def test_notebook_answers_under_base_url(notebook_image, docker_api):
    nb = notebook_image
    r = _smoke(nb)
    assert r.code == 0, r.output[-3000:]
    rep = _report(r)["notebook"]
    assert rep["lab"] == 200 and rep["api_status"] == 200
    assert rep["url"] == "/imagekit/smoke/lab"
    assert leftovers(docker_api, nb.ref) == []


def test_smoke_of_unbuilt_image(session_project):
    name = unique("never-built")
    session_project.add(name, {"framework": {"name": "mxnet", "version": "1.9.1"},
                               "python": "3.11"})
    r = session_project.run("smoke", name)
    assert r.code == 8 and "is not built" in r.stderr


def test_no_engine_for_smoke():
    r = imagekit("smoke", "ocr-cpu", env={"DOCKER_HOST": "tcp://127.0.0.1:9"})
    assert r.code == 5 and "no Docker engine answers at tcp://127.0.0.1:9" in r.stderr


def _interrupt_when(proc, ready, limit=300):
    import signal
    import time
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline and proc.poll() is None:
        if ready():
            time.sleep(1)
            proc.send_signal(signal.SIGINT)
            return proc.wait(timeout=60)
        time.sleep(0.3)
    proc.kill()
    raise AssertionError("never reached the point to interrupt")


def test_ctrl_c_during_smoke_removes_everything(mxnet_image, child_of, docker_api):
    import subprocess
    import sys
    built = child_of(mxnet_image, "ctrl-c", {
        "train": {"command": "python -c 'import time; time.sleep(3600)'"},
        "smoke": {"framework_check": False, "timeout": 600}})
    proc = subprocess.Popen([sys.executable, "-m", "imagekit", "-C", str(built.project.root),
                             "smoke", built.name], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    code = _interrupt_when(proc, lambda: bool(leftovers(docker_api, built.ref)))
    err = proc.stderr.read()
    assert code == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert leftovers(docker_api, built.ref) == []


@pytest.mark.parametrize("builder", ["classic", "buildkit"])
def test_ctrl_c_during_build_leaves_no_container(mxnet_image, session_project, docker_api,
                                                 builder):
    """Ctrl-C while a RUN step runs: exit 130, and the step's process (the
    classic builder's container; BuildKit's runc process and buildx itself)
    is gone soon after, with no image made."""
    import subprocess
    import sys
    import time
    name = unique("ctrl-c-build")
    token = name.rsplit("-", 1)[-1]
    session_project.add(name, {"parent": mxnet_image.name, "apt": ["curl"],
                               "env": {"CTRL_C": token}, "tags": ["test"]})
    proc = subprocess.Popen([sys.executable, "-m", "imagekit", "-C", str(session_project.root),
                             "build", name, "--builder", builder, "--no-cache"],
                            stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)

    def running(pattern: str) -> bool:
        return subprocess.run(["pgrep", "-f", pattern], capture_output=True).returncode == 0

    def building():
        if builder == "classic":
            return bool(docker_api.containers(all=True, filters={"ancestor": mxnet_image.ref}))
        return running("install -y --no-install-recommends curl")

    code = _interrupt_when(proc, building)
    assert code == 130, proc.stderr.read()
    for _ in range(30):  # the engine cancels the build when the client goes away
        if not building() and not running(f"buildx build.*{name}:test"):
            break
        time.sleep(1)
    assert not building(), "the build's step was left running"
    assert not running(f"buildx build.*{name}:test"), "buildx was left running"
    assert docker_api.images(name=name) == []
