"""gpu.verdict: the readiness facts an image's framework check reports, judged
on the host (what is installed, the driver needed, the fit to a platform)."""

from __future__ import annotations

import pytest

from imagekit import gpu
from imagekit.errors import PlatformMismatch, SmokeError
from imagekit.events import FrameworkReport

CUDA12_TF = {"nvidia-cuda-runtime-cu12": "12.9.79", "nvidia-cudnn-cu12": "9.28.0.42",
             "nvidia-nccl-cu12": "2.32.3", "nvidia-cublas-cu12": "12.9.3.13"}
# from CUDA 13 the toolkit's own wheels drop the -cuXX suffix; cuDNN and NCCL keep it
CUDA13_TORCH = {"nvidia-cuda-runtime": "13.0.96", "nvidia-cudnn-cu13": "9.20.0.48",
                "nvidia-nccl-cu13": "2.29.7", "nvidia-cuda-nvrtc": "13.0.88",
                "nvidia-cudnn-frontend": "1.5.0"}


def _report(framework: str, version: str, cuda: str, dists: dict, sass: list[str],
            ptx: list[str] = (), missing: list | None = None) -> FrameworkReport:
    return FrameworkReport(framework=framework, version=version, device="cpu", ok=True,
                           gpu_readiness={"cuda_build": True, "cuda": cuda, "cudnn": "9",
                                          "libraries": {"distributions": dists, "files": []},
                                          "missing": missing or [],
                                          "archs": {"sass": sass, "ptx": list(ptx)}})


@pytest.mark.parametrize("dists, runtime, cudnn, nccl", [
    (CUDA12_TF, "12.9.79", "9.28.0.42", "2.32.3"),
    (CUDA13_TORCH, "13.0.96", "9.20.0.48", "2.29.7"),
])
def test_installed_versions_read_from_nvidias_wheel_names(dists, runtime, cudnn, nccl):
    v = gpu.verdict("x", _report("pytorch", "2.13.0", runtime[:4], dists, ["sm_80"]), "gpu",
                    gpu.Platform(), None)
    assert (v.cuda_runtime, v.cudnn_installed, v.nccl_installed) == (runtime, cudnn, nccl)
    assert v.proven == gpu.GPU_READY and v.missing == []


def test_the_driver_floor_follows_the_installed_runtime():
    v = gpu.verdict("x", _report("pytorch", "2.13.0", "13.0", CUDA13_TORCH, ["sm_80"]), "gpu",
                    gpu.Platform(), None)
    assert v.driver_min and v.driver_min.startswith("580")


def test_an_old_driver_does_not_fit_and_the_message_says_what_is_needed():
    with pytest.raises(PlatformMismatch) as e:
        gpu.verdict("ocr-gpu", _report("tensorflow", "2.21.0", "12.5.1", CUDA12_TF,
                                       ["sm_60", "sm_80"], ["compute_90"]),
                    "gpu", gpu.Platform("450.80.02"), "2.21.0")
    msg = e.value.message
    assert e.value.exit_code == 17 and "\n" not in msg
    assert "needs NVIDIA driver >= 525" in msg and "the platform has 450.80.02" in msg


def test_a_gpu_it_carries_no_code_for_does_not_fit():
    with pytest.raises(PlatformMismatch, match="carries no code for sm_60"):
        gpu.verdict("x", _report("pytorch", "2.13.0", "13.0", CUDA13_TORCH, ["sm_75", "sm_80"]),
                    "gpu", gpu.Platform(None, ("sm_60",)), "2.13.0")


def test_a_missing_library_is_named():
    missing = [{"library": "libcublasLt.so.12", "needed_by": ["libtensorflow_cc.so.2"]}]
    with pytest.raises(SmokeError, match="libcublasLt.so.12 is not in the image"):
        gpu.verdict("x", _report("tensorflow", "2.21.0", "12.5.1", CUDA12_TF, ["sm_80"],
                                 missing=missing), "gpu", gpu.Platform(), None)
