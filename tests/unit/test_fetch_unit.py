"""The wheelhouse: where it is, the quick offline check that a build makes
before it starts, what a missing package says, and two imagekit processes
fetching into one wheelhouse at once. No engine; pip talks to the package
index (small wheels, and MXNet CPU, the smallest framework wheel)."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import REPO, Project

from imagekit import fetch, matrix
from imagekit.config import load_project
from imagekit.errors import FetchError
from imagekit.events import FetchResult
from imagekit.render import pip_options

TARGET = ("--only-binary=:all:", "--python-version", "3.11", "--implementation", "cp",
          "--abi", "cp311", "--platform", "manylinux_2_36_x86_64",
          "--platform", "manylinux2014_x86_64")
SMALL = ("six==1.17.0", "tomli==2.0.1")


def _wanted(*reqs: str, **kw) -> fetch.Wanted:
    return fetch.Wanted(image="x", requirements=reqs, target_args=TARGET,
                        target="Python 3.11 on manylinux x86_64", **kw)


def _run(gen) -> list:
    return list(gen)


def _wheels(wheelhouse: Path) -> list[Path]:
    return sorted(p for p in wheelhouse.iterdir() if p.is_file())


def _assert_consistent(wheelhouse: Path) -> None:
    """Every file is a complete wheel whose members match its RECORD, and no
    private download folder is left."""
    for whl in _wheels(wheelhouse):
        with zipfile.ZipFile(whl) as z:
            assert z.testzip() is None, whl.name
            record = next(n for n in z.namelist() if n.endswith(".dist-info/RECORD"))
            for row in z.read(record).decode().splitlines():
                name, digest, _ = row.rsplit(",", 2)
                if not digest:
                    continue
                algo, want = digest.split("=", 1)
                got = base64.urlsafe_b64encode(hashlib.new(algo, z.read(name)).digest())
                assert got.rstrip(b"=").decode() == want, f"{whl.name}: {name}"
    assert sorted(p.name for p in (wheelhouse / fetch.META).iterdir()) == ["lock", "ok"]


# -- where the wheelhouse is ---------------------------------------------------

def test_default_wheelhouse_is_the_users_shared_cache(tmp_path, monkeypatch):
    root = tmp_path / "proj"
    (root / "images").mkdir(parents=True)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert load_project(root).wheelhouse == tmp_path / "xdg" / "imagekit" / "wheelhouse"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert load_project(root).wheelhouse == tmp_path / "home" / ".cache" / "imagekit" / "wheelhouse"
    # the default is used by builds: they install from it, with no index
    assert "--no-index --find-links http://127.0.0.1:" in pip_options(load_project(root))

    (root / "imagekit.toml").write_text('[pip]\nwheelhouse = "wh"\n')
    assert load_project(root).wheelhouse == root / "wh"
    (root / "imagekit.toml").write_text('[pip]\nindex_url = "https://mirror.example/simple"\n')
    p = load_project(root)
    assert p.wheelhouse is None
    assert pip_options(p).startswith("--index-url https://mirror.example/simple")


def test_repo_config_and_test_projects_use_the_default(tmp_path):
    assert "wheelhouse =" not in "\n".join(
        line for line in (REPO / "imagekit.toml").read_text().splitlines()
        if not line.lstrip().startswith("#"))
    proj = Project(tmp_path / "proj")
    assert load_project(proj.root).wheelhouse == load_project(REPO).wheelhouse


# -- the check before a build --------------------------------------------------

def test_a_second_ensure_runs_no_pip_and_no_network(tmp_path, monkeypatch):
    wh = tmp_path / "wh"
    w = _wanted(*SMALL)
    first = _run(fetch.ensure_wheels(w, wh))
    assert isinstance(first[-1], FetchResult) and first[-1].downloaded == 2
    assert {p.name for p in _wheels(wh)} == {"six-1.17.0-py2.py3-none-any.whl",
                                              "tomli-2.0.1-py3-none-any.whl"}

    def forbidden(*a, **kw):
        raise AssertionError("no subprocess and no connection expected")

    monkeypatch.setattr(fetch.subprocess, "Popen", forbidden)
    monkeypatch.setattr(fetch.socket, "create_connection", forbidden)
    started = time.monotonic()
    again = _run(fetch.ensure_wheels(w, wh))
    took = time.monotonic() - started
    assert took < 0.2, took
    assert again[-1].downloaded == 0 and "wheelhouse has all 2 requirements" in again[0].message
    _assert_consistent(wh)


def test_without_the_stamp_the_check_resolves_offline(tmp_path, monkeypatch):
    wh = tmp_path / "wh"
    w = _wanted(*SMALL)
    _run(fetch.ensure_wheels(w, wh))
    for stamp in (wh / fetch.META / "ok").iterdir():
        stamp.unlink()
    calls = []
    real = fetch.subprocess.Popen

    def spy(cmd, *a, **kw):
        calls.append(cmd)
        return real(cmd, *a, **kw)

    def no_network(*a, **kw):
        raise AssertionError("no connection expected")

    monkeypatch.setattr(fetch.subprocess, "Popen", spy)
    monkeypatch.setattr(fetch.socket, "create_connection", no_network)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    events = _run(fetch.ensure_wheels(w, wh))
    assert len(calls) == 1 and "--no-index" in calls[0]
    assert events[-1].downloaded == 0 and "resolved offline" in events[0].message
    assert list((wh / fetch.META / "ok").iterdir()), "the stamp is written again"
    # a file gone from the wheelhouse invalidates the stamp
    (wh / "tomli-2.0.1-py3-none-any.whl").unlink()
    assert not fetch._stamped(wh, w.key())


def test_only_what_is_missing_is_downloaded(tmp_path):
    wh = tmp_path / "wh"
    _run(fetch.ensure_wheels(_wanted("six==1.17.0"), wh))
    six = wh / "six-1.17.0-py2.py3-none-any.whl"
    before = six.stat().st_mtime_ns
    events = _run(fetch.ensure_wheels(_wanted(*SMALL), wh))
    assert events[-1].downloaded == 1 and six.stat().st_mtime_ns == before
    assert any("tomli==2.0.1 is not in the wheelhouse" in getattr(e, "message", "")
               for e in events)
    _assert_consistent(wh)


def test_a_version_that_does_not_exist_is_one_line_naming_it(tmp_path):
    w = _wanted("six==1.17.0", "tomli==9.9.9",
                fixes={"tomli": "fix the version in images/x/image.yaml"})
    with pytest.raises(FetchError) as e:
        _run(fetch.ensure_wheels(w, tmp_path / "wh"))
    msg = e.value.message
    assert e.value.exit_code == 7 and "\n" not in msg
    assert msg.startswith("x: tomli==9.9.9 has no wheel for Python 3.11 on manylinux x86_64")
    assert "(pip: No matching distribution; it has 2." in msg   # the versions there are
    assert msg.endswith("fix the version in images/x/image.yaml")
    assert not _wheels(tmp_path / "wh"), "a failed fetch publishes nothing"


def test_an_unreachable_index_says_how_to_get_the_wheels(tmp_path):
    wh = tmp_path / "wh"
    w = _wanted("tomli==2.0.1", index_url="http://127.0.0.1:9/simple")
    started = time.monotonic()
    with pytest.raises(FetchError) as e:
        _run(fetch.ensure_wheels(w, wh))
    assert time.monotonic() - started < 15
    msg = e.value.message
    assert "\n" not in msg and "tomli==2.0.1 is not in the wheelhouse" in msg
    assert "127.0.0.1 is not reachable" in msg
    assert "run `imagekit fetch x` on a machine with network" in msg and str(wh) in msg


def test_the_image_requirements_name_what_to_fix(tmp_path):
    proj = Project(tmp_path / "proj")
    proj.add("mx", {"framework": {"name": "mxnet", "version": "1.9.1"}, "python": "3.11",
                    "pip": ["six==1.17.0"]})
    p = load_project(proj.root)
    w = fetch.wanted(p.catalog.resolve("mx"), p)
    assert w.requirements == ("mxnet==1.9.1", "numpy<1.24", "six==1.17.0", matrix.load()["installer"])
    six = w.fix_for("six==2")
    assert six.startswith("fix the version in ") and six.endswith("images/mx/image.yaml")
    assert "framework.version" in w.fix_for("mxnet==1.9.1")
    # the stamp key: the requirement set (in any order) and the target
    assert replace(w, requirements=w.requirements[::-1]).key() == w.key()
    assert replace(w, requirements=w.requirements[:1]).key() != w.key()
    assert replace(w, target_args=TARGET).key() != w.key()


# -- two imagekit processes, one wheelhouse -------------------------------------

def _fetch_project(tmp_path: Path) -> tuple[Path, Path]:
    root, wh = tmp_path / "proj", tmp_path / "wh"
    (root / "images" / "mx").mkdir(parents=True)
    (root / "imagekit.toml").write_text(
        f'[pip]\nwheelhouse = "{wh}"\nport = {random.randint(17400, 17499)}\n')
    (root / "images" / "mx" / "image.yaml").write_text(
        'name: mx\nframework: {name: mxnet, version: "1.9.1"}\ndevice: cpu\npython: "3.11"\n'
        'pip: ["six==1.17.0", "tomli==2.0.1"]\n')
    return root, wh


def _imagekit_fetch(root: Path, **kw) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "IMAGEKIT_PROJECT"}
    return subprocess.Popen([sys.executable, "-m", "imagekit", "-C", str(root), "--json",
                             "fetch", "mx"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, **kw)


def _downloaded(stdout: str) -> int:
    events = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    results = [e for e in events if e.get("event") == "result" and e.get("stage") == "fetch"]
    assert len(results) == 1, stdout
    return results[0]["data"]["downloaded"]


def test_two_fetch_processes_into_one_wheelhouse(tmp_path):
    root, wh = _fetch_project(tmp_path)
    procs = [_imagekit_fetch(root) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, out + err
    counts = sorted(_downloaded(out) for out, _ in outs)
    files = _wheels(wh)
    # one of them downloaded everything, the other found it there
    assert counts == [0, len(files)] and len(files) >= 9
    assert any(f.name.startswith("mxnet-1.9.1-") for f in files)
    _assert_consistent(wh)
    stamps = list((wh / fetch.META / "ok").iterdir())
    assert len(stamps) == 1
    assert all((wh / f).is_file() for f in json.loads(stamps[0].read_text())["files"])
    third = _imagekit_fetch(root)
    out, err = third.communicate(timeout=120)
    assert third.returncode == 0 and _downloaded(out) == 0, out + err


def test_a_killed_fetch_leaves_no_partial_file(tmp_path):
    root, wh = _fetch_project(tmp_path)
    proc = _imagekit_fetch(root, start_new_session=True)
    for line in proc.stdout:                  # kill it in the middle of a download
        if line.startswith("{") and json.loads(line).get("event") == "progress":
            break
    else:
        pytest.fail("no download progress: " + proc.stderr.read())
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert list((wh / fetch.META).glob("tmp-*")), "the private folder is what is left"
    for f in _wheels(wh):                     # nothing partial is visible
        assert zipfile.ZipFile(f).testzip() is None
    again = _imagekit_fetch(root)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, out + err
    _assert_consistent(wh)


def test_the_wheel_sets_a_buildkit_build_mounts(project: Project):
    """One set per install step (the framework's alone, the spec's packages
    with the framework's pins), each only its own wheels, as hard links into
    the wheelhouse, in a folder named by the requirement set (the same folder,
    the same files, for every build of that set); a set never resolved is one
    error naming the fix."""
    (project.root / "imagekit.toml").write_text('[pip]\nwheelhouse = "wh"\n')
    project.add("setty", {"framework": {"name": "pytorch", "version": "2.13.0"},
                          "pip": ["six==1.17.0"]})
    proj = load_project(project.root)
    plan = proj.catalog.resolve("setty")
    steps = fetch.step_wants(plan, proj)
    assert sorted(steps) == ["framework", "pip"]
    installer = matrix.load()["installer"]
    assert steps["framework"].requirements == (*plan.variant.pip, installer)
    assert steps["pip"].requirements == (*plan.variant.pip, "six==1.17.0", installer)
    w = steps["pip"]
    wh = proj.wheelhouse
    with pytest.raises(FetchError, match="run `imagekit fetch setty`"):
        fetch.wheel_set(w, wh)
    wh.mkdir(parents=True)
    names = ["torch-2.13.0+cpu-cp311-cp311-linux_x86_64.whl", "six-1.17.0-py2.py3-none-any.whl",
             "uv-0.13.9-py3-none-manylinux_2_17_x86_64.whl"]
    for n in names:
        (wh / n).write_bytes(n.encode())
    (wh / "other-1.0-py3-none-any.whl").write_bytes(b"not this image's")
    (wh / fetch.META / "ok").mkdir(parents=True)
    fetch._stamp(wh, w.key(), w, names)
    folder = fetch.wheel_set(w, wh)
    assert folder == wh / fetch.META / "sets" / w.key()
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)
    assert all((folder / n).stat().st_ino == (wh / n).stat().st_ino for n in names)
    assert fetch.wheel_set(w, wh) == folder                 # made once, then found
    (folder / names[0]).unlink()                            # a set that lost a file is made again
    assert sorted(p.name for p in fetch.wheel_set(w, wh).iterdir()) == sorted(names)
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]
