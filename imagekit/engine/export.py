"""The engine's image export (`docker save`), read as what it is.

Three layouts reach imagekit, and one reader serves push, save, load, inspect
and ship:

- the OCI image layout that Engine 25+ writes (`oci-layout`, `index.json`,
  `blobs/sha256/<hex>`), where `index.json` may point to a nested index whose
  manifests include attestation manifests; the image is the linux/amd64 (or
  only) image manifest, its media types and digests say what each blob is;
  on the classic store the layer blobs are uncompressed tars, on the containerd
  store they are stored as they came (gzip for built or pulled images);
- the legacy `manifest.json` that Engine 25+ still writes beside it, whose
  `LayerSources` lists every layer on the classic store (not only foreign ones);
- the legacy layout of engines up to 24 (`<id>/layer.tar`, `<id>.json`).

The OCI layout is read first; `manifest.json` is the fallback. Exports are
streams and their JSON documents come last (entries are sorted by name), so a
reader keeps the small JSON members (`Watcher`) and resolves the layout once
the stream has passed (`layout`). Nothing here knows a registry or the engine."""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from ..peer import peer_text

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
INDEXES = (OCI_INDEX, DOCKER_LIST)
MANIFESTS = (OCI_MANIFEST, DOCKER_MANIFEST)
FOREIGN = ("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
           "application/vnd.oci.image.layer.nondistributable.v1.tar",
           "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
           "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd")
ATTESTATION = "attestation-manifest"      # vnd.docker.reference.type of BuildKit's attestations
PLATFORM = ("linux", "amd64")
SMALL = 16 * 1024 * 1024                  # a JSON document of the export is smaller than this

GZIP_MAGIC = b"\x1f\x8b"
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BLOB = re.compile(r"^blobs/sha256/([0-9a-f]{64})$")


class ExportError(Exception):
    """The export (or archive) is not an image imagekit can read; one line.
    `unsupported` marks what is valid but not for imagekit's own push path
    (foreign layers, several images)."""

    def __init__(self, message: str, unsupported: bool = False):
        super().__init__(message)
        self.message = message
        self.unsupported = unsupported


def norm(name: str) -> str:
    """A member name as the layouts refer to it (no ./, no leading /)."""
    return posixpath.normpath(name[2:] if name.startswith("./") else name).lstrip("/")


def follow(links: Mapping[str, str], path: str) -> str:
    """The member a (possibly symlinked) path names: engines write one layer
    that appears twice as a link to the other."""
    for _ in range(16):
        if path not in links:
            return path
        path = links[path]
    return path


def compression_of(head: bytes) -> str:
    """'gzip', 'zstd' or '' (an uncompressed tar) from a blob's first bytes."""
    if head.startswith(GZIP_MAGIC):
        return "gzip"
    if head.startswith(ZSTD_MAGIC):
        return "zstd"
    return ""


def is_foreign(media_type: str) -> bool:
    return media_type in FOREIGN or ".foreign." in media_type or ".nondistributable." in media_type


@dataclass(frozen=True)
class LayerRef:
    """One layer as the export holds it."""

    path: str             # the member that holds its bytes
    media_type: str = ""  # "" in the legacy layouts (an uncompressed tar)
    digest: str = ""      # sha256 of its bytes as stored ("" when the layout does not say)
    size: int = 0
    diff_id: str = ""     # sha256 of the uncompressed tar, from the config

    @property
    def foreign(self) -> bool:
        return is_foreign(self.media_type)


@dataclass(frozen=True)
class Layout:
    """The one image an export holds."""

    kind: str                 # "oci" or "legacy"
    config_path: str
    config_digest: str        # sha256 of the config bytes: the same on every store
    layers: list[LayerRef]
    repo_tags: list[str] = field(default_factory=list)
    manifest_digest: str = ""  # the image manifest's, where the export holds one

    @property
    def diff_ids(self) -> list[str]:
        return [x.diff_id for x in self.layers]


JSON_ITEMS = 200_000     # values in one JSON document of an export (its manifests and configs
                         # hold hundreds): bounds what parsing it costs, ~100 bytes a value


def parse_json(data: bytes, what: str) -> object:
    """DATA parsed, refused (ExportError) when it is not JSON, nests past the
    interpreter's limit, or holds more than JSON_ITEMS values: a 4 MiB
    document of empty objects would otherwise cost 100 MB parsed."""
    if data.count(b",") + data.count(b"{") + data.count(b"[") > JSON_ITEMS:
        raise ExportError(f"{peer_text(what)} in the export holds more than {JSON_ITEMS} values; "
                          "an image's documents hold far fewer")
    try:
        return json.loads(data)
    except RecursionError:
        raise ExportError(f"{peer_text(what)} in the export nests too deep") from None
    except ValueError:
        raise ExportError(f"{peer_text(what)} in the export is not valid JSON") from None


def _json(data: bytes | None, what: str) -> object:
    if data is None:
        raise ExportError(f"the export names {peer_text(what)} but does not hold it")
    return parse_json(data, what)


def _blob_path(digest: str) -> str:
    algo, _, hexd = str(digest).partition(":")
    if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexd):
        raise ExportError("the export names a blob by an unusable digest "
                          f"{peer_text(repr(str(digest)[:80]))}")
    return f"blobs/sha256/{hexd}"


Getter = Callable[[str], "bytes | None"]


def _pick(manifests: list, get: Getter, depth: int = 0) -> list[dict]:
    """The image manifests of an index, nested indexes followed, attestation
    manifests and other platforms left out."""
    if depth > 4:
        raise ExportError("the export's indexes nest too deep")
    found: list[dict] = []
    for d in manifests:
        if not isinstance(d, dict):
            continue
        kind = str(d.get("mediaType") or "")
        notes = d.get("annotations") or {}
        if isinstance(notes, dict) and notes.get("vnd.docker.reference.type") == ATTESTATION:
            continue
        plat = d.get("platform") or {}
        if isinstance(plat, dict) and plat.get("os") and \
                (plat.get("os"), plat.get("architecture")) != PLATFORM:
            continue
        if kind in INDEXES:
            inner = _json(get(_blob_path(d.get("digest", ""))), f"index {d.get('digest')}")
            if not isinstance(inner, dict):
                raise ExportError("an index in the export is not a JSON object")
            found += _pick(list(inner.get("manifests") or []), get, depth + 1)
        elif kind in MANIFESTS or not kind:
            found.append(d)
    return found


def _oci(get: Getter) -> Layout | None:
    index = _json(get("index.json"), "index.json")
    if not isinstance(index, dict):
        raise ExportError("index.json in the export is not a JSON object")
    picked = _pick(list(index.get("manifests") or []), get)
    if not picked:
        return None
    digests = list(dict.fromkeys(str(d.get("digest")) for d in picked))
    if len(digests) > 1:
        raise ExportError(f"the export holds {len(digests)} images; imagekit reads one",
                          unsupported=True)
    desc = picked[0]
    path = _blob_path(desc.get("digest", ""))
    raw = get(path)
    if raw is None:                 # an index naming what the export did not include
        return None
    doc = _json(raw, f"manifest {desc.get('digest')}")
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise ExportError(f"manifest {peer_text(desc.get('digest'))} in the export has no config")
    config_path = _blob_path(doc["config"].get("digest", ""))
    layers = []
    for d in doc.get("layers") or []:
        if not isinstance(d, dict):
            raise ExportError(f"manifest {peer_text(desc.get('digest'))} lists a layer that is not "
                              "an object")
        layers.append(LayerRef(_blob_path(d.get("digest", "")), str(d.get("mediaType") or ""),
                               str(d.get("digest")), int(d.get("size") or 0)))
    tags = []
    for top in [desc, *(index.get("manifests") or [])]:
        notes = top.get("annotations") if isinstance(top, dict) else None
        if isinstance(notes, dict) and notes.get("io.containerd.image.name"):
            tags.append(_short_name(str(notes["io.containerd.image.name"])))
    tags = list(dict.fromkeys(tags))
    return Layout("oci", config_path, "", layers, tags, str(desc.get("digest")))


def _short_name(name: str) -> str:
    for prefix in ("docker.io/library/", "docker.io/"):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name


def _legacy(get: Getter) -> Layout:
    entries = _json(get("manifest.json"), "manifest.json")
    if not isinstance(entries, list) or not entries:
        raise ExportError("manifest.json in the export lists no image")
    if len(entries) != 1:
        raise ExportError(f"the export holds {len(entries)} images; imagekit reads one",
                          unsupported=True)
    entry = entries[0]
    try:
        config_path = norm(str(entry["Config"]))
        paths = [norm(str(p)) for p in entry["Layers"]]
    except (KeyError, TypeError):
        raise ExportError("manifest.json in the export has no Config or Layers") from None
    sources = entry.get("LayerSources") or {}     # every layer on Engine 25+'s classic store
    layers = []
    for p in paths:
        m = BLOB.match(p)
        src = sources.get(f"sha256:{m[1]}") if m and isinstance(sources, dict) else None
        layers.append(LayerRef(p, str((src or {}).get("mediaType") or ""),
                               f"sha256:{m[1]}" if m else "", int((src or {}).get("size") or 0)))
    return Layout("legacy", config_path, "", layers, [str(t) for t in entry.get("RepoTags") or []])


def layout(small: Mapping[str, bytes], resolve: Callable[[str], str] = lambda p: p, *,
           both: bool = False) -> Layout:
    """The image of an export whose small JSON members are `small` (by
    normalised path; symlinked members resolved with `resolve`). The OCI
    layout first, then manifest.json. Checks that the config hashes to its
    digest, and fills each layer's diff ID from the config. With `both`,
    manifest.json is checked too where index.json names the image: the two
    must name the same config (the classic store loads what manifest.json
    says, the containerd store what index.json says)."""
    def get(path: str) -> bytes | None:
        return small.get(resolve(path))

    found = _oci(get) if get("index.json") is not None else None
    if found is None:
        if get("manifest.json") is None:
            raise ExportError("the export has neither index.json nor manifest.json: "
                              "not an image archive")
        return _complete(_legacy(get), get)
    image = _complete(found, get)
    if both and get("manifest.json") is not None:
        legacy = _complete(_legacy(get), get)
        if legacy.config_digest != image.config_digest:
            raise ExportError(f"index.json names image {image.config_digest[:19]}, manifest.json "
                              f"{legacy.config_digest[:19]}: the export does not match itself")
    return image


def _complete(found: Layout, get: Getter) -> Layout:
    """FOUND with its config checked against its digest and the layers' diff IDs."""
    config_bytes = get(found.config_path)
    if config_bytes is None:
        raise ExportError(f"the export names config {peer_text(found.config_path)} but does not "
                          "hold it")
    digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    named = posixpath.basename(found.config_path).removesuffix(".json")
    if re.fullmatch(r"[0-9a-f]{64}", named) and not digest.endswith(named):
        raise ExportError(f"the image config {peer_text(found.config_path)} does not match its "
                          f"digest ({digest[:19]}…): the export is corrupt")
    config = _json(config_bytes, found.config_path)
    try:
        raw_ids = config["rootfs"]["diff_ids"]    # type: ignore[index]
    except (KeyError, TypeError):
        raw_ids = None
    if not isinstance(raw_ids, list):
        raise ExportError("the image config has no rootfs.diff_ids")
    diff_ids = [str(x) for x in raw_ids]
    if len(diff_ids) != len(found.layers):
        raise ExportError(f"the export lists {len(found.layers)} layers, its config "
                          f"{len(diff_ids)}")
    layers = [LayerRef(x.path, x.media_type, x.digest, x.size, d)
              for x, d in zip(found.layers, diff_ids, strict=True)]
    return Layout(found.kind, found.config_path, digest, layers, found.repo_tags,
                  found.manifest_digest)


@dataclass(frozen=True)
class Named:
    """One image that manifest.json or index.json names."""

    where: str                    # "manifest.json" or "index.json"
    config: str                   # its config digest; "" where the export cannot say
    refs: tuple[str, ...] = ()    # the names it is given, as written
    digests: tuple[str, ...] = ()  # index.json: the descriptor's digest, then its image manifests'


def config_of(path: str, get: Getter) -> str:
    """The config digest of the config at PATH: from its name when it is named by
    its digest, else from its bytes; "" when the export does not hold it."""
    m = BLOB.match(path) or re.fullmatch(r"([0-9a-f]{64})\.json", path)
    if m:
        return f"sha256:{m[1]}"
    raw = get(path) if path else None
    return "sha256:" + hashlib.sha256(raw).hexdigest() if raw is not None else ""


def inventory(small: Mapping[str, bytes], resolve: Callable[[str], str] = lambda p: p) \
        -> list[Named]:
    """Every image manifest.json and index.json name, entry by entry (an
    image with several tags may be several entries). An index.json entry is
    one image whatever it nests: the linux/amd64 (or only) image manifest of
    a nested index, attestation manifests left out (as _pick reads it);
    attestation entries at the top are no image."""
    def get(path: str) -> bytes | None:
        return small.get(resolve(path))

    found: list[Named] = []
    raw = get("manifest.json")
    if raw is not None:
        entries = _json(raw, "manifest.json")
        if not isinstance(entries, list):
            raise ExportError("manifest.json in the export is not a list of images")
        for e in entries:
            if not isinstance(e, dict):
                raise ExportError("manifest.json in the export lists an image that is not an object")
            tags = e.get("RepoTags") or []
            if not isinstance(tags, list):
                raise ExportError("manifest.json in the export has RepoTags that are not a list")
            found.append(Named("manifest.json", config_of(norm(str(e.get("Config") or "")), get),
                               tuple(str(t) for t in tags)))
    raw = get("index.json")
    if raw is not None:
        index = _json(raw, "index.json")
        if not isinstance(index, dict):
            raise ExportError("index.json in the export is not a JSON object")
        top = index.get("manifests") or []
        if not isinstance(top, list):
            raise ExportError("index.json in the export has manifests that are not a list")
        for d in top:
            if not isinstance(d, dict):
                continue
            notes = d.get("annotations") if isinstance(d.get("annotations"), dict) else {}
            if notes.get("vnd.docker.reference.type") == ATTESTATION:
                continue
            try:
                picked = _pick([d], get)
            except ExportError:
                picked = []
            configs = set()
            for m in picked:
                body = get(_blob_path(m.get("digest", "")))
                doc = _json(body, "a manifest") if body is not None else None
                if isinstance(doc, dict) and isinstance(doc.get("config"), dict):
                    configs.add(str(doc["config"].get("digest") or ""))
            name = notes.get("io.containerd.image.name")
            config = configs.pop() if len(configs) == 1 else \
                ("" if not configs else f"several:{d.get('digest')}")
            found.append(Named("index.json", config, (str(name),) if name else (),
                               (str(d.get("digest")), *(str(m.get("digest")) for m in picked))))
    return found


def wants(name: str, size: int, head: bytes = b"{") -> bool:
    """Whether a member is one of the export's small JSON documents."""
    if size > SMALL:
        return False
    if name in ("index.json", "manifest.json") or name.endswith(".json"):
        return True
    return bool(BLOB.match(name)) and head[:1] == b"{"


ZERO_BLOCK = bytes(512)
EXT_LIMIT = 1 << 20         # a PAX or GNU long-name header: Go's archive/tar (the engine's) refuses larger
HELD_LIMIT = 4 * EXT_LIMIT  # extended headers withheld in a row
HEADER_ONLY = frozenset(b"123456")   # links, devices, folders, FIFOs: no data, whatever the size field says
DOCS = ("manifest.json", "index.json")
ENTRY_COST = 256            # what one kept name costs beside its bytes
_LOW = bytes(range(128))
_OCTAL = re.compile(rb"[0-7]+")
_DECIMAL = re.compile(r"[+-]?[0-9]+")


def _damaged(what: str) -> ExportError:
    return ExportError(f"the tar is corrupt ({what})")


def _cstr(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _octal(field: bytes) -> int:
    digits = field.strip(b" \0").split(b"\0", 1)[0]
    if not digits:
        return 0
    if not _OCTAL.fullmatch(digits):
        raise _damaged("a header field is not a number")
    return int(digits, 8)


def _numeric(field: bytes) -> int:
    """A size field as Go's archive/tar reads it: octal, or base-256 when the
    high bit is set (negative values refused)."""
    if field[0] & 0x80:
        if field[0] & 0x40:
            raise _damaged("a negative size")
        return int.from_bytes(bytes([field[0] & 0x7F]) + field[1:], "big")
    return _octal(field)


def _format(head: bytes) -> str:
    """'ustar', 'star', 'gnu' or 'v7', after the header's checksum is checked
    (signed or unsigned sum, as Go's archive/tar accepts)."""
    try:
        value = _octal(head[148:156])
    except ExportError:
        value = -1
    blanked = head[:148] + b"        " + head[156:]
    unsigned = sum(blanked)
    signed = unsigned - 256 * len(blanked.translate(None, _LOW))
    if value not in (unsigned, signed):
        raise _damaged("a header fails its checksum")
    magic = head[257:263]
    if magic == b"ustar\0":
        return "star" if head[508:512] == b"tar\0" else "ustar"
    if magic == b"ustar " and head[263:265] == b" \0":
        return "gnu"
    return "v7"


def _pax_records(data: bytes) -> dict[str, str]:
    """The records of a PAX header, as Go's archive/tar parses them (the last
    of a key wins); a malformed record is refused."""
    records: dict[str, str] = {}
    while data:
        size, space, rest = data.partition(b" ")
        text = size.decode("ascii", "replace")
        if not space or not _DECIMAL.fullmatch(text):
            raise _damaged("a malformed PAX record")
        n = int(text) - len(size) - 1
        if int(text) < 5 or n <= 0 or n > len(rest):
            raise _damaged("a malformed PAX record")
        record, newline, data = rest[:n - 1], rest[n - 1:n], rest[n:]
        key, eq, value = record.partition(b"=")
        if newline != b"\n" or not eq or not key or b"\0" in key:
            raise _damaged("a malformed PAX record")
        k, v = key.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")
        if k in ("path", "linkpath", "uname", "gname") and "\0" in v:
            raise _damaged("a PAX name holds a NUL")
        records[k] = v
    return records


def _ustar(name: str, size: int) -> bytes:
    """A plain USTAR header for a regular file NAME of SIZE bytes."""
    head = bytearray(512)
    raw = name.encode()
    head[:len(raw)] = raw
    head[100:108] = b"0000644\0"
    head[108:116] = head[116:124] = b"0000000\0"
    head[124:136] = b"%011o\0" % size
    head[136:148] = b"00000000000\0"
    head[148:156] = b"        "
    head[156:157] = b"0"
    head[257:265] = b"ustar\x0000"
    head[148:156] = b"%06o\0 " % sum(head)
    return bytes(head)


def mib(n: int) -> str:
    return f"{n / (1 << 20):.0f} MiB" if n >= 1 << 20 else f"{n} bytes"


class Watcher:
    """Reads a tar's headers from its bytes as they pass (save and load stream
    the export or archive through it), the way the engine's own reader (Go's
    archive/tar, then Docker's untar) will: checksums checked, PAX and GNU
    long names, PAX sizes, header-only kinds, the last member of a name
    winning, symbolic and hard links. It keeps the small JSON members, so that
    `layout()` and `inventory()` can be asked once the stream has passed.

    Memory: what it keeps. `keep` caps one JSON document, `budget` all that is
    kept (documents and link names; None: no cap); with `strict`, a document
    named like one (`*.json`) over `keep`, the budget, a malformed header or a
    member kind an image archive never holds raise ExportError from feed();
    without it the first such error is kept and raised by layout().

    feed() returns the bytes to pass on: the input, less the end-of-archive
    marker and what follows it (a reader that has not seen the marker cannot
    finish), and, with `rewrite`, with manifest.json and index.json replaced
    by rewrite(name, bytes) (their extended headers dropped, a plain header
    written)."""

    def __init__(self, *, keep: int = SMALL, budget: int | None = None, strict: bool = False,
                 rewrite: Callable[[str, bytes], bytes] | None = None) -> None:
        self.keep, self.budget, self.strict, self.rewrite = keep, budget, strict, rewrite
        self.small: dict[str, bytes] = {}
        self.links: dict[str, str] = {}
        self.original: dict[str, bytes] = {}   # the documents rewrite() replaced, as they were
        self.skipped: dict[str, int] = {}      # JSON-like members not kept (too large): their size
        self.kept = 0                          # bytes held, charged against the budget
        self.members = 0
        self.ended = False                     # the end-of-archive marker has passed
        self.error: ExportError | None = None
        self.trailing = 0                      # bytes after the marker
        self.trailing_junk = False             # some of them not zero
        self._head = bytearray()               # a header begun in the previous chunk
        self._left = 0                         # bytes of the current member and its padding to come
        self._data_left = 0                    # of which data
        self._collect: bytearray | None = None
        self._what = ""                        # what is collected: doc, blob, x, g, L, K
        self._name = ""
        self._hold = ""                        # "ext" / "doc": the current member's bytes are withheld
        self._held = bytearray()               # extended headers withheld until their member
        self._pax: dict[str, str] = {}
        self._long_name = self._long_link = ""
        self._cost: dict[str, int] = {}
        self._dirs: set[str] = set()           # folders that hold kept names
        self._mv = memoryview(b"")
        self._pieces: list = []
        self._run: list[int] | None = None

    # -- the stream --------------------------------------------------------
    def feed(self, data: bytes) -> bytes:
        if self.error is not None:
            return b""
        try:
            return self._feed(data)
        except ExportError as e:
            self.error = e
            if self.strict:
                raise
            return b""

    def _feed(self, data: bytes) -> bytes:
        n = len(data)
        if self.ended:
            self._trail(data)
            return b""
        if self._collect is None and not self._hold and not self._head and n < self._left:
            self._left -= n                    # the middle of a layer: nothing to look at
            self._data_left -= min(n, self._data_left)
            return data
        self._mv, self._pieces, self._run = memoryview(data), [], None
        i = 0
        while i < n and not self.ended:
            if self._left:
                take = min(self._left, n - i)
                used = min(take, self._data_left)
                if used and self._collect is not None:
                    self._take(self._mv[i:i + used])
                self._data_left -= used
                self._left -= take
                if self._hold == "ext":
                    self._hold_bytes(self._mv[i:i + take])
                elif not self._hold:
                    self._pass(i, i + take)
                i += take
                if not self._left:
                    self._done()
                continue
            if not self._head and n - i >= 512:
                head, span = bytes(self._mv[i:i + 512]), (i, i + 512)
                i += 512
            else:
                take = min(512 - len(self._head), n - i)
                self._head += self._mv[i:i + take]
                i += take
                if len(self._head) < 512:
                    break
                head, span = bytes(self._head), None
                self._head.clear()
            self._header(head, span)
        if self.ended and i < n:
            self._trail(bytes(self._mv[i:]))
        if not self._pieces and self._run == [0, n]:
            return data
        self._flush()
        out = b"".join(self._pieces)
        self._pieces = []
        return out

    def _pass(self, a: int, b: int) -> None:
        if a < b:
            if self._run is not None and self._run[1] == a:
                self._run[1] = b
            else:
                self._flush()
                self._run = [a, b]

    def _insert(self, data: bytes) -> None:
        if data:
            self._flush()
            self._pieces.append(data)

    def _flush(self) -> None:
        if self._run is not None:
            self._pieces.append(self._mv[self._run[0]:self._run[1]])
            self._run = None

    def _emit_head(self, head: bytes, span: tuple[int, int] | None) -> None:
        if span is not None:
            self._pass(*span)
        else:
            self._insert(head)

    def _hold_bytes(self, data) -> None:
        self._held += data
        if len(self._held) > HELD_LIMIT:
            raise _damaged(f"extended headers of more than {mib(HELD_LIMIT)} in a row")

    def _trail(self, data: bytes) -> None:
        self.trailing += len(data)
        if not self.trailing_junk and data.count(0) != len(data):
            self.trailing_junk = True

    def _charge(self, name: str, n: int) -> None:
        self._cost[name] = self._cost.get(name, 0) + n
        self.kept += n
        if self.budget is not None and self.kept > self.budget:
            raise ExportError(f"the archive's JSON documents pass {mib(self.budget)} in all "
                              "(imagekit keeps at most that much of them while loading)")

    # -- headers -----------------------------------------------------------
    def _header(self, head: bytes, span: tuple[int, int] | None) -> None:
        if head == ZERO_BLOCK:
            self.ended = True                  # the marker and all after it are withheld
            self._held.clear()
            return
        form = _format(head)
        name = _cstr(head[:100])
        if form in ("ustar", "star"):
            prefix = _cstr(head[345:500] if form == "ustar" else head[345:476])
            if prefix:
                name = f"{prefix}/{name}"
        kind = head[156:157]
        size = _numeric(head[124:136])
        link = _cstr(head[157:257])
        if kind in (b"x", b"g", b"L", b"K"):
            if size > EXT_LIMIT:
                raise _damaged(f"a tar header extension of {mib(size)}; Docker reads at most "
                               f"{mib(EXT_LIMIT)}")
            self._begin(size)
            self._collect, self._what = bytearray(), kind.decode()
            if kind == b"g":                   # stands alone; what came before it no longer applies
                self._pax, self._long_name, self._long_link = {}, "", ""
            if self.rewrite is not None and kind != b"g":
                self._hold = "ext"
                self._hold_bytes(head)
            else:
                self._release()
                self._emit_head(head, span)
            if not self._left:
                self._done()
            return
        pax, long_name, long_link = self._pax, self._long_name, self._long_link
        self._pax, self._long_name, self._long_link = {}, "", ""
        if any(k.startswith("GNU.sparse.") for k in pax):
            raise ExportError("the tar holds a sparse member; an image archive holds none")
        name = pax.get("path") or name
        link = pax.get("linkpath") or link
        if pax.get("size"):
            if not _DECIMAL.fullmatch(pax["size"]) or not 0 <= int(pax["size"]) < 1 << 63:
                raise _damaged("a PAX size that is not a size")
            size = int(pax["size"])
        name = long_name or name
        link = long_link or link
        if kind == b"\0":
            kind = b"5" if name.endswith("/") else b"0"
        if kind not in (b"0", b"1", b"2", b"3", b"4", b"5", b"6"):
            what = "a GNU sparse member" if kind == b"S" else \
                f"a member of kind {kind.decode('latin-1')!r}"
            raise ExportError(f"the tar holds {what}; an image archive holds none")
        data = 0 if kind[0] in HEADER_ONLY else size
        path = norm(name) if name else name
        self.members += 1
        self._through_link(path)
        self._begin(data)
        self._name = path
        target = self.rewrite is not None and path in DOCS
        if target and kind != b"0":
            raise ExportError(f"{peer_text(path)} in the tar is not a plain file (a link or a folder), so "
                              "one image cannot be picked from it as it passes")
        self._place(kind, path, link)
        if kind == b"0":
            self._want(path, data)
        if target:
            self._held.clear()                 # its extended headers go; a plain header comes
            self._hold = "doc"
        else:
            self._release()
            self._emit_head(head, span)
        if not self._left:
            self._done()

    def _begin(self, size: int) -> None:
        self._left, self._data_left = size + (-size) % 512, size
        self._collect, self._what, self._hold = None, "", ""

    def _release(self) -> None:
        if self._held:
            self._insert(bytes(self._held))
            self._held.clear()

    def _want(self, path: str, size: int) -> None:
        """Whether to keep this regular member: a JSON document by name, or a
        blob that may be one (if its first byte is '{')."""
        named = path in DOCS or path.endswith(".json")
        if not named and not BLOB.match(path):
            return
        if size > self.keep:
            if named and self.strict:
                raise ExportError(f"{peer_text(path)} in the archive is a JSON document of "
                                  f"{mib(size)}; imagekit reads at most {mib(self.keep)}")
            if len(self.skipped) < 4096:
                self.skipped[path] = size
            return
        self._charge(path, size + ENTRY_COST)
        self._collect, self._what = bytearray(), "doc" if named else "blob"

    def _take(self, piece) -> None:
        if self._what == "blob" and not self._collect and piece[:1] != b"{":
            self._forget(self._name)            # a layer, not JSON
            self._collect = None
            return
        self._collect += piece  # type: ignore[operator]

    def _done(self) -> None:
        what, data = self._what, self._collect
        self._collect, self._what = None, ""
        hold, self._hold = self._hold, ""
        if what in ("x", "L", "K"):
            raw = bytes(data or b"")
            if what == "x":
                self._pax = _pax_records(raw)
            elif what == "L":
                self._long_name = _cstr(raw)
            else:
                self._long_link = _cstr(raw)
            return
        if what == "g":
            _pax_records(bytes(data or b""))
            return
        name = self._name
        body = bytes(data) if data is not None else None
        if body is not None and what == "blob" and self.strict and _attestation(body):
            self._forget(name)                  # an in-toto statement: never read, not kept
            body = None
        if hold == "doc":
            if body is None:                    # too large: refused in _want
                raise ExportError(f"{peer_text(name)} in the archive could not be read")
            new = self.rewrite(name, body)  # type: ignore[misc]
            self.original[name] = body
            self._charge(name, len(new))
            self.small[name] = new
            self._insert(_ustar(name, len(new)) + new + bytes(-len(new) % 512))
        elif body is not None:
            self.small[name] = body
        if body is not None:
            self._note_dirs(name)

    # -- what a path holds -------------------------------------------------
    def _through_link(self, path: str) -> None:
        """Refuse a member written through a symbolic link to a folder: the
        engine's untar would follow it, and the name read here would not be
        the file the engine reads."""
        if not self.links or "/" not in path:
            return
        parts = path.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in self.links:
                raise ExportError(f"the tar writes {peer_text(path)} through the symbolic link "
                                  f"{peer_text(prefix)}; an image archive does not")

    def _forget(self, path: str, under: bool = False) -> None:
        self.kept -= self._cost.pop(path, 0)
        self.small.pop(path, None)
        self.links.pop(path, None)
        self.original.pop(path, None)
        if under and path in self._dirs:
            inside = path + "/"
            for k in [k for k in (*self.small, *self.links) if k.startswith(inside)]:
                self._forget(k)

    def _note_dirs(self, path: str) -> None:
        parts = path.split("/")
        for i in range(1, len(parts)):
            self._dirs.add("/".join(parts[:i]))

    def _place(self, kind: bytes, path: str, link: str) -> None:
        """What PATH holds after this member, as the engine's untar leaves it:
        a folder keeps what is in it; anything else replaces the path, folder
        and all."""
        if kind == b"5":
            if path in self.small or path in self.links:
                self._forget(path)
            return
        self._forget(path, under=True)
        if kind == b"2":
            target = norm(posixpath.join(posixpath.dirname(path), link))
            self._charge(path, ENTRY_COST + len(path) + len(target))
            self.links[path] = target
            self._note_dirs(path)
        elif kind == b"1":
            target = norm(link)
            self._through_link(target)
            if target in self.links:
                raise ExportError(f"the tar holds a hard link to the symbolic link "
                                  f"{peer_text(target)}; an image archive does not")
            if target in self.small:
                self._charge(path, ENTRY_COST + len(path))
                self.small[path] = self.small[target]
                self._note_dirs(path)

    # -- what it holds -----------------------------------------------------
    def resolve(self, path: str) -> str:
        return follow(self.links, path)

    def layout(self, both: bool = False) -> Layout:
        if self.error is not None:
            raise self.error
        return layout(self.small, self.resolve, both=both)

    def inventory(self, original: bool = False) -> list[Named]:
        """The images manifest.json and index.json name (as the archive had
        them with `original`, else as they were passed on)."""
        docs = {**self.small, **self.original} if original else self.small
        return inventory(docs, self.resolve)


def _attestation(body: bytes) -> bool:
    """An in-toto statement (BuildKit's SBOM and provenance attestations):
    image manifests and configs are never read from one."""
    start = body[:1024]
    return b'"_type"' in start and b"in-toto.io/Statement" in start
