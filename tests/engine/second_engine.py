"""A second, fully separate Docker engine on this machine, for the tests of
`smoke --engine`, of an engine that goes away in the middle of a command, and
of the other engines users run (tests/engine/compat.py).

It is its own `dockerd` with its own data root, exec root, pid file, bridge
and containerd namespaces, listening on a free TCP port on 127.0.0.1 (or, with
`unix=True`, on a socket in its exec root). It never touches the first engine:
no `--bridge=none` (a daemon started with it deletes the host's docker0), no
iptables rules. `stop` and `start` keep the data root, so images survive a
restart, as they do for a real engine.

Which dockerd: the one on PATH, or another binary set (`EngineBinaries`), e.g.
Debian 12's Engine 20.10 extracted from its `docker.io` package into a cache
folder (`debian_engine`); `containerd_store=True` starts it with the containerd
image store (`{"features": {"containerd-snapshotter": true}}` in a config file
of its own)."""

from __future__ import annotations

import contextlib
import http.client
import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import docker
import requests


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _used_networks() -> list[ipaddress.IPv4Network]:
    out = subprocess.run(["ip", "-4", "-o", "addr"], capture_output=True, text=True).stdout
    nets = []
    for line in out.splitlines():
        parts = line.split()
        if "inet" in parts:
            nets.append(ipaddress.ip_interface(parts[parts.index("inet") + 1]).network)
    return nets


_TAKEN: set[str] = set()    # subnets given to engines of this process (bridges made at start)


def _free_subnet() -> str:
    """A /24 under 172.31.0.0/16 no interface of this machine uses (as BRIDGE/24),
    nor another SecondEngine of this process whose bridge is not made yet."""
    used = _used_networks()
    for third in range(251, 100, -1):
        net = ipaddress.ip_network(f"172.31.{third}.0/24")
        if f"172.31.{third}.1/24" in _TAKEN or any(net.overlaps(u) for u in used):
            continue
        _TAKEN.add(f"172.31.{third}.1/24")
        return f"172.31.{third}.1/24"
    raise RuntimeError("no free 172.31.x.0/24 subnet for the second engine's bridge")


# -- which dockerd -------------------------------------------------------------------

CACHE = Path(os.environ.get("IMAGEKIT_TEST_ENGINES", "/var/cache/imagekit-tests/engines"))
# Debian's docker.io per Engine major version: the suite that ships it.
SUITES = {"20.10": "bookworm", "26": "trixie"}
DEBIAN_MIRROR = "http://deb.debian.org/debian"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"


class EngineUnavailable(RuntimeError):
    """This machine cannot have that engine's binaries (no apt, no mirror, not root)."""


@dataclass
class EngineBinaries:
    """A dockerd and what it runs: `path` folders go first on its PATH (dockerd
    finds containerd, containerd-shim-runc-v2, runc, docker-init and docker-proxy
    there; what a folder lacks comes from the system's PATH)."""

    version: str                     # dockerd --version: "20.10.24+dfsg1"
    path: list[Path] = field(default_factory=list)
    origin: str = "the system's dockerd"

    @property
    def dockerd(self) -> str:
        found = shutil.which("dockerd", path=self.env()["PATH"])
        if found is None:
            raise EngineUnavailable(f"no dockerd in {self.origin}")
        return found

    def env(self) -> dict[str, str]:
        system = os.environ.get("PATH") or "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        return {**os.environ, "PATH": os.pathsep.join([*map(str, self.path), system])}

    @property
    def major(self) -> str:
        return _major(self.version)


def _major(version: str) -> str:
    parts = version.split(".")
    return ".".join(parts[:2]) if parts[0] in ("17", "18", "19", "20") else parts[0]


def dockerd_version(dockerd: str, env: dict | None = None) -> str:
    """`dockerd --version` -> "26.1.5+dfsg1" ("" when it does not run)."""
    try:
        out = subprocess.run([dockerd, "--version"], capture_output=True, text=True, env=env,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    m = re.search(r"version ([0-9][^\s,]*)", out)
    return m.group(1) if m else ""


def system_engine() -> EngineBinaries | None:
    dockerd = shutil.which("dockerd")
    version = dockerd_version(dockerd) if dockerd else ""
    return EngineBinaries(version) if version else None


def engine_binaries(major: str, cache: Path = CACHE) -> EngineBinaries:
    """Engine `major` ("20.10", "26"): the system's dockerd when it is that one,
    else Debian's docker.io of the suite that ships it (SUITES), from the cache.
    Raises EngineUnavailable when it cannot be had."""
    mine = system_engine()
    if mine is not None and mine.major == major:
        return mine
    if major not in SUITES:
        raise EngineUnavailable(f"no Debian suite is known to ship Engine {major}")
    return debian_engine(SUITES[major], major, cache)


def debian_engine(suite: str, major: str, cache: Path = CACHE) -> EngineBinaries:
    """Debian `suite`'s docker.io (Engine `major`), `dpkg -x`'d into
    cache/docker-MAJOR/root; the .deb is fetched with `apt-get download` into
    cache/docker-MAJOR/ when it is not there. containerd, its shim and runc are
    the system's (the package holds dockerd, docker-proxy, the docker CLI and a
    docker-init link to the tini package's tini-static)."""
    folder = cache / f"docker-{major}"
    root = folder / "root"
    if not (root / "usr/sbin/dockerd").is_file():
        if shutil.which("dpkg") is None:
            raise EngineUnavailable(f"Engine {major} comes from Debian's docker.io package: "
                                    "this is not a Debian machine (no dpkg)")
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise EngineUnavailable(f"cannot make the engine cache {folder}: {e}") from None
        debs = sorted(folder.glob(f"docker.io_{major}.*.deb"))
        if not debs:
            _apt_download(f"docker.io/{suite}", suite, folder)
            debs = sorted(folder.glob(f"docker.io_{major}.*.deb"))
            if not debs:
                raise EngineUnavailable(f"apt-get download docker.io/{suite} gave no docker.io "
                                        f"{major}.x package in {folder}")
        unpack = Path(tempfile.mkdtemp(prefix=".unpack-", dir=folder))
        try:
            subprocess.run(["dpkg", "-x", str(debs[-1]), str(unpack)], check=True,
                           capture_output=True, timeout=300)
            shutil.rmtree(root, ignore_errors=True)
            unpack.rename(root)             # whole or not at all (another run may look)
        except (OSError, subprocess.SubprocessError) as e:
            raise EngineUnavailable(f"dpkg -x {debs[-1].name}: {e}") from None
        finally:
            shutil.rmtree(unpack, ignore_errors=True)
    init = root / "usr/bin/docker-init"
    if init.is_symlink() and not init.exists():
        # -> tini-static, which is the tini package's: the system's, or PATH finds another
        tini = shutil.which("tini-static") or shutil.which("docker-init")
        init.unlink()
        if tini:
            init.symlink_to(tini)
    binaries = EngineBinaries("", [root / "usr/sbin", root / "usr/bin"],
                              f"Debian {suite}'s docker.io under {root}")
    binaries.version = dockerd_version(str(root / "usr/sbin/dockerd"), binaries.env())
    if _major(binaries.version or "0") != major:
        raise EngineUnavailable(f"{root}/usr/sbin/dockerd is {binaries.version or 'not runnable'}, "
                                f"not Engine {major}")
    return binaries


def _apt_download(package: str, suite: str, folder: Path) -> None:
    """`apt-get download PACKAGE` into folder; where the machine's apt sources
    lack `suite` (Debian 13 has no bookworm source), through a private apt state
    under folder/apt holding only that suite: the machine's apt config is not
    touched."""
    if shutil.which("apt-get") is None:
        raise EngineUnavailable(f"{package} needs apt-get (this is not a Debian machine)")
    first = subprocess.run(["apt-get", "download", "-q", package], cwd=folder,
                           capture_output=True, text=True, timeout=600)
    if first.returncode == 0:
        return
    state = folder / "apt"
    (state / "lists" / "partial").mkdir(parents=True, exist_ok=True)
    (state / "cache" / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    sources = state / f"{suite}.sources"
    signed = f"Signed-By: {KEYRING}\n" if Path(KEYRING).is_file() else ""
    sources.write_text(f"Types: deb\nURIs: {DEBIAN_MIRROR}\nSuites: {suite}\n"
                       f"Components: main\n{signed}")
    opts = ["-o", "Dir::Etc::SourceList=/dev/null", "-o", f"Dir::Etc::SourceParts={state}",
            "-o", f"Dir::State::Lists={state / 'lists'}", "-o", f"Dir::Cache={state / 'cache'}",
            "-o", "Dir::Etc::Preferences=/dev/null", "-o", f"Dir::Etc::PreferencesParts={state}",
            "-o", "APT::Get::List-Cleanup=0"]
    steps = (["apt-get", *opts, "update", "-q"], ["apt-get", *opts, "download", "-q", package])
    for cmd in steps:
        r = subprocess.run(cmd, cwd=folder, capture_output=True, text=True, timeout=600)
        if r.returncode != 0:
            why = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["(no output)"]
            raise EngineUnavailable(f"apt-get download {package} failed: {first.stderr.strip()[-300:]}"
                                    f"; with a private {suite} source: {why[0]}")


class SecondEngine:
    """`dockerd` at tcp://127.0.0.1:PORT (or unix://ROOT/exec/docker.sock) with
    everything of its own under `root`."""

    def __init__(self, root: Path, port: int | None = None, *,
                 binaries: EngineBinaries | None = None, containerd_store: bool = False,
                 unix: bool = False, label: str = "the second engine"):
        self.root = root
        self.label = label
        self.data_root = root / "data"
        self.exec_root = root / "exec"        # short: containerd's socket paths live here
        self.pidfile = self.exec_root / "docker.pid"
        self.log = root / "dockerd.log"
        self.binaries = binaries
        self.containerd_store = containerd_store
        # its own config file (which also keeps /etc/docker/daemon.json out), except for
        # the plain TCP engine the older tests start, whose command line stays as it was
        own = containerd_store or unix or binaries is not None
        self.config_file = root / "daemon.json" if own else None
        self.socket = self.exec_root / "docker.sock" if unix else None
        self.port = None if unix else (port or free_port())
        tag = uuid.uuid4().hex[:6]
        self.bridge = f"ikt{tag}"
        self.namespace = f"ikt{tag}"
        self.address = _free_subnet()
        self.proc: subprocess.Popen | None = None
        self.start_seconds: float | None = None   # how long the last start took

    @property
    def url(self) -> str:
        if self.socket is not None:
            return f"unix://{self.socket}"
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def containerd_socket(self) -> Path:
        """The containerd this dockerd started (for `ctr -a … -n NAMESPACE`)."""
        return self.exec_root / "containerd" / "containerd.sock"

    def api(self, timeout: int = 60) -> docker.APIClient:
        return docker.APIClient(base_url=self.url, version="auto", timeout=timeout)

    def answers(self) -> bool:
        if self.socket is not None:
            return _unix_ping(self.socket)
        try:
            return requests.get(f"http://127.0.0.1:{self.port}/_ping", timeout=2).ok
        except requests.RequestException:
            return False

    def info(self) -> dict:
        return self.api().info()

    def describe(self) -> str:
        """'Engine 26.1.5+dfsg1, overlayfs (io.containerd.snapshotter.v1)'."""
        info = self.info()
        status = dict(info.get("DriverStatus") or [])
        kind = f" ({status['driver-type']})" if "driver-type" in status else ""
        return f"Engine {info.get('ServerVersion')}, {info.get('Driver')}{kind}"

    # -- lifecycle -----------------------------------------------------------
    def start(self, timeout: float = 90) -> SecondEngine:
        if self.proc is not None and self.proc.poll() is None:
            raise RuntimeError("the second engine is already running")
        self.data_root.mkdir(parents=True, exist_ok=True)
        self.exec_root.mkdir(parents=True, exist_ok=True)
        if subprocess.run(["ip", "link", "show", self.bridge], capture_output=True).returncode:
            for cmd in (["ip", "link", "add", "name", self.bridge, "type", "bridge"],
                        ["ip", "addr", "add", self.address, "dev", self.bridge],
                        ["ip", "link", "set", self.bridge, "up"]):
                subprocess.run(cmd, check=True, capture_output=True)
            self._nat("-I")
        dockerd, env = "dockerd", None
        if self.binaries is not None:
            dockerd, env = self.binaries.dockerd, self.binaries.env()
        extra: list[str] = []
        if self.config_file is not None:
            config = {"features": {"containerd-snapshotter": True}} if self.containerd_store else {}
            self.config_file.write_text(json.dumps(config))
            extra = ["--config-file", str(self.config_file)]
        started = time.monotonic()
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [dockerd, "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
                 "--pidfile", str(self.pidfile), "-H", self.url, "-b", self.bridge,
                 "--iptables=false", "--ip-masq=false",
                 "--containerd-namespace", self.namespace,
                 "--containerd-plugins-namespace", f"{self.namespace}-plugins", *extra],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.answers():
                self.start_seconds = round(time.monotonic() - started, 1)
                return self
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        tail = self.log.read_text(errors="replace")[-3000:]
        self.stop(signal.SIGKILL)
        raise RuntimeError(f"the second dockerd did not answer on {self.url}:\n{tail}")

    def ensure_running(self) -> SecondEngine:
        """Start it again when a test stopped it (or it died)."""
        if self.answers():
            return self
        self.stop(signal.SIGKILL)
        return self.start()

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90) -> None:
        """Stop dockerd (SIGTERM: as `systemctl stop docker` does; SIGKILL: a crash)
        and wait until it and the containerd it started are gone."""
        pid = self.proc.pid if self.proc is not None else self._pid_from_file()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        if self.proc is not None:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        else:
            _wait_gone(pid, timeout)
        self.proc = None
        self._stop_containerd(timeout)

    def close(self) -> None:
        """Stop it for good: dockerd, its bridge, and everything under root."""
        self.stop()
        self._nat("-D")
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        _TAKEN.discard(self.address)
        mounts = Path("/proc/mounts").read_text().splitlines()
        inside = [m.split()[1] for m in mounts if m.split()[1].startswith(str(self.root) + "/")]
        for point in sorted(inside, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

    def _nat(self, op: str) -> None:
        """Outbound traffic from its bridge, masqueraded, as the first engine's
        docker0 has it (this dockerd runs with --iptables=false, so that two
        engines never rewrite each other's chains): BuildKit's RUN steps on
        the default network (apt-get from the Debian mirror) then reach the
        mirror. `op`: "-I" adds the rules, "-D" removes them."""
        net = str(ipaddress.ip_interface(self.address).network)
        for rule in (["-t", "nat", op, "POSTROUTING", "-s", net, "!", "-o", self.bridge,
                      "-j", "MASQUERADE"],
                     [op, "FORWARD", "-i", self.bridge, "!", "-o", self.bridge, "-j", "ACCEPT"],
                     [op, "FORWARD", "-o", self.bridge, "-m", "conntrack", "--ctstate",
                      "RELATED,ESTABLISHED", "-j", "ACCEPT"]):
            with contextlib.suppress(OSError):
                subprocess.run(["iptables", "-w", "10", *rule], capture_output=True, timeout=30)

    # -- what is on it ------------------------------------------------------
    def containers(self) -> list[dict]:
        return self.api().containers(all=True)

    def volumes(self) -> list[dict]:
        return self.api().volumes().get("Volumes") or []

    def load_from_first(self, ref: str, timeout: float = 300) -> None:
        """`docker save REF | docker -H URL load`: an image of the first engine, here."""
        save = subprocess.Popen(["docker", "save", ref], stdout=subprocess.PIPE)
        load = subprocess.run(["docker", "-H", self.url, "load", "-q"], stdin=save.stdout,
                              capture_output=True, text=True, timeout=timeout)
        save.stdout.close()
        if save.wait(timeout=timeout) != 0 or load.returncode != 0:
            raise RuntimeError(f"could not copy {ref} to {self.url}: {load.stderr.strip()}")

    def import_from_first(self, ref: str, changes: list[str], timeout: float = 300) -> None:
        """REF's file system from the first engine, gzip'd, imported here as REF
        with `changes`: what `imagekit base bootstrap` does, so that the
        containerd image store keeps the layer compressed, as it does a base
        made here or pulled from a registry."""
        cid = subprocess.run(["docker", "create", ref, "true"], capture_output=True, text=True,
                             check=True).stdout.strip()
        try:
            export = subprocess.Popen(["docker", "export", cid], stdout=subprocess.PIPE)
            gz = subprocess.Popen(["gzip", "-1", "-n"], stdin=export.stdout, stdout=subprocess.PIPE)
            export.stdout.close()
            args = [x for c in changes for x in ("--change", c)]
            load = subprocess.run(["docker", "-H", self.url, "import", *args, "-", ref],
                                  stdin=gz.stdout, capture_output=True, text=True, timeout=timeout)
            gz.stdout.close()
            if export.wait(timeout=timeout) != 0 or gz.wait(timeout=timeout) != 0 or \
                    load.returncode != 0:
                raise RuntimeError(f"could not import {ref} into {self.url}: {load.stderr.strip()}")
        finally:
            subprocess.run(["docker", "rm", "-f", cid], capture_output=True)

    # -- internals ------------------------------------------------------------
    def _pid_from_file(self) -> int | None:
        try:
            return int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None

    def _stop_containerd(self, timeout: float) -> None:
        """A dockerd killed with SIGKILL leaves its containerd to die on its own
        (parent-death signal) or not; a restart needs it gone."""
        pidfile = self.exec_root / "containerd" / "containerd.pid"
        try:
            pid = int(pidfile.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return
        if cmdline and str(self.exec_root).encode() not in cmdline:
            return                              # a reused pid, not our containerd
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        _wait_gone(pid, timeout)


def _unix_ping(path: Path) -> bool:
    """GET /_ping on a unix socket: 200 or not."""
    conn = http.client.HTTPConnection("localhost", timeout=2)
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(2)
        sock.connect(str(path))
        conn.sock = sock
        conn.request("GET", "/_ping")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _wait_gone(pid: int, timeout: float) -> None:
    """Until `pid` is gone (dockerd, like kill -0, counts a zombie as alive)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
