"""Fetch stage: download a spec's Python packages with the host's pip into
one shared wheelhouse (for the image's Python and platform), and serve that
wheelhouse to builds, which then install with no network."""

from __future__ import annotations

import contextlib
import functools
import http.server
import socket
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from packaging.requirements import Requirement

from . import matrix
from .config import Project
from .errors import FetchError, Interrupted
from .events import Event, Info, Log, Result, Warn
from .spec import Plan


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
    py = plan.python
    major, minor = (int(x) for x in plan.variant.glibc.split("."))
    args = ["--only-binary=:all:", "--python-version", py, "--implementation", "cp",
            "--abi", "cp" + py.replace(".", "")]
    for m in range(minor, 4, -1):
        args += ["--platform", f"manylinux_{major}_{m}_x86_64"]
    args += ["--platform", "manylinux2014_x86_64", "--platform", "manylinux2010_x86_64",
             "--platform", "manylinux1_x86_64"]
    return args


def fetch(plan: Plan, project: Project) -> Iterator[Event]:
    wheelhouse = project.wheelhouse
    if wheelhouse is None:
        yield Info(plan.name, "no [pip] wheelhouse in imagekit.toml: builds install from "
                              "the index directly, nothing to fetch")
        return
    wheelhouse.mkdir(parents=True, exist_ok=True)
    reqs, remote = [], []
    for r in requirements(plan):
        (remote if Requirement(r).url else reqs).append(r)
    for r in remote:
        yield Warn(plan.name, f"{r!r} is installed from its URL at build time; "
                              "it needs the network then")
    if not reqs:
        yield Result(plan.name, "fetch", {"downloaded": 0, "wheelhouse": str(wheelhouse)})
        return
    before = {p.name for p in wheelhouse.glob("*")}
    base = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check",
            "--progress-bar", "off", *platform_args(plan), "-d", str(wheelhouse)]
    offline = base + ["--no-index", "--find-links", str(wheelhouse), *reqs]
    if subprocess.run(offline, capture_output=True, text=True).returncode == 0:
        yield Info(plan.name, f"all {len(reqs)} requirements already in {wheelhouse}")
        yield Result(plan.name, "fetch", {"downloaded": 0, "wheelhouse": str(wheelhouse)})
        return
    online = base + ["--find-links", str(wheelhouse)]
    if project.config.pip.index_url:
        online += ["--index-url", project.config.pip.index_url]
    if plan.variant.pip_index:
        if _reachable(plan.variant.pip_index):
            online += ["--extra-index-url", plan.variant.pip_index]
        else:
            yield Warn(plan.name, f"{plan.variant.pip_index} does not answer; looking for "
                                  f"{plan.framework}'s {plan.device.upper()} build on the "
                                  "index and find-links only")
    online += reqs
    yield Info(plan.name, f"downloading {len(reqs)} requirements for Python {plan.python} "
                          f"into {wheelhouse}")
    tail: list[str] = []
    proc = subprocess.Popen(online, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in proc.stdout:
            line = line.rstrip()
            if line and not line.startswith("WARNING: Location"):
                tail = (tail + [line])[-10:]
                yield Log(plan.name, line)
        code = proc.wait()
    except KeyboardInterrupt:
        proc.kill()
        proc.wait()
        raise Interrupted(f"{plan.name}: fetch interrupted") from None
    if code != 0:
        err = next((t for t in reversed(tail) if t.startswith("ERROR")), tail[-1] if tail else "")
        raise FetchError(f"{plan.name}: pip could not download the requirements: {err}",
                         details=[f"| {t}" for t in tail])
    new = sorted({p.name for p in wheelhouse.glob("*")} - before)
    size = sum((wheelhouse / n).stat().st_size for n in new)
    yield Result(plan.name, "fetch", {"downloaded": len(new), "bytes": size,
                                      "wheelhouse": str(wheelhouse)})


def _reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether anything answers at the URL's host and port (no request made)."""
    parts = urllib.parse.urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
        return True
    except OSError:
        return False


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:  # no access log on the terminal
        pass


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
