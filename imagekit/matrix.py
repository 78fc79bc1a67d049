"""The compatibility matrix (matrix.yaml) and the rules that pick a valid
framework / Python / CUDA / base combination, or refuse one before any build."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources

import yaml
from packaging.version import InvalidVersion, Version

from .errors import CompatError


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
    extra: dict = field(default_factory=dict, compare=False)


@lru_cache(maxsize=1)
def load() -> dict:
    text = resources.files("imagekit").joinpath("matrix.yaml").read_text()
    return yaml.safe_load(text)


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


def variant(framework: str, version: str, device: str, python: str,
            cuda: str | None = None, own_base: bool = False) -> Variant:
    """Return the matrix row for this combination or raise CompatError naming
    the nearest valid ones."""
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
    dev = row[device]
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
        if cuda is not None and cuda != dev["cuda"]:
            others = [f"{framework} {v} (CUDA {r['gpu']['cuda']})" for v, r in rows.items()
                      if r["gpu"]["cuda"] == cuda]
            hint = f"; {', '.join(others)} uses CUDA {cuda}" if others else ""
            raise CompatError(f"{framework} {version} GPU builds use CUDA {dev['cuda']}, not {cuda}; "
                              f"nearest valid: cuda {dev['cuda']}{hint}")
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
    )


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
