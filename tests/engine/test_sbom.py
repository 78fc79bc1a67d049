"""`imagekit sbom` on the real TensorFlow CPU image: a CycloneDX 1.5 document
on stdout, valid against the official schema, listing tensorflow with its
version and its wheel's sha256, the Debian packages and the base image; no
container left behind."""

from __future__ import annotations

import json
import time

from cyclonedx_schema import errors as schema_errors
from helpers import leftovers


def test_sbom_of_the_tensorflow_image(tf_image, docker_api):
    t = tf_image
    started = time.monotonic()
    r = t.project.run("sbom", t.name, timeout=120)
    seconds = time.monotonic() - started
    assert r.code == 0, r.output[-3000:]
    doc = json.loads(r.stdout)                      # the document is all there is on stdout
    assert schema_errors(doc) == []
    assert doc["specVersion"] == "1.5" and doc["metadata"]["component"]["name"] == t.name
    props = {p["name"]: p["value"] for p in doc["metadata"]["component"]["properties"]}
    assert props["imagekit:image-id"] == t.image_id and props["imagekit:framework"] == "tensorflow"
    assert doc["metadata"]["component"]["pedigree"]["ancestors"], "the base image is named"

    comps = doc["components"]
    tf = next(c for c in comps if c.get("purl", "").startswith("pkg:pypi/tensorflow@"))
    assert tf["version"] and tf["purl"] == f"pkg:pypi/tensorflow@{tf['version']}"
    assert props["imagekit:version"] == tf["version"]
    assert tf["hashes"][0]["alg"] == "SHA-256" and len(tf["hashes"][0]["content"]) == 64
    debs = [c for c in comps if c.get("purl", "").startswith("pkg:deb/debian/")]
    assert len(debs) >= 30 and {"libc6", "bash"} <= {c["name"] for c in debs}
    assert all("arch=" in c["purl"] for c in debs)
    assert not [c for c in comps if any(p["value"] == "cuda-library" for p in c.get("properties", []))]
    assert "bill of materials" in r.stderr and leftovers(docker_api, t.ref) == []
    assert seconds < 30, f"sbom took {seconds:.1f}s"
