"""Smoke stage: a short real training inside the built image, judged.

1. The framework check: a small script shipped with imagekit (imagekit/checks)
   is copied into a throwaway container and trains a tiny model; it reports
   device, versions, loss first -> last and steps/s as JSON.
2. The image's own training: the spec's train command with its step count
   overridden, data and output dirs mounted as volumes (as `-v data:/data/data
   -v output:/data/output` does), judged by exit code, time limit, expected
   files and, when asked, a second run that must resume from the first.
3. Notebook images: JupyterLab is started as the platform starts it and must
   answer under the platform's base URL.
With a platform profile (`--platform P`, platforms.py) the training and the
notebook run under that platform's contract: its mounts, variables, user,
/dev/shm, root file system and start arguments; `{data_dir}` and
`{output_dir}` in the train command become the platform's folders, and the
verdict names what breaks the contract, one line each. With several nodes
(`--nodes N`, a profile's `nodes`) the framework check also runs as an
N-rank job on N containers on a private network (smoke_nodes.py).
Every container and volume is removed on every way out; the report is stored
with the image's build record, keyed by image ID."""

from __future__ import annotations

import contextlib
import fnmatch
import json
import queue
import re
import shlex
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import gpu as gpu_verdict
from . import platforms, records, stub
from .archive import tar_of
from .config import Project
from .engine import EngineAPI, RunAs
from .errors import EngineUnavailable, GpuUnavailable, Interrupted, SmokeError
from .events import (
    Event,
    FrameworkReport,
    Info,
    Log,
    NotebookResult,
    SmokeResult,
    TrainingResult,
    TrainingRun,
    Warn,
    count,
)
from .spec import JupyterSpec, SmokeSpec
from .targets import ImageTarget

CHECKS_DIR = Path(__file__).resolve().parent / "checks"
CHECK_MOUNT = "/imagekit/checks"
REPORT_MARK = "IMAGEKIT_REPORT "
NOTEBOOK_BASE_URL = "/imagekit/smoke/"
NO_GPU_NOTE = "ran on CPU: this engine has no GPU"
STUB_NOTE = ("this GPU build links the NVIDIA driver (libcuda.so.1), which an engine with no GPU "
             "does not inject: it ran on CPU with imagekit's stand-in driver, which reports no "
             "CUDA device (copied into the smoke containers only, not into the image)")
NETWORK_OFF = ("the smoke containers have no network (as on many training platforms' nodes); "
               "if the image must download something at run time, allow it with --network")
PROBE = (
    "import importlib,json\n"
    "for fw,mod in (('pytorch','torch'),('tensorflow','tensorflow'),('mxnet','mxnet')):\n"
    "    try:\n"
    "        m=importlib.import_module(mod)\n"
    "    except Exception:\n"
    "        continue\n"
    "    print(json.dumps({'framework':fw,'version':getattr(m,'__version__','')}))\n"
    "    break\n"
)


@dataclass(frozen=True)
class SmokeTarget:
    """What the smoke stage tests: a catalog image (its spec says how to train
    it) or any image the engine holds (framework from its labels or a probe;
    training only with a --command)."""

    name: str
    ref: str
    image_id: str
    framework: str | None
    version: str | None
    device: str | None                   # None: not known until the framework check
    settings: SmokeSpec
    train_command: str | None = None
    jupyter: JupyterSpec | None = None
    key: str = ""                        # what its records are keyed on (ImageInfo.key)
    distributed: bool = False            # train.distributed: its training is one N-node job

    @classmethod
    def of(cls, target: ImageTarget, command: str | None = None) -> SmokeTarget:
        if target.plan is not None:
            m = target.plan.spec.model
            train = command or (m.train.command if m.train else None)
            return cls(target.name, target.ref, target.image_id, target.plan.framework,
                       target.plan.version, target.plan.device, m.smoke, train,
                       m.jupyter if m.jupyter.enabled else None, target.key,
                       bool(m.train and m.train.distributed and not command))
        settings = SmokeSpec(steps_args="", resume=False) if command else SmokeSpec()
        return cls(target.name, target.ref, target.image_id, target.fact("framework"),
                   target.fact("version"), target.fact("device"), settings, command,
                   key=target.key)


@dataclass
class RunOutcome:
    code: int
    seconds: float
    tail: list[str] = field(default_factory=list)
    report: dict | None = None


class _Log:
    """The smoke run's full log, on disk."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.f = path.open("w")

    def write(self, line: str) -> None:
        self.f.write(line + "\n")
        self.f.flush()


def _run(engine: EngineAPI, image: str, command: list[str], *, what: str, name: str, log: _Log,
         timeout: int, volumes: dict | None = None, gpus: bool = False,
         files: bytes | None = None, env: dict | None = None,
         network: bool = False, run_as: RunAs | None = None) -> Iterator[Event | RunOutcome]:
    """Run one container to its end, streaming its log; yield Log events and
    finally a RunOutcome. Raise SmokeError on timeout."""
    log.write(f"$ {shlex.join(command)}")
    started = time.monotonic()
    tail: list[str] = []
    report = None
    lines: queue.Queue = queue.Queue()
    extra = {"run_as": run_as} if run_as is not None else {}
    with engine.container(image, command, name=f"imagekit-smoke-{uuid.uuid4().hex[:10]}",
                          volumes=volumes, gpus=gpus, files=files, env=env,
                          network=network, **extra) as cid:
        def pump() -> None:
            for line in log_lines(engine, cid):
                lines.put(line)
            lines.put(None)
        threading.Thread(target=pump, daemon=True).start()
        deadline = started + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise SmokeError(f"{name}: {what} timed out after {timeout}s "
                                     f"(smoke.timeout); the container was removed",
                                     details=[*(f"| {t}" for t in tail[-8:]),
                                              f"full log: {log.path}"])
                try:
                    line = lines.get(timeout=min(left, 0.5))
                except queue.Empty:
                    continue
                if line is None:
                    break
                log.write(line)
                if line.startswith(REPORT_MARK):
                    try:
                        report = json.loads(line[len(REPORT_MARK):])
                    except json.JSONDecodeError:
                        pass
                    continue
                tail = (tail + [line])[-20:]
                yield Log(name, line)
            code = engine.wait(cid, timeout=max(5.0, deadline - time.monotonic()))
            if code >= 128:
                check_engine(engine, f"{what} of {name}", "it stopped the container")
        except KeyboardInterrupt:
            raise Interrupted(f"{name}: smoke interrupted during {what}; "
                              "the container was removed") from None
        except TimeoutError:
            raise SmokeError(f"{name}: {what} timed out after {timeout}s") from None
    seconds = time.monotonic() - started
    log.write(f"(exit {code} after {seconds:.1f}s)")
    yield RunOutcome(code, seconds, tail, report)


def log_lines(engine: EngineAPI, cid: str) -> Iterator[str]:
    """A container's log, line by line, as it comes (a last line saying the
    stream ended when the container was removed under it)."""
    buf = b""
    try:
        for chunk in engine.logs(cid):
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                yield line.decode(errors="replace")
        if buf:
            yield buf.decode(errors="replace")
    except Exception as e:  # noqa: BLE001 - the container was removed under us
        yield f"(log stream ended: {type(e).__name__})"


def check_engine(engine: EngineAPI, during: str, what_happened: str) -> None:
    """After a container ended by a signal: EngineUnavailable when the engine
    itself is gone (its next connect removes what is left)."""
    if not engine.answers(settle=10.0):
        where = getattr(engine, "where", "DOCKER_HOST")
        raise EngineUnavailable(f"lost the Docker engine at {where} during {during} "
                                f"({what_happened}); start it again: the next imagekit "
                                "command removes what is left")


def _outcome(gen) -> Iterator[Event]:
    """Pass a _run generator's events through; keep its RunOutcome."""
    result = {}
    for item in gen:
        if isinstance(item, RunOutcome):
            result["outcome"] = item
        else:
            yield item
    return result["outcome"]


def gpu_choice(target: SmokeTarget, engine: EngineAPI, mode: str) -> tuple[bool, str | None]:
    """Whether to request GPUs, and a note for the report."""
    if mode == "off":
        return False, "GPU use turned off (--gpu off)" if target.device == "gpu" else None
    capable = engine.gpu_capable()
    if mode == "require":
        if not capable:
            raise GpuUnavailable(f"{target.name}: --gpu require, but the engine at this "
                                 "DOCKER_HOST has no GPU (no nvidia runtime or CDI GPU devices "
                                 "in `docker info`)")
        return True, None
    if target.device == "gpu":
        return (True, None) if capable else (False, NO_GPU_NOTE)
    if target.device is None:          # not known yet: a GPU costs nothing if it is a CPU image
        return capable, None
    return False, None


def smoke(target: SmokeTarget, project: Project, engine: EngineAPI, *, gpu: str = "auto",
          steps: int | None = None, timeout: int | None = None, network: bool = False,
          platform: gpu_verdict.Platform | None = None,
          profile: tuple[str, platforms.Profile] | None = None,
          nodes: int | None = None) -> Iterator[Event]:
    name = target.name
    ref = target.ref
    if engine.image(ref) is None:
        raise SmokeError(f"{name}: image {ref} is not in the engine; run `imagekit build {name}` "
                         "first")
    use_gpu, note = gpu_choice(target, engine, gpu)
    if note:
        yield Warn(name, note)
    settings = target.settings
    steps = steps or settings.steps
    timeout = timeout or settings.timeout
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log = _Log(project.state_dir / "logs" / f"{_file_name(name)}.smoke-{stamp}.log")
    result = SmokeResult(name, ref=ref, image_id=target.image_id, gpu_mode=gpu,
                         gpu_requested=use_gpu, note=note, log=str(log.path),
                         started_at=records.now())
    run = _Runner(target, engine, log, use_gpu, timeout, network)
    contract = _Contract.of(*profile, gpus=use_gpu) if profile else None
    if contract is not None:
        result.platform = contract.name
        network = network or contract.profile.network == "bridge"
        run.network = network
        yield Info(name, f"platform {contract.name}: {contract.summary()}")
    t0 = time.monotonic()
    try:
        if settings.framework_check:
            if target.framework is None:
                target = yield from _probe(run)
                run.target = target
            fc = yield from _framework_check(run, gpu)
            result.framework_check = fc
            if run.note:
                result.note = "; ".join(x for x in (result.note, run.note) if x)
            device = target.device or gpu_verdict.guess_device(fc)
            result.gpu = gpu_verdict.verdict(name, fc, device, platform or gpu_verdict.Platform(),
                                             target.version)
            result.proven = result.gpu.proven if result.gpu else \
                gpu_verdict.TRAINED_ON_GPU if fc.device == "gpu" else gpu_verdict.CPU_ONLY
            if result.gpu is not None:
                yield Info(name, _readiness_line(result.gpu))
        n = nodes or (contract.profile.nodes if contract else 1)
        if n > 1:
            from .smoke_nodes import nodes as n_node_check
            result.nodes = yield from n_node_check(run, contract, n, target.framework)
        if target.train_command and n > 1 and target.distributed:
            from .smoke_nodes import training as n_node_training
            result.training = yield from n_node_training(run, contract, n, steps)
        elif target.train_command:
            result.training = yield from _training(run, steps, contract)
        if target.jupyter is not None and (contract is None or contract.profile.notebook):
            result.notebook = yield from _notebook(run, contract)
        result.passed = True
    except SmokeError as e:
        result.error = e.message
        raise
    except EngineUnavailable as e:
        result.error = e.message
        raise
    finally:
        result.seconds = round(time.monotonic() - t0, 2)
        records.store_smoke(project, result, target.key or target.image_id)
    yield result


def _readiness_line(v) -> str:
    fit = "" if v.fits is None else \
        f"; fits the platform ({v.target_driver or 'any driver'}, " \
        f"{' '.join(v.target_archs) or 'any GPU'})"
    return (f"{v.proven}: built for CUDA {v.cuda_build} / cuDNN {v.cudnn_build}; installed "
            f"{v.installed()}; code for {v.code()}; needs NVIDIA driver "
            f">= {v.driver_min}{fit}")


def _file_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:100]


@dataclass
class _Contract:
    """A platform profile made concrete for one smoke run: the engine's run
    settings, the variables and files the platform gives the container."""

    name: str
    profile: platforms.Profile
    run_as: RunAs
    env: dict[str, str]
    files: dict[str, bytes]
    host: str = "algo-1"

    @classmethod
    def of(cls, name: str, profile: platforms.Profile, gpus: bool = False) -> _Contract:
        host = "algo-1"
        vals = platforms.values(profile, host, [host], 0, 1 if gpus else 0)
        env = {k: platforms.fill(v, vals) for k, v in profile.env.items()}
        files = {path.lstrip("/"): platforms.fill(text, vals).encode()
                 for path, text in profile.files.items()}
        run_as = RunAs(user=platforms.user_for(profile), shm_mb=profile.shm_mb,
                       read_only=profile.read_only_root, tmpfs=tuple(profile.writable),
                       hostname=host)
        return cls(name, profile, run_as, env, files, host)

    @property
    def who(self) -> str:
        user = self.run_as.user or "0:0"
        return "root" if user.startswith("0:") else f"uid {user.replace(':', ' gid ')}"

    def summary(self) -> str:
        p = self.profile
        mounts = ", ".join(f"{k} at {v}" for k, v in p.mounts.items()) or "no mounts"
        start = f"started as `IMAGE {' '.join(p.args)}`" if p.args is not None else \
            "your training command"
        root = "read-only root" + (f" ({', '.join(p.writable)} writable)" if p.writable else "") \
            if p.read_only_root else "writable root"
        return (f"{mounts}; {start}; as {self.who}; /dev/shm {p.shm_mb} MB; {root}; "
                f"network {p.network}")

    def var_for(self, kind: str) -> str:
        """The variable the platform points at a mount (SM_MODEL_DIR for output)."""
        want = "{" + kind + "}"
        return next((k for k, v in self.profile.env.items() if v == want), "")


_DENIED = re.compile(r"(?:Permission denied|EACCES)[^'\"]*['\"]([^'\"]+)['\"]"
                     r"|(?:cannot (?:create|touch|mkdir)[^:]*?|can't create) '?([^':]+)'?: "
                     r"Permission denied|mkdir (\S+): permission denied")
_READ_ONLY = re.compile(r"Read-only file system(?::\s*['\"]([^'\"]+)['\"])?"
                        r"|(\S+): Read-only file system")
_SHM = ("Bus error", "insufficient shared memory", "/dev/shm", "shm_open", "No space left on device")
_NOT_FOUND = ("executable file not found", ": not found", "No such file or directory: 'train'",
              "exec: \"", "command not found")


def _contract_problems(c: _Contract, out: RunOutcome, what: str,
                       mounted: list[str] | None = None) -> list[str]:
    """What in a failed run under contract C breaks it, one line each (the
    run's own last line when nothing known matches). MOUNTED: the folders
    the run had as volumes."""
    p, lines = c.profile, []
    text = "\n".join(out.tail)
    if p.args is not None and (out.code in (126, 127) or
                               any(h in text for h in _NOT_FOUND) and out.code != 0):
        lines.append(f"{c.name} starts the container as `IMAGE {' '.join(p.args)}`, and the "
                     f"image has no `{p.args[0]}` command on its PATH (exit {out.code})")
    for m in _READ_ONLY.finditer(text):
        path = m[1] or m[2] or "its root file system"
        mounts = mounted if mounted is not None else [v for _, v in p.mounts.items()]
        writable = ", ".join([*mounts, *p.writable])
        lines.append(f"writes {path} on the read-only root file system; {c.name} makes only "
                     f"{writable} writable")
        break
    for m in _DENIED.finditer(text):
        path = next(x for x in m.groups() if x)
        lines.append(f"cannot write {path} as {c.who} ({c.name} runs the job as "
                     f"{p.user if p.user != 'arbitrary' else 'an arbitrary uid with gid 0'})")
        break
    if out.code in (135, 139, -7) or any(h in text for h in _SHM[:4]) or \
            ("No space left on device" in text and "shm" in text):
        lines.append(f"DataLoader (or another shared-memory user) needs more than the "
                     f"platform's {p.shm_mb} MB /dev/shm")
    if not lines:
        last = out.tail[-1] if out.tail else "(no output)"
        lines.append(f"{what} exited with code {out.code} under {c.name}: {last}")
    return lines


@dataclass
class _Runner:
    """What every smoke container of one test shares."""

    target: SmokeTarget
    engine: EngineAPI
    log: _Log
    gpus: bool
    timeout: int
    network: bool
    stub: dict[str, bytes] = field(default_factory=dict)     # extra files (the driver stand-in)
    stub_env: dict[str, str] = field(default_factory=dict)
    note: str | None = None

    def run(self, cmd: list[str], what: str, files: dict[str, bytes] | None = None,
            env: dict | None = None, **kw) -> Iterator[Event | RunOutcome]:
        all_files = {**(files or {}), **self.stub}
        return _run(self.engine, self.target.ref, cmd, what=what, name=self.target.name,
                    log=self.log, timeout=self.timeout, gpus=self.gpus, network=self.network,
                    files=tar_of(all_files) if all_files else None,
                    env={**(env or {}), **self.stub_env} or None, **kw)

    def failure(self, message: str, out: RunOutcome | None = None) -> SmokeError:
        tail = [f"| {t}" for t in (out.tail[-8:] if out else [])]
        if out is not None and not self.network and _network_trouble(out.tail):
            message += f" ({NETWORK_OFF})"
        return SmokeError(f"{self.target.name}: {message}",
                          details=[*tail, f"full log: {self.log.path}"])


NET_HINTS = ("Temporary failure in name resolution", "Name or service not known",
             "Network is unreachable", "nodename nor servname", "Failed to establish a new "
             "connection", "urlopen error", "Could not resolve host", "No route to host")


def _network_trouble(lines: list[str]) -> bool:
    return any(h in line for line in lines for h in NET_HINTS)


def _probe(run: _Runner):
    """Which framework an image from outside the catalog holds (the first of
    torch, tensorflow, mxnet that imports)."""
    t = run.target
    yield Info(t.name, "no imagekit labels: finding the framework (torch, tensorflow, mxnet)")
    out = yield from _outcome(run.run(["python", "-c", PROBE], "framework probe",
                                      env={"TF_CPP_MIN_LOG_LEVEL": "3"}))
    found = None
    for line in reversed(out.tail):
        try:
            found = json.loads(line)
            break
        except ValueError:
            continue
    if out.code != 0 or not isinstance(found, dict):
        raise run.failure("no framework found: none of torch, tensorflow, mxnet imports "
                          "with the image's `python`", out)
    yield Info(t.name, f"found {found['framework']} {found['version']}")
    return SmokeTarget(t.name, t.ref, t.image_id, found["framework"], found["version"],
                       t.device, t.settings, t.train_command, t.jupyter, t.key)


def _framework_check(run: _Runner, mode: str):
    t = run.target
    name = t.name
    script = f"{t.framework}_check.py"
    device = "gpu" if mode == "require" else "auto"
    cmd = ["python", f"{CHECK_MOUNT}/{script}", "--steps", "50", "--device", device]
    files = {f"imagekit/checks/{f}": (CHECKS_DIR / f).read_bytes()
             for f in ("harness.py", "readiness.py", script)}
    env = {"PYTHONDONTWRITEBYTECODE": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}
    yield Info(name, f"framework check: {t.framework} {t.version or ''}, "
                     f"{'GPU requested' if run.gpus else 'CPU'}")
    out = yield from _outcome(run.run(cmd, "framework check", files=files, env=env))
    rep = FrameworkReport.from_json(out.report) if isinstance(out.report, dict) else None
    facts = (rep.gpu_readiness or {}) if rep else {}
    if out.code == 3 and not run.gpus and stub.SONAME in (facts.get("driver") or []) and \
            stub.SONAME in (rep.reason or ""):
        run.stub = {f"imagekit/stub/{stub.SONAME}": stub.driver_stub(facts.get("driver_symbols")
                                                                     or [])}
        image = run.engine.image(t.ref)
        path = (image.env if image else {}).get("LD_LIBRARY_PATH", "")
        run.stub_env = {"LD_LIBRARY_PATH": ":".join(x for x in ("/imagekit/stub", path) if x)}
        run.note = STUB_NOTE
        yield Warn(name, STUB_NOTE)
        out = yield from _outcome(run.run(cmd, "framework check", files=files, env=env))
        rep = FrameworkReport.from_json(out.report) if isinstance(out.report, dict) else None
    if out.code == 2 and rep is not None:
        raise GpuUnavailable(f"{name}: {rep.reason}")
    if out.code != 0 or rep is None or not rep.ok:
        reason = (rep.reason if rep else None) or \
            (out.tail[-1] if out.tail else f"exit {out.code}")
        raise run.failure(f"framework check failed: {reason}", out)
    rep.wall_seconds = round(out.seconds, 2)
    yield Info(name, f"framework check ok: {rep.framework} {rep.version} on {rep.device} "
                     f"({rep.device_name}), {rep.steps} steps, loss {rep.loss_first:.4g} -> "
                     f"{rep.loss_last:.4g}, {rep.steps_per_sec} steps/s")
    return rep


def _train_command(target: SmokeTarget, steps: int, extra: str = "",
                   dirs: dict[str, str] | None = None, args: list[str] | None = None) -> list[str]:
    """The training command: the spec's, with `{data_dir}` and `{output_dir}`
    made the folders this run gives it, and the step count overridden; with
    ARGS (a platform that starts the image with its own arguments) those."""
    dirs = dirs or {"data_dir": target.settings.data_dir,
                    "output_dir": target.settings.output_dir}
    if args is not None:
        cmd = list(args)
    else:
        cmd = [_fill_dirs(a, dirs) for a in shlex.split(target.train_command or "")]
    cmd += shlex.split(target.settings.steps_args.format(steps=steps))
    return cmd + shlex.split(extra)


def _fill_dirs(arg: str, dirs: dict[str, str]) -> str:
    for key, value in dirs.items():
        arg = arg.replace("{" + key + "}", value)
    return arg


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def plan_mounts(s: SmokeSpec, profile: platforms.Profile | None) \
        -> tuple[list[tuple[str, str]], str, dict[str, str]]:
    """The volumes a training run gets [(kind, path)], where its output must
    land, and the folders `{data_dir}` / `{output_dir}` stand for: the spec's
    smoke folders, or the platform's mounts (with the spec's own output folder
    as `own-output` where it is not one of them, to see what lands outside)."""
    if profile is None:
        mounts = [("data", s.data_dir), ("output", s.output_dir)]
        out_dir = s.output_dir
        dirs = {"data_dir": s.data_dir, "output_dir": s.output_dir}
    elif profile.mounts.data is None and profile.mounts.output is None:
        # the platform mounts what the job asks for (a Kubernetes job's volumes): the spec's own
        mounts = [("data", s.data_dir), ("output", s.output_dir),
                  *((k, v) for k, v in profile.mounts.items()
                    if not _inside(v, s.data_dir) and not _inside(v, s.output_dir))]
        out_dir = s.output_dir
        dirs = {"data_dir": s.data_dir, "output_dir": s.output_dir}
    else:
        mounts = list(profile.mounts.items())
        out_dir = profile.mounts.output or s.output_dir
        dirs = {"data_dir": profile.mounts.data or s.data_dir, "output_dir": out_dir}
        if not any(_inside(s.output_dir, path) for _, path in mounts):
            mounts.append(("own-output", s.output_dir))    # to see what lands outside the contract
        if profile.mounts.output is None:
            mounts.append(("output", out_dir))
    return mounts, out_dir, dirs


def _training(run: _Runner, steps: int, contract: _Contract | None = None):
    t = run.target
    name, ref, s = t.name, t.ref, t.settings
    uid = uuid.uuid4().hex[:8]
    result = TrainingResult(steps)
    profile = contract.profile if contract else None
    mounts, out_dir, dirs = plan_mounts(s, profile)
    extra = {"env": contract.env, "files": contract.files, "run_as": contract.run_as} \
        if contract else {}
    with contextlib.ExitStack() as stack:
        vols = {kind: stack.enter_context(run.engine.volume(f"imagekit-smoke-{uid}-{kind}", ref))
                for kind, _ in mounts}
        volumes = {vols[kind]: path for kind, path in mounts}
        yield from _open_mounts(run, contract, volumes)
        runs = [(steps, "")]
        if s.resume:
            runs.append((2 * steps, s.resume_args))
        for i, (n, extra_args) in enumerate(runs):
            cmd = _train_command(t, n, extra_args, dirs, profile.args if profile else None)
            what = "training" if i == 0 else "resumed training"
            yield Info(name, f"{what}: {shlex.join(cmd)}")
            out = yield from _outcome(run.run(cmd, what, volumes=volumes, **extra))
            result.runs.append(TrainingRun(cmd, out.code, round(out.seconds, 2)))
            if out.code != 0:
                if contract is not None:
                    problems = _contract_problems(contract, out, what,
                                                  [p for k, p in mounts if k != "own-output"])
                    raise _contract_error(run, contract, problems, out)
                raise run.failure(f"{what} exited with code {out.code}: "
                                  f"{out.tail[-1] if out.tail else '(no output)'}", out)
            if i == 1:
                want = s.resume_log.format(steps=steps)
                if not any(want in line for line in out.tail) and \
                        want not in run.log.path.read_text():
                    raise run.failure(f"the second run did not resume from the first "
                                      f"(expected {want!r} in its log)")
                result.resumed_from = steps
        found = _output_files(run.engine, ref, vols["output"], out_dir)
        result.output_files = found[:50]
        missing = _missing(s.expect, found)
        if missing and contract is not None and "own-output" in vols:
            elsewhere = _output_files(run.engine, ref, vols["own-output"], s.output_dir)
            if elsewhere and len(_missing(s.expect, elsewhere)) < len(missing):
                var = contract.var_for("output")
                what_ = "its checkpoint" if any("ckpt" in p or "checkpoint" in p
                                                 for p in s.expect) else "its output"
                raise _contract_error(run, contract, [
                    f"writes {what_} to {s.output_dir}; {contract.name} collects {out_dir}"
                    + (f" ({var})" if var else "")
                    + ": write to {output_dir} in train.command (or the variable) instead"])
        if missing:
            raise run.failure(f"expected output {', '.join(missing)} did not appear in "
                              f"{out_dir} (found: {', '.join(found[:8]) or 'nothing'})")
    under = f" under {contract.name}" if contract else ""
    yield Info(name, f"training ok{under}: {count(len(result.runs), 'run')}, "
                     f"{count(len(found), 'file')} in {out_dir}"
                     + (f", resumed from step {steps}" if s.resume else ""))
    return result


def _open_mounts(run: _Runner, contract: _Contract | None, volumes: dict[str, str]):
    """A platform's volumes are writable by the job's user (an fsGroup on
    Kubernetes does that): opened up by a root container before a non-root run."""
    user = contract.run_as.user if contract else None
    if not volumes or not user or user.startswith("0:"):
        return
    prep = yield from _outcome(run.run(["chmod", "0777", *volumes.values()],
                                       "preparing the platform's mounts", volumes=volumes))
    if prep.code != 0:
        raise run.failure(f"could not prepare the platform's mounts: exit {prep.code}", prep)


def _missing(expect: list[str], found: list[str]) -> list[str]:
    return [pat for pat in expect
            if not any(fnmatch.fnmatch(f, pat) or fnmatch.fnmatch(f.split("/")[-1], pat)
                       for f in found)]


def _contract_error(run: _Runner, contract: _Contract, problems: list[str],
                    out: RunOutcome | None = None) -> SmokeError:
    name = run.target.name
    lines = [f"{name}: breaks the {contract.name} contract: {p}" for p in problems]
    tail = [f"| {t}" for t in (out.tail[-8:] if out else [])]
    return SmokeError(lines[0], problems=lines if len(lines) > 1 else [],
                      details=[*tail, f"full log: {run.log.path}"])


def _output_files(engine: EngineAPI, ref: str, volume: str, path: str) -> list[str]:
    with engine.container(ref, ["true"], name=f"imagekit-smoke-{uuid.uuid4().hex[:10]}",
                          volumes={volume: path}, network=False) as cid:
        engine.wait(cid, timeout=60)
        return engine.files_in(cid, path)


def _notebook(run: _Runner, contract: _Contract | None = None):
    t = run.target
    name, ref, engine = t.name, t.ref, run.engine
    j = t.jupyter
    uid = uuid.uuid4().hex[:8]
    base = NOTEBOOK_BASE_URL
    own_envs = j.base_url_envs
    nb = contract.profile.notebook if contract else None
    base_env = (nb.base_url_env if nb and nb.base_url_env else own_envs[0])
    port = nb.port if nb else j.port
    if contract is not None:
        mounts = list(contract.profile.mounts.items())
        env = {**contract.env, base_env: base}
        extra = {"run_as": contract.run_as, "files": contract.files}
    else:
        mounts = [("code", "/code"), ("dataset", "/dataset")]
        env = {base_env: base}
        extra = {}
    probe = (
        "import json,sys,time,urllib.request\n"
        f"base='http://127.0.0.1:{port}{base}'\n"
        "def get(p):\n"
        "    with urllib.request.urlopen(base+p, timeout=5) as r:\n"
        "        return r.status, r.read().decode(errors='replace')\n"
        "s,b=get('lab'); assert s==200 and 'JupyterLab' in b, ('lab', s)\n"
        "s,b=get('api/status'); st=json.loads(b); assert s==200, ('api', s)\n"
        "s,b=get('api/contents'); c=json.loads(b); assert s==200 and c['type']=='directory'\n"
        "print(json.dumps({'lab': 200, 'api_status': 200, 'started': st.get('started')}))\n"
    )
    under = f" as {contract.who} under {contract.name}" if contract else ""
    yield Info(name, f"notebook: starting JupyterLab with {base_env}={base}{under}, "
                     f"{' and '.join(path for _, path in mounts) or 'nothing'} mounted empty")
    hint = "" if base_env in own_envs else \
        f" (the image takes its base URL from {', '.join(own_envs)}: add {base_env} to " \
        "jupyter.base_url_env)"
    # the probe runs inside the container, so the lab needs no network either
    with contextlib.ExitStack() as stack:
        vols = {kind: stack.enter_context(engine.volume(f"imagekit-smoke-{uid}-{kind}", ref))
                for kind, _ in mounts}
        volumes = {vols[kind]: path for kind, path in mounts}
        yield from _open_mounts(run, contract, volumes)
        cid = stack.enter_context(engine.container(
            ref, None, name=f"imagekit-smoke-{uid}-lab", volumes=volumes, env=env,
            network=run.network, **extra))
        result = yield from _probe_lab(run, cid, probe, base, hint, contract)
        return result


def _probe_lab(run: _Runner, cid: str, probe: str, base: str, hint: str,
               contract: _Contract | None):
    name, engine, log = run.target.name, run.engine, run.log
    where = f" under {contract.name}" if contract else ""
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < min(run.timeout, 180):
        state = engine.state(cid)
        if not state.running:
            logs = b"".join(engine.logs(cid, follow=False)).decode(errors="replace")
            for line in logs.splitlines():
                log.write(line)
            raise SmokeError(f"{name}: JupyterLab exited with code {state.exit_code}"
                             f"{where} before answering: "
                             f"{logs.strip().splitlines()[-1:] or ''}{hint}",
                             details=[f"full log: {log.path}"])
        code_, out = engine.exec_run(cid, ["python", "-c", probe])
        if code_ == 0:
            data = json.loads(out.strip().splitlines()[-1])
            result = NotebookResult(base + "lab", round(time.monotonic() - started, 2),
                                    int(data.get("lab", 200)), int(data.get("api_status", 200)),
                                    data.get("started"))
            yield Info(name, f"notebook ok: JupyterLab answered at {base}lab and "
                             f"{base}api/status in {result.seconds_to_answer}s")
            return result
        last = out.strip().splitlines()[-1] if out.strip() else ""
        time.sleep(1)
    logs = b"".join(engine.logs(cid, follow=False)).decode(errors="replace")
    for line in logs.splitlines():
        log.write(line)
    raise SmokeError(f"{name}: JupyterLab did not answer under {base}{where} in time "
                     f"({last}){hint}", details=[f"full log: {log.path}"])
