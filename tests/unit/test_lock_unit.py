"""requirements.lock: what `imagekit lock` writes (from the shared wheelhouse,
MXNet CPU the smallest framework), what `lock --check` and a build say when
the spec, the matrix or imagekit.toml moved on, how a locked Dockerfile
installs, and locks edited by hand. No engine."""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import pytest
from helpers import Project

from imagekit import fetch, lock
from imagekit.config import load_project
from imagekit.errors import FetchError, LockError
from imagekit.events import LockResult
from imagekit.render import render


def _result(gen) -> LockResult:
    events = list(gen)
    assert isinstance(events[-1], LockResult)
    return events[-1]


@pytest.fixture
def mx(project: Project, monkeypatch):
    """A copy of ssd-mxnet-cpu with one package of its own, locked (in the
    project's folder, as a user types it: messages name files from there)."""
    monkeypatch.chdir(project.root)
    project.copy("ssd-mxnet-cpu", "mx", pip=["six==1.17.0"])
    proj = load_project(project.root)
    plan = proj.catalog.resolve("mx")
    r = _result(lock.make(plan, proj))
    return project, proj, plan, r


def _sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_lock_pins_every_package_with_its_wheels_hash(mx):
    project, proj, plan, r = mx
    assert r.written and not r.replaced and r.path == "images/mx/requirements.lock"
    found = lock.read(plan)
    names = {p.key: p for p in found.packages}
    assert {"mxnet", "numpy", "six", "pip", "setuptools"} <= set(names)
    assert names["mxnet"].version == "1.9.1" and names["six"].version == "1.17.0"
    for p in found.packages:       # each hash is the hash of the very wheel the wheelhouse holds
        assert p.hashes == (_sha256(proj.wheelhouse / p.file),), p
    # the framework step needs mxnet's closure; the spec's own step also needs six
    assert "six" in {p.key for p in found.step("pip")}
    assert "six" not in {p.key for p in found.step("framework")}
    assert {p.key for p in found.step("framework")} <= {p.key for p in found.step("pip")} | \
        {"pip", "setuptools"}
    assert r.packages == len(found.packages) and r.steps["pip"] == len(found.step("pip"))
    assert found.digest == r.digest == _sha256(lock.lock_path(plan))
    assert lock.check(plan, proj) == found
    assert lock.source_date_epoch(plan) == found.epoch == r.epoch

    again = _result(lock.make(plan, proj))     # nothing moved: the file and its epoch stay
    assert not again.written and again.replaced and again.epoch == r.epoch
    assert again.digest == r.digest


def test_the_file_is_a_requirements_file_pip_reads(mx):
    _, _, plan, _ = mx
    text = lock.lock_path(plan).read_text()
    entries = [line for line in text.splitlines() if line and not line.lstrip().startswith("#")]
    assert entries[0].endswith("\\") and entries[1].lstrip().startswith("--hash=sha256:")
    assert "# source-date-epoch: " in text and "# format: 1" in text


def test_check_names_the_spec_when_its_pip_list_changes(mx):
    project, proj, plan, _ = mx
    spec = project.root / "images" / "mx" / "image.yaml"
    spec.write_text(spec.read_text().replace("- six==1.17.0", "- six==1.17.0\n- tomli==2.0.1"))
    proj = load_project(project.root)
    plan = proj.catalog.resolve("mx")
    with pytest.raises(LockError) as e:
        lock.check(plan, proj)
    assert e.value.exit_code == 18
    assert "images/mx/requirements.lock is out of date: images/mx/image.yaml: pip: added " \
           "'tomli==2.0.1'; run `imagekit lock mx`" == e.value.message

    r = project.run("lock", "--check")                 # every image that has a lock
    assert r.code == 18 and "images/mx/image.yaml: pip: added 'tomli==2.0.1'" in r.stderr
    assert "Traceback" not in r.stderr
    r = project.run("--json", "build", "mx")           # a build refuses it before the engine
    assert r.code == 18, r.output
    assert "images/mx/requirements.lock is out of date" in r.stderr


def test_check_names_imagekit_toml(mx):
    project, _, _, _ = mx
    toml = project.root / "imagekit.toml"
    toml.write_text(toml.read_text() + '\n[pip]\nindex_url = "https://mirror.example/simple"\n'
                    if "[pip]" not in toml.read_text() else
                    toml.read_text().replace("[pip]", '[pip]\nindex_url = '
                                             '"https://mirror.example/simple"'))
    proj = load_project(project.root)
    said = lock.changes(lock.read(proj.catalog.resolve("mx")), proj.catalog.resolve("mx"), proj)
    assert any(s.startswith("imagekit.toml: [pip] index_url: None -> "
                            "'https://mirror.example/simple") for s in said), said


def test_a_locked_dockerfile_installs_exactly_the_lock(mx):
    project, proj, plan, _ = mx
    found = lock.read(plan)
    for builder in ("classic", "buildkit"):
        text = render(plan, proj, builder, found)
        assert text.count("--require-hashes --constraint /tmp/imagekit-lock.txt") == 2
        fw, own = [s for s in text.split("\nRUN ") if "--require-hashes" in s]
        # top-level requirements pinned to the locked versions
        assert "mxnet==1.9.1" in fw and "'numpy<1.24'" not in fw and "pip==" in fw
        assert "six==1.17.0" in own
        # each step's constraints: its own share of the lock, every one with its hash
        for p in found.packages:
            assert (f"'{p.line()}'" in fw) == ("framework" in p.steps)
            assert (f"'{p.line()}'" in own) == ("pip" in p.steps)
        assert f'io.imagekit.lock="{found.digest}"' in text
    plain = render(plan, proj, "buildkit")
    assert "--require-hashes" not in plain and "io.imagekit.lock" not in plain


def test_a_lock_that_lacks_a_requirement_names_it(mx):
    project, proj, plan, _ = mx
    path = lock.lock_path(plan)
    text = path.read_text()
    start = text.index("\nsix==1.17.0 \\") + 1
    end = text.index("# file: six", start)
    path.write_text(text[:start] + text[text.index("\n", end) + 1:])
    with pytest.raises(LockError, match=r"images/mx/requirements.lock has no six \(the pip step "
                                        r"installs 'six==1.17.0'\): run `imagekit lock mx`"):
        render(plan, proj, "buildkit", lock.read(plan))


@pytest.mark.parametrize("edit,says", [
    (lambda t: t.replace("--hash=sha256:", "--hash=sha256:zz", 1), r":1\d: not a pinned, hashed"),
    (lambda t: t.replace("# format: 1", "# format: 9"), "not a requirements.lock imagekit 1"),
    (lambda t: t.replace("# source-date-epoch: ", "# source-date-epoch: x"), "damaged"),
    (lambda t: t + t[t.index("\nsix==") + 1:], "six is locked twice"),
    (lambda t: "\u00ff".encode("latin-1"), "not UTF-8"),
])
def test_a_damaged_lock_is_one_line_naming_the_file(mx, edit, says):
    _, _, plan, _ = mx
    path = lock.lock_path(plan)
    out = edit(path.read_text())
    path.write_bytes(out if isinstance(out, bytes) else out.encode())
    with pytest.raises(LockError, match=says) as e:
        lock.read(plan)
    assert e.value.message.startswith("images/mx/requirements.lock")


def test_a_locked_version_the_wheelhouse_lacks_is_fetched_or_named(mx, tmp_path):
    """A lock made on another day: fetch brings exactly the locked version, or
    fails naming it."""
    project, proj, plan, _ = mx
    path = lock.lock_path(plan)
    path.write_text(path.read_text().replace("six==1.17.0 \\", "six==0.0.77 \\"))
    found = lock.read(plan)
    w = lock.wanted(plan, proj, found)
    assert "six==0.0.77" in w.requirements and "mxnet==1.9.1" in w.requirements
    with pytest.raises(FetchError) as e:
        list(fetch.ensure_wheels(w, tmp_path / "empty-wheelhouse"))
    assert "six==0.0.77" in e.value.message and "requirements.lock pins it" in e.value.message


def _wheel(folder: Path, name: str, requires: list[str]) -> Path:
    path = folder / f"{name}-1.0-py3-none-any.whl"
    meta = "Metadata-Version: 2.1\nName: {}\nVersion: 1.0\n{}\n".format(
        name, "".join(f"Requires-Dist: {r}\n" for r in requires))
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}-1.0.dist-info/METADATA", meta)
    return path


def test_closure_follows_extras_and_markers(tmp_path):
    wheels = {
        "a": _wheel(tmp_path, "a", ["b; extra == 'x'", "c; python_version < '3.0'", "d"]),
        "b": _wheel(tmp_path, "b", ["e[y]"]),
        "c": _wheel(tmp_path, "c", []),
        "d": _wheel(tmp_path, "d", []),
        "e": _wheel(tmp_path, "e", ["f; extra == 'y'", "g; extra == 'z'"]),
        "f": _wheel(tmp_path, "f", ["a"]),          # a cycle
        "g": _wheel(tmp_path, "g", []),
    }
    env = {"python_version": "3.11", "sys_platform": "linux", "platform_machine": "x86_64"}
    assert lock.closure(["a"], wheels, env) == {"a", "d"}
    assert lock.closure(["a[x]"], wheels, env) == {"a", "b", "d", "e", "f"}
    assert lock.closure(["c; sys_platform == 'win32'", "g"], wheels, env) == {"g"}


def test_inputs_record_only_what_the_resolution_depends_on(mx):
    project, proj, plan, _ = mx
    data = lock.inputs(plan, proj)
    assert data["images/mx/image.yaml"]["pip"] == ["six==1.17.0"]
    assert data["matrix"]["target"] == "cp311 manylinux x86_64 glibc 2.36"
    assert "jupyter pins" not in data["matrix"]       # no JupyterLab in this image
    header = next(line for line in lock.lock_path(plan).read_text().splitlines()
                  if line.startswith("# inputs: "))
    assert json.loads(header.removeprefix("# inputs: ")) == data
    # a description or smoke setting is not an input: the lock stays current
    spec = project.root / "images" / "mx" / "image.yaml"
    spec.write_text(spec.read_text().replace("steps: ", "steps: 1"))
    proj = load_project(project.root)
    assert lock.check(proj.catalog.resolve("mx"), proj) is not None


def test_a_child_image_locks_what_its_parent_brings_as_the_parents(mx):
    project, _, _, _ = mx
    project.add("kid", {"description": "built FROM mx", "parent": "mx", "pip": ["tomli==2.0.1"],
                        "tags": ["v1"]})
    proj = load_project(project.root)
    plan = proj.catalog.resolve("kid")
    r = _result(lock.make(plan, proj))
    found = lock.read(plan)
    by = {p.key: p.steps for p in found.packages}
    assert by["tomli"] == ("pip",) and by["mxnet"] == ("pip",)     # the step repeats the pins
    assert "pip" not in by          # the venv is the parent's: its pip is the parent's lock's
    assert set(r.steps) <= {"pip", "parent"}
    assert "images/mx/image.yaml" in found.inputs and "images/kid/image.yaml" in found.inputs
    text = render(plan, proj, "buildkit", found)
    assert text.count("--require-hashes") == 1 and "'tomli==2.0.1 --hash=sha256:" in text
    assert "'pip==" not in text       # the parent's venv keeps its own pip


def test_a_new_lock_keeps_the_epoch_so_caches_survive(mx):
    project, _, plan, r = mx
    spec = project.root / "images" / "mx" / "image.yaml"
    spec.write_text(spec.read_text().replace("- six==1.17.0", "- six==1.17.0\n- tomli==2.0.1"))
    proj = load_project(project.root)
    again = _result(lock.make(proj.catalog.resolve("mx"), proj))
    assert again.written and again.added == ["tomli"] and again.epoch == r.epoch


def test_a_project_partial_written_for_older_templates_is_one_line(mx):
    project, _, _, _ = mx
    partials = project.root / "templates" / "partials"
    partials.mkdir(parents=True)
    (partials / "install.j2").write_text(
        "{% macro pip_install(reqs, index=none) -%}\npip install {{ reqs | join(' ') }}\n"
        "{%- endmacro %}\n")
    r = project.run("--json", "render", "mx", "--builder", "buildkit")
    assert r.code == 3 and "Traceback" not in r.stderr, r.output
    message = json.loads(r.stderr.strip().splitlines()[-1])["message"]
    assert message.startswith("template error while rendering mx: macro 'pip_install' takes no "
                              "keyword argument 'step'"), message
