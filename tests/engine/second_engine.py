"""A second, fully separate Docker engine on this machine, for the tests of
`smoke --engine` and of an engine that goes away in the middle of a command.

It is its own `dockerd` with its own data root, exec root, pid file, bridge
and containerd namespaces, listening on a free TCP port on 127.0.0.1. It never
touches the first engine: no `--bridge=none` (a daemon started with it deletes
the host's docker0), no iptables rules. `stop` and `start` keep the data root,
so images survive a restart, as they do for a real engine."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
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


def _free_subnet() -> str:
    """A /24 under 172.31.0.0/16 no interface of this machine uses (as BRIDGE/24)."""
    used = _used_networks()
    for third in range(251, 100, -1):
        net = ipaddress.ip_network(f"172.31.{third}.0/24")
        if not any(net.overlaps(u) for u in used):
            return f"172.31.{third}.1/24"
    raise RuntimeError("no free 172.31.x.0/24 subnet for the second engine's bridge")


class SecondEngine:
    """`dockerd` at tcp://127.0.0.1:PORT with everything of its own under `root`."""

    def __init__(self, root: Path, port: int | None = None):
        self.root = root
        self.data_root = root / "data"
        self.exec_root = root / "exec"        # short: containerd's socket paths live here
        self.pidfile = self.exec_root / "docker.pid"
        self.log = root / "dockerd.log"
        self.port = port or free_port()
        tag = uuid.uuid4().hex[:6]
        self.bridge = f"ikt{tag}"
        self.namespace = f"ikt{tag}"
        self.address = _free_subnet()
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def api(self, timeout: int = 60) -> docker.APIClient:
        return docker.APIClient(base_url=self.url, version="auto", timeout=timeout)

    def answers(self) -> bool:
        try:
            return requests.get(f"http://127.0.0.1:{self.port}/_ping", timeout=2).ok
        except requests.RequestException:
            return False

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
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                ["dockerd", "--data-root", str(self.data_root), "--exec-root", str(self.exec_root),
                 "--pidfile", str(self.pidfile), "-H", self.url, "-b", self.bridge,
                 "--iptables=false", "--ip-masq=false",
                 "--containerd-namespace", self.namespace,
                 "--containerd-plugins-namespace", f"{self.namespace}-plugins"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.answers():
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
        subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        mounts = Path("/proc/mounts").read_text().splitlines()
        inside = [m.split()[1] for m in mounts if m.split()[1].startswith(str(self.root) + "/")]
        for point in sorted(inside, key=len, reverse=True):
            subprocess.run(["umount", "-l", point], capture_output=True)
        shutil.rmtree(self.root, ignore_errors=True)

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
