"""Load verifies before the engine commits: the tar is streamed to the fake
engine while export.Watcher reads its headers; the last chunk is held back until
the image config's digest and the manifest's image ID are checked, so a bad
archive reaches the engine as an aborted upload and nothing is applied."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile

import pytest
from fakes import FakeEngine, as_loaded, image_archive

from imagekit import load as load_stage
from imagekit.archive import sidecars
from imagekit.engine.export import Watcher
from imagekit.errors import LoadError
from imagekit.events import LoadResult
from imagekit.load import _SourceFailed, archive_image, sniff

LAYERS = [{"opt/a.bin": bytes(range(256)) * 400}, {"opt/b.bin": b"\1" * 90_000}]


@pytest.fixture
def small_chunks(monkeypatch):
    """Many chunks per archive, so 'held back' means something."""
    monkeypatch.setattr(load_stage, "CHUNK", 4096)


def _write(tmp_path, data: bytes, name="x.tar", image_id: str | None = None):
    path = tmp_path / name
    path.write_bytes(data)
    if image_id is not None:
        sha, man = sidecars(path)
        sha.write_text(f"{hashlib.sha256(data).hexdigest()}  {path.name}\n")
        man.write_text(json.dumps({"image": "x", "image_id": image_id}))
    return path


def _members(data: bytes) -> list[tuple[tarfile.TarInfo, bytes]]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return [(m, tar.extractfile(m).read()) for m in tar if m.isfile()]


def _retar(members: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_a_good_archive_loads(tmp_path, small_chunks):
    data, iid = image_archive(["x:v1", "x:latest"], LAYERS)
    path = _write(tmp_path, data, image_id=iid)
    eng = FakeEngine()
    events = list(load_stage.load(path, eng))
    res = events[-1]
    assert isinstance(res, LoadResult) and res.image == "x"
    assert res.refs == ["x:v1", "x:latest"] and res.image_id == iid and res.format == "tar"
    assert res.checksum == "verified" and res.manifest == "config digest matches"
    assert eng.received == as_loaded(data) and not eng.load_aborted
    assert eng.images["x:v1"].id == iid and eng.images["x:latest"].id == iid


def test_manifest_image_id_mismatch_aborts_the_upload(tmp_path, small_chunks):
    data, _ = image_archive(["x:v1"], LAYERS)
    other = "sha256:" + "77" * 32
    path = _write(tmp_path, data, image_id=other)
    eng = FakeEngine()
    eng.add_image("x:v1", "sha256:" + "11" * 32)       # what the tag names before the load
    before = dict(eng.images)
    with pytest.raises(LoadError) as e:
        list(load_stage.load(path, eng))
    assert e.value.exit_code == 14 and "says sha256:7777" in e.value.message
    assert "nothing was loaded" in e.value.message
    # the engine saw every member but not the tar's end, then an aborted stream: nothing applied
    end = len(as_loaded(data)) - 1024
    assert eng.load_aborted and 0 < len(eng.received) <= end
    assert data.startswith(eng.received) and end - len(eng.received) <= 4096
    assert eng.images == before


def test_config_that_does_not_match_its_digest_is_refused(tmp_path, small_chunks):
    data, iid = image_archive(["x:v1"], LAYERS)
    config = iid.removeprefix("sha256:") + ".json"
    members = [(m.name, b if m.name != config else b.replace(b"amd64", b"arm64"))
               for m, b in _members(data)]
    path = _write(tmp_path, _retar(members))           # no sidecars: only the tar can tell
    eng = FakeEngine()
    with pytest.raises(LoadError, match="does not match its digest"):
        list(load_stage.load(path, eng))
    assert eng.load_aborted and eng.images == {}


def test_manifest_naming_a_missing_config_is_refused(tmp_path, small_chunks):
    data, iid = image_archive(["x:v1"], LAYERS)
    config = iid.removeprefix("sha256:") + ".json"
    path = _write(tmp_path, _retar([(m.name, b) for m, b in _members(data) if m.name != config]))
    eng = FakeEngine()
    with pytest.raises(LoadError, match="does not hold it"):
        list(load_stage.load(path, eng))
    assert eng.load_aborted and eng.images == {}


def test_gzip_and_zip_archives_are_verified_too(tmp_path, small_chunks):
    import gzip
    import zipfile
    data, iid = image_archive(["x:v1"], LAYERS)
    gz = _write(tmp_path, gzip.compress(data), "x.tar.gz", image_id="sha256:" + "55" * 32)
    zpath = tmp_path / "x.zip"
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("x-v1.tar", data)
    for path, ok in ((gz, False), (zpath, True)):
        eng = FakeEngine()
        if ok:
            assert list(load_stage.load(path, eng))[-1].image_id == iid
            assert eng.received == as_loaded(data)
        else:
            with pytest.raises(LoadError, match="says sha256:5555"):
                list(load_stage.load(path, eng))
            assert eng.load_aborted and eng.images == {}


@pytest.mark.parametrize("step", [1, 100, 511, 512, 513, 5000, 1 << 20])
def test_tar_watcher_reads_headers_at_any_chunk_size(step):
    data, iid = image_archive(["x:v1"], LAYERS)
    w = Watcher()
    for i in range(0, len(data), step):
        w.feed(data[i:i + step])
    assert w.ended and archive_image(w).config_digest == iid
    assert json.loads(w.small["manifest.json"])[0]["RepoTags"] == ["x:v1"]
    assert not any(name.endswith("layer.tar") for name in w.small)   # layers are not kept


def test_tar_watcher_follows_long_names():
    long = "d" * 120 + "/" + "e" * 40 + ".json"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, body in ((long, b'{"a": 1}'), ("manifest.json", b"[]")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    w = Watcher()
    w.feed(buf.getvalue())
    assert hashlib.sha256(w.small[long]).hexdigest() == hashlib.sha256(b'{"a": 1}').hexdigest()
    with pytest.raises(_SourceFailed, match="lists no image"):
        archive_image(w)                                 # an empty manifest names no config


def test_an_archive_without_manifest_has_no_image_id():
    w = Watcher()
    w.feed(_retar([("a.txt", b"x")]))
    assert archive_image(w) is None


def test_sniff(tmp_path):
    data, _ = image_archive()
    assert sniff(_write(tmp_path, data)) == "tar"
    empty = _write(tmp_path, b"PK\x05\x06" + b"\0" * 18, "e.zip")
    with pytest.raises(LoadError, match="empty ZIP"):
        sniff(empty)
