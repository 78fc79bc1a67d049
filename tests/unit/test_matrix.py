"""The matrix's GPU rows, NVIDIA's driver table and the fit checks built on them."""

from __future__ import annotations

import pytest
from packaging.requirements import Requirement

from imagekit import matrix
from imagekit.errors import CompatError, UsageError

GPU_ROWS = [(fw, ver, row["gpu"]) for fw, spec in matrix.load()["frameworks"].items()
            for ver, row in spec["versions"].items()]


def _pin(pins: list[str], name: str) -> str | None:
    for p in pins:
        r = Requirement(p)
        if r.name == name:
            spec = next(iter(r.specifier))
            return spec.version
    return None


def _mm(v: str) -> str:
    return ".".join(v.split(".")[:2])


@pytest.mark.parametrize("fw,ver,gpu", GPU_ROWS, ids=[f"{f}-{v}" for f, v, _ in GPU_ROWS])
def test_gpu_row_pins_every_cuda_wheel_exactly(fw, ver, gpu):
    for p in gpu["pip"]:
        r = Requirement(p)
        if r.name.startswith("nvidia-") or r.name == "cuda-toolkit":
            ops = [s.operator for s in r.specifier]
            assert ops == ["=="], f"{fw} {ver}: {p} is not an exact pin"
    if fw == "pytorch":
        assert gpu["pip"][0] == f"torch==={ver}"


@pytest.mark.parametrize("fw,ver,gpu", GPU_ROWS, ids=[f"{f}-{v}" for f, v, _ in GPU_ROWS])
def test_gpu_row_says_what_its_pins_install(fw, ver, gpu):
    """cuda / cudnn / nccl (what the labels say) are the pinned wheels' versions."""
    pins = gpu["pip"]
    suffix = {"11": "-cu11", "12": "-cu12", "13": ""}[gpu["cuda"].split(".")[0]]
    runtime = _pin(pins, f"nvidia-cuda-runtime{suffix}")
    cudnn = next(_pin(pins, n) for n in ("nvidia-cudnn-cu11", "nvidia-cudnn-cu12", "nvidia-cudnn-cu13")
                 if _pin(pins, n))
    nccl = next(_pin(pins, n) for n in ("nvidia-nccl-cu11", "nvidia-nccl-cu12", "nvidia-nccl-cu13")
                if _pin(pins, n))
    assert _mm(runtime) == gpu["cuda"]
    assert _mm(cudnn) == gpu["cudnn"]
    assert _mm(nccl) == gpu["nccl"]
    assert gpu["cuda_build"].split(".")[0] == gpu["cuda"].split(".")[0]
    assert gpu["sass"] or gpu["ptx"]
    assert gpu["source"]
    assert matrix.min_driver(gpu["cuda"]).version


def test_mxnet_gpu_takes_cuda_from_nvidia_wheels_and_keeps_the_cuda_base_as_a_choice():
    v = matrix.variant("mxnet", "1.9.1", "gpu", "3.11")
    assert v.cuda_from == "nvidia-wheels" and v.base_key == "python-slim"
    assert v.cuda == "11.8" and v.cuda_build == "11.2"
    names = {Requirement(p).name for p in v.pip}
    assert {"nvidia-cuda-runtime-cu11", "nvidia-cudnn-cu11", "nvidia-nccl-cu11"} <= names
    assert "nvidia-cusparse-cu11" not in names          # libmxnet.so does not need it
    image = "nvidia/cuda:11.8.0-cudnn8-runtime-ubuntu22.04"
    alt = matrix.variant("mxnet", "1.9.1", "gpu", "3.10", base_image=image)
    assert alt.cuda_from == "base" and alt.python_from == "apt" and alt.base_image == image
    assert not any(p.startswith("nvidia-") for p in alt.pip)
    assert alt.sass == v.sass                            # same framework binary
    with pytest.raises(CompatError, match="provides Python 3.10"):
        matrix.variant("mxnet", "1.9.1", "gpu", "3.11", base_image=image)


def test_spec_cuda_may_name_the_runtime_or_the_build():
    assert matrix.variant("tensorflow", "2.21.0", "gpu", "3.11", cuda="12.9").cuda == "12.9"
    assert matrix.variant("tensorflow", "2.21.0", "gpu", "3.11", cuda="12.5").cuda == "12.9"
    with pytest.raises(CompatError, match="install CUDA 12.9, built for CUDA 12.5.1, not 11.8"):
        matrix.variant("tensorflow", "2.21.0", "gpu", "3.11", cuda="11.8")


def test_min_driver_applies_the_minor_version_floor_and_names_the_full_one():
    need = matrix.min_driver("11.8")
    assert need.version == "450.80.02" and need.full == "520.61.05"
    assert "minor-version compatibility" in need.rule and "docs.nvidia.com" in need.source
    assert matrix.min_driver("12.0").version == "525.60.13"
    assert matrix.min_driver("12.4").full == "550.54.14"
    assert matrix.min_driver("12.5").full == "555.42.02"
    assert matrix.min_driver("12.5.1").full == "555.42.06"
    assert matrix.min_driver("12.8").full == "570.26"
    assert matrix.min_driver("12.9").full == "575.51.03"
    assert matrix.min_driver("13.0").version == "580.65.06"
    assert matrix.min_driver("12.7").full is None            # no such release
    with pytest.raises(CompatError, match="no driver data for CUDA 10.2"):
        matrix.min_driver("10.2")


def test_driver_ok_compares_number_by_number():
    assert matrix.driver_ok("450.80.02", "11.8")
    assert not matrix.driver_ok("450.80.02", "12.9")
    assert not matrix.driver_ok("525.60.12", "12.0")
    assert matrix.driver_ok("525.60.13", "12.9")
    assert matrix.driver_ok("1000", "13.2")
    assert not matrix.driver_ok("575.57.08", "13.0")
    with pytest.raises(UsageError, match="not an NVIDIA driver version"):
        matrix.driver_ok("latest", "12.4")


def test_driver_table_data():
    data = matrix.drivers()
    for major, floor in data["minor_version_compatibility"].items():
        if major != "11":   # the 11.x floor is 450.80.02, newer than 11.0's own driver
            assert data["releases"][f"{major}.0.0"] == floor
    rel = sorted(data["releases"].items(), key=lambda kv: matrix._cuda_key(kv[0]))
    keys = [matrix._driver_key(d) for _, d in rel]
    assert keys == sorted(keys), "a later CUDA release never needs an older driver"


@pytest.mark.parametrize("given,arch", [("A100", "sm_80"), ("h100", "sm_90"), ("8.6", "sm_86"),
                                        ("sm_89", "sm_89"), ("compute_75", "sm_75"), ("90a", "sm_90a"),
                                        ("sm_120", "sm_120"), ("B200", "sm_100"), ("K80", "sm_37")])
def test_parse_arch(given, arch):
    assert matrix.parse_arch(given) == arch


def test_parse_arch_refuses_unknown():
    with pytest.raises(UsageError, match="not a GPU architecture"):
        matrix.parse_arch("Voodoo5")


@pytest.mark.parametrize("gpu,sass,ptx,via", [
    ("sm_89", ["sm_86"], [], "sass"),          # same major, higher minor
    ("sm_75", ["sm_70"], [], "sass"),
    ("sm_70", ["sm_75"], [], None),            # lower minor cannot run it
    ("sm_90", ["sm_86"], [], None),            # another major
    ("sm_90", ["sm_80"], ["compute_90"], "ptx"),
    ("sm_100", [], ["compute_90"], "ptx"),     # PTX JIT-compiles on any newer GPU
    ("sm_80", [], ["compute_90"], None),
    ("sm_90", ["sm_90a"], [], "sass"),
    ("sm_100", [], ["compute_90a"], None),     # arch-specific PTX is not forward compatible
    ("sm_37", ["sm_50", "sm_60"], [], None),
])
def test_arch_runs(gpu, sass, ptx, via):
    assert matrix.arch_runs(gpu, sass, ptx) == via


def test_arch_ok_needs_one_platform_arch():
    assert matrix.arch_ok([], ["sm_80"], [])
    assert matrix.arch_ok(["sm_37", "A100"], ["sm_80"], [])
    assert not matrix.arch_ok(["K80", "H100"], ["sm_80", "sm_86"], [])


def test_fits_an_old_driver():
    res = {f.name: f for f in matrix.fits(driver="450.80.02")}
    assert [n for n, f in res.items() if f.fits] == ["mxnet 1.9.1"]
    tf = res["tensorflow 2.21.0"]
    assert tf.driver_ok is False and tf.driver_needed == "525.60.13" and tf.arch_ok is None
    assert tf.nearest is None and tf.others == ("mxnet 1.9.1",)
    assert "needs NVIDIA driver >= 525.60.13" in tf.message and "mxnet 1.9.1 would" in tf.message


def test_fits_a_hopper_platform():
    res = {f.name: f for f in matrix.fits(driver="535.104.05", gpu_arch="H100")}
    torch13 = res["pytorch 2.13.0"]
    assert not torch13.fits and torch13.nearest == "pytorch 2.5.1"
    assert "pytorch 2.5.1 would fit" in torch13.message
    assert res["pytorch 2.5.1"].fits and res["pytorch 2.5.1"].arch_via == "sass"
    tf = res["tensorflow 2.21.0"]           # sm_90 only through compute_90 PTX made by CUDA 12.5.1
    assert tf.arch_via == "ptx" and tf.driver_needed == "555.42.06" and not tf.fits
    mx = res["mxnet 1.9.1"]
    assert mx.arch_ok is False and mx.driver_ok is True and "sm_90" in mx.reason


def test_fits_with_nothing_given_lists_every_gpu_variant():
    res = matrix.fits()
    assert len(res) == len(GPU_ROWS) and all(f.fits for f in res)
    assert all(f.driver_ok is None and f.arch_ok is None for f in res)
    assert matrix.fit("mxnet", "1.9.1", gpu_arch="sm_37,sm_80").gpu_arch == "sm_80"
    with pytest.raises(CompatError):
        matrix.fit("mxnet", "0.1")


def test_gpu_labels_state_installed_and_built_for():
    labels = matrix.gpu_labels(matrix.variant("tensorflow", "2.21.0", "gpu", "3.11"))
    assert labels["io.imagekit.cuda"] == "12.9" and labels["io.imagekit.cudnn"] == "9.28"
    assert labels["io.imagekit.cuda.build"] == "12.5.1"
    assert labels["io.imagekit.cuda.archs"] == "sm_60 sm_70 sm_80 sm_89 compute_90"
    assert labels["io.imagekit.driver.min"] == "525.60.13"
    assert matrix.gpu_labels(matrix.variant("tensorflow", "2.21.0", "cpu", "3.11")) == {}
