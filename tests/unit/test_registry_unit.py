"""imagekit.layers and imagekit.registry without an engine or a registry:
export tars of both layouts made here, manifests, auth challenges and the
credential rules, the Range answer, and redaction."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import tarfile

import pytest
from fakes import FakeResponse, registry_with

from imagekit.errors import AuthError, PushError
from imagekit.layers import FORMATS, get_format, read_export
from imagekit.registry import (
    Auth,
    Registry,
    Target,
    TargetFailed,
    TransientPushError,
    is_loopback,
    parse_challenge,
    parse_range,
)
from imagekit.registry import push as registry_push


def layer_tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def export(layers: list[bytes], layout: str = "v1", duplicate_as_link: bool = False,
           long_names: bool = False) -> tuple[bytes, bytes]:
    """A `docker save` tar of one image with these layers; (tar, config bytes)."""
    config = json.dumps({"architecture": "amd64", "os": "linux",
                         "rootfs": {"type": "layers", "diff_ids": [sha(x) for x in layers]}}).encode()
    cid = hashlib.sha256(config).hexdigest()
    buf = io.BytesIO()
    fmt = tarfile.PAX_FORMAT if long_names else tarfile.USTAR_FORMAT
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as t:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))

        paths, seen = [], {}
        for i, data in enumerate(layers):
            if layout == "v1":
                d = f"{i:064x}"
                path = f"{d}/layer.tar"
                add(f"{d}/VERSION", b"1.0")
                add(f"{d}/json", b"{}")
                if duplicate_as_link and sha(data) in seen:
                    link = tarfile.TarInfo(path)
                    link.type = tarfile.SYMTYPE
                    link.linkname = f"../{seen[sha(data)]}"
                    t.addfile(link)
                else:
                    add(path, data)
                    seen[sha(data)] = path
            else:
                path = f"blobs/sha256/{hashlib.sha256(data).hexdigest()}"
                if path not in seen.values():
                    add(path, data)
                    seen[sha(data)] = path
            paths.append(path)
        config_path = f"{cid}.json" if layout == "v1" else f"blobs/sha256/{cid}"
        add(config_path, config)
        add("manifest.json", json.dumps([{"Config": config_path, "RepoTags": ["x:y"],
                                          "Layers": paths}]).encode())
    return buf.getvalue(), config


def chunks(data: bytes, size: int = 7777):
    for i in range(0, len(data), size):
        yield data[i:i + size]


LAYERS = [layer_tar({"a.txt": b"hello" * 1000}), layer_tar({"b/c.bin": bytes(range(256)) * 4000}),
          layer_tar({})]


@pytest.mark.parametrize("layout", ["v1", "oci"])
def test_export_read_once_gives_config_and_gzip_layers(tmp_path, layout):
    tar, config = export(LAYERS, layout)
    image = read_export(chunks(tar), tmp_path, get_format("docker"),
                        expect_diff_ids=[sha(x) for x in LAYERS])
    assert image.image_id == sha(config)
    assert image.config.data == config
    assert [b.diff_id for b in image.layers] == [sha(x) for x in LAYERS]
    for blob, raw in zip(image.layers, LAYERS, strict=True):
        data = blob.path.read_bytes()
        assert blob.digest == sha(data) and blob.size == len(data)
        assert gzip.decompress(data) == raw
        assert blob.media_type == "application/vnd.docker.image.rootfs.diff.tar.gzip"
    manifest = json.loads(image.manifest())
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    assert manifest["config"] == {"mediaType": "application/vnd.docker.container.image.v1+json",
                                  "size": len(config), "digest": sha(config)}
    assert [x["digest"] for x in manifest["layers"]] == [b.digest for b in image.layers]


def test_compression_is_deterministic(tmp_path):
    tar, _ = export(LAYERS)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    one = read_export(chunks(tar, 1000), tmp_path / "a", get_format("docker"))
    two = read_export(chunks(tar, 65536), tmp_path / "b", get_format("docker"))
    assert [b.digest for b in one.layers] == [b.digest for b in two.layers]


def test_duplicate_layer_written_as_symlink_is_one_blob(tmp_path):
    layers = [LAYERS[0], LAYERS[1], LAYERS[0]]
    tar, _ = export(layers, duplicate_as_link=True)
    image = read_export(chunks(tar), tmp_path, get_format("docker"))
    assert [b.diff_id for b in image.layers] == [sha(x) for x in layers]
    assert image.layers[0] is image.layers[2]
    assert len(image.blobs()) == 3  # two layers and the config


def test_pax_long_names_are_read(tmp_path):
    tar, config = export(LAYERS[:1], long_names=True)
    image = read_export(chunks(tar), tmp_path, get_format("docker"))
    assert image.image_id == sha(config)


def test_zstd_layers_with_oci_types(tmp_path):
    zstandard = pytest.importorskip("zstandard")
    tar, _ = export(LAYERS)
    image = read_export(chunks(tar), tmp_path, FORMATS["oci-zstd"])
    assert json.loads(image.manifest())["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert image.config.media_type == "application/vnd.oci.image.config.v1+json"
    for blob, raw in zip(image.layers, LAYERS, strict=True):
        assert blob.media_type == "application/vnd.oci.image.layer.v1.tar+zstd"
        assert zstandard.ZstdDecompressor().decompressobj().decompress(blob.path.read_bytes()) == raw


def test_export_that_does_not_match_its_config_is_refused(tmp_path):
    tar, config = export(LAYERS)
    with pytest.raises(PushError, match="whose layers are not the ones the engine reports"):
        read_export(chunks(tar), tmp_path, get_format("docker"),
                    expect_diff_ids=["sha256:" + "0" * 64] * len(LAYERS))
    broken = tar.replace(b'"diff_ids": ["sha256:', b'"diff_ids": ["sha256:f', 1)
    with pytest.raises(PushError):
        read_export(chunks(broken), tmp_path, get_format("docker"))


def test_truncated_export_is_an_error(tmp_path):
    tar, _ = export(LAYERS)
    with pytest.raises(PushError):
        read_export(chunks(tar[: len(tar) // 2]), tmp_path, get_format("docker"))


def test_unknown_format():
    with pytest.raises(PushError, match="unknown push format"):
        get_format("docker-zstd")


def test_challenges():
    ch = parse_challenge('Bearer realm="https://auth.example.com/token",service="reg.example.com",'
                         'scope="repository:team/x:pull,push"')
    assert ch.scheme == "bearer"
    assert ch.params == {"realm": "https://auth.example.com/token", "service": "reg.example.com",
                         "scope": "repository:team/x:pull,push"}
    assert parse_challenge('Basic realm="x"').scheme == "basic"
    assert parse_challenge("") is None


def test_range():
    assert parse_range("0-1048575") == 1048576
    assert parse_range("bytes=0-99") == 100
    assert parse_range("0-0") == 0
    assert parse_range("") is None and parse_range("5-9") is None


def test_plain_http_only_for_loopback():
    for host in ("localhost:5000", "127.0.0.1:5000", "localhost", "[::1]:5000", "reg.localhost"):
        assert is_loopback(host) and Registry(host).scheme == "http"
    for host in ("registry.example.com", "10.0.0.1:5000", "localhost.example.com:5000"):
        assert not is_loopback(host) and Registry(host).scheme == "https"
    assert Registry("docker.io").base == "https://registry-1.docker.io"


def test_auth_never_shows_secrets():
    a = Auth("alice", "s3cret-pw", "id-token-xyz")
    assert "s3cret-pw" not in repr(a) and "id-token-xyz" not in repr(a)
    from_docker = Auth.from_docker({"auth": "YWxpY2U6czNjcmV0LXB3"})  # alice:s3cret-pw
    assert from_docker == Auth("alice", "s3cret-pw")
    assert Auth.from_docker({"IdentityToken": "tok"}).identity_token == "tok"
    assert Auth.from_docker({}) is None and Auth.from_docker(None) is None
    reg = Registry("r.example.com", a)
    assert reg.redact("x s3cret-pw y YWxpY2U6czNjcmV0LXB3 z") == "x *** y *** z"


def test_credentials_go_to_the_registry_and_its_own_realm_only():
    realm = "https://auth.example.com/token"
    tokens = iter(["tok-1", "tok-2"])

    def answers(method, url, headers, kw):
        if url.startswith(realm):
            return FakeResponse(200, body={"token": next(tokens), "expires_in": 300})
        if url.endswith("/v2/"):
            return FakeResponse(401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="reg"'})
        if headers.get("Authorization") == "Bearer tok-1" and "uploads" in url:
            return FakeResponse(401, {"WWW-Authenticate": f'Bearer realm="{realm}",service="reg",'
                                                          'error="invalid_token"'})
        if "uploads" in url:
            return FakeResponse(202, {"Location": "https://storage.example.net/upload/1?_state=x"})
        return FakeResponse(404)

    reg, s = registry_with(answers, auth=Auth("alice", "pw-1"))
    assert reg.blob_exists("team/x", "sha256:" + "a" * 64) is False
    url, mounted = reg.start_upload("team/x")   # tok-1 refused mid-way: a fresh token, resent
    assert url.startswith("https://storage.example.net/") and not mounted
    reg.upload_offset("team/x", url)  # another host: no Authorization at all
    by_host = {}
    for _method, u, h in s.sent:
        by_host.setdefault(u.split("/")[2], []).append(h.get("Authorization", ""))
    assert all(a.startswith("Basic ") for a in by_host["auth.example.com"])
    assert all(not a.startswith("Basic ") for a in by_host["reg.example.com"])
    assert by_host["storage.example.net"] == [""]
    assert reg.token_fetches == 2


def test_token_refreshed_before_it_expires():
    now = [0.0]
    fetched = []

    def answers(method, url, headers, kw):
        if "/token" in url:
            fetched.append(now[0])
            return FakeResponse(200, body={"token": f"t{len(fetched)}", "expires_in": 60})
        if url.endswith("/v2/"):
            return FakeResponse(401, {"WWW-Authenticate": 'Bearer realm="https://reg.example.com/token"'})
        return FakeResponse(200)

    reg, s = registry_with(answers, clock=lambda: now[0])
    for t in (0, 10, 40, 49, 51, 60):
        now[0] = t
        reg.blob_exists("x", "sha256:" + "b" * 64)
    assert fetched == [0, 51]   # lifetime 60 s, renewed 10 s before it ends


def test_auth_errors_and_transient_errors():
    def basic(method, url, headers, kw):
        return FakeResponse(401, {"WWW-Authenticate": 'Basic realm="r"'},
                            {"errors": [{"code": "UNAUTHORIZED", "message": "authentication required"}]})

    reg, _ = registry_with(basic, auth=Auth("u", "wrong-pw-123"))
    with pytest.raises(AuthError) as e:
        reg.blob_exists("x", "sha256:" + "c" * 64)
    assert "wrong-pw-123" not in str(e.value) and e.value.exit_code == 11

    reg, _ = registry_with(basic)
    with pytest.raises(AuthError, match="none was given"):
        reg.blob_exists("x", "sha256:" + "c" * 64)

    def plain_realm(method, url, headers, kw):
        return FakeResponse(401, {"WWW-Authenticate": 'Bearer realm="http://auth.example.com/t"'})

    reg, s = registry_with(plain_realm, auth=Auth("u", "pw"))
    with pytest.raises(AuthError, match="plain HTTP"):
        reg.blob_exists("x", "sha256:" + "c" * 64)
    assert not any("auth.example.com" in u for _, u, _ in s.sent)

    def busy(method, url, headers, kw):
        return FakeResponse(200) if url.endswith("/v2/") else FakeResponse(503)

    reg, _ = registry_with(busy)
    with pytest.raises(TransientPushError):
        reg.blob_exists("x", "sha256:" + "c" * 64)


def test_target_ref():
    assert Target("localhost:5000", "team/x", "v1").ref == "localhost:5000/team/x:v1"


def test_credentials_are_checked_before_the_export_is_read():
    """A registry that refuses the password (Basic) or a malformed token
    (Bearer) fails its destination before a byte of the export is read."""
    read = []

    def export():
        read.append(1)
        yield b""

    def basic(method, url, headers, kw):
        return FakeResponse(401, {"WWW-Authenticate": 'Basic realm="r"'},
                            body={"errors": [{"code": "UNAUTHORIZED", "message": "no"}]})
    reg, s = registry_with(basic, auth=Auth("alice", "wrong-pw"))
    events = list(registry_push(export(), [Target("reg.example.com", "t/x", "v1")], {},
                                registries={"reg.example.com": reg}))
    failed = [e for e in events if isinstance(e, TargetFailed)]
    assert len(failed) == 1 and isinstance(failed[0].error, AuthError)
    assert "refused the credentials" in failed[0].message and "wrong-pw" not in failed[0].message
    assert read == [] and [m for m, _, _ in s.sent] == ["GET", "GET"]
    assert events[-1].results[0].error is failed[0].error

    def bearer(method, url, headers, kw):
        if url.startswith("https://auth.example.com/"):
            return FakeResponse(200, body={"token": "abc\r\nX-Injected: 1"})
        return FakeResponse(401, {"WWW-Authenticate": 'Bearer realm="https://auth.example.com/t"'})
    reg, s = registry_with(bearer, auth=Auth("alice", "pw-1234"))
    events = list(registry_push(export(), [Target("reg.example.com", "t/x", "v1")], {},
                                registries={"reg.example.com": reg}))
    [failed] = [e for e in events if isinstance(e, TargetFailed)]
    assert "malformed token" in failed.message and "CARRIAGE RETURN" in failed.message
    assert "abc" not in failed.message and read == [] and reg.token_fetches == 1


def test_a_malformed_credential_is_never_sent():
    assert Auth("alice", "pw\n").problem().startswith("the password contains a control character")
    assert "':'" in Auth("al:ice", "pw").problem()
    assert Auth("alice", "good pw ✓").problem() == ""
    reg, s = registry_with(lambda *a: FakeResponse(200), auth=Auth("alice", "p\rw"))
    with pytest.raises(AuthError, match="control character"):
        reg.check_auth(["repository:t/x:pull,push"])
    assert s.sent == []
