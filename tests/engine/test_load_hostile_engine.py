"""`imagekit load` against hostile archives, on the real engine: several
images in one archive (the second broken), a ZIP of several tars, a valid tar
followed by zeros (which the engine would apply before reading them), a ZIP
bomb; and the undo of what an engine does beyond what was asked. Each failure
is one line, exit 14, and leaves the engine's tags and images as they were
(compared before and after for the refs and image IDs the archives name, so
that other tests using the engine at the same time do not matter).

The images are tiny (`docker import` of a one-file tar), so each case takes a
second or two."""

from __future__ import annotations

import io
import json
import tarfile
import time
import zipfile
from pathlib import Path

import docker
import pytest
from fakes import tar_of
from helpers import docker_cli, imagekit, measured, unique

from imagekit import load as load_stage
from imagekit.engine import Engine
from imagekit.errors import EngineStreamError, LoadError

RSS_LIMIT_KB = 200 * 1024


class Pair:
    """Two tiny images saved in one archive, and a third to hold tags."""

    def __init__(self, root: Path, a: str, b: str, c: str, ids: dict[str, str]):
        self.root, self.a, self.b, self.c, self.ids = root, a, b, c, ids
        self.both = root / "both.tar"

    @property
    def refs(self) -> list[str]:
        return [self.a, self.b, self.c]


def _import(docker_api, ref: str, text: bytes) -> str:
    repo, tag = ref.rsplit(":", 1)
    docker_api.import_image_from_data(tar_of([("hello.txt", text)]), repository=repo, tag=tag)
    return docker_api.inspect_image(ref)["Id"]


def _rmi(docker_api, ref: str) -> None:
    try:
        docker_api.remove_image(ref, force=True)
    except docker.errors.NotFound:
        pass


def _by_ref(members, *refs: str) -> list[dict]:
    """The entries of the saved archive's manifest.json, in the order of REFS
    (`docker save a b` lists its images in no fixed order)."""
    manifest = json.loads(next(d for m, d in members if m.name == "manifest.json"))
    return [next(e for e in manifest if ref in (e.get("RepoTags") or [])) for ref in refs]


@pytest.fixture(scope="module")
def pair(docker_api, tmp_path_factory):
    root = tmp_path_factory.mktemp("load-hostile")
    a, b, c = (f"{unique('loadhostile-' + x)}:{x}" for x in "abc")
    ids = {r: _import(docker_api, r, f"{r} {time.time_ns()}".encode()) for r in (a, b, c)}
    p = Pair(root, a, b, c, ids)
    d = docker_cli("save", a, b, "-o", str(p.both))
    assert d.returncode == 0, d.stderr
    _rmi(docker_api, a)
    _rmi(docker_api, b)
    yield p
    for r in p.refs:
        _rmi(docker_api, r)
    for i in ids.values():
        _rmi(docker_api, i)


@pytest.fixture(autouse=True)
def fresh(pair, docker_api):
    """Each case starts with a and b absent, c present."""
    yield
    _rmi(docker_api, pair.a)
    _rmi(docker_api, pair.b)
    if docker_api.inspect_image(pair.c)["Id"] != pair.ids[pair.c]:
        docker_api.tag(pair.ids[pair.c], *pair.c.rsplit(":", 1), force=True)


def engine_state(docker_api, pair: Pair, extra: tuple[str, ...] = ()) -> dict:
    """What each ref names and whether each image is there."""
    out: dict[str, str | None] = {}
    for r in [*pair.refs, *extra]:
        try:
            out[r] = docker_api.inspect_image(r)["Id"]
        except docker.errors.NotFound:
            out[r] = None
    for r, i in pair.ids.items():
        try:
            out[f"image {r}"] = docker_api.inspect_image(i)["Id"]
        except docker.errors.NotFound:
            out[f"image {r}"] = None
    return out


def _members(path: Path) -> list[tuple[tarfile.TarInfo, bytes | None]]:
    with tarfile.open(path) as t:
        return [(m, t.extractfile(m).read() if m.isfile() else None) for m in t]


def _retar(members, out: Path, change=lambda m, d: d) -> Path:
    with tarfile.open(out, "w", format=tarfile.USTAR_FORMAT) as t:
        for m, d in members:
            d = change(m, d)
            if d is not None:
                m.size = len(d)
            t.addfile(m, io.BytesIO(d) if d is not None else None)
    return out


def broken_second(pair: Pair, index_names_one: bool = False) -> Path:
    """The two-image archive with the second image's layer damaged (the engine
    finds it only when it checks that layer, after the first image is in).
    With index_names_one, index.json names the first alone (manifest.json,
    which the classic store reads, still both)."""
    members = _members(pair.both)
    manifest = json.loads(next(d for m, d in members if m.name == "manifest.json"))
    # the engine writes its entries in an order of its own: b's is found by its tag
    second = next(e for e in manifest if pair.b in (e.get("RepoTags") or []))["Layers"][0]

    def names(entry: dict) -> str:
        return " ".join(str(v) for v in (entry.get("annotations") or {}).values())

    def change(m, d):
        if m.name == second:
            return d[:-600] + b"\xa5" * 600
        if m.name == "index.json" and index_names_one:
            idx = json.loads(d)
            idx["manifests"] = [e for e in idx["manifests"] if pair.a in names(e)] or \
                idx["manifests"][:1]
            return json.dumps(idx).encode()
        return d
    return _retar(members, pair.root / f"broken-{index_names_one}.tar", change)


def one_line(r, code: int, words: list[str]) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    assert r.code == code, r.output[-2000:]
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


# -- several images --------------------------------------------------------------

@pytest.mark.parametrize("index_names_one", [False, True])
def test_two_images_the_second_broken_change_nothing(pair, docker_api, index_names_one):
    path = broken_second(pair, index_names_one)
    before = engine_state(docker_api, pair)
    r = imagekit("load", str(path), timeout=120)
    one_line(r, 14, ["holds 2 images", pair.a, pair.b, "--image"])
    assert engine_state(docker_api, pair) == before


def test_image_loads_one_of_two(pair, docker_api):
    path = broken_second(pair)
    r = imagekit("load", str(path), "--image", pair.a, timeout=120)
    assert r.code == 0, r.output[-2000:]
    assert docker_api.inspect_image(pair.a)["Id"] == pair.ids[pair.a]
    with pytest.raises(docker.errors.NotFound):
        docker_api.inspect_image(pair.b)


def test_the_broken_one_changes_nothing_not_even_a_tag_it_would_move(pair, docker_api):
    path = broken_second(pair)
    docker_api.tag(pair.ids[pair.c], *pair.b.rsplit(":", 1))    # b's tag, on another image
    try:
        before = engine_state(docker_api, pair)
        r = imagekit("load", str(path), "--image", pair.b, timeout=120)
        one_line(r, 14, ["invalid diffID", "nothing was loaded"])
        assert engine_state(docker_api, pair) == before
        assert docker_api.inspect_image(pair.b)["Id"] == pair.ids[pair.c]
    finally:
        _rmi(docker_api, pair.b)


def test_a_zip_of_two_tars(pair, docker_api):
    members = _members(pair.both)
    manifest = _by_ref(members, pair.a, pair.b)
    path = pair.root / "two.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for i, name in enumerate(("a.tar", "b.tar")):
            keep = {manifest[i]["Config"], *manifest[i]["Layers"]}

            def only(m, d, i=i, keep=keep):
                if m.name == "manifest.json":
                    return json.dumps([manifest[i]]).encode()
                return d
            one = _retar([(m, d) for m, d in members
                          if m.name not in ("index.json", "repositories")
                          and not (m.isfile() and m.name.startswith("blobs/") and
                                   m.name not in keep)],
                         pair.root / name, only)
            zf.write(one, name)
    before = engine_state(docker_api, pair)
    r = imagekit("load", str(path), timeout=120)
    one_line(r, 14, ["holds 2 tars", "a.tar", "b.tar"])
    assert engine_state(docker_api, pair) == before
    r = imagekit("load", str(path), "--image", "b.tar", timeout=120)
    assert r.code == 0, r.output[-2000:]
    assert docker_api.inspect_image(pair.b)["Id"] == pair.ids[pair.b]
    r = imagekit("load", str(path), "--image", pair.a, timeout=120)
    assert r.code == 0, r.output[-2000:]
    assert docker_api.inspect_image(pair.a)["Id"] == pair.ids[pair.a]


# -- what the engine would apply before the archive is checked ------------------------

def test_zeros_after_a_valid_tar_change_nothing(pair, docker_api):
    """The engine applies a tar as soon as it reads the tar's end: what comes
    after it (here zeros, 8 MiB) is never waited for. imagekit holds the end back
    until the checks pass; the zeros are refused."""
    single = pair.root / "a-only.tar"
    d = docker_cli("save", pair.c, "-o", str(single))
    assert d.returncode == 0, d.stderr
    path = pair.root / "a-then-zeros.tar"
    path.write_bytes(single.read_bytes() + bytes(8 << 20))
    _rmi(docker_api, pair.c)
    try:
        before = engine_state(docker_api, pair)
        r = imagekit("load", str(path), timeout=120)
        one_line(r, 14, ["goes on after the end of its tar"])
        assert engine_state(docker_api, pair) == before
    finally:
        r = imagekit("load", str(single), timeout=120)     # c back, the plain way
        assert r.code == 0, r.output[-2000:]


def test_a_zip_bomb(pair, docker_api, tmp_path):
    path = tmp_path / "bomb.zip"
    block = bytes(16 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf, \
            zf.open("x.tar", "w", force_zip64=True) as m:
        for _ in range(64):                  # 1 GiB of zeros
            m.write(block)
    assert path.stat().st_size < 8 << 20
    before = engine_state(docker_api, pair)
    code, _, stderr, seconds, rss_kb = measured(["-m", "imagekit", "load", str(path)], tmp_path)
    lines = stderr.strip().splitlines()
    assert code == 14 and len(lines) == 1 and "Traceback" not in stderr, stderr
    assert "not an image archive" in lines[0]
    assert rss_kb < RSS_LIMIT_KB and seconds < 15, (rss_kb, seconds)
    assert engine_state(docker_api, pair) == before


# -- the undo, with the real engine's tags ---------------------------------------------

@pytest.mark.parametrize("how", ["tags-more", "fails-after"])
def test_what_the_engine_does_beyond_the_ask_is_undone(pair, docker_api, how):
    """An engine that loads the archive and then also tags another ref, or
    fails after tagging: the load is undone on the real engine, the tag the
    archive moved put back on the image it named before."""
    extra = f"{unique('loadhostile-x')}:x"
    single = pair.root / "b-only.tar"
    members = _members(pair.both)
    manifest = _by_ref(members, pair.a, pair.b)
    _retar([(m, d) for m, d in members if m.name not in ("index.json", "repositories")], single,
           lambda m, d: json.dumps([manifest[1]]).encode() if m.name == "manifest.json" else d)

    class MoreEngine(Engine):
        def load(self, data):
            loaded = super().load(data)
            self.tag(loaded[0], *extra.rsplit(":", 1))
            if how == "fails-after":
                raise EngineStreamError("the engine broke off after tagging")
            return [*loaded, extra]

    docker_api.tag(pair.ids[pair.c], *pair.b.rsplit(":", 1))    # the tag the archive moves
    try:
        before = engine_state(docker_api, pair, (extra,))
        with pytest.raises(LoadError) as e:
            list(load_stage.load(single, MoreEngine.connect()))
        assert e.value.exit_code == 14 and "\n" not in e.value.message
        if how == "tags-more":
            assert "the load was undone" in e.value.message, e.value.message
        assert engine_state(docker_api, pair, (extra,)) == before
        assert docker_api.inspect_image(pair.b)["Id"] == pair.ids[pair.c]
    finally:
        _rmi(docker_api, extra)
        _rmi(docker_api, pair.b)
