"""The value checks themselves: Docker's reference grammar, registries, hosts,
URLs, one-line text; every pattern answers at once on pathological input;
and the real command (a subprocess) answers bad files with one line, exit 3."""

from __future__ import annotations

import time

import pytest

from imagekit import reference as ref
from imagekit import spec

GOOD_REFS = ["python:3.11-slim-bookworm", "nvidia/cuda:11.8.0-runtime-ubuntu22.04", "ubuntu",
             "localhost:5000/team/img:v1", "registry.example.com/a__b/c--d.e_f:T_1",
             "img@sha256:" + "a" * 64, "reg.io:443/x/y:z@sha256:" + "0" * 64, "[::1]:5000/x",
             "Registry.Example.COM/x", "a" * 200]
BAD_REFS = ["", " python", "python ", "Python", "python:3.11 slim", "python:", ":tag", "/x", "x/",
            "a//b", "a:b:c", "a___b", "-a", "a-", "a..b", "x@sha256:12", "x@md5:" + "a" * 32,
            "localhost:0/x", "localhost:99999/x", "ex ample.com/x", "-bad.com/x", "a\nb", "a\u2028b",
            "python:$(id)", "`id`", "https://reg/x", "a" * 300, "x:" + "a" * 129, "x/\u00e9"]


@pytest.mark.parametrize("text", GOOD_REFS)
def test_good_references(text):
    assert ref.image_reference(text) == text


@pytest.mark.parametrize("text", BAD_REFS)
def test_bad_references(text):
    with pytest.raises(ValueError) as e:
        ref.image_reference(text)
    assert "\n" not in str(e.value)


def test_reference_parts():
    r = ref.parse_reference("localhost:5000/team/img:v1@sha256:" + "b" * 64)
    assert (r.domain, r.path, r.tag) == ("localhost:5000", "team/img", "v1")
    assert ref.parse_reference("team/img").domain is None  # a Docker Hub namespace


@pytest.mark.parametrize("text", ["localhost:5000/team", "registry.example.com", "docker.io/a/b/",
                                  "127.0.0.1:5000/x", "[::1]:5000"])
def test_good_registries(text):
    assert ref.registry(text) == text


@pytest.mark.parametrize("text", ["team", "team/sub", "http://localhost:5000/x", "localhost:5000/Team",
                                  "reg.io/a b", "reg.io/x:tag", "", "/x", "reg.io//x"])
def test_bad_registries(text):
    with pytest.raises(ValueError):
        ref.registry(text)


@pytest.mark.parametrize("text", ["http://deb.debian.org/debian", "https://u:p@h.io:8443/simple?x=1#f",
                                  "http://[::1]:80/", "HTTPS://x.example/%20y"])
def test_good_urls(text):
    assert ref.url(text) == text


@pytest.mark.parametrize("text", ["ftp://x", "deb.debian.org", "http://", "http:///x", "http://x y",
                                  'http://x"', "http://x'", "http://x/`id`", "http://x/$(id)",
                                  "http://x/${A}", "http://x|y", "http://x&y", "http://x\\y",
                                  "http://x/\n", "http://x/\u2028", "http://x:0/", "http://-x/",
                                  "http://x/" + "a" * 3000])
def test_bad_urls(text):
    with pytest.raises(ValueError):
        ref.url(text)


@pytest.mark.parametrize("ch", ["\n", "\r", "\v", "\f", "\x1c", "\x1d", "\x1e", "\x85", "\u2028",
                                "\u2029", "\x00", "\x7f", "\x9f"])
def test_every_line_break_is_refused(ch):
    assert len(f"a{ch}b".splitlines()) > 1 or ch in "\x00\x7f\x9f"
    with pytest.raises(ValueError, match="one line"):
        ref.one_line(f"a{ch}b")
    assert len(ref.printable(f"a{ch}b").splitlines()) == 1


def test_every_splitlines_separator_is_covered():
    for code in range(0x110000):
        ch = chr(code)
        if len(f"a{ch}b".splitlines()) > 1:
            assert ref.BREAKING.match(ch), hex(code)


PATHOLOGICAL = ["a" * 100_000 + "!", "a-" * 50_000 + "!", "a." * 50_000 + "-", "/" + "a/" * 50_000 + " ",
                "a_" * 50_000 + "_", "0" * 100_000 + ":"]
PATTERNS = [spec.NAME_RE, spec.TAG_RE, spec.APT_RE, spec.ENV_RE, spec.PATH_CHARS_RE, spec.REL_CHARS_RE,
            spec.VERSION_RE, spec.PYVER_RE, spec.CUDA_RE, spec.SUITE_RE]
CHECKS = [ref.image_reference, ref.registry, ref.url, ref.host_port, ref.one_line,
          spec._abs_path, spec._rel_dir, spec._pip_requirement, spec._steps_args, spec._expect]


@pytest.mark.parametrize("text", PATHOLOGICAL, ids=range(len(PATHOLOGICAL)))
def test_every_check_answers_at_once(text):
    for rx in PATTERNS:
        start = time.monotonic()
        rx.match(text)
        assert time.monotonic() - start < 0.05, rx.pattern
    for check in CHECKS:
        start = time.monotonic()
        try:
            check(text)
        except ValueError:
            pass
        assert time.monotonic() - start < 0.5, check.__name__


def test_name_pattern():
    for good in ["ocr-cpu", "a", "a.b_c-d", "x" * 128]:
        assert spec.NAME_RE.match(good)
    for bad in ["", "A", "-a", "a-", "a--b", "a._b", "x" * 129, "a\n", "a b", "../a"]:
        assert not spec.NAME_RE.match(bad), bad


# The installed command, in a subprocess: exit 3 and one line for files it
# cannot use, from validate and from render alike.
@pytest.mark.parametrize("verb", ["validate", "render"])
def test_subprocess_bad_files(project, verb, tmp_path):
    good = {"framework": {"name": "pytorch", "version": "2.13.0"}}
    d = project.add("enc", good)
    (d / "image.yaml").write_bytes(b"name: enc\ndescription: caf\xe9\n")
    d = project.add("lnk", {**good, "code": {"src": "code", "dest": "/opt/app"}}, {"code/a.py": "1\n"})
    (d / "code" / "gone").symlink_to(tmp_path / "missing")
    for name, words in (("enc", "not UTF-8"), ("lnk", "is a link to"), ("a" * 300, "not an image name")):
        r = project.run(verb, name)
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert r.code == 3 and len(lines) == 1 and words in lines[0], r.output
        assert "Traceback" not in r.output
