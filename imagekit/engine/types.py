"""The engine seam: `EngineAPI`, what the stages need from a container
engine, and the small typed items its streams are decoded into. Nothing here
knows a wire format; `api.Engine` implements the protocol over the
Docker API, tests/fakes.FakeEngine for unit tests."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Protocol

BUILDKIT_SINCE = 23      # Engine 23+ has BuildKit built in
HINT = "start one with `make engine`, or point DOCKER_HOST at a running engine"


# -- what the engine hands the stages ---------------------------------------

@dataclass(frozen=True)
class ImageInfo:
    """An image as the engine reports it. `id` is the engine's own ID: the
    config digest on the classic store, the manifest (or index) digest on the
    containerd store, so it changes when an image crosses stores. `identity`
    does not: it is computed from what both stores report alike (the layer
    diff IDs and the image config's run-time fields), and is what imagekit
    keys its records on. Empty when the engine reported no layers."""

    id: str
    size: int = 0
    labels: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    diff_ids: tuple[str, ...] = ()
    identity: str = ""

    @property
    def key(self) -> str:
        """What records are keyed on: the identity, else the engine's ID."""
        return self.identity or self.id


@dataclass(frozen=True)
class BuildStep:
    """A Dockerfile instruction starts."""

    index: int
    total: int
    instruction: str


@dataclass(frozen=True)
class BuildCached:
    """The current step came from the cache."""


@dataclass(frozen=True)
class BuildOutput:
    """A line the current step printed."""

    line: str


@dataclass(frozen=True)
class BuildDone:
    image_id: str


@dataclass(frozen=True)
class LayerProgress:
    """One layer of a push: its status ('Pushing', 'Pushed', 'Layer already
    exists', 'engine retrying in 5s', ...) and bytes."""

    layer: str
    status: str
    current: int = 0
    total: int = 0


@dataclass(frozen=True)
class PushDone:
    digest: str


@dataclass(frozen=True)
class ContainerState:
    running: bool
    exit_code: int | None


@dataclass(frozen=True)
class RunAs:
    """How a platform runs a container, beyond the image's own settings: the
    user (UID:GID), the size of /dev/shm, a read-only root file system with
    empty writable tmpfs folders, the host name, and a network by name (a
    private network of several nodes) with the names the other containers on
    it reach this one by (`aliases`)."""

    user: str | None = None
    shm_mb: int | None = None
    read_only: bool = False
    tmpfs: tuple[str, ...] = ()
    hostname: str | None = None
    network: str | None = None
    aliases: tuple[str, ...] = ()


@dataclass(frozen=True)
class EngineFacts:
    """What the engine is (`docker version` / `docker info`, decoded)."""

    where: str
    context: str = ""              # the docker context it was found through, if any
    server_version: str = ""
    api_version: str = ""
    os: str = ""
    arch: str = ""
    store: str = "classic"         # "containerd": the containerd image store (snapshotter)
    storage_driver: str = ""
    buildkit: bool = False         # BuildKit built in (Engine 23+ has it)
    gpu_runtime: bool = False      # an nvidia runtime
    cdi_gpus: int = 0              # nvidia.com/gpu CDI devices

    @property
    def layers_stored_compressed(self) -> bool:
        """The store keeps layers as pushed or pulled (gzip): a push through
        the engine compresses nothing."""
        return self.store == "containerd"


BuildItem = BuildStep | BuildCached | BuildOutput | BuildDone
PushItem = LayerProgress | PushDone

CLASSIC, BUILDKIT = "classic", "buildkit"


class EngineAPI(Protocol):
    """What imagekit's stages need from a container engine."""

    def gpu_capable(self) -> bool: ...
    def facts(self) -> EngineFacts: ...
    def stored_compressed(self, ref: str) -> bool: ...
    def image(self, ref: str) -> ImageInfo | None: ...
    def tag(self, image: str, repository: str, tag: str) -> None: ...
    def remove_image(self, ref: str) -> None: ...
    def answers(self, settle: float = 0.0) -> bool: ...
    def build(self, context: IO[bytes], tag: str, *, network_mode: str | None = None,
              pull: bool = False, nocache: bool = False) -> Iterator[BuildItem]: ...
    def import_image(self, stream: IO[bytes], repository: str, tag: str,
                     changes: list[str]) -> None: ...
    def volume(self, name: str, owner: str = "") -> contextlib.AbstractContextManager[str]: ...
    def network(self, name: str, owner: str = "") -> contextlib.AbstractContextManager[str]: ...
    def container(self, image: str, command: list[str] | None = None, *, name: str,
                  volumes: dict[str, str] | None = None, env: dict | None = None,
                  gpus: bool = False, workdir: str | None = None, files: bytes | None = None,
                  network: bool = True, owner: str = "", run_as: RunAs | None = None) \
        -> contextlib.AbstractContextManager[str]: ...
    def files_in(self, cid: str, path: str) -> list[str]: ...
    def sweep(self) -> int: ...
    def hold_tags(self, image_id: str, refs: list[str]) -> Path | None: ...
    def release_tags(self, token: Path | None) -> None: ...
    def logs(self, cid: str, follow: bool = True) -> Iterator[bytes]: ...
    def wait(self, cid: str, timeout: float) -> int: ...
    def state(self, cid: str) -> ContainerState: ...
    def exec_run(self, cid: str, cmd: list[str]) -> tuple[int, str]: ...
    def save(self, ref: str | list[str], chunk_size: int = ...) -> Iterator[bytes]: ...
    def load(self, data: IO[bytes] | Iterator[bytes]) -> list[str]: ...
    def push(self, repository: str, tag: str, auth: dict | None) -> Iterator[PushItem]: ...
    def pull(self, ref: str, auth: dict | None) -> None: ...
    def registry_auth(self, registry: str) -> dict | None: ...
    def distribution_digest(self, ref: str, auth: dict | None) -> str: ...


class Builder(Protocol):
    """What turns a build context into an image: the engine's classic builder
    (api.ClassicBuilder) or BuildKit through buildx (buildx.BuildxBuilder).
    Both decode their progress into the same BuildItems."""

    kind: str                 # CLASSIC or BUILDKIT: which Dockerfile it gets
    name: str                 # what --builder names: "classic", "buildkit", a buildx builder
    reason: str               # why this one, one line (build's first line, doctor)
    engine: EngineAPI         # where the images it builds land

    def cache_export_problem(self) -> str: ...   # why it cannot export a build cache ("": it can)

    def build(self, context: IO[bytes], tag: str, *, nocache: bool = False,
              network_mode: str | None = None, contexts: dict[str, Path] | None = None,
              cache_to: str = "", cache_from: str = "",
              source_date_epoch: int | None = None) -> Iterator[BuildItem]: ...

