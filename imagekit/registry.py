"""imagekit's own push path: the image read once from the engine's export
(imagekit.layers), each layer compressed once, and the same blobs uploaded to
every destination at once through the registry HTTP API (OCI distribution
spec, written directly against it with `requests`).

Per destination and blob: HEAD first (a blob the repository holds is never
sent); inside one registry, a blob another destination of this push uploaded
is mounted (POST ?mount=&from=) instead of sent; otherwise a chunked upload
(PATCH with Content-Range) that, after a dropped connection or a registry
restart, asks the registry where it stands (GET on the upload URL -> Range) and
goes on from there, or starts the blob again when the upload session is gone
(404 / BLOB_UPLOAD_INVALID; distribution cancels a session whose stored size is
not the offset its last answer gave, and forgets every session when it
restarts without a fixed `http.secret`). Then the manifest is PUT and its
digest read back from the registry (HEAD) and compared with the sha256 of the
bytes sent.

Auth: the registry's own 401 challenge decides. Basic: credentials on every
request to that registry. Bearer: a token from the challenge's realm for the
repository scopes, cached per scope set, fetched again shortly before it
expires and on a 401 (a token can lapse during a long upload). Credential rule:
a username/password or identity token is sent only to the registry host it was
given for and to the token realm named in that registry's own 401 challenge
(the delegation the token flow defines), and never in clear over plain HTTP
to a host other than localhost; a bearer token only to the registry host.
Secrets never appear in an event, an exception message or a repr.

Plain HTTP for localhost / 127.0.0.1 / ::1 registries (as the engine does),
HTTPS for every other.

Every wait is bounded by what it waits for: a connection in CONNECT seconds,
the ping, a token, a HEAD or any other small request in ANSWER seconds, a
blob's bytes by progress (STALL seconds without a byte moving); a request
sequence is tried at most RETRIES + 1 times in a row without progress, and no
retry starts later than RETRY_WINDOW seconds after a destination's first
failure. Before the export is read, each registry is pinged and the
credentials are tried (Basic: against /v2/; Bearer: a token for the push's
scopes), so that a wrong password or a registry that does not answer costs
seconds, not the export. What a registry or token service says goes through
peer_text (one bounded line) and the redaction of every secret held."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import queue
import re
import shutil
import socket
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import requests
import requests.adapters
import urllib3

from .destinations import credential_problem
from .errors import AuthError, DirectPushUnsupported, ImagekitError, Interrupted, PushError
from .layers import Blob, Compressing, Format, Image, LayerReady, get_format, read_export
from .peer import keep_secret, peer_text, redact
from .reference import char_name

CHUNK = 32 * 1024 * 1024     # bytes per PATCH; a resume goes on from the last one acknowledged
PIECE = 1024 * 1024          # bytes handed to the socket at a time
JOBS = 3                     # blobs uploaded at once per destination
RETRIES = 4                  # tries in a row without progress, per request sequence
BACKOFF = 1.0                # seconds before the first retry; doubles, at most BACKOFF_MAX
BACKOFF_MAX = 16.0
CONNECT = 10.0               # seconds to open a connection (TCP and TLS)
ANSWER = 10.0                # seconds for the answer to a small request (ping, token, HEAD, POST)
STALL = 60.0                 # seconds a blob transfer may go without a byte moving
RETRY_WINDOW = 300.0         # no retry starts this long after a destination's first failure
PING_TRIES = 2               # a registry that does not answer its ping twice is not retried
SLOW_RETRIES = 1             # retries in a row of a request that went unanswered
TIMEOUT = (CONNECT, ANSWER)
TOKEN_MARGIN = 10.0          # refresh a token this many seconds before it expires
LOOPBACK = re.compile(r"^(?:localhost|127(?:\.\d{1,3}){3}|\[::1\]|::1|[a-z0-9.-]+\.localhost)"
                      r"(?::\d+)?$", re.IGNORECASE)
DOCKER_HUB = {"docker.io", "index.docker.io", "registry-1.docker.io"}


class TransientPushError(PushError):
    """A failure that trying again may cure (connection lost, 5xx, 429):
    the caller's retry loop retries these and nothing else."""

    transient = True
    slow = False          # the peer accepted and did not answer in time (not refused)

    @classmethod
    def timed_out(cls, message: str) -> TransientPushError:
        e = cls(message)
        e.slow = True
        return e


# -- credentials and destinations ---------------------------------------------

@dataclass(frozen=True)
class Auth:
    """Credentials for one registry host; the secrets never show in a repr."""

    username: str = ""
    password: str = field(default="", repr=False)
    identity_token: str = field(default="", repr=False)

    def __post_init__(self) -> None:
        keep_secret(self.password, self.username)
        keep_secret(self.identity_token)

    @classmethod
    def from_docker(cls, config: Mapping | None) -> Auth | None:
        """From a docker auth config dict (username/password, IdentityToken, or
        the base64 `auth` field of a Docker config file)."""
        if not config:
            return None
        get = {str(k).lower(): v for k, v in config.items()}
        user, pw = str(get.get("username") or ""), str(get.get("password") or "")
        token = str(get.get("identitytoken") or "")
        if not (user or pw) and get.get("auth"):
            with contextlib.suppress(ValueError):
                user, _, pw = base64.b64decode(str(get["auth"])).decode().partition(":")
        if not (user or pw or token):
            return None
        return cls(user, pw, token)

    def problem(self) -> str:
        """Why these credentials cannot be sent ("" when they can)."""
        return credential_problem(self.username, self.password, self.identity_token)


@dataclass(frozen=True)
class Target:
    """One destination: REGISTRY/REPOSITORY:TAG (repository includes the namespace)."""

    registry: str
    repository: str
    tag: str

    @property
    def ref(self) -> str:
        return f"{self.registry}/{self.repository}:{self.tag}"


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")
# RFC 6750's b64token: what a bearer token may hold in an Authorization header
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MAX_TOKEN = 64 * 1024
MAX_BODY = 1024 * 1024       # bytes of an answer's body read at most (errors, tokens)


def is_loopback(host: str) -> bool:
    return bool(LOOPBACK.match(host))


def _api_host(registry: str) -> str:
    return "registry-1.docker.io" if registry in DOCKER_HUB else registry


def repo_path(registry: str, repository: str) -> str:
    """The repository's path in the registry's API: Docker Hub's official
    images live under `library/`."""
    if registry in DOCKER_HUB and "/" not in repository:
        return f"library/{repository}"
    return repository


# -- events --------------------------------------------------------------------

@dataclass
class BlobProgress:
    """Bytes of one blob sent to one destination so far (per PATCH, or a piece)."""

    target: str
    digest: str
    sent: int
    total: int


@dataclass
class BlobDone:
    """A blob is in the destination: how = uploaded | exists | mounted."""

    target: str
    digest: str
    size: int
    how: str
    source: str = ""     # mounted: the repository it came from
    sent: int = 0        # bytes this blob took on the wire (retries included)


@dataclass
class Resumed:
    """An upload goes on at `offset` (the registry's own Range) after a failure;
    offset 0 with restarted=True: the session was gone, the blob starts again."""

    target: str
    digest: str
    offset: int
    restarted: bool = False


@dataclass
class Retrying:
    target: str
    what: str
    attempt: int
    wait: float
    reason: str


@dataclass
class ExportRead:
    """The export was read through: every layer compressed once, or sent as
    the engine stored it (`stored` layers; `raw_size`: bytes compressed)."""

    image_id: str
    layers: int
    raw_size: int
    compressed_size: int
    seconds: float
    stored: int = 0


@dataclass
class TargetPushed:
    target: str
    digest: str          # the manifest digest, as the registry answers it
    bytes_sent: int      # request bodies handed to the socket for this destination
    seconds: float


@dataclass
class TargetFailed:
    target: str
    error: PushError = field(repr=False)
    bytes_sent: int = 0
    checked: bool = False    # failed the registry check, after its own retries, before any upload

    @property
    def message(self) -> str:
        return self.error.message


@dataclass
class TargetResult:
    target: Target
    digest: str = ""
    bytes_sent: int = 0
    seconds: float = 0.0
    error: PushError | None = None


@dataclass
class PushSummary:
    """The last event: every destination's result and where the time went."""

    image_id: str
    manifest_digest: str
    media_type: str
    compressed_size: int
    results: list[TargetResult]
    export_seconds: float        # reading + compressing, from the first byte asked to the last
    seconds: float
    image: Image | None = field(default=None, repr=False)   # what was read, to push again

    @property
    def ok(self) -> bool:
        return all(r.error is None for r in self.results)


# -- the registry client -------------------------------------------------------

@dataclass
class _Challenge:
    scheme: str                       # basic | bearer
    params: dict[str, str]


_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"]+))')


def parse_challenge(header: str) -> _Challenge | None:
    """`Bearer realm="…",service="…",scope="…"` or `Basic realm="…"`."""
    m = re.match(r"\s*([A-Za-z]+)\s*(.*)$", header or "", re.S)
    if not m:
        return None
    params = {k.lower(): quoted.replace('\\"', '"') if quoted or not bare else bare
              for k, quoted, bare in _PARAM.findall(m[2])}
    return _Challenge(m[1].lower(), params)


def _error_text(resp: requests.Response) -> str:
    """The registry's own words: its `errors` list, else the status line."""
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        if len(resp.content) <= 1024 * 1024:
            errors = resp.json().get("errors") or []
            parts = [f"{e.get('code', '')}: {e.get('message', '')}".strip(": ")
                     for e in errors[:5] if isinstance(e, dict)]
            if parts:
                return f"{resp.status_code} {peer_text('; '.join(parts))}"
    line = f"{resp.status_code} {peer_text(resp.reason or '', 80)}".strip()
    body = getattr(resp, "_content", None) or b""
    if isinstance(body, bytes) and body.strip():
        line += f": {peer_text(body, 200)}"
    return line


def _codes(resp: requests.Response) -> set[str]:
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        if len(resp.content) <= 1024 * 1024:
            return {str(e.get("code"))[:64] for e in (resp.json().get("errors") or [])[:20]}
    return set()


class _Body:
    """A request body read from a file range, counted as it goes to the socket
    (a length, so requests sends Content-Length, not chunked encoding)."""

    def __init__(self, blob: Blob, start: int, length: int, count: Callable[[int], None],
                 cancel: threading.Event):
        self.blob, self.start, self.length = blob, start, length
        self.count, self.cancel = count, cancel

    def __len__(self) -> int:
        return self.length

    def __iter__(self) -> Iterator[bytes]:
        with self.blob.open() as f:
            f.seek(self.start)
            left = self.length
            while left > 0:
                if self.cancel.is_set():
                    raise Interrupted("push cancelled")
                data = f.read(min(PIECE, left))
                if not data:
                    raise PushError(f"blob {self.blob.digest} is shorter than its size")
                left -= len(data)
                self.count(len(data))
                yield data


class Registry:
    """The distribution API of one registry host, shared by every destination
    on it (thread-safe: one HTTP session per thread, one token cache)."""

    def __init__(self, host: str, auth: Auth | None = None, *, scheme: str | None = None,
                 timeout: tuple[float, float] = TIMEOUT, clock: Callable[[], float] = time.monotonic):
        self.host = host
        self.api_host = _api_host(host)
        self.scheme = scheme or ("http" if is_loopback(host) else "https")
        self.base = f"{self.scheme}://{self.api_host}"
        self.auth = auth
        self.timeout = timeout
        self.clock = clock
        self._local = threading.local()
        self._lock = threading.Lock()
        self._challenge: _Challenge | None = None
        self._pinged = False
        self._tokens: dict[frozenset, tuple[str, float]] = {}
        self.token_fetches = 0

    # -- plumbing
    @property
    def session(self) -> requests.Session:
        s = getattr(self._local, "session", None)
        if s is None:
            s = requests.Session()
            s.auth = lambda r: r            # never ~/.netrc: only the credentials given here
            s.headers["User-Agent"] = "imagekit"
            for scheme in ("http://", "https://"):
                s.mount(scheme, _WatchedAdapter())
            self._local.session = s
        return s

    def redact(self, text: str) -> str:
        """TEXT with every credential imagekit holds written as *** (peer.redact:
        Auth and each token are registered when they are made)."""
        return redact(text)

    def url(self, path_or_url: str) -> str:
        return urllib.parse.urljoin(self.base + "/", path_or_url)

    def _same_host(self, url: str) -> bool:
        u = urllib.parse.urlsplit(url)
        return u.scheme == self.scheme and u.netloc.lower() == self.api_host.lower()

    def _send(self, method: str, url: str, *, big: bool = False, **kw) -> requests.Response:
        """One HTTP request, bounded: a small one has ANSWER seconds for all of
        it (connect included: a registry that trickles is cut off), a big one
        (a blob's bytes) CONNECT to connect, STALL seconds per socket
        operation, and ANSWER for its answer's body. At most MAX_BODY bytes
        of any answer are read (a registry that floods costs that much)."""
        what = f"{method} {urllib.parse.urlsplit(url).path} on {self.host}"
        fired = threading.Event()
        session = self.session
        box: dict = {}                     # the connection in use, for the watchdog
        _watch.box = box

        def cut_off() -> None:
            fired.set()
            sock = getattr(box.get("conn"), "sock", None)
            with contextlib.suppress(Exception):
                if sock is not None:
                    sock.shutdown(socket.SHUT_RDWR)   # wakes a read blocked on a trickle
            with contextlib.suppress(Exception):
                session.close()

        timer = None if big else threading.Timer(ANSWER, cut_off)
        if timer is not None:
            timer.daemon = True
            timer.start()
        try:
            try:
                resp = session.request(method, url, timeout=(CONNECT, STALL if big else ANSWER),
                                       stream=True, **kw)
            except requests.RequestException as e:
                if fired.is_set():
                    raise TransientPushError.timed_out(f"{what}: no complete answer within "
                                                       f"{ANSWER:g}s") from None
                if isinstance(e, requests.Timeout):
                    raise TransientPushError.timed_out(f"{what}: {self._reason(e, big)}") from None
                raise TransientPushError(f"{what}: {self._reason(e, big)}") from None
            if timer is None:
                timer = threading.Timer(ANSWER, cut_off)
                timer.daemon = True
                timer.start()
            data = bytearray()
            try:
                for piece in resp.iter_content(64 * 1024):
                    data += piece
                    if len(data) > MAX_BODY:
                        break
            except (requests.RequestException, OSError, ValueError, AttributeError) as e:
                if fired.is_set() or isinstance(e, requests.Timeout):
                    raise TransientPushError.timed_out(f"{what}: no complete answer within "
                                                       f"{ANSWER:g}s") from None
                raise TransientPushError(f"{what}: {self._reason(e)}") from None
            finally:
                if len(data) > MAX_BODY or fired.is_set():
                    resp.close()
                    self._local.session = None
            resp._content = bytes(data[:MAX_BODY])          # what .json() and .text read
            resp._content_consumed = True
            return resp
        finally:
            if timer is not None:
                timer.cancel()
            if fired.is_set():
                self._local.session = None

    def _reason(self, e: Exception, big: bool = False) -> str:
        text = " ".join(str(e).split()).lower()
        reason = next((w for w in ("connection refused", "connection reset", "timed out",
                                   "name or service not known", "connection aborted",
                                   "remote end closed connection", "certificate verify failed")
                       if w in text), "")
        if reason == "timed out":
            return (f"nothing moved for {STALL:g}s" if big else
                    f"no answer in time (limits: connect {CONNECT:g}s, answer {ANSWER:g}s)")
        return reason or f"{type(e).__name__}: {peer_text(self.redact(str(e)), 200)}"

    def ping(self) -> None:
        """GET /v2/: learn how the registry wants to be authenticated. A
        registry that does not answer it in time, PING_TRIES times, is
        unreachable: not worth reading the export for."""
        for attempt in range(PING_TRIES):
            try:
                resp = self._send("GET", self.url("/v2/"), allow_redirects=False)
                break
            except TransientPushError as e:
                if attempt + 1 >= PING_TRIES:
                    # refused or reset: a registry restarting, worth the push's own retries;
                    # accepted and never answered: no better in seconds, so the push ends
                    err = PushError if e.slow else TransientPushError
                    raise err(f"{self.host} did not answer the registry API's ping "
                              f"(GET /v2/, tried {PING_TRIES} times): {e.message}") from None
                time.sleep(1.0)
        if resp.status_code == 401:
            self._challenge = parse_challenge(resp.headers.get("WWW-Authenticate", "")[:4096])
        elif resp.status_code >= 500 or resp.status_code == 429:
            raise TransientPushError(f"{self.host}: /v2/ answered {_error_text(resp)}")
        elif resp.status_code not in (200, 401):
            raise DirectPushUnsupported(f"{self.host} does not speak the registry API v2 "
                            f"(GET /v2/ answered {resp.status_code})")
        self._pinged = True

    def check_auth(self, scopes: Iterable[str]) -> None:
        """Before anything is read or sent: the registry answers, and takes
        the credentials (Basic: GET /v2/ with them; Bearer: a token for these
        scopes). Raises AuthError (refused, or malformed), PushError or
        TransientPushError."""
        if self.auth is not None and self.auth.problem():
            raise AuthError(f"{self.host}: credentials not sent: {self.auth.problem()}")
        self._ensure_ping()
        ch = self._challenge
        if ch is None:
            return
        if ch.scheme == "basic":
            header = self._authorization(frozenset(scopes))
            resp = self._send("GET", self.url("/v2/"), headers={"Authorization": header or ""},
                              allow_redirects=False)
            if resp.status_code in (401, 403):
                raise AuthError(f"{self.host}: the registry refused the credentials given: "
                                f"{self.redact(_error_text(resp))}")
            if resp.status_code >= 500 or resp.status_code == 429:
                raise TransientPushError(f"{self.host}: /v2/ answered {_error_text(resp)}")
        elif ch.scheme == "bearer":
            self._token(frozenset(scopes))
        else:
            self._authorization(frozenset(scopes))      # raises: a scheme not spoken here

    def _ensure_ping(self) -> None:
        if not self._pinged:
            with self._lock:
                if not self._pinged:
                    self.ping()

    # -- auth
    def _authorization(self, scopes: frozenset) -> str | None:
        ch = self._challenge
        if ch is None:
            return None
        if ch.scheme == "basic":
            a = self.auth
            if not (a and a.username and a.password):
                raise AuthError(f"{self.host} asks for a username and password, and none was given")
            if self.scheme == "http" and not is_loopback(self.host):
                raise AuthError(f"{self.host}: refusing to send a password over plain HTTP")
            return "Basic " + base64.b64encode(f"{a.username}:{a.password}".encode()).decode()
        if ch.scheme == "bearer":
            return f"Bearer {self._token(scopes)}"
        raise DirectPushUnsupported(f"{self.host} asks for {ch.scheme} authentication, which "
                                    "imagekit's own push path does not speak")

    def _token(self, scopes: frozenset, fresh: bool = False) -> str:
        with self._lock:
            held = self._tokens.get(scopes)
            if held and not fresh and self.clock() < held[1]:
                return held[0]
            token, lifetime = self._fetch_token(scopes)
            self._tokens[scopes] = (token, self.clock() + max(lifetime - TOKEN_MARGIN, lifetime / 2))
            return token

    def _fetch_token(self, scopes: frozenset) -> tuple[str, float]:
        ch = self._challenge
        assert ch is not None
        realm = ch.params.get("realm", "")
        u = urllib.parse.urlsplit(realm)
        if u.scheme not in ("http", "https") or not u.netloc:
            raise AuthError(f"{self.host}: its token realm {realm!r} is not an http(s) URL")
        a = self.auth
        if a and u.scheme == "http" and not is_loopback(u.netloc):
            raise AuthError(f"{self.host}: refusing to send credentials to the token realm "
                            f"{u.netloc} over plain HTTP")
        scope_list = sorted(scopes)
        service = ch.params.get("service", "")
        self.token_fetches += 1
        if a and a.identity_token:
            form = {"grant_type": "refresh_token", "refresh_token": a.identity_token,
                    "service": service, "scope": " ".join(scope_list), "client_id": "imagekit"}
            resp = self._send("POST", realm, data=form, allow_redirects=False)
        else:
            params: dict = {"scope": scope_list}
            if service:
                params["service"] = service
            headers = {}
            if a and a.username and a.password:
                params["account"] = a.username
                headers["Authorization"] = "Basic " + base64.b64encode(
                    f"{a.username}:{a.password}".encode()).decode()
            resp = self._send("GET", realm, params=params, headers=headers, allow_redirects=False)
        if resp.status_code in (401, 403):
            who = "the credentials given" if a else "no credentials (none were given)"
            raise AuthError(f"{self.host}: the token service refused {who}: "
                            f"{self.redact(_error_text(resp))}")
        if resp.status_code >= 500 or resp.status_code == 429:
            raise TransientPushError(f"{self.host}: the token service answered "
                                     f"{self.redact(_error_text(resp))}")
        if resp.status_code != 200:
            raise AuthError(f"{self.host}: the token service answered {self.redact(_error_text(resp))}")
        try:
            body = resp.json()
            token = str(body.get("token") or body.get("access_token") or "")
        except (ValueError, AttributeError, TypeError):
            body, token = {}, ""
        try:
            lifetime = float(body.get("expires_in") or 60)
        except (ValueError, TypeError, OverflowError):
            lifetime = 60.0
        if not token:
            raise AuthError(f"{self.host}: the token service gave no token")
        keep_secret(token)
        if len(token) > MAX_TOKEN or not _TOKEN.fullmatch(token):
            bad = _CONTROL.search(token)
            why = f"it contains {char_name(bad.group())}" if bad else \
                f"it is {len(token)} characters long" if len(token) > MAX_TOKEN else \
                "it holds characters a bearer token cannot"
            raise AuthError(f"{self.host}: the token service at {u.netloc} gave a malformed "
                            f"token ({why}); not sent, not retried")
        if lifetime != lifetime or lifetime <= 0:       # NaN or nonsense: a minute
            lifetime = 60.0
        return token, min(max(lifetime, 1.0), 24 * 3600.0)

    def request(self, method: str, url: str, scopes: Iterable[str], *, ok: Iterable[int],
                headers: Mapping[str, str] | None = None, body: Callable[[], object] | None = None,
                what: str = "", big: bool = False) -> requests.Response:
        """One API request with auth; on 401, authenticate again once (a new
        challenge, a fresh token) and resend. Returns a response whose status is
        in `ok`; raises AuthError, TransientPushError or PushError otherwise."""
        self._ensure_ping()
        url = self.url(url)
        scopes = frozenset(scopes)
        ok = set(ok)
        for attempt in range(2):
            h = dict(headers or {})
            if self._same_host(url):
                auth = self._authorization(scopes) if attempt == 0 else self._reauth(scopes)
                if auth:
                    h["Authorization"] = auth
            resp = self._send(method, url, headers=h, data=body() if body else None,
                              allow_redirects=method in ("GET", "HEAD"), big=big)
            if resp.status_code in ok:
                return resp
            if resp.status_code == 401 and attempt == 0:
                new = parse_challenge(resp.headers.get("WWW-Authenticate", ""))
                if new is not None:
                    self._challenge = new
                continue
            break
        text = self.redact(_error_text(resp))
        label = what or f"{method} {urllib.parse.urlsplit(url).path}"
        if resp.status_code in (401, 403):
            hint = "" if self.auth else " (no credentials were given for this registry)"
            raise AuthError(f"{self.host}: {label}: {text}{hint}")
        if resp.status_code >= 500 or resp.status_code in (408, 429):
            raise TransientPushError(f"{self.host}: {label}: {text}")
        err = PushError(f"{self.host}: {label}: {text}")
        err.status = resp.status_code  # type: ignore[attr-defined]
        err.codes = _codes(resp)       # type: ignore[attr-defined]
        raise err

    def _reauth(self, scopes: frozenset) -> str | None:
        ch = self._challenge
        if ch is not None and ch.scheme == "bearer":
            return f"Bearer {self._token(scopes, fresh=True)}"
        return self._authorization(scopes)

    # -- blobs
    @staticmethod
    def scopes(repo: str, *sources: str) -> list[str]:
        return [f"repository:{repo}:pull,push", *(f"repository:{s}:pull" for s in sources)]

    def blob_exists(self, repo: str, digest: str) -> bool:
        resp = self.request("HEAD", f"/v2/{repo}/blobs/{digest}", self.scopes(repo), ok=(200, 404),
                            what=f"HEAD blob {digest[:19]}")
        return resp.status_code == 200

    def start_upload(self, repo: str, mount: str = "", source: str = "") -> tuple[str, bool]:
        """POST an upload; with mount/source, ask to mount from another
        repository first. Returns (upload URL, mounted)."""
        query = "?" + urllib.parse.urlencode({"mount": mount, "from": source}) if mount else ""
        resp = self.request("POST", f"/v2/{repo}/blobs/uploads/{query}",
                            self.scopes(repo, *([source] if source else [])), ok=(201, 202),
                            headers={"Content-Length": "0"}, what="start upload")
        if resp.status_code == 201:
            return "", True
        location = resp.headers.get("Location")
        if not location:
            raise PushError(f"{self.host}: the upload was started without a Location")
        return self.url(location), False

    def upload_offset(self, repo: str, url: str) -> int | None:
        """Where an upload session stands (the registry's Range), or None when
        the session is gone (404, or invalid: start the blob again)."""
        try:
            resp = self.request("GET", url, self.scopes(repo), ok=(204, 200), what="upload status")
        except PushError as e:
            if isinstance(e, (AuthError, TransientPushError)):
                raise
            return None
        return parse_range(resp.headers.get("Range", ""))

    def patch(self, repo: str, url: str, blob: Blob, start: int, length: int,
              count: Callable[[int], None], cancel: threading.Event) -> str:
        """Send bytes [start, start+length) of the blob; returns the next upload URL."""
        resp = self.request(
            "PATCH", url, self.scopes(repo), ok=(202, 204),
            headers={"Content-Type": "application/octet-stream", "Content-Length": str(length),
                     "Content-Range": f"{start}-{start + length - 1}"},
            body=lambda: _Body(blob, start, length, count, cancel), what="upload chunk", big=True)
        return self.url(resp.headers.get("Location") or url)

    def finish_upload(self, repo: str, url: str, blob: Blob, body_from: int | None,
                      count: Callable[[int], None], cancel: threading.Event) -> None:
        """PUT ?digest=: commit the upload (sending the bytes from `body_from`
        with it, for a blob sent in one request)."""
        parts = urllib.parse.urlsplit(url)
        query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True) + [("digest", blob.digest)]
        put_url = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query)))
        if body_from is None:
            headers, body = {"Content-Length": "0"}, None
        else:
            n = blob.size - body_from
            headers = {"Content-Type": "application/octet-stream", "Content-Length": str(n)}

            def body() -> _Body:
                return _Body(blob, body_from, n, count, cancel)
        resp = self.request("PUT", put_url, self.scopes(repo), ok=(201, 204), headers=headers,
                            body=body, what=f"commit blob {blob.digest[:19]}",
                            big=body_from is not None)
        got = resp.headers.get("Docker-Content-Digest")
        if got and got != blob.digest:
            raise PushError(f"{self.host}: the registry stored {got} for blob {blob.digest}")

    # -- manifests
    def put_manifest(self, repo: str, tag: str, data: bytes, media_type: str) -> str:
        resp = self.request("PUT", f"/v2/{repo}/manifests/{tag}", self.scopes(repo), ok=(200, 201),
                            headers={"Content-Type": media_type}, body=lambda: data,
                            what="PUT manifest")
        return resp.headers.get("Docker-Content-Digest", "")

    def manifest_digest(self, repo: str, reference: str, media_type: str) -> str:
        resp = self.request("HEAD", f"/v2/{repo}/manifests/{reference}", self.scopes(repo),
                            ok=(200, 404), headers={"Accept": media_type}, what="HEAD manifest")
        return resp.headers.get("Docker-Content-Digest", "") if resp.status_code == 200 else ""


_watch = threading.local()


def _watched(pool_class):
    class Watched(pool_class):
        """Remembers, for the thread that asked, the connection it is given,
        so that a request's watchdog can shut that socket."""

        def _get_conn(self, timeout=None):
            conn = super()._get_conn(timeout)
            box = getattr(_watch, "box", None)
            if box is not None:
                box["conn"] = conn
            return conn
    return Watched


class _WatchedAdapter(requests.adapters.HTTPAdapter):
    POOLS = {"http": _watched(urllib3.HTTPConnectionPool),
             "https": _watched(urllib3.HTTPSConnectionPool)}

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(self.POOLS)


def parse_range(header: str) -> int | None:
    """The next offset from a `Range: 0-N` answer (N is the last byte held;
    distribution answers 0-0 for an empty upload)."""
    m = re.match(r"^\s*(?:bytes=)?0-(\d+)\s*$", header or "")
    if not m:
        return None
    end = int(m[1])
    return 0 if end == 0 else end + 1


# -- the push ------------------------------------------------------------------

@dataclass
class _Retry:
    retries: int
    backoff: float
    sleep: Callable[[float], None]


class _Holdings:
    """Which repositories of one registry got a blob in this push, so another
    destination on the same registry mounts it instead of sending it again."""

    def __init__(self):
        self.lock = threading.Lock()
        self.where: dict[str, tuple[str, threading.Event, list[bool]]] = {}

    def claim(self, digest: str, repo: str) -> tuple[str, threading.Event, list[bool]] | None:
        """None: this repository uploads it (others wait); else (source repo,
        done event, [succeeded]) of the destination that does."""
        with self.lock:
            held = self.where.get(digest)
            if held is None or held[0] == repo:
                if held is None:
                    self.where[digest] = (repo, threading.Event(), [False])
                return None
            return held

    def record(self, digest: str, repo: str) -> None:
        """The repository holds the blob (it was there, or was mounted)."""
        with self.lock:
            if digest not in self.where:
                done = threading.Event()
                done.set()
                self.where[digest] = (repo, done, [True])

    def settle(self, digest: str, repo: str, ok: bool) -> None:
        with self.lock:
            held = self.where.get(digest)
            if held and held[0] == repo:
                held[2][0] = ok
                held[1].set()
                if not ok:
                    del self.where[digest]


class _Dest:
    def __init__(self, target: Target, registry: Registry, holdings: _Holdings, jobs: int):
        self.target = target
        self.ref = target.ref
        self.repo = repo_path(target.registry, target.repository)
        self.registry = registry
        self.holdings = holdings
        self.pool = ThreadPoolExecutor(jobs, thread_name_prefix="upload")
        self.futures: list[Future] = []
        self.sent = 0
        self.lock = threading.Lock()
        self.error: PushError | None = None
        self.started = time.monotonic()
        self.first_failure: float | None = None

    def may_retry(self, attempt: int, retries: int, cancel: threading.Event,
                  slow: bool = False) -> bool:
        """Whether a failed request sequence is tried again: at most RETRIES
        times in a row (once when it went unanswered: each such try costs a
        whole time limit), and none after RETRY_WINDOW seconds of failing."""
        now = time.monotonic()
        if self.first_failure is None:
            self.first_failure = now
        return attempt <= (min(retries, SLOW_RETRIES) if slow else retries) and \
            not cancel.is_set() and now - self.first_failure < RETRY_WINDOW

    def count(self, n: int) -> None:
        with self.lock:
            self.sent += n


class _Push:
    def __init__(self, targets: Sequence[Target], auths: Mapping[str, Auth | None], fmt: Format,
                 chunk: int, jobs: int, retry: _Retry, registries: Mapping[str, Registry] | None):
        self.events: queue.Queue = queue.Queue()
        self.cancel = threading.Event()
        self.fmt, self.chunk, self.retry = fmt, chunk, retry
        self.registries: dict[str, Registry] = dict(registries or {})
        holdings: dict[str, _Holdings] = {}
        self.dests: list[_Dest] = []
        for t in targets:
            if t.registry not in self.registries:
                self.registries[t.registry] = Registry(t.registry, auths.get(t.registry))
            h = holdings.setdefault(t.registry, _Holdings())
            self.dests.append(_Dest(t, self.registries[t.registry], h, jobs))
        self.refs: dict[str, int] = {}
        self.refs_lock = threading.Lock()
        self.keep = False            # the caller keeps the blobs (to push again from them)
        self.failed_early: list[_Dest] = []

    def preflight(self) -> None:
        """Each registry answers and takes its credentials before the export
        is read: a destination that fails here is done (TargetFailed now)."""
        by_host: dict[str, list[_Dest]] = {}
        for d in self.dests:
            by_host.setdefault(d.target.registry, []).append(d)
        for dests in by_host.values():
            reg = dests[0].registry
            scopes = sorted({s for d in dests for s in reg.scopes(d.repo)})
            try:
                self._retrying(dests[0], "registry check",
                               lambda r=reg, s=scopes: r.check_auth(s))
            except ImagekitError as e:
                for d in dests:
                    self._fail(d, e)
                    self.emit(TargetFailed(d.ref, d.error, 0, checked=True))  # type: ignore[arg-type]
                    self.failed_early.append(d)
            except Exception as e:  # noqa: BLE001 - this registry's failure, not the push's
                for d in dests:
                    self._fail(d, PushError(f"{type(e).__name__}: {e}"))
                    self.emit(TargetFailed(d.ref, d.error, 0, checked=True))  # type: ignore[arg-type]
                    self.failed_early.append(d)
        self.dests = [d for d in self.dests if d not in self.failed_early]

    def emit(self, event: object) -> None:
        self.events.put(event)

    # one blob, one destination
    def schedule(self, blob: Blob) -> None:
        with self.refs_lock:
            self.refs[blob.digest] = self.refs.get(blob.digest, 0) + len(self.dests)
        for d in self.dests:
            d.futures.append(d.pool.submit(self._blob_task, d, blob))

    def _release(self, blob: Blob) -> None:
        with self.refs_lock:
            self.refs[blob.digest] -= 1
            last = self.refs[blob.digest] == 0
        if last and blob.path is not None and not self.keep:
            with contextlib.suppress(OSError):
                blob.path.unlink()

    def _blob_task(self, d: _Dest, blob: Blob) -> None:
        try:
            if d.error is None and not self.cancel.is_set():
                self._ensure_blob(d, blob)
        except ImagekitError as e:
            self._fail(d, e)
        except Exception as e:  # noqa: BLE001 - reported as this destination's failure
            self._fail(d, PushError(f"{type(e).__name__}: {e}"))
        finally:
            self._release(blob)

    def _fail(self, d: _Dest, e: ImagekitError) -> None:
        with d.lock:
            if d.error is None:
                msg = redact(" ".join(e.message.split()))
                d.error = type(e)(msg) if isinstance(e, PushError) else PushError(msg)
                d.error.slow = getattr(e, "slow", False)  # type: ignore[attr-defined]

    def _retrying(self, d: _Dest, what: str, fn: Callable[[], object]) -> object:
        attempt = 0
        while True:
            try:
                return fn()
            except TransientPushError as e:
                attempt += 1
                if not d.may_retry(attempt, self.retry.retries, self.cancel, e.slow):
                    raise
                wait = min(self.retry.backoff * 2 ** (attempt - 1), BACKOFF_MAX)
                self.emit(Retrying(d.ref, what, attempt, wait, e.message))
                self.retry.sleep(wait)

    def _ensure_blob(self, d: _Dest, blob: Blob) -> None:
        reg, repo = d.registry, d.repo
        if self._retrying(d, "check", lambda: reg.blob_exists(repo, blob.digest)):
            d.holdings.record(blob.digest, repo)
            self.emit(BlobDone(d.ref, blob.digest, blob.size, "exists"))
            return
        url = ""
        held = d.holdings.claim(blob.digest, repo)
        if held is not None:
            source, done, succeeded = held
            while not done.wait(0.5):
                if self.cancel.is_set() or d.error is not None:
                    return
            if succeeded[0]:
                url, mounted = self._retrying(d, "mount", lambda: reg.start_upload(
                    repo, blob.digest, source))  # type: ignore[misc]
                if mounted:
                    d.holdings.record(blob.digest, repo)
                    self.emit(BlobDone(d.ref, blob.digest, blob.size, "mounted", source))
                    return
            held = d.holdings.claim(blob.digest, repo)  # upload it here after all
        ok = False
        try:
            self._upload(d, blob, url)
            ok = True
        finally:
            if held is None:
                d.holdings.settle(blob.digest, repo, ok)

    def _upload(self, d: _Dest, blob: Blob, url: str = "") -> None:
        reg, repo = d.registry, d.repo
        sent = [0]

        def count(n: int) -> None:
            sent[0] += n
            d.count(n)

        offset = 0
        attempt = 0
        while True:
            try:
                if not url:
                    url, mounted = reg.start_upload(repo)
                    offset = 0
                    if mounted:  # pragma: no cover - only with mount parameters
                        break
                elif attempt:
                    got = reg.upload_offset(repo, url)
                    if got is None or got > blob.size:
                        if reg.blob_exists(repo, blob.digest):
                            break
                        self.emit(Resumed(d.ref, blob.digest, 0, restarted=True))
                        url = ""
                        continue
                    offset = got
                    self.emit(Resumed(d.ref, blob.digest, offset))
                if blob.size <= self.chunk and offset == 0:
                    reg.finish_upload(repo, url, blob, 0, count, self.cancel)
                else:
                    while offset < blob.size:
                        n = min(self.chunk, blob.size - offset)
                        url = reg.patch(repo, url, blob, offset, n, count, self.cancel)
                        offset += n
                        attempt = 0
                        self.emit(BlobProgress(d.ref, blob.digest, offset, blob.size))
                    reg.finish_upload(repo, url, blob, None, count, self.cancel)
                break
            except TransientPushError as e:
                attempt += 1
                if not d.may_retry(attempt, self.retry.retries, self.cancel, e.slow):
                    raise
                wait = min(self.retry.backoff * 2 ** (attempt - 1), BACKOFF_MAX)
                self.emit(Retrying(d.ref, f"blob {blob.digest[:19]}", attempt, wait, e.message))
                self.retry.sleep(wait)
            except PushError as e:
                # distribution: the final PUT of a blob whose bytes went wrong, or a
                # session it no longer knows -> start this blob once more from zero
                codes = getattr(e, "codes", set())
                if url and codes & {"BLOB_UPLOAD_UNKNOWN", "BLOB_UPLOAD_INVALID", "DIGEST_INVALID"} \
                        and attempt <= self.retry.retries:
                    attempt += 1
                    self.emit(Resumed(d.ref, blob.digest, 0, restarted=True))
                    url = ""
                    continue
                raise
        self.emit(BlobDone(d.ref, blob.digest, blob.size, "uploaded", sent=sent[0]))

    def finish(self, d: _Dest, image: Image, manifest: bytes, digest: str) -> None:
        """After every blob of this destination: the manifest, then its digest
        as the registry answers it."""
        for f in d.futures:
            f.result()
        if d.error is not None:
            return
        reg, t = d.registry, d.target
        try:
            d.count(len(manifest))
            put = self._retrying(d, "manifest", lambda: reg.put_manifest(
                d.repo, t.tag, manifest, image.format.manifest))
            held = self._retrying(d, "manifest check", lambda: reg.manifest_digest(
                d.repo, t.tag, image.format.manifest))
            if put and put != digest:
                raise PushError(f"{d.ref}: the registry answered manifest digest {put}, but the "
                                f"manifest sent hashes to {digest}")
            if held != digest:
                raise PushError(f"{d.ref}: the registry holds {held or 'no manifest'} for the tag, "
                                f"but the manifest sent hashes to {digest}")
        except ImagekitError as e:
            self._fail(d, e)


def push(source: Iterable[bytes] | Image, targets: Sequence[Target],
         auths: Mapping[str, Auth | None], *, format: str = "docker",
         expect_diff_ids: Sequence[str] | None = None, workdir: Path | None = None,
         spool: Path | None = None,
         chunk_size: int = CHUNK, jobs: int = JOBS, retries: int = RETRIES, backoff: float = BACKOFF,
         sleep: Callable[[float], None] = time.sleep,
         registries: Mapping[str, Registry] | None = None) -> Iterator[object]:
    """Push an image to every target at once. SOURCE is a `docker save` tar
    stream of ONE image (e.g. Engine.save(image_id)), read as it comes, or an
    Image an earlier push read (its blobs still in SPOOL) to push again
    without reading the export again.

    First every registry is pinged and its credentials tried (Registry.
    check_auth): a destination that fails there fails at once, and when none
    is left the export is not read at all. With SPOOL (a folder the caller
    owns and removes) the blobs stay there after the push, and the
    PushSummary's `image` can be pushed again; without it they are removed as
    soon as every destination has them.

    Yields Compressing, LayerReady, ExportRead, BlobProgress, BlobDone,
    Resumed, Retrying, then TargetPushed or TargetFailed per target, and last a
    PushSummary. A destination's failure is its TargetFailed (AuthError: never
    retry; TransientPushError: the registry could not be reached or failed
    for now; PushError: refused) and does not stop the others. Raises (after
    stopping every upload) only when the export itself cannot be read:
    PushError, the engine's error, or Interrupted when the generator is closed."""
    fmt = get_format(format)
    if not targets:
        raise PushError("nothing to push to")
    started = time.monotonic()
    job = _Push(list(dict.fromkeys(targets)), auths, fmt, chunk_size, jobs,
                _Retry(retries, backoff, sleep), registries)
    job.keep = spool is not None
    own_spool = spool is None
    folder = spool if spool is not None else Path(tempfile.mkdtemp(prefix="imagekit-push-",
                                                                    dir=workdir))
    outcome: dict[str, object] = {}
    all_dests = list(job.dests)

    def reader() -> None:
        try:
            job.preflight()
            if not job.dests:
                return
            if isinstance(source, Image):
                image = source
                outcome["export_seconds"] = 0.0
                for b in image.blobs():
                    if b is not image.config:
                        job.schedule(b)
            else:
                def on_event(e: object) -> None:
                    job.emit(e)
                    if isinstance(e, LayerReady):
                        job.schedule(e.blob)
                image = read_export(source, folder, fmt, on_event=on_event, cancel=job.cancel,
                                    expect_diff_ids=expect_diff_ids)
                job.emit(ExportRead(image.image_id, len(image.layers), image.bytes_compressed,
                                    image.compressed_size, round(time.monotonic() - started, 3),
                                    image.layers_stored))
                outcome["export_seconds"] = round(time.monotonic() - started, 3)
            outcome["image"] = image
            job.schedule(image.config)
            manifest = image.manifest()
            digest = f"sha256:{hashlib.sha256(manifest).hexdigest()}"
            outcome["manifest"] = digest
            finishers = [threading.Thread(target=_finish_one, args=(job, d, image, manifest, digest),
                                          daemon=True) for d in job.dests]
            for t in finishers:
                t.start()
            for t in finishers:
                t.join()
        except BaseException as e:  # noqa: BLE001 - handed to the generator, raised there
            outcome["error"] = e
            job.cancel.set()
        finally:
            job.emit(_END)

    thread = threading.Thread(target=reader, daemon=True, name="imagekit-push-reader")
    thread.start()
    try:
        while True:
            try:
                item = job.events.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is _END:
                break
            yield item
        err = outcome.get("error")
        if err is not None:
            if isinstance(err, ImagekitError):
                raise err
            raise PushError(f"reading the export failed: {type(err).__name__}: "
                            f"{redact(str(err))}") from None
        image = outcome.get("image")
        results = []
        for d in all_dests:
            secs = round(time.monotonic() - d.started, 2)
            if d.error is None:
                results.append(TargetResult(d.target, str(outcome["manifest"]), d.sent, secs))
            else:
                results.append(TargetResult(d.target, "", d.sent, secs, d.error))
        if not isinstance(image, Image):            # every destination failed its check
            yield PushSummary("", "", fmt.manifest, 0, results, 0.0,
                              round(time.monotonic() - started, 3))
            return
        yield PushSummary(image.image_id, str(outcome["manifest"]), image.format.manifest,
                          image.compressed_size, results, float(outcome["export_seconds"]),  # type: ignore[arg-type]
                          round(time.monotonic() - started, 3), image)
    finally:
        job.cancel.set()
        for d in job.dests:
            d.pool.shutdown(wait=False, cancel_futures=True)
        if own_spool:
            shutil.rmtree(folder, ignore_errors=True)


_END = object()


def _finish_one(job: _Push, d: _Dest, image: Image, manifest: bytes, digest: str) -> None:
    try:
        job.finish(d, image, manifest, digest)
    except ImagekitError as e:
        job._fail(d, e)
    except Exception as e:  # noqa: BLE001
        job._fail(d, PushError(f"{type(e).__name__}: {e}"))
    secs = round(time.monotonic() - d.started, 2)
    if d.error is None:
        job.emit(TargetPushed(d.ref, digest, d.sent, secs))
    else:
        job.emit(TargetFailed(d.ref, d.error, d.sent))


__all__ = ["Auth", "Target", "Registry", "push", "TransientPushError", "BlobProgress", "BlobDone",
           "Resumed", "Retrying", "ExportRead", "TargetPushed", "TargetFailed", "TargetResult",
           "PushSummary", "Compressing", "LayerReady", "parse_challenge", "parse_range",
           "is_loopback"]
