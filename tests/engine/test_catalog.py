"""Images FROM images, built as a graph; and `imagekit new` from scratch to a
passing smoke test."""

from __future__ import annotations

import json

from helpers import unique


def _events(r):
    return [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]


def test_parent_is_built_before_child_and_failure_skips_children(mxnet_image, session_project,
                                                                 docker_api):
    p = session_project
    good, bad = unique("g-parent"), unique("g-badparent")
    kid, badkid, grandkid = unique("g-kid"), unique("g-badkid"), unique("g-grandkid")
    p.add(good, {"parent": mxnet_image.name, "env": {"LAYER": "parent"}, "tags": ["test"]})
    p.add(kid, {"parent": good, "env": {"LAYER": "kid"}, "tags": ["test"]})
    p.add(bad, {"parent": mxnet_image.name, "apt": ["no-such-package-imagekit"],
                "tags": ["test"]})
    p.add(badkid, {"parent": bad, "tags": ["test"]})
    p.add(grandkid, {"parent": badkid, "tags": ["test"]})
    try:
        r = p.run("--json", "build", kid, grandkid, "--jobs", "2", timeout=900)
        assert r.code == 6, r.output[-2000:]
        ev = _events(r)
        order = [(e["event"], e["image"]) for e in ev if e["event"] in ("step", "built")]
        first_kid_step = order.index(("step", kid))
        assert order.index(("built", good)) < first_kid_step
        assert ("built", kid) in order
        assert not any(img in (badkid, grandkid) for _, img in order), "children were attempted"
        skipped = {e["image"]: e["reason"] for e in ev if e["event"] == "skipped"}
        assert skipped[badkid] == f"its parent {bad} failed"
        assert grandkid in skipped
        result = next(e for e in ev if e["event"] == "result" and e["stage"] == "graph")["data"]
        assert result["images"][bad]["status"] == "failed"
        assert result["images"][kid]["status"] == "ok"
        plain = p.run("build", grandkid, timeout=900)
        assert plain.code == 6 and "skipped" in plain.stdout and badkid in plain.stdout
    finally:
        for n in (good, kid, bad, badkid, grandkid):
            try:
                docker_api.remove_image(f"{n}:test", force=True)
            except Exception:  # noqa: BLE001
                pass


def test_new_image_builds_and_passes_smoke(torch_image, session_project, docker_api):
    name = unique("myimg")
    r = session_project.run("new", name, "--framework", "pytorch", "--device", "cpu")
    assert r.code == 0, r.output
    assert session_project.run("fetch", name, timeout=900).code == 0
    try:
        r = session_project.run("build", name, "--smoke", timeout=1200)
        assert r.code == 0, r.output[-3000:]
        assert "smoke passed" in r.stdout and "resumed from step 20" in r.stdout
    finally:
        docker_api.remove_image(f"{name}:v1.0", force=True)
    again = session_project.run("new", name, "--framework", "pytorch")
    assert again.code == 3 and "already exists" in again.stderr


def test_objdetect_training_resumes_in_a_cpu_build(tf_image, session_project, docker_api):
    """objdetect-tf-gpu's code, smoke-tested through a CPU copy of its spec (the
    TensorFlow layers come from the session's ocr-cpu image's cache)."""
    name = unique("objdetect-cpu")
    session_project.copy("objdetect-tf-gpu", name, device="cpu", tags=["test"])
    assert session_project.run("fetch", name, timeout=900).code == 0
    try:
        r = session_project.run("--json", "build", name, "--smoke", timeout=1500)
        assert r.code == 0, r.output[-3000:]
        ev = _events(r)
        steps = {e["index"]: e["instruction"] for e in ev if e["event"] == "step"}
        cached = {e["index"] for e in ev if e["event"] == "cached"}
        reused = [i for i, ins in steps.items() if "python3 -m venv" in ins or "tensorflow==" in ins]
        assert len(reused) == 1 and set(reused) <= cached, (steps, cached)  # venv + TensorFlow
        rep = next(e for e in ev if e["event"] == "result" and e["stage"] == "smoke")["data"]
        assert rep["training"]["resumed_from"] == 20
        assert any(f.endswith(".index") for f in rep["training"]["output_files"])
    finally:
        docker_api.remove_image(f"{name}:test", force=True)
