"""Build stage: render the plan for the builder, pack a minimal build context,
build one image with it (the engine's classic builder, or BuildKit through
buildx), and turn the builder's items into events. The classic builder gets
the wheelhouse served on 127.0.0.1 and the host's network; BuildKit gets each
install step's wheel set as a build context of its own (fetch.wheel_contexts)
and no network. Records each
build (image ID, spec digest, log) with records.write. Building many images,
parents first and in parallel, is graph.py's job."""

from __future__ import annotations

import contextlib
import re
import time
from collections import deque
from collections.abc import Iterator

from . import fetch, lock, records
from .config import Project
from .context import context_tar, display_path
from .engine import BuildCached, BuildDone, Builder, BuildOutput, BuildStep, ClassicBuilder, EngineAPI
from .errors import BuildError, EngineStreamError, Interrupted
from .events import Built, Cached, Event, Info, Log, Step, Warn
from .reference import parse_reference
from .render import render, source_date_epoch, step_label
from .spec import Plan

TAIL_LINES = 15


def cache_ref(ref: str, name: str) -> str:
    """A registry build-cache reference for image NAME: REF as given when it
    has a tag, else REF:NAME (one repository holds every image's cache)."""
    if not ref:
        return ""
    return ref if parse_reference(ref).tag else f"{ref}:{name}"


def build(plan: Plan, project: Project, engine: EngineAPI, nocache: bool = False,
          builder: Builder | None = None, cache_to: str = "", cache_from: str = "",
          ref: str = "", log_name: str = "") -> Iterator[Event]:
    """Build one image with `builder` (default: the engine's classic builder);
    its parent must exist already where the builder's images land. Yields
    events; the last one is Built. Raises BuildError with the failing step
    and log tail. `cache_to`/`cache_from`: a registry repository (or
    reference) for BuildKit's build cache; a builder that cannot use one
    says so in one line and builds without it. `ref`: build a throwaway
    image under this one reference instead of the spec's tags (not
    recorded); `log_name`: the log's file name (default NAME.build.log)."""
    name = plan.name
    builder = builder or ClassicBuilder(engine)
    to, since = cache_ref(cache_to, name), cache_ref(cache_from, name)
    if (to or since) and builder.kind == "classic":
        yield Warn(name, "the classic builder cannot use a registry build cache (--cache-to/"
                         "--cache-from left out); BuildKit can (--builder buildkit)")
        to = since = ""
    elif to and (why := builder.cache_export_problem()):
        yield Warn(name, f"--cache-to left out: {why}")
        to = ""
    engine = builder.engine             # where the image lands (another engine's builder: there)
    locked = lock.check(plan, project)
    if locked is None:
        yield Info(name, f"no {lock.LOCK_FILE}: Python packages resolve at build time "
                         f"(`imagekit lock {name}` pins them)")
    dockerfile = render(plan, project, builder.kind, locked)
    ctx = context_tar(dockerfile, plan.spec.code_dir)
    refs = [ref] if ref else [plan.spec.image_ref(t) for t in plan.spec.model.tags]
    logs_dir = project.state_dir / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    log_path = logs_dir / (log_name or f"{name}.build.log")
    if plan.parent is not None and engine.image(plan.base_image) is None:
        raise BuildError(f"{name}: parent image {plan.base_image} is not built; "
                         f"run `imagekit build {plan.parent.name}` first (or build both)")
    yield Info(name, f"context {len(ctx.getvalue()) / 1024:.0f} KiB, "
                     f"FROM {project.map_base(plan.base_image)}")
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    step, total, instruction, cached, image_id = 0, 0, "", 0, None
    with contextlib.ExitStack() as stack, log_path.open("w") as log:
        network, contexts = None, {}
        if project.wheelhouse is not None and builder.kind == "classic":
            stack.enter_context(fetch.serve(project.wheelhouse, project.config.pip.port))
            network = "host"
        elif project.wheelhouse is not None:
            contexts = yield from fetch.wheel_contexts(plan, project,
                                                       lock.step_wants(plan, project, locked))
        try:
            for item in builder.build(ctx, refs[0], network_mode=network, nocache=nocache,
                                      contexts=contexts, cache_to=to, cache_from=since,
                                      source_date_epoch=source_date_epoch(plan)):
                if isinstance(item, BuildStep):
                    log.write(f"Step {item.index}/{item.total} : {item.instruction}\n")
                    step, total, instruction = item.index, item.total, step_label(item.instruction)
                    tail.clear()
                    yield Step(name, step, total, instruction)
                elif isinstance(item, BuildCached):
                    log.write(" ---> Using cache\n")
                    cached += 1
                    yield Cached(name, step)
                elif isinstance(item, BuildOutput):
                    log.write(item.line + "\n")
                    tail.append(item.line)
                    yield Log(name, item.line)
                elif isinstance(item, BuildDone):
                    image_id = item.image_id
        except EngineStreamError as e:
            log.write(f"ERROR: {e.message}\n")
            where = f"step {step}/{total} `{_short(instruction)}`" if step else "start"
            why = _installer_problem(tail, locked) or _short(e.message, 300)
            raise BuildError(f"{name}: build failed at {where}: {why}",
                             details=[*(f"| {t}" for t in tail), f"full log: {log_path}"]) \
                from None
        except KeyboardInterrupt:
            raise Interrupted(f"{name}: build interrupted at step {step}/{total}; "
                              "the engine removes its intermediate containers") from None
    image = engine.image(refs[0])
    if image_id is None or image is None:
        raise BuildError(f"{name}: the engine ended the build without an image",
                         details=[f"full log: {log_path}"])
    for more in refs[1:]:
        repo, tag = more.rsplit(":", 1)
        engine.tag(image.id, repo, tag)
    seconds = time.monotonic() - started
    if not ref:
        records.write(project, records.BuildRecord(
            image.key, engine_id=image.id, name=name, refs=refs,
            spec_digest="sha256:" + plan.spec.digest(), framework=plan.framework,
            version=plan.version, device=plan.device, python=plan.python, cuda=plan.cuda,
            built_at=records.now(), seconds=round(seconds, 2), steps=total, cached_steps=cached,
            dockerfile=dockerfile))
    yield Built(name, image.id, refs, round(seconds, 2), total, cached, str(log_path))


_HASH_MISMATCH = re.compile(r"Hash mismatch for `([^`]+)`")
_NO_HASH = re.compile(r"no trusted hash was provided for: `([^`]+)`")
_NOT_FOUND = re.compile(r"Because ([A-Za-z0-9._-]+(?:[=<>!~]=?[^ ]+)?) was not found in the "
                        r"(?:package registry|provided package locations)")


def _installer_problem(tail, locked) -> str | None:
    """What the installer said when a locked install failed, in one line that
    names the package (uv's own words are in the log tail shown below)."""
    text = "\n".join(tail)
    where = f" ({display_path(locked.path)})" if locked is not None else ""
    if m := _HASH_MISMATCH.search(text):
        return f"the wheel of {m[1]} does not have the sha256 the lock gives it{where}"
    if m := _NO_HASH.search(text):
        return f"{m[1]} is needed but not in the lock{where}: run `imagekit lock`"
    if m := _NOT_FOUND.search(text):
        return f"{m[1]} is not among the wheels the build was given{where}"
    return None


def _short(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"
