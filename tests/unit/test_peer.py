"""Peer text is data (cut, escapes made visible) and secrets never reach the
output, in any of the forms a message may carry them."""

from __future__ import annotations

import base64
import json
import urllib.parse

import pytest

from imagekit import display, peer


@pytest.fixture(autouse=True)
def clean():
    peer.forget_secrets()
    yield
    peer.forget_secrets()


def test_peer_text_is_one_bounded_line():
    huge = "line one\r\n\tline two " + "x" * 10_000_000
    t = peer.peer_text(huge)
    assert "\n" not in t and "\r" not in t
    assert t.startswith("line one line two")
    assert len(t) < peer.LIMIT + 60 and t.endswith("more characters)")
    assert peer.peer_text(b"\xff\xfebytes") == "\ufffd\ufffdbytes"
    assert peer.peer_text("short") == "short"


def test_visible_escapes_controls_and_invisible_format_characters():
    text = "a\x1b]0;title\x07b\x1b[2Jc\u202ed\u200be\x85f\u2028g\x00h"
    v = peer.visible(text)
    assert v == "a\\x1b]0;title\\x07b\\x1b[2Jc\\u202ed\\u200be\\x85f\\u2028g\\x00h"
    assert peer.visible("plain text, ünïcode ✓") == "plain text, ünïcode ✓"


@pytest.mark.parametrize("secret", ["s3cret-token\r\n", "pa ss/wörd+=&", "eyJhbGciOi.J9.sig"])
def test_every_form_of_a_secret_is_redacted(secret):
    peer.keep_secret(secret, "alice")
    forms = [secret, repr(secret)[1:-1], json.dumps(secret)[1:-1], urllib.parse.quote(secret, safe=""),
             urllib.parse.quote_plus(secret), base64.b64encode(secret.encode()).decode(),
             base64.b64encode(f"alice:{secret}".encode()).decode(), peer.visible(secret)]
    for form in forms:
        out = peer.redact(f"before {form} after")
        assert out == "before *** after", (form, out)


def test_short_values_are_not_treated_as_secrets():
    peer.keep_secret("abcde")
    assert peer.redact("abcde") == "abcde"


def test_the_display_redacts_and_escapes_errors_and_warnings(capsys):
    peer.keep_secret("hunter2-secret")
    display.error("registry said \x1b[2J hunter2-secret\nX-Evil: 1")
    err = capsys.readouterr().err
    assert "\x1b" not in err and "hunter2" not in err
    assert "\\x1b[2J" in err and "***" in err and len(err.strip().splitlines()) == 1
    display.error("said hunter2-secret \x1b[2J", as_json=True)
    doc = json.loads(capsys.readouterr().err)
    assert "hunter2" not in doc["message"] and "\x1b[2J" in doc["message"]   # JSON escapes it
    from imagekit.events import Warn
    with display.Display("plain") as d:
        d.show(Warn("x", "token aHVudGVyMi1zZWNyZXQ= \x1b]0;t\x07"))
    out = capsys.readouterr().out
    assert "aHVudGVy" not in out and "\x1b" not in out and "***" in out


def test_an_error_line_is_cut(capsys):
    display.error("x" * 100_000)
    err = capsys.readouterr().err
    assert len(err) < display.ERROR_LIMIT + 100 and "more characters" in err
