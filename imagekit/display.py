"""The one place that turns events into output: a live rich view on a
terminal, plain lines otherwise, or JSON lines with --json. rich is loaded
only for the live view and for errors: plain and JSON output print by
themselves, so a verb whose output goes to a pipe does not pay for it at its
start."""

from __future__ import annotations

import json
import os
import re
import sys
import time
from collections import deque
from dataclasses import dataclass, field

from .events import (
    BaseResult,
    Built,
    Cached,
    CatalogResult,
    Checked,
    DoctorResult,
    Event,
    Failed,
    FetchResult,
    GraphResult,
    Info,
    InspectResult,
    LoadResult,
    LockResult,
    Log,
    MatrixResult,
    PlatformsResult,
    Problem,
    Progress,
    PushResult,
    ReproduceResult,
    SaveResult,
    SbomResult,
    Skipped,
    SmokeResult,
    Step,
    Warn,
    count,
)
from .peer import redact, shown
from .reference import printable


def console(stderr: bool = False):
    """rich's console for stdout (`out`) or stderr (`err`), made on first use."""
    name = "err" if stderr else "out"
    made = globals().get(name)
    if made is None:
        from rich.console import Console
        made = Console(stderr=True, highlight=False, soft_wrap=True) if stderr else \
            Console(highlight=False)
        globals()[name] = made
    return made


def __getattr__(name: str):
    if name in ("out", "err"):
        return console(stderr=name == "err")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# what makes rich treat a stream that is not a terminal as one
_FORCED = ("FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")


def stdout_is_terminal() -> bool:
    """What rich's console would say, without loading rich for a pipe."""
    if not sys.stdout.isatty() and not any(os.environ.get(k) for k in _FORCED):
        return False
    return console().is_terminal


# What a build or a container prints is shown, not obeyed: escape sequences
# (colours, cursor moves, window titles) are dropped, a carriage return keeps what
# a terminal would end up showing, and any other control character is escaped.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[ -/]*[0-~]?")


def terminal_safe(line: str) -> str:
    line = _ESCAPES.sub("", line)
    if "\r" in line:
        line = line.rstrip("\r").rsplit("\r", 1)[-1]
    return printable(line.expandtabs(4))


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

    def __init__(self, mode: str = "auto", verbose: bool = False, top: int = 5):
        if mode == "auto":
            mode = "rich" if stdout_is_terminal() else "plain"
        self.mode = mode
        self.verbose = verbose
        self.top = top
        self.rows: dict[str, _Row] = {}
        self.progress: dict[tuple[str, str], tuple[int, int, str]] = {}
        self.progress_printed: dict[tuple[str, str], float] = {}
        self.live = None

    def __enter__(self) -> Display:
        if self.mode == "rich":
            from rich.live import Live
            self.live = Live(self._render(), console=console(), refresh_per_second=8,
                             transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)
            self.live = None

    # -- events --------------------------------------------------------------
    def show(self, ev: Event) -> None:
        if self.mode == "json":
            if isinstance(ev, Problem):   # errors go to stderr, as one JSON object each
                error(f"{ev.image}: {ev.message}" if ev.image else ev.message, as_json=True,
                      code=ev.exit_code)
                return
            print(redact(json.dumps(ev.to_dict(), default=str)), flush=True)
            return
        row = self.rows.setdefault(ev.image, _Row()) if ev.image else None
        if isinstance(ev, Step):
            shown_step = _cut_step(ev.instruction)
            row.status, row.step = "building", f"{ev.index}/{ev.total} {shown_step}"
            row.tail.clear()
            self._line(f"{ev.image}: step {ev.index}/{ev.total} {shown_step}", "bold")
        elif isinstance(ev, Cached):
            row.cached += 1
            if self.mode == "plain":
                self._line(f"{ev.image}:   cached", "dim")
        elif isinstance(ev, Log):
            line = terminal_safe(ev.line)
            row.tail.append(line)
            if self.mode == "plain" or self.verbose:
                self._line(f"{ev.image}: | {line}", "dim", always=True)
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
                row.tail.clear()
            self._line(f"{ev.image}: {ev.message}" if ev.image else ev.message, always=True)
        elif isinstance(ev, Progress):
            self._progress(ev)
        elif isinstance(ev, Checked):
            self._line(f"ok  {ev.image}", always=True)
        elif isinstance(ev, Problem):
            error(f"{ev.image}: {ev.message}" if ev.image else ev.message)
        else:
            render = RESULTS.get(type(ev))
            if render is not None:
                render(self, ev)
        if self.live is not None:
            self.live.update(self._render())

    def _line(self, text: str, style: str = "", always: bool = False) -> None:
        text = shown(text)        # a peer's words in a line: secrets out, controls escaped
        if self.mode == "plain":
            print(text, flush=True)
        elif always:
            from rich.text import Text
            (self.live.console if self.live else console()).print(Text(text, style=style))

    def _progress(self, ev: Progress) -> None:
        key = (ev.image, ev.item)
        last = self.progress.get(key)
        self.progress[key] = (ev.current, ev.total, ev.status)
        if self.mode != "plain":
            return
        # plain lines: each change of status, and a heartbeat for long transfers
        now = time.monotonic()
        if last is None or last[2] != ev.status or \
                now - self.progress_printed.get(key, 0.0) >= PLAIN_PROGRESS_EVERY:
            self.progress_printed[key] = now
            who = f"{ev.image}: " if ev.image else ""
            print(f"{who}{ev.item} {ev.status}{_bytes(ev.current, ev.total)}", flush=True)

    # -- results ---------------------------------------------------------------
    def _fetch(self, r: FetchResult) -> None:
        if not r.downloaded:      # the stage's own line said the wheelhouse has everything
            return
        self._line(f"{r.image}: fetched {r.downloaded} files ({r.bytes / 1e6:.1f} MB) into "
                   f"{r.wheelhouse}", "green", always=True)

    def _base(self, r: BaseResult) -> None:
        self._line(f"{'made' if r.made else 'kept'} {r.image} ({r.image_id[:19]})", "green",
                   always=True)

    def _graph(self, r: GraphResult) -> None:
        """The end of a multi-image build: what was built, failed, skipped."""
        if len(r.images) <= 1 and all(o.status == "ok" for o in r.images.values()):
            return
        width = max((len(n) for n in r.images), default=4)
        for name, o in r.images.items():
            style = {"ok": "green", "failed": "red", "skipped": "yellow"}.get(o.status, "")
            why = f"  {o.reason}" if o.reason else ""
            self._line(f"{name:<{width}}  {o.status:<7}{why}", style, always=True)

    def _smoke(self, r: SmokeResult) -> None:
        fc = r.framework_check
        lines = [f"{r.image}: smoke passed in {r.seconds}s ({r.image_id[:19]})"]
        if fc:
            gpu = f", CUDA {fc.cuda} cuDNN {fc.cudnn}" if fc.device == "gpu" else ""
            lines.append(f"  framework  {fc.framework} {fc.version} on {fc.device} "
                         f"({fc.device_name}{gpu})")
            lines.append(f"  steps      {fc.steps}, loss {fc.loss_first:.4g} -> "
                         f"{fc.loss_last:.4g}, {fc.steps_per_sec} steps/s")
        if r.proven:
            lines.append(f"  proven     {r.proven}")
        v = r.gpu
        if v:
            lines.append(f"  gpu        built for CUDA {v.cuda_build} / cuDNN {v.cudnn_build}; "
                         f"{v.installed()}")
            lines.append(f"  gpu code   {v.code()}; needs NVIDIA driver >= {v.driver_min}")
            if v.fits is not None:
                lines.append(f"  platform   fits driver {v.target_driver or 'any'}, GPU "
                             f"{' '.join(v.target_archs) or 'any'}")
        nd = r.nodes
        if nd and nd.covered:
            lines.append(f"  nodes      {nd.nodes} ranks agreed on all-reduce "
                         f"{nd.allreduce[0] if nd.allreduce else '-'} in {nd.seconds}s")
        elif nd:
            lines.append(f"  nodes      {nd.note}")
        if r.platform:
            lines.append(f"  contract   {r.platform}: ran as that platform runs it; nothing "
                         "broke its contract")
        tr = r.training
        if tr:
            runs = ", ".join(f"{x.seconds}s" for x in tr.runs)
            resumed = f", resumed from step {tr.resumed_from}" if tr.resumed_from else ""
            lines.append(f"  training   {count(len(tr.runs), 'run')} ({runs}){resumed}; "
                         f"{count(len(tr.output_files), 'output file')}")
        nb = r.notebook
        if nb:
            lines.append(f"  notebook   JupyterLab answered at {nb.url} in {nb.seconds_to_answer}s")
        if r.note:
            lines.append(f"  note       {r.note}")
        lines.append(f"  log        {r.log}")
        for line in lines:
            self._line(line, "green" if line is lines[0] else "", always=True)

    def _push(self, r: PushResult) -> None:
        gate = "smoke test passed" if r.smoke_gate == "on" else "smoke gate off"
        self._line(f"{r.image}: pushed {r.image_id[:19]} to "
                   f"{count(len(r.destinations), 'destination')} ({gate})", "green", always=True)
        for d in r.destinations:
            self._line(f"  {d.ref}  {d.digest}", always=True)
            if d.sbom is not None:
                how = f"referrers tag {d.sbom.tag}" if d.sbom.tag else d.sbom.how
                self._line(f"    sbom: {d.sbom.ref} ({how})", always=True)
        if r.bytes_compressed is not None:
            stored = f"; {count(r.layers_as_stored or 0, 'layer')} sent as the engine stored " \
                     "them" if r.layers_as_stored else ""
            size = f" ({r.bytes_compressed / 1e6:.0f} MB)" if r.bytes_compressed >= 1e6 else ""
            self._line(f"  bytes compressed: {r.bytes_compressed}{size}{stored}", always=True)

    def _save(self, r: SaveResult) -> None:
        ratio = f", {100 * r.bytes / r.tar_bytes:.0f}% of the tar" if r.tar_bytes else ""
        self._line(f"{r.image}: saved {r.ref} ({r.image_id[:19]}) to {r.path}", "green",
                   always=True)
        self._line(f"  {r.format}, {r.bytes / 1e6:.1f} MB{ratio}, {r.seconds}s "
                   f"({r.mb_per_s} MB/s read)", always=True)
        self._line(f"  sha256 {r.sha256}  ({r.sha256_file}; manifest {r.manifest_file})",
                   always=True)
        if r.sbom_file:
            self._line(f"  bill of materials {r.sbom_file}", always=True)

    def _sbom(self, r: SbomResult) -> None:
        where = f" to {r.path}" if r.path else ""
        self._line(f"{r.image}: bill of materials of {r.ref} ({r.image_id[:19]}){where} in "
                   f"{r.seconds}s", "green", always=True)
        libs = "library" if r.cuda_libraries == 1 else "libraries"
        self._line(f"  {count(r.python_packages, 'Python package')} ({r.wheel_hashes} with their "
                   f"wheel's sha256), {count(r.debian_packages, 'Debian package')}, "
                   f"{r.cuda_libraries} CUDA {libs}; CycloneDX 1.5", always=True)

    def _lock(self, r: LockResult) -> None:
        steps = ", ".join(f"{s} {n}" for s, n in r.steps.items())
        if not r.written:
            self._line(f"{r.image}: {r.path} unchanged: {count(r.packages, 'package')} "
                       f"({steps}), {r.digest[:19]}", "green", always=True)
            return
        moved = [f"{len(x)} {what}" for x, what in ((r.added, "added"), (r.changed, "changed"),
                                                    (r.removed, "removed")) if x]
        self._line(f"{r.image}: wrote {r.path}: {count(r.packages, 'package')} pinned with "
                   f"their sha256 ({steps}) in {r.seconds}s", "green", always=True)
        if moved and r.replaced:
            named = ", ".join((r.added + r.changed + r.removed)[:6])
            self._line(f"  {', '.join(moved)} since the last lock: {named}"
                       f"{', …' if len(r.added + r.changed + r.removed) > 6 else ''}", always=True)
        self._line(f"  its builds use SOURCE_DATE_EPOCH {r.epoch}; {r.digest[:19]}", always=True)

    def _reproduce(self, r: ReproduceResult) -> None:
        """Two cold builds compared: the verdict, each layer above the base,
        and under a layer that differs its first paths and why."""
        builds = " and ".join(f"{s:.1f}s" for s in r.seconds)
        verdict = "reproducible" if r.reproducible else "NOT reproducible"
        self._line(f"{r.image}: {verdict}: {r.identical}/{r.total} layers above the base "
                   f"({r.base}) identical across two cold builds with {r.builder} ({builds}; "
                   f"SOURCE_DATE_EPOCH {r.source_date_epoch})", "green" if r.reproducible
                   else "red", always=True)
        ids = r.image_ids
        self._line(f"  image ID {ids[0][:19]} both times" if len(set(ids)) == 1 else
                   f"  image IDs {' and '.join(i[:19] for i in ids)} (the image config differs"
                   f"{'' if r.builder != 'classic' else ': the classic builder stamps it'})",
                   always=True)
        for x in r.layers:
            step = f"  {x.step[:80]}" if x.step else ""
            if x.same:
                if self.mode == "plain" or self.verbose:
                    self._line(f"  layer {x.index:<3} same   {x.diff_ids[0][:19]}{step}",
                               always=True)
                continue
            self._line(f"  layer {x.index:<3} DIFFERS {x.diff_ids[0][:19] or '(none)'} vs "
                       f"{x.diff_ids[1][:19] or '(none)'}{step}", "yellow", always=True)
            for d in x.paths:
                self._line(f"    {d.path}  {', '.join(d.what)}: {d.first} | {d.second}",
                           always=True)
            if x.paths_total > len(x.paths):
                self._line(f"    ({x.paths_total - len(x.paths)} more paths differ)", always=True)
            if x.why:
                self._line(f"    why: {x.why}", always=True)

    def _load(self, r: LoadResult) -> None:
        refs = ", ".join(r.refs) or "(no tag)"
        same = r.config_digest in ("", r.image_id)
        ids = r.image_id if same else f"{r.image_id[:19]}, config {r.config_digest[:19]}"
        self._line(f"loaded {refs} ({ids}) from {r.path}", "green", always=True)
        self._line(f"  checksum {r.checksum}; manifest: {r.manifest}", always=True)

    def _inspect(self, r: InspectResult) -> None:
        mb = 1e6
        self._line(f"{r.image}  {r.image_id[:19]}  {r.total_bytes / mb:.1f} MB in "
                   f"{len(r.layers)} layers; wasted {r.wasted_bytes / mb:.2f} MB, efficiency "
                   f"{100 * r.efficiency:.2f}%", always=True)
        self._table(None, ["layer", "size MB", "wasted MB", "created by"],
                    [[str(i), f"{x.size / mb:.1f}", f"{x.wasted / mb:.2f}", x.created_by[:90]]
                     for i, x in enumerate(r.layers, 1)])
        for w in r.top_wasted[:self.top]:
            self._line(f"  wasted {w.bytes / mb:8.2f} MB  {w.path}", always=True)
        pk = r.python_packages
        self._line(f"python packages ({len(pk)}): " + ", ".join(f"{k}=={v}" for k, v in pk.items()),
                   always=True)
        for k, v in sorted(r.labels.items()):
            self._line(f"  label {k}={v}", always=True)

    def _catalog(self, r: CatalogResult) -> None:
        cols = ["name", "framework", "device", "python", "cuda", "parent", "jupyter", "tags",
                "description"]
        self._table(f"imagekit catalog ({r.folder})", cols,
                    [[getattr(e, c) for c in cols] for e in r.entries])

    def _matrix(self, r: MatrixResult) -> None:
        cols = ["framework", "version", "python", "cpu_install", "gpu_install", "cuda",
                "gpu_base", "refused"]
        if any(row.fit for row in r.rows):
            cols = ["framework", "version", "cuda", "archs", "driver", "fit"]
        self._table("imagekit compatibility matrix", [c.replace("_", " ") for c in cols],
                    [[getattr(row, c) for c in cols] for row in r.rows])

    def _platforms(self, r: PlatformsResult) -> None:
        cols = ["name", "mounts", "user", "shm_mb", "root_fs", "network", "nodes", "start",
                "source"]
        self._table("platform profiles (imagekit smoke NAME --platform P)",
                    [c.replace("_", " ") for c in cols],
                    [[str(getattr(row, c)) for c in cols] for row in r.rows])
        if self.mode == "plain" or self.verbose:
            for row in r.rows:
                self._line(f"{row.name}: {row.description}", always=True)

    def _doctor(self, r: DoctorResult) -> None:
        """One line per finding; under a wrong or missing one, its fix."""
        width = max((len(c.name) for c in r.checks), default=6)
        for c in r.checks:
            self._line(f"{c.name:<{width}}  {c.found}", "" if c.ok else "yellow", always=True)
            if c.fix:
                self._line(f"{'':<{width}}  fix: {c.fix}", "yellow", always=True)
        n = len(r.problems)
        self._line("nothing to fix" if not n else f"{count(n, 'thing')} to fix (above)",
                   "green" if not n else "yellow", always=True)

    def _table(self, title: str | None, columns: list[str], rows: list[list[str]]) -> None:
        if self.mode == "plain":
            if title:
                print(title, flush=True)
            print("\t".join(columns), flush=True)
            for row in rows:
                print("\t".join(row), flush=True)
            return
        from rich.table import Table
        table = Table(*columns, title=title)
        for c in table.columns:
            c.overflow = "fold"
        for row in rows:
            table.add_row(*row)
        (self.live.console if self.live else console()).print(table)

    # -- live view -----------------------------------------------------------
    def _render(self):
        from rich.console import Group
        from rich.table import Table
        from rich.text import Text
        table = Table.grid(padding=(0, 2))
        now = time.monotonic()
        for name, row in self.rows.items():
            elapsed = (row.done or now) - row.started
            cached = f"{row.cached} cached" if row.step else ""
            step = Text(" ".join(row.step.split())[:70], no_wrap=True, overflow="ellipsis")
            table.add_row(Text(name, style="bold"), Text(row.status[:60]), step,
                          Text(f"{elapsed:5.1f}s"), Text(cached, style="dim"))
        parts = [table]
        active = [r for r in self.rows.values() if r.done is None and r.tail]
        if len(active) == 1 and active[0].tail:
            parts.append(Text("\n".join(f"  | {line[:110]}" for line in active[0].tail),
                              style="dim"))
        for (image, item), (cur, total, status) in _latest(self.progress, 8):
            parts.append(Text(f"  {image} {item} {status:<22} {_bar(cur, total)}"
                              f"{_bytes(cur, total)}", style="cyan"))
        return Group(*parts)


PLAIN_PROGRESS_EVERY = 10.0   # seconds between plain progress lines of one item
DONE_STATUSES = ("Pushed", "Layer already exists", "Mounted from")


def _bytes(current: int, total: int) -> str:
    """' 12.3/45.6 MB', in the unit that suits the whole (a config blob is a few kB)."""
    top = max(current, total)
    unit, div, fmt = ("MB", 1e6, ".1f") if top >= 100_000 else \
        ("kB", 1e3, ".1f") if top >= 1000 else ("B", 1, ".0f")
    if total:
        return f" {current / div:{fmt}}/{total / div:{fmt}} {unit}"
    return f" {current / div:{fmt}} {unit}" if current else ""


def _bar(current: int, total: int, width: int = 20) -> str:
    if not total:
        return ""
    filled = min(width, int(width * current / total))
    return f"[{'#' * filled}{'.' * (width - filled)}] {100 * min(current, total) / total:5.1f}%"


def _latest(progress: dict, n: int) -> list:
    """The last n progress items, those still moving first (a push has many layers)."""
    items = list(progress.items())
    moving = [x for x in items if not str(x[1][2]).startswith(DONE_STATUSES)]
    return (moving[-n:] + [x for x in items if x not in moving][-n:])[:n]


def error(message: str, details: list[str] | None = None, *, as_json: bool = False,
          code: int = 1) -> None:
    """An error: one line on stderr (then its details, dimmed), or with --json
    one JSON object {"event": "error", "message", "exit_code", "details"}."""
    if as_json:
        print(redact(json.dumps({"event": "error", "message": _cut(message), "exit_code": code,
                                 "details": [_cut(d) for d in details or []]})),
              file=sys.stderr, flush=True)
        return
    from rich.text import Text
    err = console(stderr=True)
    err.print(Text(shown(f"imagekit: {_cut(message)}"), style="bold red"))
    for d in details or []:
        err.print(Text(shown(f"  {_cut(d)}"), style="dim"))


ERROR_LIMIT = 2000   # characters of one error line: peers' words are cut where they come in


STEP_LIMIT = 300     # characters of a build step shown (a locked install lists every hash)


def _cut_step(text: str) -> str:
    return text if len(text) <= STEP_LIMIT else \
        f"{text[:STEP_LIMIT - 60]} … {text[-50:]} ({len(text) - STEP_LIMIT + 10} characters left out)"


def _cut(text: str) -> str:
    return text if len(text) <= ERROR_LIMIT else \
        f"{text[:ERROR_LIMIT]}... ({len(text) - ERROR_LIMIT} more characters)"


def is_tty() -> bool:
    return sys.stdout.isatty()


RESULTS = {
    FetchResult: Display._fetch, BaseResult: Display._base, GraphResult: Display._graph,
    SmokeResult: Display._smoke, PushResult: Display._push, SaveResult: Display._save,
    SbomResult: Display._sbom, LockResult: Display._lock, ReproduceResult: Display._reproduce,
    LoadResult: Display._load, InspectResult: Display._inspect, CatalogResult: Display._catalog,
    MatrixResult: Display._matrix, DoctorResult: Display._doctor,
    PlatformsResult: Display._platforms,
}
