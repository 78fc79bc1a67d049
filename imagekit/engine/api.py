"""`Engine`: the engine seam (types.EngineAPI) over the Docker Engine API
(`wire.Api`), the one module that knows the API's requests and its streams'
messages. Streams are decoded here into the seam's typed items (build
steps, layer progress, loaded refs); the API's errors become imagekit's own
(`raise ... from`), and an error reported inside a stream becomes
`EngineStreamError` with the engine's words. Nothing here prints."""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import re
import socket
import sys
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

from ..errors import EngineError, EngineStreamError, EngineUnavailable
from ..peer import peer_text
from . import dockerconfig, wire
from .types import (
    BUILDKIT_SINCE,
    CLASSIC,
    HINT,
    BuildCached,
    BuildDone,
    BuildItem,
    BuildOutput,
    BuildStep,
    ContainerState,
    EngineFacts,
    ImageInfo,
    LayerProgress,
    PushDone,
    PushItem,
    RunAs,
)
from .wire import ApiError, NotFound, TransportError

STEP_RE = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
RETRY_STATUS_RE = re.compile(r"^Retrying in (\d+) seconds?$")
# The classic builder wraps what a RUN step writes to stderr in red (SGR 91 ... 0).
_STDERR_WRAP = re.compile("\x1b\\[91m|\x1b\\[0m")


def _unwrap_stderr(text: str) -> str:
    return _STDERR_WRAP.sub("", text)


def endpoint() -> dockerconfig.Endpoint:
    """Where the engine is, as the docker CLI finds it: DOCKER_HOST, else the
    current docker context (DOCKER_CONTEXT, else `currentContext` in the
    Docker config: Docker Desktop's `desktop-linux`, a remote `ssh://` or
    `tcp://` engine), else the local socket."""
    return dockerconfig.endpoint()


def _where() -> str:
    return endpoint().url


# -- reaching an engine ---------------------------------------------------------

CONNECT_TIMEOUT = 10        # seconds an engine has, all in all, to answer `check`
SSH_CONNECT_TIMEOUT = 15    # for ssh:// engines: ssh connects, logs in and starts
                            # dial-stdio first (ssh itself gives up connecting after
                            # ssh.CONNECT_TIMEOUT, 10 s, and says why)
PROBE_BYTES = 64 * 1024     # of an answer to `check`'s requests, at most, are read
MINIMUM_API = wire.PROBE_VERSION     # Engine 1.12


def check(api: wire.Api, where: str, limit: float = CONNECT_TIMEOUT) -> dict:
    """Whether API's server answers as a Docker engine within LIMIT seconds,
    all requests together: GET /_ping says OK, GET /version is a JSON object
    with ApiVersion and Version, and a ping at that API version is taken.
    Returns its /version answer, and leaves API at the engine's version.
    Raises EngineUnavailable when the server answers as something else (its
    words, through peer_text), and the client's errors (`_unreachable` words
    them) when it does not answer."""
    found: dict[str, Any] = {}
    deadline = time.monotonic() + limit

    def left() -> float:
        return max(0.1, deadline - time.monotonic())

    def ask() -> None:
        status, body = _probe(api, "/_ping", left())
        if status != 200 or body.strip() != b"OK":
            raise _not_docker(where, f"GET /_ping answered HTTP {status}", body)
        status, body = _probe(api, "/version", left())
        if status != 200:
            raise _not_docker(where, f"GET /version answered HTTP {status}", body)
        try:
            version = json.loads(body)
        except ValueError:
            version = None
        api_version = version.get("ApiVersion") if isinstance(version, dict) else None
        if not (isinstance(api_version, str) and re.fullmatch(r"\d+\.\d+", api_version)
                and isinstance(version.get("Version"), str)):
            raise _not_docker(where, "GET /version gave no JSON object with ApiVersion and "
                              "Version", body)
        if not _api_at_least(api_version, MINIMUM_API):
            raise EngineUnavailable(
                f"the Docker engine at {where} speaks API {api_version}, older than the "
                f"{MINIMUM_API} imagekit needs (Engine 1.12)")
        api.api_version = api_version
        try:
            pinged = api.ping(timeout=left())
        except ApiError:
            pinged = False
        if not pinged:
            raise _not_docker(where, f"a ping at API {api_version} was refused", b"")
        found["version"] = version

    # every request has the time left, and a server that drips its answer byte
    # by byte (each read within the timeout) is cut off at the deadline too
    asking = threading.Thread(target=_keep_error(ask, found), name="imagekit-engine-check",
                              daemon=True)
    asking.start()
    asking.join(limit + 0.5)
    if asking.is_alive():
        raise _Overdue(f"no complete answer within {limit:g} s")
    if "error" in found:
        raise found["error"]
    return found["version"]


class _Overdue(wire.ReadTimeout):
    """`check` ran out of time while its requests were still being answered."""


def _keep_error(fn, box: dict):
    def run() -> None:
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - handed to the thread that waits
            box["error"] = e
    return run


def _probe(api: wire.Api, path: str, seconds: float) -> tuple[int, bytes]:
    """GET PATH (not versioned): its status and up to PROBE_BYTES of its body."""
    answer = api.request("GET", api.url(path, versioned=False), timeout=seconds,
                         ok=tuple(range(400, 600)))
    body = b""
    try:
        while len(body) <= PROBE_BYTES and (chunk := answer.read1(4096)):
            body += chunk
    finally:
        answer.close()
    return answer.status, body[:PROBE_BYTES]


def _not_docker(where: str, what: str, body: bytes) -> EngineUnavailable:
    said = peer_text(body)
    return EngineUnavailable(f"the server at {where} does not answer as a Docker engine "
                             f"({what}{': ' + said if said else ', empty'})")


def _client(found: dockerconfig.Endpoint, timeout: int) -> wire.Api:
    """The API client for an endpoint: ssh:// through imagekit's own ssh
    transport (`ssh`), tcp:// with the endpoint's TLS files where it has them."""
    url = found.url
    if url.startswith("ssh://"):
        from . import ssh
        return wire.Api(ssh.connection_factory(ssh.parse(url), ssh.extra_options()),
                        timeout=timeout)
    tls = None
    if found.tls is not None:
        t = found.tls
        try:
            tls = wire.tls_context(t.ca, t.cert, t.key, t.verify)
        except (OSError, ValueError) as e:
            raise ValueError(f"the engine's TLS files cannot be used ({e})") from None
    return wire.Api.at(url, timeout=timeout, tls=tls)


def _without_password(url: str) -> str:
    """URL with the password of its user part (if any) written as ***."""
    with contextlib.suppress(ValueError):
        parts = urlsplit(url)
        if parts.password is not None:
            user, _, host = parts.netloc.rpartition("@")
            return urlunsplit(parts._replace(netloc=f"{user.partition(':')[0]}:***@{host}"))
    return url


def _unreachable(e: BaseException, where: str, limit: float) -> str:
    """Why no engine answered at WHERE, in one line for a user."""
    ssh = sys.modules.get(f"{__package__}.ssh")     # loaded for ssh:// engines only
    if ssh is not None and isinstance(e, ssh.SshFailed):
        return f"no Docker engine answers at {where} ({e})"     # ssh's own reason
    if isinstance(e, ValueError):
        return f"cannot reach {where}: {peer_text(e)}"   # an ssh:// URL, IMAGEKIT_SSH_OPTIONS
    bad = _inner(e, http.client.BadStatusLine)
    if bad is not None and not isinstance(bad, http.client.RemoteDisconnected):
        return (f"the server at {where} does not answer as a Docker engine (it does not speak "
                f"HTTP; it sent: {peer_text(getattr(bad, 'line', bad))})")
    reason = str(e).split("\n")[0]
    if "Permission denied" in reason or isinstance(_inner(e, PermissionError), PermissionError):
        reason = "permission denied: add your user to the docker group, or use sudo"
        return f"no Docker engine answers at {where} ({reason})"
    if isinstance(e, _Overdue):
        reason = str(e)
    elif isinstance(e, wire.ConnectTimeout):
        reason = f"no connection within {limit:g} s"
    elif isinstance(e, wire.ReadTimeout):
        reason = f"it took the connection but gave no answer within {limit:g} s"
    elif "refused" in reason or "No such file" in reason:
        reason = "nothing listens there"
    elif "Connection aborted" in reason or "reset" in reason:
        reason = "it closed the connection without an answer"
    else:
        reason = peer_text(reason)
    return f"no Docker engine answers at {where} ({reason}); {HINT}"


def _inner(e: BaseException, kind: type, depth: int = 0) -> BaseException | None:
    """The KIND error inside E (in its args, cause or context)."""
    if isinstance(e, kind):
        return e
    if depth > 8:
        return None
    for x in (*getattr(e, "args", ()), e.__cause__, e.__context__, getattr(e, "reason", None)):
        if isinstance(x, BaseException):
            found = _inner(x, kind, depth + 1)
            if found is not None:
                return found
    return None


class Engine:
    """EngineAPI over the Docker Engine API (`wire.Api`)."""

    def __init__(self, api: wire.Api, where: str | None = None, context: str = ""):
        self.api = api
        self.where = where or _where()
        self.context = context
        self._facts: EngineFacts | None = None
        self._version: dict | None = None     # /version, as connect's check read it
        self._proxies: dict[str, str] | None = None

    def proxies(self) -> dict[str, str]:
        """The proxy variables the Docker config gives this engine's containers
        and classic builds (read once)."""
        if self._proxies is None:
            self._proxies = dockerconfig.proxy_env(self.where)
        return self._proxies

    @classmethod
    def connect(cls, timeout: int = 600, url: str | None = None) -> Engine:
        """The engine at `url` (any DOCKER_HOST form), else the environment's.
        It has CONNECT_TIMEOUT seconds (an ssh:// one SSH_CONNECT_TIMEOUT) to
        show that it is a Docker engine (`check`); `timeout` then bounds each
        request of the real work (builds, loads, waits)."""
        found = dockerconfig.Endpoint(url) if url else endpoint()
        raw = found.url
        where = _without_password(raw)            # as messages name it
        limit = SSH_CONNECT_TIMEOUT if raw.startswith("ssh://") else CONNECT_TIMEOUT
        try:
            api = _client(found, timeout)
            version = check(api, where, limit)
            engine = cls(api, where, found.context)
            engine._version = version
            engine.sweep()       # what a process that died with the engine could not remove
        except EngineUnavailable:
            raise
        except (TransportError, ApiError, OSError, ValueError) as e:
            raise EngineUnavailable(_unreachable(e, where, limit).replace(raw, where)) \
                from None
        return engine

    # -- facts -------------------------------------------------------------
    def gpu_capable(self) -> bool:
        """Whether `--gpus all` can work: an nvidia runtime or CDI GPU devices."""
        info = self._call(self.api.info)
        runtimes = info.get("Runtimes") or {}
        if "nvidia" in runtimes or info.get("DefaultRuntime") == "nvidia":
            return True
        cdi = info.get("DiscoveredDevices") or []
        return any(str(d.get("ID", "")).startswith("nvidia.com/gpu") for d in cdi)

    def facts(self) -> EngineFacts:
        """Version, API, image store, builders, GPU runtime (asked once)."""
        if self._facts is None:
            info = self._call(self.api.info)
            ver = self._version or self._call(self.api.version)
            status = {str(k): str(v) for k, v in info.get("DriverStatus") or []}
            runtimes = info.get("Runtimes") or {}
            cdi = [d for d in info.get("DiscoveredDevices") or []
                   if str(d.get("ID", "")).startswith("nvidia.com/gpu")]
            version = str(ver.get("Version") or info.get("ServerVersion") or "")
            major = re.match(r"(\d+)", version)
            self._facts = EngineFacts(
                self.where, self.context, version, str(ver.get("ApiVersion") or ""),
                str(info.get("OSType") or ver.get("Os") or ""),
                str(info.get("Architecture") or ver.get("Arch") or ""),
                "containerd" if status.get("driver-type") == "io.containerd.snapshotter.v1"
                else "classic", str(info.get("Driver") or ""),
                bool(major and int(major[1]) >= BUILDKIT_SINCE),
                "nvidia" in runtimes or info.get("DefaultRuntime") == "nvidia", len(cdi))
        return self._facts

    def stored_compressed(self, ref: str) -> bool:
        """Whether the engine holds REF's layers compressed, so that its own push
        compresses nothing. Only the containerd store keeps layers as they came:
        gzip'd when built or pulled there, uncompressed when loaded from a
        classic store's `docker save`. Its inspect `Size` is what it stores
        (the blobs), its history's sizes are the layers unpacked: stored blobs
        well under the unpacked size mean compressed layers. (The image list's
        `Size`, blobs plus snapshots, says the same, but the engine measures
        the snapshots for it: four times as slow.)"""
        if not self.facts().layers_stored_compressed:
            return False
        try:
            stored = int(self.api.inspect_image(ref).get("Size") or 0)
            unpacked = sum(int(h.get("Size") or 0) for h in self.api.history(ref))
        except (ApiError, TransportError, ValueError, TypeError, AttributeError):
            return False
        return stored > 0 and unpacked > 0 and stored < 0.8 * unpacked

    def image(self, ref: str) -> ImageInfo | None:
        try:
            raw = self.api.inspect_image(ref)
        except ApiError as e:
            if e.status_code in (400, 404):   # an invalid reference names no image either
                return None
            raise EngineError(f"inspecting {ref}: {_explain(e)}") from e
        except TransportError as e:
            raise self._lost(e) from e
        config = raw.get("Config") or {}
        env = dict(str(e).partition("=")[::2] for e in config.get("Env") or [])
        diff_ids = tuple(str(x) for x in (raw.get("RootFS") or {}).get("Layers") or [])
        return ImageInfo(raw["Id"], int(raw.get("Size") or 0), dict(config.get("Labels") or {}),
                         list(raw.get("RepoTags") or []), env, diff_ids, identity_of(raw))

    def tag(self, image: str, repository: str, tag: str) -> None:
        self._call(self.api.tag, image, repository, tag, force=True)

    def remove_image(self, ref: str) -> None:
        """Untag `ref` (the image stays while other tags name it); nothing
        when the engine holds no such image."""
        try:
            self._call(self.api.remove_image, ref, noprune=False)
        except EngineError as e:
            if not isinstance(e.__cause__, NotFound):
                raise

    def answers(self, settle: float = 0.0) -> bool:
        """Whether the engine still answers, now and for `settle` seconds more
        (an engine shutting down stops its containers before it stops answering)."""
        end = time.monotonic() + settle
        while True:
            try:
                if not self.api.ping(timeout=CONNECT_TIMEOUT):
                    return False
            except (ApiError, TransportError, OSError):
                return False
            if time.monotonic() >= end:
                return True
            time.sleep(0.5)

    # -- build -------------------------------------------------------------
    def build(self, context: IO[bytes], tag: str, *, network_mode: str | None = None,
              pull: bool = False, nocache: bool = False) -> Iterator[BuildItem]:
        """The legacy builder's stream, decoded. Raises EngineStreamError with
        the engine's message when a step fails."""
        image_id = None
        partial = ""           # a line the engine sent in pieces (uv writes partial lines)
        pending = note_pending(self.where, build=tag)
        lost = False
        try:
            for item in self.api.build(context, tag=tag, nocache=nocache, pull=pull,
                                       network_mode=network_mode, buildargs=self.proxies()):
                if not isinstance(item, dict):
                    continue
                if "stream" in item:
                    text = partial + _unwrap_stderr(str(item["stream"]))
                    text, _, partial = text.rpartition("\n") if "\n" in text else ("", "", text)
                    for line in text.splitlines():
                        line = line.rstrip()
                        if not line:
                            continue
                        m = STEP_RE.match(line)
                        if m:
                            yield BuildStep(int(m[1]), int(m[2]), m[3])
                        elif line.strip() == "---> Using cache":
                            yield BuildCached()
                        elif line.startswith("Successfully built "):
                            image_id = image_id or line.split()[-1]
                        elif not line.startswith((" ---> ", "Successfully tagged",
                                                  "Removing intermediate")):
                            yield BuildOutput(line)
                elif partial and ("error" in item or "errorDetail" in item or "aux" in item):
                    yield BuildOutput(partial.rstrip())
                    partial = ""
                if isinstance(item.get("aux"), dict) and "ID" in item["aux"]:
                    image_id = item["aux"]["ID"]
                elif "error" in item or "errorDetail" in item:
                    raise EngineStreamError(_stream_error(item))
        except (ApiError, TransportError) as e:
            if isinstance(e, wire.ConnectFailed) or not self.answers():
                lost = True
                raise self._lost(e) from e
            raise EngineError(f"build request failed: {_explain(e)}") from e
        finally:
            if not lost:        # the engine removes its builder containers itself
                forget_pending(pending)
        if partial.strip():
            yield BuildOutput(partial.rstrip())
        if image_id is None:
            raise EngineStreamError("the engine ended the build without an image ID")
        yield BuildDone(image_id)

    def import_image(self, stream: IO[bytes], repository: str, tag: str,
                     changes: list[str]) -> None:
        try:
            for item in self.api.import_image(stream, repository, tag, changes):
                if isinstance(item, dict) and ("errorDetail" in item or "error" in item):
                    raise EngineError(f"import of {repository}:{tag} failed: "
                                      f"{_stream_error(item)}")
        except (ApiError, TransportError) as e:
            raise EngineError(f"import of {repository}:{tag} failed: {_explain(e)}") from e

    # -- containers --------------------------------------------------------
    def sweep(self) -> int:
        """Remove the containers, volumes and networks an imagekit process on this
        machine made and could not remove because it died, or the engine went
        away under it (a process can only clean up while the engine answers).
        Returns how many were removed."""
        mine = {"label": [f"io.imagekit.host={_HOST}"]}
        removed = self._sweep_pending()
        try:
            for c in self.api.containers(all=True, filters=mine):
                if not _alive((c.get("Labels") or {}).get("io.imagekit.pid")):
                    with contextlib.suppress(ApiError):
                        self.api.remove_container(c["Id"], force=True, v=True)
                        removed += 1
            for v in self.api.volumes(filters=mine).get("Volumes") or []:
                if not _alive((v.get("Labels") or {}).get("io.imagekit.pid")):
                    with contextlib.suppress(ApiError):
                        self.api.remove_volume(v["Name"], force=True)
                        removed += 1
            for n in self.api.networks(filters=mine):
                if not _alive((n.get("Labels") or {}).get("io.imagekit.pid")):
                    with contextlib.suppress(ApiError):
                        self.api.remove_network(n["Id"])
                        removed += 1
        except (ApiError, TransportError):
            return removed
        return removed

    def _sweep_pending(self) -> int:
        """Tags a dead push made, containers a dead build's builder left."""
        removed = 0
        for path in sorted(_pending_dir().glob("*.json")) if _pending_dir().is_dir() else []:
            try:
                rec = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if rec.get("host") != _HOST or rec.get("where") != self.where or \
                    _alive(str(rec.get("pid"))):
                continue
            try:
                for ref in rec.get("tags") or []:
                    held = self.image(ref)
                    if held is not None and held.id == rec.get("image_id"):
                        self.api.remove_image(ref, noprune=False)
                        removed += 1
                if rec.get("build"):
                    for c in self.api.containers(all=True, filters={"status": "exited"}):
                        if c.get("Created", 0) >= int(rec["at"]) - 1 and \
                                BUILDER_IMAGE.fullmatch(str(c.get("Image") or "")) and \
                                not (c.get("Labels") or {}):
                            self.api.remove_container(c["Id"], force=True)
                            removed += 1
            except (ApiError, TransportError):
                continue
            forget_pending(path)
        return removed

    def hold_tags(self, image_id: str, refs: list[str]) -> Path | None:
        return note_pending(self.where, image_id=image_id, tags=refs) if refs else None

    def release_tags(self, token: Path | None) -> None:
        forget_pending(token)

    @contextlib.contextmanager
    def volume(self, name: str, owner: str = "") -> Iterator[str]:
        """A named volume (works with remote engines too), removed on every way out.
        `owner` (the image it serves) is kept in a label."""
        self._call(self.api.create_volume, name, _labels(owner))
        try:
            yield name
        finally:
            with contextlib.suppress(Exception):
                self.api.remove_volume(name, force=True)

    @contextlib.contextmanager
    def network(self, name: str, owner: str = "") -> Iterator[str]:
        """A private bridge network with no route out (internal), for containers
        that must reach each other and nothing else; removed on every way out,
        after the containers on it. `owner` (the image it serves) is kept in a
        label."""
        self._call(self.api.create_network, name, driver="bridge", internal=True,
                   labels=_labels(owner))
        try:
            yield name
        finally:
            with contextlib.suppress(Exception):
                self.api.remove_network(name)

    @contextlib.contextmanager
    def container(self, image: str, command: list[str] | None = None, *, name: str,
                  volumes: dict[str, str] | None = None, env: dict | None = None,
                  gpus: bool = False, workdir: str | None = None,
                  files: bytes | None = None, network: bool = True,
                  owner: str = "", run_as: RunAs | None = None) -> Iterator[str]:
        """Create a container, copy `files` (a tar) into it, start it; it is
        force-removed on every way out (failure, timeout, Ctrl-C). With
        network=False it has no network at all (`--network none`); `run_as`:
        a platform's user, /dev/shm, read-only root, host name, network and aliases."""
        r = run_as or RunAs()
        env = {**self.proxies(), **(env or {})}      # what the caller sets wins
        config = container_config(image, command, volumes=volumes, env=env, gpus=gpus,
                                  workdir=workdir, network=network, labels=_labels(owner or image),
                                  run_as=r)
        cid = None
        try:
            cid = self._call(self.api.create_container, config, name)["Id"]
            if files:
                self._call(self.api.put_archive, cid, "/", files)
            self._call(self.api.start, cid)
            yield cid
        finally:
            if cid is not None:
                with contextlib.suppress(Exception):
                    self.api.remove_container(cid, force=True, v=True)

    def files_in(self, cid: str, path: str) -> list[str]:
        """Names of the files under `path` in a (stopped) container."""
        try:
            answer = self.api.get_archive(cid, path)
        except NotFound:
            return []
        with tempfile.TemporaryFile() as f:
            for chunk in answer.blocks():
                f.write(chunk)
            f.seek(0)
            with tarfile.open(fileobj=f) as tar:
                top = path.rstrip("/").split("/")[-1]
                return sorted(m.name[len(top) + 1:] for m in tar.getmembers()
                              if m.isfile() and m.name.startswith(top + "/"))

    def logs(self, cid: str, follow: bool = True) -> Iterator[bytes]:
        return self.api.logs(cid, follow=follow)

    def wait(self, cid: str, timeout: float) -> int:
        try:
            return int(self.api.wait(cid, timeout=timeout)["StatusCode"])
        except wire.ReadTimeout as e:
            raise TimeoutError from e
        except TransportError as e:
            raise self._lost(e) from e
        except ApiError as e:
            raise EngineError(_explain(e)) from e

    def state(self, cid: str) -> ContainerState:
        st = self._call(self.api.inspect_container, cid).get("State") or {}
        return ContainerState(bool(st.get("Running")), st.get("ExitCode"))

    def exec_run(self, cid: str, cmd: list[str]) -> tuple[int, str]:
        ex = self._call(self.api.exec_create, cid, cmd)
        out = self._call(self.api.exec_start, ex["Id"])
        code = self._call(self.api.exec_inspect, ex["Id"]).get("ExitCode")
        return int(code or 0), out.decode(errors="replace")

    # -- publish -----------------------------------------------------------
    def save(self, ref: str | list[str], chunk_size: int = 4 * 1024 * 1024) -> Iterator[bytes]:
        """The engine's export (GET /images/get?names=REF) as chunks of a tar that
        `docker load` restores with its name:tag (`ref` may be several refs)."""
        try:
            yield from self.api.export([ref] if isinstance(ref, str) else list(ref)
                                       ).blocks(chunk_size)
        except ApiError as e:
            raise EngineError(f"export of {ref} failed: {_explain(e)}") from e
        except TransportError as e:
            if not self.answers():
                raise self._lost(e) from e
            raise EngineError(f"export of {ref} broke off: {_explain(e)}") from e

    def load(self, data: IO[bytes] | Iterator[bytes]) -> list[str]:
        """POST /images/load (`data` may be a generator of chunks, sent chunked).
        Returns what the engine loaded: tags, or image IDs for untagged images."""
        loaded: list[str] = []
        try:
            for item in self.api.load_image(data):
                if not isinstance(item, dict):
                    continue
                if "errorDetail" in item or "error" in item:
                    raise EngineStreamError(_stream_error(item))
                text = str(item.get("stream") or "").strip()
                for prefix in ("Loaded image: ", "Loaded image ID: "):
                    if text.startswith(prefix):
                        loaded.append(text.removeprefix(prefix).strip())
        except ApiError as e:
            raise EngineError(f"load failed: {_explain(e)}") from e
        except TransportError as e:
            raise EngineError(f"load broke off: {_explain(e)}") from e
        return loaded

    def push(self, repository: str, tag: str, auth: dict | None) -> Iterator[PushItem]:
        """The push stream, decoded. The engine reports a registry's refusal
        inside the stream: that becomes EngineStreamError. Its own upload retries count down
        once a second; each countdown is reported once. Where the API has it
        (1.46+), only the image's own platform is pushed; the containerd store
        of older engines pushes an index and may report no digest (PushDone
        then carries "", and the caller asks the registry)."""
        digest = ""
        retry_at: dict[str, int] = {}
        try:
            for item in self._push_stream(repository, tag, auth):
                if not isinstance(item, dict):
                    continue
                if "errorDetail" in item or "error" in item:
                    raise EngineStreamError(_stream_error(item))
                aux = item.get("aux")
                if isinstance(aux, dict) and aux.get("Digest"):
                    digest = str(aux["Digest"])
                status, layer = str(item.get("status") or ""), item.get("id")
                if not (status and layer):
                    continue
                m = RETRY_STATUS_RE.match(status)
                if m:
                    n, prev = int(m[1]), retry_at.get(layer)
                    retry_at[layer] = n
                    if prev is not None and n <= prev:
                        continue
                    status = f"engine retrying in {n}s"
                else:
                    retry_at.pop(layer, None)
                pd = item.get("progressDetail") or {}
                yield LayerProgress(str(layer), status, int(pd.get("current") or 0),
                                    int(pd.get("total") or 0))
        except (ApiError, TransportError) as e:
            if not self.answers():
                raise self._lost(e) from e
            raise EngineError(f"push of {repository}:{tag} failed: {_explain(e)}") from e
        yield PushDone(digest)

    def _push_stream(self, repository: str, tag: str, auth: dict | None) -> Iterator[Any]:
        """POST /images/NAME/push, with `platform` (the image's own) where the
        API takes it (1.46+)."""
        platform = None
        if _api_at_least(self.api.api_version, "1.46"):
            raw = self._call(self.api.inspect_image, f"{repository}:{tag}")
            wanted = {"os": raw.get("Os") or "linux", "architecture": raw.get("Architecture")}
            if raw.get("Variant"):
                wanted["variant"] = raw["Variant"]
            platform = json.dumps(wanted)
        return self.api.push(repository, tag, _auth_header(auth), platform)

    def pull(self, ref: str, auth: dict | None) -> None:
        """Pull `ref` (by digest, usually) into this engine."""
        repo, _, digest = ref.partition("@")
        try:
            for item in self.api.pull(repo, digest or None, _auth_header(auth)):
                if isinstance(item, dict) and ("errorDetail" in item or "error" in item):
                    raise EngineStreamError(_stream_error(item))
        except (ApiError, TransportError) as e:
            raise EngineError(f"pull of {ref} failed: {_explain(e)}") from e

    def registry_auth(self, registry: str) -> dict | None:
        """Credentials for `registry` from the Docker config file: its `auths`,
        `credHelpers` and `credsStore` (helpers get the registry on stdin, as the
        docker CLI does). None when it has none. Only ever handed to the engine."""
        try:
            return dockerconfig.registry_auth(registry)
        except dockerconfig.ConfigProblem as e:
            raise EngineError(f"reading Docker credentials for {registry}: {peer_text(e)}") \
                from None

    def distribution_digest(self, ref: str, auth: dict | None) -> str:
        """The manifest digest the registry holds for `ref`, asked through the
        engine (GET /distribution/REF/json with X-Registry-Auth)."""
        try:
            data = self.api.inspect_distribution(ref, _auth_header(auth))
        except (ApiError, TransportError) as e:
            text = getattr(e, "explanation", None) or str(e)
            lines = [x.strip() for x in str(text).splitlines() if x.strip() not in ("", "errors:")]
            raise EngineError(f"asking the registry for {ref}: {'; '.join(lines) or e}") from e
        return str(((data or {}).get("Descriptor") or {}).get("digest") or "")

    def _call(self, fn, *args: Any, **kwargs: Any):
        try:
            return fn(*args, **kwargs)
        except ApiError as e:
            raise EngineError(_explain(e)) from e
        except TransportError as e:
            raise self._lost(e) from e

    def _lost(self, e: Exception) -> EngineUnavailable:
        text = str(e)
        why = next((w for w in ("refused", "reset", "closed", "aborted", "timed out",
                                "No such file") if w.lower() in text.lower()), "")
        first = {"": "it stopped answering", "No such file": "its socket is gone"}.get(
            why, f"connection {why}")
        return EngineUnavailable(f"lost the Docker engine at {self.where} ({first}); {HINT}")


class ClassicBuilder:
    """The engine's classic builder (POST /build): what
    engines without BuildKit or without the buildx plugin build with."""

    kind = CLASSIC
    name = CLASSIC

    def __init__(self, engine, reason: str = ""):
        self.engine = engine
        self.reason = reason or "the engine's classic builder"

    def cache_export_problem(self) -> str:
        return "the classic builder cannot export a build cache; BuildKit can"

    def build(self, context: IO[bytes], tag: str, *, nocache: bool = False,
              network_mode: str | None = None, contexts: dict[str, Path] | None = None,
              cache_to: str = "", cache_from: str = "",
              source_date_epoch: int | None = None) -> Iterator[BuildItem]:
        """`source_date_epoch` is left out: this builder stamps the image config
        with the time of the build whatever it is given (its RUN steps read
        SOURCE_DATE_EPOCH from the Dockerfile's own ARG)."""
        if cache_to or cache_from:
            raise EngineError("the classic builder cannot use a registry build cache; BuildKit can")
        if contexts:
            raise EngineError("the classic builder takes no named build contexts "
                              f"({', '.join(sorted(contexts))}); BuildKit does")
        return self.engine.build(context, tag, network_mode=network_mode, nocache=nocache)


# The image config fields both stores report the same way in an image's inspect
# (the classic store also fills the parent's ID in "Image", and empty defaults).
_IDENTITY_CONFIG = ("User", "ExposedPorts", "Env", "Entrypoint", "Cmd", "Volumes", "WorkingDir",
                    "Labels", "StopSignal", "Shell", "Healthcheck", "OnBuild")


def identity_of(raw: dict) -> str:
    """An image's identity from its inspect: sha256 of the layer diff IDs, the
    image config's run-time fields, creation time and platform. The same image
    has the same identity on the classic store and on the containerd store,
    before and after a save/load; "" when the engine reports no layers."""
    layers = [str(x) for x in (raw.get("RootFS") or {}).get("Layers") or []]
    if not layers:
        return ""
    config = raw.get("Config") or {}
    doc = {"diff_ids": layers,
           "config": {k: config[k] for k in _IDENTITY_CONFIG if config.get(k)},
           "created": str(raw.get("Created") or ""),
           "platform": [str(raw.get(k) or "") for k in ("Os", "Architecture", "Variant")]}
    canon = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(canon.encode()).hexdigest()


_HOST = socket.gethostname()
BUILDER_IMAGE = re.compile(r"(?:sha256:)?[0-9a-f]{12,64}")   # what a builder container runs


def _pending_dir() -> Path:
    from ..config import cache_dir
    return cache_dir() / "pending"


def note_pending(where: str, **what: Any) -> Path | None:
    """Write down what this process leaves on an engine until it says done
    (forget_pending): tags made for a push, a build in flight. If the process
    or the engine dies first, the next sweep of that engine removes it."""
    d = _pending_dir()
    with contextlib.suppress(OSError):
        d.mkdir(parents=True, exist_ok=True)
        path = d / f"{os.getpid()}-{time.monotonic_ns()}.json"
        path.write_text(json.dumps({"host": _HOST, "pid": os.getpid(), "where": where,
                                    "at": time.time(), **what}))
        return path
    return None


def forget_pending(path: Path | None) -> None:
    if path is not None:
        with contextlib.suppress(OSError):
            path.unlink()


def _labels(owner: str) -> dict[str, str]:
    """What every container and volume imagekit makes carries: who it serves,
    and the process that must remove it (for sweep)."""
    return {"io.imagekit.owned": "true", "io.imagekit.for": owner, "io.imagekit.host": _HOST,
            "io.imagekit.pid": str(os.getpid())}


def _alive(pid: str | None) -> bool:
    try:
        os.kill(int(pid or 0), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return int(pid or 0) > 0


def _auth_header(auth: dict | None) -> str:
    """X-Registry-Auth for AUTH: an empty object where there are no
    credentials, as the docker CLI sends."""
    return dockerconfig.encode_auth_header(auth or {})


def container_config(image: str, command: list[str] | None, *, volumes: dict[str, str] | None,
                     env: dict | None, gpus: bool, workdir: str | None, network: bool,
                     labels: dict[str, str], run_as: RunAs) -> dict:
    """POST /containers/create's body: what `docker run` sends for these
    settings (`--init`, `-v VOL:DST`, `--gpus all`, `--network`, `--shm-size`,
    `--read-only`, `--tmpfs`, `--user`, `--hostname`, `--network-alias`)."""
    r = run_as
    host: dict[str, Any] = {"Init": True,
                            "Binds": [f"{vol}:{dst}:rw" for vol, dst in (volumes or {}).items()]}
    if gpus:
        host["DeviceRequests"] = [{"Driver": "", "Count": -1, "DeviceIDs": None,
                                   "Capabilities": [["gpu"]], "Options": {}}]
    mode = r.network or (None if network else "none")
    if mode:
        host["NetworkMode"] = mode
    if r.shm_mb:
        host["ShmSize"] = int(r.shm_mb) * 1024 * 1024
    if r.read_only:
        host["ReadonlyRootfs"] = True
    if r.tmpfs:
        host["Tmpfs"] = {p: "rw,exec,mode=1777" for p in r.tmpfs}
    config: dict[str, Any] = {
        "Image": image, "Cmd": command, "Env": [f"{k}={v}" for k, v in (env or {}).items()],
        "Labels": labels, "HostConfig": host, "AttachStdout": True, "AttachStderr": True}
    if workdir:
        config["WorkingDir"] = workdir
    if r.user:
        config["User"] = r.user
    if r.hostname:
        config["Hostname"] = r.hostname
    # on a network of its own, the other containers reach this one by its aliases
    if r.network and r.aliases:
        config["NetworkingConfig"] = {"EndpointsConfig": {r.network: {"Aliases": list(r.aliases)}}}
    return config


def _api_at_least(version: str, want: str) -> bool:
    def parts(v: str) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", v)[:2]) or (0,)
    return parts(str(version)) >= parts(want)


def _stream_error(item: dict) -> str:
    """The engine's words for a failure in a stream: one bounded line."""
    detail = item.get("errorDetail") or {}
    if not isinstance(detail, dict):
        detail = {}
    return peer_text(detail.get("message") or item.get("error") or "unknown error")


def _explain(e: Exception) -> str:
    """An engine error's own reason: its first line, bounded."""
    text = getattr(e, "explanation", None) or str(e)
    if isinstance(text, bytes):
        text = text[:64 * 1024].decode(errors="replace")
    text = str(text)[:64 * 1024].strip()
    return peer_text(text.splitlines()[0]) if text else type(e).__name__
