"""Save stage: an image to one archive file, with nothing half-written left
behind (load.py reads it back).

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
Beside it: PATH.sha256 (`sha256sum -c` format), PATH.json (image ID, tags,
sizes, framework, device, smoke result) and PATH.sbom.json (the image's bill of
materials, CycloneDX JSON: sbom.py; listed in a container of the image before
the export starts, and left out with a warning when the image cannot be listed,
e.g. it has no python). All are renamed into place together, after the archive
is complete; a failed or interrupted save leaves none of them."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path

from . import __version__, records
from . import sbom as sbom_stage
from .archive import COMPRESS_ERRORS, GzipStream, ZipStream, sbom_sidecar, sidecars, temp_beside
from .config import Project
from .engine import EngineAPI
from .engine.export import ExportError, Watcher
from .errors import (
    DiskFullError,
    EngineError,
    ImagekitError,
    Interrupted,
    SaveError,
    SbomError,
    UsageError,
)
from .events import Event, Info, Progress, SaveResult, Warn
from .targets import ImageTarget

FORMATS = {"zip": "zip", "zip-compat": "zip", "tar": "tar", "gz": "tar.gz"}
DESCRIBE = {"zip": "a ZIP (deflate, ZIP64)", "zip-compat": "a plain tar named .zip (docker save -o)",
            "tar": "a plain tar", "gz": "a gzip'd tar"}
CHUNK = 4 * 1024 * 1024
QUEUE_CHUNKS = 8
PROGRESS_EVERY = 0.25   # seconds between Progress events
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)
_END = object()


def default_path(stem: str, fmt: str) -> Path:
    return Path(f"{stem}.{FORMATS[fmt]}")


def _file_stem(target: ImageTarget) -> str:
    """NAME-TAG for a catalog image; the reference made file-safe otherwise."""
    ref = target.ref.split("@")[0]
    repo, _, tag = ref.rpartition(":") if ":" in ref.rsplit("/", 1)[-1] else (ref, "", "latest")
    stem = f"{repo.rsplit('/', 1)[-1]}-{tag}"
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in stem)


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


def _list(project: Project, target: ImageTarget, engine: EngineAPI, out: dict) -> None:
    """The bill of materials into OUT["bom"], or what kept it out into OUT["error"]."""
    try:
        out["bom"] = sbom_stage.build(project, target, engine)[0]
    except (SbomError, EngineError) as e:
        out["error"] = e
    except Exception as e:  # noqa: BLE001 - a listing that failed costs the sidecar only
        out["error"] = SbomError(f"{type(e).__name__}: {e}")


def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)




def _small_file(path: Path, text: str) -> Path:
    """A temp file beside `path` holding text, fsync'd; the caller renames it."""
    fd, tmp = temp_beside(path)
    with os.fdopen(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    return Path(tmp)


def save(project: Project, target: ImageTarget, engine: EngineAPI, *, fmt: str = "zip",
         output: Path | None = None, sbom: bool = True) -> Iterator[Event]:
    """Save the target image (NAME:TAG, or a reference) to one archive. Yields
    Info, Progress and a final SaveResult. Raises SaveError (13), DiskFullError
    (15) or Interrupted (130); PATH is only ever the complete archive."""
    if fmt not in FORMATS:
        raise UsageError(f"unknown archive format {fmt!r} (zip, zip-compat, tar, gz)")
    name, ref = target.name, target.ref
    image_id, image_size = target.image_id, target.image.size
    stem = _file_stem(target)
    path = Path(output) if output else default_path(stem, fmt)
    if path.is_dir():
        path = path / default_path(stem, fmt)
    path = path.absolute()
    if not path.parent.is_dir():
        raise SaveError(f"{name}: cannot write {path}: folder {path.parent} does not exist")
    member = f"{stem}.tar"
    rec = records.read(project, target.key)
    facts = {k: (getattr(rec, k, None) if rec else None) or target.fact(k)
             for k in ("framework", "version", "device", "python", "cuda")}
    smoke_mark = asdict(rec.smoke) if rec and rec.smoke else None

    yield Info(name, f"saving {ref} ({image_id[:19]}, {image_size / 1e6:.0f} MB in the engine) to "
                     f"{path} as {DESCRIBE[fmt]}")
    started = time.monotonic()
    temps: list[Path] = []
    committed = False
    stop = threading.Event()
    read = 0
    sink: _Sink | None = None
    lister: threading.Thread | None = None
    listed: dict = {}
    try:
        bom = None
        if sbom:      # listed in a container of the image while the export streams
            lister = threading.Thread(target=_list, args=(project, target, engine, listed),
                                      daemon=True, name="imagekit-save-sbom")
            lister.start()
        try:
            fd, tmp_path = temp_beside(path)
        except OSError as e:
            raise SaveError(f"{name}: cannot write in {path.parent}: {e.strerror or e}") from None
        temps.append(tmp_path)
        with open(fd, "wb", buffering=1024 * 1024) as f:
            sink = _Sink(f)
            write, finish = _writer(fmt, sink, member)
            q: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
            watcher = Watcher()
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
                watcher.feed(item)
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
        try:
            saved = watcher.layout()
        except ExportError as e:
            raise SaveError(f"{name}: the engine's export of {ref}: {e.message}; the partial file "
                            "was removed") from None
        if lister is not None:
            lister.join()
            bom = listed.get("bom")
            if "error" in listed:
                yield Warn(name, f"no bill of materials beside the archive: "
                                 f"{listed['error'].message}")
        digest = sink.sha.hexdigest()
        sha_path, manifest_path = sidecars(path)
        bom_path = sbom_sidecar(path)
        manifest = {
            "archive": path.name, "format": fmt, "member": member if fmt == "zip" else None,
            "bytes": sink.bytes, "sha256": digest, "tar_bytes": read,
            "image": name, "ref": ref, "tags": [ref], "image_id": image_id,
            "config_digest": saved.config_digest, "diff_ids": saved.diff_ids,
            "identity": target.image.identity, "layout": saved.kind, "image_size": image_size,
            "framework": facts["framework"], "framework_version": facts["version"],
            "device": facts["device"], "python": facts["python"], "cuda": facts["cuda"],
            "smoke": smoke_mark, "sbom": bom_path.name if bom is not None else None,
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "imagekit": __version__,
        }
        sha_tmp = _small_file(sha_path, f"{digest}  {path.name}\n")
        temps.append(sha_tmp)
        man_tmp = _small_file(manifest_path, json.dumps(manifest, indent=2) + "\n")
        temps.append(man_tmp)
        bom_tmp = None
        if bom is not None:
            bom_tmp = _small_file(bom_path, sbom_stage.text(bom))
            temps.append(bom_tmp)
        # never pair the new archive with old sidecars
        for old in (sha_path, manifest_path, bom_path):
            with contextlib.suppress(FileNotFoundError):
                old.unlink()
        os.replace(temps[0], path)
        os.replace(sha_tmp, sha_path)
        os.replace(man_tmp, manifest_path)
        if bom_tmp is not None:
            os.replace(bom_tmp, bom_path)
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
        if lister is not None:       # its container is removed before it ends
            lister.join(60)
        if not committed:
            for t in temps:
                with contextlib.suppress(OSError):
                    t.unlink()

    seconds = time.monotonic() - started
    yield SaveResult(name, path=str(path), format=fmt, bytes=manifest["bytes"], tar_bytes=read,
                     sha256=digest, sha256_file=str(sha_path), manifest_file=str(manifest_path),
                     sbom_file=str(bom_path) if bom is not None else "",
                     image_id=image_id, ref=ref, seconds=round(seconds, 2),
                     mb_per_s=round(read / 1e6 / seconds, 1) if seconds > 0 else None)


def _save_progress(name: str, path: Path, read: int, estimate: int, written: int) -> Iterator[Event]:
    yield Progress(name, "export", read, max(estimate, read) if estimate else 0, "reading")
    yield Progress(name, path.name, written, 0, "written")
