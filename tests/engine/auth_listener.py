"""A stand-in registry on 127.0.0.1 that refuses every request with 401 and a
Basic challenge, and records what each request carried: enough to see which
credentials a push sends to which host, and that no layer is sent unasked."""

from __future__ import annotations

import base64
import http.server
import threading
import time
from dataclasses import dataclass

CHALLENGE = 'Basic realm="imagekit-test"'
BODY = b'{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":null}]}'


@dataclass(frozen=True)
class Seen:
    method: str
    path: str
    authorization: str | None

    def basic(self) -> str | None:
        """The decoded user:password of a Basic header, else None."""
        if not self.authorization or not self.authorization.startswith("Basic "):
            return None
        return base64.b64decode(self.authorization[6:]).decode(errors="replace")


class AuthListener:
    def __init__(self) -> None:
        self.seen: list[Seen] = []
        listener = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _refuse(self) -> None:
                listener.seen.append(Seen(self.command, self.path,
                                          self.headers.get("Authorization")))
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                elif self.headers.get("Transfer-Encoding"):
                    self.close_connection = True   # a chunked body is never read
                self.send_response(401)
                self.send_header("WWW-Authenticate", CHALLENGE)
                self.send_header("Docker-Distribution-API-Version", "registry/2.0")
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(BODY)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(BODY)

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _refuse

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def authorizations(self) -> list[str]:
        return [s.authorization for s in self.seen if s.authorization]

    def wait_for_authorization(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.authorizations():
                return True
            time.sleep(0.05)
        return False

    def clear(self) -> None:
        self.seen.clear()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> AuthListener:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
