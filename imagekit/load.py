"""Load stage: an archive from `imagekit save` (or `docker save`) back into the
engine, verified before anything in the engine changes.

The format is found from the file's first bytes (ZIP, gzip'd tar or tar; a
`--zip-compat` file is a tar). PATH.sha256 is checked first when it is there.
The tar is streamed into the engine (out of the ZIP or gzip on the fly, no
temporary tar) while a small tar reader watches it go by: it hashes the image
config (its sha256 is the image ID) and reads manifest.json. The last chunk is
held back until the whole archive has been read and checked: when the config
does not match its own digest, or the image ID is not the one PATH.json names,
the upload is aborted before its end, and the engine, which applies nothing
before it has the whole archive, is left as it was (exit 14)."""

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
from .errors import ImagekitError, Interrupted, LoadError
from .events import Event, Info, LoadResult, Progress

CHUNK = 4 * 1024 * 1024
PROGRESS_EVERY = 0.25


class TarWatcher:
    """Reads tar headers from bytes as they pass, keeping only small JSON
    members (the config, manifest.json), to find the image config's digest."""

    SMALL = 16 * 1024 * 1024

    def __init__(self) -> None:
        self.buf = bytearray()
        self.left = 0                      # bytes of the current member and its padding
        self.data_left = 0                 # of which member data still to collect
        self.name = ""
        self.collect: bytearray | None = None
        self.next_name: str | None = None  # from a PAX or GNU long-name header
        self.digests: dict[str, str] = {}  # small JSON member -> sha256 hex
        self.small: dict[str, bytes] = {}
        self.ended = False

    def feed(self, data: bytes) -> None:
        if self.collect is None and not self.buf and len(data) <= self.left:
            self.left -= len(data)         # the middle of a layer: nothing to look at
            return
        self.buf += data
        while not self.ended:
            if self.left:
                take = min(self.left, len(self.buf))
                if not take:
                    return
                if self.collect is not None and self.data_left:
                    use = min(take, self.data_left)
                    self.collect += self.buf[:use]
                    self.data_left -= use
                del self.buf[:take]
                self.left -= take
                if not self.left and self.collect is not None:
                    self._finish()
                continue
            if len(self.buf) < 512:
                return
            head = bytes(self.buf[:512])
            del self.buf[:512]
            if not head.strip(b"\0"):
                self.ended = True
                return
            self._header(head)

    def _header(self, head: bytes) -> None:
        name = head[:100].split(b"\0")[0].decode(errors="replace")
        prefix = head[345:500].split(b"\0")[0].decode(errors="replace")
        if prefix and head[257:262] == b"ustar":
            name = f"{prefix}/{name}"
        field = head[124:136]
        if field[0] & 0x80:                          # base-256 size
            size = int.from_bytes(field[1:], "big")
        else:
            try:
                size = int(field.split(b"\0")[0].strip() or b"0", 8)
            except ValueError:
                raise _SourceFailed("the archive is corrupt (a damaged tar header)") from None
        kind = head[156:157]
        self.left, self.data_left, self.collect = size + (-size) % 512, size, None
        if kind in (b"x", b"L"):
            self.name = "\0pax" if kind == b"x" else "\0long"
            self.collect = bytearray()
        else:
            if self.next_name:
                name, self.next_name = self.next_name, None
            self.name = name.removeprefix("./")
            if kind in (b"0", b"\0") and self.name.endswith(".json") and size <= self.SMALL:
                self.collect = bytearray()
        if not self.left and self.collect is not None:
            self._finish()

    def _finish(self) -> None:
        data, self.collect = bytes(self.collect or b""), None
        if self.name == "\0pax":
            for rec in data.decode(errors="replace").split("\n"):
                if " path=" in rec:
                    self.next_name = rec.split(" path=", 1)[1]
        elif self.name == "\0long":
            self.next_name = data.split(b"\0")[0].decode(errors="replace")
        else:
            self.digests[self.name] = hashlib.sha256(data).hexdigest()
            self.small[self.name] = data

    def image_id(self) -> str | None:
        """sha256:<config digest> per manifest.json, after checking the config
        member hashes to its own name. None for archives with no manifest."""
        raw = self.small.get("manifest.json")
        if raw is None:
            return None
        try:
            config = json.loads(raw)[0]["Config"]
        except (ValueError, LookupError, TypeError):
            raise _SourceFailed("manifest.json in the archive is not valid") from None
        got = self.digests.get(config)
        if got is None:
            raise _SourceFailed(f"the archive names config {config} but does not hold it")
        named = config.rsplit("/", 1)[-1].removesuffix(".json")
        if named != got:
            raise _SourceFailed(f"the image config {config} in the archive does not match its "
                                f"digest (sha256:{got[:12]}…): the archive is corrupt")
        return f"sha256:{got}"


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
        want = str((manifest or {}).get("image_id") or "") or None
        kind = sniff(path)
        progress = [0, 0]
        failure: list[str] = []
        watcher = TarWatcher()
        found: dict[str, str | None] = {}

        def source() -> Iterator[bytes]:
            try:
                held = None
                for block in _chunks(path, kind, progress):
                    watcher.feed(block)
                    if held is not None:
                        yield held
                    held = block
                image_id = watcher.image_id()       # all read: check before the last chunk
                if want and image_id and image_id != want:
                    raise _SourceFailed(f"{path}: the archive holds image {image_id[:19]}, but "
                                        f"{manifest_path.name} says {want[:19]}; the archive is "
                                        "not the one saved (nothing was loaded)")
                found["id"] = image_id
                if held is not None:
                    yield held
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
    image_id = found.get("id") or next((x for x in loaded if x.startswith("sha256:")), "")
    if not image_id:
        for ref in refs:
            img = engine.image(ref)
            if img:
                image_id = img.id
                break
    if not image_id:
        raise LoadError(f"{path}: the engine loaded no image from the archive")
    yield LoadResult((manifest or {}).get("image", ""), path=str(path), format=kind, refs=refs,
                     image_id=image_id, checksum=checksum,
                     manifest="image ID matches" if want else "no manifest")
