"""Building many images: the requested ones and their catalog ancestors,
parents first, independent images in parallel, a failed image's descendants
skipped with the reason and never attempted."""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator

from .build import build
from .config import Project
from .engine import Builder, EngineAPI
from .errors import ImagekitError, Interrupted
from .events import Event, Failed, GraphResult, ImageOutcome, Skipped
from .spec import Plan

After = Callable[[Plan], Iterator[Event]]


def order(plans: list[Plan]) -> list[Plan]:
    """The requested plans plus their catalog ancestors, parents first."""
    done: list[Plan] = []
    seen: set[str] = set()

    def visit(p: Plan) -> None:
        if p.name in seen:
            return
        if p.parent is not None:
            visit(p.parent)
        seen.add(p.name)
        done.append(p)

    for p in plans:
        visit(p)
    return done


def build_graph(plans: list[Plan], project: Project, engine: EngineAPI, *, jobs: int = 2,
                before: After | None = None, after: After | None = None,
                nocache: bool = False, builder: Builder | None = None, cache_to: str = "",
                cache_from: str = "") -> Iterator[Event]:
    """Build plans and their ancestors in dependency order, independent ones in
    parallel (up to `jobs`). `before(plan)` may yield events before an image
    is built (bringing its wheels and base), `after(plan)` after it (the smoke
    test); an error in either fails the image like a build error. The last
    event is a GraphResult with every image's outcome."""
    ordered = order(plans)
    by_name = {p.name: p for p in ordered}
    children: dict[str, list[str]] = {p.name: [] for p in ordered}
    for p in ordered:
        if p.parent is not None:
            children[p.parent.name].append(p.name)
    outcome: dict[str, ImageOutcome] = {}
    events: queue.Queue = queue.Queue()
    cancel = threading.Event()
    pending = [p.name for p in ordered if p.parent is None or p.parent.name not in by_name]
    waiting = {p.name for p in ordered} - set(pending)
    running: set[str] = set()

    def work(plan: Plan) -> None:
        try:
            stages = [before, lambda p: build(p, project, engine, nocache=nocache,
                                              builder=builder, cache_to=cache_to,
                                              cache_from=cache_from), after]
            for stage in stages:          # each started only when the one before it ended
                for ev in stage(plan) if stage else ():
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
                outcome[child] = ImageOutcome("skipped", why)
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
                outcome[name] = ImageOutcome("ok")
                for child in children[name]:
                    if child in waiting:
                        waiting.discard(child)
                        pending.append(child)
            else:
                outcome[name] = ImageOutcome("failed", err.message, err.exit_code, err.details)
                yield Failed(name, err.message)
                yield from skip(name, f"its parent {name} failed")
    except KeyboardInterrupt:
        cancel.set()
        raise Interrupted(f"build interrupted while building {', '.join(sorted(running))}; "
                          "the engine removes its intermediate containers") from None
    yield GraphResult("", {p.name: outcome[p.name] for p in ordered if p.name in outcome})
