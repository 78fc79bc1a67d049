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

from . import build as build_stage
from .config import Project
from .engine import Engine
from .errors import GpuUnavailable, Interrupted, SmokeError
from .events import Event, Info, Log, Result, Warn
from .spec import Plan

CHECKS_DIR = Path(__file__).resolve().parent / "checks"
CHECK_MOUNT = "/imagekit/checks"
REPORT_MARK = "IMAGEKIT_REPORT "
NOTEBOOK_BASE_URL = "/imagekit/smoke/"
NO_GPU_NOTE = "ran on CPU: this engine has no GPU"


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


def _run(engine: Engine, image: str, command: list[str], *, what: str, name: str, log: _Log,
         timeout: int, volumes: dict | None = None, gpus: bool = False,
         files: bytes | None = None, env: dict | None = None) -> Iterator[Event | RunOutcome]:
    """Run one container to its end, streaming its log; yield Log events and
    finally a RunOutcome. Raise SmokeError on timeout."""
    log.write(f"$ {shlex.join(command)}")
    started = time.monotonic()
    tail: list[str] = []
    report = None
    lines: queue.Queue = queue.Queue()
    with engine.container(image, command, name=f"imagekit-smoke-{uuid.uuid4().hex[:10]}",
                          volumes=volumes, gpus=gpus, files=files, env=env) as cid:
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


def gpu_choice(plan: Plan, engine: Engine, mode: str) -> tuple[bool, str | None]:
    """Whether to request GPUs, and a note for the report."""
    if mode == "off":
        return False, "GPU use turned off (--gpu off)" if plan.device == "gpu" else None
    capable = engine.gpu_capable()
    if mode == "require":
        if not capable:
            raise GpuUnavailable(f"{plan.name}: --gpu require, but the engine at this "
                                 "DOCKER_HOST has no GPU (no nvidia runtime or CDI GPU devices "
                                 "in `docker info`)")
        return True, None
    if plan.device == "gpu":
        return (True, None) if capable else (False, NO_GPU_NOTE)
    return False, None


def smoke(plan: Plan, project: Project, engine: Engine, *, gpu: str = "auto",
          steps: int | None = None, timeout: int | None = None) -> Iterator[Event]:
    name = plan.name
    m = plan.spec.model
    ref = plan.spec.image_ref()
    image = engine.image(ref)
    if image is None:
        raise SmokeError(f"{name}: image {ref} is not built; run `imagekit build {name}` first")
    image_id = image["Id"]
    use_gpu, note = gpu_choice(plan, engine, gpu)
    if note:
        yield Warn(name, note)
    steps = steps or m.smoke.steps
    timeout = timeout or m.smoke.timeout
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log = _Log(project.state_dir / "logs" / f"{name}.smoke-{stamp}.log")
    report: dict = {"name": name, "image": ref, "image_id": image_id, "gpu_mode": gpu,
                    "gpu_requested": use_gpu, "note": note, "log": str(log.path),
                    "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "passed": False}
    t0 = time.monotonic()
    try:
        if m.smoke.framework_check:
            report["framework_check"] = yield from _framework_check(
                plan, engine, ref, log, use_gpu, gpu, timeout)
        if m.train is not None:
            report["training"] = yield from _training(plan, engine, ref, log, use_gpu,
                                                      steps, timeout)
        if m.jupyter.enabled:
            report["notebook"] = yield from _notebook(plan, engine, ref, log, timeout)
        report["passed"] = True
    except SmokeError as e:
        report["error"] = e.message
        raise
    finally:
        report["seconds"] = round(time.monotonic() - t0, 2)
        _store(project, image_id, report)
    yield Result(name, "smoke", report)


def _framework_check(plan, engine, ref, log, use_gpu, mode, timeout):
    name = plan.name
    script = f"{plan.framework}_check.py"
    device = "gpu" if mode == "require" else "auto"
    cmd = ["python", f"{CHECK_MOUNT}/{script}", "--steps", "50", "--device", device]
    files = _tar({f"imagekit/checks/{script}": (CHECKS_DIR / script).read_bytes()})
    yield Info(name, f"framework check: {plan.framework} {plan.version}, "
                     f"{'GPU requested' if use_gpu else 'CPU'}")
    out = yield from _outcome(_run(engine, ref, cmd, what="framework check", name=name,
                                   log=log, timeout=timeout, gpus=use_gpu, files=files,
                                   env={"PYTHONDONTWRITEBYTECODE": "1",
                                        "TF_CPP_MIN_LOG_LEVEL": "2"}))
    rep = out.report
    if out.code == 2 and rep is not None:
        raise GpuUnavailable(f"{name}: {rep.get('reason')}")
    if out.code != 0 or rep is None or not rep.get("ok"):
        reason = (rep or {}).get("reason") or (out.tail[-1] if out.tail else f"exit {out.code}")
        raise SmokeError(f"{name}: framework check failed: {reason}",
                         details=[*(f"| {t}" for t in out.tail[-8:]), f"full log: {log.path}"])
    rep["wall_seconds"] = round(out.seconds, 2)
    yield Info(name, f"framework check ok: {rep['framework']} {rep['version']} on "
                     f"{rep['device']} ({rep['device_name']}), {rep['steps']} steps, loss "
                     f"{rep['loss_first']:.4g} -> {rep['loss_last']:.4g}, "
                     f"{rep['steps_per_sec']} steps/s")
    return rep


def _train_command(plan: Plan, steps: int, extra: str = "") -> list[str]:
    m = plan.spec.model
    cmd = shlex.split(m.train.command)
    cmd += shlex.split(m.smoke.steps_args.format(steps=steps))
    return cmd + shlex.split(extra)


def _training(plan, engine, ref, log, use_gpu, steps, timeout):
    name = plan.name
    m = plan.spec.model
    uid = uuid.uuid4().hex[:8]
    result: dict = {"steps": steps, "runs": []}
    with engine.volume(f"imagekit-smoke-{uid}-data", ref) as data, \
            engine.volume(f"imagekit-smoke-{uid}-output", ref) as output:
        volumes = {data: m.smoke.data_dir, output: m.smoke.output_dir}
        runs = [(steps, "")]
        if m.smoke.resume:
            runs.append((2 * steps, m.smoke.resume_args))
        for i, (n, extra) in enumerate(runs):
            cmd = _train_command(plan, n, extra)
            what = "training" if i == 0 else "resumed training"
            yield Info(name, f"{what}: {shlex.join(cmd)}")
            out = yield from _outcome(_run(engine, ref, cmd, what=what, name=name, log=log,
                                           timeout=timeout, volumes=volumes, gpus=use_gpu))
            result["runs"].append({"command": cmd, "exit": out.code,
                                   "seconds": round(out.seconds, 2)})
            if out.code != 0:
                raise SmokeError(f"{name}: {what} exited with code {out.code}: "
                                 f"{out.tail[-1] if out.tail else '(no output)'}",
                                 details=[*(f"| {t}" for t in out.tail[-8:]),
                                          f"full log: {log.path}"])
            if i == 1:
                want = m.smoke.resume_log.format(steps=steps)
                if not any(want in t for t in out.tail) and want not in log.path.read_text():
                    raise SmokeError(f"{name}: the second run did not resume from the first "
                                     f"(expected {want!r} in its log)",
                                     details=[f"full log: {log.path}"])
                result["resumed_from"] = steps
        found = yield from _output_files(engine, ref, output, m.smoke.output_dir)
        result["output_files"] = found[:50]
        missing = [pat for pat in m.smoke.expect
                   if not any(fnmatch.fnmatch(f, pat) or fnmatch.fnmatch(f.split("/")[-1], pat)
                              for f in found)]
        if missing:
            raise SmokeError(f"{name}: expected output {', '.join(missing)} did not appear in "
                             f"{m.smoke.output_dir} (found: {', '.join(found[:8]) or 'nothing'})",
                             details=[f"full log: {log.path}"])
    yield Info(name, f"training ok: {len(result['runs'])} run(s), "
                     f"{len(found)} files in {m.smoke.output_dir}"
               + (f", resumed from step {steps}" if m.smoke.resume else ""))
    return result


def _output_files(engine, ref, volume, path):
    with engine.container(ref, ["true"], name=f"imagekit-smoke-{uuid.uuid4().hex[:10]}",
                          volumes={volume: path}) as cid:
        engine.wait(cid, timeout=60)
        return engine.files_in(cid, path)
    yield  # pragma: no cover - makes this a generator like its siblings


def _notebook(plan, engine, ref, log, timeout):
    name = plan.name
    j = plan.spec.model.jupyter
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
    with engine.volume(f"imagekit-smoke-{uid}-code", ref) as code, \
            engine.volume(f"imagekit-smoke-{uid}-dataset", ref) as dataset, \
            engine.container(ref, None, name=f"imagekit-smoke-{uid}-lab",
                             volumes={code: "/code", dataset: "/dataset"},
                             env={j.base_url_env: base}) as cid:
        started = time.monotonic()
        last = ""
        while time.monotonic() - started < min(timeout, 180):
            state = engine.inspect_container(cid)["State"]
            if not state.get("Running"):
                logs = b"".join(engine.logs(cid, follow=False)).decode(errors="replace")
                for line in logs.splitlines():
                    log.write(line)
                raise SmokeError(f"{name}: JupyterLab exited with code {state.get('ExitCode')}"
                                 f" before answering: {logs.strip().splitlines()[-1:] or ''}",
                                 details=[f"full log: {log.path}"])
            code_, out = engine.exec_run(cid, ["python", "-c", probe])
            if code_ == 0:
                result = json.loads(out.strip().splitlines()[-1])
                result["url"] = base + "lab"
                result["seconds_to_answer"] = round(time.monotonic() - started, 2)
                yield Info(name, f"notebook ok: JupyterLab answered at {base}lab and "
                                 f"{base}api/status in {result['seconds_to_answer']}s")
                return result
            last = out.strip().splitlines()[-1] if out.strip() else ""
            time.sleep(1)
        logs = b"".join(engine.logs(cid, follow=False)).decode(errors="replace")
        for line in logs.splitlines():
            log.write(line)
    raise SmokeError(f"{name}: JupyterLab did not answer under {base} in time ({last})",
                     details=[f"full log: {log.path}"])


def _store(project: Project, image_id: str, report: dict) -> Path:
    d = project.state_dir / "smoke"
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{image_id.removeprefix('sha256:')[:16]}.json"
    path.write_text(json.dumps(report, indent=2, default=str))
    build_stage.update_record(project, image_id, smoke={
        "passed": report.get("passed", False), "report": str(path),
        "at": report.get("started_at")})
    return path


def passed(project: Project, image_id: str) -> bool:
    rec = build_stage.load_record(project, image_id) or {}
    return bool((rec.get("smoke") or {}).get("passed"))
