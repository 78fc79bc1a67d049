"""`imagekit push --sbom` against a real registry: Debian's docker-registry
(distribution 2.8, htpasswd auth) run as a process on 127.0.0.1. It has no
referrers API, so the bill of materials must be listed through the referrers
tag scheme; the test reads it back from the registry itself (the index at
tag sha256-<hex>, the artifact manifest, the SBOM blob), after a push by
imagekit's own path and one by the engine."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from cyclonedx_schema import errors as schema_errors
from helpers import unique

sys.path.insert(0, str(Path(__file__).resolve().parent / "registry"))
from regtools import basic_registry  # noqa: E402

USER, PASSWORD = "imagekit-test", "pw-for-sbom-tests-only-3b9a"
AUTH_ENV = {"IMAGEKIT_REGISTRY_USER": USER, "IMAGEKIT_REGISTRY_PASSWORD": PASSWORD}
CYCLONEDX = "application/vnd.cyclonedx+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
IMAGE_MANIFESTS = ("application/vnd.docker.distribution.manifest.v2+json, "
                   f"{OCI_MANIFEST}, {OCI_INDEX}")


@pytest.fixture(scope="module")
def sbom_registry(tmp_path_factory):
    with basic_registry(tmp_path_factory.mktemp("sbomreg"), USER, PASSWORD) as r:
        yield r


def _get(url: str, accept: str) -> requests.Response:
    r = requests.get(url, auth=(USER, PASSWORD), headers={"Accept": accept}, timeout=10)
    assert r.status_code == 200, (url, r.status_code, r.text[:300])
    digest = r.headers.get("Docker-Content-Digest")
    assert digest is None or "sha256:" + hashlib.sha256(r.content).hexdigest() == digest
    return r


@pytest.mark.parametrize("via", ["own", "engine"])
def test_push_sbom_is_listed_by_the_registry(mxnet_image, sbom_registry, docker_api, via):
    t, where = mxnet_image, sbom_registry.host
    namespace = unique("sbom")
    r = t.project.run("--json", "push", t.name, "--to", f"{where}/{namespace}", "--sbom",
                      "--via", via, "--no-smoke-gate", env=AUTH_ENV, timeout=900)
    try:
        assert r.code == 0, r.output[-3000:]
        [dest] = next(e["data"] for e in map(json.loads, r.stdout.splitlines())
                      if e["event"] == "result")["destinations"]
    finally:                                   # the refs the push left in the engine
        for image in docker_api.images():
            for ref in image.get("RepoTags") or []:
                if ref.startswith(f"{where}/{namespace}/"):
                    docker_api.remove_image(ref)
    assert dest["via"] == ("direct" if via == "own" else "engine")
    repo = dest["repository"].removeprefix(f"{where}/")
    api = f"http://{where}/v2/{repo}"
    pushed = _get(f"{api}/manifests/{dest['tag']}", IMAGE_MANIFESTS)
    subject = "sha256:" + hashlib.sha256(pushed.content).hexdigest()
    assert subject == dest["digest"]

    # distribution 2.8 has no referrers API: the SBOM is listed in the fallback tag's index
    tag = "sha256-" + subject.removeprefix("sha256:")
    sbom = dest["sbom"]
    assert sbom["how"] == "referrers tag" and sbom["tag"] == tag and sbom["subject"] == subject
    index = _get(f"{api}/manifests/{tag}", OCI_INDEX).json()
    assert index["mediaType"] == OCI_INDEX
    [entry] = [m for m in index["manifests"] if m.get("artifactType") == CYCLONEDX]
    assert entry["digest"] == sbom["digest"] and sbom["ref"] == f"{where}/{repo}@{entry['digest']}"

    artifact = _get(f"{api}/manifests/{entry['digest']}", OCI_MANIFEST)
    assert len(artifact.content) == entry["size"]
    m = artifact.json()
    assert m["artifactType"] == CYCLONEDX
    assert m["subject"] == {"mediaType": pushed.headers["Content-Type"], "digest": subject,
                            "size": len(pushed.content)}
    assert _get(f"{api}/blobs/{m['config']['digest']}", "*/*").content == b"{}"
    [layer] = m["layers"]
    blob = _get(f"{api}/blobs/{layer['digest']}", "*/*").content
    assert layer["mediaType"] == CYCLONEDX and len(blob) == layer["size"]
    doc = json.loads(blob)
    assert schema_errors(doc) == [] and doc["bomFormat"] == "CycloneDX"
    component = doc["metadata"]["component"]
    props = {p["name"]: p["value"] for p in component["properties"]}
    assert component["name"] == t.name and props["imagekit:reference"] == t.ref
    assert props["imagekit:image-id"] == t.image_id
    assert m["annotations"]["org.opencontainers.image.created"] == doc["metadata"]["timestamp"]
    assert any(c.get("purl", "").startswith("pkg:pypi/mxnet@") for c in doc["components"])
    assert PASSWORD not in r.output

    if shutil.which("skopeo"):        # a second client reads the same index
        out = subprocess.run(["skopeo", "inspect", "--raw", "--tls-verify=false", "--creds",
                              f"{USER}:{PASSWORD}", f"docker://{where}/{repo}:{tag}"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert [x["digest"] for x in json.loads(out.stdout)["manifests"]] == [entry["digest"]]
