"""ssh:// engines through the system's ssh client, the way the docker CLI
reaches them: `ssh … -- HOST docker system dial-stdio` on the engine's host,
and HTTP spoken over that process's stdin and stdout.

Each HTTP connection is one ssh process. Its stdin and stdout are one end of a
`socket.socketpair()`; imagekit holds the other end, an ordinary socket, so the
request timeouts bound every read as they do on a TCP engine (they would not
apply to reads from pipes). The process is stopped
(SIGTERM) and reaped when its connection's socket closes for good, or when
the socket is dropped. (The command line ends with os._exit: there the kernel
closes imagekit's ends, and each ssh, at the end of its input, ends as soon
as the engine's side has closed too.) What ssh says on stderr is kept in a
temporary file: an ssh that ends before the engine answers becomes
`SshFailed`, whose text is ssh's own last word ("ssh to root@gpu-box:2222
failed: Host key verification failed.").

The command line: `-T`, `BatchMode=yes` (never a prompt: nobody can answer
one), `ConnectTimeout` (the TCP connect and the SSH handshake), then
`ServerAliveInterval` / `ServerAliveCountMax` (a host that goes silent later
is given up after ALIVE_INTERVAL * ALIVE_COUNT seconds), `-l USER` and
`-p PORT` from the URL, then the words of IMAGEKIT_SSH_OPTIONS (shlex-split:
`-F CONFIG`, `-i KEY`, `-o UserKnownHostsFile=…`). ssh keeps the first value
it is given for an option, so imagekit's four `-o` options stay as they are.

Only this module knows ssh's command line; `api` gives `wire.Api` its
`connection_factory`."""

from __future__ import annotations

import contextlib
import http.client
import os
import shlex
import socket
import subprocess
import tempfile
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO
from urllib.parse import unquote, urlsplit

from ..peer import peer_text
from .wire import BLOCK, ConnectFailed

OPTIONS_ENV = "IMAGEKIT_SSH_OPTIONS"
CONNECT_TIMEOUT = 10       # seconds: ssh's ConnectTimeout (TCP connect, banner, key exchange)
ALIVE_INTERVAL = 10        # seconds between keepalives on a quiet connection
ALIVE_COUNT = 3            # keepalives unanswered before ssh gives the host up
REMOTE_COMMAND = ("docker", "system", "dial-stdio")
SCHEME = "http+imagekit-ssh://"
BASE_URL = SCHEME + "engine"   # what the API client asks for; the adapter ignores the host
EXIT_WAIT = 2.0            # seconds an ssh whose socket reached its end has to exit
STDERR_TAIL = 64 * 1024    # bytes of ssh's stderr looked at for its reason
# stderr lines that are no reason: ssh's notes and the debug output of -v
_NOISE = ("Warning: Permanently added", "debug1:", "debug2:", "debug3:", "Transferred:",
          "Bytes per second:", "Pseudo-terminal will not be allocated", "OpenSSH_")


class SshFailed(ConnectFailed):
    """ssh ended before the engine answered; str() is ssh's reason, one line."""


class _Ended(OSError):
    """ssh could not be started."""


@dataclass(frozen=True)
class Target:
    """Where an ssh:// URL points: `ssh://[user@]host[:port]`."""

    host: str
    user: str = ""
    port: int | None = None

    @property
    def label(self) -> str:
        """"root@gpu-box:2222", as a message names it."""
        host = f"[{self.host}]" if ":" in self.host and self.port else self.host
        return f"{self.user + '@' if self.user else ''}{host}" + \
            (f":{self.port}" if self.port else "")


def parse(url: str) -> Target:
    """URL as a Target. ValueError (one line) when it is no usable ssh:// URL."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() != "ssh":
        raise ValueError(f"not an ssh:// URL: {url}")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ValueError("an ssh:// engine is ssh://[user@]host[:port], without a path")
    if parts.password is not None:
        raise ValueError("an ssh:// URL cannot carry a password: ssh runs in batch mode "
                         "(a key, an agent or IMAGEKIT_SSH_OPTIONS say how to log in)")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"the port of {url} is not a port number") from None
    host = parts.hostname or ""
    user = unquote(parts.username or "")
    for what, text in (("host", host), ("user", user)):
        if any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in text):
            raise ValueError(f"the {what} of an ssh:// URL cannot hold spaces or control "
                             "characters")
    if not host or host.startswith("-"):
        raise ValueError(f"{url} names no host")
    return Target(host, user, port)


def extra_options(environ: dict | None = None) -> list[str]:
    """IMAGEKIT_SSH_OPTIONS, shlex-split. ValueError when it cannot be split."""
    text = (os.environ if environ is None else environ).get(OPTIONS_ENV, "")
    try:
        return shlex.split(text)
    except ValueError as e:
        raise ValueError(f"{OPTIONS_ENV} cannot be split into words ({e})") from None


def command(target: Target, options: list[str] | None = None) -> list[str]:
    """The ssh command line for one connection to TARGET's engine."""
    argv = ["ssh", "-T", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={CONNECT_TIMEOUT}",
            "-o", f"ServerAliveInterval={ALIVE_INTERVAL}",
            "-o", f"ServerAliveCountMax={ALIVE_COUNT}"]
    if target.user:
        argv += ["-l", target.user]
    if target.port:
        argv += ["-p", str(target.port)]
    argv += extra_options() if options is None else options
    return [*argv, "--", target.host, *REMOTE_COMMAND]


def last_word(text: str) -> str:
    """The last line of ssh's stderr that says something (not its notes, nor -v's debug)."""
    lines = [line.strip() for line in text.splitlines()]
    said = [line for line in lines if line and not line.startswith(_NOISE)]
    return said[-1] if said else ""


def _halt(proc: subprocess.Popen) -> None:
    """Stop PROC (SIGTERM, then SIGKILL) and reap it."""
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.terminate()
        try:
            proc.wait(timeout=EXIT_WAIT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                proc.kill()
            proc.wait()


def _finish(proc: subprocess.Popen, err: IO[bytes]) -> None:
    try:
        _halt(proc)
    finally:
        err.close()


class _Ssh:
    """One ssh process, and what it said on stderr (a temporary file, closed
    when this object goes or imagekit exits)."""

    def __init__(self, target: Target, proc: subprocess.Popen, err: IO[bytes]):
        self.target = target
        self.proc = proc
        self._err = err
        self._finalizer = weakref.finalize(self, _finish, proc, err)

    def stop(self) -> None:
        """Its connection closed for good: the process goes (reaped)."""
        _halt(self.proc)

    def ended(self, wait: float) -> str:
        """ssh's reason when the process has ended (waiting up to WAIT seconds
        for it); "" while it runs, or when imagekit stopped it (a signal) and
        it said nothing."""
        try:
            self.proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            return ""
        try:
            size = self._err.seek(0, os.SEEK_END)
            self._err.seek(max(0, size - STDERR_TAIL))
            line = last_word(self._err.read().decode("utf-8", "replace"))
        except (OSError, ValueError):
            line = ""
        if line:
            return f"ssh to {self.target.label} failed: {peer_text(line)}"
        if self.proc.returncode < 0:
            return ""
        return f"ssh to {self.target.label} ended (exit status {self.proc.returncode}) " \
               "before the engine answered"


def _spawn(target: Target, argv: list[str]) -> _SshSocket:
    """A new ssh process, and imagekit's end of its stdin/stdout."""
    ours, theirs = socket.socketpair()
    err = tempfile.TemporaryFile(prefix="imagekit-ssh-")
    try:
        # its own session: the terminal's Ctrl-C is imagekit's to handle (it cleans up
        # through these very connections), and ssh has no terminal to prompt on
        proc = subprocess.Popen(argv, stdin=theirs, stdout=theirs, stderr=err,
                                start_new_session=True)
    except OSError as e:
        ours.close()
        err.close()
        why = "no ssh client on PATH" if isinstance(e, FileNotFoundError) else \
            (e.strerror or str(e))
        raise _Ended(f"ssh to {target.label} failed: {why}") from None
    finally:
        theirs.close()
    sock = _SshSocket(ours.family, ours.type, ours.proto, fileno=ours.detach())
    sock.ssh = _Ssh(target, proc, err)
    return sock


class _SshSocket(socket.socket):
    """imagekit's end of the socketpair. When it closes for good (the HTTP
    response that may still read it included), its ssh is stopped."""

    ssh: _Ssh | None = None

    def _real_close(self, *args, **kwargs):
        try:
            super()._real_close(*args, **kwargs)
        finally:
            if self.ssh is not None:
                self.ssh.stop()


class _Connection(http.client.HTTPConnection):
    """An HTTP connection whose socket is a new ssh process's stdin/stdout."""

    def __init__(self, target: Target, argv: list[str], timeout: float):
        super().__init__("localhost", timeout=timeout, blocksize=BLOCK)
        self._target = target
        self._argv = argv
        self._ssh: _Ssh | None = None

    def connect(self) -> None:
        try:
            sock = _spawn(self._target, self._argv)
        except _Ended as e:
            raise SshFailed(str(e)) from None
        self._ssh = sock.ssh
        sock.settimeout(self.timeout)
        self.sock = sock

    def getresponse(self):
        try:
            return super().getresponse()
        except (OSError, http.client.HTTPException) as e:
            # a timeout leaves ssh running: nothing to wait for; an end of the
            # stream or a reset means ssh is going: let it say why
            wait = 0.0 if isinstance(e, TimeoutError) else EXIT_WAIT
            reason = self._ssh.ended(wait) if self._ssh is not None else ""
            if reason:
                raise SshFailed(reason) from e
            raise


def connection_factory(target: Target, options: list[str] | None = None
                       ) -> Callable[[float], http.client.HTTPConnection]:
    """How `wire.Api` opens a connection to TARGET's engine: one ssh each."""
    argv = command(target, options)
    return lambda timeout: _Connection(target, argv, timeout)
