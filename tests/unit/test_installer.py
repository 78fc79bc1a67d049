"""The installer in rendered Dockerfiles (templates/partials/install.j2): uv from
the wheelhouse into /tmp/uv, used and removed in one RUN step; pip without it."""

from __future__ import annotations

import re

from helpers import REPO, Project

from imagekit import fetch, matrix, render
from imagekit.config import load_project

INSTALLER = matrix.load()["installer"]


def _render(project, name: str, installer: str | None) -> str:
    """The Dockerfile with `installer` set as given, whatever render.context passes."""
    plan = project.catalog.resolve(name)
    ctx = {**render.context(plan, project), "installer": installer}
    return render.environment(project).get_template("Dockerfile.j2").render(ctx)


def _runs(text: str) -> list[str]:
    """Each RUN instruction with its continuation lines joined."""
    return [m.replace("\\\n", " ") for m in re.findall(r"^RUN ((?:.*\\\n)*.*)$", text, re.M)]


def test_the_matrix_pins_one_uv_wheel_and_fetch_brings_it():
    assert re.fullmatch(r"uv==\d+\.\d+\.\d+", INSTALLER)
    project = load_project(REPO)
    for name in ("ocr-cpu", "detectron2-notebook"):
        w = fetch.wanted(project.catalog.resolve(name), project)
        assert w.requirements.count(INSTALLER) == 1
        assert "matrix.yaml" in w.fix_for(INSTALLER)


def test_every_install_step_brings_uses_and_removes_uv_in_one_run():
    project = load_project(REPO)
    opts = render.pip_options(project)
    for name in project.catalog.names():
        runs = [r for r in _runs(_render(project, name, INSTALLER)) if "install " in r
                and "apt-get" not in r]
        assert runs, name
        for r in runs:
            assert "pip install --no-cache-dir " + opts + "--target /tmp/uv " + INSTALLER + " " in r
            uv = re.search(r"&& /tmp/uv/bin/uv pip install (.*?) && rm -rf /tmp/uv", r)
            assert uv, r
            args = uv[1]
            assert args.startswith("--no-cache --compile-bytecode --python /opt/venv/bin/python " + opts)
            assert "--extra-index-url" not in args      # the wheelhouse alone, as for pip
            assert r.index("rm -rf /tmp/uv") > r.index("/tmp/uv/bin/uv")


def test_the_framework_pins_reach_uv_unchanged():
    project = load_project(REPO)
    text = _render(project, "detectron2-gpu", INSTALLER)
    plan = project.catalog.resolve("detectron2-gpu")
    assert any(r.startswith("torch===") for r in plan.variant.pip)
    uv_lines = [ln for ln in text.splitlines() if "/tmp/uv/bin/uv pip install" in ln]
    for req in plan.variant.pip:
        assert all(f" {req}" in ln for ln in uv_lines), req
    ocr_gpu = _render(project, "ocr-gpu", INSTALLER)
    assert "'tensorflow[and-cuda]==2.21.0'" in ocr_gpu


def test_without_an_installer_pip_installs_as_before():
    project = load_project(REPO)
    for name in project.catalog.names():
        text = _render(project, name, None)
        assert "/tmp/uv" not in text and "uv pip" not in text, name
        for r in _runs(text):
            for part in r.split(" && "):     # a step's commands (its venv, its time marks)
                if "install " in part and "apt-get" not in part:
                    assert part.strip().startswith("pip install --no-cache-dir " +
                                                   render.pip_options(project)), part


def test_an_index_with_the_frameworks_own_index_keeps_pips_best_match(tmp_path):
    proj = Project(tmp_path / "p")
    (proj.root / "imagekit.toml").write_text('[pip]\nindex_url = "https://mirror.example/simple"\n')
    proj.add("pt", {"framework": {"name": "pytorch", "version": "2.13.0"}, "device": "cpu",
                    "python": "3.11"})
    project = load_project(proj.root)
    text = _render(project, "pt", INSTALLER)
    uv = next(ln for ln in text.splitlines() if "/tmp/uv/bin/uv pip install" in ln)
    assert "--index-url https://mirror.example/simple " in uv
    assert "--extra-index-url https://download.pytorch.org/whl/cpu --index-strategy unsafe-best-match" in uv
    pip_text = _render(project, "pt", None)
    assert "--extra-index-url https://download.pytorch.org/whl/cpu torch==2.13.0" in pip_text
