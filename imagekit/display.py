"""The one place that turns events into output: a live rich view on a
terminal, plain lines otherwise, or JSON lines with --json."""

from __future__ import annotations

import json
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .events import Built, Cached, Event, Failed, Info, Log, Progress, Result, Skipped, Step, Warn

out = Console(highlight=False)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class _Row:
    started: float = field(default_factory=time.monotonic)
    status: str = "waiting"
    step: str = ""
    cached: int = 0
    done: float | None = None
    tail: deque = field(default_factory=lambda: deque(maxlen=6))


class Display:
    """Use as a context manager; feed it events with show()."""

    def __init__(self, mode: str = "auto", verbose: bool = False):
        if mode == "auto":
            mode = "rich" if out.is_terminal else "plain"
        self.mode = mode
        self.verbose = verbose
        self.rows: dict[str, _Row] = {}
        self.progress: dict[tuple[str, str], tuple[int, int, str]] = {}
        self.live: Live | None = None

    def __enter__(self) -> Display:
        if self.mode == "rich":
            self.live = Live(self._render(), console=out, refresh_per_second=8, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)
            self.live = None

    # -- events --------------------------------------------------------------
    def show(self, ev: Event) -> None:
        if self.mode == "json":
            print(json.dumps(ev.to_dict(), default=str), flush=True)
            return
        row = self.rows.setdefault(ev.image, _Row()) if ev.image else None
        if isinstance(ev, Step):
            row.status, row.step = "building", f"{ev.index}/{ev.total} {ev.instruction}"
            row.tail.clear()
            self._line(f"{ev.image}: step {ev.index}/{ev.total} {ev.instruction}", "bold")
        elif isinstance(ev, Cached):
            row.cached += 1
            if self.mode == "plain":
                self._line(f"{ev.image}:   cached", "dim")
        elif isinstance(ev, Log):
            row.tail.append(ev.line)
            if self.mode == "plain" or self.verbose:
                self._line(f"{ev.image}: | {ev.line}", "dim", always=True)
        elif isinstance(ev, Built):
            row.status, row.done = "built", time.monotonic()
            self._line(f"{ev.image}: built {ev.image_id[:19]} as {', '.join(ev.refs)} in "
                       f"{ev.seconds:.1f}s ({ev.cached_steps}/{ev.steps} steps from cache)",
                       "green", always=True)
        elif isinstance(ev, Skipped):
            if row:
                row.status = "skipped"
            self._line(f"{ev.image}: skipped: {ev.reason}", "yellow", always=True)
        elif isinstance(ev, Failed):
            if row:
                row.status, row.done = "failed", time.monotonic()
            self._line(f"{ev.image}: failed: {ev.reason}", "red", always=True)
        elif isinstance(ev, Warn):
            self._line(f"{ev.image}: warning: {ev.message}" if ev.image else
                       f"warning: {ev.message}", "yellow", always=True)
        elif isinstance(ev, Info):
            if row:
                row.status = ev.message[:60]
            self._line(f"{ev.image}: {ev.message}" if ev.image else ev.message, always=True)
        elif isinstance(ev, Progress):
            self._progress(ev)
        elif isinstance(ev, Result):
            self._result(ev)
        if self.live is not None:
            self.live.update(self._render())

    def _line(self, text: str, style: str = "", always: bool = False) -> None:
        if self.mode == "plain":
            print(text, flush=True)
        elif always:
            (self.live.console if self.live else out).print(Text(text, style=style))

    def _progress(self, ev: Progress) -> None:
        key = (ev.image, ev.item)
        last = self.progress.get(key)
        self.progress[key] = (ev.current, ev.total, ev.status)
        if self.mode == "plain" and (last is None or last[2] != ev.status):
            size = f" {ev.current / 1e6:.1f}/{ev.total / 1e6:.1f} MB" if ev.total else ""
            print(f"{ev.image}: {ev.item} {ev.status}{size}", flush=True)

    def _result(self, ev: Result) -> None:
        if ev.stage == "fetch":
            d = ev.data
            mb = d.get("bytes", 0) / 1e6
            self._line(f"{ev.image}: fetched {d.get('downloaded', 0)} files ({mb:.1f} MB) into "
                       f"{d.get('wheelhouse')}", "green", always=True)
        elif ev.stage == "base":
            d = ev.data
            verb = "made" if d.get("made") else "kept"
            self._line(f"{verb} {d['image']} ({d['image_id'][:19]})", "green", always=True)
        elif ev.stage == "smoke":
            self._smoke(ev.image, ev.data)
        else:
            self._line(f"{ev.image}: {ev.stage}: {json.dumps(ev.data, default=str)}",
                       always=True)

    def _smoke(self, name: str, r: dict) -> None:
        fc = r.get("framework_check") or {}
        lines = [f"{name}: smoke passed in {r.get('seconds')}s ({r['image_id'][:19]})"]
        if fc:
            gpu = f", CUDA {fc.get('cuda')} cuDNN {fc.get('cudnn')}" if fc.get("device") == "gpu" \
                else ""
            lines.append(f"  framework  {fc.get('framework')} {fc.get('version')} on "
                         f"{fc.get('device')} ({fc.get('device_name')}{gpu})")
            lines.append(f"  steps      {fc.get('steps')}, loss {fc.get('loss_first'):.4g} -> "
                         f"{fc.get('loss_last'):.4g}, {fc.get('steps_per_sec')} steps/s")
        tr = r.get("training")
        if tr:
            runs = ", ".join(f"{x['seconds']}s" for x in tr["runs"])
            resumed = f", resumed from step {tr['resumed_from']}" if "resumed_from" in tr else ""
            lines.append(f"  training   {len(tr['runs'])} run(s) ({runs}){resumed}; "
                         f"{len(tr.get('output_files', []))} output files")
        nb = r.get("notebook")
        if nb:
            lines.append(f"  notebook   JupyterLab answered at {nb['url']} in "
                         f"{nb['seconds_to_answer']}s")
        if r.get("note"):
            lines.append(f"  note       {r['note']}")
        lines.append(f"  log        {r.get('log')}")
        for line in lines:
            self._line(line, "green" if line is lines[0] else "", always=True)

    # -- live view -----------------------------------------------------------
    def _render(self):
        table = Table.grid(padding=(0, 2))
        now = time.monotonic()
        for name, row in self.rows.items():
            elapsed = (row.done or now) - row.started
            table.add_row(Text(name, style="bold"), Text(row.status), Text(row.step[:70]),
                          Text(f"{elapsed:5.1f}s"), Text(f"{row.cached} cached", style="dim"))
        parts = [table]
        active = [r for r in self.rows.values() if r.status == "building"]
        if len(active) == 1 and active[0].tail:
            parts.append(Text("\n".join(f"  | {line[:110]}" for line in active[0].tail),
                              style="dim"))
        for (image, item), (cur, total, status) in list(self.progress.items())[-8:]:
            pct = f"{100 * cur / total:5.1f}%" if total else ""
            parts.append(Text(f"  {image} {item} {status} {pct}", style="cyan"))
        return Group(*parts)


def error(message: str, details: list[str] | None = None) -> None:
    err.print(Text(f"imagekit: {message}", style="bold red"))
    for d in details or []:
        err.print(Text(f"  {d}", style="dim"))


def is_tty() -> bool:
    return sys.stdout.isatty()
