"""Build stage: render the plan, pack a minimal build context, build through
the engine, and turn the engine's stream into events. Records each build
(image ID, spec digest, log) under the project's state dir."""

from __future__ import annotations

import contextlib
import json
import re
import time
from collections import deque
from collections.abc import Iterator
from pathlib import Path

from . import fetch
from .config import Project
from .engine import Engine
from .errors import BuildError, Interrupted
from .events import Built, Cached, Event, Info, Log, Step
from .context import context_tar
from .render import render
from .spec import Plan

STEP_RE = re.compile(r"^Step (\d+)/(\d+) : (.*)$")
TAIL_LINES = 15


def build(plan: Plan, project: Project, engine: Engine, nocache: bool = False) -> Iterator[Event]:
    """Build one image (its parent must exist already). Yields events; the
    last one is Built. Raises BuildError with the failing step and log tail."""
    name = plan.name
    dockerfile = render(plan, project)
    ctx = context_tar(dockerfile, plan.spec.code_dir)
    refs = [plan.spec.image_ref(t) for t in plan.spec.model.tags]
    logs_dir = project.state_dir / "logs"
    logs_dir.mkdir(parents=True, exist_ok=True)
    log_path = logs_dir / f"{name}.build.log"
    if plan.parent is not None and engine.image(plan.base_image) is None:
        raise BuildError(f"{name}: parent image {plan.base_image} is not built; "
                         f"run `imagekit build {plan.parent.name}` first (or build both)")
    yield Info(name, f"context {len(ctx.getvalue()) / 1024:.0f} KiB, "
                     f"FROM {project.map_base(plan.base_image)}")
    started = time.monotonic()
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    step, total, instruction, cached, image_id = 0, 0, "", 0, None
    with contextlib.ExitStack() as stack, log_path.open("w") as log:
        network = None
        if project.wheelhouse is not None:
            stack.enter_context(fetch.serve(project.wheelhouse, project.config.pip.port))
            network = "host"
        try:
            for item in engine.build(ctx, refs[0], network_mode=network, nocache=nocache):
                if "stream" in item:
                    for line in item["stream"].splitlines():
                        line = line.rstrip()
                        if not line:
                            continue
                        log.write(line + "\n")
                        m = STEP_RE.match(line)
                        if m:
                            step, total, instruction = int(m[1]), int(m[2]), m[3]
                            tail.clear()
                            yield Step(name, step, total, instruction)
                        elif line.strip() == "---> Using cache":
                            cached += 1
                            yield Cached(name, step)
                        elif line.startswith("Successfully built "):
                            image_id = image_id or line.split()[-1]
                        elif not line.startswith((" ---> ", "Successfully tagged", "Removing intermediate")):
                            tail.append(line)
                            yield Log(name, line)
                elif "aux" in item and isinstance(item["aux"], dict) and "ID" in item["aux"]:
                    image_id = item["aux"]["ID"]
                elif "error" in item or "errorDetail" in item:
                    msg = (item.get("errorDetail") or {}).get("message") or item.get("error", "")
                    log.write(f"ERROR: {msg}\n")
                    where = f"step {step}/{total} `{_short(instruction)}`" if step else "start"
                    raise BuildError(f"{name}: build failed at {where}: {_short(msg, 300)}",
                                     details=[*(f"| {t}" for t in tail), f"full log: {log_path}"])
        except KeyboardInterrupt:
            raise Interrupted(f"{name}: build interrupted at step {step}/{total}; "
                              "the engine removes its intermediate containers") from None
    if image_id is None:
        raise BuildError(f"{name}: the engine ended the build without an image ID",
                         details=[f"full log: {log_path}"])
    full_id = engine.image(refs[0])["Id"]
    for ref in refs[1:]:
        repo, tag = ref.rsplit(":", 1)
        engine.tag(full_id, repo, tag)
    seconds = time.monotonic() - started
    record(project, plan, full_id, refs, seconds, total, cached, dockerfile)
    yield Built(name, full_id, refs, round(seconds, 2), total, cached, str(log_path))


def _short(text: str, n: int = 80) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def records_dir(project: Project) -> Path:
    return project.state_dir / "builds"


def record(project: Project, plan: Plan, image_id: str, refs: list[str], seconds: float,
           steps: int, cached: int, dockerfile: str) -> Path:
    d = records_dir(project)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{image_id.removeprefix('sha256:')[:16]}.json"
    old = load_record(project, image_id) or {}
    data = {
        **old,
        "name": plan.name, "image_id": image_id, "refs": refs,
        "spec_digest": "sha256:" + plan.spec.digest(),
        "framework": plan.framework, "version": plan.version, "device": plan.device,
        "python": plan.python, "cuda": plan.cuda,
        "built_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": round(seconds, 2), "steps": steps, "cached_steps": cached,
        "dockerfile": dockerfile,
    }
    path.write_text(json.dumps(data, indent=2))
    return path


def load_record(project: Project, image_id: str) -> dict | None:
    path = records_dir(project) / f"{image_id.removeprefix('sha256:')[:16]}.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def update_record(project: Project, image_id: str, **fields) -> None:
    data = load_record(project, image_id) or {"image_id": image_id}
    data.update(fields)
    d = records_dir(project)
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{image_id.removeprefix('sha256:')[:16]}.json").write_text(json.dumps(data, indent=2))


def graph(plans: list[Plan]) -> list[Plan]:
    """The requested plans plus their catalog ancestors, parents first."""
    order: list[Plan] = []
    seen: set[str] = set()

    def visit(p: Plan) -> None:
        if p.name in seen:
            return
        if p.parent is not None:
            visit(p.parent)
        seen.add(p.name)
        order.append(p)

    for p in plans:
        visit(p)
    return order


def build_graph(plans: list[Plan], project: Project, engine: Engine, *, jobs: int = 2,
                after=None, nocache: bool = False) -> Iterator[Event]:
    """Build plans and their ancestors in dependency order, independent ones in
    parallel (up to `jobs`). `after(plan)` may yield more events for a built
    image (the smoke test); an error there fails the image like a build error.
    A failed image's dependents are skipped, not attempted. The last event is
    a Result with every image's outcome."""
    import queue
    import threading

    from .errors import ImagekitError
    from .events import Failed, Result, Skipped

    order = graph(plans)
    by_name = {p.name: p for p in order}
    children: dict[str, list[str]] = {p.name: [] for p in order}
    for p in order:
        if p.parent is not None:
            children[p.parent.name].append(p.name)
    status: dict[str, dict] = {}
    events: queue.Queue = queue.Queue()
    cancel = threading.Event()
    pending = [p.name for p in order if p.parent is None or p.parent.name not in by_name]
    waiting = {p.name for p in order} - set(pending)
    running: set[str] = set()

    def work(plan: Plan) -> None:
        try:
            for ev in build(plan, project, engine, nocache=nocache):
                if cancel.is_set():
                    raise Interrupted("cancelled")
                events.put(ev)
            if after is not None:
                for ev in after(plan):
                    if cancel.is_set():
                        raise Interrupted("cancelled")
                    events.put(ev)
            events.put(("done", plan.name, None))
        except ImagekitError as e:
            events.put(("done", plan.name, e))
        except Exception as e:  # noqa: BLE001 - reported as this image's failure
            events.put(("done", plan.name, ImagekitError(f"{plan.name}: {type(e).__name__}: {e}")))

    def skip(name: str, why: str) -> Iterator[Event]:
        for child in children[name]:
            if child in waiting:
                waiting.discard(child)
                status[child] = {"status": "skipped", "reason": why}
                yield Skipped(child, why)
                yield from skip(child, f"its ancestor {name} was not built")

    try:
        while pending or running:
            while pending and len(running) < max(1, jobs):
                name = pending.pop(0)
                running.add(name)
                threading.Thread(target=work, args=(by_name[name],), daemon=True).start()
            item = events.get()
            if not isinstance(item, tuple):
                yield item
                continue
            _, name, err = item
            running.discard(name)
            if err is None:
                status[name] = {"status": "ok"}
                for child in children[name]:
                    if child in waiting:
                        waiting.discard(child)
                        pending.append(child)
            else:
                status[name] = {"status": "failed", "reason": err.message,
                                "exit_code": err.exit_code, "details": err.details}
                yield Failed(name, err.message)
                yield from skip(name, f"its parent {name} failed")
    except KeyboardInterrupt:
        cancel.set()
        raise Interrupted(f"build interrupted while building {', '.join(sorted(running))}; "
                          "the engine removes its intermediate containers") from None
    yield Result("", "graph", {"images": status})
