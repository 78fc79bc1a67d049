"""The bill of materials without an engine: the CycloneDX 1.5 document built
from a fixed inventory (valid against the official schema), purls, licences,
wheel hashes only where the wheelhouse holds the very wheel; the stage over
the fake engine; and the PATH.sbom.json sidecar save writes (all or nothing),
which load leaves alone."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
import zipfile
from pathlib import Path

import pytest
from cyclonedx_schema import errors as schema_errors
from fakes import FakeEngine, image_archive
from packageurl import PackageURL

from imagekit import load as load_stage
from imagekit import records, targets
from imagekit import save as save_stage
from imagekit import sbom as sbom_stage
from imagekit.archive import sbom_sidecar
from imagekit.config import load_project
from imagekit.errors import EngineError, Interrupted, SaveError, SbomError
from imagekit.events import SaveResult, SbomResult, Warn

TAR, IMAGE_ID = image_archive(["x:v1"])
TF_METADATA = b"Metadata-Version: 2.1\nName: tensorflow\nVersion: 2.21.0\n"

INVENTORY = {
    "python_version": "3.11.2", "prefix": "/opt/venv",
    "python": [
        {"name": "tensorflow", "version": "2.21.0", "license": "Apache 2.0",
         "license_expression": None, "classifiers": ["License :: OSI Approved :: Apache Software License"],
         "dist_info": "/opt/venv/lib/python3.11/site-packages/tensorflow-2.21.0.dist-info",
         "record_sha256": "11" * 32, "metadata_sha256": hashlib.sha256(TF_METADATA).hexdigest(),
         "wheel_tags": ["cp311-cp311-manylinux_2_27_x86_64"]},
        {"name": "Typing_Extensions", "version": "4.16.0", "license": None,
         "license_expression": "PSF-2.0", "classifiers": [], "dist_info": "/t", "record_sha256": "22" * 32,
         "metadata_sha256": "33" * 32, "wheel_tags": ["py3-none-any"]},
        {"name": "numpy", "version": "2.3.1", "license": "Copyright (c) 2005, NumPy Developers.\n"
         "All rights reserved.\n" + "x" * 500, "license_expression": None,
         "classifiers": ["License :: OSI Approved :: BSD License"], "dist_info": "/n",
         "record_sha256": "44" * 32, "metadata_sha256": "55" * 32, "wheel_tags": []},
        {"name": "oldpkg", "version": "1.0", "license": "UNKNOWN", "license_expression": None,
         "classifiers": [], "dist_info": "/o", "record_sha256": None, "metadata_sha256": None,
         "wheel_tags": []},
    ],
    "debian": [
        {"name": "libc6", "version": "2.36-9+deb12u14", "architecture": "amd64", "source": "glibc",
         "source_version": None},
        {"name": "perl-base", "version": "5.36.0-7+deb12u2", "architecture": "amd64",
         "source": "perl", "source_version": None},
        {"name": "libgcc-s1", "version": "1:12.2.0-14", "architecture": "amd64",
         "source": "gcc-12", "source_version": "12.2.0-14"},
        {"name": "tzdata", "version": "2025b-0+deb12u1", "architecture": "all", "source": None,
         "source_version": None},
    ],
    "cuda": [
        {"file": "libcudart.so.12", "library": "libcudart", "version": "12",
         "path": "/opt/venv/lib/python3.11/site-packages/nvidia/cuda_runtime/lib/libcudart.so.12",
         "bytes": 700000},
        {"file": "libcudnn.so.9", "library": "libcudnn", "version": "9",
         "path": "/opt/venv/lib/python3.11/site-packages/nvidia/cudnn/lib/libcudnn.so.9",
         "bytes": 100000, "package": "nvidia-cudnn-cu12", "package_version": "9.1.0.70"},
    ],
    "os": {"ID": "debian", "VERSION_ID": "12", "PRETTY_NAME": "Debian GNU/Linux 12 (bookworm)"},
}


def _engine(inventory: dict | None = INVENTORY, **script) -> FakeEngine:
    eng = FakeEngine(export=TAR)
    eng.add_image("x:v1", IMAGE_ID, size=len(TAR))
    if inventory is not None:
        script.setdefault("logs", ["some warning on stderr",
                                   sbom_stage.MARK + json.dumps(inventory)])
    if script:
        eng.on_run("inventory.py", **script)
    return eng


@pytest.fixture
def proj(offline):
    offline.add("x", {"framework": {"name": "pytorch", "version": "2.13.0"}, "tags": ["v1"]})
    p = load_project(offline.root)
    records.write(p, records.BuildRecord(IMAGE_ID, name="x"))
    return p


def _wheel(folder: Path, name: str, metadata: bytes) -> Path:
    path = folder / name
    dist = "-".join(name.split("-")[:2])
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(f"{dist}.dist-info/METADATA", metadata)
        zf.writestr("pkg/__init__.py", b"")
    return path


def _by_name(doc: dict) -> dict[str, dict]:
    return {c["name"]: c for c in doc["components"]}


def _props(comp: dict) -> dict[str, str]:
    return {p["name"]: p["value"] for p in comp.get("properties", [])}


def _doc(proj, tmp_path, **kw):
    eng = _engine()
    target = targets.resolve(proj, eng, "x")
    return sbom_stage.document(proj, target, INVENTORY, now=0, serial="urn:uuid:" + "0" * 8 +
                               "-0000-4000-8000-" + "0" * 12, **kw)


def test_document_is_valid_cyclonedx_1_5(proj, tmp_path):
    doc, counts = _doc(proj, tmp_path, wheelhouse=tmp_path / "none", config_digest=IMAGE_ID)
    assert schema_errors(doc) == []
    assert doc["bomFormat"] == "CycloneDX" and doc["specVersion"] == "1.5"
    assert counts == {"python_packages": 4, "debian_packages": 4, "cuda_libraries": 2,
                      "wheel_hashes": 0}
    meta = doc["metadata"]
    assert meta["timestamp"] == "1970-01-01T00:00:00Z"
    assert meta["tools"]["components"][0]["name"] == "imagekit"
    image = meta["component"]
    assert image["type"] == "container" and image["name"] == "x" and image["version"] == "v1"
    props = _props(image)
    assert props["imagekit:image-id"] == IMAGE_ID and props["imagekit:config-digest"] == IMAGE_ID
    assert props["imagekit:framework"] == "pytorch"
    base = image["pedigree"]["ancestors"][0]
    assert base["type"] == "container" and base["bom-ref"].startswith("base:")
    # every component is something the image depends on; bom-refs are unique
    refs = [c["bom-ref"] for c in doc["components"]]
    assert len(refs) == len(set(refs)) == len(doc["dependencies"][0]["dependsOn"])
    os_comp = _by_name(doc)["debian"]
    assert os_comp["type"] == "operating-system" and os_comp["version"] == "12"


def test_a_broken_document_is_caught_by_the_schema():
    assert schema_errors({"bomFormat": "CycloneDX", "specVersion": "1.5",
                          "components": [{"type": "lib", "name": "x"}]})
    # the SPDX id list is resolved locally: an unknown licence id is refused
    assert schema_errors({"bomFormat": "CycloneDX", "specVersion": "1.5", "components": [
        {"type": "library", "name": "x", "licenses": [{"license": {"id": "NOT-SPDX"}}]}]})


def test_purls_agree_with_packageurl_python(proj, tmp_path):
    doc, _ = _doc(proj, tmp_path)
    c = _by_name(doc)
    for comp in c.values():
        if "purl" in comp:
            assert comp["bom-ref"] == comp["purl"]
    assert c["Typing_Extensions"]["purl"] == "pkg:pypi/typing-extensions@4.16.0" == \
        PackageURL("pypi", None, "typing-extensions", "4.16.0").to_string()
    for name in ("libc6", "libgcc-s1", "tzdata"):
        comp = c[name]
        arch = _props(comp)["imagekit:deb:architecture"]
        want = PackageURL("deb", "debian", name, comp["version"], {"arch": arch}).to_string()
        assert PackageURL.from_string(comp["purl"]) == PackageURL.from_string(want)
    assert c["libc6"]["purl"] == "pkg:deb/debian/libc6@2.36-9%2Bdeb12u14?arch=amd64"
    assert PackageURL.from_string(c["libgcc-s1"]["purl"]).version == "1:12.2.0-14"
    assert _props(c["libgcc-s1"])["imagekit:deb:source"] == "gcc-12 (12.2.0-14)"


def test_licences_expression_then_license_then_classifiers(proj, tmp_path):
    doc, _ = _doc(proj, tmp_path)
    c = _by_name(doc)
    assert c["Typing_Extensions"]["licenses"] == [{"expression": "PSF-2.0"}]
    assert c["tensorflow"]["licenses"] == [{"license": {"name": "Apache 2.0"}}]
    # a whole licence text in License: the classifier names it instead
    assert c["numpy"]["licenses"] == [{"license": {"name": "BSD License"}}]
    assert "licenses" not in c["oldpkg"]
    assert sbom_stage.licenses({"license": "Line one\nline two"}) == \
        [{"license": {"name": "Line one (first line)"}}]


def test_wheel_hash_only_for_the_very_wheel_in_the_wheelhouse(proj, tmp_path):
    wh = tmp_path / "wh"
    wh.mkdir()
    tf = _wheel(wh, "tensorflow-2.21.0-cp311-cp311-manylinux_2_27_x86_64.whl", TF_METADATA)
    _wheel(wh, "tensorflow-2.21.0-cp312-cp312-manylinux_2_27_x86_64.whl", TF_METADATA)  # other tags
    _wheel(wh, "typing_extensions-4.16.0-py3-none-any.whl", b"Name: typing_extensions\nchanged\n")
    doc, counts = _doc(proj, tmp_path, wheelhouse=wh)
    assert schema_errors(doc) == []
    c = _by_name(doc)
    assert c["tensorflow"]["hashes"] == [{"alg": "SHA-256",
                                          "content": hashlib.sha256(tf.read_bytes()).hexdigest()}]
    assert tf.name in _props(c["tensorflow"])["imagekit:hash-of"]
    # same name and version, but its METADATA is not the installed one: no hash claimed
    te = c["Typing_Extensions"]
    assert "hashes" not in te
    assert _props(te)["imagekit:dist-info:record-sha256"] == "22" * 32
    assert "RECORD" in _props(te)["imagekit:hash-of"]
    assert counts["wheel_hashes"] == 1


def test_cuda_libraries_are_library_components(proj, tmp_path):
    doc, _ = _doc(proj, tmp_path)
    libs = [c for c in doc["components"] if _props(c).get("imagekit:package-type") == "cuda-library"]
    assert {(c["name"], c["version"]) for c in libs} == {("libcudart", "12"), ("libcudnn", "9")}
    assert all(_props(c)["imagekit:path"].startswith("/opt/venv/") for c in libs)
    by = {c["name"]: _props(c) for c in libs}
    assert by["libcudnn"]["imagekit:installed-by"] == "pkg:pypi/nvidia-cudnn-cu12@9.1.0.70"
    assert "imagekit:installed-by" not in by["libcudart"]


def test_stage_runs_the_script_without_network_and_writes_atomically(proj, tmp_path):
    eng = _engine()
    out = tmp_path / "x.sbom.json"
    target = targets.resolve(proj, eng, "x", error=SbomError)
    kept: list[dict] = []
    events = list(sbom_stage.sbom(proj, target, eng, output=out, keep=kept))
    res = events[-1]
    assert isinstance(res, SbomResult) and res.path == str(out)
    assert (res.python_packages, res.debian_packages, res.cuda_libraries) == (4, 4, 2)
    assert json.loads(out.read_text()) == kept[0] and schema_errors(kept[0]) == []
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("x.")) == [out.name]
    run = eng.calls_to("container")[0]
    assert run["network"] is False and run["command"] == ["python", sbom_stage.INVENTORY_IN_CONTAINER]
    c = eng.containers[0]
    assert c.removed and c.file_names() == [sbom_stage.INVENTORY_IN_CONTAINER.lstrip("/")]
    with tarfile.open(fileobj=io.BytesIO(c.files)) as tar:
        assert tar.extractfile(tar.getmembers()[0]).read() == sbom_stage.INVENTORY.read_bytes()
    # --json: the event carries the counts, not the document
    data = res.to_dict()["data"]
    assert "components" not in data and data["debian_packages"] == 4 and res.to_dict()["stage"] == "sbom"


def test_image_without_python_is_one_line_exit_13(proj, tmp_path):
    eng = _engine(None, logs=["exec: \"python\": executable file not found in $PATH"], exit_code=127)
    out = tmp_path / "x.sbom.json"
    target = targets.resolve(proj, eng, "x", error=SbomError)
    with pytest.raises(SbomError) as e:
        list(sbom_stage.sbom(proj, target, eng, output=out))
    assert e.value.exit_code == 13 and "\n" not in e.value.message and "exit 127" in e.value.message
    assert "no `python` on its PATH" in e.value.message
    assert not out.exists() and all(c.removed for c in eng.containers)


def test_unbuilt_image_is_the_usual_not_built_error(proj):
    with pytest.raises(SbomError, match="not built; run `imagekit build x` first") as e:
        targets.resolve(proj, _engine(), "x", "nope", error=SbomError)
    assert e.value.exit_code == 13


def test_timeout_and_ctrl_c(proj, tmp_path, monkeypatch):
    eng = _engine(hang=True)
    target = targets.resolve(proj, eng, "x")
    with pytest.raises(SbomError, match="took longer than"):
        list(sbom_stage.sbom(proj, target, eng))
    assert all(c.removed for c in eng.containers)

    def interrupted(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(sbom_stage, "inventory", interrupted)
    with pytest.raises(Interrupted) as e:
        list(sbom_stage.sbom(proj, target, eng, output=tmp_path / "y.json"))
    assert e.value.exit_code == 130 and not (tmp_path / "y.json").exists()


# -- the save sidecar ------------------------------------------------------------

@pytest.fixture
def out_dir(tmp_path):
    d = tmp_path / "out"
    d.mkdir()
    return d


def _save(p, eng, out, fmt="tar", **kw):
    target = targets.resolve(p, eng, "x", error=SaveError)
    return list(save_stage.save(p, target, eng, fmt=fmt, output=out, **kw))


def test_save_writes_the_sbom_beside_the_archive_and_load_accepts_it(proj, out_dir):
    out = out_dir / "x.zip"
    events = _save(proj, _engine(), out, "zip")
    res = events[-1]
    bom = sbom_sidecar(out)
    assert isinstance(res, SaveResult) and res.sbom_file == str(bom)
    assert sorted(p.name for p in out_dir.iterdir()) == sorted(
        [out.name, out.name + ".sha256", out.name + ".json", out.name + ".sbom.json"])
    doc = json.loads(bom.read_text())
    assert schema_errors(doc) == [] and _props(doc["metadata"]["component"])[
        "imagekit:image-id"] == IMAGE_ID
    assert json.loads((out_dir / (out.name + ".json")).read_text())["sbom"] == bom.name
    fresh = FakeEngine()
    loaded = list(load_stage.load(out, fresh))[-1]
    assert loaded.checksum == "verified" and loaded.refs == ["x:v1"]
    bom.write_text("not json at all")       # load never reads it
    assert list(load_stage.load(out, FakeEngine()))[-1].refs == ["x:v1"]


def test_failed_save_leaves_no_sidecar(proj, out_dir):
    out = out_dir / "x.tar"
    eng = _engine()
    eng.fail_after, eng.chunk = 2000, 1000
    eng.fail_with = EngineError("export of x:v1 broke off: connection reset")
    with pytest.raises(SaveError, match="connection reset"):
        _save(proj, eng, out)
    assert list(out_dir.iterdir()) == []


def test_ctrl_c_after_the_listing_leaves_no_sidecar(proj, out_dir):
    eng = _engine()
    eng.fail_after, eng.chunk, eng.fail_with = 2000, 1000, KeyboardInterrupt()
    with pytest.raises(Interrupted):
        _save(proj, eng, out_dir / "x.tar")
    assert list(out_dir.iterdir()) == []


def test_image_that_cannot_be_listed_is_saved_without_sbom_and_an_old_one_goes(proj, out_dir):
    out = out_dir / "x.tar"
    sbom_sidecar(out).write_text("{}")      # from an earlier save of another image
    events = _save(proj, _engine(None, exit_code=127), out)
    warns = [e for e in events if isinstance(e, Warn)]
    assert warns and "no bill of materials" in warns[0].message
    assert events[-1].sbom_file == "" and not sbom_sidecar(out).exists()
    assert json.loads((out_dir / "x.tar.json").read_text())["sbom"] is None
    assert sorted(p.name for p in out_dir.iterdir()) == ["x.tar", "x.tar.json", "x.tar.sha256"]


def test_save_no_sbom_runs_no_container_and_writes_none(proj, out_dir):
    eng = _engine()
    events = _save(proj, eng, out_dir / "x.tar", sbom=False)
    assert events[-1].sbom_file == "" and eng.calls_to("container") == []
    assert not [e for e in events if isinstance(e, Warn)]
    assert sorted(p.name for p in out_dir.iterdir()) == ["x.tar", "x.tar.json", "x.tar.sha256"]


def test_the_inventory_script_runs_on_this_python():
    """The script itself (stdlib only), run by this interpreter: one marked JSON line."""
    import subprocess
    import sys
    r = subprocess.run([sys.executable, str(sbom_stage.INVENTORY)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    (line,) = [x for x in r.stdout.splitlines() if x.startswith(sbom_stage.MARK)]
    inv = json.loads(line[len(sbom_stage.MARK):])
    assert set(inv) >= {"python", "debian", "cuda", "os", "python_version"}
    pytest_pkg = next(p for p in inv["python"] if p["name"].lower() == "pytest")
    assert pytest_pkg["version"] == pytest.__version__ and len(pytest_pkg["record_sha256"]) == 64
    assert any(t.endswith("-any") for t in pytest_pkg["wheel_tags"])
