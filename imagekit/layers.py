"""An image read once from the engine's export stream (the `docker save` tar),
as the blobs a registry takes: the engine's own config bytes and each layer,
spooled to a file.

The export is read as what it is (export.py: the OCI layout of Engine 25+,
nested indexes and attestation manifests included, else manifest.json). A
layer the engine stored compressed (gzip or zstd: the containerd image store)
is spooled byte for byte and sent as it is, under the digest its manifest
names; only an uncompressed layer (the classic store, Engine 20.10) is
compressed, as it streams by, and matched to its place at the end. A layer the
engine wrote as a symlink (the same diff in two places) is one blob. Nothing
is held whole in memory or written uncompressed.

The compressed bytes are deterministic (fixed block size, fixed level, no
timestamps), so the same layer read twice gives the same digest: a registry
that holds it from an earlier push is asked, and not sent it again."""

from __future__ import annotations

import hashlib
import io
import json
import posixpath
import re
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from .archive import COMPRESS_ERRORS, GzipStream
from .engine import export
from .errors import DirectPushUnsupported, Interrupted, PushError

DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_LAYER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYER_ZSTD = "application/vnd.oci.image.layer.v1.tar+zstd"

PIECE = 4 * 1024 * 1024      # bytes read from a layer at a time = one deflate block
ZSTD_LEVEL = 3


@dataclass(frozen=True)
class Format:
    """Manifest, config and layer media types, and the layer compression."""

    name: str
    manifest: str
    config: str
    layer: str
    compression: str  # gzip | zstd


FORMATS: dict[str, Format] = {
    "docker": Format("docker", DOCKER_MANIFEST, DOCKER_CONFIG, DOCKER_LAYER_GZIP, "gzip"),
    "oci": Format("oci", OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_GZIP, "gzip"),
    "oci-zstd": Format("oci-zstd", OCI_MANIFEST, OCI_CONFIG, OCI_LAYER_ZSTD, "zstd"),
}


def get_format(name: str) -> Format:
    try:
        return FORMATS[name]
    except KeyError:
        raise PushError(f"unknown push format {name!r}; one of {', '.join(FORMATS)}") from None


@dataclass
class Blob:
    """One blob to push: in memory (config) or spooled to a file (a layer)."""

    digest: str
    size: int
    media_type: str
    path: Path | None = None
    data: bytes | None = field(default=None, repr=False)
    diff_id: str = ""      # a layer's uncompressed sha256 (what the config's rootfs lists)
    raw_size: int = 0      # bytes imagekit compressed into it (0 for a blob sent as stored)
    source: str = ""       # its entry in the export
    stored: bool = False   # sent as the engine stored it (already compressed)
    compression: str = ""  # of a stored blob, from its first bytes: gzip | zstd

    def open(self) -> IO[bytes]:
        if self.data is not None:
            return io.BytesIO(self.data)
        if self.path is None:
            raise PushError(f"blob {self.digest} has no content here")
        return open(self.path, "rb")

    def descriptor(self) -> dict:
        return {"mediaType": self.media_type, "size": self.size, "digest": self.digest}


@dataclass
class Image:
    """What the export held: the config blob and the layer blobs, in order."""

    config: Blob
    layers: list[Blob]
    format: Format
    repo_tags: list[str] = field(default_factory=list)

    @property
    def image_id(self) -> str:
        return self.config.digest

    def blobs(self) -> list[Blob]:
        """Every distinct blob, layers first, config last."""
        seen: dict[str, Blob] = {}
        for b in [*self.layers, self.config]:
            seen.setdefault(b.digest, b)
        return list(seen.values())

    def manifest(self) -> bytes:
        """The image manifest (schema 2), as the exact bytes to PUT; its sha256
        is the manifest digest."""
        doc = {"schemaVersion": 2, "mediaType": self.format.manifest,
               "config": self.config.descriptor(),
               "layers": [b.descriptor() for b in self.layers]}
        return json.dumps(doc, indent=3).encode()

    @property
    def compressed_size(self) -> int:
        return sum(b.size for b in self.blobs())

    @property
    def bytes_compressed(self) -> int:
        """Uncompressed bytes imagekit compressed (0 when every layer was
        stored compressed by the engine, as on the containerd store)."""
        return sum(b.raw_size for b in {x.digest: x for x in self.layers}.values())

    @property
    def layers_stored(self) -> int:
        return sum(1 for b in {x.digest: x for x in self.layers}.values() if b.stored)


@dataclass
class Compressing:
    """Bytes of one layer read and compressed so far (emitted per PIECE);
    `stored`: read only, the engine stored it compressed."""

    source: str
    done: int
    total: int
    stored: bool = False


@dataclass
class LayerReady:
    """One layer compressed and spooled; uploads of it may start."""

    blob: Blob
    seconds: float


class _ChunkReader:
    """Exact-size reads from an iterator of byte chunks (the engine's export),
    copying each byte about once."""

    def __init__(self, chunks: Iterable[bytes], cancel: threading.Event | None = None):
        self.it: Iterator[bytes] = iter(chunks)
        self.head = b""
        self.at = 0
        self.cancel = cancel

    def read(self, n: int) -> bytes:
        """Up to n bytes; fewer only at the end of the stream."""
        parts: list[bytes] = []
        while n > 0:
            if self.at >= len(self.head):
                if self.cancel is not None and self.cancel.is_set():
                    raise Interrupted("push cancelled while reading the export")
                try:
                    self.head, self.at = next(self.it), 0
                except StopIteration:
                    break
                continue
            take = self.head[self.at:self.at + n] if self.at or n < len(self.head) else self.head
            self.at += len(take)
            n -= len(take)
            parts.append(take)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        close = getattr(self.it, "close", None)
        if close is not None:
            close()


@dataclass
class _Member:
    name: str
    size: int
    type: bytes
    linkname: str = ""


def _members(src: _ChunkReader) -> Iterator[tuple[_Member, Callable[[int], bytes]]]:
    """A streaming tar reader for the engine's export: (member, read) per entry,
    `read(n)` giving the member's data in order (what is left unread is skipped).
    Handles ustar, PAX ('x') and GNU long-name ('L', 'K') headers."""
    pax: dict[str, str] = {}
    while True:
        block = src.read(512)
        if len(block) < 512 or block == bytes(512):
            return
        try:
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
        except tarfile.HeaderError as e:
            raise PushError(f"the engine's export is not a readable tar: {e}") from e
        size, pad = info.size, -info.size % 512
        if info.type in (tarfile.XHDTYPE, tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
            data = src.read(size)
            src.read(pad)
            if info.type == tarfile.XHDTYPE:
                for rec in _pax_records(data):
                    pax[rec[0]] = rec[1]
            else:
                key = "path" if info.type == tarfile.GNUTYPE_LONGNAME else "linkpath"
                pax[key] = data.rstrip(b"\0").decode("utf-8", "surrogateescape")
            continue
        if info.type == tarfile.XGLTYPE:
            src.read(size + pad)
            continue
        name = pax.pop("path", info.name)
        linkname = pax.pop("linkpath", info.linkname)
        if "size" in pax:
            size = int(pax.pop("size"))
            pad = -size % 512
        pax.clear()
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
            size_left = 0 if info.type in (tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.DIRTYPE) \
                else size
            src.read(size_left + (pad if size_left else 0))
            yield _Member(name, 0, info.type, linkname), lambda _n: b""
            continue
        left = [size]

        def read(k: int, _left=left) -> bytes:
            k = min(k, _left[0])
            if k <= 0:
                return b""
            data = src.read(k)
            if len(data) < k:
                raise PushError("the engine's export ended in the middle of a file")
            _left[0] -= len(data)
            return data

        yield _Member(name, size, info.type, linkname), read
        while left[0] > 0:
            read(PIECE)
        src.read(pad)


def _pax_records(data: bytes) -> Iterator[tuple[str, str]]:
    at = 0
    while at < len(data):
        sp = data.index(b" ", at)
        length = int(data[at:sp])
        rec = data[sp + 1:at + length - 1]  # without the trailing newline
        key, _, value = rec.partition(b"=")
        yield key.decode(), value.decode("utf-8", "surrogateescape")
        at += length


class _Spool:
    """The sink a compressor writes to: a file, its sha256 and its size."""

    def __init__(self, path: Path):
        self.f = open(path, "wb")
        self.hash = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> None:
        if data:
            self.f.write(data)
            self.hash.update(data)
            self.bytes += len(data)

    def close(self) -> None:
        self.f.close()


class _Zstd:
    def __init__(self, sink: _Spool):
        try:
            import zstandard
        except ImportError:  # pragma: no cover - zstandard is a dependency
            raise PushError("zstd layers need the zstandard package (pip install zstandard)") \
                from None
        self.sink = sink
        self.obj = zstandard.ZstdCompressor(level=ZSTD_LEVEL, threads=2).compressobj()

    def write(self, data: bytes) -> None:
        self.sink.write(self.obj.compress(data))

    def finish(self) -> None:
        self.sink.write(self.obj.flush())


def compress_layer(read: Callable[[int], bytes], path: Path, fmt: Format, source: str, total: int,
                   progress: Callable[[Compressing], None] | None = None,
                   cancel: threading.Event | None = None) -> Blob:
    """Compress one uncompressed layer tar (read with `read(n)`) into `path`;
    return its blob (compressed digest and size, diff ID, raw size)."""
    spool = _Spool(path)
    raw = hashlib.sha256()
    done = 0
    try:
        comp = GzipStream(spool) if fmt.compression == "gzip" else _Zstd(spool)
        try:
            while piece := read(PIECE):
                if cancel is not None and cancel.is_set():
                    raise Interrupted("push cancelled while compressing")
                raw.update(piece)
                comp.write(piece)
                done += len(piece)
                if progress is not None:
                    progress(Compressing(source, done, total))
            comp.finish()
        except COMPRESS_ERRORS as e:
            raise PushError(f"compressing {source} failed: {e}") from e
        finally:
            pool = getattr(getattr(comp, "comp", None), "pool", None)
            if pool is not None:
                pool.shutdown(wait=False, cancel_futures=True)
    finally:
        spool.close()
    return Blob(f"sha256:{spool.hash.hexdigest()}", spool.bytes, fmt.layer, path=path,
                diff_id=f"sha256:{raw.hexdigest()}", raw_size=done, source=source)


LAYER_TAR = re.compile(r"^[^/]+/layer\.tar$")


def _stored(read: Callable[[int], bytes], path: Path, source: str, total: int, compression: str,
            progress: Callable[[Compressing], None] | None = None,
            cancel: threading.Event | None = None) -> Blob:
    """Spool a layer the engine stored compressed, byte for byte (its digest
    is the one the manifest names): nothing is compressed."""
    spool = _Spool(path)
    try:
        while piece := read(PIECE):
            if cancel is not None and cancel.is_set():
                raise Interrupted("push cancelled while reading the export")
            spool.write(piece)
            if progress is not None:
                progress(Compressing(source, spool.bytes, total, stored=True))
    finally:
        spool.close()
    return Blob(f"sha256:{spool.hash.hexdigest()}", spool.bytes, "", path=path, source=source,
                stored=True, compression=compression)


FOREIGN = ("the image has foreign (non-distributable) layers, which imagekit's own push path "
           "does not upload")


def _early_foreign(data: bytes) -> None:
    """An image manifest passing by with a foreign layer: stop before more is
    compressed (the OCI layout's manifests come among the blobs)."""
    try:
        doc = json.loads(data)
    except ValueError:
        return
    if isinstance(doc, dict) and isinstance(doc.get("layers"), list) and \
            any(isinstance(x, dict) and export.is_foreign(str(x.get("mediaType") or ""))
                for x in doc["layers"]):
        raise DirectPushUnsupported(FOREIGN)


def _layer_type(compression: str, fmt: Format) -> str:
    if fmt.name == "docker":
        return DOCKER_LAYER_GZIP
    return OCI_LAYER_ZSTD if compression == "zstd" else OCI_LAYER_GZIP


def read_export(chunks: Iterable[bytes], workdir: Path, fmt: Format, *,
                on_event: Callable[[object], None] | None = None,
                cancel: threading.Event | None = None,
                expect_diff_ids: Sequence[str] | None = None) -> Image:
    """Read a `docker save` tar stream once, in any layout (export.py). A layer
    the engine stored compressed (gzip or zstd: the containerd store) is kept
    as it is; an uncompressed one is compressed into `workdir` as it passes.
    LayerReady is emitted for each, so uploads can start before the export
    ends. Media types and digests come from the export's manifests.

    Raises DirectPushUnsupported for what only the engine path can push
    (foreign layers, several images), PushError when the export does not
    match itself or is not the image expected (`expect_diff_ids`)."""
    emit = on_event or (lambda _e: None)
    src = _ChunkReader(chunks, cancel)
    small: dict[str, bytes] = {}          # the export's JSON documents
    layers: dict[str, Blob] = {}          # export path -> the blob to push
    links: dict[str, str] = {}            # export path -> the path it points to
    n = 0
    try:
        for m, read in _members(src):
            name = export.norm(m.name)
            if m.type in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                target = m.linkname if m.type == tarfile.LNKTYPE else \
                    posixpath.join(posixpath.dirname(name), m.linkname)
                links[name] = export.norm(target)
                continue
            if m.type not in (tarfile.REGTYPE, tarfile.AREGTYPE, tarfile.CONTTYPE):
                continue
            is_layer = bool(LAYER_TAR.match(name) or export.BLOB.match(name))
            if not is_layer and not export.wants(name, m.size):
                continue
            first = read(PIECE)
            if export.wants(name, m.size, first[:1]):
                small[name] = first + read(m.size)
                if export.BLOB.match(name):
                    _early_foreign(small[name])
                continue
            if not is_layer:
                continue
            n += 1
            started = time.monotonic()
            pending = [first]

            def read_layer(k: int, _read=read, _p=pending) -> bytes:
                return _p.pop() if _p else _read(k)

            if kind := export.compression_of(first):
                blob = _stored(read_layer, workdir / f"layer-{n}", name, m.size, kind, emit,
                               cancel)
            else:
                blob = compress_layer(read_layer, workdir / f"layer-{n}", fmt, name, m.size,
                                      emit, cancel)
            layers[name] = blob
            emit(LayerReady(blob, round(time.monotonic() - started, 3)))
    finally:
        src.close()

    def resolve(path: str) -> str:
        return export.follow(links, path)

    try:
        lay = export.layout(small, resolve)
    except export.ExportError as e:
        if e.unsupported:
            raise DirectPushUnsupported(e.message) from None
        raise PushError(f"the engine's export: {e.message}") from None
    if any(x.foreign for x in lay.layers):
        raise DirectPushUnsupported(FOREIGN)
    if expect_diff_ids is not None and list(expect_diff_ids) and \
            lay.diff_ids != list(expect_diff_ids):
        raise PushError(f"the export holds image {lay.config_digest[:19]}, whose layers are not "
                        "the ones the engine reports for the image asked for")
    config_bytes = small[resolve(lay.config_path)]
    if fmt.name == "docker" and any(b.compression == "zstd" for b in layers.values()):
        fmt = FORMATS["oci"]           # a zstd layer has no Docker media type
    config = Blob(lay.config_digest, len(config_bytes), fmt.config, data=config_bytes,
                  source=lay.config_path)

    ordered: list[Blob] = []
    for x in lay.layers:
        real = resolve(x.path)
        blob = layers.get(real)
        if blob is None and real in small:  # a layer that looked like JSON: compress it now
            data = io.BytesIO(small.pop(real))
            n += 1
            blob = compress_layer(data.read, workdir / f"layer-{n}", fmt, real,
                                  len(data.getbuffer()), emit, cancel)
            layers[real] = blob
            emit(LayerReady(blob, 0.0))
        if blob is None:
            raise PushError(f"the engine's export lacks layer {x.path}")
        if blob.stored:
            if x.digest and blob.digest != x.digest:
                raise PushError(f"layer {x.path} of the export does not match its digest "
                                f"{x.digest[:19]}: the export is corrupt")
            blob.media_type = _layer_type(blob.compression, fmt)
            blob.diff_id = x.diff_id
        elif blob.diff_id != x.diff_id:
            raise PushError(f"layer {x.path} of the export is not the one its config lists "
                            f"({blob.diff_id[:19]}, not {x.diff_id[:19]})")
        ordered.append(blob)
    return Image(config, ordered, fmt, lay.repo_tags)
