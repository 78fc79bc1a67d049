"""Where a push goes and with what credentials: REGISTRY[/NAMESPACE] destinations
(Docker's reference grammar), and credentials bound to the registry hosts they
were given for."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field

from . import reference
from .errors import ImagekitError, UsageError
from .peer import keep_secret

ENV_USER = "IMAGEKIT_REGISTRY_USER"
ENV_PASSWORD = "IMAGEKIT_REGISTRY_PASSWORD"
ENV_REGISTRY = "IMAGEKIT_REGISTRY"


@dataclass(frozen=True)
class Destination:
    registry: str
    namespace: str
    repository: str
    tag: str

    @property
    def where(self) -> str:
        """What was asked for: REGISTRY/NAMESPACE."""
        return f"{self.registry}/{self.namespace}" if self.namespace else self.registry

    @property
    def repo(self) -> str:
        return f"{self.where}/{self.repository}"

    @property
    def ref(self) -> str:
        return f"{self.repo}:{self.tag}"


@dataclass(frozen=True)
class Credentials:
    """A username and password; the password never shows in a repr."""

    username: str
    password: str = field(repr=False)
    source: str = ""
    hosts: frozenset[str] | None = None   # the registries they were given for (None: unbound)

    def __post_init__(self) -> None:
        keep_secret(self.password, self.username)

    def for_host(self, registry: str) -> bool:
        return self.hosts is not None and registry in self.hosts

    def auth(self, registry: str) -> dict:
        return {"username": self.username, "password": self.password, "serveraddress": registry}


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def credential_problem(username: str = "", password: str = "", token: str = "") -> str:
    """Why credentials cannot be sent as they are ("" when they can): a
    username with ':' (Basic authentication cannot carry it) or a control
    character anywhere (a line break pasted or read with a password or token).
    Never quotes the value."""
    if ":" in username:
        return "the username contains ':', which Basic authentication cannot carry"
    for what, value in (("username", username), ("password", password),
                        ("identity token", token)):
        bad = _CONTROL.search(value or "")
        if bad:
            return (f"the {what} contains a control character ({reference.char_name(bad.group())} "
                    f"at character {bad.start() + 1}); check how it was pasted or read")
    return ""


def auth_problem(auth: dict | None) -> str:
    """credential_problem() of a Docker auth config dict (username/password,
    identitytoken, or the base64 `auth` of a Docker config file)."""
    if not auth:
        return ""
    get = {str(k).lower(): str(v or "") for k, v in auth.items()}
    for key in ("password", "identitytoken", "auth", "registrytoken"):
        keep_secret(get.get(key), get.get("username", ""))
    return credential_problem(get.get("username", ""), get.get("password", ""),
                              get.get("identitytoken", "") or get.get("registrytoken", ""))


def destination(text: str, repository: str, tag: str) -> Destination:
    """Parse one --to / push.registries entry, REGISTRY[/NAMESPACE]."""
    checks = ((reference.registry, text, "--to"), (reference.path_component, repository,
                                                   "--repository"), (reference.tag, tag, "--tag"))
    for check, value, flag in checks:
        try:
            check(value)
        except ValueError as e:
            raise UsageError(f"{flag}: {e}") from None
    host, _, namespace = text.rstrip("/").partition("/")
    return Destination(host, namespace, repository, tag)


def credentials(username: str | None = None, password: str | None = None,
                environ: dict | None = None, to: list[str] | None = None) -> Credentials | None:
    """Explicit credentials first, then the environment; None leaves it to the
    Docker config file (resolved per registry by the engine module). The
    credentials are bound to the hosts of `to` (the command line's --to), or to
    IMAGEKIT_REGISTRY's host for the environment's."""
    env = os.environ if environ is None else environ
    cli_hosts = frozenset(_host(w) for w in to or [])
    if username is not None or password is not None:
        if not username:
            raise UsageError("--password-stdin needs --username")
        if not password:
            raise UsageError("the password read from stdin (--password-stdin) is empty")
        if not cli_hosts:
            raise UsageError("--username needs --to: credentials given on the command line go "
                             "only to the registries named there")
        return Credentials(username, password, "--username/--password-stdin", cli_hosts)
    user, pw = env.get(ENV_USER), env.get(ENV_PASSWORD)
    if user or pw:
        if not (user and pw):
            missing = ENV_PASSWORD if user else ENV_USER
            raise UsageError(f"{ENV_USER} and {ENV_PASSWORD} go together; {missing} is not set")
        named = env.get(ENV_REGISTRY, "").strip()
        if named:
            try:
                reference.host_port(named)
            except ValueError:
                raise UsageError(f"{ENV_REGISTRY}={reference.short(named)!r} is not a registry "
                                 "host (e.g. registry.example.com or localhost:5000)") from None
        hosts = frozenset([named]) if named else cli_hosts
        return Credentials(user, pw, f"{ENV_USER}/{ENV_PASSWORD}", hosts or None)
    return None


def _host(where: str) -> str:
    return where.strip().partition("/")[0]


@dataclass
class Done:
    """How one destination's push ended."""

    dest: Destination
    digest: str = ""
    attempts: int = 0
    seconds: float = 0.0
    error: ImagekitError | None = None
    bytes_sent: int | None = None       # known on imagekit's own path
    via: str = "engine"
    bytes_compressed: int | None = None  # own path: what its export read compressed
    layers_as_stored: int | None = None
