"""The suite's one GPU image (ssd-mxnet-gpu, MXNet with CUDA 11 from NVIDIA's
wheels), on an engine with no GPU: it builds with no registry, its labels say
what pip installed, its smoke test passes with a GPU-ready verdict, a target
platform it cannot run on fails with exit 17, and an image with a CUDA library
deleted fails naming it."""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest
from helpers import leftovers

from imagekit.engine import Engine


def _events(out: str) -> list[dict]:
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _report(r) -> dict:
    return next(e["data"] for e in _events(r.stdout)
                if e["event"] == "result" and e["stage"] == "smoke")


@pytest.fixture(scope="module")
def no_gpu():
    if Engine.connect().gpu_capable():
        pytest.skip("this engine has a GPU: these tests are about proving GPU images without one")


def _pip(ref: str) -> dict[str, str]:
    out = subprocess.run(["docker", "run", "--rm", "--network", "none", ref, "python", "-m", "pip",
                          "list", "--format", "json", "--disable-pip-version-check"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return {p["name"].lower(): p["version"] for p in json.loads(out.stdout)}


def test_labels_match_what_pip_installed(gpu_image, docker_api):
    labels = docker_api.inspect_image(gpu_image.ref)["Config"]["Labels"]
    pip = _pip(gpu_image.ref)
    runtime = pip["nvidia-cuda-runtime-cu11"]
    cudnn = pip["nvidia-cudnn-cu11"]
    nccl = pip["nvidia-nccl-cu11"]
    assert labels["io.imagekit.cuda"] == ".".join(runtime.split(".")[:2])
    assert labels["io.imagekit.cudnn"] == ".".join(cudnn.split(".")[:2])
    assert labels["io.imagekit.nccl"] == ".".join(nccl.split(".")[:2])
    assert pip["mxnet-cu112"] == labels["io.imagekit.framework.version"] == "1.9.1"
    assert labels["io.imagekit.driver.min"] == "450.80.02"


def test_smoke_is_gpu_ready_without_a_gpu(gpu_image, no_gpu, docker_api):
    r = gpu_image.project.run("--json", "smoke", gpu_image.name, timeout=900)
    assert r.code == 0, r.output[-3000:]
    rep = _report(r)
    assert rep["passed"] is True and rep["gpu_requested"] is False
    assert rep["proven"] == "GPU-ready (checked without a GPU)"
    v = rep["gpu"]
    assert v["cuda_runtime"].startswith("11.8") and v["cudnn_installed"].startswith("8.9")
    assert v["cuda_build"] == "11.2"          # mxnet-cu112, as the label says
    assert v["nccl_installed"] and v["missing"] == []
    assert "sm_80" in v["sass"] and v["driver_min"] == "450.80.02"
    assert rep["framework_check"]["device"] == "cpu"
    assert rep["training"]["resumed_from"] == rep["training"]["steps"]
    assert "stand-in driver" in rep["note"]
    plain = gpu_image.project.run("smoke", gpu_image.name, timeout=900)
    assert plain.code == 0
    assert "GPU-ready (checked without a GPU)" in plain.stdout
    assert "needs NVIDIA driver >= 450.80.02" in plain.stdout
    r = gpu_image.project.run("smoke", gpu_image.name, "--gpu", "require", timeout=600)
    assert r.code == 9, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "--gpu require" in lines[0]
    assert leftovers(docker_api, gpu_image.ref) == []


def test_a_platform_it_cannot_run_on_fails_with_exit_17(gpu_image, no_gpu, docker_api):
    r = gpu_image.project.run("smoke", gpu_image.name, "--driver", "418.40.04", timeout=900)
    assert r.code == 17, r.output[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "450.80.02" in lines[0] and "418.40.04" in lines[0]
    r = gpu_image.project.run("smoke", gpu_image.name, "--driver", "535.104.05",
                              "--gpu-arch", "sm_90", timeout=900)
    assert r.code == 17 and "sm_90" in r.stderr, r.output[-2000:]
    r = gpu_image.project.run("--json", "smoke", gpu_image.name, "--driver", "535.104.05",
                              "--gpu-arch", "V100", timeout=900)
    assert r.code == 0, r.output[-2000:]
    assert _report(r)["gpu"]["fits"] is True
    assert leftovers(docker_api, gpu_image.ref) == []


def test_a_deleted_cuda_library_is_named(gpu_image, no_gpu, docker_api, tmp_path):
    ref = f"imagekit-test-nocublas:{uuid.uuid4().hex[:8]}"
    (tmp_path / "Dockerfile").write_text(
        f"FROM {gpu_image.ref}\n"
        "RUN rm -f /opt/venv/lib/python3.11/site-packages/nvidia/cublas/lib/libcublas.so.11\n")
    built = subprocess.run(["docker", "build", "-q", "-t", ref, str(tmp_path)],
                           capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stderr
    try:
        r = gpu_image.project.run("smoke", ref, timeout=900)
        assert r.code == 8, r.output[-2000:]
        assert "libcublas.so.11" in r.stderr.splitlines()[0]
        assert leftovers(docker_api, ref) == []
    finally:
        docker_api.remove_image(ref, force=True)
