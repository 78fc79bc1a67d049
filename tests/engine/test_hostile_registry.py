"""`imagekit push` against registries that stall, trickle, flood, inject escape
sequences or lie about their token: each ends with its documented exit code,
one line on stderr, in bounded time and memory, with no secret in the output
and nothing left in the engine."""

from __future__ import annotations

import base64
import io
import json
import tarfile
import urllib.parse

import pytest
from hostile_registry import HostileRegistry, run_measured

from imagekit import registry

PASSWORD = "hunter2-Pa55word"
USER = "alice"
MAX_RSS_MB = 300


@pytest.fixture(scope="module")
def tiny(docker_api):
    """A one-file image, imported (no build): what is pushed here."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"hello from a tiny image\n"
        info = tarfile.TarInfo("hello.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    ref = "imagekit-hostile-push:v1"
    docker_api.import_image_from_data(buf.getvalue(), repository="imagekit-hostile-push", tag="v1")
    yield ref
    docker_api.remove_image(ref, force=True)


def _refs(docker_api) -> set[str]:
    """The engine's refs that a push here could have made or moved."""
    return {t for i in docker_api.images() for t in i.get("RepoTags") or []
            if t.startswith("127.0.0.1:") or "hostile" in t}


def _push(tiny: str, reg: HostileRegistry, *extra: str, env: dict | None = None,
          input: str | None = None, timeout: float = 120):
    json_ = [a for a in extra if a == "--json"]
    extra = tuple(a for a in extra if a != "--json")
    return run_measured(*json_, "push", tiny, "--to", f"{reg.host}/team", "--no-smoke-gate", *extra,
                        env={"IMAGEKIT_REGISTRY_USER": "", "IMAGEKIT_REGISTRY_PASSWORD": "",
                             **(env or {})}, input=input, timeout=timeout)


def _one_line(r, code: int) -> str:
    assert r.code == code, r.output[-3000:]
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1, r.stderr[-3000:]
    assert "Traceback" not in r.output
    assert "\x1b" not in r.output and "\u202e" not in r.output and "\x07" not in r.output
    assert len(lines[0]) < 1200, len(lines[0])
    assert r.peak_rss_mb < MAX_RSS_MB, r.peak_rss_mb
    return lines[0]


def _no_secret(text: str, *secrets: str) -> None:
    for s in secrets:
        for form in {s, s.strip(), json.dumps(s)[1:-1], s.encode("unicode_escape").decode(),
                     urllib.parse.quote(s, safe=""), base64.b64encode(s.encode()).decode(),
                     base64.b64encode(f"{USER}:{s}".encode()).decode()}:
            if len(form) >= 4:
                assert form not in text, f"a form of a secret is in the output: {form!r}"


def test_a_silent_registry_is_given_up_on_in_seconds(tiny, docker_api):
    before = _refs(docker_api)
    with HostileRegistry("silent") as reg:
        r = _push(tiny, reg)
    line = _one_line(r, 10)
    assert "did not answer" in line and reg.host in line, line
    bound = registry.PING_TRIES * (registry.ANSWER + 1) + 10
    assert r.seconds < bound, (r.seconds, bound)
    assert _refs(docker_api) == before
    print(f"silent registry: exit {r.code} in {r.seconds}s, peak {r.peak_rss_mb:.0f} MB")


def test_a_registry_that_goes_mute_after_its_ping_costs_two_time_limits(tiny, docker_api):
    """An unanswered request is tried once more, not RETRIES times: each try
    costs a whole time limit."""
    with HostileRegistry("mute-after-ping") as reg:
        r = _push(tiny, reg, "--retries", "0")
    line = _one_line(r, 10)
    assert "no answer in time" in line or "no complete answer" in line, line
    bound = (registry.SLOW_RETRIES + 1) * (registry.ANSWER + 2) + 10
    assert r.seconds < bound, (r.seconds, bound)
    print(f"registry mute after its ping: exit {r.code} in {r.seconds}s")


def test_a_registry_that_trickles_its_answer_is_cut_off(tiny, docker_api):
    before = _refs(docker_api)
    with HostileRegistry("trickle") as reg:
        r = _push(tiny, reg)
    line = _one_line(r, 10)
    assert reg.host in line
    bound = registry.PING_TRIES * (registry.CONNECT + registry.ANSWER + 1) + 10
    assert r.seconds < bound, (r.seconds, bound)
    assert _refs(docker_api) == before
    print(f"trickling registry: exit {r.code} in {r.seconds}s, peak {r.peak_rss_mb:.0f} MB")


def test_a_flooding_registry_costs_a_bounded_read(tiny, docker_api):
    with HostileRegistry("flood") as reg:
        r = _push(tiny, reg)
    line = _one_line(r, 11)
    assert "asks for a username and password" in line, line
    assert r.seconds < 20, r.seconds
    print(f"flooding registry: exit {r.code} in {r.seconds}s, peak {r.peak_rss_mb:.0f} MB")


@pytest.mark.parametrize("mode", ["plain", "json"])
@pytest.mark.parametrize("size", ["inject", "inject-small"])
def test_escape_sequences_in_a_registry_error_are_shown_not_obeyed(tiny, docker_api, mode, size):
    before = _refs(docker_api)
    with HostileRegistry(size) as reg:
        r = _push(tiny, reg, *(["--json"] if mode == "json" else []))
    line = _one_line(r, 10)
    assert _refs(docker_api) == before
    message = json.loads(line)["message"] if mode == "json" else line
    assert "DENIED" in message and "owned" in message, message
    assert "more characters" in message        # a 10 MB message, or 1000 Zs: cut to a line
    if mode == "json":
        assert json.loads(line)["exit_code"] == 10
    if mode == "plain" and size == "inject-small":
        assert "\\x1b]0;owned\\x07" in line and "\\u202e" in line, line
    print(f"injecting registry ({size}, {mode}): {line[:200]}")


def test_a_token_with_a_line_break_is_refused_at_once_and_never_shown(tiny, docker_api):
    token = "tok3n-s3cret\r\nX-Injected: yes"
    with HostileRegistry("token-crlf", token=token) as reg:
        r = _push(tiny, reg, "--username", USER, "--password-stdin", input=PASSWORD + "\n")
    line = _one_line(r, 11)
    assert "malformed token" in line and "not retried" in line, line
    assert [s for s in reg.seen if s.startswith("GET /token")].__len__() == 1, reg.seen
    assert not [s for s in reg.seen if s.startswith(("POST", "PATCH", "PUT", "HEAD"))], reg.seen
    _no_secret(r.output, token, PASSWORD)
    assert r.seconds < 15, r.seconds


def test_a_trailing_newline_on_a_token_is_refused_too(tiny, docker_api):
    token = "eyJhbGciOi.J9.sig-value\n"
    with HostileRegistry("token-crlf", token=token) as reg:
        r = _push(tiny, reg, "--username", USER, "--password-stdin", input=PASSWORD + "\n")
    line = _one_line(r, 11)
    assert "LINE FEED" in line, line
    _no_secret(r.output, token, PASSWORD)


def test_a_wrong_password_is_known_before_the_export_is_read(tiny, docker_api):
    before = _refs(docker_api)
    with HostileRegistry("wrong-password") as reg:
        r = _push(tiny, reg, "--username", USER, "--password-stdin", input=PASSWORD + "\n")
    line = _one_line(r, 11)
    assert "refused the credentials" in line, line
    assert "read the image once" not in r.output
    assert all(s == "GET /v2/" for s in reg.seen), reg.seen
    _no_secret(r.output, PASSWORD)
    assert _refs(docker_api) == before
    assert r.seconds < 15, r.seconds


def test_a_password_with_a_line_break_is_never_sent(tiny, docker_api):
    with HostileRegistry("wrong-password") as reg:
        r = _push(tiny, reg, env={"IMAGEKIT_REGISTRY_USER": USER,
                                  "IMAGEKIT_REGISTRY_PASSWORD": "pass\nword-secret",
                                  "IMAGEKIT_REGISTRY": reg.host})
    line = _one_line(r, 11)
    assert "control character" in line, line
    assert reg.seen == [], reg.seen
    _no_secret(r.output, "pass\nword-secret")
