"""`imagekit inspect`: what is in an image, layer by layer: size, bytes that a
later layer deletes or overwrites (wasted), Python packages, labels.

Reads the engine's export as a stream: no container runs and nothing is
written to disk."""

from __future__ import annotations

import re
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field

from .engine import EngineAPI, export, files
from .errors import EngineError
from .events import Event, InspectResult, LayerReport, WastedPath
from .targets import ImageTarget

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
DIST_INFO = re.compile(r"(?:^|/)site-packages/([^/]+)-([^/-]+)\.dist-info/METADATA$")


@dataclass
class Layer:
    created_by: str = ""
    size: int = 0
    files: dict[str, int] = field(default_factory=dict)  # path -> size
    deletes: list[str] = field(default_factory=list)     # whiteout targets
    opaque: list[str] = field(default_factory=list)      # dirs emptied by this layer


def _read_layer(fileobj) -> Layer:
    layer = Layer()
    with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
        for m in tar:
            path = m.name.removeprefix("./")
            base = path.rsplit("/", 1)[-1]
            parent = path[: -len(base)].rstrip("/")
            if base == OPAQUE:
                layer.opaque.append(parent)
            elif base.startswith(WHITEOUT):
                layer.deletes.append(f"{parent}/{base[len(WHITEOUT):]}".lstrip("/"))
            elif m.isfile():
                layer.files[path] = m.size
                layer.size += m.size
    return layer


def _under(path: str, d: str) -> bool:
    return path == d or path.startswith(d + "/")


@dataclass
class Waste:
    total_bytes: int
    wasted_bytes: int
    efficiency: float
    per_layer: list[int]
    top: list[WastedPath]


def analyse(layers: list[Layer]) -> Waste:
    """Bytes in each layer that a later layer deletes or overwrites."""
    live: dict[str, tuple[int, int]] = {}  # path -> (layer index, size)
    wasted = [0] * len(layers)
    where: dict[str, int] = {}
    for i, layer in enumerate(layers):
        gone = [p for p in live if any(_under(p, d) for d in layer.deletes)
                or any(_under(p, d) and p != d for d in layer.opaque)] \
            if layer.deletes or layer.opaque else []
        for p in gone:
            j, size = live.pop(p)
            wasted[j] += size
            where[p] = where.get(p, 0) + size
        for p, size in layer.files.items():
            if p in live:
                j, old = live[p]
                wasted[j] += old
                where[p] = where.get(p, 0) + old
            live[p] = (i, size)
    total = sum(layer.size for layer in layers)
    waste = sum(wasted)
    top = sorted(where.items(), key=lambda kv: -kv[1])[:10]
    return Waste(total, waste, 1.0 if total == 0 else round(1 - waste / total, 6), wasted,
                 [WastedPath(p, b) for p, b in top])


def inspect(engine: EngineAPI, target: ImageTarget) -> Iterator[Event]:
    """Yields one InspectResult for the target image (any export layout)."""
    ref = target.ref
    try:
        got = files.read_layers(engine.save(ref), _read_layer)
    except export.ExportError as e:
        raise EngineError(f"the engine's export of {ref}: {e.message}") from None
    layers = [x if x is not None else Layer() for x in got.layers]
    config = got.config
    steps = [h.get("created_by", "") for h in config.get("history", [])
             if not h.get("empty_layer")]
    if len(steps) == len(layers):
        for layer, step in zip(layers, steps, strict=True):
            for shell in ("/bin/bash -o pipefail -c ", "/bin/sh -c "):
                step = step.removeprefix(shell)
            layer.created_by = " ".join(step.removeprefix("#(nop) ").split())
    waste = analyse(layers)
    packages = {}
    for layer in layers:
        for p in layer.files:
            m = DIST_INFO.search(p)
            if m:
                packages[m[1].replace("_", "-").lower()] = m[2]
    yield InspectResult(
        ref, image_id=target.image_id, size=target.image.size,
        layers=[LayerReport(layer.size, w, layer.created_by[:200])
                for layer, w in zip(layers, waste.per_layer, strict=True)],
        total_bytes=waste.total_bytes, wasted_bytes=waste.wasted_bytes,
        efficiency=waste.efficiency, top_wasted=waste.top,
        python_packages=dict(sorted(packages.items())), labels=dict(target.image.labels))
