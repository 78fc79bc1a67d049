"""Load stage: an archive from `imagekit save` (or `docker save`) back into the
engine, verified before anything in the engine changes.

The format is found from the file's first bytes (ZIP, gzip'd tar or tar; a
`--zip-compat` file is a tar). PATH.sha256 is checked first when it is there.
The tar is streamed into the engine (out of the ZIP or gzip on the fly, no
temporary tar) while export.Watcher watches it go by, keeping its JSON
documents: the image is then read as what it is (the OCI layout of Engine 25+,
else manifest.json), and its config hashed. The last chunk is held back until
the whole archive has been read and checked: when the config does not match
its own digest, or the config digest is not the one PATH.json names, the
upload is aborted before its end, and the engine, which applies nothing before
it has the whole archive, is left as it was (exit 14). The config digest is
the same on every image store, so an archive saved from one store loads into
the other and passes the check; what the engine then calls the image (its own
ID) is shown beside it."""

from __future__ import annotations

import gzip
import hashlib
import json
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

from .archive import sidecars
from .engine import EngineAPI
from .engine.export import ExportError, Layout, Watcher
from .errors import ImagekitError, Interrupted, LoadError
from .events import Event, Info, LoadResult, Progress

CHUNK = 4 * 1024 * 1024
PROGRESS_EVERY = 0.25


def archive_image(watcher: Watcher) -> Layout | None:
    """The image the archive that passed through `watcher` holds (any layout
    of export.py); None for a tar with no image manifest at all. Raises
    _SourceFailed with one line when the archive does not match itself."""
    if "index.json" not in watcher.small and "manifest.json" not in watcher.small:
        return None
    try:
        return watcher.layout()
    except ExportError as e:
        raise _SourceFailed(e.message.replace("the export", "the archive")) from None


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


def load_with_progress(engine: EngineAPI, chunks: Iterator[bytes],
                       progress: Callable[[], Event]):
    """Run engine.load(chunks) in a thread, yielding progress() while it goes;
    returns {"loaded": [...]} or {"error": exception}."""
    outcome: dict = {}

    def upload() -> None:
        try:
            outcome["loaded"] = engine.load(chunks)
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            outcome["error"] = e

    worker = threading.Thread(target=upload, daemon=True, name="imagekit-load")
    worker.start()
    while worker.is_alive():
        worker.join(PROGRESS_EVERY)
        yield progress()
    return outcome


def load(path: Path, engine: EngineAPI) -> Iterator[Event]:
    """Load an image archive made by save (or by `docker save`). Yields Info,
    Progress and a final LoadResult. Raises LoadError (14) or Interrupted (130);
    on LoadError the engine holds nothing new and no tag moved."""
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
            except (OSError, IndexError, UnicodeDecodeError):
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
            except (OSError, ValueError) as e:
                raise LoadError(f"{manifest_path}: unreadable manifest: {e}") from None
            if not isinstance(manifest, dict):
                raise LoadError(f"{manifest_path}: unreadable manifest: not a JSON object")
        # the config digest (older sidecars: image_id, which was the config digest)
        want = str((manifest or {}).get("config_digest") or (manifest or {}).get("image_id")
                   or "") or None
        kind = sniff(path)
        progress = [0, 0]
        failure: list[str] = []
        watcher = Watcher()
        found: dict[str, Layout | None] = {}

        def source() -> Iterator[bytes]:
            try:
                held = None
                for block in _chunks(path, kind, progress):
                    watcher.feed(block)
                    if held is not None:
                        yield held
                    held = block
                image = archive_image(watcher)      # all read: check before the last chunk
                config = image.config_digest if image else None
                if want and config and config != want:
                    raise _SourceFailed(f"{path}: the archive holds image {config[:19]}, but "
                                        f"{manifest_path.name} says {want[:19]}; the archive is "
                                        "not the one saved (nothing was loaded)")
                found["image"] = image
                if held is not None:
                    yield held
            except ExportError as e:
                failure.append(f"{path}: {e.message}")
                raise _SourceFailed(e.message) from None
            except _SourceFailed as e:
                failure.append(str(e) if str(e).startswith(str(path)) else f"{path}: {e}")
                raise

        outcome = yield from load_with_progress(
            engine, source(), lambda: Progress("", label, progress[0], progress[1], "loading"))
        if failure:  # the archive's own error explains the engine's
            raise LoadError(failure[0])
        err = outcome.get("error")
        if isinstance(err, ImagekitError):
            raise LoadError(f"{path}: the engine refused the archive: {err.message}")
        if err is not None:
            raise err
        loaded: list[str] = outcome.get("loaded") or []
    except KeyboardInterrupt:
        raise Interrupted(f"{path}: load interrupted; the engine discards a partial load") from None

    refs = [x for x in loaded if not x.startswith("sha256:")]
    image = found.get("image")
    held = None
    for ref in refs or [x for x in loaded if x.startswith("sha256:")]:
        held = engine.image(ref)
        if held is not None:
            break
    if held is None and image is None:
        raise LoadError(f"{path}: the engine loaded no image from the archive")
    if held is not None and image is not None and list(held.diff_ids) and \
            list(held.diff_ids) != image.diff_ids:
        raise LoadError(f"{path}: the engine holds {held.id[:19]} under "
                        f"{', '.join(refs) or 'the loaded ID'}, whose layers are not the archive's")
    config = image.config_digest if image else ""
    yield LoadResult((manifest or {}).get("image", ""), path=str(path), format=kind, refs=refs,
                     image_id=held.id if held is not None else config, config_digest=config,
                     checksum=checksum,
                     manifest="config digest matches" if want else "no manifest")
