"""`build --check-reproducible` without an engine: which layers of two builds
differ, which paths of a layer differ and how (from small layer tars made
here, in both export layouts), why, and that the two throwaway images go on
every way out."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import pytest
from fakes import FakeEngine, image_archive, image_id

from imagekit.config import load_project
from imagekit.engine import BuildDone, BuildStep, ClassicBuilder, ImageInfo
from imagekit.engine.files import FileEntry, image_files
from imagekit.errors import BuildError, Interrupted
from imagekit.events import PathDifference, ReproduceResult
from imagekit.render import step_label
from imagekit.reproduce import (
    WHY_CLASSIC_COPY,
    WHY_PYC,
    check,
    differing_layers,
    path_differences,
    why,
)

A, B, C, D = (f"sha256:{c * 64}" for c in "abcd")


# -- which layers ------------------------------------------------------------------

def test_only_layers_above_the_base_are_compared():
    layers = differing_layers([A, B, C], [A, B, D], below=1)
    assert [(x.index, x.same, x.diff_ids) for x in layers] == [(2, True, [B, B]),
                                                               (3, False, [C, D])]


def test_a_layer_only_one_build_has_differs():
    layers = differing_layers([A, B], [A, B, C], below=1)
    assert [(x.index, x.same, x.diff_ids) for x in layers] == [(2, True, [B, B]),
                                                               (3, False, ["", C])]


# -- which paths, and how ------------------------------------------------------------

def _file(data: bytes = b"x", **kw) -> FileEntry:
    fields = {"kind": "file", "mode": 0o644, "uid": 0, "gid": 0, "mtime": 315532800.0,
              "size": len(data), "content": "sha256:" + hashlib.sha256(data).hexdigest()}
    return FileEntry(**{**fields, **kw})


def test_each_aspect_that_differs_is_named_with_both_values():
    first = {"same": _file(), "stamp": _file(b"1"), "t": _file(), "m": _file(), "o": _file(),
             "gone": _file()}
    second = {"same": _file(), "stamp": _file(b"2"), "t": _file(mtime=1796417489.25),
              "m": _file(mode=0o755), "o": _file(uid=1000, gid=1000), "new": _file()}
    got = {d.path: d for d in path_differences(first, second)}
    assert list(got) == ["/gone", "/m", "/new", "/o", "/stamp", "/t"]
    assert got["/stamp"].what == ["content"]
    assert got["/stamp"].first.endswith(" 1 B") and got["/stamp"].first != got["/stamp"].second
    assert (got["/t"].what, got["/t"].first, got["/t"].second) == \
        (["mtime"], "1980-01-01T00:00:00Z", "2026-12-04T20:51:29.250Z")
    assert (got["/m"].what, got["/m"].first, got["/m"].second) == (["mode"], "0644", "0755")
    assert (got["/o"].what, got["/o"].second) == (["owner"], "1000:1000")
    assert (got["/gone"].what, got["/gone"].second) == (["only in build 1"], "absent")
    assert got["/new"].what == ["only in build 2"] and got["/new"].first == "absent"


def test_why_a_whiteout_the_classic_copy_and_timestamped_bytecode():
    wh = [PathDifference("/var/lib/dpkg/.wh.status-old", ["mtime"])]
    assert "deletes /var/lib/dpkg/status-old" in why(wh, "buildkit", "RUN apt-get …")
    opaque = [PathDifference("/opt/x/.wh..wh..opq", ["mtime"])]
    assert "what /opt/x held" in why(opaque, "buildkit", "RUN rm -rf /opt/x/*")
    copy = [PathDifference("/opt/ssd", ["mtime"])]
    assert why(copy, "classic", "COPY dir:ab in /opt/ssd") == WHY_CLASSIC_COPY
    assert why(copy, "buildkit", "COPY code/ /opt/ssd/") == ""
    pyc = [PathDifference("/opt/venv/a/__pycache__/b.cpython-311.pyc", ["content", "mtime"])]
    assert why(pyc, "buildkit", "RUN pip install b") == WHY_PYC
    assert why([PathDifference("/stamp", ["content"])], "buildkit", "RUN date > /stamp") == ""


# -- layer tars read from an export --------------------------------------------------

def _layer(members: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for m in members:
            info, data = m if isinstance(m, tuple) else (m, None)
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _info(name: str, kind: bytes = tarfile.REGTYPE, **kw) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime = kind, 0o644, 315532800
    for k, v in kw.items():
        setattr(info, k, v)
    return info


def _oci_export(layers: list[bytes], stored: list[bytes], history: list[str]) -> bytes:
    """An Engine 25+ export: OCI layout, blobs named by their digest as stored."""
    diff_ids = ["sha256:" + hashlib.sha256(x).hexdigest() for x in layers]
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "history": [{"created_by": h} for h in history],
                         "rootfs": {"type": "layers", "diff_ids": diff_ids}}).encode()

    def blob(data: bytes) -> tuple[str, bytes]:
        return f"blobs/sha256/{hashlib.sha256(data).hexdigest()}", data

    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": "sha256:" + hashlib.sha256(config).hexdigest(), "size": len(config)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": "sha256:" + hashlib.sha256(s).hexdigest(), "size": len(s)}
                   for s in stored]}).encode()
    index = json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:" + hashlib.sha256(manifest).hexdigest(), "size": len(manifest)}]})
    members = [blob(s) for s in stored] + [blob(config), blob(manifest),
                                           ("index.json", index.encode()),
                                           ("oci-layout", b'{"imageLayoutVersion":"1.0.0"}')]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in sorted(members):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _chunks(data: bytes, n: int = 1000):
    return (data[i:i + n] for i in range(0, len(data), n))


BASE = _layer([(_info("etc/os-release"), b"debian\n")])
TOP = _layer([
    _info("opt", tarfile.DIRTYPE, mode=0o755),
    (_info("opt/run.sh", mode=0o755, mtime=1796417489.5, uid=1000, gid=100), b"#!/bin/sh\n"),
    _info("opt/link", tarfile.SYMTYPE, linkname="run.sh"),
    _info("opt/again", tarfile.LNKTYPE, linkname="opt/run.sh"),
    _info("usr/bin/ping", pax_headers={"SCHILY.xattr.security.capability": "cap"}),
    _info("var/lib/.wh.old"),
])


def test_entries_of_each_layer_from_an_oci_export_gzip_included():
    got = image_files(_chunks(_oci_export([BASE, TOP], [BASE, gzip.compress(TOP)],
                                          ["/bin/sh -c #(nop) ADD base", "RUN |1 SOURCE_DATE_EPOCH"
                                           "=315532800 /bin/bash -o pipefail -c ./run.sh"])))
    assert got.steps == ["ADD base", "RUN ./run.sh"]
    assert got.diff_ids == ["sha256:" + hashlib.sha256(x).hexdigest() for x in (BASE, TOP)]
    base, top = got.layers
    assert base == {"etc/os-release": _file(b"debian\n")}
    assert top["opt"] == FileEntry("dir", 0o755, 0, 0, 315532800.0)
    assert top["opt/run.sh"] == _file(b"#!/bin/sh\n", mode=0o755, mtime=1796417489.5, uid=1000,
                                      gid=100)
    assert top["opt/link"] == FileEntry("symlink", 0o644, 0, 0, 315532800.0, 0, "run.sh")
    assert top["opt/again"].kind == "hardlink" and top["opt/again"].content == "opt/run.sh"
    assert top["usr/bin/ping"].xattrs == (("security.capability", "cap"),)
    assert "var/lib/.wh.old" in top


def test_a_layer_both_builds_share_is_passed_over_unread():
    export = _oci_export([BASE, TOP], [BASE, TOP], ["ADD base", "RUN x"])
    got = image_files(_chunks(export), skip=["sha256:" + hashlib.sha256(BASE).hexdigest()])
    assert got.layers[0] is None and "opt/run.sh" in got.layers[1]


def test_zstd_layers_and_the_legacy_layout():
    import zstandard
    zst = zstandard.ZstdCompressor().compress(TOP)
    got = image_files(_chunks(_oci_export([TOP], [zst], ["RUN x"])))
    assert got.layers[0]["opt/run.sh"].size == len(b"#!/bin/sh\n")
    archive, _ = image_archive(layers=[{"a.txt": b"a"}, {"b.txt": b"b"}])
    legacy = image_files(_chunks(archive))
    assert legacy.steps == ["step 1", "step 2"]
    assert [sorted(x) for x in legacy.layers] == [["a.txt"], ["b.txt"]]


# -- the stage: two throwaway builds, compared, removed --------------------------------

class _Engine(FakeEngine):
    """Reports diff IDs: the base's, then one per build's layers."""

    def __init__(self, tops: list[list[str]], exports: list[bytes] | None = None, **kw):
        super().__init__(**kw)
        self.tops, self.exports = tops, exports or []
        self.images["b:1"] = ImageInfo(image_id(99), diff_ids=(A,))

    def image(self, ref: str) -> ImageInfo | None:
        info = super().image(ref)
        if info is None or ref == "b:1":
            return info
        n = int(ref.split("reproduce-")[1][0]) - 1
        return ImageInfo(info.id, diff_ids=(A, *self.tops[n]))

    def save(self, ref, chunk_size: int = 0):
        self._record("save", ref=ref)
        yield self.exports[int(ref.split("reproduce-")[1][0]) - 1]


@pytest.fixture
def plan_project(offline):
    offline.add("x", {"framework": {"name": "pytorch", "version": "2.13.0"},
                      "tags": ["v1"]})
    (offline.root / "imagekit.toml").write_text(
        (offline.root / "imagekit.toml").read_text() +
        '[bases]\n"python:3.11-slim-bookworm" = "b:1"\n')
    project = load_project(offline.root)
    return project.catalog.resolve("x"), project


def _builds(tag, dockerfile):
    return [BuildStep(1, 1, "RUN x"), BuildDone(image_id(int(tag.split("reproduce-")[1][0])))]


def _removed(eng) -> list[str]:
    return [c["ref"] for c in eng.calls_to("remove_image")]


def test_alike_builds_read_nothing_and_leave_nothing(plan_project):
    plan, project = plan_project
    eng = _Engine([[B, C], [B, C]], builds=_builds)
    events = list(check(plan, project, eng, ClassicBuilder(eng)))
    result = events[-1]
    assert isinstance(result, ReproduceResult) and result.reproducible
    assert (result.identical, result.total, result.base_layers) == (2, 2, 1)
    assert [c["nocache"] for c in eng.calls_to("build")] == [True, True]
    assert eng.calls_to("save") == []
    assert len(_removed(eng)) == 2 and not any("reproduce" in r for r in eng.images)


def test_a_differing_layer_is_named_with_its_paths(plan_project):
    plan, project = plan_project
    one = _layer([(_info("stamp"), b"1\n")])
    two = _layer([(_info("stamp"), b"2\n")])
    ids = ["sha256:" + hashlib.sha256(x).hexdigest() for x in (one, two)]
    eng = _Engine([[B, ids[0]], [B, ids[1]]], builds=_builds,
                  exports=[_oci_export([BASE, BASE, x], [BASE, BASE, x],
                                       ["ADD", "RUN x", "RUN date > /stamp"]) for x in (one, two)])
    result = list(check(plan, project, eng, ClassicBuilder(eng)))[-1]
    assert not result.reproducible and (result.identical, result.total) == (1, 2)
    layer = result.layers[1]
    assert (layer.index, layer.same, layer.step) == (3, False, "RUN date > /stamp")
    assert [(d.path, d.what) for d in layer.paths] == [("/stamp", ["content"])]
    assert len(_removed(eng)) == 2


@pytest.mark.parametrize("failure, error", [(BuildError("x: build failed"), BuildError),
                                            (KeyboardInterrupt(), Interrupted)])
def test_the_throwaway_images_go_when_the_second_build_fails(plan_project, failure, error):
    plan, project = plan_project

    def builds(tag, dockerfile):
        return _builds(tag, dockerfile) if "reproduce-1" in tag else [BuildStep(1, 1, "RUN x"),
                                                                      failure]
    eng = _Engine([[B], [B]], builds=builds)
    with pytest.raises(error):
        list(check(plan, project, eng, ClassicBuilder(eng)))
    assert len(_removed(eng)) == 2 and not any("reproduce" in r for r in eng.images)


def test_the_throwaway_images_go_when_the_display_stops_reading(plan_project):
    plan, project = plan_project
    eng = _Engine([[B], [B]], builds=_builds)
    gen = check(plan, project, eng, ClassicBuilder(eng))
    for ev in gen:
        if type(ev).__name__ == "Built":
            break
    gen.close()                      # what cli._show does on Ctrl-C
    assert len(_removed(eng)) == 2 and not any("reproduce" in r for r in eng.images)


# -- what the templates and the builder are given ----------------------------------------

def _instructions(text: str) -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments out."""
    out: list[str] = []
    carry = ""
    for line in text.splitlines():
        if not carry and (not line.strip() or line.startswith("#")):
            continue
        carry += line.rstrip("\\") + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            out.append(carry)
            carry = ""
    return out


@pytest.mark.parametrize("builder", ["classic", "buildkit"])
def test_every_run_step_of_the_catalog_marks_its_start_and_clamps_its_times(builder):
    from helpers import REPO

    from imagekit.render import render
    project = load_project(REPO)
    for name in project.catalog.names():
        steps = _instructions(render(project.catalog.resolve(name), project, builder))
        assert steps[0].startswith("FROM ") and steps[1].startswith("ARG SOURCE_DATE_EPOCH="), name
        runs = [s for s in steps if s.startswith("RUN ")]
        assert runs, name
        for run in runs:
            assert "touch /dev/shm/imagekit-step && sleep 0.02 &&" in run, (name, run[:120])
            assert run.endswith('-newer /dev/shm/imagekit-step -exec touch -h -d '
                                '"@$SOURCE_DATE_EPOCH" {} +'), (name, run[-160:])
            assert ("-path /wheels" in run) == (builder == "buildkit"), name
            # a build's progress shows the step's own command alone
            label = step_label(run)
            assert "imagekit-step" not in label and "SOURCE_DATE_EPOCH" not in label, label
            assert label.startswith("RUN ") and len(label) > len("RUN ") + 5, label
            own = run.replace("touch /dev/shm/imagekit-step && sleep 0.02 && ", "")
            assert own.replace(" ", "").startswith(label.replace(" ", "")), label


def test_a_step_label_keeps_what_the_author_wrote():
    run = ('RUN --network=none touch /dev/shm/imagekit-step && sleep 0.02 && apt-get install -y '
           'curl && find /var/log /var/cache/ldconfig -type f -newer /dev/shm/imagekit-step '
           '-exec truncate -s 0 {} + && touch -h -d "@$SOURCE_DATE_EPOCH" /etc && find / -xdev '
           '\\( -path /proc \\) -prune -o -newer /dev/shm/imagekit-step -exec touch -h -d '
           '"@$SOURCE_DATE_EPOCH" {} +')
    assert step_label(run) == "RUN --network=none apt-get install -y curl"
    assert step_label("RUN echo a && find / -name x") == "RUN echo a && find / -name x"
    # BuildKit's progress shows the ARG's value in its place
    shown = ('RUN mkdir -p /opt/ocr  && chmod 755 /usr/local/bin/train  && touch -h -d '
             '"@315532800" /etc  && find / -xdev \\( -path /proc -o -path /wheels \\) -prune -o '
             '-newer /dev/shm/imagekit-step -exec touch -h -d "@315532800" {} +')
    assert step_label(shown) == "RUN mkdir -p /opt/ocr  && chmod 755 /usr/local/bin/train"


def test_buildkit_is_given_the_epoch_for_the_image_config(tmp_path):
    from imagekit.engine import BuildxBuilder
    cmd = BuildxBuilder(FakeEngine()).command(tmp_path, "x:v1", tmp_path / "m.json",
                                              nocache=True, contexts={}, out=None,
                                              source_date_epoch=315532800)
    i = cmd.index("--build-arg")
    assert cmd[i + 1] == "SOURCE_DATE_EPOCH=315532800" and "--no-cache" in cmd
