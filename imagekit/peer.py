"""What imagekit's peers say, made safe to show, and the secrets it holds, kept
out of everything it shows.

Peers are every party imagekit talks to and does not control: registries and
their token services, engines, and the archives someone else wrote. Their text
is data:

- `peer_text()` at the source: whatever a peer sent (an error body, a stream's
  error field, a member name) cut to LIMIT characters, whitespace runs
  folded, so that a 10 MB error message costs one line.
- `visible()` in the display, for errors and warnings (and, through the
  display's own filter, logs): every control character, and every invisible
  format character (bidi overrides, zero-width marks), written as an escape,
  so an escape sequence in a registry's message is read, not obeyed. JSON
  output is left to JSON's own escaping.

Secrets (passwords, identity tokens, bearer tokens, the `auth` of a Docker
config) are registered with `keep_secret()` where imagekit first holds them;
`redact()` then removes each one from any text, in every form it may take in a
message: as is, escaped the way Python's repr or JSON writes it, URL-quoted,
and Base64 (alone or as Basic's `user:password`). The display redacts every
line it shows and every error it prints, in every output mode."""

from __future__ import annotations

import base64
import json
import re
import threading
import unicodedata
import urllib.parse

LIMIT = 300              # characters of a peer's message shown in one line
MIN_SECRET = 6           # shorter values are not redacted (they would garble every line)

_SPACE = re.compile(r"\s+")


def peer_text(text: object, limit: int = LIMIT) -> str:
    """TEXT (str or bytes) from a peer, as one bounded line: decoded with
    replacement, runs of whitespace (line breaks included) folded to one
    space, and cut to LIMIT characters with what was left out counted. Only
    the start of a huge text is looked at."""
    cap = limit * 4 + 64
    if isinstance(text, (bytes, bytearray)):
        total = len(text)
        text = bytes(text[:cap]).decode("utf-8", "replace")
    else:
        text = str(text)
        total = len(text)
        text = text[:cap]
    dropped = total - min(total, cap)
    text = _SPACE.sub(" ", text).strip()
    if len(text) > limit or dropped:
        more = len(text) - min(len(text), limit) + dropped
        text = f"{text[:limit]}... ({more} more characters)"
    return text


def _escape(ch: str) -> str:
    n = ord(ch)
    if n < 0x100:
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(ch, f"\\x{n:02x}")
    return f"\\u{n:04x}" if n < 0x10000 else f"\\U{n:08x}"


def visible(text: str) -> str:
    """TEXT with every control character (C0, C1, DEL), line and paragraph
    separator and invisible format character (Unicode category Cf: bidi
    overrides, zero-width marks) written as a Python-style escape."""
    out = []
    for ch in text:
        if ch < " " or "\x7f" <= ch <= "\x9f" or \
                (ch > "\x9f" and unicodedata.category(ch) in ("Cf", "Zl", "Zp", "Cc", "Co", "Cs")):
            out.append(_escape(ch))
        else:
            out.append(ch)
    return "".join(out)


# -- secrets ---------------------------------------------------------------------

_lock = threading.Lock()
_forms: set[str] = set()


def _forms_of(secret: str) -> set[str]:
    forms = {secret,
             secret.encode("unicode_escape").decode("ascii"),    # repr's escapes
             json.dumps(secret)[1:-1],                           # JSON's
             json.dumps(secret, ensure_ascii=False)[1:-1],
             urllib.parse.quote(secret, safe=""),
             urllib.parse.quote_plus(secret, safe=""),
             visible(secret),                                    # the display's own escapes
             base64.b64encode(secret.encode()).decode(),
             base64.urlsafe_b64encode(secret.encode()).decode()}
    forms |= {f.rstrip("=") for f in list(forms) if f.endswith("=")}
    stripped = secret.strip()
    if stripped != secret and len(stripped) >= MIN_SECRET:
        forms |= _forms_of(stripped)
    return {f for f in forms if len(f) >= MIN_SECRET}


def keep_secret(secret: str | None, username: str = "") -> None:
    """Register SECRET (and, with USERNAME, the Base64 of `username:secret`
    that Basic authentication sends) so that redact() removes it."""
    if not secret or len(secret) < MIN_SECRET:
        return
    forms = _forms_of(secret)
    if username:
        pair = f"{username}:{secret}".encode()
        forms.add(base64.b64encode(pair).decode())
        forms.add(base64.b64encode(pair).decode().rstrip("="))
    with _lock:
        _forms.update(forms)


def redact(text: str) -> str:
    """TEXT with every registered secret, in each of its forms, written as ***."""
    with _lock:
        forms = sorted(_forms, key=len, reverse=True)
    for f in forms:
        if f in text:
            text = text.replace(f, "***")
    return text


def forget_secrets() -> None:
    """For tests: drop every registered secret."""
    with _lock:
        _forms.clear()


def shown(text: str) -> str:
    """A line as the display shows it in a terminal: secrets redacted, then
    control and invisible characters made visible."""
    return visible(redact(text))
