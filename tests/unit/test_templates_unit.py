"""Where templates come from: the built-in set (inside the package when
installed), and a project's own templates/ folder overriding it file by file."""

from __future__ import annotations

from helpers import REPO

from imagekit.config import BUILTIN_TEMPLATES, load_project
from imagekit.new import scaffold
from imagekit.render import render

MX = {"framework": {"name": "mxnet", "version": "1.9.1"}, "python": "3.11"}


def test_builtin_templates_are_the_repositorys_in_a_checkout():
    assert BUILTIN_TEMPLATES == REPO / "templates"
    assert load_project(REPO).template_dirs == [BUILTIN_TEMPLATES]


def test_a_project_without_templates_renders_with_the_builtin_ones(project):
    project.add("lab", MX)
    p = load_project(project.root)
    assert not (project.root / "templates").exists()
    assert p.template_dirs == [BUILTIN_TEMPLATES]
    text = render(p.catalog.resolve("lab"), p)
    assert text.startswith("# Rendered by imagekit") and "libgomp1" in text


def test_one_project_partial_overrides_just_that_file(project):
    project.add("lab", MX)
    p = load_project(project.root)
    plain = render(p.catalog.resolve("lab"), p)
    own = project.root / "templates" / "partials"
    own.mkdir(parents=True)
    os_j2 = (BUILTIN_TEMPLATES / "partials" / "os.j2").read_text()
    assert "# System packages" in os_j2
    (own / "os.j2").write_text(os_j2.replace("# System packages", "# Site-approved packages"))
    p = load_project(project.root)
    assert p.template_dirs == [project.root / "templates", BUILTIN_TEMPLATES]
    text = render(p.catalog.resolve("lab"), p)
    assert "# Site-approved packages" in text
    # everything else still comes from the built-in templates
    assert text == plain.replace("# System packages", "# Site-approved packages")


def test_templates_dir_in_the_config_is_looked_up_first(project, tmp_path):
    shared = tmp_path / "team-templates"
    (shared / "partials").mkdir(parents=True)
    (shared / "partials" / "python.j2").write_text("\nRUN echo team-python\n")
    cfg = project.root / "imagekit.toml"
    cfg.write_text(f'templates_dir = "{shared}"\n' + cfg.read_text())
    project.add("lab", MX)
    p = load_project(project.root)
    text = render(p.catalog.resolve("lab"), p)
    assert "RUN echo team-python" in text and "FROM " in text


def test_new_uses_builtin_and_overridden_starters(project):
    p = load_project(project.root)
    folder = scaffold(p, "fresh", "mxnet", "cpu")
    assert (folder / "code" / "train.py").read_text() == \
        (BUILTIN_TEMPLATES / "new" / "train_mxnet.py").read_text()
    own = project.root / "templates" / "new"
    own.mkdir(parents=True)
    (own / "train_mxnet.py").write_text("# our starter {{ not rendered }}\n")
    folder = scaffold(load_project(project.root), "fresh2", "mxnet", "cpu")
    assert (folder / "code" / "train.py").read_text() == "# our starter {{ not rendered }}\n"
    assert "fresh2" in (folder / "image.yaml").read_text()
