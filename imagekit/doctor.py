"""Doctor: what a user runs first when something fails. It asks the engine
what it is (where, version and API, image store, builders, GPU runtime),
whether the project's base image is there, and what the wheelhouse holds,
and yields one typed DoctorResult: each finding on its own line, with a
one-line fix where something is missing or wrong. It changes nothing.

With no engine answering there is nothing to ask: the command line stops
before this stage with EngineUnavailable (exit 5), one line."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

from .config import Project
from .engine import BUILDKIT_SINCE, Buildx, EngineAPI, EngineFacts, choose, find_buildx
from .errors import ImagekitError
from .events import DoctorCheck, DoctorResult, Event

OCI_SAVE_SINCE = 25      # Engine 25+ writes an OCI layout with `docker save`
LOW_DISK = 10 * 10**9    # a GPU image's wheels alone are about 6 GB
LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "")


def doctor(project: Project | None, engine: EngineAPI, *, config_problem: str = "",
           buildx: Callable[[], Buildx] | None = None) -> Iterator[Event]:
    """The engine's facts and what builds need. `project` is None when its
    imagekit.toml could not be read (`config_problem` says why). `buildx`
    finds the buildx plugin (default: engine.find_buildx, a subprocess)."""
    f = engine.facts()
    bx = (buildx or find_buildx)()
    requested = project.config.build.builder if project is not None else "auto"
    try:
        chosen = choose(engine, requested, buildx=bx)
        used, why = chosen.name, chosen.reason
    except ImagekitError as e:
        used, why = "", e.message
    r = DoctorResult(where=f.where, via=_via(f), server_version=f.server_version,
                     api_version=f.api_version, store=f.store, storage_driver=f.storage_driver,
                     builders=["classic", *(["buildkit"] if f.buildkit else [])],
                     buildx=bx.version if bx.works else "", buildx_path=bx.path,
                     gpu_runtime=f.gpu_runtime, cdi_gpus=f.cdi_gpus, builder=used,
                     builder_reason=why)
    r.checks = [DoctorCheck("engine", f"{f.where} ({r.via})"),
                _version(f), _store(f), _builders(f, bx, requested, used, why), _gpu(f)]
    if project is None:
        r.checks.append(DoctorCheck("config", config_problem or "imagekit.toml cannot be read",
                                    ok=False, fix="correct imagekit.toml as this line says"))
    else:
        r.checks.append(_base(project, engine, r))
        r.checks.append(_wheelhouse(project, f, r))
    yield r


def _via(f: EngineFacts) -> str:
    if f.context:
        return f"docker context {f.context}"
    if os.environ.get("DOCKER_HOST"):
        return "DOCKER_HOST"
    return "the default socket"


def _major(version: str) -> int:
    m = re.match(r"(\d+)", version)
    return int(m[1]) if m else 0


def _version(f: EngineFacts) -> DoctorCheck:
    found = f"Docker Engine {f.server_version or '?'}, API {f.api_version or '?'}"
    platform = "/".join(x for x in (f.os, f.arch) if x)
    if platform:
        found += f", {platform}"
    major = _major(f.server_version)
    if major and major < OCI_SAVE_SINCE:
        found += (f"; Engine < {OCI_SAVE_SINCE}: `docker save` writes the legacy layout and the "
                  "whole export is staged on the engine's disk before its first byte")
    return DoctorCheck("version", found)


def _store(f: EngineFacts) -> DoctorCheck:
    if f.store == "containerd":
        return DoctorCheck("store", f"containerd image store ({f.storage_driver or 'snapshotter'}): "
                                    "image IDs are manifest digests, layers stored compressed")
    return DoctorCheck("store", f"classic ({f.storage_driver or 'unknown driver'})")


def _builders(f: EngineFacts, bx: Buildx, requested: str, used: str, why: str) -> DoctorCheck:
    asked = f" ([build] builder = {requested!r})" if requested != "auto" else ""
    if not used:
        return DoctorCheck("builders", f"no builder{asked}: {why}", ok=False,
                           fix="set [build] builder in imagekit.toml to classic, buildkit or a "
                               "builder `docker buildx ls` lists")
    where = f" at {bx.path}" if bx.path else ""
    line = f"builds use {used}{asked}: {why}"
    if not f.buildkit:
        return DoctorCheck("builders", line, ok=False,
                           fix=f"upgrade the engine to {BUILDKIT_SINCE} or later for BuildKit, "
                               "twice as fast cold and with no network in the build (`make "
                               "engine` installs Engine 26 where none answers)")
    if bx.works and used == "buildkit":
        return DoctorCheck("builders", f"{line}{where}")
    if bx.works:
        return DoctorCheck("builders", f"{line}; BuildKit also there: buildx {bx.version}{where}")
    return DoctorCheck("builders", f"{line}; BuildKit built in, but no working buildx plugin "
                                   f"({bx.problem})", ok=False,
                       fix="install the buildx plugin (Debian: apt-get install docker-buildx), or "
                           "put docker-buildx in ~/.docker/cli-plugins")


def _gpu(f: EngineFacts) -> DoctorCheck:
    found = [x for x in ("nvidia runtime" if f.gpu_runtime else "",
                         f"{f.cdi_gpus} CDI GPU device{'s' if f.cdi_gpus != 1 else ''}"
                         if f.cdi_gpus else "") if x]
    if found:
        return DoctorCheck("gpu", ", ".join(found) + ": GPU images train on the GPU in smoke")
    return DoctorCheck("gpu", "none (no nvidia runtime, no CDI GPU devices): GPU images are "
                              "smoke-tested without a GPU; `imagekit smoke --engine URL` reaches one")


def _base(project: Project, engine: EngineAPI, r: DoctorResult) -> DoctorCheck:
    cfg = project.config
    if project.config_path is None or "base" not in cfg.model_fields_set:
        return DoctorCheck("base", "no [base] in imagekit.toml: specs build FROM their own bases")
    r.base_image = cfg.base.image
    info = engine.image(cfg.base.image)
    r.base_present = info is not None
    if info is None:
        return DoctorCheck("base", f"{cfg.base.image}: not in the engine", ok=False,
                           fix="imagekit base bootstrap (or `imagekit build` makes it first)")
    return DoctorCheck("base", f"{cfg.base.image}: in the engine ({info.id[:19]})")


def _wheelhouse(project: Project, f: EngineFacts, r: DoctorResult) -> DoctorCheck:
    house = project.wheelhouse
    if house is None:
        return DoctorCheck("wheelhouse", f"none: builds install from [pip] index_url "
                                         f"{project.config.pip.index_url}")
    r.wheelhouse = str(house)
    r.wheelhouse_bytes = disk_use(house) if house.is_dir() else 0
    r.free_bytes = free_space(house)
    held = _size(r.wheelhouse_bytes) if house.is_dir() else \
        "not made yet (`imagekit fetch NAME` or the first build fills it)"
    found = f"{house}: {held}; {_size(r.free_bytes)} free there"
    if not _local(f.where):
        return DoctorCheck("wheelhouse", found, ok=False,
                           fix="an engine on another machine cannot reach this wheelhouse: set "
                               "imagekit.toml [pip] index_url to a pip mirror")
    if r.free_bytes < LOW_DISK:
        return DoctorCheck("wheelhouse", found, ok=False,
                           fix="free disk space there (a GPU image's wheels take about 6 GB), or "
                               "point imagekit.toml [pip] wheelhouse at a bigger disk")
    return DoctorCheck("wheelhouse", found)


def _local(where: str) -> bool:
    """Whether the engine runs on this machine (a unix socket, or TCP to loopback)."""
    parts = urlsplit(where if "://" in where else f"unix://{where}")
    if parts.scheme in ("unix", "npipe", "http+unix"):
        return True
    return parts.scheme in ("tcp", "http", "https") and (parts.hostname or "") in LOCAL_HOSTS


def disk_use(folder: Path) -> int:
    """Bytes on disk under `folder`, each file once (the wheelhouse's private
    download folders hold hard links)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for top, _dirs, files in os.walk(folder):
        for name in files:
            try:
                st = os.lstat(os.path.join(top, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += getattr(st, "st_blocks", 0) * 512 or st.st_size
    return total


def free_space(path: Path) -> int:
    """Free bytes on the disk that holds `path` (or would: its nearest existing parent)."""
    for p in (path, *path.parents):
        try:
            return shutil.disk_usage(p).free
        except OSError:
            continue
    return 0


def _size(n: int) -> str:
    for unit, div in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= div:
            return f"{n / div:.1f} {unit}"
    return f"{n} B"
