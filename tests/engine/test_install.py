"""imagekit installed as users install it: a wheel built from the repository,
installed into a fresh virtual environment, run in a project folder outside
the repository that holds only images/ and imagekit.toml."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from helpers import REPO, Project, Run, docker_cli, unique


def _sources(dest: Path) -> Path:
    """The repository's files as a clone would have them (tracked, plus new
    files not ignored): no .venv, no build output, no state."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=REPO, capture_output=True, check=True).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The imagekit command of a fresh venv holding the built wheel."""
    work = tmp_path_factory.mktemp("install")
    src = _sources(work / "src")
    dist = work / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dist),
                        str(src)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    (wheel,) = dist.glob("imagekit-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    templates = [p.relative_to(REPO / "templates").as_posix()
                 for p in (REPO / "templates").rglob("*") if p.is_file()
                 and "__pycache__" not in p.parts]
    assert "new/train_pytorch.py" in templates and "partials/os.j2" in templates
    missing = [t for t in templates if f"imagekit/templates/{t}" not in names]
    data = [p.relative_to(REPO).as_posix() for pattern in ("*.yaml", "checks/*.py")
            for p in (REPO / "imagekit").glob(pattern)]
    missing += [d for d in data if d not in names]
    assert not missing, f"not in the wheel: {missing}"

    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    r = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                        str(wheel)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    where = subprocess.run([str(venv / "bin" / "python"), "-c",
                            "import imagekit; print(imagekit.__file__)"],
                           capture_output=True, text=True, cwd=work).stdout
    assert where.startswith(str(venv)), where
    shutil.rmtree(src)
    return venv / "bin" / "imagekit"


def _in(folder: Path, command: Path, *args: str, timeout: int = 300) -> Run:
    env = {k: v for k, v in os.environ.items() if k != "IMAGEKIT_PROJECT"}
    p = subprocess.run([str(command), "--output", "plain", *args], cwd=folder, env=env,
                       capture_output=True, text=True, timeout=timeout)
    return Run(p.returncode, p.stdout, p.stderr)


def test_installed_wheel_works_in_a_project_outside_the_repo(installed, tmp_path, base_image):
    # a user's repository: images/ and imagekit.toml, nothing else
    proj = Project(tmp_path / "user-repo")
    cfg = proj.root / "imagekit.toml"
    cfg.write_text(cfg.read_text().replace("port = 17311", f"port = {random.randint(17400, 17499)}"))
    name = unique("ssd")
    proj.copy("ssd-mxnet-cpu", name, tags=["test"])
    assert REPO not in proj.root.parents and sorted(p.name for p in proj.root.iterdir()) == \
        ["imagekit.toml", "images"]
    ref = f"{name}:test"
    try:
        r = _in(proj.root, installed, "list")
        assert r.code == 0 and name in r.stdout, r.output
        r = _in(proj.root, installed, "validate")
        assert r.code == 0, r.output
        r = _in(proj.root, installed, "render", name)
        assert r.code == 0 and "FROM imagekit/base:bookworm" in r.stdout, r.output
        assert "mxnet==1.9.1" in r.stdout and "# System packages" in r.stdout

        r = _in(proj.root, installed, "new", "starter", "--framework", "pytorch")
        assert r.code == 0, r.output
        assert (proj.root / "images" / "starter" / "code" / "train.py").is_file()
        assert _in(proj.root, installed, "validate", "starter").code == 0

        # the project's own partial wins over the built-in one, file by file
        own = proj.root / "templates" / "partials"
        own.mkdir(parents=True)
        builtin = (REPO / "templates" / "partials" / "os.j2").read_text()
        (own / "os.j2").write_text(builtin.replace("# System packages", "# Site packages"))
        r = _in(proj.root, installed, "render", name)
        assert r.code == 0 and "# Site packages" in r.stdout, r.output
        assert "# System packages" not in r.stdout and "mxnet==1.9.1" in r.stdout

        r = _in(proj.root, installed, "--show-completion", "bash")
        assert r.code == 0 and "_imagekit_completion" in r.stdout, r.output

        # no fetch typed: the build brings its wheels
        r = _in(proj.root, installed, "build", name, timeout=1500)
        assert r.code == 0, r.output[-3000:]
        history = docker_cli("history", "--no-trunc", "--format", "{{.CreatedBy}}", ref).stdout
        assert "mxnet==1.9.1" in history
        r = _in(proj.root, installed, "smoke", name, timeout=900)
        assert r.code == 0 and "smoke passed" in r.stdout, r.output[-3000:]
    finally:
        docker_cli("rmi", "-f", ref)
