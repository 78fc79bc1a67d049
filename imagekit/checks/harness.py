"""imagekit framework check: train a tiny MLP on synthetic data with one framework; stdlib only.

A framework file (pytorch_check.py, ...) gives only what differs and calls main(); this file does
the rest. Run as `python <fw>_check.py [--steps 50] [--device auto|cpu|gpu] [--seed 0]`.
IMAGEKIT_CHECK_LR sets the learning rate. Exit 0 ok, 1 loss did not fall or diverged, 2 GPU
required but none seen, 3 import failed, 4 other error.

The last stdout line is `IMAGEKIT_REPORT {json}` with, in order: framework, version, python,
device ("cpu"|"gpu"), device_name, cuda, cudnn, gpu_count, steps, loss_first, loss_last,
steps_per_sec, ok, reason, gpu_readiness. gpu_readiness is gathered on every run, GPU or not, and
never fails the check (what raised is in its `error`):
  cuda_build  bool: the framework is a CUDA build (null: the import failed)
  cuda, cudnn the versions it was built for, as strings (null: CPU build or unknown)
  libraries   {"distributions": {nvidia-* name: version}, "files": [paths of libcudart*,
              libcublas*, libcudnn*, libnccl* under site-packages/nvidia/*/lib and system dirs]}
  missing     [{"library", "needed_by": [paths, at most 5], "more": n, "via"}]: shared libraries
              that do not resolve in the image, the driver's own (libcuda.so.1, libnvidia-*.so)
              left out. via "DT_NEEDED": linked by the framework's native files (*.so under its
              package) or their dependencies, so the import fails; via "dlopen": a CUDA library
              the framework opens at run time (TensorFlow), looked up with its files' RUNPATHs,
              so GPU use fails (expected in an image without the nvidia-* wheels)
  driver      sorted driver library names the native files link (the NVIDIA runtime brings them)
  driver_symbols  driver API functions (cuInit, ...) the framework's own files call directly
  archs       {"sass": ["sm_80", ...], "ptx": ["compute_90", ...]} the GPU code it carries, from
              the framework where it says (TensorFlow's build info) or else from the
              .nv_fatbin sections of its native files (PyTorch, MXNet); empty lists for a
              CPU build; null when unknown, and then archs_reason says why (also "partial: ..."
              when cut short)
  native      {"files": framework ELF files read, "objects": with their dependencies,
              "seconds", "incomplete": the time (8 s) or object bound was reached}
  error       null, or what raised while gathering (the fields gathered before it stay)
"""

import argparse
import importlib
import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import random
import sys
import time
import traceback
import types

import readiness

KEYS = (
    "framework version python device device_name cuda cudnn gpu_count steps"
    " loss_first loss_last steps_per_sec ok reason gpu_readiness"
).split()
READINESS_SECONDS = 8.0
# Sonames of the CUDA libraries a framework opens at run time, by CUDA major version.
TOOLKIT = {"12": "cudart.so.12 cublas.so.12 cublasLt.so.12 cufft.so.11 cusolver.so.11 cusparse.so.12",
           "11": "cudart.so.11.0 cublas.so.11 cublasLt.so.11 cufft.so.10 cusolver.so.11 cusparse.so.11"}


def describe(exc, with_type=True):
    """First line of the exception's message, led by its type name if asked or if empty."""
    line = (str(exc).strip().splitlines() or [""])[0]
    if line and not with_type:
        return line
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def synthetic(seed, n=512, d=8, hidden=32):
    """Inputs, targets and initial MLP weights as lists, from one seeded stdlib RNG."""
    rng = random.Random(seed)

    def normal(rows, cols, scale=1.0):
        return [[rng.gauss(0.0, scale) for _ in range(cols)] for _ in range(rows)]

    x = normal(n, d)
    w_true = [rng.gauss(0.0, 1.0) for _ in range(d)]
    y = [[sum(row[i] * w_true[i] for i in range(d)) + rng.gauss(0.0, 0.1)] for row in x]
    init = [normal(d, hidden, d**-0.5), [0.0] * hidden, normal(hidden, 1, hidden**-0.5), [0.0]]
    return x, y, init


def cudnn_string(v):  # 8902 -> 8.9.2 (cuDNN <= 8), 90100 -> 9.1.0 (cuDNN >= 9)
    m = 10000 if (v or 0) >= 90000 else 1000
    return f"{v // m}.{v % m // 100}.{v % 100}" if v else None


def toolkit_sonames(cuda, cudnn):
    """The CUDA and cuDNN sonames a framework built for these versions opens with dlopen."""
    names = TOOLKIT.get(str(cuda or "").split(".")[0], "").split()
    if cudnn:
        names.append(f"cudnn.so.{str(cudnn).split('.')[0]}")
    return ["lib" + n for n in names]


def train(step_fn, read, steps, report):
    """Call step_fn `steps` times; record first/last loss, steps per second and the verdict."""
    first = last = float("nan")
    start = warm = time.perf_counter()
    for step in range(1, steps + 1):
        loss = step_fn()
        if step == 1 or step % 10 == 0 or step == steps:
            last = float(read(loss))  # reading the value also waits for the device
            print(f"step {step} loss {last:.4f}", flush=True)
        if step == 1:
            first, warm = last, time.perf_counter()
    end = time.perf_counter()
    # The rate covers steps 2..N so one-off warm-up work (tracing, allocation) is left out.
    timed, elapsed = (steps - 1, end - warm) if steps > 1 else (1, end - start)
    rate = round(timed / max(elapsed, 1e-9), 1)
    clean = [v if math.isfinite(v) else None for v in (first, last)]  # JSON has no NaN/inf
    report.update(steps=steps, loss_first=clean[0], loss_last=clean[1], steps_per_sec=rate)
    if not (math.isfinite(first) and math.isfinite(last)):
        report["reason"] = f"loss diverged to {first if not math.isfinite(first) else last}"
        return 1
    if not last < 0.5 * first:
        report["reason"] = f"loss did not fall: {first:.4g} -> {last:.4g}"
        return 1
    report["ok"] = True
    return 0


def run(args, report, check, seen):
    try:
        fw = importlib.import_module(check.module)
    except Exception as exc:  # ImportError/OSError, or e.g. a broken binary dependency
        plain = isinstance(exc, (ImportError, OSError))
        report["reason"] = f"import {check.module} failed: {describe(exc, with_type=not plain)}"
        return 3
    report["version"] = fw.__version__
    try:
        seen["facts"] = check.facts(fw)
    except Exception as exc:
        seen["facts"] = {"error": f"build facts: {describe(exc)}"}
    report["cuda"], report["cudnn"] = seen["facts"].get("cuda"), seen["facts"].get("cudnn")
    gpus = check.gpus(fw)
    report["gpu_count"] = len(gpus)
    if args.device == "gpu" and not gpus:
        report["reason"] = f"a GPU was required but {check.framework} sees none"
        return 2
    use_gpu = args.device == "gpu" or (args.device == "auto" and bool(gpus))
    report["device"] = "gpu" if use_gpu else "cpu"
    report["device_name"] = gpus[0] if use_gpu else "cpu"
    lr = float(os.environ.get("IMAGEKIT_CHECK_LR", "0.1"))
    step_fn, read = check.model(fw, use_gpu, *synthetic(args.seed), lr)
    return train(step_fn, read, args.steps, report)


def gpu_readiness(module, facts, seconds=READINESS_SECONDS):
    """The gpu_readiness object (schema above) for the framework's top-level package `module`."""
    facts = facts if isinstance(facts, dict) else {}
    out = {"cuda_build": facts.get("cuda_build"), "cuda": facts.get("cuda"),
           "cudnn": facts.get("cudnn"), "libraries": None, "missing": None, "driver": None,
           "driver_symbols": None,
           "archs": None, "archs_reason": None, "native": None, "error": facts.get("error")}
    try:
        out["libraries"] = installed_libraries()
        started = time.monotonic()
        deadline = started + seconds
        spec = importlib.util.find_spec(module)  # no import, so this works after a failed one too
        roots = native_files(list(spec.submodule_search_locations or []) if spec else [], deadline)
        resolver = readiness.Resolver(deadline)
        resolver.add(roots)
        own = [resolver.objects[p] for p in roots if p in resolver.objects]
        missing = [dict(m, via="DT_NEEDED") for m in resolver.missing()]
        if own and facts.get("dlopen"):
            extra = resolver.search_dirs(own)
            missing += [{"library": n, "needed_by": [module], "more": 0, "via": "dlopen"}
                        for n in facts["dlopen"] if not resolver.find(n, own[0], extra=extra)]
        out["missing"] = missing
        out["driver"] = sorted({n for e in resolver.objects.values() for n in e.needed
                                if readiness.DRIVER_LIB.match(n)})
        out["driver_symbols"] = sorted({s for e in own for s in e.driver_symbols})
        if out["cuda_build"] and (out["cuda"] is None or out["cudnn"] is None):
            cuda, out["cudnn"] = versions_from_needed(resolver.objects.values(), out["cudnn"])
            out["cuda"] = out["cuda"] or cuda
        out["archs"], out["archs_reason"] = archs(facts, own, deadline)
        out["native"] = {"files": len(own), "objects": len(resolver.objects),
                         "seconds": round(time.monotonic() - started, 2),
                         "incomplete": resolver.incomplete or time.monotonic() > deadline}
    except Exception as exc:
        out["error"] = describe(exc)
    return out


def native_files(dirs, deadline):
    """Every ELF shared object (by name: *.so, *.so.N) under the package's folders."""
    found = []
    for top in dirs:
        for root, _, files in os.walk(top):
            found += [os.path.join(root, f) for f in files if f.endswith(".so") or ".so." in f]
            if time.monotonic() > deadline:
                return sorted(found)
    return sorted(found)


def installed_libraries():
    dists = {}
    for dist in importlib.metadata.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name.startswith("nvidia-"):
            dists[name] = dist.version
    dirs = [os.path.join(p, "nvidia", d, "lib") for p in sys.path if os.path.isdir(os.path.join(p, "nvidia"))
            for d in sorted(os.listdir(os.path.join(p, "nvidia")))]
    dirs += readiness.default_dirs() + ["/usr/local/lib", "/usr/local/cuda/lib64"]
    files = set()
    for d in dirs:
        if os.path.isdir(d):
            files.update(os.path.join(d, f) for f in os.listdir(d) if readiness.CUDA_LIB.match(f))
    return {"distributions": dict(sorted(dists.items())), "files": sorted(files)}


def versions_from_needed(elfs, cudnn):
    """CUDA and cuDNN versions read off the sonames a CUDA build links. Every CUDA 11.x
    runtime is libcudart.so.11.0, so from 11 on a soname gives only the major version."""
    cuda = None
    for name in sorted({n for e in elfs for n in e.needed}):
        tail = name.partition(".so.")[2]
        if name.startswith("libcudart.so.") and tail:
            major = tail.split(".")[0]
            cuda = major if major.isdigit() and int(major) >= 11 else tail
        elif name.startswith("libcudnn.so.") and tail and not cudnn:
            cudnn = tail
    return cuda, cudnn


def archs(facts, own, deadline):
    if facts.get("cuda_build") is False:
        return readiness.arch_lists(()), None
    if facts.get("archs") is not None:
        return readiness.arch_lists(facts["archs"]), None
    found = {"sass": set(), "ptx": set()}
    for elf in own:
        for kind, names in readiness.fatbin_archs(elf, deadline).items():
            found[kind] |= names
    late = time.monotonic() > deadline
    if found["sass"] or found["ptx"]:
        names = found["sass"] | found["ptx"]
        return readiness.arch_lists(names), "partial: ran out of time" if late else None
    if late:
        return None, "ran out of time reading the fatbin sections"
    return None, "no fatbin section with GPU code in the framework's native files"


def main(framework, module, facts, gpus, model, argv=None):
    """Run the check for one framework: facts(fw) -> {cuda_build, cuda, cudnn, archs?, dlopen?},
    gpus(fw) -> GPU names, model(fw, use_gpu, x, y, init, lr) -> (step_fn, read_loss)."""
    check = types.SimpleNamespace(framework=framework, module=module, facts=facts, gpus=gpus, model=model)
    parser = argparse.ArgumentParser(description=f"imagekit {framework} smoke test")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--device", choices=("auto", "cpu", "gpu"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    report = dict.fromkeys(KEYS)  # the report's keys, in order, all null until known
    report.update(framework=framework, python=platform.python_version(), gpu_count=0, steps=0)
    report.update(device="gpu" if args.device == "gpu" else "cpu", ok=False)
    seen = {}
    try:
        code = run(args, report, check, seen)
    except Exception as exc:
        traceback.print_exc()
        report.update(ok=False, reason=describe(exc))
        code = 4
    report["gpu_readiness"] = gpu_readiness(module, seen.get("facts"))
    print("IMAGEKIT_REPORT " + json.dumps(report, allow_nan=False, default=str), flush=True)
    return code
