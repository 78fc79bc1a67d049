"""Real registries for the push tests, run as processes on 127.0.0.1: Debian's
`docker-registry` (distribution 2.8) with htpasswd or token auth, a token
issuer the registry trusts (JWTs signed with a throwaway RSA key whose
self-signed certificate is the registry's rootcertbundle; the registry checks
every token itself), and a TCP proxy that counts the bytes a client sends."""

from __future__ import annotations

import base64
import contextlib
import datetime
import http.server
import json
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

ISSUER = "imagekit-test-issuer"
SERVICE = "imagekit-test-registry"
# distribution accepts a token up to this long after its exp (clock skew leeway)
LEEWAY = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def htpasswd(path: Path, user: str, password: str) -> None:
    out = subprocess.run(["htpasswd", "-Bbn", user, password], capture_output=True, text=True,
                         check=True).stdout
    path.write_text(out)


class Registry:
    """`docker-registry serve` on 127.0.0.1:PORT with its storage in `root`;
    stop / kill / start again on the same port and storage."""

    def __init__(self, root: Path, *, htpasswd_file: Path | None = None,
                 token: TokenIssuer | None = None, port: int | None = None):
        self.root = root
        self.port = port or free_port()
        self.storage = root / "storage"
        self.storage.mkdir(parents=True, exist_ok=True)
        self.config = root / "config.yml"
        self.log = root / "registry.log"
        auth = ""
        if htpasswd_file is not None:
            auth = f"auth:\n  htpasswd:\n    realm: imagekit-test\n    path: {htpasswd_file}\n"
        elif token is not None:
            auth = (f"auth:\n  token:\n    realm: {token.realm}\n    service: {SERVICE}\n"
                    f"    issuer: {ISSUER}\n    rootcertbundle: {token.cert_path}\n")
        # A fixed http.secret: upload sessions outlive a restart (distribution signs
        # their state with it; a random one per start forgets every session).
        self.config.write_text(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: true\n"
            f"storage:\n  filesystem:\n    rootdirectory: {self.storage}\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n  secret: {uuid.uuid4().hex}\n{auth}")
        self.proc: subprocess.Popen | None = None

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 20) -> Registry:
        log = open(self.log, "ab")
        self.proc = subprocess.Popen(["docker-registry", "serve", str(self.config)], stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if requests.get(f"http://{self.host}/v2/", timeout=1).status_code in (200, 401):
                    return self
            except requests.RequestException:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"docker-registry did not start: {self.log.read_text()[-2000:]}")

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=20)
        self.proc = None

    def __enter__(self) -> Registry:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class TokenIssuer:
    """A token service on 127.0.0.1: checks basic credentials, grants the
    scopes asked for, and signs a JWT (RS256, the certificate in `x5c`).
    `lifetime`: seconds the registry accepts a token; `claimed`: the
    expires_in told to the client (longer than lifetime to make a token lapse
    in the middle of an upload without the client knowing)."""

    def __init__(self, root: Path, user: str, password: str, *, lifetime: int = 300,
                 claimed: int | None = None):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import rsa
        from cryptography.x509.oid import NameOID

        self.user, self.password = user, password
        self.lifetime, self.claimed = lifetime, claimed if claimed is not None else lifetime
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "imagekit test token issuer")])
        now = datetime.datetime.now(datetime.timezone.utc)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=2))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .sign(self.key, hashes.SHA256()))
        self.cert_der = cert.public_bytes(serialization.Encoding.DER)
        self.cert_path = root / "token-cert.pem"
        self.cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        self.issued: list[dict] = []       # claims of every token handed out
        self.refused = 0
        self.requests: list[dict] = []     # what each request carried (no secrets)
        issuer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                q = urllib.parse.parse_qs(urllib.parse.urlsplit(self.path).query)
                issuer.requests.append({"scope": q.get("scope", []), "service": q.get("service"),
                                        "authorization": bool(self.headers.get("Authorization"))})
                auth = self.headers.get("Authorization", "")
                good = "Basic " + base64.b64encode(f"{issuer.user}:{issuer.password}".encode()).decode()
                if auth != good:
                    issuer.refused += 1
                    self.send_response(401)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(b'{"details":"bad credentials"}')
                    return
                token = issuer.sign(issuer.user, q.get("scope", []))
                body = json.dumps({"token": token, "access_token": token,
                                   "expires_in": issuer.claimed}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.realm = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def sign(self, subject: str, scopes: list[str]) -> str:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding

        access = []
        for scope in " ".join(scopes).split():
            kind, _, rest = scope.partition(":")
            name, _, actions = rest.rpartition(":")
            access.append({"type": kind, "name": name, "actions": actions.split(",")})
        now = int(time.time())
        claims = {"iss": ISSUER, "sub": subject, "aud": SERVICE, "iat": now, "nbf": now - 5,
                  "exp": now + self.lifetime - LEEWAY, "jti": uuid.uuid4().hex, "access": access}
        header = {"typ": "JWT", "alg": "RS256",
                  "x5c": [base64.b64encode(self.cert_der).decode()]}

        def b64(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        signing = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        sig = self.key.sign(signing.encode(), padding.PKCS1v15(), hashes.SHA256())
        self.issued.append(claims)
        return f"{signing}.{b64(sig)}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class CountingProxy:
    """A TCP proxy 127.0.0.1:port -> 127.0.0.1:upstream that counts the bytes
    clients send (all of them, and per connection), and can call a hook
    after every piece sent (to stop the registry at a chosen byte count)."""

    def __init__(self, upstream_port: int, port: int | None = None):
        self.upstream = upstream_port
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port or 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.sent = 0
        self.lock = threading.Lock()
        self.hook = None
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            server = socket.create_connection(("127.0.0.1", self.upstream), timeout=5)
        except OSError:
            client.close()
            return
        server.settimeout(None)

        def pipe(src: socket.socket, dst: socket.socket, upward: bool) -> None:
            try:
                while data := src.recv(256 * 1024):
                    dst.sendall(data)
                    if upward:
                        with self.lock:
                            self.sent += len(data)
                            total = self.sent
                        if self.hook is not None:
                            self.hook(total)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        t = threading.Thread(target=pipe, args=(server, client, False), daemon=True)
        t.start()
        pipe(client, server, True)
        t.join()
        client.close()
        server.close()

    def close(self) -> None:
        self.closed = True
        self.sock.close()


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def environment_ok() -> str:
    """'' when docker-registry and htpasswd are on PATH, else what is missing."""
    missing = [t for t in ("docker-registry", "htpasswd") if shutil.which(t) is None]
    return ", ".join(missing)


@contextlib.contextmanager
def basic_registry(root: Path, user: str, password: str) -> Iterator[Registry]:
    """A started Registry taking USER / PASSWORD (htpasswd), its files under
    ROOT, removed at the end; the test fails when the tools are missing."""
    missing = environment_ok()
    if missing:
        pytest.fail(f"these tests need {missing} (apt-get install docker-registry apache2-utils; "
                    "make engine installs them)")
    htpasswd(root / "htpasswd", user, password)
    (root / "reg").mkdir()
    try:
        with Registry(root / "reg", htpasswd_file=root / "htpasswd") as r:
            yield r
    finally:
        remove_tree(root)


__all__ = ["Registry", "TokenIssuer", "CountingProxy", "free_port", "htpasswd", "remove_tree",
           "environment_ok", "basic_registry"]
