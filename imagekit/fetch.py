"""Fetch stage: make sure the wheelhouse holds every Python package an image
installs (for the image's Python and platform), downloading with the host's
pip only what is missing, and serve the wheelhouse to builds, which then
install with no network.

The wheelhouse is shared (by default the user's cache, see config.py), so
several imagekit processes may use it at once. Readers never see a partial
file: pip downloads into a private folder inside the wheelhouse and each
finished file is renamed into place. Downloads take an exclusive lock
(flock on .imagekit/lock), so two processes never fetch the same files.
A requirement set that resolved once leaves a stamp (its digest, and the
files that satisfied it); a later check is then a few file lookups, with
no pip run and no network."""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import http.server
import importlib.metadata
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion, Version

from . import matrix
from .config import Project
from .context import display_path
from .errors import FetchError, Interrupted
from .events import Event, FetchResult, Info, Log, Progress, Warn
from .spec import Plan

META = ".imagekit"            # inside the wheelhouse: lock, stamps, private download folders
STAMP_FORMAT = 1
DEFAULT_INDEX = "https://pypi.org/simple"
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")

_NETWORK_RE = re.compile(r"NewConnectionError|NameResolutionError|ConnectTimeoutError|ProxyError|"
                         r"SSLError|ReadTimeoutError|Network is unreachable|"
                         r"Temporary failure in name resolution|Max retries exceeded")
_NO_VERSION_RE = re.compile(r"Could not find a version that satisfies the requirement (.+?)"
                            r"(?: \(from ([^()]*)\))? \(from versions: ([^()]*)\)")
_NAME_RE = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)")


def requirements(plan: Plan) -> list[str]:
    """Everything pip installs in this image and its parents, in order."""
    reqs: list[str] = list(plan.variant.pip)
    for p in plan.chain():
        if p.spec.model.jupyter.enabled:
            reqs += matrix.jupyter_pip()
        reqs += p.spec.model.pip
    seen, out = set(), []
    for r in reqs:
        if r not in seen:
            seen.add(r)
            out.append(r)
    return out


def platform_args(plan: Plan) -> list[str]:
    """pip's target options: binary wheels for the image's Python and every
    manylinux tag its base's glibc accepts (pip matches each tag exactly)."""
    py = plan.python
    major, minor = (int(x) for x in plan.variant.glibc.split("."))
    args = ["--only-binary=:all:", "--python-version", py, "--implementation", "cp",
            "--abi", "cp" + py.replace(".", "")]
    for m in range(minor, 4, -1):
        args += ["--platform", f"manylinux_{major}_{m}_x86_64"]
    args += ["--platform", "manylinux2014_x86_64", "--platform", "manylinux2010_x86_64",
             "--platform", "manylinux1_x86_64"]
    return args


@dataclass(frozen=True)
class Wanted:
    """A set of requirements for one Python and platform, and what to tell a
    user when one of them cannot be had."""

    image: str
    requirements: tuple[str, ...]
    target_args: tuple[str, ...]
    target: str                                  # "Python 3.11 on manylinux x86_64 (glibc 2.36)"
    index_url: str | None = None                 # [pip] index_url (else pip's own config)
    extra_index_url: str | None = None           # the framework's own index (PyTorch CPU)
    fixes: dict[str, str] = field(default_factory=dict)   # canonical name -> what to change
    fix: str = "fix the requirement"                       # for anything else

    def key(self) -> str:
        data = {"format": STAMP_FORMAT, "requirements": sorted(self.requirements),
                "target": list(self.target_args)}
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:32]

    def fix_for(self, requirement: str) -> str:
        name = _canonical(requirement)
        return self.fixes.get(name, self.fix)


def wanted(plan: Plan, project: Project) -> Wanted:
    reqs = [r for r in requirements(plan) if not is_url(r)]
    fixes: dict[str, str] = {}
    for r in plan.variant.pip:
        fixes[_canonical(r)] = (f"pick another framework.version in {_spec_file(plan)} "
                                "(`imagekit matrix` lists them)")
    for p in plan.chain():
        if p.spec.model.jupyter.enabled:
            for r in matrix.jupyter_pip():
                fixes.setdefault(_canonical(r), f"JupyterLab's packages come with jupyter: in "
                                                f"{_spec_file(p)}")
        for r in p.spec.model.pip:
            fixes[_canonical(r)] = f"fix the version in {_spec_file(p)}"
    installer = matrix.load().get("installer")    # what the builds install with (partials/install.j2)
    if installer and installer not in reqs:
        reqs.append(installer)
        fixes.setdefault(_canonical(installer), "the installer is pinned in imagekit's matrix.yaml")
    return Wanted(
        image=plan.name, requirements=tuple(reqs), target_args=tuple(platform_args(plan)),
        target=f"Python {plan.python} on manylinux x86_64 (glibc {plan.variant.glibc})",
        index_url=project.config.pip.index_url, extra_index_url=plan.variant.pip_index,
        fixes=fixes, fix=f"fix the requirements in {_spec_file(plan)}")


def ensure(plan: Plan, project: Project, w: Wanted | None = None) -> Iterator[Event]:
    """Make sure the project's wheelhouse can satisfy every requirement of
    this image (and its parents) for its Python and platform; download only
    what is missing. Quick and offline when nothing is: a stamp lookup, else
    an offline pip resolve. Yields Info/Warn/Log/Progress events and, last,
    a FetchResult. Raises FetchError (one line naming the package and what to
    do) when something cannot be had."""
    wheelhouse = project.wheelhouse
    if wheelhouse is None:
        yield Info(plan.name, "[pip] index_url in imagekit.toml: builds install from that "
                              "index, nothing to fetch")
        yield FetchResult(plan.name)
        return
    for r in requirements(plan):
        if is_url(r):
            yield Warn(plan.name, f"{r!r} is installed from its URL at build time; "
                                  "it needs the network then")
    yield from ensure_wheels(w or wanted(plan, project), wheelhouse)


# `imagekit fetch` is the same check made explicitly (to prepare an air-gapped machine).
fetch = ensure


def ensure_wheels(w: Wanted, wheelhouse: Path) -> Iterator[Event]:
    """`ensure` for an explicit requirement set."""
    started = time.monotonic()
    if not w.requirements:
        yield FetchResult(w.image, wheelhouse=str(wheelhouse))
        return
    key = w.key()
    if _stamped(wheelhouse, key):
        yield _have_all(w, wheelhouse, started, "")
        yield FetchResult(w.image, wheelhouse=str(wheelhouse))
        return
    meta = wheelhouse / META
    (meta / "ok").mkdir(parents=True, exist_ok=True)
    fd = os.open(meta / "lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield Info(w.image, f"waiting for another imagekit fetching into {wheelhouse}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        if _stamped(wheelhouse, key):                 # the other one fetched it
            yield _have_all(w, wheelhouse, started, "")
            yield FetchResult(w.image, wheelhouse=str(wheelhouse))
            return
        _remove_leftovers(meta)                       # from imagekit processes that were killed
        offline = _Pip(w, wheelhouse, offline=True)
        yield from offline.run()
        if offline.code == 0:
            _stamp(wheelhouse, key, w, offline.files)
            yield _have_all(w, wheelhouse, started, " (resolved offline)")
            yield FetchResult(w.image, downloaded=offline.new, bytes=offline.new_bytes,
                              wheelhouse=str(wheelhouse))
            return
        missing = offline.missing()
        index = w.index_url or os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX
        if not _reachable(index):
            what = f"{missing} is not in the wheelhouse" if missing else \
                "the wheelhouse cannot satisfy the requirements"
            raise FetchError(
                f"{w.image}: {what} and {_host(index)} is not "
                f"reachable: run `imagekit fetch {w.image}` on a machine with network and copy "
                f"the wheelhouse ({wheelhouse}) here, or set [pip] index_url to a mirror")
        extra = None
        if w.extra_index_url:
            if _reachable(w.extra_index_url):
                extra = w.extra_index_url
            else:
                yield Warn(w.image, f"{w.extra_index_url} does not answer; looking on "
                                    f"{_host(index)} and in find-links only")
        what = f"{missing} is not in the wheelhouse" if missing else "the wheelhouse lacks packages"
        yield Info(w.image, f"{what}: downloading what {w.target} needs from {_host(index)} "
                            f"into {wheelhouse}")
        online = _Pip(w, wheelhouse, offline=False, extra_index_url=extra)
        yield from online.run()
        if online.code != 0:
            raise online.error(wheelhouse)
        _stamp(wheelhouse, key, w, online.files)
        yield Info(w.image, f"{online.new} new files ({online.new_bytes / 1e6:.1f} MB) in "
                            f"{time.monotonic() - started:.1f} s")
        yield FetchResult(w.image, downloaded=offline.new + online.new,
                          bytes=offline.new_bytes + online.new_bytes, wheelhouse=str(wheelhouse))
    finally:
        os.close(fd)


class _Pip:
    """One `pip download` into a private folder inside the wheelhouse. The
    folder starts with hard links to the wheelhouse's files (so pip neither
    copies nor fetches them again); what pip adds is renamed into the
    wheelhouse, one finished file at a time, once pip has succeeded."""

    def __init__(self, w: Wanted, wheelhouse: Path, *, offline: bool,
                 extra_index_url: str | None = None):
        self.w, self.wheelhouse, self.offline = w, wheelhouse, offline
        self.extra_index_url = extra_index_url
        self.code = -1
        self.files: list[str] = []            # what satisfied the requirements
        self.new = 0
        self.new_bytes = 0
        self.errors: list[str] = []
        self.network: list[str] = []
        self.tail: list[str] = []

    def command(self, dest: Path) -> list[str]:
        progress = "raw" if not self.offline and _pip_has_raw_progress() else "off"
        cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
               "--progress-bar", progress, *self.w.target_args,
               "-d", str(dest), "--find-links", str(self.wheelhouse)]
        if self.offline:
            cmd.append("--no-index")
        else:
            if self.w.index_url:
                cmd += ["--index-url", self.w.index_url]
            if self.extra_index_url:
                cmd += ["--extra-index-url", self.extra_index_url]
        return [*cmd, *self.w.requirements]

    def run(self) -> Iterator[Event]:
        image = self.w.image
        dest = Path(tempfile.mkdtemp(prefix=f"tmp-{os.getpid()}-", dir=self.wheelhouse / META))
        proc = None
        try:
            for f in self.wheelhouse.iterdir():
                if f.is_file():
                    with contextlib.suppress(OSError):
                        os.link(f, dest / f.name)
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            proc = subprocess.Popen(self.command(dest), stdout=subprocess.PIPE,
                                    stderr=subprocess.STDOUT, text=True, env=env)
            files: set[str] = set()
            item = ""
            for line in proc.stdout:
                line = line.rstrip()
                if not line or line.startswith("WARNING: Location"):
                    continue
                if line.startswith("Progress ") and item:
                    parts = line.split()
                    if len(parts) == 4 and parts[1].isdigit() and parts[3].isdigit():
                        yield Progress(image, item, int(parts[1]), int(parts[3]), "downloading")
                    continue
                for prefix in ("Saved ", "File was already downloaded "):
                    if line.lstrip().startswith(prefix):
                        files.add(Path(line.lstrip().removeprefix(prefix)).name)
                if line.lstrip().startswith("Downloading "):
                    item = line.split()[1]
                if line.startswith("ERROR"):
                    self.errors.append(line)
                if _NETWORK_RE.search(line):
                    self.network.append(line)
                self.tail = (self.tail + [line])[-12:]
                if not self.offline:              # the offline pass is only a check
                    yield Log(image, line)
            self.code = proc.wait()
            if self.code == 0:
                self.files = sorted(files)
                self._publish(dest)
        except KeyboardInterrupt:
            raise Interrupted(f"{image}: fetch interrupted; the wheelhouse holds only "
                              "complete files") from None
        finally:
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
            shutil.rmtree(dest, ignore_errors=True)

    def _publish(self, dest: Path) -> None:
        for f in sorted(dest.iterdir()):
            target = self.wheelhouse / f.name
            if f.is_file() and not target.exists():
                size = f.stat().st_size
                os.replace(f, target)             # atomic: readers see all of it or nothing
                self.new += 1
                self.new_bytes += size

    def missing(self) -> str | None:
        """The requirement pip could not find (the first one)."""
        for line in self.errors:
            m = _NO_VERSION_RE.search(line)
            if m:
                return _strip_marker(m[1])
            if "No matching distribution found for " in line:
                return _strip_marker(line.split("No matching distribution found for ", 1)[1])
        return None

    def error(self, wheelhouse: Path) -> FetchError:
        w = self.w
        found = None
        for line in self.errors:
            found = _NO_VERSION_RE.search(line)
            if found:
                break
        req = self.missing()
        if self.network and req:
            host = re.search(r"host='([^']+)'", self.network[-1])
            where = host[1] if host else "the package index"
            return FetchError(
                f"{w.image}: {req} could not be downloaded: {where} is not reachable; run "
                f"`imagekit fetch {w.image}` on a machine with network and copy the wheelhouse "
                f"({wheelhouse}) here, or set [pip] index_url to a mirror",
                details=[f"| {self.network[-1]}"])
        if req:
            versions = [v.strip() for v in found[3].split(",")] if found else []
            versions = [v for v in versions if v and v != "none"]
            avail = f"; it has {', '.join(versions[-5:])}" if versions else ""
            parent = found[2] if found and found[2] else None
            top = parent.split("->")[-1].strip() if parent else req
            needed = f", needed by {top}" if parent else ""
            return FetchError(
                f"{w.image}: {req}{needed} has no wheel for {w.target} "
                f"(pip: No matching distribution{avail}); {w.fix_for(top)}")
        conflict = next((t for t in self.errors if "conflicting dependencies" in t
                         or "ResolutionImpossible" in t), None)
        if conflict:
            named = {canonicalize_name(t) for t in re.findall(r"[A-Za-z0-9][A-Za-z0-9._-]*", conflict)}
            culprit = next((r for r in reversed(w.requirements) if _canonical(r) in named),
                           w.requirements[-1])
            why = [t for t in self.tail if t.startswith("    The user requested")
                   or " depends on " in t]
            return FetchError(f"{w.image}: the requirements conflict (pip: "
                              f"{conflict.removeprefix('ERROR: ')}); {w.fix_for(culprit)}",
                              details=[f"| {t.strip()}" for t in why])
        last = self.errors[-1] if self.errors else (self.tail[-1] if self.tail else "no output")
        return FetchError(f"{w.image}: pip could not download the requirements: {last}",
                          details=[f"| {t}" for t in self.tail])


@functools.cache
def _pip_has_raw_progress() -> bool:
    """pip 24.1 and later print machine-readable download progress."""
    try:
        return Version(importlib.metadata.version("pip")) >= Version("24.1")
    except (importlib.metadata.PackageNotFoundError, InvalidVersion):
        return False


def _have_all(w: Wanted, wheelhouse: Path, started: float, how: str) -> Info:
    took = time.monotonic() - started
    took_text = f"{took * 1000:.0f} ms" if took < 1 else f"{took:.1f} s"
    return Info(w.image, f"wheelhouse has all {len(w.requirements)} requirements for {w.target}"
                         f"{how}, checked in {took_text} ({wheelhouse})")


def stamp_path(wheelhouse: Path, key: str) -> Path:
    """Where the record of a resolved requirement set (its key) is kept: the
    wheels it used, by name, version and file."""
    return wheelhouse / META / "ok" / f"{key}.json"


def _stamped(wheelhouse: Path, key: str) -> bool:
    """Whether this requirement set resolved from the wheelhouse before and
    every file it used is still there."""
    try:
        data = json.loads(stamp_path(wheelhouse, key).read_text())
    except (OSError, ValueError):
        return False
    files = data.get("files") if isinstance(data, dict) else None
    return bool(files) and all((wheelhouse / f).is_file() for f in files)


def _stamp(wheelhouse: Path, key: str, w: Wanted, files: list[str]) -> None:
    if not files:
        return
    path = stamp_path(wheelhouse, key)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    tmp.write_text(json.dumps({"requirements": list(w.requirements),
                               "target": list(w.target_args), "files": files}, indent=1))
    os.replace(tmp, path)


def _remove_leftovers(meta: Path) -> None:
    """Private download folders of processes that died (only the lock holder writes)."""
    for d in meta.glob("tmp-*"):
        shutil.rmtree(d, ignore_errors=True)


def _canonical(requirement: str) -> str:
    try:
        return canonicalize_name(Requirement(requirement).name)
    except InvalidRequirement:
        m = _NAME_RE.match(requirement)
        return canonicalize_name(m[1]) if m else requirement


def _strip_marker(req: str) -> str:
    return req.split(";", 1)[0].strip()


def is_url(requirement: str) -> bool:
    """Whether a requirement names a URL (`pkg @ https://…`): installed from
    there, never from the wheelhouse or an index."""
    try:
        return bool(Requirement(requirement).url)
    except InvalidRequirement:
        return False


def _spec_file(plan: Plan) -> str:
    return display_path(plan.spec.path)


def _host(url: str) -> str:
    return urllib.parse.urlsplit(url).hostname or url


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether anything answers at the URL's host and port (no request made).
    Behind a proxy, or for a local index, pip is left to find out itself."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or any(os.environ.get(v) for v in PROXY_VARS):
        return True
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def step_wants(plan: Plan, project: Project) -> dict[str, Wanted]:
    """What each install step of this image's Dockerfile installs (render.py's
    INSTALL_STEPS: the framework, JupyterLab, the spec's other packages), each
    with the installer: the requirement set whose wheels that step's build
    context holds. Only the steps this image's Dockerfile has (a locked
    image's: lock.step_wants)."""
    full = wanted(plan, project)
    installer = matrix.load().get("installer")
    out = {}
    for step, reqs in plan.install_steps().items():
        reqs = [r for r in reqs if not is_url(r)]
        if not reqs:
            continue
        if installer and installer not in reqs:
            reqs.append(installer)
        out[step] = replace(full, requirements=tuple(reqs))
    return out


def wheel_set(w: Wanted, wheelhouse: Path) -> Path:
    """The wheels a requirement set resolved to, alone in a folder of hard links
    into the wheelhouse (wheelhouse/.imagekit/sets/KEY, KEY the set's digest):
    what a BuildKit install step gets as its build context. The same set gives
    the same folder and the same files, so BuildKit's context cache keeps them
    between builds whatever the wheelhouse's path. Call after the set was
    resolved (ensure_wheels); raises FetchError when it was not."""
    try:
        data = json.loads(stamp_path(wheelhouse, w.key()).read_text())
        files = [str(f) for f in data["files"]]
    except (OSError, ValueError, KeyError, TypeError):
        raise FetchError(f"{w.image}: the wheelhouse ({wheelhouse}) has no resolved set for "
                         f"it; run `imagekit fetch {w.image}`") from None
    sets = wheelhouse / META / "sets"
    final = sets / w.key()
    if all((final / Path(f).name).is_file() for f in files):
        return final
    sets.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{w.key()}-", dir=sets))
    try:
        for f in files:
            src, dest = wheelhouse / f, tmp / Path(f).name
            try:
                os.link(src, dest)
            except OSError:           # another file system, or links not allowed: a copy
                try:
                    shutil.copy2(src, dest)
                except OSError as e:
                    raise FetchError(f"{w.image}: cannot put {f} in the build's wheel set "
                                     f"({e.strerror or e}) in {sets}") from None
        shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:               # another process made it at the same moment
            if not all((final / Path(f).name).is_file() for f in files):
                raise FetchError(f"{w.image}: cannot make the build's wheel set in "
                                 f"{sets}") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def wheels_context(step: str) -> str:
    """The named build context that holds install step STEP's wheels."""
    return f"wheels-{step}"


def wheel_contexts(plan: Plan, project: Project,
                   steps: dict[str, Wanted] | None = None) -> Iterator[Event]:
    """Each install step's wheel set (resolved offline from the wheelhouse the
    first time, a stamp lookup after), as BuildKit build contexts: yields
    warnings and progress, returns {context name: folder}."""
    out: dict[str, Path] = {}
    wheelhouse = project.wheelhouse
    if wheelhouse is None:
        return out
    for step, w in (steps if steps is not None else step_wants(plan, project)).items():
        for ev in ensure_wheels(w, wheelhouse):
            if not isinstance(ev, (Info, FetchResult)):
                yield ev
        out[wheels_context(step)] = wheel_set(w, wheelhouse)
    return out


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no access log on the terminal
        pass

    def handle(self) -> None:
        try:
            super().handle()
        except ConnectionError:    # the client hung up early (uv stops reading once it has a
            pass                   # wheel's metadata); no traceback on the user's terminal


_servers: dict[int, list] = {}  # port -> [server, users, wheelhouse]
_servers_lock = threading.Lock()


@contextlib.contextmanager
def serve(wheelhouse: Path, port: int) -> Iterator[str]:
    """Serve the wheelhouse read-only on 127.0.0.1:port for the builds' pip.
    Parallel builds in one process share one server."""
    wheelhouse.mkdir(parents=True, exist_ok=True)
    with _servers_lock:
        entry = _servers.get(port)
        if entry is None:
            handler = functools.partial(_QuietHandler, directory=str(wheelhouse))
            try:
                server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
            except OSError as e:
                raise FetchError(
                    f"cannot serve the wheelhouse on 127.0.0.1:{port} ({e.strerror}; is another "
                    "imagekit build running?); set another [pip] port in imagekit.toml") from None
            threading.Thread(target=server.serve_forever, daemon=True).start()
            entry = _servers[port] = [server, 0, wheelhouse]
        elif entry[2] != wheelhouse:
            raise FetchError(f"port {port} already serves the wheelhouse {entry[2]}")
        entry[1] += 1
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        with _servers_lock:
            entry[1] -= 1
            if entry[1] == 0:
                del _servers[port]
                entry[0].shutdown()
                entry[0].server_close()
