"""What imagekit remembers about the images it built, under the project's
state folder (.imagekit/):

- builds/<key>.json        one BuildRecord per built image, with its smoke mark
- smoke/<key>.json         the last smoke report of that image

The key is the image's identity (engine.ImageInfo.key: from its layer diff IDs
and config), not the engine's ID, which differs between the classic and the
containerd image store: a mark made before a save/load into the other store
still holds after it.
- last-build.json          what the last `imagekit build` made (push and save
                           with no name act on it)

Build, smoke, push and save read and write them only through this module."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from .config import Project
from .events import SmokeResult


@dataclass
class SmokeMark:
    passed: bool
    report: str = ""
    at: str = ""


@dataclass
class BuildRecord:
    image_id: str                  # the key: ImageInfo.key (an identity that survives stores)
    name: str = ""
    refs: list[str] = field(default_factory=list)
    spec_digest: str = ""
    framework: str | None = None
    version: str | None = None
    device: str | None = None
    python: str | None = None
    cuda: str | None = None
    built_at: str = ""
    seconds: float = 0.0
    steps: int = 0
    cached_steps: int = 0
    dockerfile: str = ""
    smoke: SmokeMark | None = None
    pushed: list[str] = field(default_factory=list)    # REPO@DIGEST this image was pushed as
    engine_id: str = ""            # the engine's own image ID when it was built

    @classmethod
    def from_json(cls, data: dict) -> BuildRecord:
        known = {f.name for f in fields(cls)}
        kept = {k: v for k, v in data.items() if k in known}
        if isinstance(kept.get("smoke"), dict):
            mark = kept["smoke"]
            kept["smoke"] = SmokeMark(bool(mark.get("passed")), str(mark.get("report") or ""),
                                      str(mark.get("at") or ""))
        return cls(**kept)


@dataclass
class LastBuild:
    names: list[str]
    command: str
    at: float                                   # time.time() of the build's end
    image_ids: dict[str, str] = field(default_factory=dict)


def _key(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:16]


def _write_json(path: Path, data: object) -> None:
    """Write whole or not at all (a reader never sees half a record)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, default=str)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def build_path(project: Project, image_id: str) -> Path:
    return project.state_dir / "builds" / f"{_key(image_id)}.json"


def read(project: Project, image_id: str) -> BuildRecord | None:
    data = _read_json(build_path(project, image_id))
    if data is None:
        return None
    try:
        return BuildRecord.from_json({**data, "image_id": data.get("image_id") or image_id})
    except TypeError:
        return None


def write(project: Project, record: BuildRecord) -> Path:
    """Store a build; a smoke mark already held for this image ID is kept."""
    old = read(project, record.image_id)
    if record.smoke is None and old is not None:
        record.smoke = old.smoke
    path = build_path(project, record.image_id)
    _write_json(path, asdict(record))
    return path


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def store_smoke(project: Project, result: SmokeResult, key: str = "") -> Path:
    """Keep the smoke report and mark the image's record (by `key`, its
    identity; else the engine's ID) passed or not. A run under a platform's
    contract (`smoke --platform P`) keeps its report beside the plain one
    (KEY.P.json); it opens the push gate when it passes, but its failure does
    not close a gate a plain smoke test opened (the image still trains; it
    breaks that one platform's contract, which the report says)."""
    key = key or result.image_id
    platform = getattr(result, "platform", None)
    suffix = f".{platform}" if platform else ""     # a profile name: [a-z0-9._-]
    path = project.state_dir / "smoke" / f"{_key(key)}{suffix}.json"
    _write_json(path, asdict(result))
    rec = read(project, key) or BuildRecord(key, name=result.image, engine_id=result.image_id)
    if platform and not result.passed and rec.smoke is not None:
        return path
    rec.smoke = SmokeMark(result.passed, str(path), result.started_at)
    _write_json(build_path(project, key), asdict(rec))
    return path


def smoke_passed(project: Project, key: str) -> bool:
    rec = read(project, key)
    return bool(rec and rec.smoke and rec.smoke.passed)


def add_pushed(project: Project, key: str, pinned: list[str]) -> None:
    rec = read(project, key) or BuildRecord(key)
    rec.pushed = list(dict.fromkeys([*pinned, *rec.pushed]))[:20]
    _write_json(build_path(project, key), asdict(rec))


def set_last_build(project: Project, names: list[str], command: str,
                   image_ids: dict[str, str]) -> None:
    _write_json(project.state_dir / "last-build.json",
                asdict(LastBuild(names, command, time.time(), image_ids)))


def last_build(project: Project) -> LastBuild | None:
    data = _read_json(project.state_dir / "last-build.json")
    if not data or not isinstance(data.get("names"), list) or not data["names"]:
        return None
    return LastBuild([str(n) for n in data["names"]], str(data.get("command") or ""),
                     float(data.get("at") or 0), dict(data.get("image_ids") or {}))
