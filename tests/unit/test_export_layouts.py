"""The engine's export in every layout imagekit meets, made here the way each
engine writes it: the legacy layout of Engine 20.10, the OCI layout of Engine
25+ on the classic store (uncompressed blobs, LayerSources for every layer),
and on the containerd store (gzip blobs as stored, a nested index with an
attestation manifest). One reader (imagekit.engine.export) serves push (layers.py),
save/load (Watcher) and inspect."""

from __future__ import annotations

import gzip
import hashlib
import json

import pytest
from fakes import tar_of

from imagekit.engine import export
from imagekit.errors import DirectPushUnsupported, PushError
from imagekit.layers import FORMATS, read_export

OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"
FOREIGN = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer_tar(files: dict[str, bytes]) -> bytes:
    return tar_of(list(files.items()))


LAYERS = [layer_tar({"etc/os-release": b"ID=debian\n" * 300}),
          layer_tar({"opt/venv/lib/x.py": bytes(range(256)) * 3000}), layer_tar({})]


def engine_export(layers: list[bytes], store: str, *, foreign: int | None = None,
                  nested: bool = False, attestation: bool = False, other_arch: bool = False,
                  images: int = 1) -> tuple[bytes, bytes]:
    """A `docker save` tar as `store` writes it: 'legacy' (Engine 20.10),
    'classic' (Engine 25+), 'containerd' (Engine 25+, containerd image store:
    layers stored gzip'd). Returns (tar, config bytes)."""
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [sha(x) for x in layers]}}).encode()
    files: dict[str, bytes] = {}
    stored = [gzip.compress(x, mtime=0) if store == "containerd" else x for x in layers]
    types = [OCI_GZIP if store == "containerd" else OCI_TAR for _ in layers]
    if foreign is not None:
        types[foreign] = FOREIGN
    if store == "legacy":
        paths = []
        for i, data in enumerate(layers):
            d = f"{i:064x}"
            files[f"{d}/layer.tar"] = data
            files[f"{d}/json"] = b"{}"
            paths.append(f"{d}/layer.tar")
        cfg_path = f"{sha(config)[7:]}.json"
        files[cfg_path] = config
        files["manifest.json"] = json.dumps(
            [{"Config": cfg_path, "RepoTags": ["x:v1"], "Layers": paths}] * images).encode()
        return _tar(files), config

    def blob(data: bytes) -> str:
        files[f"blobs/sha256/{sha(data)[7:]}"] = data
        return sha(data)

    for data in stored:
        blob(data)
    blob(config)
    manifest = json.dumps({
        "schemaVersion": 2, "mediaType": export.OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": sha(config), "size": len(config)},
        "layers": [{"mediaType": t, "digest": sha(d), "size": len(d)}
                   for t, d in zip(types, stored, strict=True)]}, indent=3).encode()
    mdesc = {"mediaType": export.OCI_MANIFEST, "digest": blob(manifest), "size": len(manifest),
             "platform": {"os": "linux", "architecture": "amd64"}}
    entries = [mdesc]
    if attestation:
        att = json.dumps({"schemaVersion": 2, "mediaType": export.OCI_MANIFEST,
                          "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                     "digest": sha(b"{}"), "size": 2}, "layers": []}).encode()
        blob(b"{}")
        entries.append({"mediaType": export.OCI_MANIFEST, "digest": blob(att), "size": len(att),
                        "platform": {"os": "unknown", "architecture": "unknown"},
                        "annotations": {"vnd.docker.reference.type": "attestation-manifest",
                                        "vnd.docker.reference.digest": mdesc["digest"]}})
    if other_arch:
        entries.append({**mdesc, "digest": sha(b"arm"), "platform": {"os": "linux",
                                                                     "architecture": "arm64"}})
    top = entries
    if nested:
        index = json.dumps({"schemaVersion": 2, "mediaType": export.OCI_INDEX,
                            "manifests": entries}).encode()
        top = [{"mediaType": export.OCI_INDEX, "digest": blob(index), "size": len(index)}]
    top = [{**top[0], "annotations": {"io.containerd.image.name": "docker.io/library/x:v1"}}]
    if images == 2:
        top.append({**mdesc, "digest": sha(b"another image")})
    files["index.json"] = json.dumps({"schemaVersion": 2, "mediaType": export.OCI_INDEX,
                                      "manifests": top}).encode()
    legacy = {"Config": f"blobs/sha256/{sha(config)[7:]}", "RepoTags": ["x:v1"],
              "Layers": [f"blobs/sha256/{sha(d)[7:]}" for d in stored]}
    if store == "classic":
        legacy["LayerSources"] = {sha(d): {"mediaType": t, "size": len(d), "digest": sha(d)}
                                  for d, t in zip(stored, types, strict=True)}
    files["manifest.json"] = json.dumps([legacy]).encode()
    files["oci-layout"] = b'{"imageLayoutVersion": "1.0.0"}'
    return _tar(files), config


def _tar(files: dict[str, bytes]) -> bytes:
    return tar_of(sorted(files.items()))       # engines write their export sorted by name


def chunks(data: bytes, size: int = 6000):
    for i in range(0, len(data), size):
        yield data[i:i + size]


def watched(tar: bytes, step: int = 777) -> export.Layout:
    w = export.Watcher()
    for part in chunks(tar, step):
        w.feed(part)
    return w.layout()


@pytest.mark.parametrize("store", ["legacy", "classic", "containerd"])
def test_every_layout_gives_the_same_image(store):
    tar, config = engine_export(LAYERS, store, nested=store == "containerd",
                                attestation=store == "containerd")
    lay = watched(tar)
    assert lay.kind == ("legacy" if store == "legacy" else "oci")
    assert lay.config_digest == sha(config)
    assert lay.diff_ids == [sha(x) for x in LAYERS]
    assert lay.repo_tags == ["x:v1"]


def test_classic_store_layer_sources_are_not_foreign(tmp_path):
    tar, config = engine_export(LAYERS, "classic")
    image = read_export(chunks(tar), tmp_path, FORMATS["docker"])
    assert image.image_id == sha(config)
    assert image.bytes_compressed == sum(len(x) for x in LAYERS) and image.layers_stored == 0
    for blob, raw in zip(image.layers, LAYERS, strict=True):
        assert gzip.decompress(blob.path.read_bytes()) == raw and blob.media_type == DOCKER_GZIP


@pytest.mark.parametrize("fmt,layer_type", [("docker", DOCKER_GZIP), ("oci", OCI_GZIP)])
def test_containerd_store_layers_are_sent_as_stored(tmp_path, fmt, layer_type):
    tar, config = engine_export(LAYERS, "containerd", nested=True, attestation=True)
    image = read_export(chunks(tar), tmp_path, FORMATS[fmt],
                        expect_diff_ids=[sha(x) for x in LAYERS])
    assert image.bytes_compressed == 0 and image.layers_stored == len(LAYERS)
    assert image.image_id == sha(config)
    for blob, raw in zip(image.layers, LAYERS, strict=True):
        data = blob.path.read_bytes()
        assert data == gzip.compress(raw, mtime=0)          # byte for byte as the engine stored it
        assert blob.digest == sha(data) and blob.diff_id == sha(raw)
        assert blob.media_type == layer_type


def test_an_attestation_or_another_platform_is_not_a_second_image():
    tar, config = engine_export(LAYERS, "containerd", nested=True, attestation=True,
                                other_arch=True)
    assert watched(tar).config_digest == sha(config)


@pytest.mark.parametrize("store", ["legacy", "classic"])
def test_two_images_are_refused_as_unsupported(tmp_path, store):
    tar, _ = engine_export(LAYERS, store, images=2)
    with pytest.raises(export.ExportError, match="holds 2 images") as e:
        watched(tar)
    assert e.value.unsupported


def test_a_foreign_layer_stops_the_own_path_early(tmp_path):
    tar, _ = engine_export(LAYERS, "classic", foreign=0)
    seen = []
    with pytest.raises(DirectPushUnsupported, match="foreign"):
        read_export(chunks(tar), tmp_path, FORMATS["docker"], on_event=seen.append)


def test_a_stored_blob_that_does_not_match_its_digest_is_corrupt(tmp_path):
    tar, _ = engine_export(LAYERS, "containerd")
    gz = gzip.compress(LAYERS[1], mtime=0)
    bad = tar.replace(gz[-40:], bytes(40), 1)               # same size, other bytes
    with pytest.raises(PushError, match="does not match its digest"):
        read_export(chunks(bad), tmp_path, FORMATS["docker"])


def test_a_config_that_does_not_hash_to_its_name_is_corrupt():
    tar, config = engine_export(LAYERS, "classic")
    bad = tar.replace(b'"os": "linux"', b'"os": "Linux"', 1)
    with pytest.raises(export.ExportError, match="does not match its digest"):
        watched(bad)


@pytest.mark.parametrize("head,kind", [(b"\x1f\x8b\x08", "gzip"), (b"\x28\xb5\x2f\xfd", "zstd"),
                                       (b"etc/\0\0", "")])
def test_compression_from_first_bytes(head, kind):
    assert export.compression_of(head) == kind


def test_watcher_at_any_chunk_size_skips_layers():
    tar, config = engine_export(LAYERS, "containerd", nested=True)
    for step in (1, 511, 512, 513, 4096, 1 << 20):
        w = export.Watcher()
        for part in chunks(tar, step):
            w.feed(part)
        assert w.layout().config_digest == sha(config)
        assert all(v[:1] in (b"{", b"[") for v in w.small.values())   # JSON only, no layer
