"""The build graph against a fake engine, and `imagekit new` scaffolding."""

from __future__ import annotations

import pytest
import yaml

from imagekit.build import build_graph, graph
from imagekit.config import load_project
from imagekit.errors import CompatError, SpecError
from imagekit.events import Built, Failed, Result, Skipped, Step
from imagekit.new import scaffold
from imagekit.spec import load_spec, resolve

FW = {"framework": {"name": "mxnet", "version": "1.9.1"}, "python": "3.11"}


class GraphEngine:
    """Builds succeed unless the Dockerfile asks for a package named 'fail-me'."""

    def __init__(self):
        self.images = {}
        self.built = []

    def build(self, context, tag, network_mode=None, pull=False, nocache=False):
        text = context.getvalue().decode(errors="replace")
        yield {"stream": "Step 1/1 : FROM x\n"}
        if "fail-me" in text:
            yield {"error": "boom", "errorDetail": {"message": "boom"}}
            return
        self.built.append(tag)
        self.images[tag] = {"Id": f"sha256:{len(self.built):064d}"}
        yield {"aux": {"ID": self.images[tag]["Id"]}}

    def image(self, ref):
        return self.images.get(ref)

    def tag(self, *a):
        pass


def _proj(project):
    (project.root / "imagekit.toml").write_text("[bases]\n")
    project.add("root", {**FW, "tags": ["v1"]})
    project.add("mid", {"parent": "root", "tags": ["v1"]})
    project.add("leaf", {"parent": "mid", "tags": ["v1"]})
    project.add("badmid", {"parent": "root", "apt": ["fail-me"], "tags": ["v1"]})
    project.add("badleaf", {"parent": "badmid", "tags": ["v1"]})
    project.add("other", {**FW, "tags": ["v1"]})
    return load_project(project.root)


def test_graph_adds_ancestors_parents_first(project):
    p = _proj(project)
    order = [x.name for x in graph([p.catalog.resolve("leaf"), p.catalog.resolve("other")])]
    assert order == ["root", "mid", "leaf", "other"]


def test_failure_skips_descendants_and_builds_the_rest(project):
    p = _proj(project)
    eng = GraphEngine()
    plans = [p.catalog.resolve(n) for n in ("leaf", "badleaf", "other")]
    events = list(build_graph(plans, p, eng, jobs=2))
    assert eng.built.index("root:v1") < eng.built.index("mid:v1") < eng.built.index("leaf:v1")
    assert "badleaf:v1" not in eng.built and "other:v1" in eng.built
    assert [e.image for e in events if isinstance(e, Failed)] == ["badmid"]
    assert {e.image: e.reason for e in events if isinstance(e, Skipped)} == {
        "badleaf": "its parent badmid failed"}
    assert not [e for e in events if isinstance(e, Step) and e.image == "badleaf"]
    result = events[-1]
    assert isinstance(result, Result) and result.data["images"]["leaf"]["status"] == "ok"
    assert result.data["images"]["badmid"]["exit_code"] == 6
    assert len([e for e in events if isinstance(e, Built)]) == 4


def test_failure_after_build_fails_the_image(project):
    p = _proj(project)

    def after(plan):
        if plan.name == "mid":
            raise SpecError("mid: smoke said no")
        yield from ()

    events = list(build_graph([p.catalog.resolve("leaf")], p, GraphEngine(), after=after))
    assert {e.image for e in events if isinstance(e, Skipped)} == {"leaf"}


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
