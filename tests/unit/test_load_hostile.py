"""`imagekit load` against hostile archives, each run as its own process (the
real command line; the engine is a sink that reads the upload as the engine
does, with bounded memory, and reports what it saw), its peak RSS taken from
os.wait4 for that process alone. Asserted: the exit code, exactly one line on
stderr and no traceback, a wall-time bound, the peak RSS bound, and what the
engine was given (never a finished upload when the load is refused; never
even a connection when the path or the ZIP's directory is refused)."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from fakes import image_archive, tar_of
from helpers import measured

TESTS = Path(__file__).resolve().parent.parent
REPO = TESTS.parent
RSS_LIMIT_KB = 200 * 1024
GIB = 1 << 30

# The child: the real CLI, with an engine that reads the upload through a
# streaming tar reader (as the engine does) and keeps nothing but its JSON.
CHILD = r"""
import atexit, hashlib, io, json, os, sys, tarfile
sys.path.insert(0, os.environ["TESTS_DIR"])
from fakes import FakeEngine
from imagekit import cli
from imagekit.engine import ImageInfo

report = {"connected": 0, "loads": 0, "bytes": 0, "finished": False, "aborted": False,
          "tags": []}
atexit.register(lambda: open(os.environ["SINK_REPORT"], "w").write(json.dumps(report)))


class Chunks(io.RawIOBase):
    def __init__(self, chunks):
        self.it, self.buf = iter(chunks), memoryview(b"")

    def readable(self):
        return True

    def readinto(self, b):
        while not len(self.buf):
            try:
                self.buf = memoryview(next(self.it))
            except StopIteration:
                return 0
            report["bytes"] += len(self.buf)
        n = min(len(b), len(self.buf))
        b[:n] = self.buf[:n]
        self.buf = self.buf[n:]
        return n


class Sink(FakeEngine):
    def load(self, data):
        report["loads"] += 1
        docs = {}
        src = Chunks(data)
        try:
            with tarfile.open(fileobj=io.BufferedReader(src, 1 << 20), mode="r|") as tar:
                for m in tar:
                    if m.isfile() and m.size < 1 << 20:
                        docs[m.name] = tar.extractfile(m).read()
            while src.read(1 << 20):
                pass
        except BaseException:
            report["aborted"] = True
            raise
        report["finished"] = True
        loaded = []
        for e in json.loads(docs["manifest.json"]):
            iid = "sha256:" + hashlib.sha256(docs[e["Config"]]).hexdigest()
            for t in e.get("RepoTags") or []:
                self.images[t] = ImageInfo(iid, 0, {}, [t])
                loaded.append(t)
        report["tags"] = loaded
        return loaded


class Engine:
    @classmethod
    def connect(cls, *a, **kw):
        report["connected"] += 1
        return Sink()


cli.Engine = Engine
sys.argv = ["imagekit", *sys.argv[1:]]
cli.main()
"""


@dataclass
class Ran:
    code: int
    stdout: str
    stderr: str
    seconds: float
    rss_kb: int
    sink: dict

    @property
    def lines(self) -> list[str]:
        return [x for x in self.stderr.splitlines() if x.strip()]


def load(tmp_path: Path, *args: str, timeout: float = 60) -> Ran:
    """`imagekit load ARGS` in a process of its own, with the sink engine."""
    report = tmp_path / f"sink-{time.monotonic_ns()}.json"
    code, out, err, seconds, rss = measured(
        ["-c", CHILD, "load", *args], tmp_path,
        {"TESTS_DIR": str(TESTS), "SINK_REPORT": str(report)}, timeout)
    sink = json.loads(report.read_text()) if report.exists() else {}
    return Ran(code, out, err, seconds, rss, sink)


def refused(r: Ran, code: int, words: list[str], seconds: float = 10.0) -> None:
    assert "Traceback" not in r.stderr, r.stderr
    assert r.code == code, (r.code, r.stderr, r.stdout[-2000:])
    assert len(r.lines) == 1, r.stderr
    for w in words:
        assert w in r.lines[0], (w, r.lines[0])
    assert r.seconds < seconds, f"{r.seconds:.1f} s"
    assert r.rss_kb < RSS_LIMIT_KB, f"peak RSS {r.rss_kb / 1024:.0f} MB"
    assert not r.sink.get("finished"), r.sink          # the engine never got a whole tar


# -- archives -----------------------------------------------------------------------

def _zip_stream(path: Path, member: str, head: bytes, zeros: int, tail: bytes = b"") -> Path:
    """A ZIP whose one member is HEAD, then ZEROS zero bytes, then TAIL, deflated
    as it is written (a few MB on disk)."""
    block = bytes(16 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf, \
            zf.open(member, "w", force_zip64=True) as m:
        m.write(head)
        left = zeros
        while left:
            n = min(left, len(block))
            m.write(block[:n])
            left -= n
        m.write(tail)
    return path


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mode = size, 0o644
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _image_with_a_big_layer(size: int) -> tuple[bytes, bytes, str]:
    """(tar up to the layer's data, the tar after it, config digest) of a
    one-image archive whose layer is SIZE zero bytes."""
    diff = "sha256:" + "ab" * 32               # the engine checks it; the sink does not
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [diff]}}).encode()
    digest = hashlib.sha256(config).hexdigest()
    manifest = json.dumps([{"Config": f"{digest}.json", "RepoTags": ["big:v1"],
                            "Layers": ["l/layer.tar"]}]).encode()
    rest = tar_of([(f"{digest}.json", config), ("manifest.json", manifest)])
    pad = bytes(-size % 512)
    return _header("l/layer.tar", size), pad + rest, f"sha256:{digest}"


def _two_images() -> bytes:
    """A docker-save tar (legacy layout) of two images, the second broken (its
    config is not the one its name says)."""
    a, _ = image_archive(["hostile-a:one"], [{"a.txt": b"a" * 3000}])
    b, _ = image_archive(["hostile-b:two"], [{"b.txt": b"b" * 3000}])
    members, manifest = [], []
    for data, broken in ((a, False), (b, True)):
        with tarfile.open(fileobj=io.BytesIO(data)) as t:
            for m in t:
                body = t.extractfile(m).read()
                if m.name == "manifest.json":
                    manifest += json.loads(body)
                    continue
                if broken and m.name.endswith(".json") and "/" not in m.name:
                    body = body.replace(b"amd64", b"arm64")    # no longer matches its digest
                members.append((m.name, body))
    return tar_of([*members, ("manifest.json", json.dumps(manifest).encode())])


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bombs")
    out = {}
    out["zip-zeros"] = _zip_stream(d / "zeros.zip", "x.tar", b"", GIB)
    head, tail, _ = _image_with_a_big_layer(GIB)
    out["zip-layer"] = _zip_stream(d / "layer.zip", "big.tar", head, GIB, tail)
    one, _ = image_archive(["tail:v1"])
    out["zip-tail"] = _zip_stream(d / "tail.zip", "tail.tar", one, GIB // 4)
    for name, size, count in (("json-big", 15 << 20, 20), ("json-many", 3 << 20, 12)):
        path = d / f"{name}.tar.gz"
        body = b"{" + b" " * (size - 2) + b"}"
        with path.open("wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6) as gz, \
                tarfile.open(fileobj=gz, mode="w|", format=tarfile.USTAR_FORMAT) as t:
            for i in range(count):
                info = tarfile.TarInfo(f"doc{i}.json")
                info.size = len(body)
                t.addfile(info, io.BytesIO(body))
        out[name] = path
    return out


# -- memory ------------------------------------------------------------------------

def test_zip_of_a_gib_of_zeros(bombs, tmp_path):
    assert bombs["zip-zeros"].stat().st_size < 8 << 20
    r = load(tmp_path, str(bombs["zip-zeros"]))
    refused(r, 14, ["not an image archive", "no member"], seconds=5)


def test_zip_of_a_valid_image_then_zeros(bombs, tmp_path):
    r = load(tmp_path, str(bombs["zip-tail"]))
    refused(r, 14, ["goes on after the end of its tar", "nothing was loaded"], seconds=5)


def test_a_gib_layer_streams_in_bounded_memory(bombs, tmp_path):
    """Not hostile, only large: 1 GiB passes through load to the engine."""
    r = load(tmp_path, str(bombs["zip-layer"]), timeout=120)
    assert r.code == 0, r.stderr
    assert r.sink["finished"] and r.sink["bytes"] > GIB and r.sink["tags"] == ["big:v1"]
    assert r.rss_kb < RSS_LIMIT_KB, f"peak RSS {r.rss_kb / 1024:.0f} MB"
    assert r.seconds < 60


def test_tar_gz_of_large_json_members(bombs, tmp_path):
    assert bombs["json-big"].stat().st_size < 4 << 20
    r = load(tmp_path, str(bombs["json-big"]))
    refused(r, 14, ["doc0.json", "JSON document of 15 MiB", "at most 4 MiB"], seconds=5)


def test_tar_gz_of_many_json_members(bombs, tmp_path):
    r = load(tmp_path, str(bombs["json-many"]))
    refused(r, 14, ["JSON documents pass 16 MiB in all"], seconds=5)


# -- several images ----------------------------------------------------------------

def test_two_images_are_refused_before_the_end(tmp_path):
    path = tmp_path / "two.tar"
    path.write_bytes(_two_images())
    r = load(tmp_path, str(path))
    refused(r, 14, ["holds 2 images", "hostile-a:one", "hostile-b:two", "--image"])
    assert r.sink["aborted"] and r.sink["tags"] == []


def test_image_picks_one_and_rewrites_the_manifest(tmp_path):
    path = tmp_path / "two.tar"
    path.write_bytes(_two_images())
    r = load(tmp_path, str(path), "--image", "hostile-a:one")
    assert r.code == 0 and not r.stderr.strip(), r.stderr
    assert r.sink["finished"] and r.sink["tags"] == ["hostile-a:one"]
    assert "one of the 2 images" in r.stdout
    r = load(tmp_path, str(path), "--image", "hostile-b:two")      # the broken one
    refused(r, 14, ["does not match its digest"])
    r = load(tmp_path, str(path), "--image", "hostile-c:three")
    refused(r, 14, ["no image named hostile-c:three", "hostile-a:one"])


def test_zip_with_two_tars_is_refused_before_the_engine(tmp_path):
    a, _ = image_archive(["zip-a:one"])
    b, _ = image_archive(["zip-b:two"])
    path = tmp_path / "two.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("a.tar", a)
        zf.writestr("b.tar", b)
    r = load(tmp_path, str(path))
    refused(r, 14, ["holds 2 tars", "a.tar", "b.tar", "--image"])
    assert r.sink["connected"] == 0
    for pick, tag in (("b.tar", "zip-b:two"), ("zip-a:one", "zip-a:one")):
        r = load(tmp_path, str(path), "--image", pick)
        assert r.code == 0, r.stderr
        assert r.sink["tags"] == [tag]


# -- paths -------------------------------------------------------------------------

@pytest.mark.parametrize("kind,words", [
    ("fifo", "is a FIFO"), ("folder", "is a folder"), ("device", "is a device"),
    ("missing", "no such file"), ("dangling-link", "no such file"),
])
def test_paths_that_are_not_files(tmp_path, kind, words):
    target = tmp_path / "x.zip"
    if kind == "fifo":
        os.mkfifo(target)                    # opened for reading, it would block forever
    elif kind == "folder":
        target.mkdir()
    elif kind == "device":
        target = Path("/dev/zero")
    elif kind == "dangling-link":
        target.symlink_to(tmp_path / "gone")
    r = load(tmp_path, str(target))
    refused(r, 2, [str(target), words], seconds=5)
    assert r.sink["connected"] == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every file")
def test_unreadable_file(tmp_path):
    target = tmp_path / "x.tar"
    target.write_bytes(b"x" * 1024)
    target.chmod(0)
    r = load(tmp_path, str(target))
    refused(r, 2, ["not readable"], seconds=5)
    assert r.sink["connected"] == 0


def test_a_fifo_sidecar_is_not_opened(tmp_path):
    data, _ = image_archive(["side:v1"])
    path = tmp_path / "x.tar"
    path.write_bytes(data)
    os.mkfifo(tmp_path / "x.tar.sha256")
    r = load(tmp_path, str(path))
    refused(r, 14, ["x.tar.sha256", "is a FIFO"], seconds=5)
    assert r.sink["connected"] == 0


# -- the tar as the engine reads it (in this process) ------------------------------------

def _raw_header(name: str, size: int, kind: bytes = b"0", *, link: str = "",
                magic: bytes = b"ustar\x0000", prefix: bytes = b"") -> bytes:
    """A tar header written by hand (to say what tarfile will not write)."""
    h = bytearray(512)
    h[:len(name)] = name.encode()
    h[100:108] = b"0000644\0"
    h[124:136] = b"%011o\0" % size
    h[156:157] = kind
    h[157:157 + len(link)] = link.encode()
    h[257:265] = magic
    h[345:345 + len(prefix)] = prefix
    h[148:156] = b"        "
    h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def _member(name: str, body: bytes, **kw) -> bytes:
    return _raw_header(name, len(body), **kw) + body + bytes(-len(body) % 512)


def _watch(data: bytes, **kw):
    from imagekit.engine.export import Watcher
    w = Watcher(keep=4 << 20, budget=16 << 20, strict=True, **kw)
    out = w.feed(data)
    return w, out


def test_header_only_kinds_carry_no_data_whatever_their_size():
    # a symbolic link whose size field says 1024: Go's reader reads no data for it
    data = _raw_header("x", 1024, b"2", link="y") + _member("manifest.json", b"[]") + bytes(1024)
    w, _ = _watch(data)
    assert w.small == {"manifest.json": b"[]"} and w.links == {"x": "y"}


def test_a_pax_size_is_the_size():
    body = b'{"a": 1}'
    pax = b"%d size=%d\n" % (len(b" size=%d\n" % len(body)) + 2, len(body))
    data = _member("PaxHeader", pax, kind=b"x") + _raw_header("a.json", 0) + body + \
        bytes(-len(body) % 512) + bytes(1024)
    w, _ = _watch(data)
    assert w.small == {"a.json": body} and w.ended


def test_the_last_member_of_a_name_wins():
    data = (_member("manifest.json", b"[1]") + _member("manifest.json", b"[2]")
            + _member("index.json", b"{}") + _raw_header("index.json", 0, b"2", link="x.json")
            + _member("c.json", b"{}") + _raw_header("c.json", 0, b"2", link="d.json")
            + _member("c.json", b"{}") + bytes(1024))
    w, _ = _watch(data)
    assert w.small["manifest.json"] == b"[2]"
    assert "index.json" not in w.small and w.links["index.json"] == "x.json"
    assert w.small["c.json"] == b"{}" and "c.json" not in w.links


def test_writing_through_a_symbolic_link_is_refused():
    from imagekit.engine.export import ExportError
    data = _raw_header("b", 0, b"2", link="blobs") + _member("b/sha256/x.json", b"{}")
    with pytest.raises(ExportError, match="through the symbolic link"):
        _watch(data)


def test_a_bad_checksum_is_refused():
    from imagekit.engine.export import ExportError
    head = bytearray(_raw_header("manifest.json", 2))
    head[0:1] = b"n"                                # the name changed, the checksum not
    with pytest.raises(ExportError, match="checksum"):
        _watch(bytes(head) + b"[]" + bytes(510))


def test_a_gnu_header_has_no_prefix():
    # in GNU format bytes 345.. are times, not a name prefix (as Go reads them)
    data = _member("manifest.json", b"[]", magic=b"ustar  \0", prefix=b"12345670123") + \
        bytes(1024)
    w, _ = _watch(data)
    assert list(w.small) == ["manifest.json"]


def test_the_end_marker_and_what_follows_are_held_back():
    data, _ = image_archive(["x:v1"])
    w, out = _watch(data)
    from fakes import as_loaded
    assert w.ended and out == as_loaded(data)[:-1024] and w.trailing == len(data) - len(out) - 512
    assert not w.trailing_junk


def test_rewrite_replaces_manifest_json_and_drops_its_pax_header():
    pax = b"30 path=manifest.json\n"
    pax = b"%d path=manifest.json\n" % (len(pax))
    data = (_member("a.json", b"{}") + _member("PaxHeader", pax, kind=b"x")
            + _member("something-else", b"[1, 2]") + bytes(1024))
    w, out = _watch(data, rewrite=lambda name, body: b'["rewritten"]')
    assert w.original["manifest.json"] == b"[1, 2]"
    with tarfile.open(fileobj=io.BytesIO(out + bytes(1024))) as t:
        got = {m.name: t.extractfile(m).read() for m in t}
    assert got == {"a.json": b"{}", "manifest.json": b'["rewritten"]'}


# -- the undo (in this process, a fake engine that does more than it is asked) ---------

def _fake_load_that_also(extra: str | None = None, fail: bool = False):
    """A fake engine that keeps an image whose last tag moved away (as the
    classic store does) and whose load does more than asked: it also tags
    EXTRA, or fails after tagging."""
    from fakes import FakeEngine

    from imagekit.errors import EngineError, EngineStreamError

    class Eng(FakeEngine):
        def __init__(self):
            super().__init__()
            self.known: dict = {}                # image ID -> ImageInfo, tagged or not

        def add_image(self, ref, id=None, **kw):
            info = super().add_image(ref, id, **kw)
            self.known[info.id] = info
            return info

        def image(self, ref):
            return super().image(ref) or self.known.get(ref)

        def tag(self, image, repository, tag):
            info = self.image(image)
            if info is None:
                raise EngineError(f"No such image: {image}")
            self.images[f"{repository}:{tag}"] = info

        def remove_image(self, ref):
            if ref in self.known:                # by ID, as `docker rmi ID` does
                tags = [r for r, i in self.images.items() if i.id == ref]
                if len(tags) > 1:
                    raise EngineError(f"conflict: unable to delete {ref[:19]} (must be forced)")
                for r in tags:
                    del self.images[r]
                del self.known[ref]
                return
            info = self.images.pop(ref, None)
            if info is not None and not any(i.id == info.id for i in self.images.values()):
                self.known.pop(info.id, None)    # its last tag: the image goes too

        def load(self, data):
            loaded = super().load(data)
            for r in loaded:
                self.known[self.images[r].id] = self.images[r]
            if extra:
                self.tag(loaded[0], *extra.split(":"))
                loaded.append(extra)
            if fail:
                raise EngineStreamError("the engine broke off after tagging")
            return loaded
    return Eng()


@pytest.mark.parametrize("extra,fail", [("other:v9", False), (None, True), ("other:v9", True)])
def test_what_the_engine_did_beyond_the_ask_is_undone(tmp_path, extra, fail):
    from imagekit import load as load_stage
    from imagekit.errors import LoadError
    data, iid = image_archive(["x:v1"])
    path = tmp_path / "x.tar"
    path.write_bytes(data)
    eng = _fake_load_that_also(extra, fail)
    old = eng.add_image("x:v1", "sha256:" + "11" * 32)          # the tag the archive moves
    eng.add_image("y:v2", "sha256:" + "22" * 32)                # and one it does not touch
    before = {r: i.id for r, i in eng.images.items()}
    with pytest.raises(LoadError) as e:
        list(load_stage.load(path, eng))
    assert e.value.exit_code == 14 and "\n" not in e.value.message
    assert "the load was undone" in e.value.message, e.value.message
    assert {r: i.id for r, i in eng.images.items()} == before
    assert eng.images["x:v1"].id == old.id
    assert iid not in eng.known                  # the image it loaded is gone


@pytest.mark.parametrize("body,words", [
    (b"[" * 100_000 + b"]" * 100_000, "nests too deep"),
    (b"[" + b"{}," * 1_000_000 + b"{}]", "more than 200000 values"),
])
def test_json_that_would_cost_more_to_parse_than_it_weighs(tmp_path, body, words):
    path = tmp_path / "x.tar"
    path.write_bytes(tar_of([("manifest.json", body)]))
    r = load(tmp_path, str(path))
    refused(r, 14, [words, "nothing was loaded"], seconds=5)


def test_names_from_the_archive_are_cut_and_escaped(tmp_path):
    name = "\x1b[31m" + "n" * 5000 + "\u202e.json"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        info = tarfile.TarInfo(name)
        info.size = 5 << 20
        t.addfile(info, io.BytesIO(b"{" + bytes(info.size - 2) + b"}"))
    path = tmp_path / "x.tar"
    path.write_bytes(buf.getvalue())
    r = load(tmp_path, str(path))
    refused(r, 14, ["JSON document of 5 MiB", "more characters"], seconds=5)
    assert "\x1b" not in r.stderr and "\u202e" not in r.stderr and len(r.lines[0]) < 1000


def test_an_unreadable_file_is_a_usage_error(tmp_path, monkeypatch):
    """(As root every file is readable: the refusal of open() is made here.)"""
    from imagekit import load as load_stage
    from imagekit.errors import UsageError
    path = tmp_path / "x.tar"
    path.write_bytes(b"x" * 1024)

    def refuse(*a, **kw):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(load_stage.os, "open", refuse)
    with pytest.raises(UsageError, match="not readable"):
        load_stage.open_archive(path)


@pytest.mark.parametrize("store,env,ok", [("containerd", {}, True),
                                          ("containerd", {"EVIL": "1"}, False),
                                          ("classic", {}, False)])
def test_an_id_the_engine_made_itself(tmp_path, store, env, ok):
    """The containerd store names an archive in the legacy layout by a manifest
    it writes itself: the layers and the config's run-time fields must then be
    the archive's; on the classic store the ID is the config digest or wrong."""
    from fakes import FakeEngine, read_archive

    from imagekit import load as load_stage
    from imagekit.engine import ImageInfo
    from imagekit.errors import LoadError
    data, iid = image_archive(["x:v1"], labels={"a": "b"})
    with tarfile.open(fileobj=io.BytesIO(data)) as t:
        files = {m.name: t.extractfile(m).read() for m in t}
    diff_ids = tuple(json.loads(files[iid.removeprefix("sha256:") + ".json"])["rootfs"]["diff_ids"])
    path = tmp_path / "x.tar"
    path.write_bytes(data)

    class Eng(FakeEngine):
        def load(self, stream):
            got = b"".join(stream)
            tags, _ = read_archive(got)
            for t in tags:
                self.images[t] = ImageInfo("sha256:" + "ee" * 32, 0, {"a": "b"}, tags, env,
                                           diff_ids)
            return tags

    eng = Eng(store=store)
    if ok:
        assert list(load_stage.load(path, eng))[-1].image_id == "sha256:" + "ee" * 32
    else:
        with pytest.raises(LoadError, match="which is not the archive's image"):
            list(load_stage.load(path, eng))
        assert eng.images == {}
