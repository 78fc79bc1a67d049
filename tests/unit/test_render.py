"""Rendering: golden files for every catalog spec, determinism, hadolint."""

from __future__ import annotations

import os
import shutil

import pytest
from helpers import REPO, imagekit

from imagekit.config import load_project
from imagekit.render import render

GOLDEN = REPO / "tests" / "unit" / "golden"
CATALOG = load_project(REPO).catalog.names()


@pytest.mark.parametrize("builder", ["classic", "buildkit"])
@pytest.mark.parametrize("name", CATALOG)
def test_golden(name, builder):
    """tests/unit/golden/NAME.Dockerfile (classic), golden/buildkit/NAME.Dockerfile."""
    project = load_project(REPO)
    text = render(project.catalog.resolve(name), project, builder)
    path = (GOLDEN if builder == "classic" else GOLDEN / "buildkit") / f"{name}.Dockerfile"
    if os.environ.get("IMAGEKIT_UPDATE_GOLDEN"):
        path.write_text(text)
    assert path.is_file(), f"no golden file for {name}; run with IMAGEKIT_UPDATE_GOLDEN=1"
    assert text == path.read_text()


@pytest.mark.parametrize("name", CATALOG)
def test_render_is_deterministic(name):
    a = imagekit("render", name, "--builder", "buildkit").stdout
    b = imagekit("render", name, "--builder", "buildkit").stdout
    assert a and a == b


def test_buildkit_dockerfiles_need_no_network_and_name_no_port():
    """With BuildKit every RUN step but the system packages' runs with no
    network, the installs read the wheels from the mounted build context,
    and nothing depends on [pip] port or the wheelhouse's path."""
    project = load_project(REPO)
    for name in CATALOG:
        text = render(project.catalog.resolve(name), project, "buildkit")
        runs = [line for line in text.splitlines() if line.startswith("RUN ")]
        assert runs, name
        for line in runs:
            if "apt-get" in line or line.startswith("RUN {% if") or "sed -i" in line:
                continue
            assert "--network=none" in line, (name, line)
            if "pip install" in line:
                assert "--mount=type=bind,from=wheels-" in line and "target=/wheels" in line, \
                    (name, line)
        assert "127.0.0.1" not in text and str(project.config.pip.port) not in text, name
        assert str(project.wheelhouse) not in text, name


def test_layer_order_and_no_caches():
    project = load_project(REPO)
    for name in CATALOG:
        text = render(project.catalog.resolve(name), project)
        lines = text.splitlines()
        idx = {k: next((i for i, line in enumerate(lines) if k in line), None)
               for k in ("apt-get install", "python3 -m venv", "COPY code/")}
        pip = [i for i, line in enumerate(lines) if "pip install" in line]
        if idx["apt-get install"] is not None and idx["python3 -m venv"] is not None:
            assert idx["apt-get install"] < idx["python3 -m venv"]
        if idx["COPY code/"] is not None:
            assert all(i < idx["COPY code/"] for i in pip), name
        assert all(("--no-cache-dir" if "uv pip" not in lines[i] else "--no-cache ") in lines[i]
                   for i in pip), name
        if idx["apt-get install"] is not None:
            assert "rm -rf /var/lib/apt/lists/*" in text


def test_labels_and_strict_templates(project):
    project.add("lab", {"framework": {"name": "mxnet", "version": "1.9.1"}, "python": "3.11",
                        "description": 'quote " and $HOME', "env": {"A": "x y $Z"}})
    text = project.run("render", "lab").stdout
    for key in ("org.opencontainers.image.title", "io.imagekit.framework=\"mxnet\"",
                "io.imagekit.spec.digest=\"sha256:", "io.imagekit.python=\"3.11\""):
        assert key in text
    assert 'quote \\" and \\$HOME' in text and 'A="x y \\$Z"' in text
    assert "libgomp1 libquadmath0 libgfortran5" in text and "'numpy<1.24'" in text


def test_missing_template_variable_is_an_error(project, tmp_path):
    tdir = tmp_path / "templates"
    shutil.copytree(REPO / "templates", tdir)
    (tdir / "Dockerfile.j2").write_text("FROM {{ no_such_variable }}\n")
    cfg = project.root / "imagekit.toml"
    cfg.write_text(f'templates_dir = "{tdir}"\n' + cfg.read_text())
    project.add("x", {"framework": {"name": "pytorch", "version": "2.13.0"}})
    r = project.run("render", "x")
    assert r.code == 3 and "no_such_variable" in r.stderr and "Traceback" not in r.output


def test_hadolint_passes_on_every_catalog_spec():
    r = imagekit("lint", "--all")
    assert r.code == 0, r.output
    assert r.stdout.count("ok ") == len(CATALOG)


def test_hadolint_catches_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM debian\nRUN cd /tmp && apt-get install curl\n")
    hadolint = shutil.which("hadolint") or str(REPO / ".venv" / "bin" / "hadolint")
    import subprocess
    res = subprocess.run([hadolint, "--config", str(REPO / ".hadolint.yaml"), str(bad)],
                         capture_output=True, text=True)
    assert res.returncode != 0


def test_cuda_from_nvidia_wheels_puts_each_wheels_lib_dir_on_the_library_path():
    """The folders are the ones NVIDIA's cu11 wheels unpack to (read from the wheels):
    site-packages/nvidia/<dir>/lib holds libcudart.so.11.0, libcublas.so.11, ..."""
    project = load_project(REPO)
    text = render(project.catalog.resolve("ssd-mxnet-gpu"), project)
    line = next(x for x in text.splitlines() if "LD_LIBRARY_PATH=" in x)
    dirs = line.split("LD_LIBRARY_PATH=", 1)[1].split(":")
    site = "/opt/venv/lib/python3.11/site-packages/nvidia/"
    assert dirs == [f"{site}{d}/lib" for d in ("cuda_runtime", "cublas", "cudnn", "cufft", "curand",
                                                "cusolver", "cuda_nvrtc", "nccl", "nvtx")]
    for name in ("ocr-gpu", "detectron2-gpu"):   # their frameworks find their CUDA wheels themselves
        assert "LD_LIBRARY_PATH" not in render(project.catalog.resolve(name), project)
