"""Render stage: a resolved spec -> Dockerfile text. A pure function of the
plan, the project config and the builder kind: the same inputs give the same
bytes. The classic builder's Dockerfile installs from the wheelhouse served
on 127.0.0.1 (host network); BuildKit's mounts each install step's wheels
from a build context of its own and runs every RUN step but the system packages'
with no network, so no port is in it."""

from __future__ import annotations

import json
import re
import shlex

import jinja2

from . import __version__, matrix
from .config import Project
from .context import display_path
from .errors import SpecError
from .fetch import wheels_context
from .lock import Lock, marker_env, source_date_epoch, step_requirements
from .spec import PLATFORM_MOUNTS, Plan

WHEELHOUSE_HOST = "127.0.0.1"
WHEELS_MOUNT = "/wheels"          # where a BuildKit install step sees its wheels-STEP context
# What a builder mounts into every RUN step: the step's clamp_times() (partials/reproducible.j2)
# leaves them alone (they are not in the layer, and some are read-only)
RUN_MOUNTS = ("/proc", "/sys", "/dev", "/etc/hosts", "/etc/resolv.conf", "/etc/hostname")
BUILDERS = ("classic", "buildkit")


def _dq(value: object) -> str:
    """A double-quoted Dockerfile value: JSON escaping, and '$' kept literal."""
    return json.dumps(str(value), ensure_ascii=False).replace("$", "\\$")


def _assignments(pairs: dict, indent: int) -> str:
    """KEY="value" pairs for ENV or LABEL, one per continued line."""
    sep = " \\\n" + " " * indent
    return sep.join(f"{k}={_dq(v)}" for k, v in pairs.items())


def environment(project: Project) -> jinja2.Environment:
    """Templates are looked up file by file: the project's own templates/
    first, then the built-in ones, so a project overrides just one partial."""
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader([jinja2.FileSystemLoader(str(d))
                                    for d in project.template_dirs]),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["shell"] = shlex.quote
    env.filters["dq"] = _dq
    env.filters["assignments"] = _assignments
    return env


# What SageMaker sets for the folders a training command gets as {data_dir}, {output_dir}
LAUNCHER_DIRS = {"data_dir": "SM_CHANNEL_TRAINING", "output_dir": "SM_MODEL_DIR"}


def train_launcher(command: str, data_dir: str, output_dir: str, workdir: str | None) -> list[str]:
    """The lines of /usr/local/bin/train, each quoted for the RUN step's printf:
    `docker run IMAGE train ARGS` (SageMaker's way to start a training job)
    runs train.command with ARGS, {data_dir} and {output_dir} in it being
    SageMaker's folders where it sets them, else the spec's smoke folders."""
    defaults = {"data_dir": data_dir, "output_dir": output_dir}

    def word(token: str) -> str:
        text = "".join("\\" + c if c in '\\"$`' else c for c in token)
        for key, var in LAUNCHER_DIRS.items():
            text = text.replace("{" + key + "}", "${" + var + ":-" + defaults[key] + "}")
        return f'"{text}"'
    lines = ["#!/bin/sh"]
    if workdir:
        lines.append(f"cd {shlex.quote(workdir)} || exit 1")
    lines.append("exec " + " ".join(word(t) for t in shlex.split(command)) + ' "$@"')
    return [shlex.quote(line) for line in lines]


def _first_set(names: list[str], default: str) -> str:
    """`${A:-${B:-DEFAULT}}`: the first of the variables that is set (bash)."""
    text = default
    for name in reversed(names):
        text = "${" + name + ":-" + text + "}"
    return text


def pip_options(project: Project, builder: str = "classic") -> str:
    pip = project.config.pip
    if project.wheelhouse is not None and builder == "buildkit":
        return f"--no-index --find-links {WHEELS_MOUNT} "
    if project.wheelhouse is not None:
        return (f"--no-index --find-links http://{WHEELHOUSE_HOST}:{pip.port}/ "
                f"--trusted-host {WHEELHOUSE_HOST} ")
    opts = ""
    if pip.index_url:
        opts += f"--index-url {shlex.quote(pip.index_url)} "
    if pip.trusted_host:
        opts += f"--trusted-host {shlex.quote(pip.trusted_host)} "
    return opts


def labels(plan: Plan, locked: Lock | None = None) -> dict[str, str]:
    m = plan.spec.model
    v = plan.variant
    out = {
        "org.opencontainers.image.title": plan.name,
        "org.opencontainers.image.description": m.description,
        "org.opencontainers.image.version": m.tags[0],
        "org.opencontainers.image.base.name": plan.base_image,
        "io.imagekit.name": plan.name,
        "io.imagekit.framework": plan.framework,
        "io.imagekit.framework.version": plan.version,
        "io.imagekit.device": plan.device,
        "io.imagekit.python": plan.python,
        "io.imagekit.cuda": v.cuda or "",
        "io.imagekit.cudnn": v.cudnn or "",
        "io.imagekit.jupyter": "true" if m.jupyter.enabled else "false",
        "io.imagekit.spec.digest": "sha256:" + plan.spec.digest(),
    }
    out.update(matrix.gpu_labels(v))     # what is installed, what it was built for, the driver
    if locked is not None:
        out["io.imagekit.lock"] = locked.digest
    if plan.parent:
        out["io.imagekit.parent"] = plan.parent.name
    return out


INSTALL_STEPS = ("framework", "jupyter", "pip")    # the RUN steps that install Python packages


def run_prefixes(project: Project, builder: str):
    """(`run`, `run_pip`): how a RUN step starts that needs no network, and
    (a function of the install step: "framework", "jupyter" or "pip") one
    that installs Python packages. With BuildKit both run with no network;
    each install step gets its own wheels bind-mounted from its own build
    context (only the files its requirements resolve to, so an image that
    adds a package keeps its framework layer cached), or, with [pip]
    index_url and no wheelhouse, the network that index needs. The classic
    builder has no such flags: its builds get the host's network, to reach
    the wheelhouse served on 127.0.0.1."""
    def plain(step: str) -> str:
        if step not in INSTALL_STEPS:
            raise SpecError(f"template: run_pip({step!r}): one of {', '.join(INSTALL_STEPS)}")
        return "RUN"

    if builder != "buildkit":
        return "RUN", plain
    if project.wheelhouse is None:
        return "RUN --network=none", plain

    def mounted(step: str) -> str:
        plain(step)
        return (f"RUN --mount=type=bind,from={wheels_context(step)},target={WHEELS_MOUNT} "
                "--network=none")
    return "RUN --network=none", mounted


def locked_steps(plan: Plan, locked: Lock | None) -> dict[str, dict] | None:
    """For each install step, with a lock: the step's requirements pinned to
    the locked versions, and its share of the lock (pinned, with hashes) for
    the installer's constraints."""
    if locked is None:
        return None
    if not matrix.load().get("installer"):
        raise SpecError(f"{display_path(locked.path)}: a locked build installs with uv "
                        "(matrix.yaml's `installer`), which is not set")
    env = marker_env(plan)
    return {step: {"requirements": locked.pin(reqs, step, env),
                   "constraints": [p.line() for p in locked.step(step)]}
            for step, reqs in step_requirements(plan).items()}


def context(plan: Plan, project: Project, builder: str = "classic",
            locked: Lock | None = None) -> dict:
    m = plan.spec.model
    v = plan.variant
    child = plan.parent is not None
    apt: list[str] = []
    reasons = []
    if not child:
        if v.python_from == "apt":
            apt += ["python3", "python3-venv"]
            reasons.append("Python from the distribution")
        if v.apt:
            apt += [p for p in v.apt if p not in apt]
            reasons.append(f"{plan.framework} runtime libraries")
    extra = [p for p in m.apt if p not in apt]
    if extra:
        apt += extra
        reasons.append("from the spec")
    offline = project.wheelhouse is not None
    run, run_pip = run_prefixes(project, builder)
    return {
        "builder": builder,
        "run": run,
        "run_pip": run_pip,
        "imagekit_version": __version__,
        "spec_path": f"images/{plan.name}/image.yaml",
        "from_image": project.map_base(plan.base_image),
        "child": child,
        "framework": plan.framework,
        "version": plan.version,
        "device": plan.device,
        "python": plan.python,
        "cuda": v.cuda,
        "cudnn": v.cudnn,
        "cuda_from": v.cuda_from,
        "apt": apt,
        "apt_reason": ", ".join(reasons),
        "apt_mirror": project.config.apt.mirror,
        "pip_opts": pip_options(project, builder),
        "framework_pip": list(v.pip),
        "framework_index": None if offline else v.pip_index,
        "jupyter_pip": matrix.jupyter_pip(),
        "installer": matrix.load().get("installer"),
        "jupyter": m.jupyter if m.jupyter.enabled else None,
        "jupyter_base_url": _first_set(m.jupyter.base_url_envs, "/"),
        "train_launcher": train_launcher(m.train.command, m.smoke.data_dir, m.smoke.output_dir,
                                         m.workdir) if m.train else [],
        "notebook_dir_mounted": any(m.jupyter.notebook_dir == d or
                                    m.jupyter.notebook_dir.startswith(d + "/")
                                    for d in PLATFORM_MOUNTS),
        "pip": list(m.pip),
        "env": dict(m.env),
        "workdir": m.workdir,
        "code": m.code,
        "labels": labels(plan, locked),
        "lock": locked_steps(plan, locked),
        "source_date_epoch": source_date_epoch(plan),
        "run_mounts": [*RUN_MOUNTS, *([WHEELS_MOUNT] if builder == "buildkit" and offline else [])],
    }


def render(plan: Plan, project: Project, builder: str = "classic",
           locked: Lock | None = None) -> str:
    """The Dockerfile `builder` ("classic" or "buildkit") gets for this plan
    (with LOCKED, its requirements.lock: installs exactly that)."""
    if builder not in BUILDERS:
        raise ValueError(f"builder {builder!r}")
    env = environment(project)
    try:
        template = env.get_template("Dockerfile.j2")
        text = template.render(context(plan, project, builder, locked))
    except jinja2.TemplateNotFound as e:
        where = " or ".join(display_path(d) for d in project.template_dirs)
        raise SpecError(f"template {e.name} not found in {where}") from None
    except jinja2.UndefinedError as e:
        raise SpecError(f"template error while rendering {plan.name}: {e.message}") from None
    except TypeError as e:     # a macro called with arguments it does not take: a project's
        raise SpecError(           # own partial written for another version of the templates
            f"template error while rendering {plan.name}: {e} (is a partial of the project's "
            "templates folder written for another imagekit?)") from None
    lines = [line.rstrip() for line in text.split("\n")]
    out: list[str] = []
    for line in lines:  # collapse runs of blank lines left by skipped blocks
        if line or (out and out[-1]):
            out.append(line)
    return "\n".join(out).strip() + "\n"


# What every RUN step imagekit writes carries around its author's command, for
# bit-for-bit rebuilds (templates/partials/reproducible.j2): its mark_start(),
# clamp_times() and empty_logs().
_MARK_START = re.compile(r"touch /dev/shm/imagekit-step && sleep 0\.02 &&\s*")
_EPOCH = r"\"@(?:\$SOURCE_DATE_EPOCH|\d+)\""      # BuildKit shows the ARG's value
_MARK_END = re.compile(rf"(?:\s*&&\s*(?:touch -h -d {_EPOCH} /etc"
                       r"|find /[^&]*?-newer /dev/shm/imagekit-step -exec "
                       rf"(?:touch -h -d {_EPOCH}|truncate -s 0) \{{\}} \+))+")


def step_label(instruction: str) -> str:
    """A build step as a build's progress shows it: a RUN step imagekit wrote
    without the time marks around its own command (the build log keeps them)."""
    return _MARK_END.sub("", _MARK_START.sub("", instruction))

