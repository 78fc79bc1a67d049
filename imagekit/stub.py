"""A stand-in for the NVIDIA driver library, for smoke tests on an engine with
no GPU. Some GPU builds (MXNet's) link libcuda.so.1 directly, so they cannot
even be imported where the NVIDIA container runtime has not injected the
driver. This makes a libcuda.so.1 that defines exactly the driver functions
the framework calls, each answering CUDA_ERROR_NO_DEVICE: the framework
imports, finds no GPU, and trains on the CPU. It is copied into the smoke
containers only, never into the image, and the report says it was used."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from .config import cache_dir
from .errors import SmokeError

SONAME = "libcuda.so.1"
CUDA_ERROR_NO_DEVICE = 100
SYMBOL = re.compile(r"^cu[A-Z][A-Za-z0-9_]{1,80}$")


def source(symbols: list[str]) -> str:
    body = "\n".join(f"int {s}(void) {{ return {CUDA_ERROR_NO_DEVICE}; }}" for s in symbols)
    return f"/* imagekit: a driver stand-in; every call reports no CUDA device */\n{body}\n"


def driver_stub(symbols: list[str]) -> bytes:
    """The stub's bytes, built once per symbol set (cached)."""
    symbols = sorted({s for s in symbols if SYMBOL.match(s)})
    if not symbols:
        raise SmokeError("the framework links the NVIDIA driver but names no driver function")
    key = hashlib.sha256(" ".join(symbols).encode()).hexdigest()[:16]
    out = cache_dir() / "stubs" / key / SONAME
    if out.is_file():
        return out.read_bytes()
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise SmokeError("this GPU build cannot be imported without the NVIDIA driver, and "
                         "there is no C compiler here to make a stand-in (apt-get install gcc), "
                         "or smoke-test it on an engine with a GPU (--engine)")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp:
        src = Path(tmp) / "libcuda_stub.c"
        src.write_text(source(symbols))
        built = Path(tmp) / SONAME
        res = subprocess.run([cc, "-shared", "-fPIC", "-O0", f"-Wl,-soname,{SONAME}",
                              "-o", str(built), str(src)], capture_output=True, text=True)
        if res.returncode != 0:
            raise SmokeError(f"could not build the driver stand-in: "
                             f"{(res.stderr.strip().splitlines() or ['cc failed'])[-1]}")
        os.replace(built, out)
    return out.read_bytes()
