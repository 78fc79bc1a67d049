"""Events that the stages yield and the display renders. Stages never print."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import ClassVar


@dataclass
class Event:
    kind: ClassVar[str] = "event"
    image: str = ""

    def to_dict(self) -> dict:
        return {"event": self.kind, **asdict(self)}


@dataclass
class Info(Event):
    kind: ClassVar[str] = "info"
    message: str = ""


@dataclass
class Warn(Event):
    kind: ClassVar[str] = "warning"
    message: str = ""


@dataclass
class Log(Event):
    """A line of output from the engine, pip or a container."""

    kind: ClassVar[str] = "log"
    line: str = ""


@dataclass
class Step(Event):
    kind: ClassVar[str] = "step"
    index: int = 0
    total: int = 0
    instruction: str = ""


@dataclass
class Cached(Event):
    kind: ClassVar[str] = "cached"
    index: int = 0


@dataclass
class Built(Event):
    kind: ClassVar[str] = "built"
    image_id: str = ""
    refs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    steps: int = 0
    cached_steps: int = 0
    log_path: str = ""


@dataclass
class Skipped(Event):
    kind: ClassVar[str] = "skipped"
    reason: str = ""


@dataclass
class Failed(Event):
    kind: ClassVar[str] = "failed"
    reason: str = ""


@dataclass
class Progress(Event):
    """Byte progress of one item (a layer being pushed, an archive being written)."""

    kind: ClassVar[str] = "progress"
    item: str = ""
    current: int = 0
    total: int = 0
    status: str = ""


@dataclass
class Result(Event):
    """A stage's final, machine-readable result (fetch summary, smoke report, ...)."""

    kind: ClassVar[str] = "result"
    stage: str = ""
    data: dict = field(default_factory=dict)
