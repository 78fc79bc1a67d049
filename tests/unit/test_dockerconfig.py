"""imagekit.engine.dockerconfig: the engine's endpoint from DOCKER_HOST and
docker contexts, and registry credentials from config.json and credential
helpers (a fake `docker-credential-fake` first on PATH). Every config lives
under tmp_path; nothing reads the real ~/.docker."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from imagekit.engine.dockerconfig import (
    HUB,
    LOCAL_SOCKET,
    ConfigProblem,
    Endpoint,
    Tls,
    config_dir,
    encode_auth_header,
    endpoint,
    proxy_env,
    registry_auth,
)

SECRET = "s3cr3t-never-shown"


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def _write_config(folder: Path, data: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(data))


def _context(folder: Path, name: str, host: str | None, *, skip: bool = False,
             pems: tuple[str, ...] = ()) -> Path:
    """Context `name` as `docker context create` stores it; its TLS folder."""
    cid = hashlib.sha256(name.encode()).hexdigest()
    meta = folder / "contexts" / "meta" / cid
    meta.mkdir(parents=True)
    docker = {"SkipTLSVerify": skip} | ({"Host": host} if host is not None else {})
    (meta / "meta.json").write_text(json.dumps({"Name": name, "Metadata": {},
                                                "Endpoints": {"docker": docker}}))
    tls = folder / "contexts" / "tls" / cid / "docker"
    if pems:
        tls.mkdir(parents=True)
        for pem in pems:
            (tls / pem).write_text("PEM")
    return tls


@pytest.fixture
def cfg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """DOCKER_CONFIG pointed at an empty folder, DOCKER_* otherwise unset."""
    for var in ("DOCKER_HOST", "DOCKER_TLS_VERIFY", "DOCKER_CERT_PATH", "DOCKER_CONTEXT"):
        monkeypatch.delenv(var, raising=False)
    folder = tmp_path / "docker-config"
    folder.mkdir()
    monkeypatch.setenv("DOCKER_CONFIG", str(folder))
    return folder


@pytest.fixture
def helper(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """`docker-credential-fake` first on PATH: answers `get` from the store the
    test fills in (server -> (Username, Secret)), says "credentials not found"
    for other servers, and logs each server it was asked for."""
    bin_dir, store, log = tmp_path / "bin", tmp_path / "store.json", tmp_path / "asked.log"
    bin_dir.mkdir()
    script = bin_dir / "docker-credential-fake"
    script.write_text(f"""#!{sys.executable}
import json, sys
server = sys.stdin.read()
open({str(log)!r}, "a").write(server + "\\n")
assert sys.argv[1:] == ["get"], sys.argv
found = json.load(open({str(store)!r})).get(server)
if not found:
    print("credentials not found in native keychain")
    sys.exit(1)
print(json.dumps({{"ServerURL": server, "Username": found[0], "Secret": found[1]}}))
""")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")

    class Helper:
        def set(self, entries: dict[str, tuple[str, str]]) -> None:
            store.write_text(json.dumps(entries))

        def asked(self) -> list[str]:
            return log.read_text().splitlines() if log.exists() else []

    h = Helper()
    h.set({})
    return h


# -- config_dir --------------------------------------------------------------------

def test_config_dir_is_docker_config_else_home_docker(tmp_path: Path):
    assert config_dir({"DOCKER_CONFIG": str(tmp_path)}) == tmp_path
    assert config_dir({"DOCKER_CONFIG": "", "HOME": str(tmp_path)}) == tmp_path / ".docker"


# -- endpoint: DOCKER_HOST ---------------------------------------------------------

def test_docker_host_plain_is_its_url_without_tls(cfg: Path):
    _write_config(cfg, {"currentContext": "remote"})
    _context(cfg, "remote", "ssh://me@elsewhere", pems=("ca.pem",))
    assert endpoint({"DOCKER_HOST": "tcp://build-box:2375", "DOCKER_CONFIG": str(cfg)}) \
        == Endpoint("tcp://build-box:2375")


def test_docker_host_with_tls_verify_and_cert_path(tmp_path: Path):
    certs = tmp_path / "certs"
    certs.mkdir()
    for pem in ("ca.pem", "cert.pem", "key.pem"):
        (certs / pem).write_text("PEM")
    env = {"DOCKER_HOST": "tcp://h:2376", "DOCKER_TLS_VERIFY": "1", "DOCKER_CERT_PATH": str(certs)}
    assert endpoint(env) == Endpoint("tcp://h:2376", Tls(str(certs / "ca.pem"), str(certs / "cert.pem"),
                                                         str(certs / "key.pem"), verify=True))


def test_docker_host_cert_path_alone_is_tls_without_verify_and_missing_files_are_none(tmp_path: Path):
    (tmp_path / "cert.pem").write_text("PEM")
    env = {"DOCKER_HOST": "tcp://h:2376", "DOCKER_TLS_VERIFY": "", "DOCKER_CERT_PATH": str(tmp_path)}
    assert endpoint(env) == Endpoint("tcp://h:2376", Tls(None, str(tmp_path / "cert.pem"), None,
                                                         verify=False))


def test_docker_tls_verify_without_cert_path_reads_the_config_dir(cfg: Path):
    (cfg / "ca.pem").write_text("PEM")
    env = {"DOCKER_HOST": "tcp://h:2376", "DOCKER_TLS_VERIFY": "1", "DOCKER_CONFIG": str(cfg)}
    assert endpoint(env).tls == Tls(str(cfg / "ca.pem"), None, None, True)


# -- endpoint: contexts ------------------------------------------------------------

def test_current_context_from_config_json_without_tls(cfg: Path):
    _write_config(cfg, {"currentContext": "gpu-box"})
    _context(cfg, "gpu-box", "ssh://root@gpu-box:2222")
    assert endpoint() == Endpoint("ssh://root@gpu-box:2222", None, "gpu-box")


def test_docker_context_overrides_current_context_and_brings_its_tls(cfg: Path,
                                                                     monkeypatch: pytest.MonkeyPatch):
    _write_config(cfg, {"currentContext": "gpu-box"})
    _context(cfg, "gpu-box", "ssh://root@gpu-box")
    tls = _context(cfg, "secure", "tcp://secure:2376", pems=("ca.pem", "cert.pem", "key.pem"))
    monkeypatch.setenv("DOCKER_CONTEXT", "secure")
    assert endpoint() == Endpoint("tcp://secure:2376", Tls(str(tls / "ca.pem"), str(tls / "cert.pem"),
                                                           str(tls / "key.pem"), True), "secure")


def test_context_skip_tls_verify_with_only_a_ca(cfg: Path):
    tls = _context(cfg, "lab", "tcp://lab:2376", skip=True, pems=("ca.pem",))
    found = endpoint({"DOCKER_CONTEXT": "lab", "DOCKER_CONFIG": str(cfg)})
    assert found == Endpoint("tcp://lab:2376", Tls(str(tls / "ca.pem"), None, None, False), "lab")


def test_docker_host_wins_over_docker_context(cfg: Path):
    _context(cfg, "lab", "tcp://lab:2376")
    env = {"DOCKER_HOST": "unix:///run/user/1000/docker.sock", "DOCKER_CONTEXT": "lab",
           "DOCKER_CONFIG": str(cfg)}
    assert endpoint(env) == Endpoint("unix:///run/user/1000/docker.sock")


@pytest.mark.parametrize("breakage", ["missing", "bad json", "no host", "not an object",
                                      "endpoint not an object"])
def test_a_broken_context_falls_back_to_the_local_socket(cfg: Path, breakage: str):
    _write_config(cfg, {"currentContext": "broken"})
    if breakage != "missing":
        _context(cfg, "broken", None if breakage == "no host" else "tcp://x:2375")
        meta = next((cfg / "contexts" / "meta").iterdir()) / "meta.json"
        if breakage == "bad json":
            meta.write_text("{not json")
        elif breakage == "not an object":
            meta.write_text('["Endpoints"]')
        elif breakage == "endpoint not an object":
            meta.write_text('{"Endpoints": {"docker": "tcp://x:2375"}}')
    assert endpoint() == Endpoint(LOCAL_SOCKET)


def test_default_context_or_none_is_the_local_socket(cfg: Path):
    _context(cfg, "default", "tcp://should-not-be-used:2375")
    _write_config(cfg, {"currentContext": "default"})
    assert endpoint() == Endpoint(LOCAL_SOCKET)
    assert endpoint({"DOCKER_CONTEXT": "default", "DOCKER_CONFIG": str(cfg)}) == Endpoint(LOCAL_SOCKET)
    (cfg / "config.json").unlink()
    assert endpoint() == Endpoint(LOCAL_SOCKET)
    (cfg / "config.json").write_text("{broken")
    assert endpoint() == Endpoint(LOCAL_SOCKET)


# -- registry_auth: auths ----------------------------------------------------------

def test_no_config_file_is_no_credentials(cfg: Path):
    assert registry_auth("ghcr.io") is None


def test_auths_entry_with_auth_base64(cfg: Path):
    _write_config(cfg, {"auths": {"localhost:5000": {"auth": _b64(f"ci:{SECRET}"),
                                                     "email": "ci@example.com"}}})
    assert registry_auth("localhost:5000") == {"username": "ci", "password": SECRET,
                                               "serveraddress": "localhost:5000",
                                               "email": "ci@example.com"}
    assert registry_auth("localhost:5001") is None


def test_auths_entry_with_username_and_password_keyed_by_url(cfg: Path):
    _write_config(cfg, {"auths": {"https://registry.example.com/v1/": {"username": "u",
                                                                      "password": SECRET}}})
    assert registry_auth("registry.example.com") == {"username": "u", "password": SECRET,
                                                     "serveraddress": "registry.example.com"}


def test_an_empty_auths_entry_is_no_credentials(cfg: Path):
    _write_config(cfg, {"auths": {"ghcr.io": {}}})
    assert registry_auth("ghcr.io") is None


@pytest.mark.parametrize("name", ["docker.io", "index.docker.io", HUB])
@pytest.mark.parametrize("key", ["https://index.docker.io/v1/", "docker.io", "index.docker.io"])
def test_docker_hub_names_all_find_the_hub_entry(cfg: Path, name: str, key: str):
    _write_config(cfg, {"auths": {"ghcr.io": {"auth": _b64("other:x")},
                                  key: {"auth": _b64(f"hubuser:{SECRET}")}}})
    assert registry_auth(name) == {"username": "hubuser", "password": SECRET, "serveraddress": HUB}


def test_identity_token_in_auths(cfg: Path):
    _write_config(cfg, {"auths": {"acr.example.io": {"auth": _b64("00000000-0000:"),
                                                     "identitytoken": SECRET}}})
    assert registry_auth("acr.example.io") == {"username": "00000000-0000", "identitytoken": SECRET,
                                               "serveraddress": "acr.example.io"}


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"auths": []}'])
def test_an_invalid_config_file_is_a_problem_naming_it(cfg: Path, text: str):
    (cfg / "config.json").write_text(text)
    with pytest.raises(ConfigProblem) as e:
        registry_auth("ghcr.io")
    assert str(cfg / "config.json") in str(e.value) and "\n" not in str(e.value)


def test_bad_base64_auth_is_a_problem_without_the_value(cfg: Path):
    _write_config(cfg, {"auths": {"ghcr.io": {"auth": SECRET + "!!"}}})
    with pytest.raises(ConfigProblem) as e:
        registry_auth("ghcr.io")
    assert "ghcr.io" in str(e.value) and SECRET not in str(e.value)


# -- registry_auth: credential helpers ---------------------------------------------

def test_cred_helpers_first(cfg: Path, helper):
    helper.set({"ghcr.io": ("octocat", SECRET)})
    _write_config(cfg, {"credHelpers": {"ghcr.io": "fake"}, "credsStore": "missing-store",
                        "auths": {"ghcr.io": {"auth": _b64("fromfile:nope")}}})
    assert registry_auth("ghcr.io") == {"username": "octocat", "password": SECRET,
                                        "serveraddress": "ghcr.io"}
    assert helper.asked() == ["ghcr.io"]


def test_cred_helper_without_credentials_is_none(cfg: Path, helper):
    _write_config(cfg, {"credHelpers": {"ghcr.io": "fake"}})
    assert registry_auth("ghcr.io") is None


def test_creds_store_is_asked_for_docker_hub_by_its_url(cfg: Path, helper):
    helper.set({HUB: ("hubuser", SECRET)})
    _write_config(cfg, {"credsStore": "fake"})
    assert registry_auth("docker.io") == {"username": "hubuser", "password": SECRET,
                                          "serveraddress": HUB}
    assert helper.asked() == [HUB]


def test_creds_store_without_credentials_falls_back_to_auths(cfg: Path, helper):
    helper.set({"other.io": ("x", "y")})
    _write_config(cfg, {"credsStore": "fake",
                        "auths": {"localhost:5000": {"auth": _b64(f"ci:{SECRET}")}}})
    assert registry_auth("localhost:5000") == {"username": "ci", "password": SECRET,
                                               "serveraddress": "localhost:5000"}
    assert helper.asked() == ["localhost:5000"]


def test_helper_identity_token(cfg: Path, helper):
    helper.set({"acr.example.io": ("<token>", SECRET)})
    _write_config(cfg, {"credsStore": "fake"})
    assert registry_auth("acr.example.io") == {"identitytoken": SECRET,
                                               "serveraddress": "acr.example.io"}


def test_a_missing_helper_is_a_problem_naming_it_without_the_secret(cfg: Path, helper):
    _write_config(cfg, {"credHelpers": {"ghcr.io": "not-installed-anywhere"},
                        "auths": {"ghcr.io": {"auth": _b64(f"u:{SECRET}")}}})
    with pytest.raises(ConfigProblem) as e:
        registry_auth("ghcr.io")
    text = str(e.value)
    assert "docker-credential-not-installed-anywhere" in text
    assert SECRET not in text and "\n" not in text


def test_a_failing_helper_is_a_problem_in_its_words(cfg: Path, helper, tmp_path: Path):
    broken = tmp_path / "bin" / "docker-credential-broken"
    broken.write_text(f"#!{sys.executable}\nimport sys\n"
                      "print('error getting credentials - keyring is locked')\nsys.exit(1)\n")
    broken.chmod(0o755)
    _write_config(cfg, {"credsStore": "broken", "auths": {"ghcr.io": {"auth": _b64(f"u:{SECRET}")}}})
    with pytest.raises(ConfigProblem, match="docker-credential-broken.*keyring is locked") as e:
        registry_auth("ghcr.io")
    assert SECRET not in str(e.value)


# -- encode_auth_header ------------------------------------------------------------

def test_encode_auth_header_round_trips():
    auth = {"username": "ü-user", "password": "???>>>~~~", "serveraddress": HUB}
    plain = base64.b64encode(json.dumps(auth).encode()).decode()
    assert "+" in plain and "/" in plain        # so the header must differ from standard base64
    header = encode_auth_header(auth)
    assert isinstance(header, str) and "+" not in header and "/" not in header
    assert json.loads(base64.urlsafe_b64decode(header)) == auth


def test_import_is_cheap():
    """The module imports neither docker-py nor requests (loaded on its own, by path)."""
    path = Path(__file__).resolve().parents[2] / "imagekit" / "engine" / "dockerconfig.py"
    code = ("import importlib.util, sys\n"
            f"spec = importlib.util.spec_from_file_location('dockerconfig', {str(path)!r})\n"
            "sys.modules['dockerconfig'] = module = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(module)\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('docker', 'requests', 'urllib3')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- proxies the Docker config gives containers and builds ------------------------------

def test_proxies_for_an_engine_its_own_entry_else_default(cfg: Path):
    (cfg / "config.json").write_text(json.dumps({"proxies": {
        "default": {"httpProxy": "http://proxy:3128", "noProxy": "localhost,127.0.0.1"},
        "tcp://build-box:2376": {"httpsProxy": "http://other:8080"}}}))
    assert proxy_env("unix:///var/run/docker.sock") == {
        "HTTP_PROXY": "http://proxy:3128", "http_proxy": "http://proxy:3128",
        "NO_PROXY": "localhost,127.0.0.1", "no_proxy": "localhost,127.0.0.1"}
    assert proxy_env("tcp://build-box:2376") == {"HTTPS_PROXY": "http://other:8080",
                                                 "https_proxy": "http://other:8080"}


@pytest.mark.parametrize("text", ["", "{}", '{"proxies": []}', '{"proxies": {"default": 3}}',
                                  "not json"])
def test_no_usable_proxies_is_none(cfg: Path, text: str):
    if text:
        (cfg / "config.json").write_text(text)
    assert proxy_env("unix:///var/run/docker.sock") == {}


def test_containers_and_classic_builds_get_the_proxies_and_the_caller_wins(cfg: Path):
    from fakes import FakeDockerAPI

    from imagekit.engine import Engine
    (cfg / "config.json").write_text(json.dumps({"proxies": {"default": {
        "httpProxy": "http://proxy:3128", "noProxy": "127.0.0.1"}}}))
    api = FakeDockerAPI(build=[{"aux": {"ID": "sha256:" + "ab" * 32}}])
    eng = Engine(api, "unix:///fake.sock")
    with eng.container("x:v1", ["true"], name="c1", env={"NO_PROXY": "*"}):
        pass
    (_, _, config), = [c for c in api.calls if c[0] == "create"]
    assert {"HTTP_PROXY=http://proxy:3128", "http_proxy=http://proxy:3128", "NO_PROXY=*",
            "no_proxy=127.0.0.1"} <= set(config["Env"])
    list(eng.build(None, "x:v1"))
    (_, kw), = [c for c in api.calls if c[0] == "build"]
    assert kw["buildargs"]["HTTP_PROXY"] == "http://proxy:3128"
