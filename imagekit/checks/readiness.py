"""GPU readiness facts read from a framework's files, with no GPU and the standard library only.

Three readers, used by harness.py (the schema of what it reports is in its docstring):
- read_elf: the loader's view of one ELF64 file (machine, SONAME, DT_NEEDED, RPATH, RUNPATH, and
  where its .nv_fatbin section lies), read with struct and a few seeks;
- Resolver: each needed name resolved as the dynamic loader would (RPATH when there is no RUNPATH,
  LD_LIBRARY_PATH, RUNPATH, the ld.so cache, the default directories), recursively and in bounded
  time; missing() names what stays unresolved and who needs it, leaving out the driver's libraries;
- fatbin_archs: the GPU architectures a library carries code for, from its fatbin headers.
"""

import os
import re
import shutil
import struct
import subprocess
import sys
import time

# Put into the container by the NVIDIA runtime from the host's driver; never in an image.
DRIVER_LIB = re.compile(r"lib(cuda|nvidia-[\w.+-]+|nvcuvid|nvoptix|cudadebugger)\.so([.\d]*)$")
CUDA_LIB = re.compile(r"lib(cudart|cublas|cublasLt|cudnn\w*|nccl)\.so([.\d]*)$")
DRIVER_API = re.compile(rb"\x00(cu[A-Z][A-Za-z0-9_]{1,80})(?=\x00)")  # cuInit, cuCtxCreate_v2, ...
FATBIN_MAGIC = 0xBA55ED50
FATBIN_KINDS = {1: "ptx", 2: "sass"}


class Elf:
    """The loader's view of an ELF file; `compat` tells whether two objects can share a process."""

    def __init__(self, path, machine, endian):
        self.path, self.machine, self.endian = path, machine, endian
        self.soname, self.needed, self.rpath, self.runpath, self.fatbin = None, [], None, None, None
        self.driver_symbols = []  # driver API names in its dynamic strings, when it links libcuda

    @property
    def compat(self):
        return (self.machine, self.endian)


def read_elf(path):
    """Read one ELF64 file's dynamic section and section names; None for anything else."""
    try:
        with open(path, "rb") as f:
            return _read_elf(f, path)
    except (OSError, ValueError, struct.error, IndexError):
        return None


def _read_elf(f, path):
    head = f.read(64)
    if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2:  # ELFCLASS64 only
        return None
    end = "<" if head[5] == 1 else ">"
    (machine, phoff, shoff, phentsize, phnum,
     shentsize, shnum, shstrndx) = struct.unpack_from(end + "2xH12xQQ6xHHHHH", head, 16)
    elf = Elf(path, machine, end)
    f.seek(phoff)
    table = f.read(phentsize * phnum)
    loads, dynamic = [], None
    for i in range(phnum):
        ptype, offset, vaddr, filesz = struct.unpack_from(end + "I4xQQ8xQ", table, i * phentsize)
        if ptype == 1:  # PT_LOAD
            loads.append((vaddr, filesz, offset))
        elif ptype == 2:  # PT_DYNAMIC
            dynamic = (offset, filesz)
    if dynamic:
        _read_dynamic(f, elf, dynamic, loads)
    if shoff and shnum and shstrndx < shnum:
        f.seek(shoff)
        sections = [struct.unpack_from(end + "I20xQQ", f.read(shentsize)) for _ in range(shnum)]
        f.seek(sections[shstrndx][1])
        names = f.read(sections[shstrndx][2])
        for name, offset, size in sections:
            if names[name:name + 11] == b".nv_fatbin\0":
                elf.fatbin = (offset, size)
    return elf


def _read_dynamic(f, elf, dynamic, loads):
    f.seek(dynamic[0])
    data = f.read(dynamic[1])
    entries, strtab, strsz = [], None, None
    for tag, val in struct.iter_unpack(elf.endian + "qQ", data[:len(data) // 16 * 16]):
        if tag == 0:  # DT_NULL
            break
        if tag == 5:  # DT_STRTAB, an address
            strtab = val
        elif tag == 10:  # DT_STRSZ
            strsz = val
        elif tag in (1, 14, 15, 29):  # DT_NEEDED, DT_SONAME, DT_RPATH, DT_RUNPATH
            entries.append((tag, val))
    offset = next((off + strtab - va for va, size, off in loads if va <= (strtab or -1) < va + size), None)
    if offset is None or not strsz:
        return
    f.seek(offset)
    strings = f.read(strsz)
    for tag, val in entries:
        text = strings[val:strings.index(b"\0", val)].decode("utf-8", "replace")
        if tag == 1:
            elf.needed.append(text)
        else:
            setattr(elf, {14: "soname", 15: "rpath", 29: "runpath"}[tag], text)
    if any(n.startswith("libcuda.so") for n in elf.needed):
        elf.driver_symbols = sorted({m.decode() for m in DRIVER_API.findall(b"\0" + strings)})


def fatbin_archs(elf, deadline):
    """The `sm_XX` (SASS) and `compute_XX` (PTX) entries of the file's .nv_fatbin section."""
    found = {"sass": set(), "ptx": set()}
    if not elf.fatbin:
        return found
    start, size = elf.fatbin
    stop = start + size
    with open(elf.path, "rb") as f:
        pos = start
        while pos + 16 <= stop and time.monotonic() < deadline:
            f.seek(pos)
            magic, _, hsize, body = struct.unpack("<IHHQ", f.read(16))
            if magic != FATBIN_MAGIC:  # padding between fatbins: look for the next one
                f.seek(pos + 1)
                chunk = f.read(min(65536, stop - pos - 1))
                hit = chunk.find(struct.pack("<I", FATBIN_MAGIC))
                pos = pos + 1 + (hit if hit >= 0 else max(len(chunk) - 3, 0))
                continue
            entry, end = pos + hsize, pos + hsize + body
            while entry + 32 <= end:
                f.seek(entry)
                kind, _, ehsize, payload, arch = struct.unpack("<HHIQ12xI", f.read(32))
                if kind in FATBIN_KINDS and arch:
                    found[FATBIN_KINDS[kind]].add(("sm_%d" if kind == 2 else "compute_%d") % arch)
                entry += max(ehsize + payload, 32)
            pos = end
    return found


def arch_lists(names):
    """Split names like sm_80 / compute_90 into sorted SASS and PTX lists."""
    names = set(names or ())
    key = lambda s: (len(s), s)  # noqa: E731  sm_9 before sm_80
    return {"sass": sorted((n for n in names if n.startswith("sm_")), key=key),
            "ptx": sorted((n for n in names if n.startswith("compute_")), key=key)}


def default_dirs():
    multi = f"{os.uname().machine}-linux-gnu"
    return ["/lib/" + multi, "/usr/lib/" + multi, "/lib64", "/usr/lib64", "/lib", "/usr/lib"]


def ld_cache():
    """soname -> paths from `ldconfig -p`; None where there is no ldconfig."""
    exe = shutil.which("ldconfig") or next(
        (p for p in ("/sbin/ldconfig", "/usr/sbin/ldconfig") if os.access(p, os.X_OK)), None)
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "-p"], capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    cache = {}
    for line in out.splitlines():
        name, arrow, path = line.strip().partition(" => ")
        if arrow:
            cache.setdefault(name.split(" (")[0], []).append(path.strip())
    return cache


class Resolver:
    """Resolve DT_NEEDED names as ld.so would, from given root objects, within a deadline."""

    def __init__(self, deadline, cache="ldconfig", env=None, max_objects=4000):
        env = os.environ if env is None else env
        self.deadline, self.max_objects = deadline, max_objects
        self.cache = ld_cache() if cache == "ldconfig" else cache
        self.dirs = default_dirs()
        if self.cache is None:  # no ld.so cache to ask: scan where it would point
            self.cache = {}
            self.dirs += ["/usr/local/lib"]
        self.ld_library_path = [d for d in env.get("LD_LIBRARY_PATH", "").split(":") if d]
        self.objects = {}  # path -> Elf, for every file read
        self.unresolved = {}  # name -> set of needing paths
        self.incomplete = False
        self._listing, self._elfs = {}, {}

    def add(self, paths):
        """Read the given ELF files (others are skipped) and everything they need."""
        todo = [(p, ()) for p in paths]
        while todo:
            if time.monotonic() > self.deadline or len(self.objects) >= self.max_objects:
                self.incomplete = True
                return
            path, chain = todo.pop()
            elf = self._elf(path)
            if elf is None or path in self.objects:
                continue
            self.objects[path] = elf
            # RPATH applies to the object's needs, then to its dependents', unless it has a RUNPATH.
            chain = chain if elf.runpath else tuple(self._expand(elf, elf.rpath)) + chain
            for name in elf.needed:
                if DRIVER_LIB.match(name):
                    continue
                found = self.find(name, elf, () if elf.runpath else chain)
                if found:
                    todo.append((found, chain))
                else:
                    self.unresolved.setdefault(name, set()).add(path)

    def find(self, name, elf, rpaths=(), extra=()):
        """Where the loader finds `name` for `elf` (rpaths: RPATH of the loading chain)."""
        if "/" in name:
            return name if self._fits(name, elf) else None
        dirs = list(rpaths) + self.ld_library_path + self._expand(elf, elf.runpath) + list(extra)
        for d in dirs:
            if name in self._list(d) and self._fits(os.path.join(d, name), elf):
                return os.path.join(d, name)
        for path in self.cache.get(name, ()):
            if self._fits(path, elf):
                return path
        for d in self.dirs:
            if name in self._list(d) and self._fits(os.path.join(d, name), elf):
                return os.path.join(d, name)
        return None

    def missing(self, limit=5):
        """Names no object could resolve: [{library, needed_by: [paths], more}], sorted."""
        loaded = {os.path.basename(p) for p in self.objects}
        loaded |= {e.soname for e in self.objects.values() if e.soname}
        out = []
        for name in sorted(self.unresolved):
            if name in loaded:  # satisfied by an object the process has loaded by then
                continue
            who = sorted(self.unresolved[name])
            out.append({"library": name, "needed_by": who[:limit], "more": max(len(who) - limit, 0)})
        return out

    def search_dirs(self, elfs):
        """Every RUNPATH/RPATH directory of the given objects, $ORIGIN expanded."""
        dirs = []
        for elf in elfs:
            for d in self._expand(elf, elf.runpath) + self._expand(elf, elf.rpath):
                if d not in dirs:
                    dirs.append(d)
        return dirs

    def _elf(self, path):
        if path not in self._elfs:
            self._elfs[path] = read_elf(path)
        return self._elfs[path]

    def _fits(self, path, elf):
        other = self._elf(path)
        return other is not None and other.compat == elf.compat

    def _list(self, d):
        if d not in self._listing:
            try:
                self._listing[d] = set(os.listdir(d))
            except OSError:
                self._listing[d] = set()
        return self._listing[d]

    @staticmethod
    def _expand(elf, value):
        if not value:
            return []
        origin = os.path.dirname(elf.path)
        lib = "lib64" if sys.maxsize > 2**32 else "lib"
        out = []
        for d in value.split(":"):
            d = d.replace("${ORIGIN}", origin).replace("$ORIGIN", origin)
            d = d.replace("${LIB}", lib).replace("$LIB", lib)
            if d:
                out.append(os.path.normpath(d))
        return out
