"""The Docker client's own configuration, read as the docker CLI reads it,
with the standard library only: where the engine is (`endpoint`: DOCKER_HOST
and its TLS variables, else the current docker context, else the local
socket) and a registry's credentials (`registry_auth`: `credHelpers`,
`credsStore` and `auths` in config.json, credential helpers run as
`docker-credential-NAME get`), and the proxies it gives containers
(`proxy_env`). Nothing here talks to an engine or a registry;
no secret ever appears in a `ConfigProblem`'s text."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

LOCAL_SOCKET = "unix:///var/run/docker.sock"
HUB = "https://index.docker.io/v1/"      # Docker Hub's key in config files and helpers
HUB_HOSTS = ("docker.io", "index.docker.io")
TOKEN_USERNAME = "<token>"              # a helper's Username when Secret is an identity token
NOT_FOUND = "credentials not found in native keychain"
HELPER_TIMEOUT = 120                    # seconds a credential helper has to answer (it may prompt)


@dataclass(frozen=True)
class Tls:
    """TLS to the engine: the CA to verify it with (None: the system's CAs,
    or none when `verify` is False) and the client certificate and key."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    verify: bool = True


@dataclass(frozen=True)
class Endpoint:
    """Where the engine is: `url` as given (unix://, tcp://, ssh://, npipe://),
    `tls` None for plain HTTP, `context` the docker context it came from ("")."""

    url: str
    tls: Tls | None = None
    context: str = ""


class ConfigProblem(Exception):
    """A Docker config or credential helper that cannot be used; str() is one line."""


def _env(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    return os.environ if environ is None else environ


def config_dir(environ: Mapping[str, str] | None = None) -> Path:
    """$DOCKER_CONFIG when set and non-empty, else ~/.docker ($HOME's)."""
    env = _env(environ)
    if env.get("DOCKER_CONFIG"):
        return Path(env["DOCKER_CONFIG"])
    return Path(env.get("HOME") or Path.home()) / ".docker"


def _pem(folder: Path, name: str) -> str | None:
    path = folder / name
    return str(path) if path.is_file() else None


def _tls_files(folder: Path, verify: bool) -> Tls:
    return Tls(_pem(folder, "ca.pem"), _pem(folder, "cert.pem"), _pem(folder, "key.pem"), verify)


# -- where the engine is -----------------------------------------------------------

def endpoint(environ: Mapping[str, str] | None = None) -> Endpoint:
    """DOCKER_HOST (TLS on when DOCKER_CERT_PATH is set or DOCKER_TLS_VERIFY is
    non-empty, verifying only for the latter; the PEM files from DOCKER_CERT_PATH,
    else the config dir), else the current context (DOCKER_CONTEXT, else
    config.json's `currentContext`; "default" is none), else the local socket.
    A context that cannot be read is passed over for the local socket."""
    env = _env(environ)
    host = env.get("DOCKER_HOST")
    if host:
        cert_path, verify = env.get("DOCKER_CERT_PATH"), bool(env.get("DOCKER_TLS_VERIFY"))
        if not (cert_path or verify):
            return Endpoint(host)
        return Endpoint(host, _tls_files(Path(cert_path) if cert_path else config_dir(env), verify))
    name = env.get("DOCKER_CONTEXT") or _current_context(config_dir(env))
    if name and name != "default":
        found = _context(config_dir(env), name)
        if found is not None:
            return found
    return Endpoint(LOCAL_SOCKET)


def _current_context(folder: Path) -> str:
    """config.json's `currentContext`; "" when it has none or cannot be read."""
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return ""
    name = data.get("currentContext") if isinstance(data, dict) else None
    return name if isinstance(name, str) else ""


def _context(folder: Path, name: str) -> Endpoint | None:
    """Context `name`'s docker endpoint from its meta.json; TLS when any of its
    PEM files exists, or when it skips verification (as the docker CLI: a
    context made with skip-tls-verify=true speaks TLS without files). None
    when it is missing or unusable."""
    cid = hashlib.sha256(name.encode("utf-8")).hexdigest()
    try:
        meta = json.loads((folder / "contexts" / "meta" / cid / "meta.json")
                          .read_text(encoding="utf-8"))
        docker = meta["Endpoints"]["docker"]
        host, skip = docker["Host"], bool(docker.get("SkipTLSVerify", False))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(host, str) or not host:
        return None
    tls = _tls_files(folder / "contexts" / "tls" / cid / "docker", not skip)
    return Endpoint(host, tls if (tls.ca or tls.cert or tls.key or skip) else None, name)


# -- registry credentials ----------------------------------------------------------

def _host(name: str) -> str:
    """A config key or registry name down to its host[:port]."""
    return name.split("://", 1)[-1].split("/", 1)[0]


def _server(name: str) -> str:
    """The name config files and helpers know a registry by: Docker Hub's URL
    (for "", docker.io, index.docker.io and that URL), else its host."""
    host = _host(name)
    return HUB if not host or host in HUB_HOSTS else host


def _load(path: Path) -> dict | None:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as e:
        raise ConfigProblem(f"cannot read {path}: {e.strerror or e}") from None
    try:
        data = json.loads(text)
    except ValueError as e:
        raise ConfigProblem(f"{path} is not valid JSON (line {getattr(e, 'lineno', '?')})") from None
    if not isinstance(data, dict):
        raise ConfigProblem(f"{path} is not a JSON object")
    return data


def _section(data: dict, key: str, path: Path) -> dict:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigProblem(f"{path}: `{key}` is not a JSON object")
    return value


def _matching(section: dict, server: str) -> str | None:
    """The key of `section` naming `server`: an exact key first, else the first by host."""
    if server in section:
        return server
    return next((k for k in section if _server(k) == server), None)


def registry_auth(registry: str, environ: Mapping[str, str] | None = None) -> dict | None:
    """Credentials for `registry` from config.json: its `credHelpers` entry,
    else `credsStore` (falling back to `auths` when the store has none), else
    `auths`. None when there is no config file or nothing for `registry`; a
    dict as docker-py's (username/password or identitytoken, serveraddress,
    email), holding only keys with values."""
    env = _env(environ)
    path = config_dir(env) / "config.json"
    data = _load(path)
    if data is None:
        return None
    server = _server(registry)
    helpers = _section(data, "credHelpers", path)
    key = _matching(helpers, server)
    if key is not None and helpers[key]:
        return _from_helper(str(helpers[key]), server, env)
    store = data.get("credsStore")
    if store:
        found = _from_helper(str(store), server, env)
        if found is not None:
            return found
    auths = _section(data, "auths", path)
    key = _matching(auths, server)
    return None if key is None else _from_entry(auths[key], server, f"{path}: auths[{key!r}]")


def _from_entry(entry: object, server: str, where: str) -> dict | None:
    """An `auths` entry as a credentials dict; None when it holds none (an empty
    entry, as the CLI writes beside a credsStore)."""
    if not isinstance(entry, dict):
        raise ConfigProblem(f"{where} is not a JSON object")
    username, password = entry.get("username"), entry.get("password")
    if entry.get("auth"):
        username, password = _decode(str(entry["auth"]), where)
    if entry.get("identitytoken"):
        return _only({"username": username, "identitytoken": entry["identitytoken"],
                      "serveraddress": server})
    if not (username or password):
        return None
    return _only({"username": username, "password": password, "serveraddress": server,
                  "email": entry.get("email")})


def _decode(auth: str, where: str) -> tuple[str, str]:
    """`auth`, base64 of "user:password" (missing padding forgiven)."""
    try:
        raw = base64.b64decode(auth + "=" * (-len(auth) % 4), validate=True).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        raise ConfigProblem(f"{where}: `auth` is not base64 of user:password") from None
    user, sep, password = raw.partition(":")
    if not sep:
        raise ConfigProblem(f"{where}: `auth` is not base64 of user:password")
    return user, password


def _only(auth: dict) -> dict:
    return {k: v for k, v in auth.items() if v}


def _from_helper(name: str, server: str, env: Mapping[str, str]) -> dict | None:
    """`docker-credential-NAME get` for `server`: None when it has no credentials for it."""
    program = f"docker-credential-{name}"
    try:
        done = subprocess.run([program, "get"], input=server.encode("utf-8"), capture_output=True,
                              env=dict(env), timeout=HELPER_TIMEOUT, check=False)
    except FileNotFoundError:
        raise ConfigProblem(f"credential helper {program} is not installed (not on PATH)") from None
    except subprocess.TimeoutExpired:
        raise ConfigProblem(f"credential helper {program} did not answer in {HELPER_TIMEOUT} s") \
            from None
    except OSError as e:
        raise ConfigProblem(f"credential helper {program} cannot be run: {e.strerror or e}") from None
    said = (done.stdout + done.stderr).decode("utf-8", "replace")
    if done.returncode != 0:
        if NOT_FOUND in said:
            return None
        raise ConfigProblem(f"credential helper {program} failed for {server}{_why(said)}")
    try:
        data = json.loads(done.stdout)
        username, secret = data.get("Username") or "", data.get("Secret") or ""
    except (ValueError, AttributeError):
        raise ConfigProblem(f"credential helper {program} gave {server} no credentials JSON") from None
    if not (username or secret):
        return None
    if username == TOKEN_USERNAME:
        return _only({"identitytoken": secret, "serveraddress": server})
    return _only({"username": username, "password": secret, "serveraddress": server})


def _why(said: str) -> str:
    """The helper's first line of complaint, unless it could hold credentials."""
    line = next((x.strip() for x in said.splitlines() if x.strip()), "")
    if not line or "Secret" in line or "{" in line:
        return ""
    return f": {line[:200]}"


# config.json's `proxies` keys, and the variables the docker CLI sets from them
_PROXY_VARS = {"httpProxy": "HTTP_PROXY", "httpsProxy": "HTTPS_PROXY", "ftpProxy": "FTP_PROXY",
               "noProxy": "NO_PROXY", "allProxy": "ALL_PROXY"}


def proxy_env(engine: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The proxy variables the Docker config gives containers and builds on
    ENGINE (its URL): config.json's `proxies`, the entry for that URL, else
    `default`; each set in upper and lower case, as `docker run` and `docker
    build` set them. Empty when there is none or the config cannot be read
    (a build or a run works without them)."""
    try:
        data = _load(config_dir(_env(environ)) / "config.json") or {}
    except ConfigProblem:
        return {}
    proxies = data.get("proxies")
    if not isinstance(proxies, dict):
        return {}
    chosen = proxies.get(engine, proxies.get("default"))
    if not isinstance(chosen, dict):
        return {}
    out: dict[str, str] = {}
    for key, var in _PROXY_VARS.items():
        value = chosen.get(key)
        if isinstance(value, str) and value:
            out[var] = out[var.lower()] = value
    return out


def encode_auth_header(auth: dict) -> str:
    """The X-Registry-Auth header value: urlsafe base64 of `auth`'s JSON."""
    return base64.urlsafe_b64encode(json.dumps(auth).encode("ascii")).decode("ascii")
