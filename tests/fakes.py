"""The one fake container engine of the unit tests.

`FakeEngine` satisfies `imagekit.engine.EngineAPI` (tests/unit/test_engine_api.py
checks every method against the Protocol) and is scripted per test: what a build
yields or where it fails, what each push attempt yields, the export's bytes,
how a load ends, the images held, GPU capability, containers with canned logs
and exit codes, registry answers. Every call is recorded in `calls` for
assertions. `FakeDockerAPI` stands in for docker-py's low-level client, to test
how `imagekit.engine.Engine` decodes the engine's wire format.

`image_archive()` makes a tar shaped like `docker save` output (manifest.json,
an image config whose sha256 is the image ID, layer tars)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import tarfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import IO, Any

from imagekit.engine import (
    BuildDone,
    BuildItem,
    BuildStep,
    ContainerState,
    EngineFacts,
    ImageInfo,
    LayerProgress,
    PushDone,
    PushItem,
    wire,
)
from imagekit.errors import EngineError, EngineStreamError, EngineUnavailable

IMAGE_ID = "sha256:" + "ab" * 32
DIGEST = "sha256:" + "cd" * 32

BuildScript = list | Callable[[str, str], list]      # (tag, Dockerfile text) -> items


def image_id(n: int) -> str:
    return f"sha256:{n:064x}"


# -- docker save archives -------------------------------------------------------

def tar_of(members: list[tuple[str, bytes]]) -> bytes:
    """A plain tar holding these (name, bytes) members, in this order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def image_archive(repo_tags: list[str] | None = None, layers: list[dict[str, bytes]] | None = None,
                  *, created_by: list[str] | None = None, labels: dict[str, str] | None = None,
                  config_extra: dict | None = None) -> tuple[bytes, str]:
    """A `docker save` tar of one image and its image ID (the config's sha256).
    Layers map paths to contents; a `.wh.` name is a whiteout as in a real layer."""
    repo_tags = ["x:v1"] if repo_tags is None else repo_tags
    layers = [{"opt/data.bin": bytes(range(256)) * 1200}] if layers is None else layers
    created_by = created_by or [f"/bin/sh -c #(nop) step {i + 1}" for i in range(len(layers))]
    layer_tars = [tar_of(sorted(files.items())) for files in layers]
    diff_ids = ["sha256:" + hashlib.sha256(t).hexdigest() for t in layer_tars]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "config": {"Labels": labels or {}},
                         "history": [{"created_by": c} for c in created_by],
                         "rootfs": {"type": "layers", "diff_ids": diff_ids},
                         **(config_extra or {})}, sort_keys=True).encode()
    digest = hashlib.sha256(config).hexdigest()
    members: list[tuple[str, bytes]] = []
    dirs = []
    for i, t in enumerate(layer_tars):
        d = hashlib.sha256(f"{digest}{i}".encode()).hexdigest()
        dirs.append(d)
        members += [(f"{d}/VERSION", b"1.0"), (f"{d}/json", b"{}"), (f"{d}/layer.tar", t)]
    members.append((f"{digest}.json", config))
    manifest = [{"Config": f"{digest}.json", "RepoTags": repo_tags,
                 "Layers": [f"{d}/layer.tar" for d in dirs]}]
    members.append(("manifest.json", json.dumps(manifest).encode()))
    return tar_of(members), f"sha256:{digest}"


def as_loaded(data: bytes) -> bytes:
    """What `imagekit load` passes on to the engine of a tar: every member,
    then the end-of-archive marker (1024 zero bytes), without the padding
    after it."""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        tar.getmembers()
        end = tar.offset
    return data[:end] + bytes(1024)


def read_archive(data: bytes) -> tuple[list[str], str]:
    """(RepoTags, image ID) of a `docker save` tar; ValueError when it is not one."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            files = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}
        manifest = json.loads(files["manifest.json"])[0]
        config = files[manifest["Config"]]
    except (tarfile.TarError, KeyError, LookupError, ValueError, TypeError, AttributeError) as e:
        raise ValueError(f"not an image archive: {e}") from None
    return list(manifest.get("RepoTags") or []), "sha256:" + hashlib.sha256(config).hexdigest()


# -- streams the fake engine yields ---------------------------------------------

def build_ok(image: str = IMAGE_ID, steps: tuple[str, ...] = ("FROM scratch",)) -> list:
    return [*(BuildStep(i, len(steps), s) for i, s in enumerate(steps, 1)), BuildDone(image)]


def push_ok(layer: str = "l1", digest: str = DIGEST) -> list[PushItem]:
    return [LayerProgress(layer, "Preparing"), LayerProgress(layer, "Pushing", 10, 20),
            LayerProgress(layer, "Pushed"), PushDone(digest)]


def push_error(message: str, layer: str = "l1") -> list:
    """A push the engine accepted and the registry refused (an error in the stream)."""
    return [LayerProgress(layer, "Preparing"), EngineStreamError(message)]


# -- the fake engine ------------------------------------------------------------

@dataclass
class Call:
    method: str
    args: dict[str, Any]


@dataclass
class ContainerScript:
    """What a container does: the lines it prints, its exit code, files it
    leaves in the volumes mounted at the given paths, its answers to exec."""

    logs: list[str] = field(default_factory=list)
    exit_code: int = 0
    writes: dict[str, list[str]] = field(default_factory=dict)   # mount path -> file names
    running: bool = False                                        # state(): never exits by itself
    exec_results: list[tuple[int, str]] = field(default_factory=list)
    hang: bool = False                                           # wait() times out


@dataclass
class Container:
    cid: str
    image: str
    command: list[str] | None
    name: str
    volumes: dict[str, str]
    env: dict
    gpus: bool
    workdir: str | None
    files: bytes | None
    network: bool
    owner: str
    script: ContainerScript
    removed: bool = False

    def file_names(self) -> list[str]:
        """The members of the tar copied in before start."""
        if not self.files:
            return []
        with tarfile.open(fileobj=io.BytesIO(self.files)) as tar:
            return tar.getnames()


@dataclass
class PushCall:
    repository: str
    tag: str
    auth: dict | None


class FakeEngine:
    """EngineAPI, scripted. Arguments:

    images   ref -> ImageInfo held at the start (add more with add_image)
    gpu      what gpu_capable() answers
    builds   items every build yields (BuildStep/BuildCached/BuildOutput/BuildDone, or
             an exception instance, raised when reached), or a function of (tag,
             Dockerfile text) giving them; a BuildDone makes the tag name that image.
             Default: one step and a new image ID per build.
    pushes   registry host -> one item list per attempt (the last repeats); default push_ok()
    held     what distribution_digest() answers; default: what the last push of that ref got
    auths    registry host -> what registry_auth() finds in "the Docker config file"
    export   the bytes save() streams (in `chunk` pieces, `fail_with` raised at `fail_after`)
    load_error  the engine's refusal after reading a whole archive (EngineStreamError)
    store    the image store facts() reports: "classic" or "containerd"
    engine_facts  what facts() answers instead (version, builders, GPU runtime, where)
    """

    def __init__(self, *, images: dict[str, ImageInfo] | None = None, gpu: bool = False,
                 builds: BuildScript | None = None, pushes: dict[str, list[list]] | None = None,
                 held: str | None = None, auths: dict[str, dict] | None = None,
                 export: bytes = b"", chunk: int = 65536, fail_after: int | None = None,
                 fail_with: BaseException | None = None, load_error: str | None = None,
                 pullable: dict[str, ImageInfo] | None = None, store: str = "classic",
                 engine_facts: EngineFacts | None = None):
        self.images: dict[str, ImageInfo] = dict(images or {})
        self.gpu = gpu
        self.store = store
        self.uncompressed: set[str] = set()   # images the containerd store holds uncompressed
        self.engine_facts = engine_facts
        self.builds = builds
        self.pushes = pushes or {}
        self.held = held
        self.auths = auths or {}
        self.export, self.chunk = export, chunk
        self.fail_after = fail_after
        self.fail_with = fail_with or EngineError("export of x:v1 broke off: connection reset")
        self.load_error = load_error
        self.pullable = pullable or {}
        self.calls: list[Call] = []
        self.built: list[str] = []                    # tags, in the order builds finished
        self.contexts: dict[str, bytes] = {}          # tag -> the build context sent
        self.tagged: list[tuple[str, str, str]] = []
        self.imported: list[tuple[str, str, list[str], bytes]] = []
        self.push_calls: list[PushCall] = []
        self.attempts: dict[str, int] = {}            # repository -> push attempts
        self.registry: dict[str, str] = {}            # REPO:TAG -> digest pushed
        self.barrier: threading.Barrier | None = None  # every push waits here (run at once)
        self.received = b""                           # what the last load() read
        self.load_aborted = False                     # its stream ended in an exception
        self.scripts: list[tuple[str | Callable[[list[str] | None], bool], ContainerScript]] = []
        self.containers: list[Container] = []
        self.volumes: dict[str, bool] = {}            # name -> still there
        self.networks: dict[str, bool] = {}           # name -> still there
        self.alive = True                             # what answers() says
        self.volume_files: dict[str, list[str]] = {}
        self._exec_seen: dict[str, int] = {}
        self._next = 0
        self.lock = threading.Lock()

    # -- scripting helpers -------------------------------------------------
    def add_image(self, ref: str, id: str | None = None, *, size: int = 0,
                  labels: dict[str, str] | None = None) -> ImageInfo:
        info = ImageInfo(id or self._new_id(), size, dict(labels or {}), [ref])
        self.images[ref] = info
        return info

    def on_run(self, match: str | Callable[[list[str] | None], bool] = "", **script: Any) \
            -> ContainerScript:
        """Containers whose command contains `match` (or for which it answers
        True) do what ContainerScript(**script) says; the script added last
        wins, so a test overrides a shared setup by adding its own."""
        s = ContainerScript(**script)
        self.scripts.append((match, s))
        return s

    def calls_to(self, method: str) -> list[dict[str, Any]]:
        return [c.args for c in self.calls if c.method == method]

    def _record(self, method: str, **args: Any) -> None:
        with self.lock:
            self.calls.append(Call(method, args))

    def _new_id(self) -> str:
        with self.lock:
            self._next += 1
            return image_id(self._next)

    def _by_id(self, ref: str) -> ImageInfo | None:
        return next((i for i in self.images.values() if i.id == ref or
                     i.id.removeprefix("sha256:").startswith(ref.removeprefix("sha256:"))
                     and len(ref.removeprefix("sha256:")) >= 12), None)

    # -- facts -------------------------------------------------------------
    def gpu_capable(self) -> bool:
        self._record("gpu_capable")
        return self.gpu

    def stored_compressed(self, ref: str) -> bool:
        self._record("stored_compressed", ref=ref)
        return self.store == "containerd" and ref not in self.uncompressed

    def facts(self) -> EngineFacts:
        self._record("facts")
        if self.engine_facts is not None:
            return self.engine_facts
        return EngineFacts("fake://engine", server_version="26.1.5", api_version="1.45",
                           os="linux", arch="x86_64", store=self.store,
                           storage_driver="overlayfs" if self.store == "containerd" else "overlay2",
                           buildkit=True, gpu_runtime=self.gpu)

    def image(self, ref: str) -> ImageInfo | None:
        self._record("image", ref=ref)
        return self.images.get(ref) or self._by_id(ref)

    def tag(self, image: str, repository: str, tag: str) -> None:
        self._record("tag", image=image, repository=repository, tag=tag)
        info = self.images.get(image) or self._by_id(image)
        if info is None:
            raise EngineError(f"No such image: {image}")
        with self.lock:
            self.tagged.append((image, repository, tag))
            self.images[f"{repository}:{tag}"] = info

    def remove_image(self, ref: str) -> None:
        self._record("remove_image", ref=ref)
        self.images.pop(ref, None)

    # -- build -------------------------------------------------------------
    def build(self, context: IO[bytes], tag: str, *, network_mode: str | None = None,
              pull: bool = False, nocache: bool = False) -> Iterator[BuildItem]:
        self._record("build", tag=tag, network_mode=network_mode, pull=pull, nocache=nocache)
        data = context.read() if hasattr(context, "read") else bytes(context)
        self.contexts[tag] = data
        with tarfile.open(fileobj=io.BytesIO(data)) as tar:
            dockerfile = tar.extractfile("Dockerfile").read().decode()
        script = self.builds
        if script is None:
            items = build_ok(self._new_id())
        else:
            items = script(tag, dockerfile) if callable(script) else list(script)
        for item in items:
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, BuildDone):
                with self.lock:
                    self.images[tag] = ImageInfo(item.image_id, 1000, {}, [tag])
                    self.built.append(tag)
            yield item

    def import_image(self, stream: IO[bytes], repository: str, tag: str,
                     changes: list[str]) -> None:
        self._record("import_image", repository=repository, tag=tag, changes=list(changes))
        data = stream.read()
        self.imported.append((repository, tag, list(changes), data))
        self.images[f"{repository}:{tag}"] = ImageInfo(
            "sha256:" + hashlib.sha256(data).hexdigest(), len(data), {}, [f"{repository}:{tag}"])

    # -- containers --------------------------------------------------------
    @contextlib.contextmanager
    def volume(self, name: str, owner: str = "") -> Iterator[str]:
        self._record("volume", name=name, owner=owner)
        self.volumes[name] = True
        self.volume_files[name] = []
        try:
            yield name
        finally:
            self.volumes[name] = False

    @contextlib.contextmanager
    def network(self, name: str, owner: str = "") -> Iterator[str]:
        self._record("network", name=name, owner=owner)
        self.networks[name] = True
        try:
            yield name
        finally:
            self.networks[name] = False

    @contextlib.contextmanager
    def container(self, image: str, command: list[str] | None = None, *, name: str,
                  volumes: dict[str, str] | None = None, env: dict | None = None,
                  gpus: bool = False, workdir: str | None = None, files: bytes | None = None,
                  network: bool = True, owner: str = "", run_as=None) -> Iterator[str]:
        self._record("container", image=image, command=command, name=name, gpus=gpus,
                     network=network, run_as=run_as, env=dict(env or {}),
                     volumes=dict(volumes or {}))
        if self.image(image) is None:
            raise EngineError(f"No such image: {image}")
        script = self._script(command)
        with self.lock:
            cid = f"c{len(self.containers) + 1:04d}"
            c = Container(cid, image, command, name, dict(volumes or {}), dict(env or {}), gpus,
                          workdir, files, network, owner, script)
            self.containers.append(c)
        for vol, dst in c.volumes.items():
            self.volume_files.setdefault(vol, []).extend(script.writes.get(dst, []))
        try:
            yield cid
        finally:
            c.removed = True

    def _script(self, command: list[str] | None) -> ContainerScript:
        text = " ".join(command or [])
        for match, script in reversed(self.scripts):
            if (match(command) if callable(match) else match in text):
                return script
        return ContainerScript()

    def _container(self, cid: str) -> Container:
        c = next((c for c in self.containers if c.cid == cid), None)
        if c is None or c.removed:
            raise EngineError(f"No such container: {cid}")
        return c

    def hold_tags(self, image_id: str, refs: list[str]):
        self._record("hold_tags", image_id=image_id, refs=list(refs))
        return ("held", tuple(refs))

    def release_tags(self, token) -> None:
        self._record("release_tags", token=token)

    def answers(self, settle: float = 0.0) -> bool:
        self._record("answers", settle=settle)
        return self.alive

    def sweep(self) -> int:
        """Remove what a dead process left: containers, volumes and networks still there."""
        self._record("sweep")
        left = [c for c in self.containers if not c.removed]
        gone = [v for v, there in self.volumes.items() if there]
        nets = [n for n, there in self.networks.items() if there]
        for c in left:
            c.removed = True
        for v in gone:
            self.volumes[v] = False
        for n in nets:
            self.networks[n] = False
        return len(left) + len(gone) + len(nets)

    def files_in(self, cid: str, path: str) -> list[str]:
        self._record("files_in", cid=cid, path=path)
        c = self._container(cid)
        vols = [v for v, dst in c.volumes.items() if dst == path]
        return sorted({f for v in vols for f in self.volume_files.get(v, [])})

    def logs(self, cid: str, follow: bool = True) -> Iterator[bytes]:
        self._record("logs", cid=cid, follow=follow)
        for line in self._container(cid).script.logs:
            yield (line + "\n").encode()

    def wait(self, cid: str, timeout: float) -> int:
        self._record("wait", cid=cid, timeout=timeout)
        c = self._container(cid)
        if c.script.hang or c.script.running:
            raise TimeoutError
        return c.script.exit_code

    def state(self, cid: str) -> ContainerState:
        self._record("state", cid=cid)
        s = self._container(cid).script
        return ContainerState(s.running, None if s.running else s.exit_code)

    def exec_run(self, cid: str, cmd: list[str]) -> tuple[int, str]:
        self._record("exec_run", cid=cid, cmd=cmd)
        s = self._container(cid).script
        n = self._exec_seen[cid] = self._exec_seen.get(cid, 0) + 1
        if not s.exec_results:
            return 0, ""
        return s.exec_results[min(n, len(s.exec_results)) - 1]

    # -- publish -----------------------------------------------------------
    def save(self, ref: str | list[str], chunk_size: int = 4 * 1024 * 1024) -> Iterator[bytes]:
        self._record("save", ref=ref, chunk_size=chunk_size)
        for i in range(0, len(self.export), self.chunk):
            if self.fail_after is not None and i >= self.fail_after:
                raise self.fail_with
            yield self.export[i:i + self.chunk]

    def load(self, data: IO[bytes] | Iterator[bytes]) -> list[str]:
        """Reads the whole upload first, as the engine does, and applies
        nothing unless it ends normally and holds an image."""
        self._record("load")
        self.received, self.load_aborted = b"", False
        got = bytearray()
        try:
            if hasattr(data, "read"):
                got += data.read()
            else:
                for block in data:
                    got += block
                    self.received = bytes(got)
        except BaseException:
            self.load_aborted = True
            raise
        self.received = bytes(got)
        if self.load_error is not None:
            raise EngineStreamError(self.load_error)
        try:
            tags, iid = read_archive(self.received)
        except ValueError:
            raise EngineStreamError("unexpected EOF") from None
        for t in tags:
            self.images[t] = ImageInfo(iid, len(self.received), {}, list(tags))
        if not tags:
            self.images[iid] = ImageInfo(iid, len(self.received))
        return tags or [iid]

    def push(self, repository: str, tag: str, auth: dict | None) -> Iterator[PushItem]:
        with self.lock:
            n = self.attempts[repository] = self.attempts.get(repository, 0) + 1
            self.push_calls.append(PushCall(repository, tag, auth))
        self._record("push", repository=repository, tag=tag, auth=auth)
        if self.barrier is not None:
            self.barrier.wait()
        if f"{repository}:{tag}" not in self.images:
            raise EngineStreamError(f"An image does not exist locally with the tag: {repository}")
        streams = self.pushes.get(repository.split("/")[0]) or [push_ok()]
        for item in streams[min(n, len(streams)) - 1]:
            if isinstance(item, BaseException):
                raise item
            if isinstance(item, PushDone):
                with self.lock:
                    self.registry[f"{repository}:{tag}"] = item.digest
            yield item

    def pull(self, ref: str, auth: dict | None) -> None:
        self._record("pull", ref=ref, auth=auth)
        if ref not in self.pullable:
            raise EngineError(f"pull of {ref} failed: manifest unknown")
        self.images[ref] = self.pullable[ref]

    def registry_auth(self, registry: str) -> dict | None:
        self._record("registry_auth", registry=registry)
        found = self.auths.get(registry)
        return dict(found) if found else None

    def distribution_digest(self, ref: str, auth: dict | None) -> str:
        self._record("distribution_digest", ref=ref, auth=auth)
        if self.held is not None:
            return self.held
        return self.registry.get(ref, "")


# -- the engine's API client, for testing imagekit.engine.Engine -----------------

class FakeDockerAPI(wire.Api):
    """wire.Api that never connects: the methods Engine calls answer from
    scripts (raw wire-format dicts, as the engine's JSON decodes to) and
    record their arguments in `calls`."""

    def __init__(self, *, info: dict | None = None, build: list[dict] | None = None,
                 push: list[dict] | None = None, load: list[dict] | None = None,
                 images: dict[str, dict] | None = None, version: str = "1.41"):
        super().__init__(self._no_connection, version=version)
        self._info = info or {}
        self._build = build or []
        self._push = push or []
        self._load = load or []
        self._images = images or {}
        self.calls: list[tuple] = []

    @staticmethod
    def _no_connection(timeout):
        raise AssertionError("FakeDockerAPI makes no connection")

    def info(self):
        return self._info

    def inspect_image(self, ref):
        if ref not in self._images:
            raise wire.NotFound(404, f"No such image: {ref}")
        return self._images[ref]

    def build(self, context, **kw):
        self.calls.append(("build", kw))
        yield from self._build

    def push(self, repository, tag, auth_header, platform=None):
        self.calls.append(("push", repository, tag, {"auth_header": auth_header,
                                                     "platform": platform}))
        yield from self._push

    def load_image(self, data):
        self.calls.append(("load", b"".join(data) if not isinstance(data, bytes) else data))
        yield from self._load

    def create_container(self, config, name):
        self.calls.append(("create", config["Image"], {"name": name, **config}))
        return {"Id": "c0ffee"}

    def start(self, cid):
        self.calls.append(("start", cid))

    def put_archive(self, cid, path, data):
        self.calls.append(("put", cid, path))

    def remove_container(self, cid, *, force=True, v=True):
        self.calls.append(("remove", cid, force))

    def create_network(self, name, **kw):
        self.calls.append(("create_network", name, kw))
        return {"Id": "net0"}

    def remove_network(self, net):
        self.calls.append(("remove_network", net))


class NoEngine:
    """Stands in for the Engine class where a test must never reach an engine:
    connecting fails as it does with no engine running."""

    @classmethod
    def connect(cls, *a, **kw):
        raise EngineUnavailable("no Docker engine in unit tests")


# -- registries, for imagekit.registry.Registry ----------------------------------

class FakeResponse:
    """What requests would hand registry.Registry: a status, headers (case
    insensitive, as requests' are) and a JSON body or raw bytes."""

    def __init__(self, status: int, headers: dict | None = None, body: dict | None = None,
                 raw: bytes | None = None):
        from requests.structures import CaseInsensitiveDict
        self.status_code, self.headers, self.reason = status, CaseInsensitiveDict(headers), ""
        self._body, self._raw = body, raw

    def json(self):
        if self._body is None:
            if self._raw:
                return json.loads(self._raw)
            raise ValueError("no body")
        return self._body

    def iter_content(self, size):
        if self._raw is not None:
            yield self._raw
        elif self._body is not None:
            yield json.dumps(self._body).encode()

    @property
    def content(self) -> bytes:
        return getattr(self, "_content", b"")

    def close(self):
        pass


class FakeSession:
    """Answers from a script; records where each request went and its headers."""

    def __init__(self, answers):
        self.answers = answers
        self.sent: list[tuple[str, str, dict]] = []
        self.auth = None
        self.headers: dict = {}

    def request(self, method, url, headers=None, **kw):
        self.sent.append((method, url, dict(headers or {})))
        return self.answers(method, url, headers or {}, kw)


def registry_with(answers, host="reg.example.com", auth=None, clock=None):
    """A registry.Registry whose every request goes to ANSWERS(method, url,
    headers, kw); (the Registry, its FakeSession)."""
    import types

    from imagekit.registry import Registry
    reg = Registry(host, auth, **({"clock": clock} if clock else {}))
    s = FakeSession(answers)
    reg._local = types.SimpleNamespace(session=s)    # the same session in every thread
    return reg, s


def _sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


class FakeRegistry:
    """A registry's distribution API in memory, as FakeSession's answers:
    blobs (POST, then PUT ?digest= with the bytes), manifests by tag and by
    digest, Basic auth when `user` is given, and what differs between
    registries: `referrers_api` (GET /v2/<name>/referrers/<digest> lists the
    manifests whose subject is that digest; otherwise 404, as distribution 2.8
    answers), `subject_header` (a manifest PUT with a subject is answered with
    OCI-Subject), `refuse` (a function of (media type, manifest) giving the
    error body of a 400 answer, or None to take it)."""

    def __init__(self, host: str = "reg.example.com", *, user: str = "", password: str = "",
                 referrers_api: bool = False, subject_header: bool = False,
                 refuse: Callable[[str, dict], dict | None] | None = None):
        self.host, self.user, self.password = host, user, password
        self.referrers_api, self.subject_header, self.refuse = referrers_api, subject_header, refuse
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, tuple[str, bytes]] = {}     # digest -> (media type, bytes)
        self.tags: dict[tuple[str, str], str] = {}            # (repo, tag) -> digest
        self.requests: list[tuple[str, str]] = []             # (method, path)

    def seed(self, repo: str, tag: str, media_type: str, data: bytes) -> str:
        """A manifest the registry holds under REPO:TAG (a pushed image); its digest."""
        digest = _sha256(data)
        self.manifests[digest] = (media_type, data)
        self.tags[(repo, tag)] = digest
        return digest

    def session(self, auth=None):
        """(a registry.Registry talking to this registry, its FakeSession)."""
        return registry_with(self, self.host, auth)

    def __call__(self, method: str, url: str, headers: dict, kw: dict) -> FakeResponse:
        import base64
        import urllib.parse
        parts = urllib.parse.urlsplit(url)
        path = parts.path
        self.requests.append((method, path))
        if self.user:
            good = "Basic " + base64.b64encode(f"{self.user}:{self.password}".encode()).decode()
            if headers.get("Authorization") != good:
                return FakeResponse(401, {"WWW-Authenticate": 'Basic realm="fake"'},
                                    {"errors": [{"code": "UNAUTHORIZED", "message": "auth"}]})
        if path == "/v2/":
            return FakeResponse(200, body={})
        data = kw.get("data")
        body = b"" if data is None else data if isinstance(data, bytes) else b"".join(data)
        repo, _, rest = path[len("/v2/"):].partition("/blobs/")
        if rest:
            return self._blob(method, repo, rest, parts.query, body)
        repo, _, ref = path[len("/v2/"):].partition("/manifests/")
        if ref:
            return self._manifest(method, repo, ref, headers, body)
        repo, _, subject = path[len("/v2/"):].partition("/referrers/")
        if subject and self.referrers_api and method == "GET":
            found = [{"mediaType": mt, "digest": d, "size": len(m),
                      "artifactType": json.loads(m).get("artifactType", "")}
                     for d, (mt, m) in self.manifests.items()
                     if (json.loads(m).get("subject") or {}).get("digest") == subject]
            return FakeResponse(200, {"Content-Type": "application/vnd.oci.image.index.v1+json"},
                                {"schemaVersion": 2, "manifests": found,
                                 "mediaType": "application/vnd.oci.image.index.v1+json"})
        return FakeResponse(404, raw=b"404 page not found")

    def _blob(self, method, repo, rest, query, body) -> FakeResponse:
        import urllib.parse
        if method == "HEAD":
            held = self.blobs.get(rest)
            return FakeResponse(404) if held is None else \
                FakeResponse(200, {"Content-Length": str(len(held)), "Docker-Content-Digest": rest})
        if method == "POST":
            return FakeResponse(202, {"Location": f"/v2/{repo}/blobs/uploads/u{len(self.requests)}"})
        digest = dict(urllib.parse.parse_qsl(query)).get("digest", "")
        if _sha256(body) != digest:
            return FakeResponse(400, body={"errors": [{"code": "DIGEST_INVALID",
                                                       "message": "digest did not match"}]})
        self.blobs[digest] = body
        return FakeResponse(201, {"Docker-Content-Digest": digest})

    def _manifest(self, method, repo, ref, headers, body) -> FakeResponse:
        if method in ("GET", "HEAD"):
            digest = ref if ref.startswith("sha256:") else self.tags.get((repo, ref))
            if digest not in self.manifests:
                return FakeResponse(404, body={"errors": [{"code": "MANIFEST_UNKNOWN",
                                                           "message": "manifest unknown"}]})
            media_type, data = self.manifests[digest]
            head = {"Content-Type": media_type, "Docker-Content-Digest": digest,
                    "Content-Length": str(len(data))}
            return FakeResponse(200, head, raw=data if method == "GET" else None)
        media_type = headers.get("Content-Type", "")
        doc = json.loads(body)
        refused = self.refuse(media_type, doc) if self.refuse else None
        if refused is not None:
            return FakeResponse(400, body=refused)
        digest = _sha256(body)
        if ref.startswith("sha256:") and ref != digest:
            return FakeResponse(400, body={"errors": [{"code": "DIGEST_INVALID"}]})
        self.manifests[digest] = (media_type, body)
        if not ref.startswith("sha256:"):
            self.tags[(repo, ref)] = digest
        answer = {"Docker-Content-Digest": digest}
        if self.subject_header and doc.get("subject"):
            answer["OCI-Subject"] = doc["subject"]["digest"]
        return FakeResponse(201, answer)
