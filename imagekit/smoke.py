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
Every container and volume is removed on every way out; the report is stored
with the image's build record, keyed by image ID."""

from __future__ import annotations

import fnmatch
import io
import json
import queue
import shlex
import tarfile
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from . import gpu as gpu_verdict
from . import records, stub
from .config import Project
from .engine import EngineAPI
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

    @classmethod
    def of(cls, target: ImageTarget, command: str | None = None) -> SmokeTarget:
        if target.plan is not None:
            m = target.plan.spec.model
            train = command or (m.train.command if m.train else None)
            return cls(target.name, target.ref, target.image_id, target.plan.framework,
                       target.plan.version, target.plan.device, m.smoke, train,
                       m.jupyter if m.jupyter.enabled else None, target.key)
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


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o444
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _run(engine: EngineAPI, image: str, command: list[str], *, what: str, name: str, log: _Log,
         timeout: int, volumes: dict | None = None, gpus: bool = False,
         files: bytes | None = None, env: dict | None = None,
         network: bool = False) -> Iterator[Event | RunOutcome]:
    """Run one container to its end, streaming its log; yield Log events and
    finally a RunOutcome. Raise SmokeError on timeout."""
    log.write(f"$ {shlex.join(command)}")
    started = time.monotonic()
    tail: list[str] = []
    report = None
    lines: queue.Queue = queue.Queue()
    with engine.container(image, command, name=f"imagekit-smoke-{uuid.uuid4().hex[:10]}",
                          volumes=volumes, gpus=gpus, files=files, env=env,
                          network=network) as cid:
        def pump() -> None:
            buf = b""
            try:
                for chunk in engine.logs(cid):
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        lines.put(line.decode(errors="replace"))
                if buf:
                    lines.put(buf.decode(errors="replace"))
            except Exception as e:  # noqa: BLE001 - the container was removed under us
                lines.put(f"(log stream ended: {type(e).__name__})")
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
            if code >= 128 and not engine.answers(settle=10.0):
                where = getattr(engine, "where", "DOCKER_HOST")
                raise EngineUnavailable(f"lost the Docker engine at {where} during {what} of "
                                        f"{name} (it stopped the container); start it again: "
                                        "the next imagekit command removes what is left")
        except KeyboardInterrupt:
            raise Interrupted(f"{name}: smoke interrupted during {what}; "
                              "the container was removed") from None
        except TimeoutError:
            raise SmokeError(f"{name}: {what} timed out after {timeout}s") from None
    seconds = time.monotonic() - started
    log.write(f"(exit {code} after {seconds:.1f}s)")
    yield RunOutcome(code, seconds, tail, report)


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
          platform: gpu_verdict.Platform | None = None) -> Iterator[Event]:
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
        if target.train_command:
            result.training = yield from _training(run, steps)
        if target.jupyter is not None:
            result.notebook = yield from _notebook(run)
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
                    files=_tar(all_files) if all_files else None,
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


def _train_command(target: SmokeTarget, steps: int, extra: str = "") -> list[str]:
    cmd = shlex.split(target.train_command or "")
    cmd += shlex.split(target.settings.steps_args.format(steps=steps))
    return cmd + shlex.split(extra)


def _training(run: _Runner, steps: int):
    t = run.target
    name, ref, s = t.name, t.ref, t.settings
    uid = uuid.uuid4().hex[:8]
    result = TrainingResult(steps)
    with run.engine.volume(f"imagekit-smoke-{uid}-data", ref) as data, \
            run.engine.volume(f"imagekit-smoke-{uid}-output", ref) as output:
        volumes = {data: s.data_dir, output: s.output_dir}
        runs = [(steps, "")]
        if s.resume:
            runs.append((2 * steps, s.resume_args))
        for i, (n, extra) in enumerate(runs):
            cmd = _train_command(t, n, extra)
            what = "training" if i == 0 else "resumed training"
            yield Info(name, f"{what}: {shlex.join(cmd)}")
            out = yield from _outcome(run.run(cmd, what, volumes=volumes))
            result.runs.append(TrainingRun(cmd, out.code, round(out.seconds, 2)))
            if out.code != 0:
                raise run.failure(f"{what} exited with code {out.code}: "
                                  f"{out.tail[-1] if out.tail else '(no output)'}", out)
            if i == 1:
                want = s.resume_log.format(steps=steps)
                if not any(want in line for line in out.tail) and \
                        want not in run.log.path.read_text():
                    raise run.failure(f"the second run did not resume from the first "
                                      f"(expected {want!r} in its log)")
                result.resumed_from = steps
        found = _output_files(run.engine, ref, output, s.output_dir)
        result.output_files = found[:50]
        missing = [pat for pat in s.expect
                   if not any(fnmatch.fnmatch(f, pat) or fnmatch.fnmatch(f.split("/")[-1], pat)
                              for f in found)]
        if missing:
            raise run.failure(f"expected output {', '.join(missing)} did not appear in "
                              f"{s.output_dir} (found: {', '.join(found[:8]) or 'nothing'})")
    yield Info(name, f"training ok: {count(len(result.runs), 'run')}, {count(len(found), 'file')} in "
                     f"{s.output_dir}" + (f", resumed from step {steps}" if s.resume else ""))
    return result


def _output_files(engine: EngineAPI, ref: str, volume: str, path: str) -> list[str]:
    with engine.container(ref, ["true"], name=f"imagekit-smoke-{uuid.uuid4().hex[:10]}",
                          volumes={volume: path}, network=False) as cid:
        engine.wait(cid, timeout=60)
        return engine.files_in(cid, path)


def _notebook(run: _Runner):
    t = run.target
    name, ref, engine, log = t.name, t.ref, run.engine, run.log
    j = t.jupyter
    uid = uuid.uuid4().hex[:8]
    base = NOTEBOOK_BASE_URL
    probe = (
        "import json,sys,time,urllib.request\n"
        f"base='http://127.0.0.1:{j.port}{base}'\n"
        "def get(p):\n"
        "    with urllib.request.urlopen(base+p, timeout=5) as r:\n"
        "        return r.status, r.read().decode(errors='replace')\n"
        "s,b=get('lab'); assert s==200 and 'JupyterLab' in b, ('lab', s)\n"
        "s,b=get('api/status'); st=json.loads(b); assert s==200, ('api', s)\n"
        "s,b=get('api/contents'); c=json.loads(b); assert s==200 and c['type']=='directory'\n"
        "print(json.dumps({'lab': 200, 'api_status': 200, 'started': st.get('started')}))\n"
    )
    yield Info(name, f"notebook: starting JupyterLab with {j.base_url_env}={base}, "
                     "/code and /dataset mounted empty")
    # the probe runs inside the container, so the lab needs no network either
    with engine.volume(f"imagekit-smoke-{uid}-code", ref) as code, \
            engine.volume(f"imagekit-smoke-{uid}-dataset", ref) as dataset, \
            engine.container(ref, None, name=f"imagekit-smoke-{uid}-lab",
                             volumes={code: "/code", dataset: "/dataset"},
                             env={j.base_url_env: base}, network=run.network) as cid:
        started = time.monotonic()
        last = ""
        while time.monotonic() - started < min(run.timeout, 180):
            state = engine.state(cid)
            if not state.running:
                logs = b"".join(engine.logs(cid, follow=False)).decode(errors="replace")
                for line in logs.splitlines():
                    log.write(line)
                raise SmokeError(f"{name}: JupyterLab exited with code {state.exit_code}"
                                 f" before answering: {logs.strip().splitlines()[-1:] or ''}",
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
    raise SmokeError(f"{name}: JupyterLab did not answer under {base} in time ({last})",
                     details=[f"full log: {log.path}"])
