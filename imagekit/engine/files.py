"""The layers of an image export (`docker save`, any layout export.py reads),
streamed once, each layer tar handed to a reader as it passes (uncompressed,
gzip or zstd): `inspect` counts sizes and whiteouts with it; `image_files`
keeps each entry as what a rebuild must reproduce: kind, mode, owner,
time, size, the sha256 of a file's bytes, a link's target, extended
attributes. Nothing is written to disk. Layers whose diff ID the caller
already knows to be alike can be passed over unread where the export names
blobs by diff ID (the classic store's uncompressed layers)."""

from __future__ import annotations

import hashlib
import io
import posixpath
import re
import tarfile
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import dataclass, field
from typing import IO, Generic, TypeVar

from . import export

READ = 1 << 20
T = TypeVar("T")
_BUILD_ARGS = re.compile(r"^\|(\d+) ")
XATTR = "SCHILY.xattr."
_KINDS = {tarfile.REGTYPE: "file", tarfile.AREGTYPE: "file", tarfile.DIRTYPE: "dir",
          tarfile.SYMTYPE: "symlink", tarfile.LNKTYPE: "hardlink", tarfile.CHRTYPE: "device",
          tarfile.BLKTYPE: "device", tarfile.FIFOTYPE: "fifo", tarfile.CONTTYPE: "file"}


@dataclass(frozen=True)
class FileEntry:
    """One entry of a layer tar."""

    kind: str                 # file, dir, symlink, hardlink, device, fifo
    mode: int
    uid: int
    gid: int
    mtime: float              # seconds; PAX gives fractions where the engine wrote them
    size: int = 0
    content: str = ""         # a file's sha256, a link's target, a device's major:minor
    xattrs: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class ImageFiles:
    """An image's layers, bottom first: diff ID, the instruction that made
    it ("" where the history does not say), and its entries by path (no
    leading slash), or None for a layer passed over unread."""

    diff_ids: list[str]
    steps: list[str]
    layers: list[dict[str, FileEntry] | None] = field(default_factory=list)


class _Chunks(io.RawIOBase):
    """A readable stream over an iterator of byte chunks."""

    def __init__(self, chunks: Iterable[bytes]):
        self._chunks: Iterator[bytes] = iter(chunks)
        self._left = memoryview(b"")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while not self._left:
            chunk = next(self._chunks, None)
            if chunk is None:
                return 0
            self._left = memoryview(chunk)
        n = min(len(buffer), len(self._left))
        buffer[:n] = self._left[:n]
        self._left = self._left[n:]
        return n


def _stream(chunks: Iterable[bytes]) -> io.BufferedReader:
    return io.BufferedReader(_Chunks(chunks), READ)


def _sha256(f) -> str:
    digest = hashlib.sha256()
    for piece in iter(lambda: f.read(READ), b""):
        digest.update(piece)
    return "sha256:" + digest.hexdigest()


def _opened(f) -> IO[bytes]:
    """A layer blob as a tar stream tarfile's r|* reads: zstd undone here
    (tarfile undoes gzip itself)."""
    head = f.read(4)
    raw = _stream([head, *iter(lambda: f.read(READ), b"")])
    if export.compression_of(head) == "zstd":
        import zstandard
        return zstandard.ZstdDecompressor().stream_reader(raw)
    return raw


def entries_of(layer: IO[bytes]) -> dict[str, FileEntry]:
    """The entries of one layer tar (plain or gzip)."""
    entries: dict[str, FileEntry] = {}
    with tarfile.open(fileobj=layer, mode="r|*") as tar:
        for m in tar:
            kind = _KINDS.get(m.type, "other")
            content = ""
            if m.isfile():
                content = _sha256(tar.extractfile(m))
            elif m.issym() or m.islnk():
                content = m.linkname
            elif m.ischr() or m.isblk():
                content = f"{m.devmajor}:{m.devminor}"
            xattrs = tuple(sorted((k.removeprefix(XATTR), v) for k, v in m.pax_headers.items()
                                  if k.startswith(XATTR)))
            entries[m.name.removeprefix("./").rstrip("/")] = FileEntry(
                kind, m.mode, m.uid, m.gid, float(m.mtime), m.size if m.isfile() else 0, content,
                xattrs)
    return entries


def _steps(config: dict, layers: int) -> list[str]:
    """The instruction that made each layer, from the config's history."""
    made = [str(h.get("created_by") or "") for h in config.get("history") or []
            if isinstance(h, dict) and not h.get("empty_layer")]
    if len(made) != layers:
        return [""] * layers
    return [_step(s) for s in made]


def _step(text: str) -> str:
    """An instruction as written: "RUN |1 K=V /bin/sh -c CMD" (BuildKit),
    "|1 K=V /bin/sh -c CMD" (classic), "#(nop) ENV …" -> "RUN CMD", "ENV …"."""
    run = text.startswith("RUN ")
    text = text.removeprefix("RUN ")
    if m := _BUILD_ARGS.match(text):          # the build args the step saw: "|N K=V … "
        text, run = text.split(" ", int(m[1]) + 1)[-1], True
    for shell in ("/bin/bash -o pipefail -c ", "/bin/sh -c "):
        if text.startswith(shell):
            text, run = text[len(shell):], True
    if text.startswith("#(nop) "):           # the classic builder's other instructions
        text, run = text[len("#(nop) "):], False
    return ("RUN " if run else "") + " ".join(text.removesuffix(" # buildkit").split())


@dataclass(frozen=True)
class Read(Generic[T]):
    """An export read once: its image, config, and what `read` made of each
    layer, bottom first (None: passed over)."""

    layout: export.Layout
    config: dict
    layers: list[T | None]


def read_layers(chunks: Iterable[bytes], read: Callable[[IO[bytes]], T],
                skip: Collection[str] = ()) -> Read[T]:
    """Stream an export (`engine.save(ref)`) once, handing each layer tar
    (plain or gzip; zstd undone) to `read` as it passes; a blob named by a
    diff ID in `skip` is passed over. Raises export.ExportError for an
    export that is not one image."""
    outer = tarfile.open(fileobj=_stream(chunks), mode="r|")
    small: dict[str, bytes] = {}
    links: dict[str, str] = {}
    done: dict[str, T] = {}
    unread = {d.removeprefix("sha256:") for d in skip}
    for m in outer:
        name = export.norm(m.name)
        if m.issym() or m.islnk():
            links[name] = export.norm(m.linkname if m.islnk() else
                                      posixpath.join(posixpath.dirname(name), m.linkname))
            continue
        if not m.isfile():
            continue
        blob = export.BLOB.match(name)
        if blob and blob[1] in unread:
            continue
        f = outer.extractfile(m)
        if export.wants(name, m.size):
            data = f.read()
            if export.wants(name, m.size, data[:1]):
                small[name] = data
                continue
            f = io.BytesIO(data)
        if name.endswith("layer.tar") or blob:
            done[name] = read(_opened(f))

    def resolve(path: str) -> str:
        return export.follow(links, path)

    found = export.layout(small, resolve)
    config = export.parse_json(small[resolve(found.config_path)], found.config_path)
    return Read(found, config if isinstance(config, dict) else {},
                [done.get(resolve(x.path)) for x in found.layers])


def image_files(chunks: Iterable[bytes], skip: Collection[str] = ()) -> ImageFiles:
    """Every layer's entries (those in `skip` passed over), with the
    instruction that made each."""
    got = read_layers(chunks, entries_of, skip)
    return ImageFiles(got.layout.diff_ids, _steps(got.config, len(got.layers)), got.layers)
