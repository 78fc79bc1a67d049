"""`imagekit new`: scaffold a spec and a starter training script that already
passes the smoke test, from templates/new/."""

from __future__ import annotations

from pathlib import Path

import jinja2

from . import matrix
from .config import Project
from .context import display_path
from .errors import SpecError
from .spec import NAME_RE, load_spec, resolve

CHECKPOINT = {"pytorch": "checkpoint.pt", "tensorflow": "checkpoint", "mxnet": "model.params"}


def scaffold(project: Project, name: str, framework: str, device: str,
             version: str | None = None, python: str | None = None) -> Path:
    if not NAME_RE.match(name):
        raise SpecError(f"{name!r} is not a valid image name (a-z, 0-9, '.', '_', '-')")
    folder = project.catalog.dir / name
    if folder.exists():
        raise SpecError(f"{display_path(folder)} already exists; choose another name")
    version = version or matrix.default_version(framework)
    python = python or matrix.default_python(framework, version, device)
    matrix.variant(framework, version, device, python)  # refuse impossible ones up front
    env = jinja2.Environment(loader=jinja2.FileSystemLoader([str(d / "new")
                                                             for d in project.template_dirs]),
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    spec_text = env.get_template("image.yaml.j2").render(
        name=name, framework=framework, device=device, version=version, python=python,
        checkpoint=CHECKPOINT[framework])
    (folder / "code").mkdir(parents=True)
    try:
        (folder / "image.yaml").write_text(spec_text)
        script = env.loader.get_source(env, f"train_{framework}.py")[0]  # copied, not rendered
        (folder / "code" / "train.py").write_text(script)
        resolve(load_spec(folder / "image.yaml"), project.catalog)
    except Exception:
        for f in sorted(folder.rglob("*"), reverse=True):
            f.unlink() if f.is_file() else f.rmdir()
        folder.rmdir()
        raise
    return folder
