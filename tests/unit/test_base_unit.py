"""base.ensure before a build: the mapped base image is made only when
imagekit.toml [base] says how and the engine lacks it, and made once when
several builds need it at the same time. A fake engine; no debootstrap."""

from __future__ import annotations

import threading
import time

from fakes import FakeEngine

from imagekit import base
from imagekit.config import load_project
from imagekit.events import Info


def _fake_bootstrap(made: list):
    def bootstrap(project, engine, force=False):
        made.append(project.config.base.image)
        time.sleep(0.3)                       # long enough for a second build to arrive
        engine.add_image(project.config.base.image)
        yield Info(project.config.base.image, "made")
    return bootstrap


def _project(project, base_section: bool):
    cfg = project.root / "imagekit.toml"
    text = '[pip]\nindex_url = "http://127.0.0.1:9/simple"\n'
    if base_section:
        text += '[base]\nimage = "mybase:1"\n'
    cfg.write_text(text)
    return load_project(project.root)


def test_made_when_configured_and_absent(project, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    made: list = []
    monkeypatch.setattr(base, "bootstrap", _fake_bootstrap(made))
    p = _project(project, base_section=True)
    engine = FakeEngine()
    events = list(base.ensure(p, engine, "mybase:1"))
    assert made == ["mybase:1"]
    assert "mybase:1 is not in the engine; making it" in events[0].message
    assert list(base.ensure(p, engine, "mybase:1")) == [] and made == ["mybase:1"]


def test_left_alone_when_not_configured_or_another_image(project, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    made: list = []
    monkeypatch.setattr(base, "bootstrap", _fake_bootstrap(made))
    engine = FakeEngine()
    # no [base] section: the default image name is not made behind the user's back
    p = _project(project, base_section=False)
    assert list(base.ensure(p, engine, p.config.base.image)) == []
    p = _project(project, base_section=True)
    assert list(base.ensure(p, engine, "python:3.11-slim-bookworm")) == []
    assert made == []


def test_two_builds_at_once_make_it_once(project, monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    made: list = []
    monkeypatch.setattr(base, "bootstrap", _fake_bootstrap(made))
    p = _project(project, base_section=True)
    engine = FakeEngine()
    results: list = []
    threads = [threading.Thread(target=lambda: results.append(list(base.ensure(p, engine,
                                                                               "mybase:1"))))
               for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert made == ["mybase:1"]
    assert sorted(len(r) for r in results) == [0, 2]
