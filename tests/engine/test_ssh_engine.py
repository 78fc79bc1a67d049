"""ssh:// engines, through the system's ssh client, against a real OpenSSH
server: `sshd` (Debian's openssh-server; scripts/engine.sh installs it) started
by the test on a free port of 127.0.0.1 with a host key, client keys and an
authorized_keys of its own in a temporary folder. The one authorized key is
forced to run `docker system dial-stdio` against the second engine
(second_engine fixture), so that `ssh://USER@127.0.0.1:PORT` reaches it as a
remote engine reached over ssh. The client side is IMAGEKIT_SSH_OPTIONS="-F
CONFIG": that config names the key and a known_hosts file holding the test's
host key (OpenSSH reads ~/.ssh from the passwd home, not $HOME, so nothing of
the machine's own ssh setup is used or changed).

After every run no ssh of imagekit's is left, and at the end sshd is stopped
with no session of it left."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import socket
import subprocess
import time
from pathlib import Path

import docker
import pytest
from helpers import Run, imagekit, leftovers, measured, one_error
from second_engine import free_port

SSHD = Path("/usr/sbin/sshd")
PRIVSEP = Path("/run/sshd")         # sshd's privilege separation folder (made by its service)


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name,
                    "-f", str(path)], check=True, capture_output=True)
    return path.with_suffix(".pub").read_text().strip()


def _children(pid: int) -> list[int]:
    """Processes whose parent is PID."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return found


def _with_in_cmdline(text: str) -> list[str]:
    """Command lines of running processes that contain TEXT."""
    found = []
    for f in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            line = f.read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if text in line:
                found.append(line.strip())
    return found


class Sshd:
    """An OpenSSH server on 127.0.0.1:PORT whose one authorized key opens the
    Docker engine at ENGINE_URL (`docker system dial-stdio`)."""

    def __init__(self, root: Path, engine_url: str):
        self.root = root
        self.port = free_port()
        self.user = pwd.getpwuid(os.getuid()).pw_name
        host_key = root / "host_key"
        host_pub = _keygen(host_key)
        self.key = root / "client_key"
        self.stranger = root / "stranger_key"            # a key the server does not know
        client_pub = _keygen(self.key)
        _keygen(self.stranger)
        (root / "authorized_keys").write_text(
            f'command="exec env DOCKER_HOST={engine_url} docker system dial-stdio",no-pty,'
            f"no-port-forwarding,no-agent-forwarding,no-X11-forwarding {client_pub}\n")
        self.config = root / "sshd_config"
        self.config.write_text(
            f"ListenAddress 127.0.0.1\nPort {self.port}\nHostKey {host_key}\n"
            f"PidFile {root / 'sshd.pid'}\nAuthorizedKeysFile {root / 'authorized_keys'}\n"
            "StrictModes no\nPermitRootLogin prohibit-password\nUsePAM no\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\n")
        self.known_hosts = root / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {' '.join(host_pub.split()[:2])}\n")
        self.log = root / "sshd.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"ssh://{self.user}@127.0.0.1:{self.port}"

    def client(self, key: Path | None = None, known_hosts: Path | None = None) -> dict:
        """IMAGEKIT_SSH_OPTIONS for a client with KEY (default: the authorized one)."""
        key = key or self.key
        config = self.root / f"ssh_config.{key.name}.{(known_hosts or self.known_hosts).name}"
        config.write_text(
            f"Host *\n  IdentityFile {key}\n  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {known_hosts or self.known_hosts}\n"
            "  GlobalKnownHostsFile /dev/null\n  StrictHostKeyChecking yes\n")
        return {"IMAGEKIT_SSH_OPTIONS": f"-F {config}"}

    def start(self) -> Sshd:
        PRIVSEP.mkdir(mode=0o755, exist_ok=True)
        check = subprocess.run([str(SSHD), "-t", "-f", str(self.config)], capture_output=True,
                               text=True)
        assert check.returncode == 0, check.stderr
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(self.config)],
                                         stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port),
                                                                        timeout=1):
                return self
            assert self.proc.poll() is None, self.log.read_text()
            time.sleep(0.1)
        raise AssertionError(f"sshd did not listen on {self.port}: {self.log.read_text()}")

    def sessions(self) -> list[int]:
        return _children(self.proc.pid) if self.proc is not None else []

    def accepted(self) -> int:
        return self.log.read_text(errors="replace").count("Accepted publickey")

    def stop(self) -> list[int]:
        """Stop sshd; the sessions it still had (killed too), for the caller to complain."""
        if self.proc is None:
            return []
        deadline = time.monotonic() + 10
        while self.sessions() and time.monotonic() < deadline:
            time.sleep(0.1)
        left = self.sessions()
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
        return left


@pytest.fixture(scope="module")
def sshd(second_engine, tmp_path_factory):
    if not SSHD.is_file():
        pytest.fail("the ssh:// engine tests need OpenSSH's server: run scripts/engine.sh "
                    "(make engine), which installs openssh-server")
    server = Sshd(tmp_path_factory.mktemp("sshd"), second_engine.url).start()
    try:
        yield server
    finally:
        left = server.stop()
    assert left == [], f"sshd sessions were still open at the end: {left}"
    assert _with_in_cmdline(str(server.config)) == []


def _no_ssh_left(server: Sshd) -> None:
    """Soon after imagekit's end, no ssh client of its (their command lines name
    the test's config) and no session on the server. (The imagekit command
    ends with os._exit: its end of each ssh's socket closes with it, and ssh
    ends when the engine's side has closed too.)"""
    def left() -> list:
        return _with_in_cmdline(str(server.root / "ssh_config")) + server.sessions()
    deadline = time.monotonic() + 10
    while left() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert left() == []


class SshSmoke:
    def __init__(self, run, seconds, held_before, accepted, left_here, containers_there,
                 volumes_there, image_there):
        self.run, self.seconds, self.held_before, self.accepted = run, seconds, held_before, \
            accepted
        self.left_here, self.containers_there = left_here, containers_there
        self.volumes_there, self.image_there = volumes_there, image_there


@pytest.fixture(scope="module")
def ssh_tf(tf_image, second_engine, sshd, docker_api, tmp_path_factory) -> SshSmoke:
    """`imagekit smoke --engine ssh://…` of tf_image, the second engine holding
    no copy of it first (a copy `smoke --engine tcp://…` shipped there is
    removed, and put back by this very run; one that was not there is removed
    again at the end)."""
    second_engine.ensure_running()
    api2 = second_engine.api()

    def image_id_there() -> str | None:
        try:
            return api2.inspect_image(tf_image.ref)["Id"]
        except docker.errors.NotFound:
            return None

    def remove_there() -> None:
        for ref in (tf_image.ref, tf_image.image_id):
            with contextlib.suppress(docker.errors.NotFound):
                api2.remove_image(ref, force=True)

    held_before = image_id_there() is not None
    remove_there()
    started = time.monotonic()
    accepted = sshd.accepted()
    code, out, err, _, peak_kb = measured(
        ["-m", "imagekit", "-C", str(tf_image.project.root), "--json", "smoke", tf_image.name,
         "--engine", sshd.url], tmp_path_factory.mktemp("ssh-smoke"), env=sshd.client(),
        timeout=900)
    run = Run(code, out, err)
    outcome = SshSmoke(run, round(time.monotonic() - started, 1), held_before,
                       sshd.accepted() - accepted, leftovers(docker_api, tf_image.ref),
                       api2.containers(all=True), api2.volumes().get("Volumes") or [],
                       image_id_there())
    outcome.peak_mb = peak_kb / 1024
    yield outcome
    if not held_before:
        remove_there()


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_smoke_through_ssh_ships_the_image_and_trains_there(ssh_tf, sshd, tf_image):
    r = ssh_tf.run
    assert r.code == 0, r.output[-3000:]
    said = [e.get("message", "") for e in _events(r.stdout) if e.get("event") == "info"]
    assert any(m.startswith(f"streaming {tf_image.ref}") and sshd.url in m for m in said), said
    assert any(m.startswith(f"shipped {tf_image.ref} to {sshd.url}") and "streamed" in m
               for m in said), said
    [result] = [e for e in _events(r.stdout)
                if e.get("event") == "result" and e.get("stage") == "smoke"]
    data = result["data"]
    assert data["passed"] is True and data["error"] is None
    assert data["image_id"] == tf_image.image_id
    runs = data["training"]["runs"]
    assert len(runs) == 2 and all(run["exit"] == 0 for run in runs), runs
    assert ssh_tf.image_there == tf_image.image_id
    assert ssh_tf.left_here == []
    assert ssh_tf.containers_there == []
    assert ssh_tf.volumes_there == []
    _no_ssh_left(sshd)
    assert ssh_tf.peak_mb < 300, ssh_tf.peak_mb       # a 2.3 GB image streamed, not held
    print(f"ssh smoke (ship + train) took {ssh_tf.seconds}s over {ssh_tf.accepted} ssh "
          f"connections, peak {ssh_tf.peak_mb:.0f} MB")


def test_a_key_the_server_does_not_take(sshd, docker_api):
    started = time.monotonic()
    r = imagekit("--json", "smoke", "ocr-cpu", "--engine", sshd.url,
                 env=sshd.client(key=sshd.stranger), timeout=120)
    seconds = time.monotonic() - started
    message = one_error(r, 5)["message"]
    assert message == (f"no Docker engine answers at {sshd.url} (ssh to "
                       f"{sshd.user}@127.0.0.1:{sshd.port} failed: {sshd.user}@127.0.0.1: "
                       "Permission denied (publickey).)")
    assert seconds < 20, seconds
    _no_ssh_left(sshd)


def test_a_host_key_nobody_vouched_for(sshd, docker_api, tmp_path):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    r = imagekit("--json", "doctor", env={"DOCKER_HOST": sshd.url,
                                          **sshd.client(known_hosts=empty)}, timeout=120)
    message = one_error(r, 5)["message"]
    assert message == (f"no Docker engine answers at {sshd.url} (ssh to "
                       f"{sshd.user}@127.0.0.1:{sshd.port} failed: Host key verification "
                       "failed.)")
    _no_ssh_left(sshd)


def test_connections_are_ssh_processes_stopped_and_reaped_on_close(sshd, second_engine,
                                                                    monkeypatch):
    from imagekit.engine import Engine
    monkeypatch.setenv("IMAGEKIT_SSH_OPTIONS", sshd.client()["IMAGEKIT_SSH_OPTIONS"])
    second_engine.ensure_running()
    engine = Engine.connect(timeout=60, url=sshd.url)
    try:
        facts = engine.facts()
        assert facts.server_version == second_engine.info()["ServerVersion"]
        assert facts.where == sshd.url
        mine = _children(os.getpid())
        ssh_pids = [p for p in mine if str(sshd.root / "ssh_config")
                    in Path(f"/proc/{p}/cmdline").read_bytes().decode()]
        assert len(ssh_pids) == 1, ssh_pids      # connect, sweep, facts: one connection
        assert len(sshd.sessions()) == 1
    finally:
        engine.api.close()
    assert all(not Path(f"/proc/{p}").exists() for p in ssh_pids)   # stopped and reaped
    _no_ssh_left(sshd)
