"""Reproduce stage (`imagekit build --check-reproducible NAME`): build the
image twice with no cache, on the same engine and base, as two throwaway
images, and compare what the two builds made above the base, layer by layer
(diff IDs). For each layer that differs, the two exports are read
(engine/files.py) and the first paths that differ are named, with what
differs: content, kind, mtime, mode, owner, xattrs, or present in one build
only; where imagekit knows why a layer cannot be made alike, it says so.
Both throwaway images are removed on every way out, Ctrl-C included.

The templates make every layer alike (partials/reproducible.j2): what a RUN
step writes gets the time SOURCE_DATE_EPOCH, logs are emptied, bytecode is
checked-hash; BuildKit stamps the image config with the same time, so two
BuildKit builds give the same image ID. The classic builder gives COPY's
destination folder the time of the copy and the image config the time of the
build: it cannot make the code layer, nor the image ID, alike."""

from __future__ import annotations

import contextlib
import posixpath
import secrets
import time
from collections.abc import Iterator

from .build import build
from .config import Project
from .engine import Builder, EngineAPI, files
from .engine.export import ExportError
from .engine.files import FileEntry
from .errors import EngineError, ImagekitError
from .events import Built, Event, Info, LayerCheck, PathDifference, ReproduceResult
from .render import source_date_epoch
from .spec import Plan

SHOWN_PATHS = 10                 # paths named per differing layer
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"          # a folder emptied: what lower layers put there is gone

WHY_WHITEOUT = ("the step deletes {path}, which an earlier layer holds: the engine stamps the "
                "deletion (a whiteout) with its own time, which no step can set; empty the "
                "file instead of deleting it")
WHY_CLASSIC_COPY = ("the classic builder gives COPY's destination folder the time of the copy "
                    "(BuildKit keeps the build context's); bit-for-bit code layers need BuildKit")
WHY_PYC = ("Python bytecode with a timestamp in it: compiled without SOURCE_DATE_EPOCH in the "
           "environment (a step the templates do not write?)")


def check(plan: Plan, project: Project, engine: EngineAPI, builder: Builder) -> Iterator[Event]:
    """Build PLAN twice (no cache) as throwaway images, compare, remove both.
    Yields the builds' events, then a ReproduceResult. The image's parent (or
    base) must be in the engine already, as for `build`; ENGINE is where the
    builder's images land (builder.engine)."""
    token = secrets.token_hex(4)
    repo = plan.spec.image_ref(plan.spec.model.tags[0]).rsplit(":", 1)[0]
    refs = [f"{repo}:reproduce-{n}-{token}" for n in (1, 2)]
    seconds: list[float] = []
    try:
        for n, ref in enumerate(refs, 1):
            yield Info(plan.name, f"cold build {n} of 2 (no cache) as {ref}")
            for ev in build(plan, project, engine, nocache=True, builder=builder, ref=ref,
                            log_name=f"{plan.name}.reproduce-{n}.build.log"):
                if isinstance(ev, Built):
                    seconds.append(ev.seconds)
                yield ev
        yield from compare(plan, project, engine, builder, refs, seconds)
    except BaseException:        # a failure, Ctrl-C or the display closing us: that one is said
        with contextlib.suppress(ImagekitError):
            _remove(engine, refs)
        raise
    _remove(engine, refs)


def _remove(engine: EngineAPI, refs: list[str]) -> None:
    for ref in refs:
        engine.remove_image(ref)


def compare(plan: Plan, project: Project, engine: EngineAPI, builder: Builder, refs: list[str],
            seconds: list[float]) -> Iterator[Event]:
    """Compare the two built images REFS; yields a ReproduceResult."""
    base = project.map_base(plan.base_image)
    base_info = engine.image(base)
    images = [engine.image(ref) for ref in refs]
    if base_info is None or images[0] is None or images[1] is None:
        missing = base if base_info is None else next(r for r, i in zip(refs, images, strict=True)
                                                      if i is None)
        raise EngineError(f"{plan.name}: {missing} is not in the engine after the builds")
    a, b = (list(i.diff_ids) for i in images)
    below = len(base_info.diff_ids)
    layers = differing_layers(a, b, below)
    result = ReproduceResult(plan.name, builder=builder.name, base=base, base_layers=below,
                             total=max(len(a), len(b)) - below, seconds=seconds,
                             image_ids=[images[0].id, images[1].id],
                             source_date_epoch=source_date_epoch(plan))
    result.identical = sum(1 for x in layers if x.same)
    if result.identical < result.total:
        yield Info(plan.name, f"{result.total - result.identical} of {result.total} layers "
                              "differ; reading both builds' layers to name the paths")
        started = time.monotonic()
        alike = set(a[:below]) | {x.diff_ids[0] for x in layers if x.same}   # not read
        read = [_files(engine, ref, alike) for ref in refs]
        for layer in layers:
            i = layer.index - 1
            layer.step = _at(read[0].steps, i) or _at(read[1].steps, i) or ""
            if layer.same:
                continue
            diffs = path_differences(_at(read[0].layers, i) or {}, _at(read[1].layers, i) or {})
            layer.paths, layer.paths_total = diffs[:SHOWN_PATHS], len(diffs)
            layer.why = why(diffs, builder.kind, layer.step)
        yield Info(plan.name, f"read both builds' layers in {time.monotonic() - started:.1f}s")
    result.layers = layers
    yield result


def _at(items: list, i: int):
    return items[i] if i < len(items) else None


def _files(engine: EngineAPI, ref: str, alike: set[str]) -> files.ImageFiles:
    try:
        return files.image_files(engine.save(ref), skip=alike)
    except ExportError as e:
        raise EngineError(f"the engine's export of {ref}: {e.message}") from None


def differing_layers(a: list[str], b: list[str], below: int) -> list[LayerCheck]:
    """The layers above the first BELOW (the base's) of two builds' diff ID
    lists, each marked alike or not; a layer only one build has differs."""
    out = []
    for i in range(below, max(len(a), len(b))):
        x = a[i] if i < len(a) else ""
        y = b[i] if i < len(b) else ""
        out.append(LayerCheck(i + 1, "", [x, y], same=bool(x) and x == y))
    return out


def path_differences(first: dict[str, FileEntry], second: dict[str, FileEntry]) \
        -> list[PathDifference]:
    """Every path two builds of a layer hold differently, sorted by path."""
    out = []
    for path in sorted(set(first) | set(second)):
        x, y = first.get(path), second.get(path)
        if x == y:
            continue
        shown = "/" + path
        if x is None or y is None:
            out.append(PathDifference(shown, ["only in build 2" if x is None else "only in build 1"],
                                      _entry(x), _entry(y)))
            continue
        what, one, two = [], [], []
        for name, left, right in _aspects(x, y):
            if left != right:
                what.append(name)
                one.append(left)
                two.append(right)
        out.append(PathDifference(shown, what, ", ".join(one), ", ".join(two)))
    return out


def _aspects(x: FileEntry, y: FileEntry) -> list[tuple[str, str, str]]:
    """(aspect, build 1's, build 2's) for each aspect of an entry."""
    return [
        ("kind", x.kind, y.kind),
        ("content", _content(x), _content(y)),
        ("mtime", _time(x.mtime), _time(y.mtime)),
        ("mode", f"{x.mode:04o}", f"{y.mode:04o}"),
        ("owner", f"{x.uid}:{x.gid}", f"{y.uid}:{y.gid}"),
        ("xattrs", ",".join(k for k, _ in x.xattrs) or "none",
         ",".join(k for k, _ in y.xattrs) or "none"),
    ]


def _content(e: FileEntry) -> str:
    if e.kind == "file":
        return f"{e.content[:19]} {e.size} B"
    return e.content or "-"


def _time(t: float) -> str:
    fraction = round(t % 1, 3)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + \
        (f"{fraction:.3f}"[1:] if fraction else "") + "Z"


def _entry(e: FileEntry | None) -> str:
    return "absent" if e is None else f"{e.kind} {_content(e)}"


def why(diffs: list[PathDifference], builder_kind: str, step: str) -> str:
    """Why a layer with these differences cannot be made alike, where imagekit
    knows: a deletion of a lower layer's file, the classic builder's COPY,
    timestamped bytecode. "" otherwise (the paths say what differs)."""
    for d in diffs:
        folder, name = posixpath.split(d.path)
        if name == OPAQUE:
            return WHY_WHITEOUT.format(path=f"what {folder} held")
        if name.startswith(WHITEOUT):
            return WHY_WHITEOUT.format(path=posixpath.join(folder, name[len(WHITEOUT):]))
    if builder_kind == "classic" and step.startswith("COPY") and \
            all(d.what == ["mtime"] for d in diffs):
        return WHY_CLASSIC_COPY
    if any(d.path.endswith(".pyc") and "content" in d.what for d in diffs):
        return WHY_PYC
    return ""
