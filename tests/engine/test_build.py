"""Build against the real engine: a TensorFlow image from the bootstrapped
base and the wheelhouse, TensorFlow running inside, and cache reuse."""

from __future__ import annotations

import json

from helpers import docker_cli, unique

from imagekit.engine import identity_of


def test_tensorflow_runs_inside(tf_image, docker_api):
    r = docker_cli("run", "--rm", tf_image.ref, "python", "-c",
                   "import tensorflow as tf; print('TF', tf.__version__, "
                   "float(tf.reduce_sum(tf.ones([4]))))")
    assert r.returncode == 0, r.stderr
    assert "TF 2.21.0 4.0" in r.stdout


def test_labels_and_build_record(tf_image, docker_api):
    labels = docker_api.inspect_image(tf_image.ref)["Config"]["Labels"]
    assert labels["io.imagekit.framework"] == "tensorflow"
    assert labels["io.imagekit.framework.version"] == "2.21.0"
    assert labels["io.imagekit.device"] == "cpu"
    assert labels["org.opencontainers.image.title"] == tf_image.name
    assert labels["io.imagekit.spec.digest"].startswith("sha256:")
    key = identity_of(docker_api.inspect_image(tf_image.ref))  # the same on every image store
    rec = tf_image.project.root / ".imagekit" / "builds" / f"{key.removeprefix('sha256:')[:16]}.json"
    data = json.loads(rec.read_text())
    assert data["image_id"] == key and data["engine_id"] == tf_image.image_id


def test_code_change_rebuilds_only_the_code_layer(tf_image, session_project, docker_api):
    """A copy of ocr-cpu (its layers cached by the session's image), built, then
    built again after a change to one file in code/."""
    project, name = session_project, unique("ocr-code-change")
    project.copy("ocr-cpu", name, tags=["test"])
    try:
        first = project.run("--json", "build", name)
        assert first.code == 0, first.output[-2000:]
        (project.root / "images" / name / "code" / "CHANGED.txt").write_text(name)
        r = project.run("--json", "build", name)
        assert r.code == 0, r.output[-2000:]
        events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
        steps = [e for e in events if e["event"] == "step"]
        cached = {e["index"] for e in events if e["event"] == "cached"}
        copy_step = next(s["index"] for s in steps if s["instruction"].startswith("COPY code/"))
        # every step after FROM and before the code layer comes from the cache
        assert cached == set(range(2, copy_step)), (cached, copy_step)
        built = next(e for e in events if e["event"] == "built")
        out = docker_cli("run", "--rm", f"{name}:test", "cat", "/opt/ocr/CHANGED.txt")
        assert out.stdout.strip() == name
        first_id = next(json.loads(x) for x in first.stdout.splitlines()
                        if x.startswith("{") and '"built"' in x)["image_id"]
        assert built["image_id"] != first_id
    finally:
        docker_cli("rmi", "-f", f"{name}:test")


def test_build_failure_names_step_and_exit_code(project, base_image, docker_api):
    name = unique("broken-build")
    project.add(name, {"framework": {"name": "mxnet", "version": "1.9.1"}, "python": "3.11",
                       "apt": ["no-such-package-imagekit"], "tags": ["test"]})
    r = project.run("build", name)
    try:
        assert r.code == 6, r.output[-2000:]
        first = r.stderr.strip().splitlines()[0]
        assert "build failed at step" in first and "apt-get" in first
        assert "Unable to locate package no-such-package-imagekit" in r.stderr
        assert "Traceback" not in r.output
    finally:
        docker_cli("rmi", "-f", f"{name}:test")
