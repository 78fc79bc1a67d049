"""The framework-check harness and its GPU readiness readers, on the host: the ELF reader and the
loader-like resolver against this machine's own libraries and against ELF files written here."""

from __future__ import annotations

import importlib.machinery
import json
import os
import shutil
import struct
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest

CHECKS = Path(__file__).resolve().parents[2] / "imagekit" / "checks"
sys.path.insert(0, str(CHECKS))
import harness  # noqa: E402
import readiness  # noqa: E402

FRAMEWORKS = {"pytorch": "torch", "tensorflow": "tensorflow", "mxnet": "mxnet"}
HOST_MACHINE = readiness.read_elf(sys.executable).machine


def write_elf(path: Path, needed=(), soname=None, runpath=None, rpath=None, fatbin: bytes | None = None,
              machine: int = HOST_MACHINE) -> Path:
    """A minimal little-endian ELF64 shared object: one PT_LOAD (vaddr == offset), a PT_DYNAMIC,
    and, with `fatbin`, section headers naming a .nv_fatbin section."""
    strings = bytearray(b"\0")

    def intern(text):
        strings.extend(text.encode() + b"\0")
        return len(strings) - len(text) - 1

    tags = [(1, intern(n)) for n in needed]
    tags += [(tag, intern(v)) for tag, v in ((14, soname), (15, rpath), (29, runpath)) if v]
    str_off = 64 + 2 * 56
    dyn_off = (str_off + len(strings) + 7) // 8 * 8
    dynamic = b"".join(struct.pack("<qQ", t, v) for t, v in
                       tags + [(5, str_off), (10, len(strings)), (0, 0)])
    body = bytearray(dyn_off + len(dynamic))
    body[str_off:str_off + len(strings)] = strings
    body[dyn_off:] = dynamic
    shoff = shnum = shstrndx = 0
    if fatbin is not None:
        fat_off = len(body)
        names = b"\0.shstrtab\0.nv_fatbin\0"
        names_off = fat_off + len(fatbin)
        body += fatbin + names
        shoff, shnum, shstrndx = len(body), 3, 1
        for name, off, size in ((0, 0, 0), (1, names_off, len(names)), (11, fat_off, len(fatbin))):
            body += struct.pack("<IIQQQQIIQQ", name, 3 if name == 1 else 1, 0, 0, off, size, 0, 0, 1, 0)
    head = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    head += struct.pack("<HHIQQQIHHHHHH", 3, machine, 1, 0, 64, shoff, 0, 64, 56, 2, 64, shnum, shstrndx)
    phdrs = struct.pack("<IIQQQQQQ", 1, 5, 0, 0, 0, len(body), len(body), 4096)
    phdrs += struct.pack("<IIQQQQQQ", 2, 6, dyn_off, dyn_off, dyn_off, len(dynamic), len(dynamic), 8)
    body[:64 + len(phdrs)] = head + phdrs
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(body))
    return path


def fatbin(*entries: tuple[int, int], pad: int = 0) -> bytes:
    """One fatbin container holding (kind, arch) entries (kind 1 PTX, 2 SASS), then `pad` zeros."""
    payload = b"\xab" * 24
    body = b"".join(struct.pack("<HHIQ12xI", kind, 0x101, 64, len(payload), arch).ljust(64, b"\0")
                    + payload for kind, arch in entries)
    return struct.pack("<IHHQ", readiness.FATBIN_MAGIC, 1, 16, len(body)) + body + bytes(pad)


def resolver(**kw) -> readiness.Resolver:
    return readiness.Resolver(time.monotonic() + 30, **kw)


# ---- the ELF reader and the resolver against this machine's own files


def loaded_extension_modules() -> list[str]:
    files = [getattr(m, "__file__", None) for m in list(sys.modules.values())]
    return sorted({f for f in files if f and f.endswith(".so")})


def test_reads_the_python_executables_dynamic_section():
    elf = readiness.read_elf(sys.executable)
    assert elf is not None and "libc.so.6" in elf.needed
    assert readiness.read_elf(__file__) is None  # not ELF
    assert readiness.read_elf("/nonexistent/libx.so") is None


def test_resolves_every_loaded_extension_module_to_the_files_this_process_mapped():
    mods = loaded_extension_modules()
    assert mods, "expected at least one loaded extension module (e.g. yaml's, pydantic_core's)"
    res = resolver()
    res.add(mods)
    assert not res.incomplete and res.missing() == []
    mapped = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines()
              if line.split()[-1].startswith("/")}
    mapped = {os.path.realpath(p) for p in mapped}
    for path in mods:
        elf = res.objects[path]
        for name in elf.needed:
            found = res.find(name, elf, tuple(res._expand(elf, elf.rpath)) if not elf.runpath else ())
            assert found and os.path.realpath(found) in mapped, (path, name, found)


def test_host_system_libraries_resolve_quickly():
    libdir = Path(f"/usr/lib/{os.uname().machine}-linux-gnu")
    libs = sorted(str(p) for p in libdir.glob("lib*.so*"))[:400]
    res = resolver()
    t0 = time.monotonic()
    res.add(libs)
    assert time.monotonic() - t0 < 10
    assert len(res.objects) >= min(len(libs), 50) and res.missing() == []


# ---- the loader's rules, on ELF files written here


def test_fake_tree_reports_the_missing_library_and_leaves_the_driver_out(tmp_path):
    pkg = tmp_path / "site" / "fakefw"
    write_elf(pkg / "sub" / "libdep.so", needed=["libc.so.6"], soname="libdep.so")
    root = write_elf(pkg / "libroot.so", runpath="$ORIGIN/sub",
                     needed=["libdep.so", "libgone.so.1", "libcuda.so.1", "libnvidia-ml.so.1", "libc.so.6"])
    res = resolver()
    res.add([str(root)])
    assert res.find("libdep.so", res.objects[str(root)]) == str(pkg / "sub" / "libdep.so")
    assert str(pkg / "sub" / "libdep.so") in res.objects  # followed
    assert res.missing() == [{"library": "libgone.so.1", "needed_by": [str(root)], "more": 0}]


def test_rpath_reaches_dependents_but_runpath_does_not(tmp_path):
    inner = tmp_path / "inner"
    write_elf(inner / "libinner.so", needed=[])
    write_elf(tmp_path / "mid" / "libmid.so", needed=["libinner.so"])
    by_rpath = write_elf(tmp_path / "a" / "libtop.so", rpath=f"{inner}:$ORIGIN/../mid", needed=["libmid.so"])
    res = resolver()
    res.add([str(by_rpath)])
    assert res.missing() == [] and str(inner / "libinner.so") in res.objects

    by_runpath = write_elf(tmp_path / "b" / "libtop.so", runpath=f"{inner}:$ORIGIN/../mid",
                           needed=["libmid.so"])
    res = resolver()
    res.add([str(by_runpath)])
    assert [m["library"] for m in res.missing()] == ["libinner.so"]


def test_ld_library_path_and_other_machines(tmp_path):
    write_elf(tmp_path / "lib" / "libhere.so")
    write_elf(tmp_path / "arm" / "libarm.so", machine=183)  # aarch64: the loader skips it
    top = write_elf(tmp_path / "libtop.so", runpath=str(tmp_path / "arm"), needed=["libhere.so", "libarm.so"])
    res = resolver(env={"LD_LIBRARY_PATH": str(tmp_path / "lib")})
    res.add([str(top)])
    assert [m["library"] for m in res.missing()] == ["libarm.so"]
    res = resolver(env={})
    res.add([str(top)])
    assert [m["library"] for m in res.missing()] == ["libarm.so", "libhere.so"]


def test_a_name_loaded_by_another_path_counts_as_present(tmp_path):
    write_elf(tmp_path / "own" / "libshared.so.2", soname="libshared.so.2")
    first = write_elf(tmp_path / "own" / "libfirst.so", runpath="$ORIGIN", needed=["libshared.so.2"])
    second = write_elf(tmp_path / "elsewhere" / "libsecond.so", needed=["libshared.so.2"])
    res = resolver()
    res.add([str(first), str(second)])
    assert res.missing() == []


def test_without_ldconfig_the_default_dirs_are_scanned():
    res = resolver(cache=None)
    assert "/usr/local/lib" in res.dirs and res.cache == {}
    elf = readiness.read_elf(sys.executable)
    assert res.find("libc.so.6", elf)


def test_cache_from_ldconfig_names_libc():
    if not (shutil.which("ldconfig") or os.access("/sbin/ldconfig", os.X_OK)):
        pytest.skip("no ldconfig here")
    cache = readiness.ld_cache()
    assert any(os.path.basename(p) == "libc.so.6" for p in cache["libc.so.6"])


def test_deadline_and_object_bound_mark_the_scan_incomplete(tmp_path):
    libs = [str(write_elf(tmp_path / f"lib{i}.so", needed=["libc.so.6"])) for i in range(5)]
    res = readiness.Resolver(time.monotonic() - 1)
    res.add(libs)
    assert res.incomplete and not res.objects
    res = readiness.Resolver(time.monotonic() + 30, max_objects=2)
    res.add(libs)
    assert res.incomplete and len(res.objects) == 2


# ---- GPU architectures


def test_fatbin_entries_split_into_sass_and_ptx(tmp_path):
    data = fatbin((2, 80), (2, 90), pad=40) + fatbin((1, 90), pad=8) + fatbin((2, 70))
    elf = readiness.read_elf(write_elf(tmp_path / "libgpu.so", fatbin=data))
    assert elf.fatbin[1] == len(data)
    found = readiness.fatbin_archs(elf, time.monotonic() + 5)
    assert readiness.arch_lists(found["sass"] | found["ptx"]) == {
        "sass": ["sm_70", "sm_80", "sm_90"], "ptx": ["compute_90"]}
    assert readiness.fatbin_archs(readiness.read_elf(sys.executable), time.monotonic() + 5) == {
        "sass": set(), "ptx": set()}


def test_fatbin_of_a_library_built_by_nvcc(tmp_path):
    nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
    if not os.access(nvcc, os.X_OK):
        pytest.skip("no nvcc here")
    src = tmp_path / "k.cu"
    src.write_text("__global__ void add(float *a) { a[threadIdx.x] += 1.0f; }\n"
                   "void launch(float *a) { add<<<1, 32>>>(a); }\n")
    lib = tmp_path / "libk.so"
    subprocess.run([nvcc, "-shared", "-cudart", "none", "-Xcompiler", "-fPIC",
                    "-gencode", "arch=compute_75,code=sm_75", "-gencode", "arch=compute_86,code=compute_86",
                    "-o", str(lib), str(src)], check=True, capture_output=True, timeout=300)
    found = readiness.fatbin_archs(readiness.read_elf(str(lib)), time.monotonic() + 5)
    assert found == {"sass": {"sm_75"}, "ptx": {"compute_86"}}


def test_arch_lists_orders_by_number():
    assert readiness.arch_lists(["sm_90", "compute_90", "sm_100", "sm_9", "bogus"]) == {
        "sass": ["sm_9", "sm_90", "sm_100"], "ptx": ["compute_90"]}


# ---- the harness


def fake_framework(monkeypatch, name="fakefw", *, falls=True, gpus=(), facts=None, version="1.2"):
    """A framework module made of pure Python: one weight pulled towards 3 by SGD."""
    mod = types.ModuleType(name)
    mod.__version__, mod.__spec__ = version, importlib.machinery.ModuleSpec(name, None)
    monkeypatch.setitem(sys.modules, name, mod)

    def model(fw, use_gpu, x, y, init, lr):
        w = [0.0]

        def step():
            loss = (w[0] - 3.0) ** 2
            w[0] -= (lr if falls else 0.0) * 2 * (w[0] - 3.0)
            return loss

        return step, float

    def fw_facts(fw):
        if isinstance(facts, Exception):
            raise facts
        return facts or {"cuda_build": False, "cuda": None, "cudnn": None, "archs": []}

    return name, fw_facts, lambda fw: list(gpus), model


def run_main(capsys, name, facts, gpus, model, *argv):
    code = harness.main("fake", name, facts, gpus, model, argv=list(argv))
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("IMAGEKIT_REPORT ")
    return code, json.loads(last[len("IMAGEKIT_REPORT "):])


def test_report_keys_and_a_passing_run(monkeypatch, capsys):
    code, rep = run_main(capsys, *fake_framework(monkeypatch), "--steps", "20")
    assert code == 0 and list(rep) == harness.KEYS
    assert rep["ok"] and rep["reason"] is None and rep["version"] == "1.2"
    assert rep["device"] == "cpu" and rep["device_name"] == "cpu" and rep["gpu_count"] == 0
    assert rep["steps"] == 20 and rep["loss_first"] == 9.0 and rep["loss_last"] < 0.01
    ready = rep["gpu_readiness"]
    assert ready["error"] is None and ready["cuda_build"] is False
    assert ready["archs"] == {"sass": [], "ptx": []} and ready["missing"] == []
    assert set(ready) == {"cuda_build", "cuda", "cudnn", "libraries", "missing", "driver",
                          "driver_symbols", "archs",
                          "archs_reason", "native", "error"}


@pytest.mark.parametrize("case, argv, code, reason", [
    ("flat", ["--steps", "5"], 1, "loss did not fall"),
    ("gpu", ["--device", "gpu"], 2, "a GPU was required but fake sees none"),
    ("import", [], 3, "import nosuchfw_ik failed: No module named 'nosuchfw_ik'"),
    ("other", [], 4, "RuntimeError: boom"),
])
def test_exit_codes(monkeypatch, capsys, case, argv, code, reason):
    name, facts, gpus, model = fake_framework(monkeypatch, falls=case != "flat")
    if case == "import":
        name = "nosuchfw_ik"
    if case == "other":
        def model(*a):
            raise RuntimeError("boom")
    got, rep = run_main(capsys, name, facts, gpus, model, *argv)
    assert got == code and rep["ok"] is False and rep["reason"].startswith(reason)
    assert rep["gpu_readiness"]["error"] is None


def test_a_gpu_is_used_when_seen(monkeypatch, capsys):
    code, rep = run_main(capsys, *fake_framework(monkeypatch, gpus=["Fake A100"]))
    assert code == 0 and rep["device"] == "gpu" and rep["gpu_count"] == 1
    assert rep["device_name"] == "Fake A100"
    code, rep = run_main(capsys, *fake_framework(monkeypatch, gpus=["Fake A100"]), "--device", "cpu")
    assert code == 0 and rep["device"] == "cpu"


def test_readiness_errors_never_fail_the_check(monkeypatch, capsys):
    code, rep = run_main(capsys, *fake_framework(monkeypatch, facts=RuntimeError("no build info")))
    assert code == 0 and rep["ok"]
    assert rep["gpu_readiness"]["error"] == "build facts: RuntimeError: no build info"

    def broken():
        raise OSError("unreadable")
    monkeypatch.setattr(harness, "installed_libraries", broken)
    code, rep = run_main(capsys, *fake_framework(monkeypatch))
    assert code == 0 and rep["gpu_readiness"]["error"] == "OSError: unreadable"


def test_readiness_of_a_package_with_native_files(tmp_path, monkeypatch):
    site = tmp_path / "site"
    pkg = site / "fakegpu"
    (pkg / "__init__.py").parent.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    write_elf(pkg / "lib" / "libfakegpu.so", runpath="$ORIGIN/../../nvidia/cudnn/lib",
              needed=["libcudart.so.11.0", "libcudnn.so.8", "libcuda.so.1", "libc.so.6"],
              fatbin=fatbin((2, 75), (2, 86), (1, 86)))
    write_elf(site / "nvidia" / "cudnn" / "lib" / "libcudnn.so.8", needed=["libc.so.6"])
    monkeypatch.syspath_prepend(str(site))
    facts = {"cuda_build": True, "dlopen": ["libcudnn.so.8", "libcufft.so.10"]}
    ready = harness.gpu_readiness("fakegpu", facts)
    assert ready["error"] is None
    # read off the linked sonames: every CUDA 11.x runtime is libcudart.so.11.0, so only "11"
    assert ready["cuda"] == "11" and ready["cudnn"] == "8"
    assert ready["missing"] == [
        {"library": "libcudart.so.11.0", "needed_by": [str(pkg / "lib" / "libfakegpu.so")], "more": 0,
         "via": "DT_NEEDED"},
        {"library": "libcufft.so.10", "needed_by": ["fakegpu"], "more": 0, "via": "dlopen"}]
    assert ready["driver"] == ["libcuda.so.1"]
    assert ready["archs"] == {"sass": ["sm_75", "sm_86"], "ptx": ["compute_86"]}
    assert str(site / "nvidia" / "cudnn" / "lib" / "libcudnn.so.8") in ready["libraries"]["files"]
    assert ready["native"]["files"] == 1 and ready["native"]["objects"] >= 2
    assert ready["native"]["incomplete"] is False

    ready = harness.gpu_readiness("fakegpu", None)  # import failed: archs still from the fatbin
    assert ready["cuda_build"] is None and ready["archs"]["ptx"] == ["compute_86"]


def test_archs_unknown_has_a_reason():
    archs, reason = harness.archs({"cuda_build": True}, [], time.monotonic() + 5)
    assert archs is None and "no fatbin section" in reason


def test_toolkit_sonames():
    assert harness.toolkit_sonames("12.5.1", "9") == [
        "libcudart.so.12", "libcublas.so.12", "libcublasLt.so.12", "libcufft.so.11",
        "libcusolver.so.11", "libcusparse.so.12", "libcudnn.so.9"]
    assert harness.toolkit_sonames("11.8", None)[0] == "libcudart.so.11.0"
    assert harness.toolkit_sonames(None, None) == []


def test_cudnn_string():
    assert harness.cudnn_string(8902) == "8.9.2"
    assert harness.cudnn_string(90100) == "9.1.0"
    assert harness.cudnn_string(None) is None


# ---- the framework files, each alone with the harness, as the smoke stage copies them


@pytest.mark.parametrize("framework", sorted(FRAMEWORKS))
def test_framework_file_runs_alone_and_reports_a_failed_import(tmp_path, framework):
    module = FRAMEWORKS[framework]
    for f in ("harness.py", "readiness.py", f"{framework}_check.py"):
        shutil.copy(CHECKS / f, tmp_path / f)
    probe = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True)
    p = subprocess.run([sys.executable, "-s", str(tmp_path / f"{framework}_check.py"), "--steps", "30"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path,
                       env={"PATH": os.environ["PATH"], "PYTHONDONTWRITEBYTECODE": "1"})
    rep = json.loads(p.stdout.strip().splitlines()[-1].removeprefix("IMAGEKIT_REPORT "))
    assert rep["framework"] == framework and list(rep) == harness.KEYS
    if probe.returncode:  # not installed here: the import failure is reported, with code 3
        assert p.returncode == 3 and rep["reason"].startswith(f"import {module} failed")
    else:
        assert p.returncode == 0 and rep["ok"], p.stderr[-2000:]
    assert rep["gpu_readiness"]["error"] is None
