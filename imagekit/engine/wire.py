"""`Api`: a client of the Docker Engine's HTTP API on the standard library's
http.client, over a unix socket, TCP, TLS or an ssh process (`ssh`). Its
methods are the engine requests imagekit makes, named as the API names
them; they return the engine's JSON as it is, or its streams: JSON lines
decoded one object at a time, and a container's multiplexed output taken
apart into its frames. `api.Engine` turns both into imagekit's types.

Connections are kept and reused (the engine keeps them open), one at a time
per request, so threads may share a client. Every request has the client's
timeout unless it gives its own; it bounds the connect and each read.

Errors: an HTTP error answer is `ApiError` (`NotFound` for 404) with the
engine's own message in `explanation`; a connection that cannot be made is
`ConnectFailed` (`ConnectTimeout` when it was not made in time); a read that
waits past the timeout is `ReadTimeout`; a connection that breaks is
`Broken`. Each keeps the socket's error as its cause."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any
from urllib.parse import quote, urlencode, urlsplit

PROBE_VERSION = "1.24"      # the oldest API imagekit speaks (Engine 1.12)
BLOCK = 1024 * 1024         # bytes sent or read at once for tars and exports
ERROR_BYTES = 64 * 1024     # of an error answer, at most, are read for its message


class ApiError(Exception):
    """The engine answered with an HTTP error."""

    def __init__(self, status: int, explanation: str):
        super().__init__(f"{status} {http.client.responses.get(status, 'error')}: {explanation}")
        self.status_code = status
        self.explanation = explanation


class NotFound(ApiError):
    """404: no such image, container, volume or network."""


class TransportError(Exception):
    """The engine could not be asked, or stopped answering."""


class ConnectFailed(TransportError):
    """No connection could be made (str: the system's reason)."""


class ConnectTimeout(ConnectFailed):
    """No connection within the timeout."""


class ReadTimeout(TransportError):
    """The connection was made, but no answer came within the timeout."""


class Broken(TransportError):
    """The connection broke, or the answer was not HTTP."""


# -- connections --------------------------------------------------------------------------

class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float):
        super().__init__("localhost", timeout=timeout, blocksize=BLOCK)
        self.socket_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.socket_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


class _Made(http.client.HTTPConnection):
    """A connection over a socket someone else makes (ssh's)."""

    def __init__(self, make: Callable[[], socket.socket], timeout: float):
        super().__init__("localhost", timeout=timeout, blocksize=BLOCK)
        self.make = make

    def connect(self) -> None:
        self.sock = self.make()
        self.sock.settimeout(self.timeout)


def tls_context(ca: str | None, cert: str | None, key: str | None,
                verify: bool) -> ssl.SSLContext:
    """The TLS settings of a tcp:// engine (DOCKER_TLS_VERIFY, DOCKER_CERT_PATH)."""
    ctx = ssl.create_default_context(cafile=ca if verify else None)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def connection_factory(url: str, tls: ssl.SSLContext | None = None
                       ) -> Callable[[float], http.client.HTTPConnection]:
    """How to open a connection to the engine at URL (unix://, tcp://, http://,
    https://). ValueError when URL is none of them."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("unix", "http+unix"):
        path = parts.path or parts.netloc
        if not path:
            raise ValueError(f"{url} names no socket")
        return lambda t: _Unix(path, t)
    if scheme in ("tcp", "http", "https"):
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"the port of {url} is not a port number") from None
        host = parts.hostname
        if not host:
            raise ValueError(f"{url} names no host")
        if scheme == "https" or tls is not None:
            ctx = tls or ssl.create_default_context()
            return lambda t: http.client.HTTPSConnection(host, port or 2376, timeout=t,
                                                         context=ctx, blocksize=BLOCK)
        return lambda t: http.client.HTTPConnection(host, port or 2375, timeout=t,
                                                    blocksize=BLOCK)
    raise ValueError(f"imagekit cannot reach an engine at {url} (it knows unix://, tcp://, "
                     "http://, https:// and ssh://)")


# -- answers ------------------------------------------------------------------------------

class Response:
    """An answer being read. Its connection goes back to the client once the
    body is read to its end, and is closed when the answer is dropped early."""

    def __init__(self, api: Api, conn: http.client.HTTPConnection, raw: http.client.HTTPResponse):
        self._api, self._conn, self.raw = api, conn, raw
        self.status = raw.status
        self.headers = raw.headers

    def read(self, n: int = -1) -> bytes:
        try:
            data = self.raw.read() if n < 0 else self.raw.read(n)
        except (OSError, http.client.HTTPException) as e:
            self._drop()
            raise _transport(e) from e
        if n < 0 or not data:
            self.close()
        return data

    def read1(self, n: int = BLOCK) -> bytes:
        """What has come, up to N bytes (at least one, b"" at the end)."""
        try:
            data = self.raw.read1(n)
        except (OSError, http.client.HTTPException) as e:
            self._drop()
            raise _transport(e) from e
        if not data:
            self.close()
        return data

    def json(self) -> Any:
        body = self.read()
        try:
            return json.loads(body) if body.strip() else None
        except ValueError:
            raise Broken(f"the engine answered with no JSON: {body[:200]!r}") from None

    def blocks(self, size: int = BLOCK) -> Iterator[bytes]:
        """The body in blocks of SIZE bytes (the last may be shorter)."""
        try:
            while block := self.read(size):
                yield block
        finally:
            self.close()

    def json_stream(self) -> Iterator[Any]:
        """The body as the JSON values the engine writes one after another."""
        decoder = json.JSONDecoder()
        text = ""
        try:
            while chunk := self.read1():
                text += chunk.decode("utf-8", errors="replace")
                while True:
                    text = text.lstrip()
                    if not text:
                        break
                    try:
                        value, end = decoder.raw_decode(text)
                    except ValueError:
                        break           # the rest of this value has not come yet
                    text = text[end:]
                    yield value
            if text.strip():
                raise Broken(f"the engine's stream ended inside a message: {text[:200]!r}")
        finally:
            self.close()

    def frames(self) -> Iterator[bytes]:
        """A container's output as the engine multiplexes it (no TTY): each
        frame's bytes, stdout's and stderr's in the order they came."""
        try:
            while head := self._exactly(8):
                size = int.from_bytes(head[4:8], "big")
                if size:
                    yield self._exactly(size)
        finally:
            self.close()

    def _exactly(self, n: int) -> bytes:
        data = b""
        while len(data) < n:
            more = self.read(n - len(data))
            if not more:
                break
            data += more
        return data

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if not self.raw.isclosed() and not self.raw.chunked and self.raw.length == 0:
            with contextlib.suppress(OSError, http.client.HTTPException):
                self.raw.read()         # the body was all read: this marks the answer done
        if self.raw.isclosed() and not self.raw.will_close:
            self._api._give_back(conn)
        else:
            conn.close()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def __del__(self):
        self._drop()


def _transport(e: BaseException) -> TransportError:
    """A socket's or http.client's error as the client's own."""
    if isinstance(e, TransportError):
        return e
    if isinstance(e, TimeoutError):
        return ReadTimeout(f"read timed out ({e})")
    if isinstance(e, http.client.RemoteDisconnected):
        return Broken(f"Connection aborted: {e}")
    if isinstance(e, http.client.BadStatusLine):
        return Broken(f"not an HTTP answer: {getattr(e, 'line', e)!r}")
    if isinstance(e, (ConnectionError, http.client.HTTPException)):
        return Broken(f"Connection aborted: {e}")
    return Broken(str(e) or type(e).__name__)


# -- the client -----------------------------------------------------------------------------

Params = dict[str, Any]


class Api:
    """The engine at one address. `version` is the API version requests are
    made at (the engine's own, once asked); "" for unversioned paths."""

    def __init__(self, connect: Callable[[float], http.client.HTTPConnection], *,
                 timeout: float = 600, version: str = PROBE_VERSION):
        self._connect = connect
        self.timeout = timeout
        self.api_version = version
        self._idle: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    @classmethod
    def at(cls, url: str, *, timeout: float = 600, tls: ssl.SSLContext | None = None) -> Api:
        return cls(connection_factory(url, tls), timeout=timeout)

    # -- requests ------------------------------------------------------------------
    def url(self, path: str, *args: str, versioned: bool = True) -> str:
        """PATH with ARGS quoted into its {} places, under /vVERSION."""
        path = path.format(*(quote(str(a), safe="/:@") for a in args))
        return f"/v{self.api_version}{path}" if versioned and self.api_version else path

    def request(self, method: str, path: str, *, params: Params | None = None,
                body: bytes | IO[bytes] | Iterable[bytes] | None = None,
                json_body: Any = None, headers: dict[str, str] | None = None,
                timeout: float | None = None, ok: tuple[int, ...] = ()) -> Response:
        """Send a request and return its answer once its head has come.
        ApiError for an error status (unless in OK), TransportError when no
        answer comes."""
        query = _query(params or {})
        target = path + ("?" + query if query else "")
        head = {"User-Agent": "imagekit", **(headers or {})}
        if json_body is not None:
            body = json.dumps(json_body).encode()
            head["Content-Type"] = "application/json"
        chunked = body is not None and not isinstance(body, (bytes, bytearray))
        limit = self.timeout if timeout is None else timeout
        for attempt in (1, 2):
            conn, reused = self._take(limit)
            try:
                try:
                    if conn.sock is None:
                        conn.connect()
                except TimeoutError as e:
                    raise ConnectTimeout(f"connect timed out ({e})") from e
                except OSError as e:
                    raise ConnectFailed(str(e) or type(e).__name__) from e
                conn.request(method, target, body=body, headers=head, encode_chunked=chunked)
                raw = conn.getresponse()
            except TransportError:
                conn.close()
                raise
            except (OSError, http.client.HTTPException) as e:
                conn.close()
                # a kept connection the engine closed meanwhile: once more on a new one
                if reused and attempt == 1 and not chunked and isinstance(
                        e, (http.client.RemoteDisconnected, BrokenPipeError,
                            ConnectionResetError)):
                    continue
                raise _transport(e) from e
            answer = Response(self, conn, raw)
            if answer.status >= 400 and answer.status not in ok:
                raise _api_error(answer)
            return answer
        raise AssertionError("unreachable")

    def _take(self, timeout: float) -> tuple[http.client.HTTPConnection, bool]:
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            return self._connect(timeout), False
        conn.timeout = timeout
        if conn.sock is not None:
            conn.sock.settimeout(timeout)
        return conn, True

    def _give_back(self, conn: http.client.HTTPConnection) -> None:
        with self._lock:
            if len(self._idle) < 8:
                self._idle.append(conn)
                return
        conn.close()

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def get_json(self, path: str, *args: str, params: Params | None = None,
                 timeout: float | None = None) -> Any:
        return self.request("GET", self.url(path, *args), params=params, timeout=timeout).json()

    def post_json(self, path: str, *args: str, params: Params | None = None, body: Any = None,
                  headers: dict[str, str] | None = None) -> Any:
        return self.request("POST", self.url(path, *args), params=params, json_body=body,
                            headers=headers).json()

    def delete(self, path: str, *args: str, params: Params | None = None) -> None:
        self.request("DELETE", self.url(path, *args), params=params).read()

    # -- the engine ------------------------------------------------------------------
    def ping(self, timeout: float | None = None) -> bool:
        return self.request("GET", self.url("/_ping"), timeout=timeout).read() == b"OK"

    def info(self) -> dict:
        return self.get_json("/info")

    def version(self) -> dict:
        return self.get_json("/version")

    # -- images ----------------------------------------------------------------------
    def inspect_image(self, ref: str) -> dict:
        return self.get_json("/images/{}/json", ref)

    def history(self, ref: str) -> list:
        return self.get_json("/images/{}/history", ref)

    def tag(self, image: str, repository: str, tag: str, force: bool = True) -> None:
        self.request("POST", self.url("/images/{}/tag", image),
                     params={"repo": repository, "tag": tag, "force": force}).read()

    def remove_image(self, ref: str, noprune: bool = False) -> None:
        self.delete("/images/{}", ref, params={"noprune": noprune})

    def build(self, context: IO[bytes], *, tag: str, nocache: bool = False, pull: bool = False,
              network_mode: str | None = None,
              buildargs: dict[str, str] | None = None) -> Iterator[Any]:
        """POST /build with CONTEXT (a tar) for the classic builder: its stream."""
        return self.request(
            "POST", self.url("/build"), body=context,
            params={"t": tag, "nocache": nocache, "rm": True, "forcerm": True, "pull": pull,
                    "networkmode": network_mode,
                    "buildargs": json.dumps(buildargs) if buildargs else None},
            headers={"Content-Type": "application/x-tar"}).json_stream()

    def import_image(self, data: IO[bytes] | Iterable[bytes], repository: str, tag: str,
                     changes: list[str]) -> Iterator[Any]:
        """POST /images/create?fromSrc=-: a root file system tar as an image; its stream."""
        return self.request("POST", self.url("/images/create"), body=data,
                            params={"fromSrc": "-", "repo": repository, "tag": tag,
                                    "changes": changes},
                            headers={"Content-Type": "application/x-tar"}).json_stream()

    def export(self, refs: list[str]) -> Response:
        """GET /images/get: the engine's export of REFS, a tar, being read."""
        return self.request("GET", self.url("/images/get"), params={"names": refs})

    def load_image(self, data: IO[bytes] | Iterable[bytes]) -> Iterator[Any]:
        return self.request("POST", self.url("/images/load"), body=data,
                            params={"quiet": True},
                            headers={"Content-Type": "application/x-tar"}).json_stream()

    def push(self, repository: str, tag: str, auth_header: str,
             platform: str | None = None) -> Iterator[Any]:
        return self.request("POST", self.url("/images/{}/push", repository),
                            params={"tag": tag, "platform": platform},
                            headers={"X-Registry-Auth": auth_header}).json_stream()

    def pull(self, repository: str, reference: str | None, auth_header: str) -> Iterator[Any]:
        return self.request("POST", self.url("/images/create"),
                            params={"fromImage": repository, "tag": reference},
                            headers={"X-Registry-Auth": auth_header}).json_stream()

    def inspect_distribution(self, ref: str, auth_header: str) -> dict:
        return self.request("GET", self.url("/distribution/{}/json", ref),
                            headers={"X-Registry-Auth": auth_header}).json()

    # -- containers, volumes, networks ----------------------------------------------
    def containers(self, *, all: bool = False, filters: dict | None = None) -> list:  # noqa: A002
        return self.get_json("/containers/json", params={"all": all,
                                                          "filters": _filters(filters)})

    def create_container(self, config: dict, name: str) -> dict:
        return self.post_json("/containers/create", params={"name": name}, body=config)

    def put_archive(self, cid: str, path: str, data: bytes) -> None:
        self.request("PUT", self.url("/containers/{}/archive", cid), params={"path": path},
                     body=data, headers={"Content-Type": "application/x-tar"}).read()

    def get_archive(self, cid: str, path: str) -> Response:
        return self.request("GET", self.url("/containers/{}/archive", cid),
                            params={"path": path})

    def start(self, cid: str) -> None:
        self.request("POST", self.url("/containers/{}/start", cid)).read()

    def inspect_container(self, cid: str) -> dict:
        return self.get_json("/containers/{}/json", cid)

    def logs(self, cid: str, follow: bool = True) -> Iterator[bytes]:
        return self.request("GET", self.url("/containers/{}/logs", cid),
                            params={"stdout": True, "stderr": True, "follow": follow}).frames()

    def wait(self, cid: str, timeout: float) -> dict:
        return self.request("POST", self.url("/containers/{}/wait", cid),
                            timeout=timeout).json()

    def remove_container(self, cid: str, *, force: bool = True, v: bool = True) -> None:
        self.delete("/containers/{}", cid, params={"force": force, "v": v})

    def exec_create(self, cid: str, cmd: list[str]) -> dict:
        return self.post_json("/containers/{}/exec", cid,
                              body={"Cmd": cmd, "AttachStdout": True, "AttachStderr": True})

    def exec_start(self, exec_id: str) -> bytes:
        """Run an exec to its end: its output, stdout and stderr together."""
        return b"".join(self.request("POST", self.url("/exec/{}/start", exec_id),
                                     json_body={"Detach": False, "Tty": False}).frames())

    def exec_inspect(self, exec_id: str) -> dict:
        return self.get_json("/exec/{}/json", exec_id)

    def volumes(self, *, filters: dict | None = None) -> dict:
        return self.get_json("/volumes", params={"filters": _filters(filters)})

    def create_volume(self, name: str, labels: dict[str, str]) -> dict:
        return self.post_json("/volumes/create", body={"Name": name, "Labels": labels})

    def remove_volume(self, name: str, force: bool = True) -> None:
        self.delete("/volumes/{}", name, params={"force": force})

    def networks(self, *, filters: dict | None = None) -> list:
        return self.get_json("/networks", params={"filters": _filters(filters)})

    def create_network(self, name: str, *, driver: str, internal: bool,
                       labels: dict[str, str]) -> dict:
        return self.post_json("/networks/create", body={"Name": name, "Driver": driver,
                                                        "Internal": internal, "Labels": labels})

    def remove_network(self, net: str) -> None:
        self.delete("/networks/{}", net)


def _query(params: Params) -> str:
    """PARAMS as a query string: None left out, booleans 1/0, lists repeated."""
    pairs: list[tuple[str, str]] = []
    for k, v in params.items():
        for x in (v if isinstance(v, (list, tuple)) else [v]):
            if x is None:
                continue
            pairs.append((k, ("1" if x else "0") if isinstance(x, bool) else str(x)))
    return urlencode(pairs)


def _filters(filters: dict | None) -> str | None:
    if not filters:
        return None
    return json.dumps({k: v if isinstance(v, list) else [v] for k, v in filters.items()})


def _api_error(answer: Response) -> ApiError:
    """An error answer as ApiError, with the engine's message (its JSON
    `message`, else the first bytes of its body)."""
    status = answer.status
    try:
        body = answer.read(ERROR_BYTES)
        if len(body) < ERROR_BYTES:
            answer.close()          # read to its end: the connection is kept
        else:
            answer._drop()
    except TransportError:
        body = b""
    text = body.decode("utf-8", errors="replace").strip()
    try:
        doc = json.loads(text)
        if isinstance(doc, dict) and doc.get("message"):
            text = str(doc["message"])
    except ValueError:
        pass
    kind = NotFound if status == 404 else ApiError
    return kind(status, text or http.client.responses.get(status, "error"))
