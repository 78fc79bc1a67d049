"""Load stage: an archive from `imagekit save` (or `docker save`) back into the
engine, verified before anything in the engine changes, and undone when the
engine does more than was asked.

PATH is checked before anything else: a folder, a FIFO, a device, a missing
or unreadable file is a usage error (exit 2); a FIFO is never opened. The
format is found from the file's first bytes (ZIP, gzip'd tar or tar; a
`--zip-compat` file is a tar). PATH.sha256 is checked first when it is there.
A ZIP is read from its central directory before the engine is asked
anything: one that holds more than one tar is refused unless `--image` names
the member (or an image one of them holds).

The tar is streamed into the engine (out of the ZIP or gzip on the fly, no
temporary tar) while export.Watcher reads it as the engine's own tar reader
will, keeping only its JSON documents (each at most DOC_LIMIT, DOCS_LIMIT in
all: memory stays bounded whatever the archive declares). The tar's
end-of-archive marker is held back: the engine cannot finish a tar it has not
seen end, so everything is checked before it can apply anything. The checks:
the archive names exactly one image (manifest.json and index.json both, each
of which one image store reads) unless `--image` picks one, in which case
manifest.json and index.json are rewritten as they pass so that the engine
sees that image alone under that name; the config matches its digest and
PATH.json; the tags are tags. A failed check aborts the upload and the engine
applies nothing (exit 14).

Once the marker is sent, the engine's answer is compared with what was asked:
the tags it reports, the image each names, and the tags the archive names,
before and after. Anything beyond what was asked (or any failure of the
engine's own) is undone: tags it created are removed, tags it moved are put
back, an image it created is removed, so that a failed load leaves the engine
as it was."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import re
import stat
import struct
import threading
import time
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from .archive import sidecars
from .engine import EngineAPI
from .engine.export import (
    ExportError,
    Layout,
    Named,
    Watcher,
    config_of,
    mib,
    norm,
    parse_json,
)
from .errors import ImagekitError, Interrupted, LoadError, UsageError
from .events import Event, Info, LoadResult, Progress
from .peer import peer_text
from .reference import parse_reference

CHUNK = 4 * 1024 * 1024
PROGRESS_EVERY = 0.25
DOC_LIMIT = 4 * 1024 * 1024        # one JSON document of the archive
DOCS_LIMIT = 16 * 1024 * 1024      # all that is kept of it
TRAIL_LIMIT = 1024 * 1024          # zeros after the tar's end (tar writes pad to a record)
SIDECAR_LIMIT = 1024 * 1024        # PATH.json, PATH.sha256
MAX_REFS = 256                     # tags an archive may name
MAX_ZIP_ENTRIES = 10_000
MAX_ZIP_DIRECTORY = 16 * 1024 * 1024
END = bytes(1024)                  # a tar's end-of-archive marker
_ID = re.compile(r"(?:sha256:)?([0-9a-f]{12,64})")
_FULL_ID = re.compile(r"sha256:[0-9a-f]{64}")


class _SourceFailed(Exception):
    """The archive could not be read, or failed a check, while streaming it to
    the engine (not an OSError, so that the HTTP stack passes it through
    unwrapped and the upload is aborted)."""


# -- the path --------------------------------------------------------------------

def _not_a_file(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "is a folder, not an archive"
    if stat.S_ISFIFO(mode):
        return "is a FIFO (named pipe), not a file"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "is a device, not a file"
    if stat.S_ISSOCK(mode):
        return "is a socket, not a file"
    return "is not a regular file"


def _open_regular(path: Path, error: type[ImagekitError]) -> BinaryIO | None:
    """PATH opened for reading once it is known to be a regular file (a FIFO is
    never opened: that would block); None when it does not exist."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except PermissionError:
        raise error(f"{path}: not readable (permission denied)") from None
    except OSError as e:
        raise error(f"{path}: cannot be read: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path}: {_not_a_file(st.st_mode)}")
    try:      # O_NONBLOCK: should it have become a FIFO since, opening does not wait
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | getattr(os, "O_NOCTTY", 0))
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (PermissionError, IsADirectoryError) as e:
        words = "is a folder, not an archive" if isinstance(e, IsADirectoryError) else \
            "not readable (permission denied)"
        raise error(f"{path}: {words}") from None
    except OSError as e:
        raise error(f"{path}: cannot be opened: {e.strerror or e}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise error(f"{path}: {_not_a_file(st.st_mode)}")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def open_archive(path: Path) -> BinaryIO:
    """PATH, checked before any engine call; UsageError (exit 2) in one line."""
    f = _open_regular(path, UsageError)
    if f is None:
        raise UsageError(f"{path}: no such file")
    try:
        f.read(0)
    except OSError as e:
        f.close()
        raise UsageError(f"{path}: not readable: {e.strerror or e}") from None
    return f


def _sidecar(path: Path) -> bytes | None:
    """A sidecar's bytes, or None when there is none; LoadError when it is not
    a file or not one imagekit writes (larger than SIDECAR_LIMIT)."""
    f = _open_regular(path, LoadError)
    if f is None:
        return None
    with f:
        try:
            data = f.read(SIDECAR_LIMIT + 1)
        except OSError as e:
            raise LoadError(f"{path}: cannot be read: {e.strerror or e}") from None
    if len(data) > SIDECAR_LIMIT:
        raise LoadError(f"{path}: larger than {mib(SIDECAR_LIMIT)}; not a sidecar imagekit writes")
    return data


# -- the format --------------------------------------------------------------------

def sniff(source: Path | BinaryIO, name: Path | None = None) -> str:
    """'zip', 'gz' or 'tar' from the first bytes (of the file PATH, or the open
    file NAME); a compat .zip is a 'tar'."""
    if isinstance(source, Path):
        with source.open("rb") as f:
            head = f.read(512)
        name = source
    else:
        source.seek(0)
        head = source.read(512)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith(b"\x1f\x8b"):
        return "gz"
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if head.startswith(b"PK\x05\x06"):
        raise LoadError(f"{name}: an empty ZIP archive (no image in it)")
    raise LoadError(f"{name}: not an image archive (neither a ZIP, a tar nor a gzip'd tar)")


def _sha256_file(f: BinaryIO, label: str) -> Iterator[Event | str]:
    h = hashlib.sha256()
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    done, last = 0, 0.0
    while True:
        block = f.read(CHUNK)
        if not block:
            break
        h.update(block)
        done += len(block)
        if time.monotonic() - last >= PROGRESS_EVERY:
            last = time.monotonic()
            yield Progress("", label, done, size, "verifying")
    yield h.hexdigest()


def _zip_directory(f: BinaryIO) -> tuple[int, int] | None:
    """(entries, central directory bytes) as the ZIP's end records declare
    them, read before zipfile reads the directory itself; None without one."""
    size = f.seek(0, os.SEEK_END)
    tail_len = min(size, 22 + 65535 + 20)
    f.seek(size - tail_len)
    tail = f.read(tail_len)
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) - at < 22:
        return None
    total, cd_size, cd_offset = struct.unpack("<HLL", tail[at + 10:at + 20])
    if (total == 0xFFFF or cd_size == 0xFFFFFFFF or cd_offset == 0xFFFFFFFF) and at >= 20 \
            and tail[at - 20:at - 16] == b"PK\x06\x07":
        z64 = struct.unpack("<Q", tail[at - 12:at - 4])[0]
        if z64 + 56 <= size:
            f.seek(z64)
            rec = f.read(56)
            if rec[:4] == b"PK\x06\x06":
                total, cd_size = struct.unpack("<QQ", rec[32:48])
    return total, cd_size


def _open_zip(f: BinaryIO, path: Path) -> zipfile.ZipFile:
    declared = _zip_directory(f)
    if declared is not None:
        entries, size = declared
        if entries > MAX_ZIP_ENTRIES or size > MAX_ZIP_DIRECTORY:
            raise LoadError(f"{path}: the ZIP archive declares {entries} entries "
                            f"({mib(size)} of directory); an image archive holds a few")
    f.seek(0)
    try:
        return zipfile.ZipFile(f)
    except (zipfile.BadZipFile, ValueError, struct.error, EOFError, OverflowError):
        raise LoadError(f"{path}: not a complete ZIP archive (its central directory is missing "
                        "or damaged; truncated?)") from None
    except OSError as e:
        raise LoadError(f"{path}: reading failed: {e.strerror or e}") from None


def _check_member(info: zipfile.ZipInfo, path: Path) -> None:
    name = peer_text(info.filename)
    if info.flag_bits & 0x1:
        raise LoadError(f"{path}: {name} in the ZIP archive is encrypted; imagekit does not read "
                        "encrypted members")
    if info.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        raise LoadError(f"{path}: {name} in the ZIP archive is compressed with method "
                        f"{info.compress_type}; imagekit reads stored or deflated members "
                        "(`imagekit save --zip` writes deflate)")


def _zip_chunks(zf: zipfile.ZipFile, info: zipfile.ZipInfo, progress: list[int]) \
        -> Iterator[bytes]:
    """The member's bytes, CHUNK at a time: zipfile inflates deflate with a
    bound on its output (max_length), whatever size the member declares."""
    progress[1] = info.file_size
    with zf.open(info) as src:
        while True:
            block = src.read(CHUNK)
            if not block:
                return
            progress[0] += len(block)
            yield block


def _chunks(f: BinaryIO, path: Path, kind: str, progress: list[int],
            member: tuple[zipfile.ZipFile, zipfile.ZipInfo] | None = None) -> Iterator[bytes]:
    """The tar inside the archive, in chunks; any read or format error becomes
    _SourceFailed with one clear line (it also aborts the upload to the engine)."""
    try:
        if kind == "zip":
            assert member is not None
            yield from _zip_chunks(*member, progress)
            return
        f.seek(0)
        src = gzip.GzipFile(fileobj=f, mode="rb") if kind == "gz" else f
        progress[1] = f.seek(0, os.SEEK_END)
        f.seek(0)
        while True:
            block = src.read(CHUNK)
            if not block:
                break
            progress[0] = f.tell()
            yield block
    except _SourceFailed:
        raise
    except zipfile.BadZipFile as e:
        raise _SourceFailed(f"{path}: corrupt ZIP archive ({peer_text(e)})") from None
    except EOFError:
        raise _SourceFailed(f"{path}: truncated archive (the compressed data ends early)") from None
    except gzip.BadGzipFile as e:
        raise _SourceFailed(f"{path}: corrupt gzip data ({peer_text(e)})") from None
    except zlib.error as e:
        raise _SourceFailed(f"{path}: corrupt compressed data ({peer_text(e)})") from None
    except (NotImplementedError, RuntimeError, ValueError) as e:
        raise _SourceFailed(f"{path}: unreadable ZIP member ({peer_text(e)})") from None
    except OSError as e:
        raise _SourceFailed(f"{path}: reading failed: {e.strerror or e}") from None


# -- names -----------------------------------------------------------------------

def familiar(ref: str) -> str:
    """REF as the engine shows it (docker.io/library/ dropped, :latest added);
    ValueError when it is not an image reference."""
    r = parse_reference(ref)
    name = r.name
    if r.domain in ("docker.io", "index.docker.io"):
        name = r.path
    if name.startswith("library/") and name.count("/") == 1 and \
            r.domain in (None, "docker.io", "index.docker.io"):
        name = name.removeprefix("library/")
    tag = r.tag or ("" if r.digest else "latest")
    return name + (f":{tag}" if tag else "") + (f"@{r.digest}" if r.digest else "")


def _split(ref: str) -> tuple[str, str] | None:
    """(repository, tag) of a NAME:TAG ref; None for a digest ref."""
    if "@" in ref:
        return None
    repo, _, tag = ref.rpartition(":")
    return (repo, tag) if repo and "/" not in tag else None


def _id_of(text: str) -> str | None:
    """The hex of an image ID or config digest given as `--image`, or None."""
    m = _ID.fullmatch(text)
    return m[1] if m else None


def _shown(refs, limit: int = 6) -> str:
    refs = list(refs)
    text = ", ".join(peer_text(r, 120) for r in refs[:limit])
    return text + (f" and {len(refs) - limit} more" if len(refs) > limit else "")


# -- what the archive holds -------------------------------------------------------------

@dataclass
class _Image:
    """One image the archive names, with every name it gives it."""

    config: str
    refs: list[str] = field(default_factory=list)
    digests: list[str] = field(default_factory=list)

    def label(self) -> str:
        return self.refs[0] if self.refs else (self.config[:19] or "an image with no config")


def _group(named: list[Named], path: Path) -> list[_Image]:
    """The distinct images (by config digest) that NAMED lists. index.json
    entries whose image the archive does not hold do not count beside a
    manifest.json; alone, they are refused."""
    images: dict[str, _Image] = {}
    unresolved = [n for n in named if n.where == "index.json" and not n.config]
    has_manifest = any(n.where == "manifest.json" for n in named)
    if unresolved and not has_manifest:
        raise _SourceFailed(f"{path}: index.json names {peer_text(unresolved[0].digests[0])}, "
                            "which the archive does not hold (or holds for no linux/amd64 image)")
    for i, n in enumerate(named):
        if n.where == "index.json" and not n.config:
            continue
        key = n.config or f"entry {i}"
        image = images.setdefault(key, _Image(n.config))
        for r in n.refs:
            if r not in image.refs:
                image.refs.append(r)
        image.digests += [d for d in n.digests if d not in image.digests]
    return list(images.values())


def _familiar_refs(named: list[Named], path: Path) -> list[Named]:
    """NAMED with every ref written as the engine shows it; a name that is not
    an image reference, or a manifest.json tag that is not NAME:TAG, refused
    (the engine would stop at it halfway through)."""
    out = []
    for n in named:
        refs = []
        for r in n.refs:
            try:
                f = familiar(r)
                parsed = parse_reference(r)
            except ValueError:
                raise _SourceFailed(f"{path}: {n.where} names {peer_text(repr(r), 120)}, which is "
                                    "not an image reference (nothing was loaded)") from None
            if parsed.name in ("sha256", "docker.io/sha256", "docker.io/library/sha256"):
                raise _SourceFailed(f"{path}: {n.where} names {peer_text(r, 120)}, a name the "
                                    "engine takes for a digest (nothing was loaded)")
            if n.where == "manifest.json" and (not parsed.tag or parsed.digest):
                raise _SourceFailed(f"{path}: manifest.json tags an image "
                                    f"{peer_text(r, 120)}, which is not NAME:TAG "
                                    "(nothing was loaded)")
            refs.append(f)
        out.append(Named(n.where, n.config, tuple(refs), n.digests))
    return out


class _Pick:
    """`--image`: which image of a several-image archive to load, applied to
    manifest.json and index.json as they pass (Watcher's rewrite): only the
    entries of that image are kept, and with a REF only that name."""

    def __init__(self, wanted: str, watcher_docs: Callable[[], dict[str, bytes]],
                 resolve: Callable[[str], str]):
        self.wanted = wanted
        self.hex = _id_of(wanted)
        self.ref: str | None = None
        if self.hex is None:
            try:
                self.ref = familiar(wanted)
            except ValueError as e:
                raise UsageError(f"--image: {e}") from None
        self.docs, self.resolve = watcher_docs, resolve
        self.configs: set[str] = set()      # chosen through index.json

    def _get(self, path: str) -> bytes | None:
        return self.docs().get(self.resolve(path))

    def _named(self, raw: object) -> str | None:
        try:
            return familiar(str(raw)) if raw else None
        except ValueError:
            return None

    def _by_id(self, *digests: str) -> bool:
        return self.hex is not None and any(
            str(d).removeprefix("sha256:").startswith(self.hex) for d in digests if d)

    def _config_in(self, desc: dict, depth: int = 0) -> str:
        if depth > 4:
            return ""
        try:
            digest = str(desc.get("digest") or "")
            body = self._get("blobs/sha256/" + digest.removeprefix("sha256:"))
            doc = parse_json(body, digest) if body is not None else None
        except ExportError:
            return ""
        if isinstance(doc, dict) and isinstance(doc.get("config"), dict):
            return str(doc["config"].get("digest") or "")
        if isinstance(doc, dict) and isinstance(doc.get("manifests"), list):
            for inner in doc["manifests"]:      # a nested index: its image manifests
                if isinstance(inner, dict) and (c := self._config_in(inner, depth + 1)):
                    return c
        return ""

    def __call__(self, name: str, body: bytes) -> bytes:
        try:
            doc = parse_json(body, name)
        except ExportError:
            return body              # not JSON: the checks at the end refuse it
        if name == "manifest.json" and isinstance(doc, list):
            keep = []
            for e in doc:
                if not isinstance(e, dict):
                    continue
                tags = e.get("RepoTags") if isinstance(e.get("RepoTags"), list) else []
                config = config_of(norm(str(e.get("Config") or "")), self._get)
                if self.ref is not None and self.ref in [self._named(t) for t in tags]:
                    keep.append({**e, "RepoTags": [self.ref]})
                elif self._by_id(config) or (self.ref is not None and config in self.configs
                                             and not tags):
                    keep.append(e)
            return json.dumps(keep).encode()
        if name == "index.json" and isinstance(doc, dict) and \
                isinstance(doc.get("manifests"), list):
            keep, digests = [], set()
            for d in doc["manifests"]:
                if not isinstance(d, dict):
                    continue
                notes = d.get("annotations") if isinstance(d.get("annotations"), dict) else {}
                if notes.get("vnd.docker.reference.type") == "attestation-manifest":
                    continue
                config = self._config_in(d)
                if (self.ref is not None and self._named(notes.get("io.containerd.image.name"))
                        == self.ref) or self._by_id(str(d.get("digest") or ""), config):
                    keep.append(d)
                    digests.add(str(d.get("digest")))
                    if config:
                        self.configs.add(config)
            for d in doc["manifests"]:     # attestations of what is kept stay with it
                notes = d.get("annotations") if isinstance(d, dict) and \
                    isinstance(d.get("annotations"), dict) else {}
                if notes.get("vnd.docker.reference.type") == "attestation-manifest" and \
                        notes.get("vnd.docker.reference.digest") in digests:
                    keep.append(d)
            return json.dumps({**doc, "manifests": keep}).encode()
        return body


@dataclass
class _Plan:
    """What the archive holds and what the engine is asked to do with it."""

    image: Layout
    asked: list[str]                 # the tags the engine is to set
    named: list[str]                 # every tag the archive names (as written)
    ids: set[str]                    # what the engine may call the image
    held: int = 0                    # images the archive holds
    env: dict[str, str] = field(default_factory=dict)      # its config's, as ImageInfo has them
    labels: dict[str, str] = field(default_factory=dict)


def _plan(watcher: Watcher, path: Path, pick: _Pick | None, want: str | None,
          manifest_name: str) -> _Plan:
    """The checks made once the tar has passed, before its end goes in."""
    docs = {**watcher.small, **watcher.original}
    if "manifest.json" not in docs and "index.json" not in docs and \
            not any(n in watcher.links for n in ("manifest.json", "index.json")):
        if watcher.members == 0:
            raise _SourceFailed(f"{path}: not an image archive (its tar holds no member at all)")
        raise _SourceFailed(f"{path}: not an image archive (its tar holds neither manifest.json "
                            "nor index.json)")
    try:
        original = _familiar_refs(watcher.inventory(original=True), path)
        named = list(dict.fromkeys(r for n in original for r in n.refs))
        if len(named) > MAX_REFS:
            raise _SourceFailed(f"{path}: the archive names {len(named)} tags; imagekit loads at "
                                f"most {MAX_REFS}")
        images = _group(original, path)
        if not images:
            raise _SourceFailed(f"{path}: the archive names no image (nothing was loaded)")
        if pick is None and len(images) > 1:
            raise _SourceFailed(f"{path}: the archive holds {len(images)} images "
                                f"({_shown(i.label() for i in images)}); load one with --image "
                                "REF (nothing was loaded)")
        sent = _familiar_refs(watcher.inventory(), path) if pick is not None else original
        chosen = _group(sent, path) if pick is not None else images
        if pick is not None and len(chosen) != 1:
            what = "no image" if not chosen else f"{len(chosen)} images"
            raise _SourceFailed(f"{path}: the archive holds {what} named "
                                f"{peer_text(pick.wanted, 120)} (it holds "
                                f"{_shown(i.label() for i in images)}); nothing was loaded")
        image = watcher.layout(both=True)
    except ExportError as e:
        raise _SourceFailed(f"{path}: {e.message.replace('the export', 'the archive')}") from None
    if want and image.config_digest != want:
        raise _SourceFailed(f"{path}: the archive holds image {image.config_digest[:19]}, but "
                            f"{manifest_name} says {peer_text(want[:19])}; the archive is not "
                            "the one saved (nothing was loaded)")
    asked = list(dict.fromkeys(r for n in sent for r in n.refs))
    ids = {image.config_digest, *(d for d in chosen[0].digests if d.startswith("sha256:"))}
    if image.manifest_digest:
        ids.add(image.manifest_digest)
    plan = _Plan(image, asked, named, ids, len(images))
    try:
        config = parse_json(watcher.small[watcher.resolve(image.config_path)], "config")
        run = config.get("config") if isinstance(config, dict) else None
        if isinstance(run, dict):
            plan.env = dict(str(e).partition("=")[::2] for e in run.get("Env") or [])
            plan.labels = {str(k): str(v) for k, v in (run.get("Labels") or {}).items()}
    except (ExportError, KeyError, AttributeError, TypeError):
        pass                            # layout() has read it: it is there and JSON
    return plan


# -- the engine's side ---------------------------------------------------------------

def _state(engine: EngineAPI, refs: list[str]) -> dict[str, str | None]:
    """What each ref names in the engine now (its image ID), None if nothing."""
    out: dict[str, str | None] = {}
    for r in refs:
        info = engine.image(r)
        out[r] = info.id if info is not None else None
    return out


@dataclass
class _Before:
    tags: dict[str, str | None]
    ids: dict[str, bool]            # the image's possible IDs: held before the load?


def _undo(engine: EngineAPI, before: _Before, refs: list[str]) -> tuple[bool, list[str]]:
    """Put every tag of REFS back as BEFORE has it, and remove an image the
    load created; returns whether there was anything to undo, and what could
    not be undone (one phrase each)."""
    left: list[str] = []
    now = _state(engine, refs)
    changed = any(now[r] != before.tags.get(r) for r in refs)
    for ref in refs:             # moved tags first: they keep the images they name alive
        was = before.tags.get(ref)
        if was is not None and now.get(ref) != was:
            parts = _split(ref)
            try:
                if parts is None:
                    raise LoadError("not a tag")
                engine.tag(was, *parts)
            except ImagekitError as e:
                left.append(f"{peer_text(ref, 120)} could not be put back on {was[:19]} "
                            f"({peer_text(e.message, 120)})")
    for ref in refs:
        if before.tags.get(ref) is None and now.get(ref) is not None:
            try:
                engine.remove_image(ref)
            except ImagekitError as e:
                left.append(f"{peer_text(ref, 120)} could not be removed "
                            f"({peer_text(e.message, 120)})")
    for image_id, held in before.ids.items():
        if not held and engine.image(image_id) is not None:
            changed = True
            try:
                engine.remove_image(image_id)
            except ImagekitError as e:
                left.append(f"image {image_id[:19]} could not be removed "
                            f"({peer_text(e.message, 120)})")
    after = _state(engine, refs)
    left += [f"{peer_text(r, 120)} names {after[r][:19]}" for r in refs   # type: ignore[index]
             if after[r] != before.tags.get(r) and not any(peer_text(r, 120) in x for x in left)]
    return changed, left


def _verify(engine: EngineAPI, plan: _Plan, loaded: list[str]) -> str:
    """'' when the engine did what was asked and no more; else what it did."""
    refs, ids = [], []
    for x in loaded:
        if _FULL_ID.fullmatch(x):
            ids.append(x)
            continue
        try:
            refs.append(familiar(x))
        except ValueError:
            refs.append(x)
    extra = [r for r in refs if r not in plan.asked]
    if extra:
        return f"the engine loaded {_shown(extra)}, which the archive checked does not name"
    strange = [i for i in ids if i not in plan.ids]
    if strange:
        return f"the engine loaded image {peer_text(strange[0][:19])}, not the archive's"
    missing = [r for r in plan.asked if r not in refs]
    if missing:
        return f"the engine did not report loading {_shown(missing)}"
    store = ""
    for r in plan.asked or ids[:1]:
        held = engine.image(r)
        if held is None:
            return f"the engine holds no {peer_text(r, 120)} after the load"
        same = not held.diff_ids or list(held.diff_ids) == plan.image.diff_ids
        if same and held.id not in plan.ids:
            # the classic store's ID is the config digest; the containerd store's is the
            # manifest's, one it writes itself for an archive in the legacy layout: there
            # the layers and the config's run-time fields say whether it is the image
            store = store or engine.facts().store
            same = store != "classic" and bool(held.diff_ids) and \
                held.env == plan.env and held.labels == plan.labels
        if not same:
            return (f"the engine holds {held.id[:19]} under {peer_text(r, 120)}, which is not "
                    f"the archive's image {plan.image.config_digest[:19]}")
    if not plan.asked and not ids:
        return "the engine loaded no image from the archive"
    return ""


# -- the stream ------------------------------------------------------------------

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


def _scan(zf: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> list[str]:
    """The refs and config digests the tar member INFO names, read through
    (no engine, bounded memory as for a load)."""
    w = Watcher(keep=DOC_LIMIT, budget=DOCS_LIMIT, strict=True)
    try:
        for block in _chunks(None, path, "zip", [0, 0], (zf, info)):  # type: ignore[arg-type]
            w.feed(block)
            if w.ended:
                break
        named = _familiar_refs(w.inventory(), path)
        return [r for n in named for r in n.refs] + [n.config for n in named if n.config]
    except (_SourceFailed, ExportError):
        return []


def _zip_member(zf: zipfile.ZipFile, path: Path, image: str | None) \
        -> tuple[zipfile.ZipInfo, str | None]:
    """The ZIP member to load, and the --image left to pick within it."""
    files = [i for i in zf.infolist() if not i.is_dir()]
    if not files:
        raise LoadError(f"{path}: the ZIP archive holds no file")
    tars = [i for i in files if i.filename.lower().endswith(".tar")]
    pool = tars or files
    if image:
        for i in files:
            base = i.filename.rsplit("/", 1)[-1]
            if image in (i.filename, base, base[:-4] if base.lower().endswith(".tar") else base):
                _check_member(i, path)
                return i, None
    if len(pool) == 1:
        _check_member(pool[0], path)
        return pool[0], image
    names = _shown(i.filename for i in pool)
    what = f"{len(pool)} tars" if tars else f"{len(pool)} files and no .tar"
    if not image:
        raise LoadError(f"{path}: the ZIP archive holds {what} ({names}); load one with "
                        "--image MEMBER (or --image REF, an image it holds); nothing was loaded")
    try:
        want = familiar(image) if _id_of(image) is None else None
    except ValueError:
        raise UsageError(f"--image: {peer_text(image, 120)} is neither a member of {path} "
                         f"({names}) nor an image reference") from None
    hexid = _id_of(image)
    holding = []
    for i in pool:
        _check_member(i, path)
        names = _scan(zf, i, path)
        if want in names or (hexid and any(n.removeprefix("sha256:").startswith(hexid)
                                           for n in names if n.startswith("sha256:"))):
            holding.append(i)
    if len(holding) != 1:
        what = "none" if not holding else f"{len(holding)} of them"
        raise LoadError(f"{path}: {peer_text(image, 120)} is in {what} of the ZIP archive's "
                        f"members ({names}); nothing was loaded")
    return holding[0], image


def load(path: Path, engine: EngineAPI | Callable[[], EngineAPI],
         image: str | None = None) -> Iterator[Event]:
    """Load an image archive made by save (or by `docker save`). ENGINE is the
    engine, or a function that connects to it (called once the archive has
    passed the checks that need no engine). IMAGE (`--image`) picks one image
    of an archive that holds several. Yields Info, Progress and a final
    LoadResult. Raises UsageError (2) for a PATH that is not a readable file,
    LoadError (14), Interrupted (130); on LoadError the engine holds nothing
    new and no tag moved."""
    path = Path(path)
    f = open_archive(path)
    with f:
        yield from _load(path, f, engine, image)


def _load(path: Path, f: BinaryIO, engine: EngineAPI | Callable[[], EngineAPI],
          image: str | None) -> Iterator[Event]:
    sha_path, manifest_path = sidecars(path)
    label = path.name
    checksum = "no sidecar"
    released = False
    before: _Before | None = None
    plan: _Plan | None = None
    conn: EngineAPI | None = None
    cancel = threading.Event()           # Ctrl-C: the upload thread stops before the end
    try:
        sha_raw = _sidecar(sha_path)
        if sha_raw is not None:
            try:
                expected = sha_raw.decode().split()[0].lower()
            except (IndexError, UnicodeDecodeError):
                raise LoadError(f"{sha_path}: unreadable checksum file") from None
            got = ""
            try:
                for item in _sha256_file(f, label):
                    if isinstance(item, str):
                        got = item
                    else:
                        yield item
            except OSError as e:
                raise LoadError(f"{path}: reading failed: {e.strerror or e}") from None
            if got != expected:
                raise LoadError(f"{path}: checksum mismatch: {sha_path.name} says "
                                f"{peer_text(expected[:16])}…, the file is {got[:16]}…; the "
                                "archive is corrupt or truncated")
            checksum = "verified"
            yield Info("", f"{label}: sha256 matches {sha_path.name}")
        manifest = None
        man_raw = _sidecar(manifest_path)
        if man_raw is not None:
            try:
                manifest = parse_json(man_raw, manifest_path.name)
            except ExportError as e:
                raise LoadError(f"{manifest_path}: unreadable manifest: "
                                f"{e.message.replace(' in the export', '')}") from None
            if not isinstance(manifest, dict):
                raise LoadError(f"{manifest_path}: unreadable manifest: not a JSON object")
        # the config digest (older sidecars: image_id, which was the config digest)
        want = str((manifest or {}).get("config_digest") or (manifest or {}).get("image_id")
                   or "") or None
        try:
            kind = sniff(f, path)
        except OSError as e:
            raise LoadError(f"{path}: reading failed: {e.strerror or e}") from None
        member = None
        if kind == "zip":
            zf = _open_zip(f, path)
            info, image = _zip_member(zf, path, image)
            member = (zf, info)
            if len(zf.infolist()) > 1:
                yield Info("", f"{label}: loading {peer_text(info.filename, 120)} from the ZIP "
                               "archive")
        progress = [0, 0]
        failure: list[str] = []
        holder: list[Watcher] = []
        pick = _Pick(image, lambda: holder[0].small, lambda p: holder[0].resolve(p)) \
            if image else None
        watcher = Watcher(keep=DOC_LIMIT, budget=DOCS_LIMIT, strict=True, rewrite=pick)
        holder.append(watcher)
        conn = engine if hasattr(engine, "load") else engine()  # type: ignore[operator]

        def source() -> Iterator[bytes]:
            nonlocal released, before, plan
            try:
                for block in _chunks(f, path, kind, progress, member):
                    if cancel.is_set():
                        raise _SourceFailed(f"{path}: interrupted")
                    out = watcher.feed(block)
                    if out:
                        yield out
                    if watcher.ended:
                        if plan is None:     # all read: check before the end goes in
                            plan = _plan(watcher, path, pick, want, manifest_path.name)
                        if watcher.trailing_junk or watcher.trailing > TRAIL_LIMIT:
                            raise _SourceFailed(
                                f"{path}: the archive goes on after the end of its tar "
                                f"({'data' if watcher.trailing_junk else 'more than 1 MiB'}); "
                                "not an archive imagekit loads (nothing was loaded)")
                if plan is None:
                    raise _SourceFailed(f"{path}: truncated archive (unexpected EOF: the tar stops "
                                        "before its end-of-archive marker); nothing was loaded")
                try:
                    refs = list(dict.fromkeys([*plan.named, *plan.asked]))
                    before = _Before(_state(conn, refs),
                                     {i: conn.image(i) is not None for i in sorted(plan.ids)})
                except ImagekitError as e:
                    raise _SourceFailed(f"{path}: reading the engine's tags before the load "
                                        f"failed: {e.message}") from None
                if cancel.is_set():
                    raise _SourceFailed(f"{path}: interrupted")
                released = True
                yield END
            except ExportError as e:
                failure.append(f"{path}: {e.message.replace('the export', 'the archive')}")
                raise _SourceFailed(e.message) from None
            except _SourceFailed as e:
                failure.append(str(e) if str(e).startswith(str(path)) else f"{path}: {e}")
                raise

        outcome = yield from load_with_progress(
            conn, source(), lambda: Progress("", label, progress[0], progress[1], "loading"))
        if failure:  # the archive's own error explains the engine's
            raise LoadError(failure[0] if "nothing was loaded" in failure[0] else
                            f"{failure[0]}; nothing was loaded")
        err = outcome.get("error")
        if err is not None and not isinstance(err, ImagekitError):
            raise err
        loaded: list[str] = outcome.get("loaded") or []
        if not released or plan is None or before is None:
            if isinstance(err, ImagekitError):
                raise LoadError(f"{path}: the engine refused the archive: "
                                f"{peer_text(err.message)}; nothing was loaded")
            raise LoadError(f"{path}: the engine ended the load before the archive was checked "
                            f"(it reports: {_shown(loaded) or 'nothing'})")
        problem = f"the engine refused the archive: {peer_text(err.message)}" \
            if isinstance(err, ImagekitError) else _verify(conn, plan, loaded)
        if not problem:
            others = [r for r in plan.named if r not in plan.asked]
            now = _state(conn, others)
            moved = [r for r in others if now[r] != before.tags.get(r)]
            if moved:
                problem = f"the engine also changed {_shown(moved)}, which was not asked for"
        if problem:
            reported = []
            for x in loaded:
                try:
                    reported.append(x if _FULL_ID.fullmatch(x) else familiar(x))
                except ValueError:
                    reported.append(x)
            refs = list(dict.fromkeys([*plan.named, *plan.asked,
                                       *(x for x in reported if not _FULL_ID.fullmatch(x))]))
            for x in reported:
                if _FULL_ID.fullmatch(x) and x not in before.ids:
                    before.ids[x] = False
            changed, left = _undo(conn, before, refs)
            undone = f"undoing it left: {'; '.join(left)}" if left else \
                "the load was undone (the engine is as it was)" if changed else \
                "nothing was loaded"
            raise LoadError(f"{path}: {problem}; {undone}")
    except KeyboardInterrupt:
        cancel.set()
        if released and plan is not None and before is not None and conn is not None:
            try:
                left = _undo(conn, before, list(dict.fromkeys([*plan.named, *plan.asked])))[1]
            except (ImagekitError, KeyboardInterrupt):
                left = ["unknown"]
            raise Interrupted(f"{path}: load interrupted after the whole archive was sent; "
                              + ("what the engine had applied by then was undone, but it may "
                                 "still be finishing the load: check its tags" if not left else
                                 "the engine may hold the image: check its tags")) from None
        raise Interrupted(f"{path}: load interrupted; the engine discards a partial load") from None

    ids = [x for x in loaded if _FULL_ID.fullmatch(x)]
    image_info = conn.image(plan.asked[0]) if plan.asked else \
        conn.image(ids[0]) if ids else None
    lay = plan.image
    refs = plan.asked
    if plan.held > 1:
        yield Info("", f"{label}: loaded {_shown(refs) or lay.config_digest[:19]}, one of the "
                       f"{plan.held} images the archive holds")
    yield LoadResult(peer_text(str((manifest or {}).get("image", "")), 120), path=str(path),
                     format=kind, refs=refs,
                     image_id=image_info.id if image_info is not None else lay.config_digest,
                     config_digest=lay.config_digest, checksum=checksum,
                     manifest="config digest matches" if want else "no manifest")

