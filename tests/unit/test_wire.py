"""imagekit.engine.wire, the Docker API's HTTP client, against a small HTTP
server on a unix socket in this process (no engine): kept connections, the
engine's JSON streams and multiplexed container output, chunked uploads,
error answers, and what becomes of a peer that goes away or never answers."""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from pathlib import Path

import pytest

from imagekit.engine import wire


class Server:
    """Answers each request with what `handler(method, path, headers, body)`
    returns: raw bytes to send (a whole HTTP answer), or None to close."""

    def __init__(self, path: Path, handler):
        self.path, self.handler = path, handler
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.connections = 0
        self.close_after_answer = False
        self.requests: list[tuple[str, str, dict, bytes]] = []
        self.closed = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.closed.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        f = conn.makefile("rb")
        with contextlib.suppress(OSError), conn:
            while True:
                line = f.readline()
                if not line:
                    return
                method, target, _ = line.decode().split(" ", 2)
                headers = {}
                while (h := f.readline()) not in (b"\r\n", b""):
                    k, _, v = h.decode().partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = b""
                if "content-length" in headers:
                    body = f.read(int(headers["content-length"]))
                elif headers.get("transfer-encoding") == "chunked":
                    while (size := int(f.readline().strip(), 16)):
                        body += f.read(size)
                        f.readline()
                    f.readline()
                self.requests.append((method, target, headers, body))
                answer = self.handler(method, target, headers, body)
                if answer is None:
                    return
                conn.sendall(answer)
                if self.close_after_answer:
                    return

    def close(self) -> None:
        self.closed.set()
        self.sock.close()


def http(status: int, body: bytes = b"", kind: str = "application/json",
         chunks: list[bytes] | None = None) -> bytes:
    head = f"HTTP/1.1 {status} X\r\nContent-Type: {kind}\r\n"
    if chunks is not None:
        data = b"".join(f"{len(c):X}\r\n".encode() + c + b"\r\n" for c in chunks) + b"0\r\n\r\n"
        return (head + "Transfer-Encoding: chunked\r\n\r\n").encode() + data
    return (head + f"Content-Length: {len(body)}\r\n\r\n").encode() + body


@pytest.fixture
def serve(tmp_path):
    made = []

    def start(handler) -> tuple[Server, wire.Api]:
        server = Server(tmp_path / f"s{len(made)}.sock", handler)
        made.append(server)
        return server, wire.Api.at(f"unix://{server.path}", timeout=5)

    yield start
    for s in made:
        s.close()


def test_connections_are_kept_and_reused(serve):
    server, api = serve(lambda *a: http(200, b'{"ServerVersion": "26.1.5"}'))
    for _ in range(5):
        assert api.info() == {"ServerVersion": "26.1.5"}
    assert server.connections == 1
    assert [r[1] for r in server.requests] == ["/v1.24/info"] * 5


def test_names_are_quoted_into_paths_and_params_encoded(serve):
    server, api = serve(lambda *a: http(201, b""))
    api.api_version = "1.45"
    api.tag("sha256:ab", "localhost:5000/team/x", "v1")
    api.remove_image("reg.example.com/a b:v1")
    (m1, t1, _, _), (m2, t2, _, _) = server.requests
    assert (m1, t1) == ("POST", "/v1.45/images/sha256:ab/tag?repo=localhost%3A5000%2Fteam%2Fx"
                                "&tag=v1&force=1")
    assert (m2, t2) == ("DELETE", "/v1.45/images/reg.example.com/a%20b:v1?noprune=0")


def test_a_json_stream_split_anywhere_is_decoded_whole(serve):
    items = [{"status": "Pushing", "id": "l1", "progressDetail": {"current": n}} for n in range(50)]
    text = b"".join(json.dumps(i).encode() + b"\r\n" for i in items)
    pieces = [text[i:i + 7] for i in range(0, len(text), 7)]      # cut mid-object
    _, api = serve(lambda *a: http(200, chunks=pieces))
    assert list(api.push("x", "v1", "e30=")) == items


def test_a_stream_that_stops_inside_a_message_is_broken(serve):
    _, api = serve(lambda *a: http(200, chunks=[b'{"status": "Pushing"}\r\n{"sta']))
    with pytest.raises(wire.Broken, match="ended inside a message"):
        list(api.push("x", "v1", "e30="))


def test_multiplexed_output_is_taken_apart_into_frames(serve):
    def frame(kind: int, data: bytes) -> bytes:
        return bytes([kind, 0, 0, 0]) + len(data).to_bytes(4, "big") + data
    body = frame(1, b"epoch 1\n") + frame(2, b"warning\n") + frame(1, b"x" * 70_000)
    _, api = serve(lambda *a: http(200, chunks=[body[:5], body[5:30], body[30:]],
                                   kind="application/vnd.docker.raw-stream"))
    assert list(api.logs("c1")) == [b"epoch 1\n", b"warning\n", b"x" * 70_000]


def test_a_generator_body_goes_chunked(serve):
    server, _ = serve(lambda *a: http(200, chunks=[b'{"stream":"Loaded image: x:v1\\n"}']))
    api = wire.Api.at(f"unix://{server.path}", timeout=5)
    got = list(api.load_image(iter([b"ab", b"", b"cd" * 1000])))
    assert got == [{"stream": "Loaded image: x:v1\n"}]
    (_, _, headers, body), = server.requests
    assert headers["transfer-encoding"] == "chunked" and body == b"ab" + b"cd" * 1000


def test_an_error_answer_carries_the_engines_message(serve):
    def handler(method, path, headers, body):
        if "nothing" in path:
            return http(404, b'{"message":"No such image: nothing:v1"}')
        return http(500, b"<html>overloaded</html>", kind="text/html")
    server, api = serve(handler)
    with pytest.raises(wire.NotFound) as e:
        api.inspect_image("nothing:v1")
    assert e.value.status_code == 404 and e.value.explanation == "No such image: nothing:v1"
    with pytest.raises(wire.ApiError) as e:
        api.info()
    assert not isinstance(e.value, wire.NotFound) and e.value.explanation == \
        "<html>overloaded</html>"
    assert server.connections == 1          # error answers read whole: the connection is kept


def test_a_kept_connection_the_engine_closed_is_replaced(serve):
    server, api = serve(lambda *a: http(200, b"{}"))
    server.close_after_answer = True        # as an engine that drops idle connections
    assert api.info() == {}
    time.sleep(0.1)
    assert api.info() == {}
    assert server.connections == 2 and len(server.requests) == 2


def test_no_answer_within_the_timeout_is_a_read_timeout(serve):
    def handler(method, path, headers, body):
        time.sleep(2)
        return http(200, b"{}")
    _, api = serve(handler)
    api.timeout = 0.3
    started = time.monotonic()
    with pytest.raises(wire.ReadTimeout):
        api.info()
    assert time.monotonic() - started < 1.5


def test_nothing_listening_is_a_failed_connect(tmp_path):
    api = wire.Api.at(f"unix://{tmp_path / 'none.sock'}", timeout=2)
    with pytest.raises(wire.ConnectFailed, match="No such file"):
        api.info()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(wire.ConnectFailed, match="refused"):
        wire.Api.at(f"tcp://127.0.0.1:{port}", timeout=2).info()


def test_a_peer_that_closes_without_an_answer_is_broken(serve):
    _, api = serve(lambda *a: None)
    with pytest.raises(wire.Broken, match="Connection aborted"):
        api.info()


@pytest.mark.parametrize("url", ["ftp://host", "unix://", "tcp://:2375", "tcp://h:port"])
def test_urls_it_cannot_use(url):
    with pytest.raises(ValueError):
        wire.Api.at(url)


def test_an_export_is_read_in_whole_blocks(serve):
    data = bytes(range(256)) * 40_000           # 10 MB in the server's 64 KiB chunks
    chunks = [data[i:i + 65536] for i in range(0, len(data), 65536)]
    server, api = serve(lambda *a: http(200, chunks=chunks, kind="application/x-tar"))
    blocks = list(api.export(["x:v1", "y:v1"]).blocks(1024 * 1024))
    assert b"".join(blocks) == data and {len(b) for b in blocks[:-1]} == {1024 * 1024}
    assert server.requests[0][1] == "/v1.24/images/get?names=x%3Av1&names=y%3Av1"
    assert b"".join(api.export(["x:v1"]).blocks()) == data
    assert server.connections == 1          # read to its end: the connection was kept


# -- a tcp:// engine with TLS (DOCKER_TLS_VERIFY, DOCKER_CERT_PATH): mutual TLS, as dockerd's --tlsverify

def _self_signed(folder: Path, name: str) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 and its key: (cert.pem, key.pem)."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / f"{name}.pem", folder / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)


@pytest.fixture
def tls_engine(tmp_path):
    """An HTTPS server on 127.0.0.1 that wants a client certificate signed as
    `client` (dockerd --tlsverify), answering /info."""
    import ssl
    server_cert, server_key = _self_signed(tmp_path, "server")
    client_cert, client_key = _self_signed(tmp_path, "client")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=client_cert)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(server_cert, server_key)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(4)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with contextlib.suppress(OSError, ssl.SSLError), \
                    ctx.wrap_socket(conn, server_side=True) as tls:
                tls.recv(65536)
                tls.sendall(http(200, b'{"ServerVersion": "26.1.5"}'))
    threading.Thread(target=serve, daemon=True).start()
    yield f"tcp://127.0.0.1:{sock.getsockname()[1]}", server_cert, client_cert, client_key
    stop.set()
    sock.close()


def test_a_tls_engine_is_reached_with_its_ca_and_a_client_certificate(tls_engine):
    url, ca, cert, key = tls_engine
    api = wire.Api.at(url, timeout=5, tls=wire.tls_context(ca, cert, key, verify=True))
    assert api.info() == {"ServerVersion": "26.1.5"}


def test_a_tls_engine_with_another_ca_or_no_client_certificate_is_refused(tls_engine, tmp_path):
    url, ca, cert, key = tls_engine
    other, _ = _self_signed(tmp_path, "other")
    with pytest.raises(wire.ConnectFailed, match="CERTIFICATE_VERIFY_FAILED"):
        wire.Api.at(url, timeout=5, tls=wire.tls_context(other, cert, key, verify=True)).info()
    with pytest.raises(wire.TransportError):
        wire.Api.at(url, timeout=5, tls=wire.tls_context(ca, None, None, verify=True)).info()
    # without verification (DOCKER_TLS_VERIFY unset, DOCKER_CERT_PATH set) the CA does not matter
    api = wire.Api.at(url, timeout=5, tls=wire.tls_context(other, cert, key, verify=False))
    assert api.info() == {"ServerVersion": "26.1.5"}
