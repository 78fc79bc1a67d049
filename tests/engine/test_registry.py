"""imagekit's own push path (imagekit.registry) against real registries:
Debian's docker-registry (distribution 2.8) run as a process on 127.0.0.1,
with htpasswd auth, with token auth (a token issuer made here; the registry
checks every token itself), and stopped in the middle of a push. Pull-back
through the engine proves the pushed image is the local one."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import signal
import sys
import threading
import time
from pathlib import Path

import pytest
import requests
from helpers import unique

from imagekit.engine import Engine
from imagekit.errors import AuthError
from imagekit.registry import (
    Auth,
    BlobDone,
    PushSummary,
    Resumed,
    Target,
    TargetFailed,
    TargetPushed,
    push,
)

sys.path.insert(0, str(Path(__file__).resolve().parent / "registry"))
from regtools import CountingProxy, Registry, TokenIssuer, environment_ok, htpasswd  # noqa: E402

USER, PASSWORD = "imagekit-test", "pw-for-tests-only-6d2e"
MiB = 1024 * 1024


@pytest.fixture(scope="module", autouse=True)
def registry_tools():
    missing = environment_ok()
    if missing:
        pytest.fail(f"these tests need {missing} (apt-get install docker-registry apache2-utils; "
                    "make engine installs them)")


@pytest.fixture(scope="module")
def engine(docker_api) -> Engine:
    return Engine.connect()


@pytest.fixture(scope="module")
def small_image(base_image, docker_api):
    """Three layers: the base (79 MB compressed), 2 MB and 40 MB of random bytes
    (random: a compressed size as large as the raw one, uploads of known length)."""
    ref = f"{unique('ikreg')}:test"
    dockerfile = (f"FROM {base_image}\n"
                  "RUN head -c 2000000 /dev/urandom > /small.bin\n"
                  "RUN head -c 40000000 /dev/urandom > /big.bin\n")
    out = list(docker_api.build(fileobj=io.BytesIO(dockerfile.encode()), tag=ref, rm=True,
                                forcerm=True, decode=True))
    assert not any("error" in x for x in out), out[-3:]
    image_id = docker_api.inspect_image(ref)["Id"]
    yield ref, image_id
    docker_api.remove_image(ref, force=True)


@pytest.fixture
def basic_registry(tmp_path):
    (tmp_path / "basic").mkdir()
    htpasswd(tmp_path / "htpasswd", USER, PASSWORD)
    with Registry(tmp_path / "basic", htpasswd_file=tmp_path / "htpasswd") as r:
        yield r


@pytest.fixture
def token_registry(tmp_path):
    (tmp_path / "token").mkdir()
    issuer = TokenIssuer(tmp_path / "token", USER, PASSWORD)
    with Registry(tmp_path / "token", token=issuer) as r:
        yield r, issuer
    issuer.close()


def run(events) -> tuple[list, PushSummary]:
    got = list(events)
    assert isinstance(got[-1], PushSummary)
    return got, got[-1]


def pull_back(docker_api, repo: str, digest: str, auth: dict | None) -> str:
    """`docker pull REPO@DIGEST` through the engine; the pulled image's ID (refs removed)."""
    ref = f"{repo}@{digest}"
    for item in docker_api.pull(repo, tag=digest, auth_config=auth, stream=True, decode=True):
        assert "error" not in item, item
    try:
        return docker_api.inspect_image(ref)["Id"]
    finally:
        docker_api.remove_image(ref, force=True)


def test_push_to_basic_and_token_registries_then_pull_back(
        small_image, engine, docker_api, basic_registry, token_registry):
    ref, image_id = small_image
    token_reg, issuer = token_registry
    name = unique("ikreg")
    targets = [Target(basic_registry.host, f"team/{name}", "v1"),
               Target(basic_registry.host, f"other/{name}", "v1"),
               Target(token_reg.host, f"team/{name}", "v1")]
    auths = {basic_registry.host: Auth(USER, PASSWORD), token_reg.host: Auth(USER, PASSWORD)}
    layers = docker_api.inspect_image(image_id)["RootFS"]["Layers"]
    events, summary = run(push(engine.save(image_id), targets, auths, expect_diff_ids=layers))

    assert summary.ok, [r.error for r in summary.results]
    assert summary.image_id == image_id
    pushed = [e for e in events if isinstance(e, TargetPushed)]
    assert {e.target for e in pushed} == {t.ref for t in targets}
    assert {e.digest for e in pushed} == {summary.manifest_digest}
    # the second repository on the same registry mounted every blob the first sent
    done = [e for e in events if isinstance(e, BlobDone)]
    for digest in {e.digest for e in done}:
        hows = sorted(e.how for e in done if e.digest == digest and e.target != targets[2].ref)
        assert hows == ["mounted", "uploaded"], (digest, hows)
    sent = {r.target.ref: r.bytes_sent for r in summary.results}
    # each blob crossed the wire once for the two repositories together (which of them
    # uploads a blob and which mounts it depends on which gets there first)
    assert sent[targets[0].ref] + sent[targets[1].ref] < summary.compressed_size + 64 * 1024
    assert sent[targets[2].ref] >= summary.compressed_size
    # the token registry was reached with tokens the issuer signed
    assert issuer.issued and all(t["aud"] for t in issuer.issued)
    assert PASSWORD not in repr(events)

    # each registry answers the manifest digest; the engine pulls the same image back
    for t in (targets[0], targets[2]):
        r = requests.head(f"http://{t.registry}/v2/{t.repository}/manifests/v1",
                          auth=(USER, PASSWORD) if t is targets[0] else None,
                          headers={"Accept": summary.media_type}, timeout=10)
        if t is targets[0]:
            assert r.headers["Docker-Content-Digest"] == summary.manifest_digest
        got = pull_back(docker_api, f"{t.registry}/{t.repository}", summary.manifest_digest,
                        {"username": USER, "password": PASSWORD})
        assert got == image_id

    # a second push sends no blob again: every one is already there
    events, summary = run(push(engine.save(image_id), targets[:1], auths, expect_diff_ids=layers))
    assert summary.ok
    assert {e.how for e in events if isinstance(e, BlobDone)} == {"exists"}
    assert summary.results[0].bytes_sent < 4096


def test_wrong_password_fails_that_target_only(small_image, engine, basic_registry, token_registry):
    ref, image_id = small_image
    token_reg, _ = token_registry
    name = unique("ikreg")
    targets = [Target(basic_registry.host, f"team/{name}", "v1"),
               Target(token_reg.host, f"team/{name}", "v1")]
    wrong = "wrong-6d2e-not-it"
    auths = {basic_registry.host: Auth(USER, wrong), token_reg.host: Auth(USER, PASSWORD)}
    events, summary = run(push(engine.save(image_id), targets, auths))
    failed = [e for e in events if isinstance(e, TargetFailed)]
    assert [e.target for e in failed] == [targets[0].ref]
    assert isinstance(failed[0].error, AuthError)
    assert failed[0].error.exit_code == 11
    assert wrong not in repr(events) and wrong not in failed[0].message
    assert summary.results[1].error is None and summary.results[1].digest


def test_token_lapses_during_upload_and_is_fetched_again(tmp_path, small_image, engine):
    """The registry takes a token for 3 s, the issuer tells the client an hour:
    the client learns it from the registry's 401 in the middle of the upload."""
    ref, image_id = small_image
    issuer = TokenIssuer(tmp_path, USER, PASSWORD, lifetime=3, claimed=3600)
    with Registry(tmp_path, token=issuer) as reg:
        proxy = CountingProxy(reg.port)
        proxy.hook = lambda _n: time.sleep(0.02)   # about 10 MB/s: the push takes ~12 s
        try:
            target = Target(proxy.host, unique("ikreg"), "v1")
            events, summary = run(push(engine.save(image_id), [target],
                                       {proxy.host: Auth(USER, PASSWORD)},
                                       chunk_size=4 * MiB, backoff=0.2))
        finally:
            proxy.close()
    issuer.close()
    assert summary.ok, summary.results[0].error
    assert len(issuer.issued) >= 3, len(issuer.issued)
    assert issuer.refused == 0


@pytest.mark.parametrize("stop", ["kill", "drain"])
def test_registry_stopped_mid_layer_push_completes(tmp_path, small_image, engine, docker_api, stop):
    """Stop the registry after 60 MB went through (the middle of a layer), start it
    again on the same storage and port: the push completes, and the bytes sent
    again are no more than the blobs that were not finished at the stop.
    kill: SIGKILL, the upload in flight is lost half-written (distribution then
    refuses that session: its blob starts again); drain: SIGTERM with a drain
    timeout, the chunk in flight is stored and the upload resumes at its offset."""
    ref, image_id = small_image
    reg = Registry(tmp_path)
    if stop == "drain":
        reg.config.write_text(reg.config.read_text().replace("http:\n", "http:\n  draintimeout: 30s\n"))
    reg.start()
    proxy = CountingProxy(reg.port)
    stopped = threading.Event()
    at_stop: dict = {}
    events: list = []

    def cut(total: int) -> None:
        if total >= 60 * MiB and not stopped.is_set():
            stopped.set()
            at_stop["done"] = {e.digest for e in list(events) if isinstance(e, BlobDone)}
            at_stop["sent"] = total

            def restart() -> None:
                reg.stop(signal.SIGKILL if stop == "kill" else signal.SIGTERM)
                time.sleep(2)
                reg.start()
            threading.Thread(target=restart, daemon=True).start()

    proxy.hook = cut
    target = Target(proxy.host, unique("ikreg"), "v1")
    try:
        for e in push(engine.save(image_id), [target], {}, chunk_size=8 * MiB, backoff=1.0):
            events.append(e)
        got = pull_back(docker_api, f"{reg.host}/{target.repository}",
                        events[-1].manifest_digest, None)
    finally:
        proxy.close()
        reg.stop()
    assert got == image_id
    summary = events[-1]
    assert isinstance(summary, PushSummary)
    assert stopped.is_set()
    assert summary.ok, summary.results[0].error
    sizes = {e.digest: e.size for e in events if isinstance(e, BlobDone)}
    unfinished = sum(size for digest, size in sizes.items() if digest not in at_stop["done"])
    overhead = 256 * 1024   # request lines and headers, manifest
    resent = proxy.sent - summary.compressed_size
    assert resent <= unfinished + overhead, (resent, unfinished)
    resumed = [e for e in events if isinstance(e, Resumed)]
    assert resumed
    if stop == "drain":
        assert any(e.offset > 0 for e in resumed), resumed
    print(f"\n{stop}: image {summary.compressed_size} B compressed, proxy saw {proxy.sent} B, "
          f"re-sent {resent} B, unfinished at the stop {unfinished} B, resumed {resumed}")


def test_oci_zstd_push(tmp_path, small_image, engine):
    """OCI media types with zstd layers: the registry holds the manifest under
    its digest, and each layer decompresses to the diff ID the config lists."""
    import zstandard

    ref, image_id = small_image
    with Registry(tmp_path) as reg:
        target = Target(reg.host, unique("ikreg"), "v1")
        events, summary = run(push(engine.save(image_id), [target], {}, format="oci-zstd"))
        assert summary.ok, summary.results[0].error
        base = f"http://{reg.host}/v2/{target.repository}"
        r = requests.get(f"{base}/manifests/v1", timeout=10,
                         headers={"Accept": "application/vnd.oci.image.manifest.v1+json"})
        assert r.headers["Docker-Content-Digest"] == summary.manifest_digest
        assert hashlib.sha256(r.content).hexdigest() == summary.manifest_digest.split(":")[1]
        manifest = r.json()
        assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        config = requests.get(f"{base}/blobs/{manifest['config']['digest']}", timeout=10).content
        assert "sha256:" + hashlib.sha256(config).hexdigest() == image_id
        diff_ids = json.loads(config)["rootfs"]["diff_ids"]
        for layer, diff_id in zip(manifest["layers"], diff_ids, strict=True):
            assert layer["mediaType"] == "application/vnd.oci.image.layer.v1.tar+zstd"
            blob = requests.get(f"{base}/blobs/{layer['digest']}", timeout=60).content
            raw = zstandard.ZstdDecompressor().decompressobj().decompress(blob)
            assert "sha256:" + hashlib.sha256(raw).hexdigest() == diff_id


def test_gzip_layers_are_plain_gzip(tmp_path, small_image, engine):
    """The default format's layers are gzip that any client reads."""
    ref, image_id = small_image
    with Registry(tmp_path) as reg:
        target = Target(reg.host, unique("ikreg"), "v1")
        _, summary = run(push(engine.save(image_id), [target], {}))
        base = f"http://{reg.host}/v2/{target.repository}"
        manifest = requests.get(f"{base}/manifests/v1", timeout=10,
                                headers={"Accept": summary.media_type}).json()
        smallest = min(manifest["layers"], key=lambda x: x["size"])
        blob = requests.get(f"{base}/blobs/{smallest['digest']}", timeout=60).content
        assert len(gzip.decompress(blob)) > 0
