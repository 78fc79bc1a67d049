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


def _json(data: bytes | None, what: str) -> object:
    if data is None:
        raise ExportError(f"the export names {what} but does not hold it")
    try:
        return json.loads(data)
    except ValueError:
        raise ExportError(f"{what} in the export is not valid JSON") from None


def _blob_path(digest: str) -> str:
    algo, _, hexd = str(digest).partition(":")
    if algo != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", hexd):
        raise ExportError(f"the export names a blob by an unusable digest {str(digest)[:80]!r}")
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
        raise ExportError(f"manifest {desc.get('digest')} in the export has no config")
    config_path = _blob_path(doc["config"].get("digest", ""))
    layers = []
    for d in doc.get("layers") or []:
        if not isinstance(d, dict):
            raise ExportError(f"manifest {desc.get('digest')} lists a layer that is not an object")
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


def layout(small: Mapping[str, bytes], resolve: Callable[[str], str] = lambda p: p) -> Layout:
    """The image of an export whose small JSON members are `small` (by
    normalised path; symlinked members resolved with `resolve`). The OCI
    layout first, then manifest.json. Checks that the config hashes to its
    digest, and fills each layer's diff ID from the config."""
    def get(path: str) -> bytes | None:
        return small.get(resolve(path))

    found = _oci(get) if get("index.json") is not None else None
    if found is None:
        if get("manifest.json") is None:
            raise ExportError("the export has neither index.json nor manifest.json: "
                              "not an image archive")
        found = _legacy(get)
    config_bytes = get(found.config_path)
    if config_bytes is None:
        raise ExportError(f"the export names config {found.config_path} but does not hold it")
    digest = "sha256:" + hashlib.sha256(config_bytes).hexdigest()
    named = posixpath.basename(found.config_path).removesuffix(".json")
    if re.fullmatch(r"[0-9a-f]{64}", named) and not digest.endswith(named):
        raise ExportError(f"the image config {found.config_path} does not match its digest "
                          f"({digest[:19]}…): the export is corrupt")
    config = _json(config_bytes, found.config_path)
    try:
        diff_ids = [str(x) for x in config["rootfs"]["diff_ids"]]    # type: ignore[index]
    except (KeyError, TypeError):
        raise ExportError("the image config has no rootfs.diff_ids") from None
    if len(diff_ids) != len(found.layers):
        raise ExportError(f"the export lists {len(found.layers)} layers, its config "
                          f"{len(diff_ids)}")
    layers = [LayerRef(x.path, x.media_type, x.digest, x.size, d)
              for x, d in zip(found.layers, diff_ids, strict=True)]
    return Layout(found.kind, found.config_path, digest, layers, found.repo_tags,
                  found.manifest_digest)


def wants(name: str, size: int, head: bytes = b"{") -> bool:
    """Whether a member is one of the export's small JSON documents."""
    if size > SMALL:
        return False
    if name in ("index.json", "manifest.json") or name.endswith(".json"):
        return True
    return bool(BLOB.match(name)) and head[:1] == b"{"


class Watcher:
    """Reads tar headers from bytes as they pass (a load or a save streams the
    archive through it) and keeps the export's small JSON members, so that
    `layout()` can be asked once the stream has passed. Memory: the JSON
    members only."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.left = 0                      # bytes of the current member and its padding
        self.data_left = 0                 # of which member data still to collect
        self.name = ""
        self.collect: bytearray | None = None
        self.maybe = False                 # a blob that is JSON if its first byte is '{'
        self.next_name: str | None = None  # from a PAX or GNU long-name header
        self.small: dict[str, bytes] = {}
        self.links: dict[str, str] = {}
        self.ended = False

    def feed(self, data: bytes) -> None:
        if self.collect is None and not self.buf and len(data) <= self.left:
            self.left -= len(data)         # the middle of a layer: nothing to look at
            return
        self.buf += data
        while not self.ended:
            if self.left:
                take = min(self.left, len(self.buf))
                if not take:
                    return
                if self.collect is not None and self.data_left:
                    use = min(take, self.data_left)
                    if self.maybe and not self.collect and self.buf[:1] != b"{":
                        self.collect = None          # a layer blob, not JSON
                    else:
                        self.collect += self.buf[:use]
                        self.data_left -= use
                    self.maybe = False
                del self.buf[:take]
                self.left -= take
                if not self.left and self.collect is not None:
                    self._finish()
                continue
            if len(self.buf) < 512:
                return
            head = bytes(self.buf[:512])
            del self.buf[:512]
            if not head.strip(b"\0"):
                self.ended = True
                return
            self._header(head)

    def _header(self, head: bytes) -> None:
        name = head[:100].split(b"\0")[0].decode(errors="replace")
        prefix = head[345:500].split(b"\0")[0].decode(errors="replace")
        if prefix and head[257:262] == b"ustar":
            name = f"{prefix}/{name}"
        size_field = head[124:136]
        if size_field[0] & 0x80:                          # base-256 size
            size = int.from_bytes(size_field[1:], "big")
        else:
            try:
                size = int(size_field.split(b"\0")[0].strip() or b"0", 8)
            except ValueError:
                raise ExportError("the archive is corrupt (a damaged tar header)") from None
        kind = head[156:157]
        self.left, self.data_left, self.collect, self.maybe = size + (-size) % 512, size, None, False
        if kind in (b"x", b"L"):
            self.name = "\0pax" if kind == b"x" else "\0long"
            self.collect = bytearray()
        else:
            if self.next_name:
                name, self.next_name = self.next_name, None
            self.name = norm(name) if name else name
            if kind in (b"1", b"2"):
                target = head[157:257].split(b"\0")[0].decode(errors="replace")
                self.links[self.name] = norm(target) if kind == b"1" else \
                    norm(posixpath.join(posixpath.dirname(self.name), target))
            elif kind in (b"0", b"\0") and wants(self.name, size):
                self.collect = bytearray()
                self.maybe = bool(BLOB.match(self.name))
        if not self.left and self.collect is not None:
            self._finish()

    def _finish(self) -> None:
        data, self.collect = bytes(self.collect or b""), None
        if self.name == "\0pax":
            for rec in data.decode(errors="replace").split("\n"):
                if " path=" in rec:
                    self.next_name = rec.split(" path=", 1)[1]
        elif self.name == "\0long":
            self.next_name = data.split(b"\0")[0].decode(errors="replace")
        else:
            self.small[self.name] = data

    def layout(self) -> Layout:
        return layout(self.small, lambda p: follow(self.links, p))
