"""Wasted-bytes analysis on hand-made layers, and the inspect stage over the
fake engine's export (no engine)."""

from __future__ import annotations

import io
import tarfile

from fakes import FakeEngine, image_archive

from imagekit.engine.files import _stream
from imagekit.events import InspectResult, LayerReport, WastedPath
from imagekit.inspect import Layer, _read_layer, analyse, inspect
from imagekit.targets import ImageTarget


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
    assert r.wasted_bytes == 180 and r.per_layer == [180, 0, 0] and r.total_bytes == 186
    assert r.efficiency == round(1 - 180 / 186, 6)
    assert r.top[0] == WastedPath("big", 100)
    assert analyse([]).efficiency == 1.0


def test_stream_reader_over_chunks():
    s = _stream(iter([b"abc", b"", b"defgh"]))
    assert s.read(2) == b"ab" and s.read(4) == b"cdef" and s.read() == b"gh" and s.read(3) == b""


def test_inspect_reads_the_engines_export():
    dist = "usr/lib/python3/site-packages/torch_vision-0.1.dist-info/METADATA"
    data, iid = image_archive(["w:v1"], [
        {"big.bin": b"\0" * 3000, "over.bin": b"\1" * 1000, dist: b"Name: torch_vision\n"},
        {".wh.big.bin": b"", "over.bin": b"\2" * 7},
    ], created_by=["/bin/sh -c #(nop) ADD file", "/bin/sh -c rm big.bin && echo > over.bin"],
        labels={"io.imagekit.framework": "pytorch"})
    eng = FakeEngine(export=data, chunk=333)
    info = eng.add_image("w:v1", iid, size=9999, labels={"io.imagekit.framework": "pytorch"})
    (res,) = list(inspect(eng, ImageTarget("w:v1", "w:v1", info, None)))
    assert isinstance(res, InspectResult) and res.image == "w:v1" and res.image_id == iid
    assert res.wasted_bytes == 4000 and res.total_bytes == 3000 + 1000 + 19 + 7
    assert res.layers == [LayerReport(4019, 4000, "ADD file"),
                          LayerReport(7, 0, "rm big.bin && echo > over.bin")]
    assert res.top_wasted == [WastedPath("big.bin", 3000), WastedPath("over.bin", 1000)]
    assert res.python_packages == {"torch-vision": "0.1"}
    assert res.labels == {"io.imagekit.framework": "pytorch"} and res.size == 9999
    assert eng.calls_to("save")[0]["ref"] == "w:v1"
