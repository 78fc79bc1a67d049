"""The one module that talks to the Docker engine (with docker-py's low-level
API). It yields the engine's raw stream items and never prints; docker errors
are translated into imagekit's own with `raise ... from`."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import IO, Any

import docker
import docker.auth
import docker.errors
import requests.exceptions
import urllib3.exceptions
from docker.types import DeviceRequest

from .errors import EngineUnavailable, ImagekitError

HINT = "start one with `make engine`, or point DOCKER_HOST at a running engine"


class EngineError(ImagekitError):
    exit_code = 1
    label = "engine"


def _where() -> str:
    return os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"


class Engine:
    def __init__(self, api: docker.APIClient):
        self.api = api

    @classmethod
    def connect(cls, timeout: int = 600) -> Engine:
        try:
            kwargs = docker.utils.kwargs_from_env()
            api = docker.APIClient(version="auto", timeout=timeout, **kwargs)
            api.ping()
        except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as e:
            reason = str(e).split("\n")[0]
            if "Connection aborted" in reason or "No such file" in reason or "refused" in reason:
                reason = "nothing listens there"
            raise EngineUnavailable(f"no Docker engine answers at {_where()} ({reason}); {HINT}") \
                from None
        return cls(api)

    # -- facts -------------------------------------------------------------
    def info(self) -> dict:
        return self._call(self.api.info)

    def gpu_capable(self) -> bool:
        """Whether `--gpus all` can work: an nvidia runtime or CDI GPU devices."""
        info = self.info()
        runtimes = info.get("Runtimes") or {}
        if "nvidia" in runtimes or info.get("DefaultRuntime") == "nvidia":
            return True
        cdi = info.get("DiscoveredDevices") or []
        return any(str(d.get("ID", "")).startswith("nvidia.com/gpu") for d in cdi)

    def image(self, ref: str) -> dict | None:
        try:
            return self.api.inspect_image(ref)
        except docker.errors.ImageNotFound:
            return None
        except docker.errors.APIError as e:
            raise EngineError(f"inspecting {ref}: {e.explanation}") from e

    def history(self, ref: str) -> list[dict]:
        return self._call(self.api.history, ref)

    def remove_image(self, ref: str, force: bool = True) -> None:
        with contextlib.suppress(docker.errors.ImageNotFound):
            self._call(self.api.remove_image, ref, force=force, noprune=False)

    def tag(self, image: str, repository: str, tag: str) -> None:
        self._call(self.api.tag, image, repository, tag, force=True)

    # -- build -------------------------------------------------------------
    def build(self, context: IO[bytes], tag: str, *, network_mode: str | None = None,
              pull: bool = False, nocache: bool = False) -> Iterator[dict]:
        try:
            yield from self.api.build(
                fileobj=context, custom_context=True, encoding=None, tag=tag, nocache=nocache,
                rm=True, forcerm=True, decode=True, pull=pull, network_mode=network_mode)
        except (docker.errors.APIError, requests.exceptions.RequestException) as e:
            raise EngineError(f"build request failed: {_explain(e)}") from e

    def import_image(self, stream: IO[bytes], repository: str, tag: str,
                     changes: list[str]) -> str:
        try:
            out = self.api.import_image_from_stream(stream, repository=repository, tag=tag,
                                                   changes=changes)
        except docker.errors.APIError as e:
            raise EngineError(f"import of {repository}:{tag} failed: {_explain(e)}") from e
        return out

    # -- containers --------------------------------------------------------
    @contextlib.contextmanager
    def volume(self, name: str, owner: str = "") -> Iterator[str]:
        """A named volume (works with remote engines too), removed on every way out.
        `owner` (the image it serves) is kept in a label."""
        self._call(self.api.create_volume, name=name,
                   labels={"io.imagekit.owned": "true", "io.imagekit.for": owner})
        try:
            yield name
        finally:
            with contextlib.suppress(Exception):
                self.api.remove_volume(name, force=True)

    @contextlib.contextmanager
    def container(self, image: str, command: list[str] | None = None, *, name: str,
                  volumes: dict[str, str] | None = None, env: dict | None = None,
                  gpus: bool = False, workdir: str | None = None,
                  files: bytes | None = None) -> Iterator[str]:
        """Create a container, copy `files` (a tar) into it, start it; it is
        force-removed on every way out (failure, timeout, Ctrl-C)."""
        host_config = self.api.create_host_config(
            binds={vol: {"bind": dst, "mode": "rw"} for vol, dst in (volumes or {}).items()},
            device_requests=[DeviceRequest(count=-1, capabilities=[["gpu"]])] if gpus else None,
            init=True,
        )
        cid = None
        try:
            created = self._call(
                self.api.create_container, image, command=command, name=name,
                environment=env or {}, host_config=host_config, working_dir=workdir,
                labels={"io.imagekit.owned": "true", "io.imagekit.for": image})
            cid = created["Id"]
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
        import tarfile
        import tempfile
        try:
            stream, _ = self.api.get_archive(cid, path)
        except docker.errors.NotFound:
            return []
        with tempfile.TemporaryFile() as f:
            for chunk in stream:
                f.write(chunk)
            f.seek(0)
            with tarfile.open(fileobj=f) as tar:
                top = path.rstrip("/").split("/")[-1]
                return sorted(m.name[len(top) + 1:] for m in tar.getmembers()
                              if m.isfile() and m.name.startswith(top + "/"))

    def logs(self, cid: str, follow: bool = True) -> Iterator[bytes]:
        return self.api.logs(cid, stream=True, follow=follow, stdout=True, stderr=True)

    def wait(self, cid: str, timeout: float) -> int:
        try:
            return int(self.api.wait(cid, timeout=timeout)["StatusCode"])
        except (requests.exceptions.Timeout, requests.exceptions.ConnectionError) as e:
            raise TimeoutError from e

    def inspect_container(self, cid: str) -> dict:
        return self._call(self.api.inspect_container, cid)

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
            resp = self.api._get(self.api._url("/images/get"), params={"names": ref}, stream=True)
            self.api._raise_for_status(resp)
            try:
                # whole blocks (iter_content would hand out the engine's 32 KiB HTTP chunks)
                while block := resp.raw.read(chunk_size):
                    yield block
            finally:
                resp.close()
        except docker.errors.APIError as e:
            raise EngineError(f"export of {ref} failed: {_explain(e)}") from e
        except (requests.exceptions.RequestException, urllib3.exceptions.HTTPError) as e:
            raise EngineError(f"export of {ref} broke off: {_explain(e)}") from e

    def load(self, data: IO[bytes] | Iterator[bytes]) -> Iterator[dict]:
        """POST /images/load; `data` may be a generator of chunks (sent chunked)."""
        try:
            yield from self.api.load_image(data, quiet=True)
        except docker.errors.APIError as e:
            raise EngineError(f"load failed: {_explain(e)}") from e
        except requests.exceptions.RequestException as e:
            raise EngineError(f"load broke off: {_explain(e)}") from e

    def push(self, repository: str, tag: str, auth: dict | None) -> Iterator[dict]:
        try:
            yield from self.api.push(repository, tag=tag, stream=True, decode=True,
                                     auth_config=auth)
        except (docker.errors.APIError, requests.exceptions.RequestException) as e:
            raise EngineError(f"push of {repository}:{tag} failed: {_explain(e)}") from e

    def registry_auth(self, registry: str) -> dict | None:
        """Credentials for `registry` from the Docker config file: its `auths`,
        `credHelpers` and `credsStore` (helpers get the registry on stdin, as the
        docker CLI does). None when it has none. Only ever handed to the engine."""
        try:
            found = docker.auth.resolve_authconfig(docker.auth.load_config(), registry)
        except docker.errors.DockerException as e:
            raise EngineError(f"reading Docker credentials for {registry}: {_explain(e)}") \
                from None
        return dict(found) if found else None

    def distribution_digest(self, ref: str, auth: dict | None) -> str:
        """The manifest digest the registry holds for `ref`, asked through the
        engine (GET /distribution/REF/json with X-Registry-Auth)."""
        try:
            data = self.api.inspect_distribution(ref, auth_config=auth)
        except (docker.errors.APIError, requests.exceptions.RequestException) as e:
            text = getattr(e, "explanation", None) or str(e)
            lines = [x.strip() for x in str(text).splitlines() if x.strip() not in ("", "errors:")]
            raise EngineError(f"asking the registry for {ref}: {'; '.join(lines) or e}") from e
        return str((data.get("Descriptor") or {}).get("digest") or "")

    def _call(self, fn, *args: Any, **kwargs: Any):
        try:
            return fn(*args, **kwargs)
        except docker.errors.NotFound as e:
            raise EngineError(_explain(e)) from e
        except docker.errors.APIError as e:
            raise EngineError(_explain(e)) from e
        except requests.exceptions.ConnectionError as e:
            raise EngineUnavailable(f"lost the Docker engine at {_where()}: "
                                    f"{str(e).splitlines()[0]}; {HINT}") from e


def _explain(e: Exception) -> str:
    text = getattr(e, "explanation", None) or str(e)
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return str(text).strip().splitlines()[0] if str(text).strip() else type(e).__name__
