"""What imagekit remembers (records: builds, smoke marks, the last build) and
which image a command acts on (targets: a catalog image, any image reference,
or what the last build made)."""

from __future__ import annotations

import json
import time

import pytest
from fakes import FakeEngine

from imagekit import records, targets
from imagekit.config import load_project
from imagekit.errors import ImagekitError, PushError, UsageError
from imagekit.events import SmokeResult

IID = "sha256:" + "ab" * 32


@pytest.fixture
def proj(offline):
    offline.add("x", {"framework": {"name": "pytorch", "version": "2.13.0"}, "tags": ["v1", "latest"]})
    return load_project(offline.root)


# -- records ----------------------------------------------------------------

def test_write_and_read_a_build_record(proj):
    rec = records.BuildRecord(IID, name="x", refs=["x:v1"], framework="pytorch", steps=7)
    path = records.write(proj, rec)
    assert path == proj.state_dir / "builds" / f"{'ab' * 8}.json"
    assert records.read(proj, IID) == rec
    assert records.read(proj, "sha256:" + "cd" * 32) is None
    assert not list(path.parent.glob(".*.tmp"))          # written whole, no temporary left


def test_smoke_mark_is_kept_across_rebuilds(proj):
    records.write(proj, records.BuildRecord(IID, name="x", steps=3))
    result = SmokeResult("x", ref="x:v1", image_id=IID, passed=True, started_at="2026-01-01T00:00:00Z")
    report = records.store_smoke(proj, result)
    assert json.loads(report.read_text())["ref"] == "x:v1"
    assert records.smoke_passed(proj, IID)
    mark = records.read(proj, IID).smoke
    assert mark.passed and mark.report == str(report) and mark.at == "2026-01-01T00:00:00Z"
    # the same image ID built again (a cache hit): the smoke mark stays, the rest is new
    records.write(proj, records.BuildRecord(IID, name="x", steps=9))
    again = records.read(proj, IID)
    assert again.steps == 9 and again.smoke == mark
    # a different image ID has not passed
    assert not records.smoke_passed(proj, "sha256:" + "cd" * 32)


def test_a_failed_smoke_clears_the_pass(proj):
    records.store_smoke(proj, SmokeResult("x", image_id=IID, passed=True))
    records.store_smoke(proj, SmokeResult("x", image_id=IID, passed=False, error="boom"))
    assert not records.smoke_passed(proj, IID)
    assert records.read(proj, IID).name == "x"


def test_unreadable_records_read_as_none(proj):
    path = records.build_path(proj, IID)
    path.parent.mkdir(parents=True)
    for text in ("{not json", "[1, 2]", ""):
        path.write_text(text)
        assert records.read(proj, IID) is None
    path.write_text('{"name": "x", "a_key_from_a_newer_imagekit": 1}')   # unknown keys dropped
    assert records.read(proj, IID) == records.BuildRecord(IID, name="x")


def test_last_build(proj):
    assert records.last_build(proj) is None
    records.set_last_build(proj, ["x"], "imagekit build x", {"x": IID})
    last = records.last_build(proj)
    assert last.names == ["x"] and last.command == "imagekit build x"
    assert last.image_ids == {"x": IID} and abs(last.at - time.time()) < 60
    (proj.state_dir / "last-build.json").write_text('{"names": []}')
    assert records.last_build(proj) is None


# -- targets ----------------------------------------------------------------

def test_a_built_catalog_image(proj):
    eng = FakeEngine()
    info = eng.add_image("x:v1", IID)
    t = targets.resolve(proj, eng, "x")
    assert (t.name, t.ref, t.image, t.image_id) == ("x", "x:v1", info, IID)
    assert t.plan is not None and t.fact("framework") == "pytorch" and t.fact("device") == "cpu"
    eng.add_image("x:latest", IID)
    assert targets.resolve(proj, eng, "x", "latest").ref == "x:latest"


def test_an_unbuilt_catalog_image_names_the_build(proj):
    with pytest.raises(PushError) as e:
        targets.resolve(proj, FakeEngine(), "x", error=PushError)
    assert "x:v1 is not built" in e.value.message and "imagekit build x" in e.value.message
    with pytest.raises(ImagekitError, match="x:nope is not built"):
        targets.resolve(proj, FakeEngine(), "x", "nope")


def test_any_image_reference_the_engine_holds(proj):
    eng = FakeEngine()
    labels = {"io.imagekit.framework": "mxnet", "io.imagekit.framework.version": "1.9.1"}
    eng.add_image("ghcr.io/org/trainer:2.1", IID, labels=labels)
    t = targets.resolve(proj, eng, "ghcr.io/org/trainer:2.1")
    assert t.plan is None and t.ref == t.name == "ghcr.io/org/trainer:2.1"
    assert t.fact("framework") == "mxnet" and t.fact("version") == "1.9.1"
    assert t.fact("device") is None


def test_a_missing_reference_is_a_usage_error_naming_docker_pull(proj):
    with pytest.raises(UsageError) as e:
        targets.resolve(proj, FakeEngine(), "ghcr.io/org/nope:1")
    assert e.value.exit_code == 2
    assert "docker pull ghcr.io/org/nope:1" in e.value.message and "known: x" in e.value.message
    # a plain name that is neither a catalog image nor an image
    with pytest.raises(UsageError, match="docker pull nosuch"):
        targets.resolve(proj, FakeEngine(), "nosuch")


def test_a_tag_with_a_reference_is_a_usage_error(proj):
    eng = FakeEngine()
    eng.add_image("ghcr.io/org/trainer", IID)
    with pytest.raises(UsageError) as e:
        targets.resolve(proj, eng, "ghcr.io/org/trainer", "v2")
    assert e.value.exit_code == 2 and "(ghcr.io/org/trainer:v2)" in e.value.message


def test_the_tag_hint_replaces_the_references_own_tag(proj):
    eng = FakeEngine()
    eng.add_image("localhost:5000/org/trainer:2.1", IID)
    with pytest.raises(UsageError) as e:
        targets.resolve(proj, eng, "localhost:5000/org/trainer:2.1", "v2")
    assert "(localhost:5000/org/trainer:v2)" in e.value.message


def test_what_the_last_build_made(proj):
    with pytest.raises(UsageError, match="nothing built yet") as e:
        targets.last_built(proj, "push")
    assert "imagekit push NAME" in e.value.message
    records.set_last_build(proj, ["x"], "imagekit build x --smoke", {"x": IID})
    names, line = targets.last_built(proj, "push")
    assert names == ["x"]
    assert line.startswith("pushing x, built ") and line.endswith("by `imagekit build x --smoke`")


def test_a_platform_contract_that_fails_does_not_close_the_push_gate(tmp_path):
    """The image trains (its plain smoke test passed); that it breaks one
    platform's contract is in that run's own report, beside the plain one."""
    from imagekit import records
    from imagekit.config import load_project
    from imagekit.events import SmokeResult
    project = load_project(tmp_path)
    key = "sha256:" + "cd" * 32
    plain = records.store_smoke(project, SmokeResult("x", image_id=key, passed=True), key)
    failed = records.store_smoke(project, SmokeResult("x", image_id=key, passed=False,
                                                      platform="sagemaker"), key)
    assert records.smoke_passed(project, key)
    assert failed != plain and failed.name.endswith(".sagemaker.json") and plain.exists()
    records.store_smoke(project, SmokeResult("x", image_id=key, passed=False), key)
    assert not records.smoke_passed(project, key)          # a plain failure closes it
    records.store_smoke(project, SmokeResult("x", image_id=key, passed=True,
                                             platform="openshift"), key)
    assert records.smoke_passed(project, key)              # a passed contract run opens it
