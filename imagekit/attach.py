"""A bill of materials attached to a pushed image in its registry, as an OCI
artifact (OCI image and distribution specs 1.1), for `imagekit push --sbom`.

The SBOM (CycloneDX JSON) and the OCI empty config (`{}`) are uploaded as
blobs (HEAD first: a blob the repository holds is not sent again); then an
OCI image manifest whose `artifactType` is CycloneDX, whose one layer is the
SBOM and whose `subject` is the pushed image's manifest as the registry holds
it (media type, digest and size read back with a HEAD of the pushed tag, so
the engine's push is described as truly as imagekit's own) is PUT by digest.

Where the registry lists referrers itself (it answers that PUT with an
`OCI-Subject` header, or GET /v2/<name>/referrers/<subject digest> with an
OCI index) that is all. Elsewhere (distribution 2.8, most registries before
2023) the referrers tag scheme: the tag `sha256-<hex of the subject digest>`
holds an OCI image index of the subject's referrers; it is read, every
descriptor in it is kept except one with our digest, ours is appended, and
the index is PUT back to that tag.

Every request goes through registry.Registry (the push's own session, auth,
limits and redaction); what fails raises its PushError (AuthError,
TransientPushError) naming the registry and the step."""

from __future__ import annotations

import base64
import hashlib
import json
import threading

from .errors import PushError
from .events import AttachedSbom
from .layers import Blob
from .registry import Auth, Registry, repo_path

CYCLONEDX = "application/vnd.cyclonedx+json"
EMPTY = "application/vnd.oci.empty.v1+json"
EMPTY_DATA = b"{}"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
MANIFESTS = (OCI_MANIFEST, OCI_INDEX, "application/vnd.docker.distribution.manifest.v2+json",
             "application/vnd.docker.distribution.manifest.list.v2+json")
CREATED = "org.opencontainers.image.created"
TITLE = "org.opencontainers.image.title"


def sessions(auths: dict[str, tuple[dict | None, str]]) -> dict[str, Registry]:
    """One Registry per host, with the credentials the push resolved for it:
    handed to the push's own path and used again to attach."""
    return {host: Registry(host, Auth.from_docker(auth)) for host, (auth, _) in auths.items()}


def _sha256(data: bytes) -> str:
    return f"sha256:{hashlib.sha256(data).hexdigest()}"


def _descriptor(media_type: str, data: bytes) -> dict:
    return {"mediaType": media_type, "digest": _sha256(data), "size": len(data)}


def referrers_tag(digest: str) -> str:
    """The fallback tag of a subject's referrers index: sha256-<hex>."""
    return digest.replace(":", "-", 1)


def subject(reg: Registry, repo: str, tag: str, digest: str) -> dict:
    """The pushed image's manifest descriptor as the registry holds it under
    TAG (HEAD); PushError when the tag now holds another digest than DIGEST."""
    resp = reg.request("HEAD", f"/v2/{repo}/manifests/{tag}", reg.scopes(repo), ok=(200,),
                       headers={"Accept": ", ".join(MANIFESTS)},
                       what="HEAD the pushed manifest (the SBOM's subject)")
    held = resp.headers.get("Docker-Content-Digest", "")
    media_type = resp.headers.get("Content-Type", "").split(";")[0].strip()
    size = resp.headers.get("Content-Length", "")
    if not (held and media_type in MANIFESTS and size.isdigit()):
        resp = reg.request("GET", f"/v2/{repo}/manifests/{tag}", reg.scopes(repo), ok=(200,),
                           headers={"Accept": ", ".join(MANIFESTS)},
                           what="GET the pushed manifest (the SBOM's subject)")
        held = _sha256(resp.content)
        media_type = resp.headers.get("Content-Type", "").split(";")[0].strip() or \
            str(_json(resp.content).get("mediaType") or "")
        size = str(len(resp.content))
    if held != digest:
        raise PushError(f"{reg.host}: {tag} now holds {held}, not the pushed {digest}; "
                        "the bill of materials was not attached")
    if media_type not in MANIFESTS:
        raise PushError(f"{reg.host}: the pushed manifest's media type is "
                        f"{media_type[:80]!r}, not a manifest an artifact can refer to")
    return {"mediaType": media_type, "digest": digest, "size": int(size)}


def _json(data: bytes) -> dict:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def _ensure_blob(reg: Registry, repo: str, media_type: str, data: bytes) -> dict:
    desc = _descriptor(media_type, data)
    if not reg.blob_exists(repo, desc["digest"]):
        url, mounted = reg.start_upload(repo)
        if not mounted:
            reg.finish_upload(repo, url, Blob(desc["digest"], len(data), media_type, data=data), 0,
                              lambda n: None, threading.Event())
    return desc


def manifest(sbom_doc: bytes, subject_desc: dict, created: str, title: str) -> bytes:
    """The artifact manifest (OCI image manifest 1.1) of an SBOM document."""
    annotations = {CREATED: created, TITLE: title} if created else {TITLE: title}
    config = {**_descriptor(EMPTY, EMPTY_DATA), "data": base64.b64encode(EMPTY_DATA).decode()}
    doc = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": CYCLONEDX,
           "config": config,
           "layers": [{**_descriptor(CYCLONEDX, sbom_doc), "annotations": {TITLE: title}}],
           "subject": subject_desc, "annotations": annotations}
    return json.dumps(doc, separators=(",", ":")).encode()


def attach(reg: Registry, repo: str, tag: str, digest: str, sbom_doc: bytes, *, where: str,
           title: str) -> AttachedSbom:
    """Attach SBOM_DOC (CycloneDX JSON bytes) to the image pushed as
    REPO:TAG with manifest DIGEST (REPO as the destination names it; WHERE
    is REGISTRY/REPO for what is shown). Raises PushError naming the step."""
    repo = repo_path(reg.host, repo)
    subject_desc = subject(reg, repo, tag, digest)
    _ensure_blob(reg, repo, EMPTY, EMPTY_DATA)
    _ensure_blob(reg, repo, CYCLONEDX, sbom_doc)
    created = str(_json(sbom_doc).get("metadata", {}).get("timestamp") or "")
    data = manifest(sbom_doc, subject_desc, created, title)
    ours = _sha256(data)
    resp = reg.request("PUT", f"/v2/{repo}/manifests/{ours}", reg.scopes(repo), ok=(200, 201),
                       headers={"Content-Type": OCI_MANIFEST}, body=lambda: data,
                       what="PUT the SBOM's artifact manifest")
    got = resp.headers.get("Docker-Content-Digest", "")
    if got and got != ours:
        raise PushError(f"{reg.host}: PUT the SBOM's artifact manifest: the registry answered "
                        f"digest {got}, but the manifest sent hashes to {ours}")
    shown = AttachedSbom(f"{where}@{ours}", ours, digest, "referrers API")
    if resp.headers.get("OCI-Subject") or _lists_referrers(reg, repo, digest):
        return shown
    fallback = referrers_tag(digest)
    index = _referrers_index(reg, repo, fallback)
    entry = {"mediaType": OCI_MANIFEST, "digest": ours, "size": len(data),
             "artifactType": CYCLONEDX, "annotations": json.loads(data)["annotations"]}
    index["manifests"] = [m for m in index["manifests"] if m.get("digest") != ours] + [entry]
    body = json.dumps(index, separators=(",", ":")).encode()
    reg.request("PUT", f"/v2/{repo}/manifests/{fallback}", reg.scopes(repo), ok=(200, 201),
                headers={"Content-Type": OCI_INDEX}, body=lambda: body,
                what=f"PUT the referrers index to tag {fallback}")
    shown.how, shown.tag = "referrers tag", fallback
    return shown


def _lists_referrers(reg: Registry, repo: str, digest: str) -> bool:
    """Whether the registry has the referrers API: GET referrers/<digest>
    answers 200 with an OCI index (a registry without it answers 404)."""
    resp = reg.request("GET", f"/v2/{repo}/referrers/{digest}", reg.scopes(repo),
                       ok=(200, 400, 404, 405, 406), headers={"Accept": OCI_INDEX},
                       what="GET referrers")
    if resp.status_code != 200:
        return False
    body = _json(resp.content)
    return body.get("mediaType", OCI_INDEX) == OCI_INDEX and isinstance(body.get("manifests"), list)


def _referrers_index(reg: Registry, repo: str, tag: str) -> dict:
    """The referrers index the fallback tag holds, or a new empty one.
    PushError when the tag holds something else (it is not overwritten)."""
    resp = reg.request("GET", f"/v2/{repo}/manifests/{tag}", reg.scopes(repo), ok=(200, 404),
                       headers={"Accept": OCI_INDEX}, what=f"GET the referrers index (tag {tag})")
    if resp.status_code == 404:
        return {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    index = _json(resp.content)
    found = index.get("manifests")
    media_type = index.get("mediaType") or resp.headers.get("Content-Type", "").split(";")[0]
    if media_type != OCI_INDEX or not isinstance(found, list) or \
            not all(isinstance(m, dict) for m in found):
        raise PushError(f"{reg.host}: tag {tag} holds something other than an OCI image index "
                        "of referrers; it was left as it is and the SBOM is not listed there")
    return {**index, "schemaVersion": 2, "mediaType": OCI_INDEX}
