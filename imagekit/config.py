"""The project config file, imagekit.toml, and where a project lives.

It maps the base images that templates name to local or mirror images, and
names a wheelhouse or pip index and an apt mirror, so the same specs build on
a machine with no registry and no PyPI. With no config file at all, specs
build from the public registry and PyPI."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .errors import ConfigError
from .spec import Catalog, display_path

CONFIG_FILE = "imagekit.toml"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class BaseSection(_Strict):
    image: str = "imagekit/base:bookworm"
    suite: str = "bookworm"
    mirror: str = "http://deb.debian.org/debian"
    include: list[str] = ["python3", "python3-venv", "ca-certificates"]


class PipSection(_Strict):
    wheelhouse: str | None = None
    port: int = Field(17311, ge=1024, le=65535)
    index_url: str | None = None
    trusted_host: str | None = None


class AptSection(_Strict):
    mirror: str | None = None


class ConfigModel(_Strict):
    bases: dict[str, str] = {}
    base: BaseSection = BaseSection()
    pip: PipSection = PipSection()
    apt: AptSection = AptSection()
    state_dir: str = ".imagekit"
    templates_dir: str | None = None


@dataclass(frozen=True)
class Project:
    root: Path
    config: ConfigModel
    config_path: Path | None

    @property
    def catalog(self) -> Catalog:
        return Catalog(self.root / "images")

    @property
    def state_dir(self) -> Path:
        return self._path(self.config.state_dir)

    @property
    def wheelhouse(self) -> Path | None:
        wh = self.config.pip.wheelhouse
        return self._path(wh) if wh else None

    @property
    def templates_dir(self) -> Path:
        if self.config.templates_dir:
            return self._path(self.config.templates_dir)
        own = self.root / "templates"
        if (own / "Dockerfile.j2").is_file():
            return own
        return Path(__file__).resolve().parent.parent / "templates"

    def map_base(self, image: str) -> str:
        return self.config.bases.get(image, image)

    def _path(self, value: str) -> Path:
        p = Path(os.path.expanduser(value))
        return p if p.is_absolute() else self.root / p


def find_root(start: Path) -> Path:
    start = start.resolve()
    for d in [start, *start.parents]:
        if (d / CONFIG_FILE).is_file() or (d / "images").is_dir():
            return d
    return start


def load_project(root: Path | None = None) -> Project:
    if root is None:
        env = os.environ.get("IMAGEKIT_PROJECT")
        root = Path(env) if env else find_root(Path.cwd())
    root = root.resolve()
    path = root / CONFIG_FILE
    if not path.is_file():
        return Project(root, ConfigModel(), None)
    where = display_path(path)
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{where}: not valid TOML: {e}") from None
    try:
        model = ConfigModel.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        msg = "unknown key" if first["type"] == "extra_forbidden" else first["msg"]
        raise ConfigError(f"{where}: {loc}: {msg}") from None
    return Project(root, model, path)
