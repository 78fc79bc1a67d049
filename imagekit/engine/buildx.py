"""The docker CLI's buildx plugin: finding it, and BuildKit builds through
`docker buildx build` (its --progress=rawjson stream decoded into the
engine seam's build items). The only module that knows buildx's formats."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from ..errors import EngineError, EngineStreamError
from .dockerconfig import config_dir
from .types import (
    BUILDKIT,
    BUILDKIT_SINCE,
    CLASSIC,
    BuildCached,
    BuildDone,
    BuildItem,
    BuildOutput,
    BuildStep,
)

# Where the docker CLI looks for plugins besides $DOCKER_CONFIG/cli-plugins.
CLI_PLUGIN_DIRS = ("/usr/local/lib/docker/cli-plugins", "/usr/local/libexec/docker/cli-plugins",
                   "/usr/lib/docker/cli-plugins", "/usr/libexec/docker/cli-plugins")
_BUILDX_VERSION = re.compile(r"buildx\s+v?(\d[^\s]*)")


@dataclass(frozen=True)
class Buildx:
    """The buildx plugin as the docker CLI finds it."""

    version: str = ""          # "0.13.1+ds1"; empty when none answered
    path: str = ""             # the plugin's file, where one was found
    works: bool = False        # `docker buildx version` answered
    problem: str = ""          # why not, one line


def find_buildx(timeout: float = 10.0) -> Buildx:
    """Run `docker buildx version` (with a time limit) and look for the plugin
    file where the CLI looks: $DOCKER_CONFIG/cli-plugins (~/.docker/cli-plugins),
    then the system folders. A plugin the CLI cannot run is asked directly."""
    found = next((str(f) for d in (config_dir() / "cli-plugins", *map(Path, CLI_PLUGIN_DIRS))
                  if (f := d / "docker-buildx").is_file() and os.access(f, os.X_OK)), "")
    cli = shutil.which("docker")

    def ask(cmd: list[str]) -> tuple[str, str]:
        """(version, "") or ("", why not)."""
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                               stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return "", f"`{' '.join(cmd[-3:])}` did not answer within {timeout:g}s"
        except OSError as e:
            return "", f"cannot run {cmd[0]}: {e.strerror or e}"
        m = _BUILDX_VERSION.search(p.stdout)
        if p.returncode == 0 and m:
            return m[1], ""
        said = (p.stderr or p.stdout).strip().splitlines()
        return "", said[0][:200] if said else f"`{' '.join(cmd)}` exited {p.returncode}"

    why = "no docker CLI on PATH"
    if cli:
        version, why = ask([cli, "buildx", "version"])
        if version:
            return Buildx(version, found, True)
    if found:
        version, _ = ask([found, "version"])
        return Buildx(version, found, False, f"{found} is there, but `docker buildx` fails: {why}")
    return Buildx(problem=why)


# -- BuildKit builds through `docker buildx build` ----------------------------
# A build step's vertex: "[stage-0 2/11] RUN ...", "[2/2] RUN ...", "[base 1/3] FROM ...".
_STEP = re.compile(r"^\[(?:[^\]\s]+ )?(\d+)/(\d+)\] (.*)$", re.DOTALL)
# BuildKit's flags on an instruction, left out of what is shown ("RUN --mount=... pip ...").
_FLAGS = re.compile(r"^([A-Z]+) +(?:--\S+ +)+")
# Vertices worth a line while they run: the export (compression, on the containerd
# store) and the named contexts sent through the session (the wheels).
_SHOWN = re.compile(r"^(exporting to image|exporting layers|\[context \S+\] load from client)$")
MAX_OBJECT = 64 * 1024 * 1024     # one rawjson object, at most (a log chunk is ~32 KiB)
# How a build exported to the containerd image store compresses its layers, which
# is then how pushes send them: (algorithm, level, OCI media types). gzip level 1
# is what every puller reads and halves the export time of BuildKit's default
# level (BENCHMARKS.md section 10); zstd is faster and smaller still, but only
# containerd 1.5+ / Docker 23+ pull it.
COMPRESSIONS = {"gzip": ("gzip", 1, False), "zstd": ("zstd", 3, True)}


class RawJson:
    """Decodes `docker buildx build --progress=rawjson` (BuildKit's SolveStatus
    objects, on stderr) into the engine seam's build items. buildx 0.13 prints
    each object over many lines, 0.15+ one per line; anything that is not JSON
    (buildx's closing `ERROR: ...` and the Dockerfile excerpt) is kept as text.
    Log data is base64, in chunks that may split lines: each step's partial
    line is held until its end arrives."""

    def __init__(self) -> None:
        self._buf: list[str] = []
        self._size = 0
        self._decoder = json.JSONDecoder()
        self._steps: set[str] = set()
        self._cached: set[str] = set()
        self._shown: set[str] = set()
        self._partial: dict[str, str] = {}
        self.errors: list[tuple[str, str]] = []   # (step, BuildKit's error), first first
        self.text: list[str] = []                 # what was not JSON

    def feed(self, line: str) -> list[BuildItem]:
        if not self._buf and not line.lstrip().startswith("{"):
            if line.strip():
                self.text.append(line.rstrip())
            return []
        self._buf.append(line)
        self._size += len(line)
        if self._size > MAX_OBJECT:
            self._buf, self._size = [], 0
            self.text.append("(buildx sent a progress record over 64 MiB; left out)")
            return []
        if not line.rstrip().endswith("}"):
            return []
        text = "".join(self._buf).strip()
        try:
            obj, end = self._decoder.raw_decode(text)
        except ValueError:
            return []             # not complete yet
        self._buf, self._size = [], 0
        rest = text[end:].strip()
        items = self.status(obj) if isinstance(obj, dict) else []
        return items + (self.feed(rest + "\n") if rest else [])

    def status(self, obj: dict) -> list[BuildItem]:
        out: list[BuildItem] = []
        for v in obj.get("vertexes") or []:
            if not isinstance(v, dict):
                continue
            digest, name = str(v.get("digest", "")), str(v.get("name", ""))
            step = _STEP.match(name)
            begun = bool(v.get("started") or v.get("cached"))
            if step and begun and digest not in self._steps:
                self._steps.add(digest)
                out.append(BuildStep(int(step[1]), int(step[2]), _FLAGS.sub(r"\1 ", step[3])))
            # FROM is "cached" whenever the base is there: not a step taken from the cache
            if step and v.get("cached") and digest not in self._cached and \
                    not step[3].startswith("FROM "):
                self._cached.add(digest)
                out.append(BuildCached())
            if not step and begun and _SHOWN.match(name) and digest not in self._shown:
                self._shown.add(digest)
                out.append(BuildOutput(f"[buildkit] {name}"))
            if v.get("error"):
                label = _FLAGS.sub(r"\1 ", step[3]) if step else name
                self.errors.append((label, " ".join(str(v["error"]).split())))
        for log in obj.get("logs") or []:
            if not isinstance(log, dict):
                continue
            try:
                data = base64.b64decode(str(log.get("data", "")), validate=False)
            except (ValueError, TypeError):
                continue
            vertex = str(log.get("vertex", ""))
            text = self._partial.pop(vertex, "") + data.decode("utf-8", errors="replace")
            *lines, last = text.replace("\r\n", "\n").split("\n")
            if last:
                self._partial[vertex] = last
            out += [BuildOutput(x.rstrip()) for x in lines if x.strip()]
        return out

    def close(self) -> list[BuildItem]:
        """Lines left without their end."""
        out = [BuildOutput(x.rstrip()) for x in self._partial.values() if x.strip()]
        self._partial.clear()
        return out

    def failure(self, code: int) -> str:
        """What went wrong, in BuildKit's words: the failed step's error, else
        buildx's own `ERROR:` line, else its last words."""
        if self.errors:
            return self.errors[0][1]
        said = [t for t in self.text if t.startswith("ERROR:")]
        if said:
            return said[-1].removeprefix("ERROR:").strip()
        return self.text[-1] if self.text else f"docker buildx build exited {code}"


@dataclass(frozen=True)
class BuilderInfo:
    """A buildx builder as `docker buildx inspect NAME` describes it."""

    name: str
    driver: str               # docker, docker-container, kubernetes, remote
    endpoint: str             # a docker context's name, or an address


def inspect_builder(name: str, timeout: float = 20.0) -> BuilderInfo:
    """`docker buildx inspect NAME`, read. Raises EngineError (one line) when
    there is no such builder or buildx cannot be asked."""
    cli = shutil.which("docker") or "docker"
    try:
        p = subprocess.run([cli, "buildx", "inspect", name], capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise EngineError(f"`docker buildx inspect {name}` did not answer within "
                          f"{timeout:g}s") from None
    except OSError as e:
        raise EngineError(f"cannot run docker buildx: {e.strerror or e}") from None
    if p.returncode != 0:
        said = " ".join((p.stderr or p.stdout).split())[:300]
        raise EngineError(f"no buildx builder {name!r} ({said}); `docker buildx ls` lists them")
    fields: dict[str, str] = {}
    for line in p.stdout.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() and key.strip() not in fields:
            fields[key.strip()] = value.strip()
    return BuilderInfo(fields.get("Name", name), fields.get("Driver", ""),
                       fields.get("Endpoint", ""))


class BuildxBuilder:
    """BuildKit through `docker buildx build`: the engine's own BuildKit (the
    docker driver of the current engine), or a buildx builder the user names.
    The context is a folder; named contexts (the wheels) travel through the
    build session, so the builder may run anywhere. The image lands in the
    builder's engine (docker driver), or is loaded into `engine` (other
    drivers, which keep no images)."""

    kind = BUILDKIT

    def __init__(self, engine, *, name: str = BUILDKIT, builder: str = "", context: str = "",
                 reason: str = "", load: bool = False, env: dict[str, str] | None = None,
                 driver: str = "docker", compression: str = "gzip"):
        self.engine = engine
        self.driver = driver
        self.compression = compression  # COMPRESSIONS key; "" leaves BuildKit's default
        self.name = name
        self.builder = builder          # the buildx builder's name; "" for the engine's own
        self.context = context          # a docker context's own builder (docker driver) instead
        self.reason = reason
        self.load = load                # export to a tar and load it into `engine`
        self.env = env or {}

    def cache_export_problem(self) -> str:
        """Why this builder cannot export a build cache ("" when it can): the
        docker driver on the classic image store cannot."""
        if self.driver == "docker" and self.engine.facts().store != "containerd":
            return ("the docker driver on the classic image store cannot export a build cache; "
                    "the containerd image store or a docker-container builder (`docker buildx "
                    "create --driver docker-container`, then --builder NAME) can")
        return ""

    def command(self, folder: Path, tag: str, metadata: Path, *, nocache: bool,
                contexts: dict[str, Path], out: Path | None, cache_to: str = "",
                cache_from: str = "", source_date_epoch: int | None = None) -> list[str]:
        cmd = [shutil.which("docker") or "docker"]
        if self.context:       # buildx runs a context's docker-driver builder only from it
            cmd += ["--context", self.context]
        cmd += ["buildx", "build", "--progress=rawjson", "--provenance=false", "--metadata-file",
                str(metadata), "--tag", tag]
        if self.builder and not self.context:
            cmd += ["--builder", self.builder]
        for name, path in sorted(contexts.items()):
            cmd += ["--build-context", f"{name}={path}"]
        if nocache:
            cmd.append("--no-cache")
        if source_date_epoch is not None:   # the image config's created and history times
            cmd += ["--build-arg", f"SOURCE_DATE_EPOCH={source_date_epoch}"]
        if cache_from:
            cmd += ["--cache-from", f"type=registry,ref={cache_from}"]
        if cache_to:      # every layer, with OCI media types and an image manifest (ECR needs them)
            cmd += ["--cache-to", f"type=registry,ref={cache_to},mode=max,oci-mediatypes=true,"
                                  "image-manifest=true"]
        if out is not None:
            cmd += ["--output", f"type=docker,dest={out}"]
        elif self.compression and self.driver == "docker" and \
                self.engine.facts().store == "containerd":
            # the containerd store keeps layers as the export compresses them: the
            # compression chosen here is the one pushes send (COMPRESSIONS)
            algo, level, oci = COMPRESSIONS[self.compression]
            cmd += ["--output", f"type=image,name={tag},compression={algo},compression-level="
                                f"{level},force-compression=true"
                                + (",oci-mediatypes=true" if oci else "")]
        else:
            cmd.append("--load")
        return [*cmd, str(folder)]

    def build(self, context: IO[bytes], tag: str, *, nocache: bool = False,
              network_mode: str | None = None, contexts: dict[str, Path] | None = None,
              cache_to: str = "", cache_from: str = "",
              source_date_epoch: int | None = None) -> Iterator[BuildItem]:
        """Build; yields steps, cached steps and log lines as they come, then
        BuildDone. Raises EngineStreamError with BuildKit's words when a step
        fails. `network_mode` is the classic builder's: RUN steps here have
        the network their Dockerfile flags give them. `cache_to`/`cache_from`:
        a registry reference for BuildKit's build cache (mode=max).
        `source_date_epoch`: the time BuildKit gives the image config (created,
        history), so that a rebuild has the same image ID."""
        with tempfile.TemporaryDirectory(prefix="imagekit-buildkit-") as tmp:
            folder = Path(tmp) / "context"
            folder.mkdir()
            with tarfile.open(fileobj=context, mode="r:*") as tar:
                # imagekit's own context (context.py): links inside it only
                tar.extractall(folder, **({"filter": "tar"} if hasattr(tarfile, "tar_filter")
                                          else {}))
            metadata = Path(tmp) / "metadata.json"
            out = Path(tmp) / "image.tar" if self.load else None
            cmd = self.command(folder, tag, metadata, nocache=nocache, contexts=contexts or {},
                               out=out, cache_to=cache_to, cache_from=cache_from,
                               source_date_epoch=source_date_epoch)
            env = {**os.environ, "BUILDX_NO_DEFAULT_ATTESTATIONS": "1", **self.env}
            if self.context:
                env.pop("DOCKER_HOST", None)
            decoder = RawJson()
            try:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                        env=env, start_new_session=True)
            except OSError as e:
                raise EngineError(f"cannot run docker buildx: {e.strerror or e}") from None
            try:
                assert proc.stderr is not None
                for raw in proc.stderr:
                    yield from decoder.feed(raw.decode("utf-8", errors="replace"))
                code = proc.wait()
            finally:
                if proc.poll() is None:          # Ctrl-C or the caller stopped: cancel it
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGINT)
                    try:
                        proc.wait(timeout=20)
                    except subprocess.TimeoutExpired:
                        with contextlib.suppress(ProcessLookupError):
                            os.killpg(proc.pid, signal.SIGKILL)
                        proc.wait()
            yield from decoder.close()
            if code != 0:
                raise EngineStreamError(decoder.failure(code))
            try:
                meta = json.loads(metadata.read_text())
            except (OSError, ValueError):
                meta = {}
            if out is not None:
                with out.open("rb") as f:
                    self.engine.load(f)
            image_id = str(meta.get("containerimage.digest") or
                           meta.get("containerimage.config.digest") or "")
            if not image_id:
                raise EngineStreamError("buildx ended the build without an image digest")
            yield BuildDone(image_id)


def choose(engine, requested: str = "auto", *, buildx: Buildx | None = None,
           compression: str = "gzip"):
    """The builder a build uses. `requested`: "auto" (BuildKit where the
    engine has it and buildx is installed, else classic), "classic",
    "buildkit" (the engine's own BuildKit, or an error saying what is
    missing), or the name of a buildx builder (`docker buildx ls`), whose
    images land in its own engine (docker driver) or are loaded into
    `engine` (other drivers). Raises EngineError (one line) for a builder
    that cannot be had."""
    from .api import ClassicBuilder, Engine
    if requested == CLASSIC:
        return ClassicBuilder(engine, "asked for (--builder classic or [build] builder)")
    facts = engine.facts()
    if requested in ("auto", BUILDKIT):
        missing = ""
        if not facts.buildkit:
            missing = (f"Engine {facts.server_version or '?'} has no BuildKit built in "
                       f"(Engine {BUILDKIT_SINCE}+ has)")
        else:
            buildx = buildx or find_buildx()
            if not buildx.works:
                missing = f"no buildx plugin ({buildx.problem}); `make engine` installs docker-buildx"
        if not missing:
            why = "asked for" if requested == BUILDKIT else "the engine has BuildKit"
            return BuildxBuilder(engine, reason=f"{why}; buildx {buildx.version}",
                                 env=_engine_env(engine), compression=compression)
        if requested == BUILDKIT:
            raise EngineError(f"--builder buildkit: {missing}")
        return ClassicBuilder(engine, missing)
    info = inspect_builder(requested)
    if info.driver == "docker":
        host = info.endpoint if "://" in info.endpoint else context_host(info.endpoint)
        where = engine if not host or host == engine.where else Engine.connect(url=host)
        shown = f" at {host}" if where is not engine else ""
        context = "" if "://" in info.endpoint else info.endpoint
        return BuildxBuilder(where, name=requested, builder=requested, context=context,
                             compression=compression,
                             reason=f"buildx builder {requested} (docker driver{shown}): "
                                    "images land in its engine")
    return BuildxBuilder(engine, name=requested, builder=requested, load=True, driver=info.driver,
                         reason=f"buildx builder {requested} ({info.driver} driver): images "
                                "are loaded here from it")


def context_host(name: str, timeout: float = 20.0) -> str:
    """The engine address of docker context NAME, as the docker CLI reads it
    ("" when it cannot say)."""
    cli = shutil.which("docker") or "docker"
    try:
        p = subprocess.run([cli, "context", "inspect", name, "--format",
                            "{{.Endpoints.docker.Host}}"], capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
    except (subprocess.TimeoutExpired, OSError):
        return ""
    return p.stdout.strip() if p.returncode == 0 else ""


def _engine_env(engine) -> dict[str, str]:
    """buildx's own builder is that of the engine imagekit talks to."""
    where = str(getattr(engine, "where", "") or "")
    if os.environ.get("DOCKER_HOST") or getattr(engine, "context", "") or "://" not in where:
        return {}
    return {"DOCKER_HOST": where}
