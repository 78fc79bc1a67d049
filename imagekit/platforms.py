"""Training platforms' contracts as data: the shipped profiles
(platforms.yaml) and a project's own ([platforms.NAME] in imagekit.toml, the
same fields: a name that exists replaces the shipped profile whole). A
profile says where the platform mounts data, output, code and checkpoints,
which variables it sets, how it starts the container, as which user, with how
much /dev/shm, whether the root file system is writable, the network, and how
many nodes one job has. The smoke stage runs an image under one (smoke.py)."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationError, model_validator

from . import matrix
from .errors import ConfigError, UsageError
from .spec import AbsPath, EnvName, FieldProblem, Strict, Text, format_errors, problems_error

SHIPPED = Path(__file__).resolve().parent / "platforms.yaml"
MOUNT_KINDS = ("data", "output", "code", "checkpoints", "home")
ARBITRARY_UIDS = (1000100000, 1000199999)     # OpenShift's usual range
PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")
PLACEHOLDERS = {*MOUNT_KINDS, "host", "hosts", "hosts_json", "nodes", "rank", "master", "gpus"}
USER = re.compile(r"^(root|arbitrary|[0-9]{1,10}(:[0-9]{1,10})?)$")


def _user(v: str) -> str:
    if not USER.match(v):
        raise ValueError(f"{v!r} is not root, arbitrary or UID[:GID] (e.g. 1000:100)")
    return v


def _placeholders(v: str) -> str:
    unknown = sorted(set(PLACEHOLDER.findall(v)) - PLACEHOLDERS)
    if unknown:
        raise ValueError(f"unknown placeholder {{{unknown[0]}}} (known: "
                         f"{', '.join('{' + p + '}' for p in sorted(PLACEHOLDERS))})")
    return v


Templated = Annotated[str, AfterValidator(_placeholders)]


class Mounts(Strict):
    data: AbsPath | None = None
    output: AbsPath | None = None
    code: AbsPath | None = None
    checkpoints: AbsPath | None = None
    home: AbsPath | None = None

    def items(self) -> list[tuple[str, str]]:
        return [(k, getattr(self, k)) for k in MOUNT_KINDS if getattr(self, k)]

    @model_validator(mode="after")
    def _apart(self):
        seen: dict[str, str] = {}
        for kind, path in self.items():
            if path == "/":
                raise FieldProblem((kind,), "a volume cannot be mounted at /")
            for other, p in seen.items():
                if p == path or p.startswith(path.rstrip("/") + "/") or \
                        path.startswith(p.rstrip("/") + "/"):
                    raise FieldProblem((kind,), f"{path} overlaps {other} ({p})")
            seen[kind] = path
        return self


class Notebook(Strict):
    port: int = Field(8888, ge=1, le=65535)
    base_url_env: EnvName | None = None


class Profile(Strict):
    description: Text = ""
    mounts: Mounts = Mounts()
    env: dict[EnvName, Templated] = {}
    files: dict[AbsPath, Templated] = {}
    args: list[Text] | None = None
    user: Annotated[str, AfterValidator(_user)] = "root"
    shm_mb: int = Field(64, ge=1, le=1024 * 1024)
    read_only_root: bool = False
    writable: list[AbsPath] = []
    network: Literal["none", "bridge"] = "none"
    nodes: int = Field(1, ge=1, le=8)
    failure_file: AbsPath | None = None
    notebook: Notebook | None = None

    @property
    def non_root(self) -> bool:
        return self.user != "root" and not self.user.startswith("0:") and self.user != "0"


class _Profiles(Strict):
    profiles: dict[Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")], Profile]


def _validate(data: object, where: str) -> dict[str, Profile]:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: platform profiles must be a table of NAME = {{...}}")
    try:
        return dict(_Profiles.model_validate({"profiles": data}).profiles)
    except ValidationError as e:
        lines = [line.replace(f"{where}: profiles.", f"{where}: platforms.")
                 for line in format_errors(where, e, _Profiles)]
        raise problems_error(ConfigError, where, lines) from None


def shipped() -> dict[str, Profile]:
    return _validate(matrix.read_yaml(SHIPPED.read_text()), "platforms.yaml")


def profiles(project) -> dict[str, Profile]:
    """Every profile this project knows: shipped, then its own (imagekit.toml
    [platforms.NAME], validated when the project is loaded)."""
    out = shipped()
    own = getattr(project.config, "platforms", None) or {}
    out.update(own)
    return out


def validate_own(data: object, where: str) -> dict[str, Profile]:
    """[platforms] of imagekit.toml: one line per problem, exit 3."""
    return _validate(data, where)


def get(project, name: str, where: str = "") -> Profile:
    """The profile NAME; WHERE: the config file that named it ("" for --platform)."""
    known = profiles(project)
    if name not in known:
        said = f"{where}: [platform] profile {name!r}" if where else f"--platform {name!r}"
        err = ConfigError if where else UsageError
        raise err(f"{said}: no such platform profile (known: {', '.join(sorted(known))}; add "
                  f"your own under [platforms.{name}] in imagekit.toml)")
    return known[name]


def user_for(profile: Profile, rng: random.Random | None = None) -> str | None:
    """The engine's `user` value: None for root (the image's own user is not
    used: the platform decides), UID:GID, or a random high UID with GID 0."""
    if profile.user == "root":
        return "0:0"
    if profile.user == "arbitrary":
        uid = (rng or random.SystemRandom()).randint(*ARBITRARY_UIDS)
        return f"{uid}:0"
    return profile.user if ":" in profile.user else f"{profile.user}:{profile.user}"


def fill(text: str, values: dict[str, str]) -> str:
    """TEXT with each {placeholder} replaced (unknown ones left as they are)."""
    return PLACEHOLDER.sub(lambda m: values.get(m[1], m[0]), text)


def values(profile: Profile, host: str, hosts: list[str], rank: int, gpus: int) -> dict[str, str]:
    v = {k: p for k, p in profile.mounts.items()}
    v.update(host=host, hosts=",".join(hosts), hosts_json=json.dumps(hosts), nodes=str(len(hosts)),
             rank=str(rank), master=hosts[0], gpus=str(gpus))
    return v
