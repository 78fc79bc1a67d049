"""Image specs: images/<name>/image.yaml, validated by a pydantic model.

Every value that lands in a Dockerfile is checked here so that no spec can
inject an instruction. All problems in a file are reported in one run, each as
one line naming the file and the field path."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, model_validator

from . import matrix
from .errors import CompatError, SpecError

SPEC_FILE = "image.yaml"
PLATFORM_MOUNTS = ("/code", "/dataset")

NAME_RE = re.compile(r"^[a-z0-9]+(?:[._-][a-z0-9]+)*$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
APT_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+(?:=[A-Za-z0-9.+:~-]+)?$")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PATH_RE = re.compile(r"^/(?:[A-Za-z0-9._-]+/?)*$")
IMAGE_RE = re.compile(r"^[a-z0-9][a-z0-9._/:-]*(?:@sha256:[a-f0-9]{64})?$")
VERSION_RE = re.compile(r"^[0-9]+(?:\.[0-9]+){0,3}(?:\.post[0-9]+)?$")
PYVER_RE = re.compile(r"^3\.[0-9]{1,2}$")
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f]")


def _no_control(v: str) -> str:
    if CONTROL_RE.search(v):
        raise ValueError("must not contain newlines or control characters")
    return v


def _pattern(rx: re.Pattern, what: str):
    def check(v: str) -> str:
        _no_control(v)
        if not rx.match(v):
            raise ValueError(f"{v!r} is not {what}")
        return v
    return AfterValidator(check)


def _pip_requirement(v: str) -> str:
    _no_control(v)
    if "&&" in v or "`" in v or "$(" in v or "||" in v:
        raise ValueError(f"{v!r} is not a pip requirement (shell syntax is not allowed)")
    try:
        Requirement(v)
    except InvalidRequirement:
        raise ValueError(f"{v!r} is not a valid pip requirement "
                         "(e.g. 'pillow==11.0.0', 'pkg @ git+https://host/repo.git@v1')") from None
    return v


def _abs_path(v: str) -> str:
    _no_control(v)
    if not PATH_RE.match(v) or ".." in PurePosixPath(v).parts:
        raise ValueError(f"{v!r} is not an absolute path of letters, digits, '._-/'")
    return str(PurePosixPath(v))


def _rel_dir(v: str) -> str:
    _no_control(v)
    p = PurePosixPath(v)
    if p.is_absolute() or not re.match(r"^[A-Za-z0-9._/-]+$", v):
        raise ValueError(f"{v!r} must be a relative path (from the spec's folder)")
    return str(p)


def _env_value(v: Any) -> str:
    if isinstance(v, bool):
        v = "1" if v else "0"
    v = str(v)
    return _no_control(v)


Name = Annotated[str, _pattern(NAME_RE, "a lowercase name like 'ocr-cpu' (a-z, 0-9, '.', '_', '-')")]
Tag = Annotated[str, _pattern(TAG_RE, "a Docker tag (letters, digits, '_.-', at most 128, "
                                       "not starting with '.' or '-')")]
AptPackage = Annotated[str, _pattern(APT_RE, "a Debian package name (optionally name=version)")]
PipRequirement = Annotated[str, AfterValidator(_pip_requirement)]
AbsPath = Annotated[str, AfterValidator(_abs_path)]
RelDir = Annotated[str, AfterValidator(_rel_dir)]
EnvName = Annotated[str, _pattern(ENV_RE, "an environment variable name")]
EnvValue = Annotated[Any, AfterValidator(_env_value)]
ImageRef = Annotated[str, _pattern(IMAGE_RE, "an image reference like 'python:3.11-slim-bookworm'")]
FwVersion = Annotated[str, _pattern(VERSION_RE, "a version like '2.21.0'")]
PyVersion = Annotated[str, _pattern(PYVER_RE, "a Python version like '3.11'")]
CudaVersion = Annotated[str, _pattern(re.compile(r"^[0-9]{1,2}\.[0-9]{1,2}$"), "a CUDA version like '12.5'")]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Framework(str, Enum):
    tensorflow = "tensorflow"
    pytorch = "pytorch"
    mxnet = "mxnet"


class Device(str, Enum):
    cpu = "cpu"
    gpu = "gpu"


class FrameworkSpec(Strict):
    name: Framework
    version: FwVersion


class CodeSpec(Strict):
    src: RelDir = "code"
    dest: AbsPath = "/opt/app"


class JupyterSpec(Strict):
    enabled: bool = False
    port: int = Field(8888, ge=1024, le=65535)
    base_url_env: EnvName = "JUPYTER_BASE_URL"
    notebook_dir: AbsPath = "/workspace"


class TrainSpec(Strict):
    command: str = Field(min_length=1)

    @model_validator(mode="after")
    def _parse(self):
        _no_control(self.command)
        try:
            shlex.split(self.command)
        except ValueError as e:
            raise ValueError(f"command is not valid shell words: {e}") from None
        return self


class SmokeSpec(Strict):
    steps: int = Field(10, ge=1, le=100000)
    steps_args: str = "--steps {steps}"
    resume: bool = False
    resume_args: str = ""
    resume_log: str = "resumed from step {steps}"
    expect: list[str] = []
    timeout: int = Field(600, ge=5, le=86400)
    data_dir: AbsPath = "/data/data"
    output_dir: AbsPath = "/data/output"
    framework_check: bool = True


class PushSpec(Strict):
    repository: Name | None = None
    registries: list[str] = []


class ImageSpec(Strict):
    name: Name
    description: str = ""
    parent: Name | None = None
    framework: FrameworkSpec | None = None
    device: Device = Device.cpu
    python: PyVersion | None = None
    cuda: CudaVersion | None = None
    base: ImageRef | None = None
    apt: list[AptPackage] = []
    pip: list[PipRequirement] = []
    code: CodeSpec | None = None
    workdir: AbsPath | None = None
    env: dict[EnvName, EnvValue] = {}
    jupyter: JupyterSpec = JupyterSpec()
    train: TrainSpec | None = None
    smoke: SmokeSpec = SmokeSpec()
    tags: list[Tag] = Field(default_factory=lambda: ["latest"], min_length=1)
    push: PushSpec = PushSpec()

    @model_validator(mode="after")
    def _rules(self):
        if self.parent is None and self.framework is None:
            raise ValueError("framework: required (or name a catalog parent: with 'parent:')")
        if self.parent is not None and self.parent == self.name:
            raise ValueError("parent: an image cannot be its own parent")
        if self.cuda is not None and self.device == Device.cpu:
            raise ValueError("cuda: only a gpu image has a CUDA version (device is cpu)")
        if self.jupyter.enabled:
            # the notebook dir may be a platform mount (a Detectron2 workbench serves /code)
            used = {"code.dest": self.code.dest if self.code else None,
                    "workdir": self.workdir}
            for where, path in used.items():
                for mount in PLATFORM_MOUNTS:
                    if path and (path == mount or path.startswith(mount + "/")):
                        raise ValueError(f"{where}: {path} is under {mount}, which the platform "
                                         "mounts over notebook images; choose another path")
        return self


@dataclass(frozen=True)
class Spec:
    """A validated spec and where it came from."""

    model: ImageSpec
    path: Path

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def dir(self) -> Path:
        return self.path.parent

    @property
    def code_dir(self) -> Path | None:
        return self.dir / self.model.code.src if self.model.code else None

    def digest(self) -> str:
        data = self.model.model_dump(mode="json")
        return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()

    def image_ref(self, tag: str | None = None) -> str:
        return f"{self.name}:{tag or self.model.tags[0]}"


def display_path(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def _field_names(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _model_at(loc: tuple) -> type[BaseModel] | None:
    model: type[BaseModel] = ImageSpec
    for part in loc:
        f = model.model_fields.get(str(part)) if isinstance(part, str) else None
        if f is None:
            return model
        ann = f.annotation
        nested = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)
                  and issubclass(a, BaseModel)]
        if not nested:
            return model
        model = nested[0]
    return model


def _format_errors(where: str, err: ValidationError) -> list[str]:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        path = ".".join(str(p) for p in loc) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1])
            allowed = ", ".join(_field_names(parent)) if parent else ""
            msg = f"unknown field (allowed: {allowed})"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "enum":
            msg = f"{e.get('input')!r} is not allowed; {msg[0].lower()}{msg[1:]}"
        if path == "(top level)" and ":" in msg.split(" ")[0]:
            lines.append(f"{where}: {msg}")
        else:
            lines.append(f"{where}: {path}: {msg}")
    return lines


def load_spec(path: Path) -> Spec:
    where = display_path(path)
    if not path.is_file():
        raise SpecError(f"{where}: no such spec file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise SpecError(f"{where}: not valid YAML{at}: {getattr(e, 'problem', e)}") from None
    except OSError as e:
        raise SpecError(f"{where}: cannot read: {e.strerror}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{where}: must be a mapping of fields (name, framework, ...)")
    try:
        model = ImageSpec.model_validate(data)
    except ValidationError as e:
        lines = _format_errors(where, e)
        raise SpecError(lines[0] if len(lines) == 1 else f"{where}: {len(lines)} problems",
                        details=lines if len(lines) > 1 else []) from None
    if model.name != path.parent.name:
        raise SpecError(f"{where}: name: {model.name!r} must match its folder "
                        f"name {path.parent.name!r}")
    spec = Spec(model, path)
    if spec.code_dir is not None and not spec.code_dir.resolve().is_relative_to(
            path.parent.parent.resolve()):
        raise SpecError(f"{where}: code.src: {model.code.src!r} leaves the catalog folder "
                        f"{display_path(path.parent.parent)}")
    if spec.code_dir is not None and not spec.code_dir.is_dir():
        raise SpecError(f"{where}: code.src: folder {display_path(spec.code_dir)} does not exist")
    return spec


class Catalog:
    """The specs of a project: <root>/images/<name>/image.yaml."""

    def __init__(self, images_dir: Path):
        self.dir = images_dir
        self._cache: dict[str, Spec] = {}

    def names(self) -> list[str]:
        if not self.dir.is_dir():
            return []
        return sorted(p.parent.name for p in self.dir.glob(f"*/{SPEC_FILE}"))

    def path(self, name: str) -> Path:
        return self.dir / name / SPEC_FILE

    def get(self, name: str) -> Spec:
        if name not in self._cache:
            if not self.path(name).is_file():
                known = ", ".join(self.names()) or "none"
                raise SpecError(f"no image named {name!r} in {display_path(self.dir)} "
                                f"(known: {known})")
            self._cache[name] = load_spec(self.path(name))
        return self._cache[name]

    def resolve(self, name: str) -> Plan:
        return resolve(self.get(name), self)


@dataclass(frozen=True)
class Plan:
    """A spec resolved against the matrix (and its parent): everything the
    renderer needs, with the defaults filled in."""

    spec: Spec
    framework: str
    version: str
    device: str
    python: str
    variant: matrix.Variant
    base_image: str
    parent: Plan | None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def cuda(self) -> str | None:
        return self.variant.cuda

    def chain(self) -> list[Plan]:
        """Ancestors first, this plan last."""
        return (self.parent.chain() if self.parent else []) + [self]


def resolve(spec: Spec, catalog: Catalog | None = None, _seen: tuple = ()) -> Plan:
    m = spec.model
    where = display_path(spec.path)
    parent_plan = None
    if m.parent:
        if catalog is None:
            raise SpecError(f"{where}: parent: needs the catalog to resolve {m.parent!r}")
        if m.parent in _seen:
            raise SpecError(f"{where}: parent: cycle {' -> '.join(_seen + (m.name, m.parent))}")
        try:
            parent_spec = catalog.get(m.parent)
        except SpecError as e:
            raise SpecError(f"{where}: parent: {e}") from None
        parent_plan = resolve(parent_spec, catalog, _seen + (m.name,))
        pf = parent_plan
        for field_name, mine, theirs in (
            ("framework", m.framework and (m.framework.name.value, m.framework.version),
             (pf.framework, pf.version)),
            ("device", m.device.value if "device" in m.model_fields_set else None, pf.device),
            ("python", m.python, pf.python),
            ("cuda", m.cuda, pf.cuda),
        ):
            if mine is not None and mine != theirs:
                raise CompatError(f"{where}: {field_name}: {mine!r} differs from parent "
                                  f"{m.parent!r} ({theirs!r}); a child inherits it")
        if m.base:
            raise SpecError(f"{where}: base: a child image is built FROM its parent; "
                            "remove base or parent")
        return Plan(spec, pf.framework, pf.version, pf.device, pf.python, pf.variant,
                    base_image=pf.spec.image_ref(), parent=parent_plan)
    fw, ver, dev = m.framework.name.value, m.framework.version, m.device.value
    python = m.python or matrix.default_python(fw, ver, dev)
    try:
        var = matrix.variant(fw, ver, dev, python, m.cuda, own_base=m.base is not None)
    except CompatError as e:
        raise CompatError(f"{where}: {e}") from None
    return Plan(spec, fw, ver, dev, python, var, base_image=m.base or var.base_image, parent=None)
