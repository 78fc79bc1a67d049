"""The command line. Each verb is a stage of spec -> render -> build -> smoke
-> save/push; it turns its arguments into a stage call and hands the stage's
events to the display. Errors are raised deep down and printed here, once, as
one line (one JSON object on stderr with --json)."""


import itertools
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import closing, nullcontext
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer

from . import __version__, matrix, records, reference, targets
from .config import Project, load_project
from .display import Display, error
from .engine import Engine
from .errors import (
    BuildError,
    EngineUnavailable,
    ImagekitError,
    Interrupted,
    LockError,
    PushError,
    SaveError,
    SmokeError,
    SpecError,
    UsageError,
)
from .events import (
    CatalogEntry,
    CatalogResult,
    Checked,
    Event,
    GraphResult,
    ImageOutcome,
    Info,
    MatrixResult,
    MatrixRow,
    Problem,
    Skipped,
)
from .spec import Device, Framework, Plan

app = typer.Typer(no_args_is_help=True, rich_markup_mode=None,
                  help="Build, smoke-test and publish Docker images for ML training platforms.")
base_app = typer.Typer(no_args_is_help=True, help="Base images made without a registry.")
app.add_typer(base_app, name="base")


class Gpu(str, Enum):
    auto = "auto"
    require = "require"
    off = "off"


class PushFormat(str, Enum):
    docker = "docker"
    oci = "oci"
    oci_zstd = "oci-zstd"


class PushVia(str, Enum):
    auto = "auto"
    own = "own"
    engine = "engine"


class Compression(str, Enum):
    gzip = "gzip"
    zstd = "zstd"


class Output(str, Enum):
    auto = "auto"
    rich = "rich"
    plain = "plain"
    json = "json"


GpuOpt = Annotated[Gpu, typer.Option(
    "--gpu", help="auto: request GPUs for a GPU image when the engine has them; "
    "require: fail (exit 9) when it has none; off: never.")]
StepsOpt = Annotated[int | None, typer.Option(
    "--steps", min=1, help="Training steps for the smoke run (default: the spec's smoke.steps).")]
TimeoutOpt = Annotated[int | None, typer.Option(
    "--timeout", min=1, help="Time limit in seconds for each smoke container.")]
NetworkOpt = Annotated[bool, typer.Option(
    "--network", help="Give the smoke containers a network (default: none, as on many "
    "training platforms' nodes).")]
Names = Annotated[list[str] | None, typer.Argument(help="Image names (folders in images/).")]
Targets = Annotated[list[str] | None, typer.Argument(
    help="Catalog names or image references the engine holds (default: what the last "
    "`imagekit build` made).", show_default=False)]
AllOpt = Annotated[bool, typer.Option("--all", help="Every image in the catalog.")]
BuilderOpt = Annotated[str | None, typer.Option(
    "--builder", metavar="classic|buildkit|NAME", help="classic: the engine's classic builder; "
    "buildkit: the engine's BuildKit through buildx; NAME: that buildx builder (`docker buildx "
    "ls`), on this engine or another. Default: [build] builder in imagekit.toml, else BuildKit "
    "where the engine has it and buildx is installed, else classic.")]


def _builder(engine, requested: str, **kw):
    """The chosen builder, or a usage error (exit 2) naming what is missing."""
    from .engine import choose
    from .errors import EngineError
    try:
        return choose(engine, requested, **kw)
    except EngineError as e:
        raise UsageError(f"builder: {e.message}") from None


class State:
    project_dir: Path | None = None
    output: str = "auto"
    verbose: bool = False
    _project: Project | None = None

    @property
    def project(self) -> Project:
        if self._project is None:
            self._project = load_project(self.project_dir)
        return self._project

    def display(self, **kw) -> Display:
        return Display(self.output, self.verbose, **kw)


state = State()


@app.callback()
def _main(
    project: Annotated[Path | None, typer.Option(
        "--project", "-C", help="Project folder (holds imagekit.toml and images/); "
        "default: found from the current folder, or $IMAGEKIT_PROJECT.")] = None,
    output: Annotated[Output, typer.Option(
        "--output", help="Output style; auto = live view on a terminal, plain lines otherwise."
    )] = Output.auto,
    json_: Annotated[bool, typer.Option("--json", help="Machine-readable events, one JSON "
                                                       "object per line.")] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Show every log line.")] = False,
) -> None:
    state.project_dir = project
    state._project = None
    state.output = "json" if json_ else output.value
    state.verbose = verbose


def _show(events: Iterator[Event], display: Display | None = None) -> list[Event]:
    """Hand a stage's events to the display; close the stage on every way out so
    that it removes what it had half made (temporary files) even on Ctrl-C.
    Returns the Problem events (checks that go on after a problem)."""
    problems: list[Event] = []
    events = iter(events)
    with (display or state.display()) as d, closing(events) if hasattr(events, "close") \
            else nullcontext():
        for ev in events:
            if isinstance(ev, Problem):
                problems.append(ev)
            d.show(ev)
    return problems


def _names(project: Project, names: list[str] | None, all_: bool) -> list[str]:
    if names and all_:
        raise UsageError("name images or use --all, not both")
    if all_ or not names:
        found = project.catalog.names()
        if not found:
            raise SpecError(f"no image specs in {project.catalog.dir} (images/<name>/image.yaml)")
        if not all_ and not names:
            raise UsageError("name at least one image, or use --all")
        return found
    return names


def _plans(project: Project, names: list[str]) -> list[Plan]:
    return [project.catalog.resolve(n) for n in names]


def _chosen(given: list[str] | None, all_: bool, verb: str) -> Iterator[Event | str]:
    """The images a publishing verb acts on: the ones named, every catalog
    image with --all, else what the last build made (said in the first line)."""
    project = state.project
    if given and all_:
        raise UsageError("name images or use --all, not both")
    if all_:
        yield from _names(project, None, True)
    elif given:
        yield from given
    else:
        names, line = targets.last_built(project, verb)
        yield Info("", line)
        yield from names


@app.command("list")
def list_() -> None:
    """Show the catalog as a table."""
    project = state.project
    entries = []
    for name in project.catalog.names():
        try:
            p = project.catalog.resolve(name)
            m = p.spec.model
            entries.append(CatalogEntry(name, f"{p.framework} {p.version}", p.device, p.python,
                                        p.cuda or "-", m.parent or "-",
                                        "yes" if m.jupyter.enabled else "-", ", ".join(m.tags),
                                        m.description))
        except ImagekitError as e:
            entries.append(CatalogEntry(name, "INVALID", description=str(e)))
    _show(iter([CatalogResult("", folder=str(project.catalog.dir), entries=entries)]))


@app.command()
def validate(names: Names = None) -> None:
    """Check specs (all of them when no name is given): fields, files, compatibility."""
    project = state.project
    todo = names or project.catalog.names()
    if not todo:
        raise SpecError(f"no image specs in {project.catalog.dir}")

    def check() -> Iterator[Event]:
        for name in todo:
            try:
                project.catalog.resolve(name)
                yield Checked(name, "validate")
            except ImagekitError as e:
                for line in e.lines():
                    yield Problem("", line, e.exit_code)

    problems = _show(check())
    if problems:
        raise typer.Exit(problems[0].exit_code)


@app.command()
def render(name: Annotated[str, typer.Argument(help="Image name.")],
           builder_name: BuilderOpt = None) -> None:
    """Print the Dockerfile rendered from a spec for the builder `imagekit build`
    would use (or --builder's): nothing is built."""
    project = state.project
    from .lock import read
    from .render import render as render_plan
    plan = project.catalog.resolve(name)
    sys.stdout.write(render_plan(plan, project, _builder_kind(builder_name or
                                                                project.config.build.builder),
                                 read(plan)))


def _builder_kind(requested: str) -> str:
    """"classic" or "buildkit": the Dockerfile a build with `requested` gets."""
    if requested in ("classic", "buildkit"):
        return requested
    try:
        return _builder(Engine.connect(timeout=10), requested).kind
    except EngineUnavailable:      # no engine to ask: what this machine's buildx could do
        from .engine import find_buildx
        return "buildkit" if requested != "auto" or find_buildx().works else "classic"


DriverOpt = Annotated[str | None, typer.Option(
    "--driver", metavar="VERSION", help="The training platform's NVIDIA driver, e.g. 470.82.01 "
    "(default: imagekit.toml [platform] driver).")]
GpuArchOpt = Annotated[list[str] | None, typer.Option(
    "--gpu-arch", metavar="SM", help="The platform's GPU architecture (sm_80, 8.0, or a model "
    "like A100; repeat for several; default: imagekit.toml [platform] gpu_arch).")]


@app.command("platforms")
def platforms_() -> None:
    """List the training platforms' contracts smoke can run an image under
    (`imagekit smoke NAME --platform P`): mounts, user, /dev/shm, root file
    system, network, nodes, how the platform starts the container."""
    from . import platforms
    from .events import PlatformRow, PlatformsResult
    project = state.project
    own = set(project.config.platforms)
    rows = []
    for name, p in sorted(platforms.profiles(project).items()):
        rows.append(PlatformRow(
            name, " ".join(f"{k}={v}" for k, v in p.mounts.items()) or "-", p.user, p.shm_mb,
            "read-only" if p.read_only_root else "writable", p.network, p.nodes,
            "IMAGE " + " ".join(p.args) if p.args is not None else
            ("notebook" if p.notebook else "your command"),
            "imagekit.toml" if name in own else "shipped", p.description, dict(p.env)))
    _show(iter([PlatformsResult("", rows=rows)]))


@app.command("matrix")
def matrix_(driver: DriverOpt = None, gpu_arch: GpuArchOpt = None) -> None:
    """Show the compatibility matrix: framework versions, Python, CUDA, base; with
    --driver or --gpu-arch, which GPU builds fit that platform."""
    if driver or gpu_arch:
        rows = [MatrixRow(f.framework, f.version, cuda=f"{f.cuda} (built for {f.cuda_build})"
                          if f.cuda_build else f.cuda, archs=" ".join(f.sass + f.ptx),
                          driver=f">= {f.driver_needed}",
                          fit="yes" if f.fits else f"no: {f.reason}")
                for f in matrix.fits(driver, gpu_arch)]
        _show(iter([MatrixResult("", rows=rows)]))
        return
    data = matrix.load()
    rows = []
    for fw, spec in data["frameworks"].items():
        for ver, row in spec["versions"].items():
            g = row["gpu"]
            rows.append(MatrixRow(fw, ver, " ".join(row["python"]), " ".join(row["cpu"]["pip"]),
                                  " ".join(g["pip"]),
                                  f"{g['cuda']} / {g['cudnn']} ({g['cuda_from']})",
                                  data["bases"][g["base"]]["image"]))
        for ver, why in spec.get("refused", {}).items():
            rows.append(MatrixRow(fw, ver, refused=why))
    _show(iter([MatrixResult("", rows=rows)]))


@app.command()
def lint(names: Names = None, all_: AllOpt = False) -> None:
    """Render specs and check the Dockerfiles with hadolint."""
    from .lint import lint as lint_stage
    project = state.project
    problems = _show(lint_stage(_plans(project, _names(project, names, all_ or not names)),
                                project))
    if problems:
        raise typer.Exit(problems[0].exit_code)


@app.command("lock")
def lock_(
    names: Names = None,
    all_: AllOpt = False,
    check: Annotated[bool, typer.Option(
        "--check", help="Write nothing: fail (exit 18) when a lock no longer matches its spec, "
        "the matrix or imagekit.toml, naming what changed. With no names: every image that "
        "has a lock.")] = False,
) -> None:
    """Write images/NAME/requirements.lock: every Python package the image
    installs, transitively, pinned with its wheel's sha256 (resolved from the
    wheelhouse, or [pip] index_url). `imagekit build` then installs exactly it."""
    from . import lock
    project = state.project
    if check and not names and not all_:
        plans = [p for p in _plans(project, project.catalog.names()) if lock.lock_path(p).exists()]
        if not plans:
            raise UsageError(f"no image in {project.catalog.dir} has a {lock.LOCK_FILE} "
                             "(`imagekit lock NAME` writes one)")
    else:
        plans = _plans(project, _names(project, names, all_))

    def checks() -> Iterator[Event]:
        for p in plans:
            try:
                yield from lock.check_stage(p, project)
            except LockError as e:
                for line in [*e.lines(), *e.details]:
                    yield Problem("", line, e.exit_code)

    if check:
        problems = _show(checks())
        if problems:
            raise typer.Exit(problems[0].exit_code)
        return
    _show(itertools.chain.from_iterable(lock.make(p, project) for p in plans))


@app.command("fetch")
def fetch_(names: Names = None, all_: AllOpt = False) -> None:
    """Download the images' Python packages into the wheelhouse (host pip); what
    a machine with no network needs before `imagekit build`."""
    from . import fetch, lock
    project = state.project
    plans = _plans(project, _names(project, names, all_))
    _show(itertools.chain.from_iterable(
        fetch.fetch(p, project, lock.wanted(p, project, lock.check(p, project))) for p in plans))


@app.command()
def build(
    names: Names = None,
    all_: AllOpt = False,
    smoke: Annotated[bool, typer.Option("--smoke", help="Smoke-test each image once built.")]
    = False,
    gpu: GpuOpt = Gpu.auto,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Images built at once.")] = 2,
    include_gpu: Annotated[bool, typer.Option(
        "--include-gpu", help="With --all: also GPU images when the engine has no GPU.")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Build every layer anew.")] = False,
    network: NetworkOpt = False,
    builder_name: BuilderOpt = None,
    cache_to: Annotated[str | None, typer.Option(
        "--cache-to", metavar="REPOSITORY", help="Export BuildKit's build cache (every layer) to "
        "this registry repository, one tag per image (REPOSITORY:NAME; a full reference is "
        "used as given).")] = None,
    cache_from: Annotated[str | None, typer.Option(
        "--cache-from", metavar="REPOSITORY", help="Take cached layers from a build cache "
        "exported with --cache-to.")] = None,
    compression: Annotated[Compression | None, typer.Option(
        "--compression", help="How BuildKit compresses layers into the containerd image store, "
        "which is how pushes send them: gzip (level 1; every puller reads it) or zstd (OCI "
        "media types; containerd 1.5+ / Docker 23+ pull it). Default: [build] compression, "
        "else gzip.")] = None,
    load_here: Annotated[bool, typer.Option(
        "--load", help="With a builder on another engine: also load each built image into "
        "this one (streamed from that engine's export, nothing on disk).")] = False,
    check_reproducible: Annotated[bool, typer.Option(
        "--check-reproducible", help="Build each named image twice with no cache, as two "
        "throwaway images (removed after), and compare every layer above the base; exit 19 "
        "naming each layer that differs, its first paths and why. Its parent must be built.")]
    = False,
) -> None:
    """Render and build images (and their catalog parents, first) through the
    Docker engine, independent ones in parallel, with live progress. Python
    wheels and the base image are brought first when missing."""
    from . import base, fetch, graph, lock
    from . import smoke as smoke_stage
    if check_reproducible and (clash := [flag for flag, on in (
            ("--smoke", smoke), ("--cache-to", cache_to), ("--cache-from", cache_from),
            ("--load", load_here)) if on]):
        raise UsageError(f"--check-reproducible builds with no cache and keeps nothing: "
                         f"not with {', '.join(clash)}")
    for ref in (cache_to, cache_from):
        if ref:
            try:
                reference.parse_reference(ref)
            except ValueError as e:
                raise UsageError(f"--cache-to/--cache-from: {e}") from None
    project = state.project
    plans = _plans(project, _names(project, names, all_))
    local = Engine.connect()
    builder = _builder(local, builder_name or project.config.build.builder,
                       compression=(compression.value if compression else
                                    project.config.build.compression))
    engine = builder.engine            # where the images land: another engine's builder's, there
    left_out = []
    if all_ and not include_gpu and not engine.gpu_capable():
        left_out = [p for p in plans if p.device == "gpu"]
        plans = [p for p in plans if p.device != "gpu"]
    gpu_note = "GPU image and this engine has no GPU (name it, or --include-gpu)"

    def before(plan: Plan) -> Iterator[Event]:
        if plan.parent is None:
            yield from base.ensure(project, engine, project.map_base(plan.base_image))
        yield from fetch.ensure(plan, project, lock.wanted(plan, project, lock.check(plan, project)))

    if check_reproducible:
        _check_reproducible(plans, project, builder, before)
        return

    def after(plan: Plan) -> Iterator[Event]:
        from .gpu import platform
        from .ship import ship
        target = targets.resolve(project, engine, plan.name)
        if load_here and engine is not local:
            yield from ship(project, target, engine, local, "this engine", error=BuildError)
        if smoke:
            yield from smoke_stage.smoke(smoke_stage.SmokeTarget.of(target), project, engine,
                                         gpu=gpu.value, network=network,
                                         platform=platform(None, None, project.config.platform))

    def stages() -> Iterator[Event]:
        yield Info("", f"builder: {builder.name} ({builder.reason})")
        for p in left_out:
            yield Skipped(p.name, gpu_note)
        for ev in graph.build_graph(plans, project, engine, jobs=jobs, nocache=no_cache,
                                    before=before, after=after if smoke or load_here else None,
                                    builder=builder, cache_to=cache_to or "",
                                    cache_from=cache_from or ""):
            if isinstance(ev, GraphResult):
                ev.images.update({p.name: ImageOutcome("skipped", gpu_note) for p in left_out})
                outcome.update(ev.images)
            yield ev

    outcome: dict[str, ImageOutcome] = {}
    _show(stages())
    built = {p.name: o for p in plans if (o := outcome.get(p.name)) and o.status == "ok"}
    if built:
        ids = {n: img.id for n in built
               if (img := engine.image(project.catalog.get(n).image_ref()))}
        records.set_last_build(project, list(built), _command_line(), ids)
    failed = {n: o for n, o in outcome.items() if o.status == "failed"}
    if failed:
        first = next(iter(failed.values()))
        more = f" ({len(failed) - 1} more failed, listed above)" if len(failed) > 1 else ""
        error(first.reason + more, first.details if len(outcome) == 1 else [],
              as_json=state.output == "json", code=first.exit_code)
        raise typer.Exit(first.exit_code)


def _check_reproducible(plans: list[Plan], project: Project, builder,
                        before: Callable[[Plan], Iterator[Event]]) -> None:
    """`build --check-reproducible`: each image built twice and compared; the
    first one that differs is the error (exit 19)."""
    from . import reproduce
    from .errors import NotReproducible
    from .events import ReproduceResult
    results: list[ReproduceResult] = []

    def stages() -> Iterator[Event]:
        yield Info("", f"builder: {builder.name} ({builder.reason})")
        for plan in plans:
            yield from before(plan)
            for ev in reproduce.check(plan, project, builder.engine, builder):
                if isinstance(ev, ReproduceResult):
                    results.append(ev)
                yield ev

    _show(stages())
    for r in results:
        if not r.reproducible:
            first = next(x for x in r.layers if not x.same)
            paths = ", ".join(d.path for d in first.paths[:3]) or "no path differs"
            step = f" `{first.step[:60]}`" if first.step else ""
            raise NotReproducible(f"{r.image}: {r.total - r.identical} of {r.total} layers above "
                                  f"the base differ between two cold builds; first layer "
                                  f"{first.index}{step}: {paths}")


def _command_line() -> str:
    return "imagekit " + shlex.join(sys.argv[1:])


@app.command()
def smoke(
    names: Targets = None,
    all_: AllOpt = False,
    gpu: GpuOpt = Gpu.auto,
    steps: StepsOpt = None,
    timeout: TimeoutOpt = None,
    network: NetworkOpt = False,
    command: Annotated[str | None, typer.Option(
        "--command", help="For an image from outside the catalog: your training command, run "
        "with fresh data and output volumes (the spec's train.command for catalog images).")]
    = None,
    driver: DriverOpt = None,
    gpu_arch: GpuArchOpt = None,
    engine_url: Annotated[str | None, typer.Option(
        "--engine", metavar="URL", help="Run the smoke test on another Docker engine "
        "(ssh://user@gpu-box, tcp://host:2376, any DOCKER_HOST form); the image is shipped "
        "there when it lacks it.")] = None,
    platform_name: Annotated[str | None, typer.Option(
        "--platform", metavar="PROFILE", help="Train (and start the notebook) under a training "
        "platform's contract: its mounts, variables, user, /dev/shm, read-only root, start "
        "arguments (`imagekit platforms` lists them; default: [platform] profile).")] = None,
    nodes: Annotated[int | None, typer.Option(
        "--nodes", min=1, max=8, help="Also run the framework check as an N-rank job on N "
        "containers on a private network (PyTorch gloo, TensorFlow collective ops), with the "
        "platform's rendezvous variables (default: the profile's nodes, else 1).")] = None,
) -> None:
    """Run a short real training inside built images (or any image the engine
    holds) and judge it."""
    from . import platforms
    from . import smoke as smoke_stage
    from .gpu import platform
    from .ship import ship
    project = state.project
    target_platform = platform(driver, gpu_arch, project.config.platform)
    chosen = platform_name or project.config.platform.profile
    where = "" if platform_name else str(project.config_path or "imagekit.toml")
    profile = (chosen, platforms.get(project, chosen, where)) if chosen else None
    engine = Engine.connect()
    runner = Engine.connect(url=engine_url) if engine_url else engine

    def stages() -> Iterator[Event]:
        for item in _chosen(names, all_, "smoke"):
            if isinstance(item, Event):
                yield item
                continue
            try:
                target = targets.resolve(project, engine, item, error=SmokeError)
                here = True
            except (SmokeError, UsageError):
                if runner is engine:
                    raise
                # built on that engine (`imagekit build --builder` of a builder there)
                target = targets.resolve(project, runner, item, error=SmokeError)
                here = False
            if runner is not engine and here:
                yield from ship(project, target, engine, runner, engine_url)
            if command is not None and target.plan is not None:
                raise UsageError("--command is for images from outside the catalog; a catalog "
                                 "image trains with its spec's train.command")
            yield from smoke_stage.smoke(smoke_stage.SmokeTarget.of(target, command), project,
                                         runner, gpu=gpu.value, steps=steps, timeout=timeout,
                                         network=network, platform=target_platform,
                                         profile=profile, nodes=nodes)

    _show(stages())


@app.command()
def new(
    name: Annotated[str, typer.Argument(help="Name of the new image (its folder in images/).")],
    framework: Annotated[Framework, typer.Option("--framework", "-f", help="Framework.")],
    device: Annotated[Device, typer.Option("--device", "-d", help="cpu or gpu.")]
    = Device.cpu,
    version: Annotated[str | None, typer.Option(help="Framework version (default: the matrix's).")]
    = None,
    python: Annotated[str | None, typer.Option(help="Python version (default: the matrix's).")]
    = None,
) -> None:
    """Scaffold a spec and a starter training script that passes the smoke test."""
    from .new import scaffold
    from .spec import NAME_RE
    if not NAME_RE.match(name):
        raise UsageError(f"{reference.short(name)!r} is not an image name: lowercase letters, "
                         "digits and single '.', '_' or '-' between them, at most 128")
    project = state.project
    folder = scaffold(project, name, framework.value, device.value, version, python)
    print(f"created {folder}/image.yaml and code/train.py")
    print(f"next: imagekit build {name} --smoke")


@base_app.command("bootstrap")
def base_bootstrap(
    force: Annotated[bool, typer.Option("--force", help="Make it again even if present.")] = False,
) -> None:
    """Make the base image named in imagekit.toml [base] with debootstrap (no registry)."""
    from . import base
    project = state.project
    _show(base.bootstrap(project, Engine.connect(), force=force))


@app.command()
def push(
    names: Targets = None,
    all_: AllOpt = False,
    to: Annotated[list[str] | None, typer.Option(
        "--to", metavar="REGISTRY/NAMESPACE",
        help="Where to push (repeat for several, pushed at once); default: the spec's "
        "push.registries.")] = None,
    tag: Annotated[str | None, typer.Option(
        "--tag", help="Tag to push as (default: the spec's first tag, or the reference's).")]
    = None,
    repository: Annotated[str | None, typer.Option(
        "--repository", help="Repository name (default: the spec's push.repository, else NAME).")]
    = None,
    username: Annotated[str | None, typer.Option(
        "--username", "-u", help="Registry user; the password comes from --password-stdin. "
        "Sent only to the --to registries.")] = None,
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="Read the registry password from stdin (with --username).")]
    = False,
    no_smoke_gate: Annotated[bool, typer.Option(
        "--no-smoke-gate", help="Push even if this image ID has not passed its smoke test "
        "(the output says so).")] = False,
    retries: Annotated[int, typer.Option(
        "--retries", min=0, max=10, help="Retries after a transient failure (connection reset, "
        "5xx), with backoff; an authentication failure is never retried.")] = 3,
    via: Annotated[PushVia, typer.Option(
        "--via", help="own: imagekit's own path (one export, layers compressed once for every "
        "registry, resumable); engine: the Docker engine pushes (docker push); auto: own, but "
        "the engine where it stores layers compressed (the containerd image store).")]
    = PushVia.auto,
    via_engine: Annotated[bool, typer.Option(
        "--via-engine", help="Same as --via engine.")] = False,
    fmt: Annotated[PushFormat, typer.Option(
        "--format", help="docker: v2 schema 2 manifests, gzip layers (what every registry "
        "takes); oci: OCI media types; oci-zstd: OCI with zstd layers.")] = "docker",
    sbom: Annotated[bool | None, typer.Option(
        "--sbom/--no-sbom", help="Attach the image's bill of materials (CycloneDX, as `imagekit "
        "sbom` makes it) to the pushed image in each registry, as an OCI artifact (default: "
        "[push] sbom in imagekit.toml, else no).", show_default=False)] = None,
) -> None:
    """Retag built images (or any image the engine holds) into each registry
    namespace, push them all at once, and report the manifest digest of each
    (read back from the registry)."""
    from . import push as push_stage
    project = state.project
    password = None
    if password_stdin:
        if not username:
            raise UsageError("--password-stdin needs --username")
        password = sys.stdin.read().rstrip("\r\n")
    elif username:
        raise UsageError("--username needs --password-stdin (a password is never taken as an "
                         "argument)")
    if via_engine and PushVia(via) == PushVia.own:
        raise UsageError("--via-engine and --via own contradict each other")
    chosen = PushVia.engine.value if via_engine else PushVia(via).value
    creds = push_stage.credentials(username, password, to=to)
    for where in to or ["localhost"]:       # bad values are usage errors before any engine call
        push_stage.destination(where, repository or "x", tag or "latest")
    for name in names or []:
        if not targets.is_catalog(state.project, name):
            targets.check_reference(name, "push")
    engine = Engine.connect()

    def stages() -> Iterator[Event]:
        for item in _chosen(names, all_, "push"):
            if isinstance(item, Event):
                yield item
                continue
            target = targets.resolve(project, engine, item, error=PushError)
            yield from push_stage.push(project, target, engine, to=to, tag=tag,
                                       repository=repository, smoke_gate=not no_smoke_gate,
                                       creds=creds, retries=retries, via=chosen,
                                       fmt=PushFormat(fmt).value,
                                       sbom=project.config.push.sbom if sbom is None else sbom)

    _show(stages())


@app.command()
def save(
    names: Targets = None,
    all_: AllOpt = False,
    zip_: Annotated[bool, typer.Option(
        "--zip", help="A real ZIP holding NAME-TAG.tar (the default): unzip and imagekit "
        "load read it.")] = False,
    zip_compat: Annotated[bool, typer.Option(
        "--zip-compat", help="A plain tar named .zip, what `docker save -o x.zip` makes "
        "(for platforms that expect exactly that).")] = False,
    tar: Annotated[bool, typer.Option("--tar", help="A plain tar (fastest, largest).")] = False,
    gz: Annotated[bool, typer.Option(
        "--gz", help="A gzip'd tar (.tar.gz); `docker load -i` reads it as it is.")] = False,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Archive path, or a folder (default: NAME-TAG.zip / .tar / "
        ".tar.gz here).")] = None,
    tag: Annotated[str | None, typer.Option(
        "--tag", help="Which tag of a catalog image to save (default: the spec's first tag).")]
    = None,
    no_sbom: Annotated[bool, typer.Option(
        "--no-sbom", help="Write no PATH.sbom.json (the bill of materials `imagekit sbom` "
        "makes, listed in a container of the image first).")] = False,
) -> None:
    """Save built images (or any image the engine holds) to one archive each,
    streamed from the engine, written whole or not at all, with a sha256
    sidecar, a manifest and a bill of materials (CycloneDX) beside it."""
    from . import save as save_stage
    chosen = [f for f, on in (("zip", zip_), ("zip-compat", zip_compat), ("tar", tar),
                              ("gz", gz)) if on]
    if len(chosen) > 1:
        raise UsageError("choose one of --zip, --zip-compat, --tar, --gz")
    if tag is not None:
        from .spec import TAG_RE
        if not TAG_RE.match(tag):
            raise UsageError(f"--tag {tag!r} is not a Docker tag (letters, digits, '_.-', "
                             "at most 128)")
    project = state.project
    engine = Engine.connect()

    def stages() -> Iterator[Event]:
        todo = list(_chosen(names, all_, "save"))
        several = sum(1 for x in todo if isinstance(x, str)) > 1
        if several and output is not None and not output.is_dir():
            raise UsageError("--output names one file; with several images give a folder")
        for item in todo:
            if isinstance(item, Event):
                yield item
                continue
            target = targets.resolve(project, engine, item, tag, error=SaveError)
            yield from save_stage.save(project, target, engine,
                                       fmt=chosen[0] if chosen else "zip", output=output,
                                       sbom=not no_sbom)

    _show(stages())


@app.command()
def load(
    path: Annotated[Path, typer.Argument(help="An archive from `imagekit save` or `docker "
                                              "save`: .zip, .tar or .tar.gz.")],
    image: Annotated[str | None, typer.Option(
        "--image", metavar="REF",
        help="The one image to load from an archive that holds several: its tag (only that "
             "tag is set) or image ID; for a ZIP holding several tars, also a member's name."
    )] = None,
) -> None:
    """Load an image archive into the engine: checks the sha256 sidecar and the
    image ID against the manifest before anything in the engine changes; an
    archive of several images needs --image; a failed load is undone."""
    from . import load as load_stage
    _show(load_stage.load(path, lambda: Engine.connect(), image=image))


@app.command("sbom")
def sbom_(
    name: Annotated[str, typer.Argument(help="Catalog name (built) or any image reference the "
                                             "engine holds.")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write the document here (a temporary file, renamed when "
        "complete; a folder: NAME.sbom.json in it); default: stdout.")] = None,
    tag: Annotated[str | None, typer.Option(
        "--tag", help="Which tag of a catalog image (default: the spec's first tag).")] = None,
) -> None:
    """A bill of materials of the image, as CycloneDX 1.5 JSON: its Python
    packages (with licences, and their wheel's sha256 where imagekit's wheelhouse
    holds it), Debian packages, CUDA libraries, its base image. Listed inside a
    throwaway container of the image with no network. Without -o the document is
    the only thing on stdout (progress goes to stderr)."""
    import contextlib

    from . import sbom as sbom_stage
    from .errors import SbomError
    project = state.project
    if not targets.is_catalog(project, name):
        targets.check_reference(name, "sbom")
    engine = Engine.connect()
    target = targets.resolve(project, engine, name, tag, error=SbomError)
    if output is not None:
        _show(sbom_stage.sbom(project, target, engine, output=output))
        return
    kept: list[dict] = []
    with contextlib.redirect_stdout(sys.stderr):   # the document is all that goes to stdout
        _show(sbom_stage.sbom(project, target, engine, keep=kept))
    sys.stdout.write(sbom_stage.text(kept[-1]))
    sys.stdout.flush()


@app.command("inspect")
def inspect_(name: Annotated[str, typer.Argument(help="Image name (or any image reference).")],
             top: Annotated[int, typer.Option(min=0, help="How many wasted paths to list.")]
             = 5) -> None:
    """Size per layer, wasted bytes and where they come from, Python packages, labels."""
    from .inspect import inspect
    project = state.project
    if not targets.is_catalog(project, name):
        targets.check_reference(name, "inspect")
    engine = Engine.connect()
    target = targets.resolve(project, engine, name)
    _show(inspect(engine, target), state.display(top=top))


@app.command()
def doctor() -> None:
    """What to run first when something fails: the engine (where, version, image
    store, builders, GPU), the project's base image and the wheelhouse, each
    with a one-line fix where something is missing. Exit 5 when no engine answers."""
    from .doctor import doctor as doctor_stage
    from .errors import ConfigError
    engine = Engine.connect(timeout=60)
    try:
        project, problem = state.project, ""
    except ConfigError as e:
        project, problem = None, e.lines()[0]
    _show(doctor_stage(project, engine, config_problem=problem))


@app.command()
def version() -> None:
    """Print imagekit's version."""
    print(__version__)


def _report(e: ImagekitError, as_json: bool) -> None:
    if e.problems:
        for line in e.problems:
            error(line, as_json=as_json, code=e.exit_code)
    else:
        error(e.message, e.details, as_json=as_json, code=e.exit_code)


def _terminate(signum, frame):  # SIGTERM cleans up like Ctrl-C does
    raise KeyboardInterrupt


def main() -> None:
    import signal
    signal.signal(signal.SIGTERM, _terminate)
    debug = bool(os.environ.get("IMAGEKIT_DEBUG"))
    as_json = "--json" in sys.argv[1:]
    try:
        rv = app(standalone_mode=False, prog_name="imagekit")
        code = rv if isinstance(rv, int) else 0
        if code == 130:     # a Ctrl-C that typer met itself: it returns 130 and says nothing
            error("interrupted", as_json=as_json, code=130)
    except ImagekitError as e:
        if debug:
            raise
        _report(e, as_json)
        code = e.exit_code
    except typer.Exit as e:
        code = e.exit_code
    except typer.Abort:
        error(Interrupted("interrupted").message, as_json=as_json, code=130)
        code = 130
    except KeyboardInterrupt:
        error("interrupted", as_json=as_json, code=130)
        code = 130
    except Exception as e:  # noqa: BLE001 - the last line of defence: no traceback
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):  # the parser's usage errors
            ctx = getattr(e, "ctx", None)
            where = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            message = " ".join(str(e.format_message()).split())
            error(f"{message}{where}", as_json=as_json, code=e.exit_code)
            sys.exit(e.exit_code)
        if debug:
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        error(f"internal error: {type(e).__name__}: {first} (IMAGEKIT_DEBUG=1 shows the "
              "traceback)", as_json=as_json, code=1)
        code = 1
    sys.exit(code)


def run() -> None:
    """The `imagekit` command: main(), then out at once. Every stage has closed
    what it opened by then (files, containers, temporary folders); what is
    left is the interpreter taking its modules apart, about 0.1 s that a user
    waits for after the result (a push of a stored image takes seconds)."""
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):         # a closed pipe: nothing more can be said
        pass
    os._exit(code)

