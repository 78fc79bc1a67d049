"""Events that the stages yield and the display renders. Stages never print."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar


def count(n: int, noun: str) -> str:
    """'1 file', '2 files'."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


@dataclass
class Event:
    kind: ClassVar[str] = "event"
    image: str = ""

    def to_dict(self) -> dict:
        return {"event": self.kind, **asdict(self)}


@dataclass
class Info(Event):
    kind: ClassVar[str] = "info"
    message: str = ""


@dataclass
class Warn(Event):
    kind: ClassVar[str] = "warning"
    message: str = ""


@dataclass
class Log(Event):
    """A line of output from the engine, pip or a container."""

    kind: ClassVar[str] = "log"
    line: str = ""


@dataclass
class Step(Event):
    kind: ClassVar[str] = "step"
    index: int = 0
    total: int = 0
    instruction: str = ""


@dataclass
class Cached(Event):
    kind: ClassVar[str] = "cached"
    index: int = 0


@dataclass
class Built(Event):
    kind: ClassVar[str] = "built"
    image_id: str = ""
    refs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    cached_steps: int = 0
    log_path: str = ""


@dataclass
class Skipped(Event):
    kind: ClassVar[str] = "skipped"
    reason: str = ""


@dataclass
class Failed(Event):
    kind: ClassVar[str] = "failed"
    reason: str = ""


@dataclass
class Progress(Event):
    """Byte progress of one item (a layer being pushed, an archive being written)."""

    kind: ClassVar[str] = "progress"
    item: str = ""
    current: int = 0
    total: int = 0
    status: str = ""


# -- typed stage results ------------------------------------------------------
# Each is the last event of its stage. --json writes it as
# {"event": "result", "image": ..., "stage": STAGE, "data": {its other fields}}.

@dataclass
class StageResult(Event):
    kind: ClassVar[str] = "result"
    stage: ClassVar[str] = ""

    def to_dict(self) -> dict:
        data = asdict(self)
        image = data.pop("image")
        return {"event": self.kind, "image": image, "stage": self.stage, "data": data}


@dataclass
class FetchResult(StageResult):
    stage: ClassVar[str] = "fetch"
    downloaded: int = 0
    bytes: int = 0
    wheelhouse: str = ""


@dataclass
class BaseResult(StageResult):
    """`image` is the base image's reference."""

    stage: ClassVar[str] = "base"
    image_id: str = ""
    made: bool = False
    size: int = 0


@dataclass
class ImageOutcome:
    status: str                       # ok | failed | skipped
    reason: str = ""
    exit_code: int = 0
    details: list[str] = field(default_factory=list)


@dataclass
class GraphResult(StageResult):
    stage: ClassVar[str] = "graph"
    images: dict[str, ImageOutcome] = field(default_factory=dict)


@dataclass
class FrameworkReport:
    """What the framework check printed from inside the container."""

    framework: str = ""
    version: str = ""
    python: str = ""
    device: str = ""
    device_name: str = ""
    cuda: str | None = None
    cudnn: str | None = None
    gpu_count: int = 0
    steps: int = 0
    loss_first: float | None = None
    loss_last: float | None = None
    steps_per_sec: float | None = None
    ok: bool = False
    reason: str | None = None
    wall_seconds: float = 0.0
    gpu_readiness: dict | None = None

    @classmethod
    def from_json(cls, data: dict) -> FrameworkReport:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class TrainingRun:
    command: list[str]
    exit: int
    seconds: float


@dataclass
class TrainingResult:
    steps: int
    runs: list[TrainingRun] = field(default_factory=list)
    resumed_from: int | None = None
    output_files: list[str] = field(default_factory=list)
    nodes: int = 1                        # one job on several nodes (train.distributed)


@dataclass
class NotebookResult:
    url: str
    seconds_to_answer: float
    lab: int = 200
    api_status: int = 200
    started: str | None = None


@dataclass
class GpuVerdict:
    """What a smoke test found about the image's GPU side (see gpu.py)."""

    proven: str                           # trained on GPU | GPU-ready (checked without a GPU)
    cuda_build: str | None = None         # the CUDA the framework was built for
    cudnn_build: str | None = None
    cuda_runtime: str | None = None       # installed in the image (nvidia-cuda-runtime[-cuXX])
    cudnn_installed: str | None = None
    nccl_installed: str | None = None
    libraries: dict[str, str] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    sass: list[str] = field(default_factory=list)
    ptx: list[str] = field(default_factory=list)
    driver_min: str | None = None
    driver_rule: str = ""
    driver_source: str = ""
    target_driver: str | None = None
    target_archs: list[str] = field(default_factory=list)
    fits: bool | None = None              # None: no target platform given

    def installed(self) -> str:
        """'CUDA runtime 12.9.79, cuDNN 9.28.0.42, NCCL 2.32.3', as far as known."""
        libs = ", ".join(f"{k} {x}" for k, x in (("CUDA runtime", self.cuda_runtime),
                                                  ("cuDNN", self.cudnn_installed),
                                                  ("NCCL", self.nccl_installed)) if x)
        return libs or "no CUDA libraries from pip"

    def code(self) -> str:
        return " ".join(self.sass + self.ptx) or "unknown"


@dataclass
class NodesResult:
    """What the N-node check found: every rank's all-reduce result (in rank
    order), whether they agree (and are N(N+1)/2), each rank's exit, seconds
    and loss first -> last; `covered` False (with a note) for a framework the
    check does not cover."""

    nodes: int
    framework: str | None
    allreduce: list[float | None] = field(default_factory=list)
    agreed: bool = False
    ranks: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    covered: bool = True
    note: str | None = None


@dataclass
class SmokeResult(StageResult):
    """The smoke report (also stored as JSON under the image ID)."""

    stage: ClassVar[str] = "smoke"
    ref: str = ""
    image_id: str = ""
    gpu_mode: str = "auto"
    gpu_requested: bool = False
    note: str | None = None
    log: str = ""
    started_at: str = ""
    passed: bool = False
    seconds: float = 0.0
    error: str | None = None
    proven: str = ""                      # trained on GPU | GPU-ready | CPU only
    framework_check: FrameworkReport | None = None
    gpu: GpuVerdict | None = None
    training: TrainingResult | None = None
    notebook: NotebookResult | None = None
    platform: str | None = None           # the platform contract it ran under (--platform)
    nodes: NodesResult | None = None      # the N-node check (--nodes, a profile's nodes)


@dataclass
class AttachedSbom:
    """The bill of materials attached to a pushed image (`push --sbom`): an OCI
    artifact at `ref` (REPO@DIGEST) whose subject is the image's manifest.
    `how`: "referrers API" (the registry lists it itself) or "referrers tag"
    (listed in the OCI index at `tag`, sha256-<hex of the subject digest>)."""

    ref: str
    digest: str
    subject: str
    how: str
    tag: str = ""


@dataclass
class PushedDestination:
    ref: str
    repository: str
    tag: str
    digest: str
    pinned: str
    attempts: int
    seconds: float
    via: str = "direct"                   # direct (imagekit's own path) | engine
    bytes_sent: int | None = None         # on the direct path: request bodies sent
    sbom: AttachedSbom | None = None      # with --sbom, where its bill of materials went


@dataclass
class PushResult(StageResult):
    stage: ClassVar[str] = "push"
    image_id: str = ""
    source: str = ""
    smoke_gate: str = "on"
    smoke_passed: bool = False
    destinations: list[PushedDestination] = field(default_factory=list)
    bytes_compressed: int | None = None   # own path: uncompressed bytes imagekit compressed
    layers_as_stored: int | None = None   # own path: layers sent as the engine stored them


@dataclass
class SaveResult(StageResult):
    stage: ClassVar[str] = "save"
    path: str = ""
    format: str = ""
    bytes: int = 0
    tar_bytes: int = 0
    sha256: str = ""
    sha256_file: str = ""
    manifest_file: str = ""
    image_id: str = ""
    ref: str = ""
    seconds: float = 0.0
    mb_per_s: float | None = None
    sbom_file: str = ""          # PATH.sbom.json; "" when the image could not be listed


@dataclass
class LockResult(StageResult):
    """images/NAME/requirements.lock written (or found unchanged): `steps`
    counts the packages each install step takes from it; `added`, `removed`
    and `changed` name packages against the lock it replaced."""

    stage: ClassVar[str] = "lock"
    path: str = ""
    packages: int = 0
    steps: dict[str, int] = field(default_factory=dict)
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    written: bool = False
    replaced: bool = False         # a lock was there before
    epoch: int = 0
    digest: str = ""
    seconds: float = 0.0


@dataclass
class SbomResult(StageResult):
    """The bill of materials of one image (CycloneDX 1.5 JSON). `path` is the
    file written, "" when the document went to stdout."""

    stage: ClassVar[str] = "sbom"
    ref: str = ""
    image_id: str = ""
    path: str = ""
    python_packages: int = 0
    debian_packages: int = 0
    cuda_libraries: int = 0
    wheel_hashes: int = 0          # Python packages hashed by their wheelhouse file
    seconds: float = 0.0


@dataclass
class LoadResult(StageResult):
    stage: ClassVar[str] = "load"
    path: str = ""
    format: str = ""
    refs: list[str] = field(default_factory=list)
    image_id: str = ""          # the engine's own ID for it (differs between image stores)
    checksum: str = ""
    manifest: str = ""
    config_digest: str = ""     # the image config's digest: the same on every store


@dataclass
class LayerReport:
    size: int
    wasted: int
    created_by: str


@dataclass
class WastedPath:
    path: str
    bytes: int


@dataclass
class InspectResult(StageResult):
    """`image` is the reference inspected."""

    stage: ClassVar[str] = "inspect"
    image_id: str = ""
    size: int = 0
    layers: list[LayerReport] = field(default_factory=list)
    total_bytes: int = 0
    wasted_bytes: int = 0
    efficiency: float = 1.0
    top_wasted: list[WastedPath] = field(default_factory=list)
    python_packages: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class PathDifference:
    """One path that two builds of a layer hold differently. `what`: content,
    kind, mtime, mode, owner, xattrs, or "only in build 1" / "only in build 2";
    `first` and `second` show the differing values of each build."""

    path: str
    what: list[str] = field(default_factory=list)
    first: str = ""
    second: str = ""


@dataclass
class LayerCheck:
    """One layer above the base, as two cold builds made it."""

    index: int                   # 1-based among all the image's layers
    step: str                    # the instruction that made it
    diff_ids: list[str] = field(default_factory=list)   # build 1's, build 2's
    same: bool = True
    paths: list[PathDifference] = field(default_factory=list)   # the first ones
    paths_total: int = 0         # how many paths differ
    why: str = ""                # where imagekit knows why it cannot be made alike


@dataclass
class ReproduceResult(StageResult):
    """`imagekit build --check-reproducible`: two cold builds, compared."""

    stage: ClassVar[str] = "reproduce"
    builder: str = ""
    base: str = ""               # the image it is built FROM
    base_layers: int = 0
    identical: int = 0           # layers above the base alike in both builds
    total: int = 0               # layers above the base
    seconds: list[float] = field(default_factory=list)   # each cold build
    image_ids: list[str] = field(default_factory=list)
    source_date_epoch: int = 0
    layers: list[LayerCheck] = field(default_factory=list)

    @property
    def reproducible(self) -> bool:
        return self.identical == self.total and len(self.layers) == self.total


@dataclass
class CatalogEntry:
    name: str
    framework: str = ""
    device: str = ""
    python: str = ""
    cuda: str = ""
    parent: str = ""
    jupyter: str = ""
    tags: str = ""
    description: str = ""


@dataclass
class CatalogResult(StageResult):
    stage: ClassVar[str] = "list"
    folder: str = ""
    entries: list[CatalogEntry] = field(default_factory=list)


@dataclass
class MatrixRow:
    framework: str
    version: str
    python: str = ""
    cpu_install: str = ""
    gpu_install: str = ""
    cuda: str = ""
    gpu_base: str = ""
    refused: str = ""
    archs: str = ""          # with a target platform: the code the GPU build carries,
    driver: str = ""         # the driver it needs there,
    fit: str = ""            # and whether it fits


@dataclass
class MatrixResult(StageResult):
    stage: ClassVar[str] = "matrix"
    rows: list[MatrixRow] = field(default_factory=list)


@dataclass
class PlatformRow:
    """One platform profile, as `imagekit platforms` lists it."""

    name: str
    mounts: str
    user: str
    shm_mb: int
    root_fs: str
    network: str
    nodes: int
    start: str
    source: str                # shipped | imagekit.toml
    description: str = ""
    env: dict = field(default_factory=dict)


@dataclass
class PlatformsResult(StageResult):
    stage: ClassVar[str] = "platforms"
    rows: list[PlatformRow] = field(default_factory=list)


@dataclass
class DoctorCheck:
    """One line of `imagekit doctor`: what was found, and a one-line fix where
    something is missing or wrong (ok False)."""

    name: str                  # engine, version, store, builders, gpu, base, wheelhouse, config
    found: str
    ok: bool = True
    fix: str = ""


@dataclass
class DoctorResult(StageResult):
    """`imagekit doctor`: the engine and what builds need from this machine."""

    stage: ClassVar[str] = "doctor"
    where: str = ""            # the engine's endpoint
    via: str = ""              # how it was found: "DOCKER_HOST", "context NAME", "default socket"
    server_version: str = ""
    api_version: str = ""
    store: str = ""            # "classic" or "containerd"
    storage_driver: str = ""
    builders: list[str] = field(default_factory=list)   # "classic", "buildkit"
    buildx: str = ""           # the buildx plugin's version; empty when `docker buildx` fails
    buildx_path: str = ""
    builder: str = ""          # what `imagekit build` uses: classic, buildkit, a buildx builder
    builder_reason: str = ""   # why (or, with no builder, why none)
    gpu_runtime: bool = False
    cdi_gpus: int = 0
    base_image: str = ""       # imagekit.toml [base] image; empty when there is none
    base_present: bool = False
    wheelhouse: str = ""       # empty when builds install from [pip] index_url
    wheelhouse_bytes: int = 0  # on disk
    free_bytes: int = 0        # free on the wheelhouse's disk
    checks: list[DoctorCheck] = field(default_factory=list)

    @property
    def problems(self) -> list[DoctorCheck]:
        return [c for c in self.checks if not c.ok]


@dataclass
class Checked(Event):
    """One image passed a check (validate, lint)."""

    kind: ClassVar[str] = "ok"
    what: str = ""


@dataclass
class Problem(Event):
    """One problem found by a check that goes on to the next image."""

    kind: ClassVar[str] = "problem"
    message: str = ""
    exit_code: int = 1
