"""The compatibility matrix (matrix.yaml) and the rules that pick a valid
framework / Python / CUDA / base combination, or refuse one before any build;
and NVIDIA's driver and GPU architecture facts (drivers.yaml) with the pure
checks built on them: the driver a CUDA release needs, whether a GPU can run
the code a build carries, and which GPU variants fit a platform."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import yaml
from packaging.version import InvalidVersion, Version

from .errors import CompatError, UsageError


@dataclass(frozen=True)
class Variant:
    """One framework version on one device: what to install and on what."""

    framework: str
    version: str
    device: str
    pip: tuple[str, ...]
    pip_index: str | None
    base_key: str
    base_image: str
    python_from: str
    base_pythons: tuple[str, ...]
    glibc: str
    apt: tuple[str, ...]
    cuda: str | None
    cudnn: str | None
    cuda_from: str | None
    pythons: tuple[str, ...]
    source: str
    nccl: str | None = None          # NCCL installed (major.minor), GPU only
    cuda_build: str | None = None    # the CUDA the framework was compiled against
    cudnn_build: str | None = None   # the cuDNN it was compiled against
    sass: tuple[str, ...] = ()       # cubins it carries (sm_XY)
    ptx: tuple[str, ...] = ()        # PTX it carries (compute_XY)
    gpu_source: str | None = None    # where the GPU facts come from
    extra: dict = field(default_factory=dict, compare=False)


# imagekit's own YAML files (the matrix, the driver table, the platforms), read
# with libyaml where PyYAML has it: the matrix alone took 45 ms with the pure-
# Python parser, most of the time a push spends before it reaches the engine
YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(text: str):
    return yaml.load(text, Loader=YAML_LOADER)  # noqa: S506 - a safe loader


@lru_cache(maxsize=1)
def load() -> dict:
    text = resources.files("imagekit").joinpath("matrix.yaml").read_text()
    return read_yaml(text)


@lru_cache(maxsize=1)
def drivers() -> dict:
    """drivers.yaml: NVIDIA's minimum driver per CUDA release, the minor-version
    compatibility floors, GPU compute capabilities, and their sources."""
    text = resources.files("imagekit").joinpath("drivers.yaml").read_text()
    return read_yaml(text)


def frameworks() -> list[str]:
    return list(load()["frameworks"])


def versions(framework: str) -> list[str]:
    return list(load()["frameworks"][framework]["versions"])


def default_version(framework: str) -> str:
    fw = load()["frameworks"][framework]
    return fw.get("default") or next(iter(fw["versions"]))


def jupyter_pip() -> list[str]:
    return list(load()["jupyter"]["pip"])


def _vkey(v: str) -> Version:
    try:
        return Version(v)
    except InvalidVersion:
        return Version("0")


def _nearest(wanted: str, known: list[str], n: int = 2) -> list[str]:
    w = _vkey(wanted)
    def distance(v: str) -> tuple:
        k = _vkey(v)
        return (abs(k.major - w.major), abs(k.minor - w.minor), abs(k.micro - w.micro))
    return sorted(known, key=distance)[:n]


def _gpu_row(dev: dict, base_image: str | None, python: str) -> dict:
    """The GPU row, or its on_base alternative when `base_image` is that base's image."""
    bases = load()["bases"]
    for key, alt in (dev.get("on_base") or {}).items():
        if base_image is not None and base_image == bases[key]["image"].format(python=python):
            merged = {k: v for k, v in dev.items() if k != "on_base"}
            merged.update(alt)
            merged["base"] = key
            return merged
    return dev


def variant(framework: str, version: str, device: str, python: str,
            cuda: str | None = None, own_base: bool = False,
            base_image: str | None = None) -> Variant:
    """Return the matrix row for this combination or raise CompatError naming
    the nearest valid ones. `base_image` is the spec's own base, if any: when it
    is a base a GPU row names under on_base (a CUDA image), that variant is used."""
    data = load()
    fw = data["frameworks"][framework]
    rows = fw["versions"]
    if version not in rows:
        refused = fw.get("refused", {})
        near = ", ".join(f"{framework} {v}" for v in _nearest(version, list(rows)))
        for prefix, reason in refused.items():
            if version == prefix or version.startswith(prefix + "."):
                raise CompatError(f"{framework} {version} is refused: {reason}; nearest valid: {near}")
        raise CompatError(f"{framework} {version} is not in the compatibility matrix; "
                          f"nearest valid: {near} (see `imagekit matrix`)")
    row = rows[version]
    pythons = tuple(row["python"])
    dev = row[device] if device != "gpu" else _gpu_row(row[device], base_image, python)
    own_base = own_base and not (device == "gpu" and dev is not row[device])
    base = data["bases"][dev["base"]]
    base_pythons = tuple(base["pythons"])
    if python not in pythons:
        ok = [p for p in pythons if p in base_pythons] or list(pythons)
        near = _nearest(python, ok, 1)[0]
        raise CompatError(f"{framework} {version} does not support Python {python}; "
                          f"supported: {', '.join(pythons)} (nearest valid: python {near})")
    if python not in base_pythons and not own_base:
        raise CompatError(f"{framework} {version} {device.upper()} uses base "
                          f"{base['image']} which provides Python {', '.join(base_pythons)}, not {python}; "
                          f"set python: {base_pythons[0]} or name your own base")
    if device == "gpu":
        if cuda is not None and cuda not in _cudas(dev):
            others = [f"{framework} {v} (CUDA {r['gpu']['cuda']})" for v, r in rows.items()
                      if cuda in _cudas(r["gpu"])]
            hint = f"; {', '.join(others)} uses CUDA {cuda}" if others else ""
            built = (f", built for CUDA {dev['cuda_build']}"
                     if dev.get("cuda_build") and _mm(dev["cuda_build"]) != dev["cuda"] else "")
            raise CompatError(f"{framework} {version} GPU builds install CUDA {dev['cuda']}{built}, "
                              f"not {cuda}; nearest valid: cuda {dev['cuda']}{hint}")
    elif cuda is not None:
        raise CompatError("cuda is set but device is cpu; remove cuda or set device: gpu")
    return Variant(
        framework=framework, version=version, device=device,
        pip=tuple(dev["pip"]), pip_index=dev.get("pip_index"),
        base_key=dev["base"], base_image=base["image"].format(python=python),
        python_from=base["python_from"], base_pythons=base_pythons, glibc=base["glibc"],
        apt=tuple(row.get("apt", [])),
        cuda=dev.get("cuda") if device == "gpu" else None,
        cudnn=dev.get("cudnn") if device == "gpu" else None,
        cuda_from=dev.get("cuda_from") if device == "gpu" else None,
        pythons=pythons, source=row["source"],
        **(_gpu_facts(dev) if device == "gpu" else {}),
    )


def _mm(v: str) -> str:
    """major.minor of a version string."""
    return ".".join(v.split(".")[:2])


def _cudas(dev: dict) -> set[str]:
    """The CUDA versions a spec's `cuda:` may name for a GPU row: the runtime
    it installs and the one the framework was built for (major.minor)."""
    return {dev["cuda"]} | ({_mm(dev["cuda_build"])} if dev.get("cuda_build") else set())


def _gpu_facts(dev: dict) -> dict:
    return {"nccl": dev.get("nccl"), "cuda_build": dev.get("cuda_build"),
            "cudnn_build": dev.get("cudnn_build"), "sass": tuple(dev.get("sass", ())),
            "ptx": tuple(dev.get("ptx", ())), "gpu_source": dev.get("source")}


def default_python(framework: str, version: str, device: str) -> str:
    """The newest Python that both the framework and its default base provide."""
    data = load()
    rows = data["frameworks"][framework]["versions"]
    if version not in rows:
        return "3.11"
    row = rows[version]
    base = data["bases"][row[device]["base"]]
    common = [p for p in row["python"] if p in base["pythons"]]
    return "3.11" if "3.11" in common else (common[-1] if common else row["python"][-1])


# --- NVIDIA driver and GPU architecture -------------------------------------------

_DRIVER_RE = re.compile(r"^[0-9]{2,4}(?:\.[0-9]{1,4}){0,2}\Z")
_ARCH_RE = re.compile(r"^(?:sm_?|compute_?)?([0-9]{1,2})\.?([0-9])([af]?)\Z")


def _driver_key(driver: str) -> tuple[int, ...]:
    """'570.26' -> (570, 26, 0): driver versions compare number by number."""
    d = str(driver).strip()
    if not _DRIVER_RE.match(d):
        raise UsageError(f"{driver!r} is not an NVIDIA driver version (e.g. 535.104.05)")
    parts = [int(x) for x in d.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def _cuda_key(cuda: str) -> tuple[int, int, int]:
    try:
        parts = [int(x) for x in str(cuda).split(".")[:3]]
    except ValueError:
        raise UsageError(f"{cuda!r} is not a CUDA version (e.g. 12.4)") from None
    if not parts:
        raise UsageError(f"{cuda!r} is not a CUDA version (e.g. 12.4)")
    return tuple(parts + [0] * (3 - len(parts)))  # type: ignore[return-value]


def release_driver(cuda: str) -> str | None:
    """The driver NVIDIA lists for this CUDA release's full feature set ('12.5' is
    12.5 GA, '12.5.1' Update 1; a later update of a listed release counts as the
    newest listed one); None when the release is not in drivers.yaml."""
    want = _cuda_key(cuda)
    best: tuple | None = None
    for key, drv in drivers()["releases"].items():
        k = _cuda_key(key)
        if k[:2] == want[:2] and k <= want and (best is None or k > best[0]):
            best = (k, drv)
    return best[1] if best else None


@dataclass(frozen=True)
class DriverNeed:
    """The driver a CUDA runtime needs. `version` is what imagekit applies: NVIDIA's
    minor-version-compatibility floor of the CUDA major version (the release runs
    there with a limited feature set: no PTX JIT of newer PTX). `full` is the
    driver NVIDIA lists for the release's full feature set (None when unlisted)."""

    cuda: str
    version: str
    rule: str
    source: str
    full: str | None
    full_source: str


def min_driver(cuda: str) -> DriverNeed:
    """The minimum NVIDIA driver (Linux x86_64) for a CUDA runtime version."""
    data = drivers()
    major = str(_cuda_key(cuda)[0])
    floor = data["minor_version_compatibility"].get(major)
    if floor is None:
        known = ", ".join(f"{m}.x" for m in data["minor_version_compatibility"])
        raise CompatError(f"no driver data for CUDA {cuda} (drivers.yaml covers {known})")
    full = release_driver(cuda)
    rule = f"minor-version compatibility: CUDA {major}.x runs on driver >= {floor}"
    if full and full != floor:
        rule += f" (CUDA {cuda}'s full feature set needs >= {full})"
    return DriverNeed(cuda=cuda, version=floor, rule=rule,
                      source=data["sources"]["minor_version_compatibility"],
                      full=full, full_source=data["sources"]["releases"])


def driver_ok(driver: str, cuda: str) -> bool:
    """Whether a driver meets the floor imagekit applies for this CUDA runtime."""
    return _driver_key(driver) >= _driver_key(min_driver(cuda).version)


def gpu_names() -> dict[str, str]:
    """GPU model -> sm_XY, from drivers.yaml."""
    return dict(drivers()["gpus"])


def parse_arch(arch: str) -> str:
    """A GPU architecture as sm_XY: accepts sm_86, compute_86, 8.6, 86, sm_90a, or a
    GPU model from drivers.yaml (A100, h100, ...)."""
    a = str(arch).strip()
    by_name = {k.lower(): v for k, v in gpu_names().items()}
    if a.lower() in by_name:
        return by_name[a.lower()]
    m = _ARCH_RE.match(a.lower())
    if not m:
        raise UsageError(f"{arch!r} is not a GPU architecture: give sm_XY (e.g. sm_80), "
                         f"X.Y, or a GPU model ({', '.join(gpu_names())})")
    return f"sm_{int(m.group(1))}{m.group(2)}{m.group(3)}"


def _arch_parts(arch: str) -> tuple[int, int, str]:
    m = _ARCH_RE.match(parse_arch(arch))
    return int(m.group(1)), int(m.group(2)), m.group(3)


def arch_runs(gpu_arch: str, sass: Iterable[str], ptx: Iterable[str]) -> str | None:
    """How a GPU of `gpu_arch` runs code built with these cubins and PTX: 'sass'
    when a cubin sm_XY has the GPU's major version X and a minor <= the GPU's (an
    arch-specific sm_XYa only on X.Y itself), 'ptx' when PTX compute_XY with X.Y <=
    the GPU's can be JIT-compiled for it, None when nothing runs."""
    g = _arch_parts(gpu_arch)
    for s in sass:
        major, minor, suffix = _arch_parts(s)
        if major == g[0] and (minor == g[1] if suffix else minor <= g[1]):
            return "sass"
    for p in ptx:
        major, minor, suffix = _arch_parts(p)
        if (major, minor) == g[:2] if suffix else (major, minor) <= g[:2]:
            return "ptx"
    return None


def arch_ok(target_archs: Iterable[str], sass: Iterable[str], ptx: Iterable[str]) -> bool:
    """Whether at least one of the platform's GPU architectures can run the code
    (no target architectures: nothing to check, True)."""
    targets = list(target_archs)
    sass, ptx = list(sass), list(ptx)
    return not targets or any(arch_runs(t, sass, ptx) for t in targets)


@dataclass(frozen=True)
class Fit:
    """One GPU variant of the matrix against a platform's driver and GPU."""

    framework: str
    version: str
    cuda: str                        # the CUDA runtime the variant installs
    cuda_build: str | None           # the CUDA the framework was built for
    sass: tuple[str, ...]
    ptx: tuple[str, ...]
    driver_needed: str               # on this platform: the floor, or more when only PTX runs
    driver_rule: str                 # the rule behind driver_needed, in full
    driver_why: str                  # the same in a few words
    driver_source: str
    driver: str | None               # the platform's driver, when given
    driver_ok: bool | None           # None: no driver given
    gpu_arch: str | None             # the first platform architecture that runs it, else the first given
    arch_via: str | None             # 'sass', 'ptx' or None
    arch_ok: bool | None             # None: no architecture given
    nearest: str | None = None       # the nearest version of the same framework that fits
    others: tuple[str, ...] = ()     # variants of other frameworks that fit, when none of this one does

    @property
    def name(self) -> str:
        return f"{self.framework} {self.version}"

    @property
    def fits(self) -> bool:
        return self.driver_ok is not False and self.arch_ok is not False

    @property
    def reason(self) -> str:
        """Why it does not fit ('' when it does)."""
        why = []
        if self.driver_ok is False:
            why.append(f"needs NVIDIA driver >= {self.driver_needed} ({self.driver_why}), "
                       f"the platform has {self.driver}")
        if self.arch_ok is False:
            code = " ".join(self.sass + self.ptx) or "none"
            why.append(f"carries no code a {self.gpu_arch} GPU can run (it has: {code})")
        return "; ".join(why)

    @property
    def message(self) -> str:
        """One line: fits, or why not and what would."""
        if self.fits:
            return f"{self.name} fits"
        if self.nearest:
            hint = f"{self.nearest} would fit"
        elif self.others:
            hint = f"no {self.framework} version in the matrix fits; {', '.join(self.others)} would"
        else:
            hint = "no variant in the matrix fits"
        return f"{self.name} (CUDA {self.cuda}) {self.reason}; {hint}"


def _as_list(archs: str | Iterable[str] | None) -> list[str]:
    if archs is None:
        return []
    if isinstance(archs, str):
        return [a for a in re.split(r"[,\s]+", archs) if a]
    return [a for a in archs if a]


def _fit_one(framework: str, version: str, dev: dict, driver: str | None,
             archs: list[str]) -> Fit:
    need = min_driver(dev["cuda"])
    sass, ptx = tuple(dev.get("sass", ())), tuple(dev.get("ptx", ()))
    via, arch = None, (archs[0] if archs else None)
    for a in archs:
        via = arch_runs(a, sass, ptx)
        if via:
            arch = a
            break
    needed, rule = need.version, need.rule
    short = f"CUDA {dev['cuda']}, minor-version compatibility"
    if via == "ptx":
        made_by = dev.get("cuda_build") or dev["cuda"]
        jit = release_driver(made_by)
        if jit and _driver_key(jit) > _driver_key(needed):
            needed = jit
            rule = (f"{arch} runs only its PTX, which a driver JIT-compiles only when it "
                    f"knows CUDA {made_by}'s PTX: >= {jit}")
            short = f"JIT of its CUDA {made_by} PTX for {arch}"
    return Fit(framework=framework, version=version, cuda=dev["cuda"],
               cuda_build=dev.get("cuda_build"), sass=sass, ptx=ptx,
               driver_needed=needed, driver_rule=rule, driver_why=short, driver_source=need.source,
               driver=driver,
               driver_ok=None if driver is None else _driver_key(driver) >= _driver_key(needed),
               gpu_arch=arch, arch_via=via, arch_ok=None if not archs else via is not None)


def fits(driver: str | None = None, gpu_arch: str | Iterable[str] | None = None) -> list[Fit]:
    """Every GPU variant of the matrix, newest first per framework, with whether it
    fits the platform's driver and GPU architecture(s); one that does not names the
    nearest version of its framework that does (or other frameworks' that do)."""
    if driver is not None:
        _driver_key(driver)
    archs = [parse_arch(a) for a in _as_list(gpu_arch)]
    out: list[Fit] = []
    for fw, spec in load()["frameworks"].items():
        rows = sorted(spec["versions"].items(), key=lambda kv: _vkey(kv[0]), reverse=True)
        out += [_fit_one(fw, ver, row["gpu"], driver, archs) for ver, row in rows if "gpu" in row]
    fitting = {fw: [f.version for f in out if f.framework == fw and f.fits]
               for fw in dict.fromkeys(f.framework for f in out)}
    done = []
    for f in out:
        if f.fits:
            done.append(f)
            continue
        near = _nearest(f.version, fitting[f.framework], 1)
        others = () if near else tuple(g.name for g in out if g.framework != f.framework and g.fits)
        done.append(Fit(**{**f.__dict__, "nearest": f"{f.framework} {near[0]}" if near else None,
                           "others": others}))
    return done


def fit(framework: str, version: str, driver: str | None = None,
        gpu_arch: str | Iterable[str] | None = None) -> Fit:
    """The Fit of one GPU variant (see fits)."""
    for f in fits(driver, gpu_arch):
        if f.framework == framework and f.version == version:
            return f
    raise CompatError(f"{framework} {version} has no GPU variant in the compatibility matrix")


def gpu_labels(v: Variant) -> dict[str, str]:
    """Image labels for a GPU variant's facts (empty for a CPU one): the runtime
    installed, what the framework was built for, the code it carries and the
    driver it needs."""
    if v.device != "gpu" or not v.cuda:
        return {}
    return {
        "io.imagekit.cuda": v.cuda,
        "io.imagekit.cudnn": v.cudnn or "",
        "io.imagekit.nccl": v.nccl or "",
        "io.imagekit.cuda.build": v.cuda_build or "",
        "io.imagekit.cudnn.build": v.cudnn_build or "",
        "io.imagekit.cuda.archs": " ".join(v.sass + v.ptx),
        "io.imagekit.driver.min": min_driver(v.cuda).version,
    }
