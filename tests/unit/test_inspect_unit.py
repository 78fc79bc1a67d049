"""Wasted-bytes analysis on hand-made layers (no engine)."""

from __future__ import annotations

import io
import tarfile

from imagekit.inspect import Layer, _read_layer, _Stream, analyse


def _tar(entries: dict[str, int]) -> io.BytesIO:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, size in entries.items():
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(b"\0" * size))
    buf.seek(0)
    return buf


def test_read_layer_sees_files_whiteouts_and_opaque_dirs():
    layer = _read_layer(_tar({"a/x.bin": 10, "a/.wh.y.bin": 0, "b/.wh..wh..opq": 0}))
    assert layer.files == {"a/x.bin": 10} and layer.size == 10
    assert layer.deletes == ["a/y.bin"] and layer.opaque == ["b"]


def test_deleted_overwritten_and_opaque_bytes_count_once():
    layers = [Layer(size=180, files={"big": 100, "over": 50, "d/in": 30}),
              Layer(size=5, files={"over": 5}, deletes=["big"]),
              Layer(size=1, files={"d/new": 1}, opaque=["d"])]
    r = analyse(layers)
    assert r["wasted_bytes"] == 180 and r["wasted_per_layer"] == [180, 0, 0]
    assert r["efficiency"] == round(1 - 180 / 186, 6)
    assert r["top_wasted"][0] == {"path": "big", "bytes": 100}


def test_stream_reader_over_chunks():
    s = _Stream(iter([b"abc", b"", b"defgh"]))
    assert s.read(2) == b"ab" and s.read(4) == b"cdef" and s.read() == b"gh" and s.read(3) == b""
