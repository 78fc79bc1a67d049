"""Save and load stages: an image to one archive file and back, with nothing
half-written left behind.

save streams the engine's export (the tar of GET /images/get?names=NAME:TAG,
so `docker load` restores NAME:TAG) straight into the archive: a reader thread
pulls the export while the main thread compresses (zlib releases the GIL) and
writes; no full-size temporary tar. Formats:

- zip         a real ZIP with one member NAME-TAG.tar, deflated (LEVEL), written
              front to back with ZIP64 records (the size is not known up front)
- zip-compat  the plain tar under a .zip name: what `docker save -o x.zip` makes
- tar         the plain tar
- gz          the tar, gzip'd (LEVEL); `docker load -i` reads it as it is

Deflate is the slow part (stdlib zlib at level 1 runs slower than the engine
exports), so it uses ISA-L (the `isal` package, the same deflate format) at
its level 1 when it is installed, stdlib zlib level 1 otherwise, on two
threads (archive.Deflater). The
ZIP is written by archive.ZipStream rather than by zipfile, whose member writer
always compresses with stdlib zlib; zipfile reads it back (load, the tests).

The archive is written to a temporary file beside PATH, fsync'd, and renamed to
PATH only when complete; any failure or Ctrl-C removes the temporary file.
Beside it: PATH.sha256 (`sha256sum -c` format) and PATH.json (image ID, tags,
sizes, framework, device, smoke result).

load reads any of these (the format is found from the file's first bytes),
checks the sidecar checksum first when there is one, streams the tar into the
engine (out of the ZIP or gzip on the fly, no temporary tar), and checks the
loaded image ID against PATH.json when there is one."""

from __future__ import annotations

import contextlib
import errno
import gzip
import hashlib
import json
import os
import queue
import tempfile
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from . import __version__
from . import build as build_stage
from .config import Project
from .engine import Engine
from .errors import DiskFullError, ImagekitError, Interrupted, LoadError, SaveError
from .events import Event, Info, Progress, Result
from .archive import COMPRESS_ERRORS, GzipStream, ZipStream

FORMATS = {"zip": "zip", "zip-compat": "zip", "tar": "tar", "gz": "tar.gz"}
DESCRIBE = {"zip": "a ZIP (deflate, ZIP64)", "zip-compat": "a plain tar named .zip (docker save -o)",
            "tar": "a plain tar", "gz": "a gzip'd tar"}
CHUNK = 4 * 1024 * 1024
QUEUE_CHUNKS = 8
PROGRESS_EVERY = 0.25   # seconds between Progress events
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_END = object()


def default_path(name: str, tag: str, fmt: str) -> Path:
    return Path(f"{name}-{tag}.{FORMATS[fmt]}")


def sidecars(path: Path) -> tuple[Path, Path]:
    """PATH.sha256 and PATH.json."""
    return path.with_name(path.name + ".sha256"), path.with_name(path.name + ".json")


class _Sink:
    """The temporary file as a write-only stream that counts and hashes what
    passes, so the sidecar checksum costs no second read."""

    def __init__(self, f):
        self.f = f
        self.sha = hashlib.sha256()
        self.bytes = 0

    def write(self, data) -> int:
        self.f.write(data)
        self.sha.update(data)
        self.bytes += len(data)
        return len(data)

    def flush(self) -> None:
        self.f.flush()


def _writer(fmt: str, sink: _Sink, member: str) -> tuple[Callable[[bytes], object], Callable[[], None]]:
    """(write, finish) for a format; finish writes trailers, never closes the file."""
    if fmt in ("tar", "zip-compat"):
        return sink.write, lambda: None
    stream = GzipStream(sink) if fmt == "gz" else ZipStream(sink, member, time.time())
    return stream.write, stream.finish


def _pump(chunks: Iterator[bytes], q: queue.Queue, stop: threading.Event) -> None:
    """Reader thread: the engine's export into a bounded queue."""
    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False
    try:
        for chunk in chunks:
            if chunk and not put(chunk):
                return
        put(_END)
    except BaseException as e:  # noqa: BLE001 - handed to the main thread
        put(e)
    finally:
        with contextlib.suppress(Exception):
            chunks.close()  # type: ignore[attr-defined]


def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _temp_beside(path: Path) -> tuple[int, Path]:
    """A hidden temporary file in PATH's folder (so the final rename is atomic),
    with the permissions a plain new file would get (mkstemp makes 0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666 & ~_umask())
    return fd, Path(tmp)


def _small_file(path: Path, text: str) -> Path:
    """A temp file beside `path` holding text, fsync'd; the caller renames it."""
    fd, tmp = _temp_beside(path)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return Path(tmp)


def save(project: Project, name: str, engine: Engine, *, fmt: str = "zip",
         output: Path | None = None, tag: str | None = None) -> Iterator[Event]:
    """Save NAME:TAG to one archive. Yields Info, Progress and a final Result.
    Raises SaveError (13), DiskFullError (15) or Interrupted (130); PATH is only
    ever the complete archive."""
    if fmt not in FORMATS:
        raise SaveError(f"unknown archive format {fmt!r} (zip, zip-compat, tar, gz)")
    spec = project.catalog.get(name)
    tag = tag or spec.model.tags[0]
    ref = f"{name}:{tag}"
    image = engine.image(ref)
    if image is None:
        raise SaveError(f"{name}: {ref} is not built; run `imagekit build {name}` first")
    image_id, image_size = image["Id"], int(image.get("Size") or 0)
    path = Path(output) if output else default_path(name, tag, fmt)
    if path.is_dir():
        path = path / default_path(name, tag, fmt)
    path = path.absolute()
    if not path.parent.is_dir():
        raise SaveError(f"{name}: cannot write {path}: folder {path.parent} does not exist")
    member = f"{name}-{tag}.tar"
    rec = build_stage.load_record(project, image_id) or {}
    if not rec.get("framework"):
        with contextlib.suppress(ImagekitError):
            plan = project.catalog.resolve(name)
            rec = {**rec, "framework": plan.framework, "version": plan.version,
                   "device": plan.device, "python": plan.python, "cuda": plan.cuda}

    yield Info(name, f"saving {ref} ({image_id[:19]}, {image_size / 1e6:.0f} MB in the engine) to "
                     f"{path} as {DESCRIBE[fmt]}")
    started = time.monotonic()
    temps: list[Path] = []
    committed = False
    stop = threading.Event()
    read = 0
    sink: _Sink | None = None
    try:
        try:
            fd, tmp_path = _temp_beside(path)
        except OSError as e:
            raise SaveError(f"{name}: cannot write in {path.parent}: {e.strerror or e}") from None
        temps.append(tmp_path)
        with open(fd, "wb", buffering=1024 * 1024) as f:
            sink = _Sink(f)
            write, finish = _writer(fmt, sink, member)
            q: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
            threading.Thread(target=_pump, args=(engine.save(ref, CHUNK), q, stop),
                             daemon=True, name="imagekit-save-reader").start()
            last = time.monotonic()
            while True:
                try:
                    item = q.get(timeout=0.5)
                except queue.Empty:
                    continue
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                write(item)
                read += len(item)
                now = time.monotonic()
                if now - last >= PROGRESS_EVERY:
                    last = now
                    yield from _save_progress(name, path, read, image_size, sink.bytes)
            if read == 0:
                raise SaveError(f"{name}: the engine exported nothing for {ref}")
            finish()
            f.flush()
            os.fsync(f.fileno())
        yield from _save_progress(name, path, read, image_size, sink.bytes)
        digest = sink.sha.hexdigest()
        sha_path, manifest_path = sidecars(path)
        manifest = {
            "archive": path.name, "format": fmt, "member": member if fmt == "zip" else None,
            "bytes": sink.bytes, "sha256": digest, "tar_bytes": read,
            "image": name, "ref": ref, "tags": [ref], "image_id": image_id,
            "image_size": image_size,
            "framework": rec.get("framework"), "framework_version": rec.get("version"),
            "device": rec.get("device"), "python": rec.get("python"), "cuda": rec.get("cuda"),
            "smoke": rec.get("smoke"),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "imagekit": __version__,
        }
        sha_tmp = _small_file(sha_path, f"{digest}  {path.name}\n")
        temps.append(sha_tmp)
        man_tmp = _small_file(manifest_path, json.dumps(manifest, indent=2) + "\n")
        temps.append(man_tmp)
        for old in (sha_path, manifest_path):   # never pair the new archive with old sidecars
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
        os.replace(temps[0], path)
        os.replace(sha_tmp, sha_path)
        os.replace(man_tmp, manifest_path)
        committed = True
        _fsync_dir(path.parent)
    except KeyboardInterrupt:
        raise Interrupted(f"{name}: save interrupted; the partial file was removed and {path} "
                          "was not written") from None
    except OSError as e:
        if e.errno in DISK_FULL:
            raise DiskFullError(f"{name}: disk full writing {path} (after "
                                f"{(sink.bytes if sink else 0) / 1e6:.1f} MB); the partial file "
                                "was removed") from None
        raise SaveError(f"{name}: writing {path} failed: {e.strerror or e}; the partial file was "
                        "removed") from None
    except COMPRESS_ERRORS as e:
        raise SaveError(f"{name}: writing {path} failed: {e}; the partial file was removed") \
            from None
    except ImagekitError as e:
        if isinstance(e, SaveError | DiskFullError | Interrupted):
            raise
        raise SaveError(f"{name}: {e.message}; the partial file was removed and {path} was "
                        "not written", details=e.details) from None
    finally:
        stop.set()
        if not committed:
            for t in temps:
                with contextlib.suppress(OSError):
                    t.unlink()

    seconds = time.monotonic() - started
    yield Result(name, "save", {
        "path": str(path), "format": fmt, "bytes": manifest["bytes"], "tar_bytes": read,
        "sha256": digest, "sha256_file": str(sha_path), "manifest_file": str(manifest_path),
        "image_id": image_id, "ref": ref, "seconds": round(seconds, 2),
        "mb_per_s": round(read / 1e6 / seconds, 1) if seconds > 0 else None,
    })


def _save_progress(name: str, path: Path, read: int, estimate: int, written: int) -> Iterator[Event]:
    yield Progress(name, "export", read, max(estimate, read) if estimate else 0, "reading")
    yield Progress(name, path.name, written, 0, "written")


# -- load -----------------------------------------------------------------

class _SourceFailed(Exception):
    """The archive could not be read while streaming it to the engine (not an
    OSError, so that the HTTP stack passes it through unwrapped)."""


def sniff(path: Path) -> str:
    """'zip', 'gz' or 'tar' from the first bytes; a compat .zip is a 'tar'."""
    with path.open("rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "gz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if head.startswith(b"PK\x05\x06"):
        raise LoadError(f"{path}: an empty ZIP archive (no image in it)")
    raise LoadError(f"{path}: not an image archive (neither a ZIP, a tar nor a gzip'd tar)")


def _sha256_file(path: Path) -> Iterator[Event | str]:
    h = hashlib.sha256()
    size = path.stat().st_size
    done, last = 0, 0.0
    with path.open("rb") as f:
        while True:
            block = f.read(CHUNK)
            if not block:
                break
            h.update(block)
            done += len(block)
            if time.monotonic() - last >= PROGRESS_EVERY:
                last = time.monotonic()
                yield Progress("", path.name, done, size, "verifying")
    yield h.hexdigest()


def _chunks(path: Path, kind: str, progress: list[int]) -> Iterator[bytes]:
    """The tar inside the archive, in chunks; any read or format error becomes
    _SourceFailed with one clear line (it also aborts the upload to the engine)."""
    try:
        if kind == "zip":
            try:
                zf = zipfile.ZipFile(path)
            except zipfile.BadZipFile:
                raise _SourceFailed(f"{path}: not a complete ZIP archive (its central directory "
                                    "is missing or damaged; truncated?)") from None
            with zf:
                members = [i for i in zf.infolist() if not i.is_dir()]
                tars = [i for i in members if i.filename.endswith(".tar")] or members
                if not tars:
                    raise _SourceFailed(f"{path}: the ZIP archive holds no file")
                info = tars[0]
                progress[1] = info.file_size
                with zf.open(info) as src:
                    while True:
                        block = src.read(CHUNK)
                        if not block:
                            break
                        progress[0] += len(block)
                        yield block
            return
        with path.open("rb") as raw:
            src = gzip.GzipFile(fileobj=raw, mode="rb") if kind == "gz" else raw
            progress[1] = path.stat().st_size
            while True:
                block = src.read(CHUNK)
                if not block:
                    break
                progress[0] = raw.tell()
                yield block
    except _SourceFailed:
        raise
    except zipfile.BadZipFile as e:
        raise _SourceFailed(f"{path}: corrupt ZIP archive ({e})") from None
    except EOFError:
        raise _SourceFailed(f"{path}: truncated archive (the compressed data ends early)") from None
    except gzip.BadGzipFile as e:
        raise _SourceFailed(f"{path}: corrupt gzip data ({e})") from None
    except zlib.error as e:
        raise _SourceFailed(f"{path}: corrupt compressed data ({e})") from None
    except OSError as e:
        raise _SourceFailed(f"{path}: reading failed: {e.strerror or e}") from None


def load(path: Path, engine: Engine) -> Iterator[Event]:
    """Load an image archive made by save (or by `docker save`). Yields Info,
    Progress and a final Result. Raises LoadError (14) or Interrupted (130)."""
    path = Path(path)
    if not path.is_file():
        raise LoadError(f"{path}: no such file")
    sha_path, manifest_path = sidecars(path)
    label = path.name
    checksum = "no sidecar"
    try:
        if sha_path.is_file():
            try:
                expected = sha_path.read_text().split()[0].lower()
            except (OSError, IndexError):
                raise LoadError(f"{sha_path}: unreadable checksum file") from None
            got = ""
            for item in _sha256_file(path):
                if isinstance(item, str):
                    got = item
                else:
                    yield item
            if got != expected:
                raise LoadError(f"{path}: checksum mismatch: {sha_path.name} says {expected[:16]}…, "
                                f"the file is {got[:16]}…; the archive is corrupt or truncated")
            checksum = "verified"
            yield Info("", f"{label}: sha256 matches {sha_path.name}")
        manifest = None
        if manifest_path.is_file():
            try:
                manifest = json.loads(manifest_path.read_text())
            except (OSError, json.JSONDecodeError) as e:
                raise LoadError(f"{manifest_path}: unreadable manifest: {e}") from None
        kind = sniff(path)
        progress = [0, 0]
        failure: list[str] = []

        def source() -> Iterator[bytes]:
            try:
                yield from _chunks(path, kind, progress)
            except _SourceFailed as e:
                failure.append(str(e))
                raise

        # the upload runs in a thread so that progress can be shown while it goes
        outcome: dict = {}

        def upload() -> None:
            try:
                outcome["items"] = list(engine.load(source()))
            except BaseException as e:  # noqa: BLE001 - handed to the main thread
                outcome["error"] = e

        worker = threading.Thread(target=upload, daemon=True, name="imagekit-load")
        worker.start()
        while worker.is_alive():
            worker.join(PROGRESS_EVERY)
            yield Progress("", label, progress[0], progress[1], "loading")
        if failure:  # the archive's own error explains the engine's
            raise LoadError(failure[0])
        err = outcome.get("error")
        if isinstance(err, ImagekitError):
            raise LoadError(f"{path}: {err.message}")
        if err is not None:
            raise err
        refs: list[str] = []
        loaded_ids: list[str] = []
        for item in outcome.get("items") or []:
            if "errorDetail" in item or "error" in item:
                detail = item.get("errorDetail") or {}
                msg = " ".join(str(detail.get("message") or item.get("error")).split())
                raise LoadError(f"{path}: the engine refused the archive: {msg}")
            text = str(item.get("stream") or "").strip()
            if text.startswith("Loaded image: "):
                refs.append(text.removeprefix("Loaded image: ").strip())
            elif text.startswith("Loaded image ID: "):
                loaded_ids.append(text.removeprefix("Loaded image ID: ").strip())
    except KeyboardInterrupt:
        raise Interrupted(f"{path}: load interrupted; the engine discards a partial load") from None

    image_id = loaded_ids[0] if loaded_ids else ""
    for ref in refs:
        img = engine.image(ref)
        if img:
            image_id = img["Id"]
            break
    if not image_id:
        raise LoadError(f"{path}: the engine loaded no image from the archive")
    matches = None
    if manifest and manifest.get("image_id"):
        matches = manifest["image_id"] == image_id
        if not matches:
            raise LoadError(f"{path}: loaded image {image_id[:19]}, but {manifest_path.name} says "
                            f"{str(manifest['image_id'])[:19]}; the archive is not the one saved")
    yield Result((manifest or {}).get("image", ""), "load", {
        "path": str(path), "format": kind, "refs": refs, "image_id": image_id,
        "checksum": checksum, "manifest": "image ID matches" if matches else "no manifest",
    })
