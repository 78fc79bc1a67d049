"""Archive formats written front to back, never seeking: a one-member ZIP64
stream and a gzip stream, both fed by one parallel raw-deflate stream
(Deflater: blocks compressed on worker threads, joined by sync flushes as pigz
does). Used by save (the archive file) and push (the layer blobs)."""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import io
import os
import struct
import tarfile
import tempfile
import time
import zlib
from pathlib import Path

try:  # ISA-L deflate: the same format as zlib, about 5x zlib's level-1 speed at its level 1
    # (output about 1 % larger than zip -1's; its level 3 is 2 % smaller but, measured on
    # 2 cores beside the engine's export, made `save --zip` 1.31x `docker save` against 1.10x)
    from isal import isal_zlib as deflate
    LEVEL = 1
except ImportError:  # pragma: no cover - isal is a dependency; zlib is the fallback
    deflate = zlib  # type: ignore[misc]
    LEVEL = 1

COMPRESS_ERRORS = (zlib.error, deflate.error)
MAX32 = 0xFFFFFFFF


class ZipStream:
    """A one-member ZIP written front to back, never seeking: a local header
    with a ZIP64 extra field, the deflated data, a ZIP64 data descriptor, then
    the central directory and the ZIP64 end records. Valid at any size."""

    VERSION = 45            # 4.5: ZIP64
    MADE_BY = 0x0300 | 45   # on Unix
    FLAGS = 0x08            # sizes and CRC follow the data (data descriptor)

    def __init__(self, sink, member: str, when: float):
        self.sink = sink
        self.name = member.encode()
        t = time.localtime(when)
        self.dos_time = t.tm_hour << 11 | t.tm_min << 5 | t.tm_sec // 2
        self.dos_date = max(t.tm_year - 1980, 0) << 9 | t.tm_mon << 5 | t.tm_mday
        self.crc = self.size = self.csize = 0
        self.comp = Deflater()
        sink.write(struct.pack("<4s5H3L2H", b"PK\x03\x04", self.VERSION, self.FLAGS, 8,
                               self.dos_time, self.dos_date, 0, MAX32, MAX32, len(self.name), 20)
                   + self.name + struct.pack("<2H2Q", 1, 16, 0, 0))

    def write(self, data: bytes) -> None:
        self.crc = deflate.crc32(data, self.crc)
        self.size += len(data)
        for out in self.comp.compress(data):
            self.csize += len(out)
            self.sink.write(out)

    def finish(self) -> None:
        for out in self.comp.finish():
            self.csize += len(out)
            self.sink.write(out)
        self.sink.write(struct.pack("<4sL2Q", b"PK\x07\x08", self.crc, self.csize, self.size))
        cd_offset = self.sink.bytes
        extra = struct.pack("<2H2Q", 1, 16, self.size, self.csize)
        cd = struct.pack("<4s6H3L5H2L", b"PK\x01\x02", self.MADE_BY, self.VERSION, self.FLAGS, 8,
                         self.dos_time, self.dos_date, self.crc, MAX32, MAX32, len(self.name),
                         len(extra), 0, 0, 0, 0o100644 << 16, 0) + self.name + extra
        self.sink.write(cd)
        z64_offset = self.sink.bytes
        self.sink.write(struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, self.MADE_BY, self.VERSION,
                                    0, 0, 1, 1, len(cd), cd_offset))
        self.sink.write(struct.pack("<4sLQL", b"PK\x06\x07", 0, z64_offset, 1))
        self.sink.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, len(cd),
                                    min(cd_offset, MAX32), 0))


class GzipStream:
    """The tar, gzip'd at LEVEL: a gzip header, the deflate stream, CRC and size."""

    def __init__(self, sink):
        self.sink = sink
        self.comp = Deflater()
        self.crc = self.size = 0
        sink.write(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff")  # no name, no mtime, Unix

    def write(self, data: bytes) -> None:
        self.crc = deflate.crc32(data, self.crc)
        self.size += len(data)
        for out in self.comp.compress(data):
            self.sink.write(out)

    def finish(self) -> None:
        for out in self.comp.finish():
            self.sink.write(out)
        self.sink.write(struct.pack("<2L", self.crc, self.size & MAX32))


class Deflater:
    """One raw deflate stream made of independently compressed blocks: each
    chunk is deflated on a worker thread (ISA-L and zlib release the GIL) and
    ends with a sync flush, so the blocks join, in order, into a valid stream
    (as pigz does). Compression then runs beside the engine's export and the
    main thread's checksums instead of after them."""

    def __init__(self, workers: int = 2, ahead: int = 4):
        self.pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="deflate")
        self.pending: collections.deque = collections.deque()
        self.ahead = ahead

    @staticmethod
    def _block(data: bytes) -> bytes:
        comp = deflate.compressobj(LEVEL, deflate.DEFLATED, -15)
        return comp.compress(data) + comp.flush(deflate.Z_SYNC_FLUSH)

    def compress(self, data: bytes) -> list[bytes]:
        """Queue a chunk; return the blocks that are done, in order."""
        self.pending.append(self.pool.submit(self._block, bytes(data)))
        out = []
        while len(self.pending) > self.ahead or (self.pending and self.pending[0].done()):
            out.append(self.pending.popleft().result())
        return out

    def finish(self) -> list[bytes]:
        try:
            out = [f.result() for f in self.pending]
            out.append(deflate.compressobj(LEVEL, deflate.DEFLATED, -15).flush())  # final block
            return out
        finally:
            self.pending.clear()
            self.pool.shutdown(wait=False, cancel_futures=True)


def sidecars(path: Path) -> tuple[Path, Path]:
    """An archive's PATH.sha256 (`sha256sum -c` format) and PATH.json (what it holds)."""
    return path.with_name(path.name + ".sha256"), path.with_name(path.name + ".json")


def sbom_sidecar(path: Path) -> Path:
    """An archive's PATH.sbom.json: the image's bill of materials (CycloneDX
    JSON, sbom.py). load does not read it."""
    return path.with_name(path.name + ".sbom.json")


def tar_of(files: dict[str, bytes]) -> bytes:
    """A small tar of read-only FILES (path -> bytes), to copy into a container."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o444
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def temp_beside(path: Path) -> tuple[int, Path]:
    """A hidden temporary file in PATH's folder (so the final rename is atomic),
    with the permissions a plain new file would get (mkstemp makes 0600)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    with contextlib.suppress(OSError):
        os.fchmod(fd, 0o666 & ~_umask())
    return fd, Path(tmp)


def write_atomically(path: Path, content: str) -> None:
    """CONTENT to PATH through a temporary file beside it, fsync'd, then
    renamed: PATH is never half-written."""
    fd, tmp = temp_beside(path)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
