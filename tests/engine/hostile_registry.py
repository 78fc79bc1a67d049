"""A registry that misbehaves on purpose, on 127.0.0.1, for the hostile-peer
tests: it stalls, floods, injects escape sequences into its error text, or
lies about its token. It speaks just enough of the distribution API for a
client to get to the step it attacks, and records every request it saw."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent

INJECTED = "\x1b]0;owned\x07\x1b[2J\x1b[8mhidden\x1b[0m\u202eevil\r\nX-Fake: 1"


class HostileRegistry:
    """MODE: silent (accepts, never answers) | mute-after-ping (answers /v2/,
    then nothing) | trickle (a header, then a byte
    every second) | flood (an error body that never ends) | inject (a 10 MB
    error message full of escape sequences, at the upload's start) |
    token-crlf (a bearer token with a CR LF in it) | wrong-password (Basic,
    every password refused)."""

    def __init__(self, mode: str, token: str = "tok3n-s3cret\r\nX-Injected: yes"):
        self.mode = mode
        self.token = token
        self.seen: list[str] = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.conns: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def close(self) -> None:
        self.stop.set()
        for c in [self.sock, *self.conns]:
            try:
                c.close()
            except OSError:
                pass

    def __enter__(self) -> HostileRegistry:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- serving
    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.mode == "silent":
                self.stop.wait()
                return
            f = conn.makefile("rb")
            while not self.stop.is_set():
                line = f.readline(65536)
                if not line:
                    return
                method, path = line.decode("latin-1").split(" ")[:2]
                headers = {}
                while True:
                    h = f.readline(65536).decode("latin-1")
                    if h in ("\r\n", "\n", ""):
                        break
                    k, _, v = h.partition(":")
                    headers[k.strip().lower()] = v.strip()
                n = int(headers.get("content-length") or 0)
                if n:
                    f.read(n)
                self.seen.append(f"{method} {path}")
                if not self._answer(conn, method, path, headers):
                    return
        except OSError:
            return

    def _send(self, conn, status: str, headers: dict | None = None, body: bytes = b"") -> None:
        head = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}",
                "Docker-Distribution-API-Version: registry/2.0"]
        head += [f"{k}: {v}" for k, v in (headers or {}).items()]
        conn.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body)

    def _answer(self, conn, method: str, path: str, headers: dict) -> bool:
        mode = self.mode
        if mode == "mute-after-ping":
            if path == "/v2/":
                self._send(conn, "200 OK", {}, b"{}")
                return True
            self.stop.wait()
            return False
        if mode == "trickle":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
            while not self.stop.wait(1.0):
                conn.sendall(b"x")
            return False
        if mode == "flood":
            conn.sendall(b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"x\"\r\n"
                         b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n")
            piece = ('{"errors":[{"code":"DENIED","message":"' + INJECTED).encode()
            chunk = b"%x\r\n%s\r\n" % (len(piece), piece)
            filler = b"A" * 65536
            more = b"%x\r\n%s\r\n" % (len(filler), filler)
            conn.sendall(chunk)
            while not self.stop.is_set():
                conn.sendall(more)
            return False
        if mode == "wrong-password":
            self._send(conn, "401 Unauthorized", {"WWW-Authenticate": 'Basic realm="hostile"'},
                       b'{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}')
            return True
        if mode == "token-crlf":
            if path.startswith("/token"):
                body = json.dumps({"token": self.token, "expires_in": 300}).encode()
                self._send(conn, "200 OK", {"Content-Type": "application/json"}, body)
                return True
            if "authorization" not in headers:
                realm = f"http://127.0.0.1:{self.port}/token"
                self._send(conn, "401 Unauthorized",
                           {"WWW-Authenticate": f'Bearer realm="{realm}",service="hostile"'})
                return True
            self._send(conn, "200 OK", {}, b"{}")
            return True
        if mode in ("inject", "inject-small"):
            if path == "/v2/" or method == "HEAD":
                self._send(conn, "200 OK" if path == "/v2/" else "404 Not Found")
                return True
            message = INJECTED + "Z" * (10 * 1024 * 1024 if mode == "inject" else 1000)
            body = json.dumps({"errors": [{"code": "DENIED", "message": message}]}).encode()
            self._send(conn, "400 Bad Request", {"Content-Type": "application/json"}, body)
            return True
        self._send(conn, "404 Not Found")
        return True


@dataclass
class Measured:
    code: int
    stdout: str
    stderr: str
    seconds: float
    peak_rss_mb: float

    @property
    def output(self) -> str:
        return self.stdout + self.stderr


def run_measured(*args: str, env: dict | None = None, timeout: float = 300,
                 input: str | None = None, cwd: Path | None = None) -> Measured:
    """The CLI in a child process: exit code, output, wall time and the child's
    peak resident memory (from wait4's rusage, in MB)."""
    started = time.monotonic()
    p = subprocess.Popen([sys.executable, "-m", "imagekit", *args], cwd=cwd or REPO,
                         env={**os.environ, **(env or {})}, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out: dict[str, bytes] = {}

    def drain(name: str, stream) -> None:
        out[name] = stream.read()

    readers = [threading.Thread(target=drain, args=(n, s), daemon=True)
               for n, s in (("out", p.stdout), ("err", p.stderr))]
    for t in readers:
        t.start()
    if input is not None:
        p.stdin.write(input.encode())
    p.stdin.close()
    deadline = started + timeout
    while True:
        pid, status, usage = os.wait4(p.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() > deadline:
            p.kill()
            pid, status, usage = os.wait4(p.pid, 0)
            break
        time.sleep(0.05)
    p.returncode = os.waitstatus_to_exitcode(status)
    for t in readers:
        t.join(10)
    return Measured(p.returncode, out.get("out", b"").decode(errors="replace"),
                    out.get("err", b"").decode(errors="replace"),
                    round(time.monotonic() - started, 2), usage.ru_maxrss / 1024)
