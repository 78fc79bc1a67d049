"""The project config file, imagekit.toml, and where a project lives.

It maps the base images that templates name to local or mirror images, and
names a wheelhouse or pip index and an apt mirror, so the same specs build on
a machine with no registry and no PyPI. With no config file at all, specs
build from the public registry, with their Python packages fetched by the
host's pip into the user's shared wheelhouse."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

import tomllib
from pydantic import Field, ValidationError

from .errors import ConfigError
from .reference import printable
from .spec import (
    AptPackage,
    Catalog,
    HostPath,
    HostPort,
    ImageRef,
    Strict,
    Suite,
    Url,
    display_path,
    format_errors,
    problems_error,
    read_text_file,
)

CONFIG_FILE = "imagekit.toml"
_PACKAGE = Path(__file__).resolve().parent
# An installed wheel carries the templates inside the package; a source
# checkout (and an editable install) has them in the repository's templates/.
BUILTIN_TEMPLATES = (_PACKAGE / "templates" if (_PACKAGE / "templates" / "Dockerfile.j2").is_file()
                     else _PACKAGE.parent / "templates")


def cache_dir() -> Path:
    """imagekit's folder in the user's cache: $XDG_CACHE_HOME/imagekit, else
    ~/.cache/imagekit (a relative XDG_CACHE_HOME is ignored, as the spec says)."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "imagekit"


class _Strict(Strict):
    """Unknown keys refused; no value anywhere may break a line."""


class BaseSection(_Strict):
    image: ImageRef = "imagekit/base:bookworm"
    suite: Suite = "bookworm"
    mirror: Url = "http://deb.debian.org/debian"
    include: list[AptPackage] = ["python3", "python3-venv", "ca-certificates"]


class PipSection(_Strict):
    wheelhouse: HostPath | None = None
    port: int = Field(17311, ge=1024, le=65535)
    index_url: Url | None = None
    trusted_host: HostPort | None = None


class PlatformSection(_Strict):
    """The training platform's nodes: smoke checks GPU images against them;
    `profile`: the platform contract smoke runs under by default."""

    driver: str | None = Field(None, pattern=r"^[0-9]{2,4}(?:\.[0-9]{1,4}){0,2}$")
    gpu_arch: list[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.]{1,20}$")]] = []
    profile: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")


class BuildSection(_Strict):
    """How images are built: "auto" (BuildKit where the engine has it and
    buildx is installed, else classic), "classic", "buildkit", or the name
    of a buildx builder (`docker buildx ls`)."""

    builder: str = Field("auto", pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
    # how BuildKit compresses layers into the containerd image store (what pushes send):
    # gzip (level 1, every puller reads it) or zstd (OCI; containerd 1.5+ / Docker 23+)
    compression: Literal["gzip", "zstd"] = "gzip"


class AptSection(_Strict):
    mirror: Url | None = None


class PushSection(_Strict):
    """`imagekit push` defaults: `sbom`, attach the image's bill of materials
    in each registry (as --sbom does)."""

    sbom: bool = False


class ConfigModel(_Strict):
    bases: dict[ImageRef, ImageRef] = {}
    base: BaseSection = BaseSection()
    pip: PipSection = PipSection()
    apt: AptSection = AptSection()
    build: BuildSection = BuildSection()
    push: PushSection = PushSection()
    platform: PlatformSection = PlatformSection()
    platforms: dict = {}            # [platforms.NAME]: platform profiles (platforms.py)
    state_dir: HostPath = ".imagekit"
    templates_dir: HostPath | None = None


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
        """Where builds install Python packages from: [pip] wheelhouse, else
        the user's cache (shared by every project and clone). None when
        [pip] index_url alone says to install from that index."""
        pip = self.config.pip
        if pip.wheelhouse:
            return self._path(pip.wheelhouse)
        if pip.index_url:
            return None
        return cache_dir() / "wheelhouse"

    @property
    def templates_dir(self) -> Path:
        """The project's own templates: `templates_dir` in imagekit.toml, else
        templates/ in the project (it may hold only the files it overrides)."""
        if self.config.templates_dir:
            return self._path(self.config.templates_dir)
        return self.root / "templates"

    @property
    def template_dirs(self) -> list[Path]:
        """Where templates are looked up, file by file: the project's own
        folder first (when it exists), then the built-in templates."""
        own = self.templates_dir
        dirs = [own] if own.is_dir() and own.resolve() != BUILTIN_TEMPLATES else []
        return [*dirs, BUILTIN_TEMPLATES]

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
    text = read_text_file(path, where, ConfigError)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(printable(f"{where}: not valid TOML: {e}")) from None
    except RecursionError:
        raise ConfigError(f"{where}: not valid TOML: nested too deeply") from None
    try:
        model = ConfigModel.model_validate(data)
    except ValidationError as e:
        raise problems_error(ConfigError, where, format_errors(where, e, ConfigModel)) from None
    if model.platforms:
        from .platforms import validate_own
        model = model.model_copy(update={"platforms": validate_own(model.platforms, where)})
    return Project(root, model, path)
