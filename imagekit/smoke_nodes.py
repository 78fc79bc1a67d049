"""Smoke stage, several nodes: the image run as one job of N containers, as a
multi-node training platform runs it (`--nodes N`, or a profile's `nodes`);
with `train.distributed` in the spec, its own training too (training()).

The N containers share a fresh internal network (no route out) and reach
each other by host name (node-0 .. node-N-1, rank 0 first); each gets the
rendezvous variables its platform sets (the profile's `env`, filled for that
node; without them imagekit's own: MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK
for PyTorch, TF_CONFIG with every node as a worker for TensorFlow) and runs
imagekit/checks/distributed.py on CPU: the ranks meet, all-reduce rank + 1
(every rank must get N(N+1)/2), then train a tiny model a few steps with its
gradients averaged across ranks (DistributedDataParallel over gloo;
MultiWorkerMirroredStrategy with collective ops), each rank reporting loss
first -> last. The ranks must agree; each problem is one line. MXNet is not
covered (said in one line; not a failure). Every container and the network
are removed on every way out."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import queue
import shlex
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from . import platforms
from .engine import RunAs
from .errors import Interrupted, SmokeError
from .events import Event, Info, Log, NodesResult, TrainingResult, TrainingRun, Warn, count

if TYPE_CHECKING:
    from .smoke import _Contract, _Runner

CHECKS_DIR = Path(__file__).resolve().parent / "checks"
SCRIPT = "distributed.py"
COVERED = ("pytorch", "tensorflow")
NAMES = {"pytorch": "PyTorch", "tensorflow": "TensorFlow", "mxnet": "MXNet"}
STEPS = 50                 # training steps of the tiny model, per rank
MEET_SECONDS = 90          # the ranks must meet (and keep answering) within this
GRACE_SECONDS = 15         # the others' time to finish once one rank has failed
PORTS = {"pytorch": "29500", "tensorflow": "2222"}
DEFAULT_RUN_AS = RunAs(user="0:0", shm_mb=64)      # no platform: root, Docker's /dev/shm
CHECK_DIR = "imagekit/checks"


def hosts_for(n: int) -> list[str]:
    """The nodes' host names, rank 0 first (their network is theirs alone, so
    the names need not be unique beyond it)."""
    return [f"node-{i}" for i in range(n)]


def node_env(contract: _Contract | None, framework: str, hosts: list[str], rank: int) \
        -> tuple[dict[str, str], str | None]:
    """The variables node RANK gets: the rendezvous imagekit gives, then the
    platform's own (its profile's `env`, filled for this node), which win.
    A TensorFlow TF_CONFIG from the profile that does not name every node is
    replaced (and the reason returned)."""
    n = len(hosts)
    if framework == "tensorflow":
        own = {"TF_CONFIG": _tf_config(hosts, rank)}
    else:
        own = {"MASTER_ADDR": hosts[0], "MASTER_PORT": PORTS["pytorch"], "WORLD_SIZE": str(n),
               "RANK": str(rank)}
    note = None
    if contract is not None:
        vals = platforms.values(contract.profile, hosts[rank], hosts, rank, 0)
        given = {k: platforms.fill(v, vals) for k, v in contract.profile.env.items()}
        if framework == "tensorflow" and "TF_CONFIG" in given and \
                _tf_tasks(given["TF_CONFIG"]) != n:
            note = (f"{contract.name}'s TF_CONFIG names {_tf_tasks(given['TF_CONFIG'])} "
                    f"task(s), not {n}: the check gives every node as a worker instead")
            given.pop("TF_CONFIG")
        own.update(given)
    return {**own, "PYTHONDONTWRITEBYTECODE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}, note


def _tf_config(hosts: list[str], rank: int) -> str:
    return json.dumps({"cluster": {"worker": [f"{h}:{PORTS['tensorflow']}" for h in hosts]},
                       "task": {"type": "worker", "index": rank}})


def _tf_tasks(text: str) -> int:
    """How many tasks a TF_CONFIG's cluster has (chief and workers); 0: none readable."""
    try:
        cluster = json.loads(text)["cluster"]
        return sum(len(cluster.get(t) or []) for t in ("chief", "worker"))
    except (ValueError, KeyError, TypeError, AttributeError):
        return 0


def nodes(run: _Runner, contract: _Contract | None, n: int, framework: str | None = None, *,
          steps: int = STEPS) -> Iterator[Event]:
    """Run the N-node check of run.target (framework: the target's by default)
    under CONTRACT (None: root, 64 MB /dev/shm); yield Info/Warn/Log events and
    return a NodesResult (use with `yield from`). Raises SmokeError, one line
    per problem, when a rank fails or the ranks disagree."""
    t = run.target
    name = t.name
    framework = framework or t.framework
    if framework not in COVERED:
        what = NAMES.get(framework or "", framework or "an image with no known framework")
        note = f"{n}-node check: {what} is not covered (PyTorch and TensorFlow are)"
        yield Info(name, note)
        return NodesResult(n, framework, covered=False, note=note)
    uid = uuid.uuid4().hex[:8]
    net = f"imagekit-smoke-{uid}-net"
    hosts = hosts_for(n)
    meet = min(MEET_SECONDS, max(10, run.timeout - 30))
    base = contract.run_as if contract is not None else DEFAULT_RUN_AS
    args = ["--framework", framework, "--steps", str(steps), "--timeout", str(meet)]
    source = (CHECKS_DIR / SCRIPT).read_bytes()
    plan = []
    notes = set()
    for rank, host in enumerate(hosts):
        env, note = node_env(contract, framework, hosts, rank)
        if note:
            notes.add(note)
        env.update(run.stub_env)
        files = {f"{CHECK_DIR}/{SCRIPT}": source, **run.stub}
        if contract is not None:
            vals = platforms.values(contract.profile, host, hosts, rank, 0)
            files.update({path.lstrip("/"): platforms.fill(text, vals).encode()
                          for path, text in contract.profile.files.items()})
        if base.read_only:      # nothing can be copied in: the script comes on the command line
            cmd = ["python", "-c", source.decode(), *args]
            files = {}
        else:
            cmd = ["python", f"/{CHECK_DIR}/{SCRIPT}", *args]
        plan.append((rank, host, cmd, env, files))
    for note in sorted(notes):
        yield Warn(name, note)
    under = f" under {contract.name}" if contract is not None else ""
    yield Info(name, f"{n}-node check{under}: {NAMES[framework]} on CPU, {n} containers on a "
                     f"private network ({', '.join(hosts)}), all-reduce then {steps} training "
                     "steps")
    run.log.write(f"$ python {SCRIPT} {shlex.join(args)}  # on {', '.join(hosts)}, network {net}")
    job = yield from run_job(run, base, plan, uid, f"the {n}-node check")
    ended, reports, tails, begun, stopped, started = \
        job.ended, job.reports, job.tails, job.begun, job.stopped, job.started
    seconds = round(time.monotonic() - started, 2)
    result = NodesResult(n, framework, seconds=seconds)
    for rank in range(n):
        rep = reports.get(rank) or {}
        code, at = ended.get(rank, (None, time.monotonic()))
        result.allreduce.append(rep.get("allreduce"))
        result.ranks.append({"rank": rank, "host": hosts[rank], "exit": code,
                             "seconds": round(at - begun.get(rank, started), 2),
                             "loss_first": rep.get("loss_first"),
                             "loss_last": rep.get("loss_last"), "weights": rep.get("weights")})
    problems = _problems(result, reports, tails, stopped)
    expected = n * (n + 1) / 2
    result.agreed = all(v is not None and math.isclose(v, expected, abs_tol=1e-6)
                        for v in result.allreduce)
    if problems:
        lines = [f"{name}: {n}-node check{under}: {p}" for p in problems]
        details = [*(f"| {hosts[r]}: {x}" for r in range(n) for x in tails[r][-4:]),
                   *(f"{hosts[r]} was still running {GRACE_SECONDS} s after another rank "
                     "failed: stopped" for r in stopped),
                   f"full log: {run.log.path}"]
        raise SmokeError(lines[0], problems=lines if len(lines) > 1 else [], details=details)
    version = next((r.get("version") for r in reports.values() if r.get("version")), "")
    losses = ", ".join(f"{r['host']} loss {r['loss_first']:.4g} -> {r['loss_last']:.4g} "
                       f"({r['seconds']:g} s)" for r in result.ranks)
    yield Info(name, f"{n}-node check ok{under}: {NAMES[framework]} {version}, all-reduce "
                     f"{result.allreduce[0]:g} on every rank; {losses}")
    return result


@dataclasses.dataclass
class Job:
    """How the N containers of one job ended: exit code and time per rank,
    each rank's report (its IMAGEKIT_REPORT line), its last lines, when it
    started, and the ranks stopped after another one failed."""

    ended: dict[int, tuple[int | None, float]]
    reports: dict[int, dict]
    tails: dict[int, list[str]]
    begun: dict[int, float]
    stopped: list[int]
    started: float


def run_job(run: _Runner, base: RunAs, plan: list, uid: str, what: str,
            volumes: dict[int, dict[str, str]] | None = None) -> Iterator[Event]:
    """Start the containers of PLAN [(rank, host, command, env, files)] on a
    fresh internal network, each reaching the others by host name; stream
    their logs; wait for all (once one fails, the others get GRACE_SECONDS).
    Returns a Job. Every container and the network are removed on every way
    out; SmokeError on timeout, Interrupted on Ctrl-C."""
    from .archive import tar_of
    from .smoke import REPORT_MARK, check_engine  # smoke imports this module
    t = run.target
    name, ref, engine = t.name, t.ref, run.engine
    n = len(plan)
    hosts = [host for _, host, *_ in plan]
    net = f"imagekit-smoke-{uid}-net"
    started = time.monotonic()
    deadline = started + run.timeout
    items: queue.Queue = queue.Queue()
    reports: dict[int, dict] = {}
    tails: dict[int, list[str]] = {rank: [] for rank in range(n)}
    begun: dict[int, float] = {}
    ended: dict[int, tuple[int | None, float]] = {}
    stopped: list[int] = []
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(engine.network(net, ref))
            for rank, host, cmd, env, files in plan:
                run_as = dataclasses.replace(base, hostname=host, network=net, aliases=(host,))
                cid = stack.enter_context(engine.container(
                    ref, cmd, name=f"imagekit-smoke-{uid}-{host}", env=env,
                    volumes=(volumes or {}).get(rank), files=tar_of(files) if files else None,
                    network=True, owner=ref, run_as=run_as))
                begun[rank] = time.monotonic()
                threading.Thread(target=_follow, args=(engine, cid, rank, items, deadline),
                                 daemon=True, name=f"imagekit-{host}").start()
            grace_until = None
            while len(ended) < n:
                now = time.monotonic()
                if grace_until is not None and now > grace_until:
                    stopped = [r for r in range(n) if r not in ended]
                    break
                if now >= deadline:
                    raise SmokeError(
                        f"{name}: {what} timed out after {run.timeout}s (smoke.timeout); "
                        "the containers and their network were removed",
                        details=[*(f"| {hosts[r]}: {x}" for r in range(n) for x in tails[r][-4:]),
                                 f"full log: {run.log.path}"])
                try:
                    kind, rank, value = items.get(timeout=min(deadline - now, 0.5))
                except queue.Empty:
                    continue
                if kind == "line":
                    run.log.write(f"[{hosts[rank]}] {value}")
                    if value.startswith(REPORT_MARK):
                        with contextlib.suppress(json.JSONDecodeError):
                            reports[rank] = json.loads(value[len(REPORT_MARK):])
                        continue
                    tails[rank] = (tails[rank] + [value])[-20:]
                    yield Log(name, f"[{hosts[rank]}] {value}")
                else:
                    ended[rank] = value
                    run.log.write(f"[{hosts[rank]}] (exit {value[0]} after "
                                  f"{value[1] - begun[rank]:.1f}s)")
                    if value[0] != 0 and grace_until is None:
                        grace_until = time.monotonic() + GRACE_SECONDS
            if any((code or 0) >= 128 for code, _ in ended.values()):
                check_engine(engine, f"{what} of {name}", "it stopped the containers")
        except KeyboardInterrupt:
            raise Interrupted(f"{name}: smoke interrupted during {what}; the containers and "
                              "their network were removed") from None
    return Job(ended, reports, tails, begun, stopped, started)


def _problems(result: NodesResult, reports: dict[int, dict], tails: dict[int, list[str]],
              stopped: list[int]) -> list[str]:
    """What went wrong, one line each, in rank order ([]: the ranks agree)."""
    n = result.nodes
    lines: list[str] = []
    for r in result.ranks:
        rank, code = r["rank"], r["exit"]
        rep = reports.get(rank)
        if rank in stopped:
            continue
        if code == 5 and rep and rep.get("stage") in ("rendezvous", "allreduce"):
            lines.append(rep.get("reason") or "the ranks did not meet")
        elif code != 0:
            last = (rep or {}).get("reason") or (tails[rank][-1] if tails[rank] else "(no output)")
            lines.append(f"rank {rank} exited with code {code}: {last}" if code is not None
                         else f"rank {rank} ended with no exit code (its container went away): "
                              f"{last}")
        elif rep is None:
            lines.append(f"rank {rank} exited with code 0 but reported nothing")
    lines = list(dict.fromkeys(lines))        # every rank that waited says the same
    if lines:
        return lines
    for r in result.ranks:
        size = reports[r["rank"]].get("world_size")
        if size != n:
            lines.append(f"rank {r['rank']} saw a world of {size} nodes, not {n} (its rendezvous "
                         "variables do not match the job)")
    first = result.allreduce[0]
    for rank, value in enumerate(result.allreduce[1:], 1):
        if value is None or first is None or not math.isclose(value, first, abs_tol=1e-6):
            lines.append(f"rank {rank} reported all-reduce {value}, rank 0 {first}")
    expected = n * (n + 1) / 2
    if not lines and first is not None and not math.isclose(first, expected, abs_tol=1e-6):
        lines.append(f"every rank reported all-reduce {first}; ranks contributing 1..{n} "
                     f"make {expected}")
    w0 = result.ranks[0].get("weights")
    for r in result.ranks[1:]:
        w = r.get("weights")
        if w is not None and w0 is not None and not math.isclose(w, w0, rel_tol=1e-5,
                                                                 abs_tol=1e-6):
            lines.append(f"rank {r['rank']} ended training with other weights than rank 0 "
                         f"(sum {w:.6g}, rank 0 {w0:.6g}): the gradients were not averaged "
                         "across the ranks")
    return lines


def _follow(engine, cid: str, rank: int, items: queue.Queue, deadline: float) -> None:
    """One container's log lines, then its exit code and when it ended, into ITEMS."""
    from .smoke import log_lines
    for line in log_lines(engine, cid):
        items.put(("line", rank, line))
    try:
        code = engine.wait(cid, timeout=max(5.0, deadline - time.monotonic()))
    except TimeoutError:
        return                      # the run's own deadline says so
    except Exception:  # noqa: BLE001 - removed, or the engine went away: no exit code
        code = None
    items.put(("exit", rank, (code, time.monotonic())))


def training(run: _Runner, contract: _Contract | None, n: int, steps: int) -> Iterator[Event]:
    """The image's own training (train.distributed) as one job of N nodes,
    each with its own volumes (as pods of one job get theirs) and its
    rendezvous variables; every rank must exit 0 and rank 0's output folder
    must hold smoke.expect. Returns a TrainingResult (one run per rank)."""
    from .smoke import (
        _missing,
        _open_mounts,
        _output_files,
        _train_command,
        plan_mounts,
    )
    t = run.target
    name, ref, engine, s = t.name, t.ref, run.engine, t.settings
    framework = t.framework if t.framework in COVERED else "pytorch"
    profile = contract.profile if contract else None
    mounts, out_dir, dirs = plan_mounts(s, profile)
    hosts = hosts_for(n)
    uid = uuid.uuid4().hex[:8]
    base = contract.run_as if contract is not None else DEFAULT_RUN_AS
    cmd = _train_command(t, steps, "", dirs, profile.args if profile else None)
    under = f" under {contract.name}" if contract is not None else ""
    yield Info(name, f"training on {n} nodes{under} ({', '.join(hosts)}, each with its own "
                     f"{' and '.join(p for _, p in mounts)}): {shlex.join(cmd)}")
    result = TrainingResult(steps, nodes=n)
    with contextlib.ExitStack() as stack:
        vols = {(rank, kind): stack.enter_context(
                    engine.volume(f"imagekit-smoke-{uid}-{rank}-{kind}", ref))
                for rank in range(n) for kind, _ in mounts}
        per_rank = {rank: {vols[(rank, kind)]: path for kind, path in mounts}
                    for rank in range(n)}
        for rank in range(n):
            yield from _open_mounts(run, contract, per_rank[rank])
        plan = []
        for rank, host in enumerate(hosts):
            env, _ = node_env(contract, framework, hosts, rank)
            env.update(run.stub_env)
            files = dict(run.stub)
            if contract is not None:
                vals = platforms.values(contract.profile, host, hosts, rank, 0)
                files.update({path.lstrip("/"): platforms.fill(text, vals).encode()
                              for path, text in contract.profile.files.items()})
            plan.append((rank, host, cmd, env, files if not base.read_only else {}))
        run.log.write(f"$ {shlex.join(cmd)}  # on {', '.join(hosts)}")
        job = yield from run_job(run, base, plan, uid, f"training on {n} nodes", per_rank)
        for rank in range(n):
            code, at = job.ended.get(rank, (None, time.monotonic()))
            result.runs.append(TrainingRun(cmd, code if code is not None else -1,
                                           round(at - job.begun.get(rank, job.started), 2)))
        problems = []
        for rank in range(n):
            code = job.ended.get(rank, (None, 0))[0]
            if rank in job.stopped:
                continue
            if code != 0:
                last = job.tails[rank][-1] if job.tails[rank] else "(no output)"
                problems.append(f"rank {rank} ({hosts[rank]}) exited with code {code}: {last}")
        if not problems:
            found = _output_files(engine, ref, vols[(0, "output")], out_dir)
            result.output_files = found[:50]
            missing = _missing(s.expect, found)
            if missing:
                problems.append(f"expected output {', '.join(missing)} did not appear in rank 0's "
                                f"{out_dir} (found: {', '.join(found[:8]) or 'nothing'})")
        if problems:
            lines = [f"{name}: training on {n} nodes{under}: {p}" for p in problems]
            details = [*(f"| {hosts[r]}: {x}" for r in range(n) for x in job.tails[r][-4:]),
                       f"full log: {run.log.path}"]
            raise SmokeError(lines[0], problems=lines if len(lines) > 1 else [], details=details)
    yield Info(name, f"training ok on {n} nodes{under}: every rank exited 0, "
                     f"{count(len(result.output_files), 'file')} in rank 0's {out_dir}")
    return result
