"""Checks for the values that reach a Dockerfile, a shell or a registry: one-line
text, image references (Docker's reference grammar), registry destinations,
hosts, ports and URLs.

Every check is a small hand parser or a pattern with no nested quantifiers, so
its time grows linearly with the input: a hostile value gets its answer at
once. Each check returns the value or raises ValueError with one line that
says what is wrong (the callers add the file and field)."""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# Every character str.splitlines() splits on (\n \r \v \f \x1c \x1d \x1e \x85
# U+2028 U+2029) is in here, with the other C0/C1 controls and DEL.
BREAKING = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

MAX_NAME = 255          # repository name, registry included
MAX_TAG = 128
MAX_URL = 2048

_ALNUM = re.compile(r"[a-z0-9]+")
_LABEL_CHARS = re.compile(r"[A-Za-z0-9-]+")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_DIGITS = re.compile(r"[0-9]{1,5}")
_IPV6 = re.compile(r"\[[0-9A-Fa-f:.]{2,45}\]")
_HEX = {"sha256": re.compile(r"[a-f0-9]{64}"), "sha384": re.compile(r"[a-f0-9]{96}"),
        "sha512": re.compile(r"[a-f0-9]{128}")}
# What a URL may hold: RFC 3986 characters less those a shell or sed gives a
# meaning to inside double quotes ($ ` \ " ' & | and the brackets).
_URL_CHARS = re.compile(r"[A-Za-z0-9._~:/?#@!*+,;=%\[\]-]*")


_CONTROL_NAMES = {"\n": "LINE FEED", "\r": "CARRIAGE RETURN", "\t": "TAB", "\v": "LINE TABULATION",
                  "\f": "FORM FEED", "\x00": "NUL", "\x1b": "ESCAPE", "\x7f": "DELETE",
                  "\x85": "NEXT LINE", "\x1c": "FILE SEPARATOR", "\x1d": "GROUP SEPARATOR",
                  "\x1e": "RECORD SEPARATOR"}


def char_name(ch: str) -> str:
    name = _CONTROL_NAMES.get(ch) or unicodedata.name(ch, "control character")
    return f"U+{ord(ch):04X} {name}"


def one_line(v: str) -> str:
    """Refuse line breaks of every kind and control characters."""
    m = BREAKING.search(v)
    if m:
        raise ValueError(f"must be one line of text (no newlines or control characters): contains "
                         f"{char_name(m.group())} "
                         f"at character {m.start() + 1}")
    return v


def printable(text: str) -> str:
    """TEXT with every line-breaking or control character written as an escape,
    so an error message that quotes hostile input stays one line."""
    return BREAKING.sub(lambda m: m.group().encode("unicode_escape").decode(), text)


def short(v: str, limit: int = 60) -> str:
    """repr of V, cut to LIMIT characters, for messages."""
    return repr(v) if len(v) <= limit else repr(v[:limit]) + f"... ({len(v)} characters)"


def _host(host: str) -> str:
    """A DNS name or IPv4 address (labels of letters, digits, '-', not starting
    or ending with '-'), or a bracketed IPv6 address."""
    if _IPV6.fullmatch(host):
        return host
    if not host or len(host) > 253:
        raise ValueError(f"{short(host)} is not a host name")
    for label in host.split("."):
        if not _LABEL_CHARS.fullmatch(label) or label[0] == "-" or label[-1] == "-" or len(label) > 63:
            raise ValueError(f"{short(host)} is not a host name (labels of letters, digits and '-', "
                             "separated by dots)")
    return host


def port(text: str) -> int:
    if not _DIGITS.fullmatch(text) or not 1 <= int(text) <= 65535:
        raise ValueError(f"port {short(text)} is not a number from 1 to 65535")
    return int(text)


def host_port(text: str) -> str:
    """HOST or HOST:PORT (an IPv6 host in brackets)."""
    one_line(text)
    if text.startswith("["):
        end = text.find("]")
        host, rest = text[:end + 1], text[end + 1:]
        if end < 0 or (rest and not rest.startswith(":")):
            raise ValueError(f"{short(text)} is not HOST or HOST:PORT")
        _host(host)
        if rest:
            port(rest[1:])
        return text
    host, colon, p = text.partition(":")
    _host(host)
    if colon:
        port(p)
    return text


def path_component(part: str) -> str:
    """One repository path component: lowercase letters and digits, joined by
    '.', '_', '__' or any number of '-'."""
    if not part:
        raise ValueError("has an empty path component (a leading, trailing or double '/')")
    if part != part.lower() and _ALNUM.fullmatch(part.lower().replace(".", "a").replace(
            "_", "a").replace("-", "a")):
        raise ValueError(f"path component {short(part)} has upper-case letters; registries take "
                         f"lower case only ({short(part.lower())})")
    seps = _ALNUM.split(part)
    if any(s.strip("._-") for s in seps):
        raise ValueError(f"path component {short(part)}: only lowercase letters, digits, '.', '_', '-'")
    if seps[0] or seps[-1]:
        raise ValueError(f"path component {short(part)} must start and end with a letter or digit")
    for sep in seps[1:-1]:
        if not (sep in (".", "_", "__") or sep.strip("-") == ""):
            raise ValueError(f"path component {short(part)}: letters and digits are joined by "
                             f"'.', '_', '__' or dashes, not {sep!r}")
    return part


def tag(text: str) -> str:
    if not _TAG.fullmatch(text):
        raise ValueError(f"{short(text)} is not a Docker tag (letters, digits, '_.-', at most "
                         f"{MAX_TAG}, not starting with '.' or '-')")
    return text


def digest(text: str) -> str:
    algo, colon, hexpart = text.partition(":")
    rx = _HEX.get(algo)
    if not colon or rx is None or not rx.fullmatch(hexpart):
        raise ValueError(f"{short(text)} is not a digest (sha256: and 64 lowercase hex digits)")
    return text


def _is_domain(first: str) -> bool:
    return "." in first or ":" in first or first == "localhost" or first.startswith("[") \
        or first != first.lower()


@dataclass(frozen=True)
class Reference:
    domain: str | None
    path: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        return f"{self.domain}/{self.path}" if self.domain else self.path


def parse_reference(text: str) -> Reference:
    """[HOST[:PORT]/]PATH[:TAG][@DIGEST] by Docker's reference grammar."""
    one_line(text)
    try:
        return _parse_reference(text)
    except ValueError as e:
        raise ValueError(f"{short(text)} is not an image reference: {e}") from None


def _parse_reference(text: str) -> Reference:
    if not text:
        raise ValueError("it is empty")
    rest, at, dig = text.partition("@")
    if at:
        digest(dig)
    slash = rest.rfind("/")
    colon = rest.rfind(":")
    tg = None
    if colon > slash:
        rest, tg = rest[:colon], rest[colon + 1:]
        tag(tg)
    parts = rest.split("/")
    domain = None
    if len(parts) > 1 and _is_domain(parts[0]):
        domain = parts.pop(0)
        host_port(domain)
    for part in parts:
        path_component(part)
    if len(rest) > MAX_NAME:
        raise ValueError(f"the name is longer than {MAX_NAME} characters")
    return Reference(domain, "/".join(parts), tg, dig or None)


def image_reference(text: str) -> str:
    parse_reference(text)
    return text


def registry(text: str) -> str:
    """A push destination, HOST[:PORT][/NAMESPACE...]: the host must look like
    one (a dot, a port, or localhost), or Docker would read it as a Docker Hub
    namespace."""
    one_line(text)
    if "://" in text:
        raise ValueError(f"{short(text)}: give REGISTRY/NAMESPACE without a scheme "
                         "(e.g. registry.example.com/team)")
    raw = text.rstrip("/")
    host, _, namespace = raw.partition("/")
    if not host or not _is_domain(host):
        raise ValueError(f"{short(text)}: {short(host)} is not a registry host; start with one, e.g. "
                         "registry.example.com/team, localhost:5000/team or docker.io/team")
    host_port(host)
    for part in namespace.split("/") if namespace else []:
        try:
            path_component(part)
        except ValueError as e:
            raise ValueError(f"{short(text)}: namespace {e}") from None
    if len(raw) > MAX_NAME:
        raise ValueError(f"{short(text)} is longer than {MAX_NAME} characters")
    return text


def url(text: str) -> str:
    """An http or https URL with a valid host, and none of the characters a
    shell or sed would act on."""
    one_line(text)
    if len(text) > MAX_URL:
        raise ValueError(f"{short(text)} is longer than {MAX_URL} characters")
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        raise ValueError(f"{short(text)} is not an http:// or https:// URL")
    bad = _URL_CHARS.match(rest)
    end = bad.end() if bad else 0
    if end < len(rest):
        ch = rest[end]
        what = "a space" if ch == " " else repr(ch)
        raise ValueError(f"{short(text)}: {what} is not allowed in a URL (percent-encode it)")
    cut = len(rest)
    for stop in "/?#":
        i = rest.find(stop)
        if i >= 0:
            cut = min(cut, i)
    authority = rest[:cut]
    hostpart = authority.rpartition("@")[2]
    if not hostpart:
        raise ValueError(f"{short(text)} has no host")
    try:
        host_port(hostpart)
    except ValueError as e:
        raise ValueError(f"{short(text)}: {e}") from None
    return text
