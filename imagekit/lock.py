"""Lock stage: images/NAME/requirements.lock, every Python package an
image's build installs, transitively, pinned to one version with the sha256
of its wheel, for the image's Python and platform.

`imagekit lock NAME` resolves what the image installs (the matrix's framework
pins, JupyterLab's packages, the spec's own `pip:` list, its parents' too) the
way a build would, from the wheelhouse (or [pip] index_url), and writes the
lock. The file is a pip/uv requirements file (`name==version --hash=…`), with
a header that records what it was made from (the specs' requirements, the
matrix's pins and target, imagekit.toml's index) and the SOURCE_DATE_EPOCH of
its builds, and, under each package, which install steps need it.

A build of an image with a lock installs exactly it: each install step pins
its requirements to the locked versions and gives the installer the step's
share of the lock as constraints, hashes and all (uv's --require-hashes: a
wheel whose hash differs, or a package the lock lacks, fails the step naming
it). A lock that no longer matches its spec, the matrix or imagekit.toml is
refused (exit 18) by the build and by `imagekit lock --check`, naming what
changed. The lock's digest goes into the image's labels (io.imagekit.lock)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from email.parser import HeaderParser
from pathlib import Path

from packaging.markers import InvalidMarker, UndefinedComparison, UndefinedEnvironmentName
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from . import fetch, matrix
from .archive import write_atomically
from .config import Project
from .context import display_path
from .errors import LockError
from .events import Event, Info, LockResult
from .spec import Plan

LOCK_FILE = "requirements.lock"
FORMAT = 1
DEFAULT_EPOCH = 315532800      # 1980-01-01 UTC: the earliest time a zip file can hold
MAX_LOCK_BYTES = 4 << 20       # a lock larger than this is refused unread
PARENT = "parent"              # the step of a package a catalog parent's image brings
SEED = ("pip", "setuptools")   # what a venv brings itself (the base's python3-venv); a
                               # locked image's first install step replaces them with the lock's

_HEADER_RE = re.compile(r"^#\s*([a-z-]+):\s*(.*)$")
_ENTRY_RE = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9.+!_-]+)$")
_HASH_RE = re.compile(r"^--hash=(sha256:[0-9a-f]{64})$")


@dataclass(frozen=True)
class Locked:
    """One package of a lock."""

    name: str                      # as the wheel spells it
    version: str
    hashes: tuple[str, ...]        # "sha256:<hex>"
    steps: tuple[str, ...] = ()    # the install steps that need it
    file: str = ""                 # the wheel it was hashed from

    @property
    def key(self) -> str:
        return canonicalize_name(self.name)

    def line(self) -> str:
        """The requirements-file entry: pinned, with its hashes."""
        return " ".join([f"{self.name}=={self.version}", *(f"--hash={h}" for h in self.hashes)])


@dataclass(frozen=True)
class Lock:
    path: Path
    image: str
    target: str
    epoch: int
    inputs: dict
    packages: tuple[Locked, ...]
    digest: str                    # "sha256:<hex>" of the file's bytes

    def get(self, name: str) -> Locked | None:
        key = canonicalize_name(name)
        return next((p for p in self.packages if p.key == key), None)

    def step(self, step: str) -> list[Locked]:
        return [p for p in self.packages if step in p.steps]

    def pin(self, requirements: list[str], step: str, marker_env: dict) -> list[str]:
        """REQUIREMENTS (one install step's) pinned to the locked versions,
        extras and markers kept; those whose marker excludes the image's
        Python and platform left out. Raises LockError naming a requirement
        the lock lacks."""
        out = []
        for text in requirements:
            req = Requirement(text)
            if req.marker is not None and not _marker_holds(req.marker, marker_env, ""):
                continue
            found = self.get(req.name)
            if found is None:
                raise LockError(f"{display_path(self.path)} has no {req.name} (the {step} step "
                                f"installs {text!r}): run `imagekit lock {self.image}`")
            extras = f"[{','.join(sorted(req.extras))}]" if req.extras else ""
            out.append(f"{req.name}{extras}=={found.version}")
        return out


# -- where a lock is, what it was made from --------------------------------------

def step_requirements(plan: Plan) -> dict[str, list[str]]:
    """What each install step of a locked build asks for: plan.install_steps(),
    and, in an image that makes its own venv, the venv's own packages (SEED),
    so that everything `pip list` shows in the image is in the lock."""
    steps = plan.install_steps()
    if plan.parent is None and "framework" in steps:
        steps["framework"] = [*steps["framework"], *SEED]
    return steps


def wanted(plan: Plan, project: Project, locked: Lock | None) -> fetch.Wanted | None:
    """What fetch must have for a locked build: every locked package at its
    version (and the installer); None without a lock (fetch's own resolve)."""
    return None if locked is None else _wanted(plan, project, locked, list(locked.packages))


def step_wants(plan: Plan, project: Project, locked: Lock | None) -> dict | None:
    """fetch.step_wants for a locked build: each install step's share of the
    lock, every package pinned; None without a lock."""
    if locked is None:
        return None
    return {step: _wanted(plan, project, locked, locked.step(step))
            for step in fetch.step_wants(plan, project)}


def _wanted(plan: Plan, project: Project, locked: Lock, packages: list) -> fetch.Wanted:
    reqs = [f"{p.name}=={p.version}" for p in packages]
    installer = matrix.load().get("installer")
    if installer:
        reqs.append(installer)
    fix = (f"{display_path(locked.path)} pins it; put that wheel in the wheelhouse, or run "
           f"`imagekit lock {plan.name}` to lock what can be had")
    return replace(fetch.wanted(plan, project), requirements=tuple(reqs), fixes={}, fix=fix)


def lock_path(plan: Plan) -> Path:
    return plan.spec.path.parent / LOCK_FILE


def source_date_epoch(plan: Plan) -> int:
    """The SOURCE_DATE_EPOCH of this image's builds: its lock's, else 1980-01-01."""
    try:
        found = read(plan)
    except LockError:
        found = None
    return found.epoch if found is not None else DEFAULT_EPOCH


def inputs(plan: Plan, project: Project) -> dict[str, dict]:
    """What a lock of this image is made from, by the file a user would edit:
    each spec of the chain (its pip list, framework, device, Python,
    JupyterLab, parent), the matrix (the framework's pins, JupyterLab's, the
    target platform) and imagekit.toml's package index."""
    out: dict[str, dict] = {}
    for p in reversed(plan.chain()):
        m = p.spec.model
        out[_in_project(p.spec.path, project)] = {
            "framework": f"{p.framework} {p.version}", "device": p.device, "python": p.python,
            "jupyter": bool(m.jupyter.enabled), "pip": list(m.pip),
            "parent": p.parent.name if p.parent else None}
    v = plan.variant
    out["matrix"] = {"framework pins": list(v.pip), "framework index": v.pip_index,
                     "target": f"cp{plan.python.replace('.', '')} manylinux x86_64 glibc {v.glibc}"}
    if any(p.spec.model.jupyter.enabled for p in plan.chain()):
        out["matrix"]["jupyter pins"] = matrix.jupyter_pip()
    pip = project.config.pip
    where = _in_project(project.config_path, project) if project.config_path else "imagekit.toml"
    out[where] = {"[pip] index_url": str(pip.index_url) if pip.index_url else None}
    return out


def _in_project(path: Path, project: Project) -> str:
    """PATH relative to the project (what a lock records: the same from any folder)."""
    try:
        return path.resolve().relative_to(project.root.resolve()).as_posix()
    except ValueError:
        return str(path)


def changes(lock: Lock, plan: Plan, project: Project) -> list[str]:
    """What changed since LOCK was written, one phrase per file and field
    ("images/x/image.yaml: pip: added 'pandas==2.2.3'"); empty when nothing."""
    now = inputs(plan, project)
    said = []
    for where in dict.fromkeys([*lock.inputs, *now]):
        old, new = lock.inputs.get(where), now.get(where)
        if old == new:
            continue
        if old is None or new is None:
            said.append(f"{where}: {'new' if old is None else 'no longer'} part of the image")
            continue
        for key in dict.fromkeys([*old, *new]):
            a, b = old.get(key), new.get(key)
            if a != b:
                said.append(f"{where}: {key}: {_difference(a, b)}")
    return said


def _difference(a, b) -> str:
    if isinstance(a, list) and isinstance(b, list):
        added = [x for x in b if x not in a]
        gone = [x for x in a if x not in b]
        parts = ([f"added {', '.join(map(repr, added))}"] if added else []) + \
            ([f"removed {', '.join(map(repr, gone))}"] if gone else [])
        return "; ".join(parts) or "reordered"
    return f"{a!r} -> {b!r}"


def check(plan: Plan, project: Project) -> Lock | None:
    """The image's lock when it matches its inputs; None when it has none.
    Raises LockError naming what changed."""
    found = read(plan)
    if found is None:
        return None
    said = changes(found, plan, project)
    if said:
        more = f" (and {len(said) - 1} more)" if len(said) > 1 else ""
        raise LockError(f"{display_path(found.path)} is out of date: {said[0]}{more}; run "
                        f"`imagekit lock {plan.name}`", details=said[1:])
    return found


# -- reading a lock ----------------------------------------------------------------

def read(plan: Plan) -> Lock | None:
    """The image's lock, None when it has none. Raises LockError (file and
    line) for one imagekit did not write or that was edited wrongly."""
    path = lock_path(plan)
    try:
        if path.stat().st_size > MAX_LOCK_BYTES:
            raise LockError(f"{display_path(path)}: larger than {MAX_LOCK_BYTES >> 20} MiB")
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise LockError(f"{display_path(path)}: cannot read it ({e.strerror or e})") from None
    return parse(path, data, plan.name)


def parse(path: Path, data: bytes, image: str) -> Lock:
    where = display_path(path)
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise LockError(f"{where}: not UTF-8 text") from None
    header: dict[str, str] = {}
    packages: list[dict] = []
    pending = ""
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if pending:
            line = f"{pending} {line}"
            pending = ""
        if line.endswith("\\"):
            pending = line[:-1].strip()
            continue
        if not line:
            continue
        if line.startswith("#"):
            m = _HEADER_RE.match(line)
            if m and not packages:
                header[m[1]] = m[2]
            elif m and m[1] in ("steps", "file"):
                packages[-1][m[1]] = m[2].split() if m[1] == "steps" else m[2]
            continue
        words = line.split()
        entry = _ENTRY_RE.match(words[0])
        hashes = [_HASH_RE.match(w) for w in words[1:]]
        if entry is None or not hashes or not all(hashes):
            raise LockError(f"{where}:{number}: not a pinned, hashed requirement "
                            f"(name==version --hash=sha256:…); run `imagekit lock {image}`")
        packages.append({"name": entry[1], "version": entry[2],
                         "hashes": tuple(h[1] for h in hashes), "line": number})
    if header.get("format") != str(FORMAT):
        raise LockError(f"{where}: not a requirements.lock imagekit {FORMAT} wrote (no "
                        f"'# format: {FORMAT}' line); run `imagekit lock {image}`")
    try:
        epoch = int(header.get("source-date-epoch", ""))
        found_inputs = json.loads(header.get("inputs", ""))
        if not isinstance(found_inputs, dict) or epoch < 0:
            raise ValueError
    except ValueError:
        raise LockError(f"{where}: its 'source-date-epoch' or 'inputs' line is damaged; run "
                        f"`imagekit lock {image}`") from None
    seen: set[str] = set()
    out = []
    for p in packages:
        key = canonicalize_name(p["name"])
        if key in seen:
            raise LockError(f"{where}:{p['line']}: {p['name']} is locked twice")
        seen.add(key)
        out.append(Locked(p["name"], p["version"], p["hashes"], tuple(p.get("steps", ())),
                          p.get("file", "")))
    return Lock(path, image, header.get("target", ""), epoch, found_inputs, tuple(out),
                "sha256:" + hashlib.sha256(data).hexdigest())


# -- making a lock -----------------------------------------------------------------

def marker_env(plan: Plan) -> dict[str, str]:
    """The environment markers of the image's Python and platform."""
    return {"python_version": plan.python, "python_full_version": f"{plan.python}.0",
            "implementation_name": "cpython", "implementation_version": f"{plan.python}.0",
            "platform_python_implementation": "CPython", "platform_system": "Linux",
            "platform_machine": "x86_64", "sys_platform": "linux", "os_name": "posix",
            "platform_release": "", "platform_version": ""}


def _marker_holds(marker, env: dict, extra: str) -> bool:
    try:
        return marker.evaluate({**env, "extra": extra})
    except (InvalidMarker, UndefinedComparison, UndefinedEnvironmentName):
        return True       # include what cannot be judged: an extra constraint costs nothing


def _requires(wheel: Path) -> list[Requirement]:
    """Requires-Dist of a wheel, from its METADATA."""
    try:
        with zipfile.ZipFile(wheel) as z:
            meta = next((n for n in z.namelist()
                         if n.count("/") == 1 and n.endswith(".dist-info/METADATA")), None)
            if meta is None:
                return []
            text = z.read(meta).decode("utf-8", "replace")
    except (OSError, zipfile.BadZipFile) as e:
        raise LockError(f"cannot read {wheel.name} ({e})") from None
    out = []
    for value in HeaderParser().parsestr(text).get_all("Requires-Dist") or []:
        with contextlib.suppress(InvalidRequirement):
            out.append(Requirement(value))
    return out


def closure(top: list[str], wheels: dict[str, Path], env: dict) -> set[str]:
    """The canonical names of TOP's requirements and all they need,
    transitively, among WHEELS (canonical name -> wheel), markers and extras
    judged for ENV."""
    needed: set[str] = set()
    seen: set[tuple[str, str]] = set()
    todo = [Requirement(t) for t in top]
    todo = [r for r in todo if r.marker is None or _marker_holds(r.marker, env, "")]
    while todo:
        req = todo.pop()
        key = canonicalize_name(req.name)
        if key not in wheels:
            continue
        needed.add(key)
        for want in ("", *sorted(req.extras)):
            if (key, want) in seen:
                continue
            seen.add((key, want))
            for dep in _requires(wheels[key]):     # `extra == "x"` holds only for want "x"
                if dep.marker is None or _marker_holds(dep.marker, env, want):
                    todo.append(dep)
    return needed


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def _resolved(plan: Plan, project: Project, folder: Path) -> Iterator[Event]:
    """Resolve the image's requirements into FOLDER (the wheelhouse, or a
    scratch one for [pip] index_url): yields the fetch's events, returns the
    wheel files the resolution used."""
    w = fetch.wanted(plan, project)
    if plan.parent is None:
        w = replace(w, requirements=(*w.requirements, *SEED))
    for ev in fetch.ensure_wheels(w, folder):
        if not isinstance(ev, fetch.FetchResult):
            yield ev
    stamp = json.loads(fetch.stamp_path(folder, w.key()).read_text())
    return [folder / f for f in stamp["files"]]


def make(plan: Plan, project: Project, *, epoch: int | None = None) -> Iterator[Event]:
    """Resolve and write the image's lock. Yields events; the last is a LockResult."""
    name = plan.name
    path = lock_path(plan)
    for r in fetch.requirements(plan):
        if fetch.is_url(r):
            raise LockError(f"{name}: {r!r} is installed from its URL; a lock pins packages "
                            f"of the wheelhouse or index only: give it as name==version")
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        folder = project.wheelhouse
        if folder is None:
            folder = Path(tempfile.mkdtemp(prefix="imagekit-lock-"))
            stack.callback(shutil.rmtree, folder, True)
        files = yield from _resolved(plan, project, folder)
        installer = matrix.load().get("installer")
        wheels: dict[str, Path] = {}
        versions: dict[str, tuple[str, str]] = {}
        for f in files:
            try:
                dist, version, _, _ = parse_wheel_filename(f.name)
            except InvalidWheelFilename:
                raise LockError(f"{name}: the resolution used {f.name}, not a wheel") from None
            key = canonicalize_name(dist)
            if installer and key == canonicalize_name(Requirement(installer).name):
                continue                       # the installer: unpacked in /tmp, not installed
            wheels[key] = f
            versions[key] = (f.name.split("-")[0].replace("_", "-"), str(version))
        env = marker_env(plan)
        steps: dict[str, set[str]] = {}
        for step, top in step_requirements(plan).items():
            steps[step] = closure([r for r in top if not fetch.is_url(r)], wheels, env)
        if plan.parent is not None:   # what the parent image installed: this build does not
            steps[PARENT] = {k for k in wheels if not any(k in v for v in steps.values())}
        packages = tuple(
            Locked(versions[k][0], versions[k][1], (_sha256(wheels[k]),),
                   tuple(s for s in steps if k in steps[s]), wheels[k].name)
            for k in sorted(wheels))
    unused = [p.name for p in packages if not p.steps]
    if unused:                # resolved, yet no step needs it: the closure missed a requirement
        raise LockError(f"{name}: {', '.join(unused)} resolved but no install step needs it "
                        f"(a requirement imagekit cannot read)")
    old = None
    with contextlib.suppress(LockError):
        old = read(plan)
    if epoch is None:    # kept from the lock it replaces: a new epoch would rebuild every layer
        epoch = old.epoch if old is not None else _now_epoch()
    text = lock_text(plan, project, packages, epoch)
    changed = old is None or path.read_bytes() != text.encode()
    if changed:
        try:
            write_atomically(path, text)
        except OSError as e:
            raise LockError(f"{display_path(path)}: cannot write it ({e.strerror or e})") \
                from None
    new = {p.key: p.version for p in packages}
    before = {p.key: p.version for p in old.packages} if old else {}
    yield LockResult(name, path=display_path(path), packages=len(packages), replaced=old is not None,
                     steps={s: len(v) for s, v in steps.items()},
                     added=sorted(k for k in new if k not in before),
                     removed=sorted(k for k in before if k not in new),
                     changed=sorted(k for k in new if k in before and new[k] != before[k]),
                     written=changed, epoch=epoch,
                     digest="sha256:" + hashlib.sha256(text.encode()).hexdigest(),
                     seconds=round(time.monotonic() - started, 2))


def _now_epoch() -> int:
    """SOURCE_DATE_EPOCH of the environment (a reproducible lock), else now."""
    with contextlib.suppress(ValueError):
        return int(os.environ.get("SOURCE_DATE_EPOCH", ""))
    return int(time.time())


def lock_text(plan: Plan, project: Project, packages: tuple[Locked, ...], epoch: int) -> str:
    target = f"Python {plan.python} on manylinux x86_64 (glibc {plan.variant.glibc})"
    lines = [
        f"# {LOCK_FILE} of {plan.name}: every Python package its build installs, pinned,",
        f"# with the sha256 of its wheel, for {target}.",
        f"# Written by `imagekit lock {plan.name}`; `imagekit build {plan.name}` installs exactly "
        "this,",
        "# and both refuse it once the spec, the matrix or imagekit.toml no longer match its "
        "inputs.",
        ("# The venv's own " + " and ".join(SEED) + " are pinned too: the first install step "
         "replaces them." if plan.parent is None else
         f"# Built on {plan.parent.name}: its venv's own packages are its own lock's."),
        f"# format: {FORMAT}",
        f"# target: {target}",
        f"# source-date-epoch: {epoch}",
        f"# inputs: {json.dumps(inputs(plan, project), sort_keys=True, separators=(',', ':'))}",
        "",
    ]
    for p in packages:
        lines.append(f"{p.name}=={p.version} \\")
        lines += [f"    --hash={h}" + (" \\" if i < len(p.hashes) - 1 else "")
                  for i, h in enumerate(p.hashes)]
        lines.append(f"    # steps: {' '.join(p.steps)}")
        lines.append(f"    # file: {p.file}")
    return "\n".join(lines) + "\n"


def check_stage(plan: Plan, project: Project) -> Iterator[Event]:
    """`imagekit lock --check`: raises LockError when the image has no lock or
    it is out of date; yields an Info line when it matches."""
    found = check(plan, project)
    if found is None:
        raise LockError(f"{plan.name}: no {display_path(lock_path(plan))}; run "
                        f"`imagekit lock {plan.name}`")
    yield Info(plan.name, f"{display_path(found.path)} matches its spec, the matrix and "
                          f"imagekit.toml ({len(found.packages)} packages, {found.digest[:19]})")
