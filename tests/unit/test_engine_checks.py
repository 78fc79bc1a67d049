"""Engines checked before use (imagekit.engine.api `check`) and the ssh://
transport (imagekit.engine.ssh), against peers that are not what they claim.

Servers on 127.0.0.1, each in a thread of this process: one that takes the
connection and never answers, HTTP services that are not Docker (404 HTML, 200
JSON, a registry's 404 on /_ping, a /_ping that says OK over a /version that is
a web page, a 1 MB error page), a service that does not speak HTTP at all, one
that drips its answer a byte at a time, and a fake Docker engine (just enough
of the API for a connect: the local engine of the `smoke --engine` runs, so
that they need no real engine). The real command line runs in a subprocess;
every failure is exit 5, one JSON error line, no traceback, in bounded time.
The runs that wait out a timeout start together (`slow`), so they cost the
suite one timeout, not one each.

The ssh transport runs against the system's ssh (a port where nothing
listens, a port that never speaks) and, in this process, against a fake `ssh`
on PATH that speaks the fake engine's HTTP on its stdin/stdout (what
`docker system dial-stdio` does) or fails the way ssh does."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers import LAUNCHER, REPO, Run, one_error

from imagekit.engine import ssh
from imagekit.engine.api import CONNECT_TIMEOUT, Engine
from imagekit.errors import EngineUnavailable

BOUND_S = 20            # a failure to connect ends within this (CONNECT_TIMEOUT is 10 s)
FAST_S = 5              # ... and at once where the peer answers at all

HTML_404 = (b"<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n"
            b"<body><h1>Not Found</h1>\n<p>The requested URL was not found.</p></body></html>\n")
VERSION = {"Version": "26.1.5", "ApiVersion": "1.45", "MinAPIVersion": "1.24", "Os": "linux",
           "Arch": "amd64", "KernelVersion": "6.1.0"}
INFO = {"ServerVersion": "26.1.5", "OSType": "linux", "Architecture": "x86_64",
        "Driver": "overlay2", "DriverStatus": [], "Runtimes": {"runc": {}}}
# the fake engine's answers, by API path: it holds nothing
ENGINE_ANSWERS = {"version": VERSION, "info": INFO, "containers/json": [], "networks": [],
                  "volumes": {"Volumes": [], "Warnings": None}}


# -- peers ---------------------------------------------------------------------------

def _docker_answer(method: str, path: str) -> tuple[int, str, bytes]:
    """The fake engine: enough of the API for connect, sweep and facts."""
    path = path.split("?", 1)[0]
    bare = path.split("/", 2)[2] if path.startswith("/v1.") else path.lstrip("/")
    if bare == "_ping":
        return 200, "text/plain", b"OK"
    body = ENGINE_ANSWERS.get(bare)
    if body is None:
        return 404, "application/json", b'{"message":"page not found"}'
    return 200, "application/json", json.dumps(body).encode()


def _answer(mode: str, method: str, path: str) -> tuple[int, str, bytes]:
    if mode == "docker":
        return _docker_answer(method, path)
    if mode == "html404":
        return 404, "text/html", HTML_404
    if mode == "json200":
        return 200, "application/json", b'{"service": "inventory", "healthy": true}'
    if mode == "registry":      # docker-registry: its API under /v2/, 404 elsewhere
        if path.startswith("/v2/"):
            return 200, "application/json", b"{}"
        return 404, "text/plain; charset=utf-8", b"404 page not found\n"
    if mode == "ping-only":     # says OK to a ping; /version is a web page
        if path == "/_ping":
            return 200, "text/plain", b"OK"
        return 200, "text/html", b"<html><body>\n\n  Welcome   to nginx!\n</body></html>"
    if mode == "huge":          # a 1 MB error page of many lines
        return 500, "text/plain", b"overloaded, try later\n" * 48_000
    raise AssertionError(mode)


def _read_head(conn: socket.socket) -> bytes | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    return data


class Peer:
    """A TCP server on 127.0.0.1 that behaves as MODE says, until closed."""

    def __init__(self, mode: str):
        self.mode = mode
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.closed = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"tcp://127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            if self.mode == "silent":
                self.closed.wait()
                return
            if self.mode == "banner":
                conn.sendall(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u6\r\n")
                self.closed.wait()
                return
            while (head := _read_head(conn)) is not None:
                method, path = head.split(b" ", 2)[:2]
                if self.mode == "drip":     # an answer that never ends, each byte in time
                    conn.sendall(b"HTTP/1.1 200 OK\r\nX-Slow: ")
                    while not self.closed.wait(0.5):
                        conn.sendall(b"z")
                    return
                status, kind, body = _answer(self.mode, method.decode(), path.decode())
                conn.sendall(f"HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\n"
                             f"Content-Length: {len(body)}\r\n\r\n".encode() + body)

    def close(self) -> None:
        self.closed.set()
        self.sock.close()
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.close()


@pytest.fixture(scope="module")
def peers():
    made: dict[str, Peer] = {}

    def get(mode: str) -> Peer:
        if mode not in made:
            made[mode] = Peer(mode)
        return made[mode]

    yield get
    for peer in made.values():
        peer.close()


def _closed_port() -> int:
    """A port on 127.0.0.1 where nothing listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the command line, timed -----------------------------------------------------------

class Timed:
    """`imagekit ARGS` started now in a subprocess; `.result()` waits for it."""

    def __init__(self, *args: str, env: dict | None = None):
        import tempfile
        fd, self.usage = tempfile.mkstemp(prefix="imagekit-rusage-")
        os.close(fd)
        full = {**os.environ, **(env or {}), "RUSAGE_OUT": self.usage}
        full.pop("IMAGEKIT_DEBUG", None)
        self.started = time.monotonic()
        # through the launcher: the command's own peak memory comes back (wait4)
        self.proc = subprocess.Popen([sys.executable, "-c", LAUNCHER, "-m", "imagekit", *args],
                                     cwd=REPO, env=full, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.out: tuple[str, str] = ("", "")
        self.seconds = 0.0
        self._waiter = threading.Thread(target=self._wait, daemon=True)
        self._waiter.start()

    def _wait(self) -> None:
        self.out = self.proc.communicate(timeout=120)
        self.seconds = time.monotonic() - self.started

    def result(self) -> tuple[Run, float, float]:
        """(the run, its seconds, its peak resident memory in MB)."""
        self._waiter.join(130)
        try:
            with open(self.usage) as f:
                got = json.load(f)              # the launcher's report of the command
            code, peak_mb = got["code"], got["maxrss_kb"] / 1024
        except (OSError, ValueError, KeyError):
            code, peak_mb = self.proc.returncode, float("inf")
        finally:
            with contextlib.suppress(OSError):
                os.unlink(self.usage)
        return Run(code, *self.out), self.seconds, peak_mb


def smoke_on(url: str, local: Peer, **env: str) -> Timed:
    """`smoke ocr-cpu --engine URL`, this machine's engine being the fake one."""
    return Timed("--json", "smoke", "ocr-cpu", "--engine", url,
                 env={"DOCKER_HOST": local.url, **env})


MAX_RSS_MB = 200


def failed(run: Run, seconds: float, peak_mb: float, bound: float = BOUND_S) -> str:
    """Exit 5, one JSON error line, in time and bounded memory: its message."""
    message = one_error(run, 5)["message"]
    assert seconds < bound, f"{seconds:.1f}s: {message}"
    assert peak_mb < MAX_RSS_MB, f"peak {peak_mb:.0f} MB: {message}"
    assert len(message) < 900, message
    print(f"{seconds:.1f}s: {message}")
    return message


@pytest.fixture(scope="module")
def slow(peers):
    """Every run that waits out a timeout, started at once."""
    local = peers("docker")
    runs = {
        "tcp-silent": smoke_on(peers("silent").url, local),
        "docker-host-silent": Timed("--json", "doctor", env={"DOCKER_HOST": peers("silent").url}),
        "drip": smoke_on(peers("drip").url, local),
    }
    if shutil.which("ssh") is not None:
        runs["ssh-silent"] = smoke_on(f"ssh://root@127.0.0.1:{peers('silent').port}", local,
                                      IMAGEKIT_SSH_OPTIONS="-F /dev/null")
    return runs


# -- silent peers: bounded -----------------------------------------------------------------

def test_an_engine_url_that_takes_the_connection_and_never_answers(slow, peers):
    message = failed(*slow["tcp-silent"].result())
    assert message == (f"no Docker engine answers at {peers('silent').url} (it took the "
                       f"connection but gave no answer within {CONNECT_TIMEOUT} s); start one "
                       "with `make engine`, or point DOCKER_HOST at a running engine")


def test_docker_host_that_never_answers(slow, peers):
    message = failed(*slow["docker-host-silent"].result())
    assert message.startswith(f"no Docker engine answers at {peers('silent').url} (it took "
                              "the connection but gave no answer")


def test_an_answer_dripped_a_byte_at_a_time_is_cut_off(slow, peers):
    message = failed(*slow["drip"].result())
    assert message.startswith(f"no Docker engine answers at {peers('drip').url} (no complete "
                              f"answer within {CONNECT_TIMEOUT} s)")


@pytest.mark.skipif(shutil.which("ssh") is None, reason="no ssh client")
def test_ssh_to_a_port_that_never_speaks(slow, peers):
    message = failed(*slow["ssh-silent"].result())
    port = peers("silent").port
    assert message.startswith(f"no Docker engine answers at ssh://root@127.0.0.1:{port} (ssh to "
                              f"root@127.0.0.1:{port} failed: "), message
    assert "timed out" in message


@pytest.mark.skipif(shutil.which("ssh") is None, reason="no ssh client")
def test_ssh_to_a_port_where_nothing_listens(peers):
    port = _closed_port()
    message = failed(*smoke_on(f"ssh://root@127.0.0.1:{port}", peers("docker"),
                               IMAGEKIT_SSH_OPTIONS="-F /dev/null").result(), FAST_S)
    assert message == (f"no Docker engine answers at ssh://root@127.0.0.1:{port} (ssh to "
                       f"root@127.0.0.1:{port} failed: ssh: connect to host 127.0.0.1 port "
                       f"{port}: Connection refused)")


# -- servers that are not Docker -------------------------------------------------------------

NOT_DOCKER = {
    "html404": "GET /_ping answered HTTP 404: <!DOCTYPE html> <html><head><title>404 Not Found"
               "</title></head> <body><h1>Not Found</h1> <p>The requested URL was not found.</p>"
               "</body></html>",
    "json200": 'GET /_ping answered HTTP 200: {"service": "inventory", "healthy": true}',
    "registry": "GET /_ping answered HTTP 404: 404 page not found",
    "ping-only": "GET /version gave no JSON object with ApiVersion and Version: <html><body> "
                 "Welcome to nginx! </body></html>",
    "banner": "it does not speak HTTP; it sent: SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u6",
}


@pytest.mark.parametrize("mode", sorted(NOT_DOCKER))
def test_a_server_that_is_not_docker(peers, mode):
    peer = peers(mode)
    message = failed(*smoke_on(peer.url, peers("docker")).result(), FAST_S)
    assert message == f"the server at {peer.url} does not answer as a Docker engine " \
                      f"({NOT_DOCKER[mode]})"


def test_its_words_are_cut_to_one_short_line(peers):
    peer = peers("huge")
    message = failed(*smoke_on(peer.url, peers("docker")).result(), FAST_S)
    assert message.startswith(f"the server at {peer.url} does not answer as a Docker engine "
                              "(GET /_ping answered HTTP 500: overloaded, try later overloaded")
    assert "more characters)" in message


def test_an_http_url_and_docker_host_say_the_same(peers):
    peer = peers("registry")
    http_url = f"http://127.0.0.1:{peer.port}"
    message = failed(*smoke_on(http_url, peers("docker")).result(), FAST_S)
    assert message == f"the server at {http_url} does not answer as a Docker engine " \
                      f"({NOT_DOCKER['registry']})"
    message = failed(*Timed("--json", "doctor", env={"DOCKER_HOST": peer.url}).result(), FAST_S)
    assert message == f"the server at {peer.url} does not answer as a Docker engine " \
                      f"({NOT_DOCKER['registry']})"


def test_the_fake_engine_is_taken_for_one(peers):
    """The peers above fail for what they are: the fake engine passes the check."""
    engine = Engine.connect(timeout=30, url=peers("docker").url)
    try:
        assert engine.api.api_version == "1.45"
        assert engine.facts().server_version == "26.1.5"
    finally:
        engine.api.close()


# -- ssh:// through a fake ssh -----------------------------------------------------------

FAKE_SSH = r'''
import json, os, sys
ANSWERS = json.loads(sys.argv.pop(1))      # bare API path -> JSON body
with open(os.environ["FAKE_SSH_LOG"], "a") as log:
    log.write(json.dumps({"pid": os.getpid(), "argv": sys.argv[1:]}) + "\n")
mode = os.environ.get("FAKE_SSH_MODE", "dial")
if mode == "refused":
    sys.stderr.write("Warning: Permanently added '[gpu-box]:2222' (ED25519) to the list of "
                     "known hosts.\r\nalice@gpu-box: Permission denied (publickey).\r\n")
    sys.exit(255)
if mode == "quiet":
    sys.exit(1)
data = b""
while True:                       # dial-stdio: HTTP on stdin/stdout
    chunk = os.read(0, 65536)
    if not chunk:
        break
    data += chunk
    while b"\r\n\r\n" in data:
        head, data = data.split(b"\r\n\r\n", 1)
        path = head.split(b" ", 2)[1].decode().split("?", 1)[0]
        bare = path.split("/", 2)[2] if path.startswith("/v1.") else path.lstrip("/")
        status, body = (200, b"OK") if bare == "_ping" else \
            (200, json.dumps(ANSWERS[bare]).encode()) if bare in ANSWERS else \
            (404, b'{"message": "page not found"}')
        os.write(1, f"HTTP/1.1 {status} X\r\nContent-Length: {len(body)}\r\n\r\n".encode()
                 + body)
'''


@pytest.fixture
def fake_ssh(tmp_path, monkeypatch):
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    exe = bin_ / "ssh"
    # a Python script, handed the fake engine's answers as its first argument
    exe.write_text(f"#!/bin/sh\nexec {sys.executable} -c {shlex.quote(FAKE_SSH)} "
                   f"{shlex.quote(json.dumps(ENGINE_ANSWERS))} \"$@\"\n")
    exe.chmod(0o755)
    log = tmp_path / "ssh.log"
    monkeypatch.setenv("PATH", f"{bin_}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SSH_LOG", str(log))
    monkeypatch.delenv("IMAGEKIT_SSH_OPTIONS", raising=False)

    def started() -> list[dict]:
        return [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
    return started


def test_ssh_engine_speaks_http_through_one_ssh_process_and_reaps_it(fake_ssh, monkeypatch):
    monkeypatch.setenv("IMAGEKIT_SSH_OPTIONS", "-F '/tmp/my ssh config' -o IdentitiesOnly=yes")
    engine = Engine.connect(timeout=30, url="ssh://alice@gpu-box:2222")
    try:
        assert engine.where == "ssh://alice@gpu-box:2222"
        assert engine.api.api_version == "1.45"
        facts = engine.facts()
        assert (facts.server_version, facts.where) == ("26.1.5", "ssh://alice@gpu-box:2222")
        [one] = fake_ssh()          # check, sweep and facts: one connection, one ssh
        assert one["argv"] == [
            "-T", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={ssh.CONNECT_TIMEOUT}",
            "-o", f"ServerAliveInterval={ssh.ALIVE_INTERVAL}",
            "-o", f"ServerAliveCountMax={ssh.ALIVE_COUNT}", "-l", "alice", "-p", "2222",
            "-F", "/tmp/my ssh config", "-o", "IdentitiesOnly=yes",
            "--", "gpu-box", "docker", "system", "dial-stdio"]
        assert Path(f"/proc/{one['pid']}").exists()
    finally:
        engine.api.close()
    # stopped and reaped (an unreaped child of this process would still be in /proc)
    assert not Path(f"/proc/{one['pid']}").exists()


def test_ssh_reason_is_its_last_word(fake_ssh, monkeypatch):
    monkeypatch.setenv("FAKE_SSH_MODE", "refused")
    with pytest.raises(EngineUnavailable) as e:
        Engine.connect(url="ssh://alice@gpu-box:2222")
    assert str(e.value) == ("no Docker engine answers at ssh://alice@gpu-box:2222 (ssh to "
                            "alice@gpu-box:2222 failed: alice@gpu-box: Permission denied "
                            "(publickey).)")
    assert all(not Path(f"/proc/{x['pid']}").exists() for x in fake_ssh())


def test_ssh_that_ends_without_a_word(fake_ssh, monkeypatch):
    monkeypatch.setenv("FAKE_SSH_MODE", "quiet")
    with pytest.raises(EngineUnavailable) as e:
        Engine.connect(url="ssh://gpu-box")
    assert str(e.value) == ("no Docker engine answers at ssh://gpu-box (ssh to gpu-box ended "
                            "(exit status 1) before the engine answered)")


def test_no_ssh_client(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EngineUnavailable) as e:
        Engine.connect(url="ssh://gpu-box")
    assert str(e.value) == ("no Docker engine answers at ssh://gpu-box (ssh to gpu-box failed: "
                            "no ssh client on PATH)")


@pytest.mark.parametrize("url, why", [
    ("ssh://gpu-box/var/run/docker.sock", "an ssh:// engine is ssh://[user@]host[:port], "
                                          "without a path"),
    ("ssh://alice:secret@gpu-box", "an ssh:// URL cannot carry a password"),
    ("ssh://gpu-box:http", "the port of ssh://gpu-box:http is not a port number"),
    ("ssh://", "ssh:// names no host"),
    ("ssh://al%20ice@gpu-box", "the user of an ssh:// URL cannot hold spaces"),
])
def test_ssh_urls_that_cannot_work(fake_ssh, url, why):
    with pytest.raises(EngineUnavailable) as e:
        Engine.connect(url=url)
    shown = url.replace(":secret@", ":***@")         # a password is never repeated
    assert str(e.value).startswith(f"cannot reach {shown}: {why}"), str(e.value)
    assert "secret" not in str(e.value)
    assert fake_ssh() == []                 # no ssh was started


def test_a_password_in_a_tcp_url_is_not_repeated():
    with pytest.raises(EngineUnavailable) as e:
        Engine.connect(url="tcp://alice:secret@127.0.0.1:1")
    assert str(e.value).startswith("no Docker engine answers at tcp://alice:***@127.0.0.1:1 (")
    assert "secret" not in str(e.value)


def test_ssh_options_that_do_not_split(fake_ssh, monkeypatch):
    monkeypatch.setenv("IMAGEKIT_SSH_OPTIONS", "-F 'unclosed")
    with pytest.raises(EngineUnavailable) as e:
        Engine.connect(url="ssh://gpu-box")
    assert str(e.value) == ("cannot reach ssh://gpu-box: IMAGEKIT_SSH_OPTIONS cannot be split "
                            "into words (No closing quotation)")


def test_parse_and_label():
    assert ssh.parse("ssh://gpu-box") == ssh.Target("gpu-box")
    assert ssh.parse("ssh://alice@gpu-box:2222/").label == "alice@gpu-box:2222"
    assert ssh.parse("ssh://[::1]:2222").label == "[::1]:2222"
    assert ssh.parse("ssh://first.last%40corp@gpu-box").user == "first.last@corp"


def test_last_word_skips_notes_and_debug():
    said = ("debug1: Connecting to gpu-box port 22.\n"
            "Warning: Permanently added 'gpu-box' (ED25519) to the list of known hosts.\n"
            "bash: line 1: docker: command not found\n"
            "debug1: Exit status 127\n\n")
    assert ssh.last_word(said) == "bash: line 1: docker: command not found"


def test_a_docker_context_on_ssh_goes_through_the_same_transport(fake_ssh, monkeypatch, tmp_path):
    import hashlib
    config = tmp_path / "docker-config"
    meta = config / "contexts" / "meta" / hashlib.sha256(b"gpu").hexdigest()
    meta.mkdir(parents=True)
    (config / "config.json").write_text(json.dumps({"currentContext": "gpu"}))
    (meta / "meta.json").write_text(json.dumps({
        "Name": "gpu", "Metadata": {},
        "Endpoints": {"docker": {"Host": "ssh://alice@gpu-box:2222", "SkipTLSVerify": False}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config))
    for var in ("DOCKER_HOST", "DOCKER_CONTEXT", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH"):
        monkeypatch.delenv(var, raising=False)
    engine = Engine.connect(timeout=30)
    try:
        assert (engine.where, engine.context) == ("ssh://alice@gpu-box:2222", "gpu")
        assert engine.facts().server_version == "26.1.5"
        [one] = fake_ssh()
        assert one["argv"][-9:] == ["-l", "alice", "-p", "2222", "--", "gpu-box", "docker",
                                    "system", "dial-stdio"]
    finally:
        engine.api.close()
