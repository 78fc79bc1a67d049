"""GPU readiness, judged on the host from what the framework check found
inside the image (its `gpu_readiness` facts), with or without a GPU:

- the framework is a CUDA build, and for which CUDA and cuDNN;
- the CUDA, cuDNN and NCCL libraries installed in the image, and any library
  the framework needs that does not resolve there (the driver's own, which the
  NVIDIA runtime injects, excepted);
- the GPU architectures it carries code for (SASS and PTX);
- the minimum NVIDIA driver that needs (drivers.yaml, NVIDIA's table);
- against a target platform (imagekit.toml [platform], or --driver and
  --gpu-arch): whether its driver and GPUs can run the image, and if not,
  which framework version would.

It also says what a smoke test proved: trained on a GPU, GPU-ready (checked
without one), or CPU only."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from . import matrix
from .errors import CompatError, PlatformMismatch, SmokeError, UsageError
from .events import FrameworkReport, GpuVerdict

TRAINED_ON_GPU = "trained on GPU"
GPU_READY = "GPU-ready (checked without a GPU)"
CPU_ONLY = "CPU only"


@dataclass(frozen=True)
class Platform:
    """Where the image will train: the node's NVIDIA driver and GPU architectures."""

    driver: str | None = None
    gpu_archs: tuple[str, ...] = field(default_factory=tuple)

    @property
    def given(self) -> bool:
        return bool(self.driver or self.gpu_archs)

    def describe(self) -> str:
        parts = ([f"driver {self.driver}"] if self.driver else []) + \
            ([f"GPU {' '.join(self.gpu_archs)}"] if self.gpu_archs else [])
        return ", ".join(parts) or "no target platform"


def platform(driver: str | None, gpu_archs: list[str] | None, config) -> Platform:
    """The command line's --driver/--gpu-arch over imagekit.toml [platform]."""
    d = driver or (config.driver if config is not None else None)
    archs = list(gpu_archs or (config.gpu_arch if config is not None else []) or [])
    if d is not None:
        matrix.driver_ok(d, "12.0")          # refuses a malformed version (usage error)
    return Platform(d, tuple(matrix.parse_arch(a) for a in archs))


def guess_device(report: FrameworkReport) -> str:
    """For an image with no imagekit labels: a CUDA build with CUDA libraries
    installed beside it is a GPU image."""
    facts = report.gpu_readiness or {}
    libs = facts.get("libraries") or {}
    return "gpu" if facts.get("cuda_build") and (libs.get("distributions") or libs.get("files")) \
        else "cpu"


def _installed(dists: dict[str, str], base: str) -> str | None:
    """The version of NVIDIA's wheel BASE: named BASE-cuXX up to CUDA 12 (nvidia-cudnn-cu12),
    plain BASE from CUDA 13 on for the toolkit's own (nvidia-cuda-runtime 13.0.96)."""
    pattern = re.compile(re.escape(base) + r"(-cu\d+)?")
    for name, version in sorted(dists.items()):
        if pattern.fullmatch(name.lower().replace("_", "-")):
            return version
    return None


def verdict(name: str, report: FrameworkReport, device: str, target: Platform,
            framework_version: str | None) -> GpuVerdict | None:
    """The readiness verdict of a GPU image (None for a CPU build in a CPU
    image). Raises SmokeError when the image cannot use a GPU at all (a CPU
    build, a missing CUDA library) and PlatformMismatch when it does not fit
    the target platform."""
    facts = report.gpu_readiness or {}
    cuda_build = facts.get("cuda_build")
    if device != "gpu":
        return None
    proven = TRAINED_ON_GPU if report.device == "gpu" else GPU_READY
    if facts.get("error") and cuda_build is None:
        raise SmokeError(f"{name}: the GPU readiness check could not run: {facts['error']}")
    if not cuda_build:
        raise SmokeError(f"{name}: {report.framework} {report.version} in this GPU image is a "
                         "CPU build: it cannot use a GPU (check the framework's GPU package in "
                         "the spec or matrix)")
    dists = (facts.get("libraries") or {}).get("distributions") or {}
    runtime = _installed(dists, "nvidia-cuda-runtime")
    cudnn = _installed(dists, "nvidia-cudnn")
    nccl = _installed(dists, "nvidia-nccl")
    built_for = facts.get("cuda") or report.cuda
    missing = [m for m in facts.get("missing") or [] if isinstance(m, dict)]
    archs = facts.get("archs") or {}
    sass, ptx = list(archs.get("sass") or []), list(archs.get("ptx") or [])
    cuda_for_driver = _major_minor(runtime) or _major_minor(built_for)
    need = matrix.min_driver(cuda_for_driver) if cuda_for_driver else None
    v = GpuVerdict(
        proven=proven, cuda_build=built_for, cudnn_build=facts.get("cudnn") or report.cudnn,
        cuda_runtime=runtime, cudnn_installed=cudnn, nccl_installed=nccl,
        libraries=dict(sorted(dists.items())),
        missing=[f"{m.get('library')} (needed by {', '.join(m.get('needed_by') or [])})"
                 for m in missing],
        sass=sass, ptx=ptx,
        driver_min=need.version if need else None, driver_rule=need.rule if need else "",
        driver_source=need.source if need else "",
        target_driver=target.driver, target_archs=list(target.gpu_archs))
    if missing:
        first = missing[0]
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise SmokeError(f"{name}: GPU readiness: {first.get('library')} is not in the image "
                         f"(needed by {', '.join(first.get('needed_by') or ['the framework'])})"
                         f"{more}; the framework cannot use a GPU without it",
                         details=[f"missing: {x}" for x in v.missing])
    if not target.given:
        return v
    problems = []
    driver_needed = v.driver_min
    if target.gpu_archs and (sass or ptx):
        runs = {a: matrix.arch_runs(a, sass, ptx) for a in target.gpu_archs}
        if not any(runs.values()):
            problems.append(f"it carries no code for {' '.join(target.gpu_archs)} (it has: "
                            f"{' '.join(sass + ptx)}) and no PTX that can be compiled for it")
        elif all(via == "ptx" for via in runs.values() if via) and built_for:
            jit = matrix.release_driver(_major_minor(built_for) or built_for)
            if jit and driver_needed and _newer(jit, driver_needed):
                driver_needed = jit
                v.driver_rule = (f"{' '.join(target.gpu_archs)} runs only its PTX, which the "
                                 f"driver JIT-compiles when it knows CUDA {built_for}: >= {jit}")
    if target.driver and driver_needed and _newer(driver_needed, target.driver):
        problems.append(f"its CUDA {cuda_for_driver} needs NVIDIA driver >= {driver_needed}, the "
                        f"platform has {target.driver}")
    v.driver_min = driver_needed
    v.fits = not problems
    if problems:
        hint = _what_fits(report.framework, framework_version or report.version, target)
        raise PlatformMismatch(f"{name}: does not fit the platform ({target.describe()}): "
                               f"{'; '.join(problems)}{hint}")
    return v


def _what_fits(framework: str, version: str, target: Platform) -> str:
    try:
        rows = matrix.fits(target.driver, list(target.gpu_archs) or None)
    except (CompatError, UsageError):
        return ""
    same = [f for f in rows if f.framework == framework and f.fits]
    if same:
        return f"; {framework} {same[0].version} would fit (imagekit matrix --driver " \
               f"{target.driver or '...'})"
    others = [f.name for f in rows if f.fits]
    if others:
        return f"; no {framework} version in the matrix fits, {', '.join(others[:3])} would"
    return "; nothing in the compatibility matrix fits this platform"


def _major_minor(version: str | None) -> str | None:
    if not version:
        return None
    parts = str(version).split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 and all(p.isdigit() for p in parts[:2]) \
        else None


def _newer(a: str, b: str) -> bool:
    """Whether driver version a is above driver version b."""
    return matrix._driver_key(a) > matrix._driver_key(b)
