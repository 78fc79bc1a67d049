"""The build graph against the fake engine, and `imagekit new` scaffolding."""

from __future__ import annotations

import pytest
import yaml
from fakes import FakeEngine, build_ok

from imagekit.config import load_project
from imagekit.engine import BuildStep
from imagekit.errors import CompatError, EngineStreamError, SpecError
from imagekit.events import Built, Failed, GraphResult, ImageOutcome, Skipped, Step
from imagekit.graph import build_graph, order
from imagekit.new import scaffold
from imagekit.spec import load_spec, resolve

FW = {"framework": {"name": "mxnet", "version": "1.9.1"}, "python": "3.11"}


def graph_engine() -> FakeEngine:
    """Builds succeed unless the Dockerfile asks for a package named 'fail-me'."""
    ids = iter(range(1, 100))

    def script(tag: str, dockerfile: str) -> list:
        if "fail-me" in dockerfile:
            return [BuildStep(1, 1, "FROM x"), EngineStreamError("boom")]
        return build_ok(f"sha256:{next(ids):064d}", ("FROM x",))

    return FakeEngine(builds=script)


def _proj(project):
    project.add("root", {**FW, "tags": ["v1"]})
    project.add("mid", {"parent": "root", "tags": ["v1"]})
    project.add("leaf", {"parent": "mid", "tags": ["v1"]})
    project.add("badmid", {"parent": "root", "apt": ["fail-me"], "tags": ["v1"]})
    project.add("badleaf", {"parent": "badmid", "tags": ["v1"]})
    project.add("other", {**FW, "tags": ["v1"]})
    return load_project(project.root)


def test_graph_adds_ancestors_parents_first(offline):
    p = _proj(offline)
    got = [x.name for x in order([p.catalog.resolve("leaf"), p.catalog.resolve("other")])]
    assert got == ["root", "mid", "leaf", "other"]


def test_failure_skips_descendants_and_builds_the_rest(offline):
    p = _proj(offline)
    eng = graph_engine()
    plans = [p.catalog.resolve(n) for n in ("leaf", "badleaf", "other")]
    events = list(build_graph(plans, p, eng, jobs=2))
    assert eng.built.index("root:v1") < eng.built.index("mid:v1") < eng.built.index("leaf:v1")
    assert "badleaf:v1" not in eng.built and "other:v1" in eng.built
    assert [t for t in (c["tag"] for c in eng.calls_to("build")) if t.startswith("badleaf")] == []
    assert [e.image for e in events if isinstance(e, Failed)] == ["badmid"]
    assert {e.image: e.reason for e in events if isinstance(e, Skipped)} == {
        "badleaf": "its parent badmid failed"}
    assert not [e for e in events if isinstance(e, Step) and e.image == "badleaf"]
    result = events[-1]
    assert isinstance(result, GraphResult)
    assert result.images["leaf"] == ImageOutcome("ok")
    assert result.images["badleaf"].status == "skipped"
    bad = result.images["badmid"]
    assert bad.status == "failed" and bad.exit_code == 6 and "boom" in bad.reason
    assert any(d.startswith("full log: ") for d in bad.details)
    assert len([e for e in events if isinstance(e, Built)]) == 4
    assert result.to_dict()["data"]["images"]["badmid"]["exit_code"] == 6


def test_failure_after_build_fails_the_image(offline):
    p = _proj(offline)

    def after(plan):
        if plan.name == "mid":
            raise SpecError("mid: smoke said no")
        yield from ()

    events = list(build_graph([p.catalog.resolve("leaf")], p, graph_engine(), after=after))
    assert {e.image for e in events if isinstance(e, Skipped)} == {"leaf"}
    assert events[-1].images["mid"] == ImageOutcome("failed", "mid: smoke said no", 3, [])


def test_an_unexpected_exception_fails_only_its_image(offline):
    p = _proj(offline)

    def before(plan):
        if plan.name == "other":
            raise RuntimeError("surprise")
        yield from ()

    events = list(build_graph([p.catalog.resolve("other"), p.catalog.resolve("root")], p,
                              graph_engine(), before=before))
    res = events[-1]
    assert res.images["other"].status == "failed" and "RuntimeError: surprise" in \
        res.images["other"].reason
    assert res.images["root"].status == "ok"


def test_new_scaffolds_a_valid_spec(project):
    p = load_project(project.root)
    for fw in ("pytorch", "tensorflow", "mxnet"):
        folder = scaffold(p, f"my-{fw}", fw, "cpu")
        spec = load_spec(folder / "image.yaml")
        plan = resolve(spec, p.catalog)
        assert plan.framework == fw and (folder / "code" / "train.py").is_file()
        data = yaml.safe_load((folder / "image.yaml").read_text())
        assert data["smoke"]["resume"] is True and data["smoke"]["expect"]
    with pytest.raises(SpecError, match="already exists"):
        scaffold(p, "my-pytorch", "pytorch", "cpu")
    with pytest.raises(CompatError):
        scaffold(p, "bad", "pytorch", "cpu", version="2.15.0", python="3.10")
    assert not (p.catalog.dir / "bad").exists()
    with pytest.raises(SpecError, match="not a valid image name"):
        scaffold(p, "Bad Name", "pytorch", "cpu")
