"""Image specs: images/<name>/image.yaml, validated by a pydantic model.

Every value that lands in a Dockerfile is checked here so that no spec can
inject an instruction. All problems in a file are reported in one run, each as
one line naming the file and the field path."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import string
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

import yaml
from packaging.requirements import InvalidRequirement, Requirement
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from . import matrix
from . import reference as ref
from .context import display_path, scan
from .errors import CompatError, SpecError

SPEC_FILE = "image.yaml"
PLATFORM_MOUNTS = ("/code", "/dataset")
MAX_FILE_BYTES = 64 << 10    # a spec or config file larger than this is refused unread
MAX_DEPTH = 32               # nesting of YAML collections
MAX_TEXT = 8192              # any one string value
MAX_NAME = 128
MAX_ITEMS = 512              # entries in any one list or mapping

# Patterns with no nested quantifiers (each runs in time linear in its input);
# all anchored with \Z, which, unlike $, does not match before a final newline.
NAME_RE = re.compile(r"^[a-z0-9](?![a-z0-9._-]*[._-][._-])[a-z0-9._-]{0,127}(?<![._-])\Z")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}\Z")
APT_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]{1,127}(?:=[A-Za-z0-9.+:~-]{1,128})?\Z")
ENV_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,255}\Z")
PATH_CHARS_RE = re.compile(r"^/[A-Za-z0-9._/-]{0,4095}\Z")
REL_CHARS_RE = re.compile(r"^[A-Za-z0-9._/-]{1,4096}\Z")
VERSION_RE = re.compile(r"^[0-9]{1,6}(?:\.[0-9]{1,6}){0,3}(?:\.post[0-9]{1,6})?\Z")
PYVER_RE = re.compile(r"^3\.[0-9]{1,2}\Z")
CUDA_RE = re.compile(r"^[0-9]{1,2}\.[0-9]{1,2}\Z")
SUITE_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}\Z")
# Folders a smoke volume may not be mounted over: it would hide the system.
SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/opt/venv", "/proc", "/root",
               "/sbin", "/sys", "/usr", "/var")


class FieldProblem(ValueError):
    """A problem found below the field being validated; SUB is the rest of its
    path (e.g. a list index or a mapping key)."""

    def __init__(self, sub: tuple, message: str):
        super().__init__(message)
        self.sub = sub
        self.message = message


def _no_control(v: str) -> str:
    return ref.one_line(v)


def _one_line_everywhere(value: Any, at: tuple = ()) -> None:
    """Refuse line breaks and control characters in every string below VALUE,
    mapping keys included, and binary values (which pydantic would decode)."""
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            raise FieldProblem(at, f"longer than {MAX_TEXT} characters ({len(value)})")
        try:
            ref.one_line(value)
        except ValueError as e:
            raise FieldProblem(at, str(e)) from None
    elif isinstance(value, (bytes, bytearray)):
        raise FieldProblem(at, "binary data is not allowed; write text")
    elif isinstance(value, (dict, list, tuple)) and len(value) > MAX_ITEMS:
        raise FieldProblem(at, f"more than {MAX_ITEMS} entries ({len(value)})")
    elif isinstance(value, dict):
        for k, v in value.items():
            if isinstance(k, str):
                try:
                    ref.one_line(k)
                except ValueError as e:
                    raise FieldProblem(at, f"key {ref.short(k)}: {e}") from None
            _one_line_everywhere(v, at + (k,))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _one_line_everywhere(v, at + (i,))


def _pattern(rx: re.Pattern, what: str):
    def check(v: str) -> str:
        _no_control(v)
        if not rx.match(v):
            raise ValueError(f"{ref.short(v)} is not {what}")
        return v
    return AfterValidator(check)


def _checked(fn):
    def check(v: str) -> str:
        _no_control(v)
        return fn(v)
    return AfterValidator(check)


def _pip_requirement(v: str) -> str:
    _no_control(v)
    if "&&" in v or "`" in v or "$(" in v or "||" in v:
        raise ValueError(f"{ref.short(v)} is not a pip requirement (shell syntax is not allowed)")
    try:
        Requirement(v)
    except InvalidRequirement:
        raise ValueError(f"{ref.short(v)} is not a valid pip requirement "
                         "(e.g. 'pillow==11.0.0', 'pkg @ git+https://host/repo.git@v1')") from None
    return v


def _abs_path(v: str) -> str:
    _no_control(v)
    if not PATH_CHARS_RE.match(v) or ".." in v.split("/"):
        raise ValueError(f"{ref.short(v)} is not an absolute path of letters, digits, '._-/' "
                         "(no '..')")
    return str(PurePosixPath(v))


def _rel_dir(v: str) -> str:
    _no_control(v)
    if v.startswith("/") or not REL_CHARS_RE.match(v):
        raise ValueError(f"{ref.short(v)} must be a relative path (from the spec's folder) of "
                         "letters, digits, '._-/'")
    return str(PurePosixPath(v))


def _env_value(v: Any) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if v is None:
        raise ValueError("has no value; write '' for an empty one")
    if not isinstance(v, (str, int, float)):
        raise ValueError(f"must be a single value (text, number or true/false), not a "
                         f"{'list' if isinstance(v, (list, tuple)) else type(v).__name__}")
    return _no_control(str(v))


def _placeholders(v: str, required: bool) -> str:
    """V may name {steps} and nothing else; REQUIRED: it must."""
    try:
        parts = list(string.Formatter().parse(v))
    except ValueError as e:
        raise ValueError(f"{ref.short(v)}: {e} (the only placeholder is {{steps}}; write '{{{{' "
                         "and '}}' for a literal brace)") from None
    found = False
    for _, field_name, spec, conv in parts:
        if field_name is None:
            continue
        if field_name != "steps" or spec or conv:
            whole = "{" + field_name + (f"!{conv}" if conv else "") + (f":{spec}" if spec else "") + "}"
            raise ValueError(f"{ref.short(v)}: {whole} is not a placeholder; the only one is {{steps}}")
        found = True
    if required and not found:
        raise ValueError(f"{ref.short(v)} must hold {{steps}} (where the step count goes, "
                         "e.g. '--steps {steps}')")
    return v


def _shell_words(v: str) -> list[str]:
    try:
        return shlex.split(v)
    except ValueError as e:
        raise ValueError(f"{ref.short(v)} is not valid shell words: {e}") from None


def _steps_args(v: str) -> str:
    _no_control(v)
    _placeholders(v, required=bool(v))
    _shell_words(v.format(steps=1) if v else v)
    return v


def _resume_log(v: str) -> str:
    _no_control(v)
    return _placeholders(v, required=False)


def _command(v: str) -> str:
    _no_control(v)
    _shell_words(v)
    return v


def _expect(v: str) -> str:
    _no_control(v)
    if not v.strip():
        raise ValueError("an expected file pattern cannot be empty")
    if v.startswith("/") or ".." in v.split("/"):
        raise ValueError(f"{ref.short(v)} must be relative to smoke.output_dir, with no '..'")
    return v


def _host_path(v: str) -> str:
    """A path on this machine (config): any characters but line breaks and
    controls, not empty."""
    _no_control(v)
    if not v.strip():
        raise ValueError("cannot be empty")
    return v


Name = Annotated[str, _pattern(NAME_RE, f"a lowercase name like 'ocr-cpu' (a-z, 0-9, single '.', '_', "
                                        f"'-' between them, at most {MAX_NAME})")]
Tag = Annotated[str, _pattern(TAG_RE, "a Docker tag (letters, digits, '_.-', at most 128, "
                                       "not starting with '.' or '-')")]
AptPackage = Annotated[str, _pattern(APT_RE, "a Debian package name (optionally name=version)")]
PipRequirement = Annotated[str, AfterValidator(_pip_requirement)]
AbsPath = Annotated[str, AfterValidator(_abs_path)]
RelDir = Annotated[str, AfterValidator(_rel_dir)]
EnvName = Annotated[str, _pattern(ENV_RE, "an environment variable name")]
EnvValue = Annotated[Any, AfterValidator(_env_value)]
ImageRef = Annotated[str, _checked(ref.image_reference)]
RegistryRef = Annotated[str, _checked(ref.registry)]
Url = Annotated[str, _checked(ref.url)]
HostPort = Annotated[str, _checked(ref.host_port)]
HostPath = Annotated[str, AfterValidator(_host_path)]
Suite = Annotated[str, _pattern(SUITE_RE, "a Debian suite name like 'bookworm'")]
Text = Annotated[str, AfterValidator(_no_control)]
FwVersion = Annotated[str, _pattern(VERSION_RE, "a version like '2.21.0'")]
PyVersion = Annotated[str, _pattern(PYVER_RE, "a Python version like '3.11'")]
CudaVersion = Annotated[str, _pattern(CUDA_RE, "a CUDA version like '12.5'")]


class Strict(BaseModel):
    """Unknown fields refused, values frozen, and no string anywhere in a
    document may break a line (whatever the field's own type says)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _one_line(cls, v: Any) -> Any:
        _one_line_everywhere(v)
        return v


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
    # the variable(s) a platform passes its URL prefix in; with several, the
    # first one set wins (one image for several platforms)
    base_url_env: EnvName | list[EnvName] = "JUPYTER_BASE_URL"
    notebook_dir: AbsPath = "/workspace"

    @property
    def base_url_envs(self) -> list[str]:
        v = self.base_url_env
        return [v] if isinstance(v, str) else list(v) or ["JUPYTER_BASE_URL"]


class TrainSpec(Strict):
    command: Annotated[str, AfterValidator(_command)] = Field(min_length=1)
    # one job on several nodes: the command reads the platform's rendezvous variables
    # (MASTER_ADDR, MASTER_PORT, WORLD_SIZE, RANK; TF_CONFIG) and smoke --nodes N runs it so
    distributed: bool = False


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


class SmokeSpec(Strict):
    steps: int = Field(10, ge=1, le=100000)
    steps_args: Annotated[str, AfterValidator(_steps_args)] = "--steps {steps}"
    resume: bool = False
    resume_args: Annotated[str, AfterValidator(_command)] = ""
    resume_log: Annotated[str, AfterValidator(_resume_log)] = "resumed from step {steps}"
    expect: list[Annotated[str, AfterValidator(_expect)]] = []
    timeout: int = Field(600, ge=5, le=86400)
    data_dir: AbsPath = "/data/data"
    output_dir: AbsPath = "/data/output"
    framework_check: bool = True

    @model_validator(mode="after")
    def _dirs(self):
        for field_name in ("data_dir", "output_dir"):
            d = getattr(self, field_name)
            if d == "/":
                raise FieldProblem((field_name,), "a smoke volume cannot be mounted at /")
            for system in SYSTEM_DIRS:
                if _inside(d, system):
                    raise FieldProblem((field_name,), f"{d} is a system folder ({system}); a volume "
                                       "there would hide the image's own files")
        a, b = self.data_dir, self.output_dir
        if a == b:
            raise FieldProblem(("output_dir",), f"{b} is also data_dir; they must be two folders")
        if _inside(a, b) or _inside(b, a):
            raise FieldProblem(("output_dir",), f"{b} and data_dir {a} are nested; they must be "
                               "two separate folders")
        if self.resume and not self.resume_log.strip():
            raise FieldProblem(("resume_log",), "cannot be empty when resume is true (it is what "
                               "proves the second run resumed)")
        return self


class PushSpec(Strict):
    repository: Name | None = None
    registries: list[RegistryRef] = []


class ImageSpec(Strict):
    name: Name
    description: Text = ""
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

    @field_validator("tags")
    @classmethod
    def _unique_tags(cls, tags: list[str]) -> list[str]:
        seen = set()
        for i, t in enumerate(tags):
            if t in seen:
                raise FieldProblem((i,), f"{t!r} is listed twice")
            seen.add(t)
        return tags

    @model_validator(mode="after")
    def _rules(self):
        if self.parent is None and self.framework is None:
            raise ValueError("framework: required (or name a catalog parent: with 'parent:')")
        if self.parent is not None and self.parent == self.name:
            raise ValueError("parent: an image cannot be its own parent")
        if self.cuda is not None and self.device == Device.cpu:
            raise ValueError("cuda: only a gpu image has a CUDA version (device is cpu)")
        if self.train is not None and not self.smoke.steps_args:
            raise FieldProblem(("smoke", "steps_args"), "must hold {steps} (where the step count "
                               "goes, e.g. '--steps {steps}')")
        if self.code is not None:
            s = self.smoke
            for where, d in (("smoke.data_dir", s.data_dir), ("smoke.output_dir", s.output_dir)):
                if _inside(self.code.dest, d):
                    raise FieldProblem(tuple(where.split(".")), f"{d} holds code.dest "
                                       f"{self.code.dest}; the smoke volume would hide the code")
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


def _field_names(model: type[BaseModel]) -> list[str]:
    return list(model.model_fields)


def _model_at(loc: tuple, root: type[BaseModel] = None) -> type[BaseModel] | None:
    model: type[BaseModel] = root or ImageSpec
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


def _loc_text(part: Any) -> str:
    text = part if isinstance(part, str) else str(part)
    text = ref.printable(text)
    return text if len(text) <= 60 else text[:60] + "..."


MAX_PROBLEMS = 30


def format_errors(where: str, err: ValidationError, root: type[BaseModel] | None = None) -> list[str]:
    """One line per problem: FILE: FIELD.PATH: what is wrong."""
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        problem = (e.get("ctx") or {}).get("error")
        if isinstance(problem, FieldProblem):
            loc += problem.sub
            msg = problem.message
        else:
            msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            parent = _model_at(loc[:-1], root)
            allowed = ", ".join(_field_names(parent)) if parent else ""
            msg = f"unknown field (allowed: {allowed})"
        elif e["type"] == "missing":
            msg = "required field is missing"
        elif e["type"] == "enum":
            msg = f"{ref.short(str(e.get('input')))} is not allowed; {msg[0].lower()}{msg[1:]}"
        path = ".".join(_loc_text(p) for p in loc).replace(".[key]", " (the key)") or "(top level)"
        if path == "(top level)" and ":" in msg.split(" ")[0]:
            line = f"{where}: {msg}"
        else:
            line = f"{where}: {path}: {msg}"
        lines.append(ref.printable(line))
    if len(lines) > MAX_PROBLEMS:
        lines = lines[:MAX_PROBLEMS] + [f"{where}: ... and {len(lines) - MAX_PROBLEMS} more problems"]
    return lines


_format_errors = format_errors


def problems_error(cls: type, where: str, lines: list[str]):
    """One error for the problems of one file: the line itself when there is
    one, else a count with every line as a detail."""
    return cls(lines[0] if len(lines) == 1 else f"{where}: {len(lines)} problems",
               problems=lines if len(lines) > 1 else [])


_PARSER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when there, ~8x faster


def _refuse_structure(text: str) -> None:
    """Read the YAML event stream once and refuse what a spec never needs and
    an attacker uses: anchors and aliases (an alias bomb expands 700 bytes into
    gigabytes) and nesting deeper than MAX_DEPTH."""
    depth = 0
    for ev in yaml.parse(text, Loader=_PARSER):
        if isinstance(ev, yaml.AliasEvent) or getattr(ev, "anchor", None) is not None:
            what = "aliases (*name)" if isinstance(ev, yaml.AliasEvent) else "anchors (&name)"
            raise yaml.MarkedYAMLError(None, None, f"{what} are not allowed; write the value out",
                                       ev.start_mark)
        if isinstance(ev, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise yaml.MarkedYAMLError(None, None, f"nested deeper than {MAX_DEPTH} levels",
                                           ev.start_mark)
        elif isinstance(ev, yaml.CollectionEndEvent):
            depth -= 1


class _StrictLoader(_PARSER):
    """A safe loader that refuses duplicate keys (naming the key and both lines;
    the last one would silently win) and merge keys."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise yaml.constructor.ConstructorError(
                        None, None, "merge keys (<<) are not allowed; write the fields out",
                        key_node.start_mark)
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:
                    continue  # unhashable: the base class reports it
                if first is not None:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"duplicate key {ref.short(str(key))} (first on line "
                        f"{first + 1})", key_node.start_mark)
                seen[key] = key_node.start_mark.line
        return super().construct_mapping(node, deep=deep)


def read_text_file(path: Path, where: str, error: type) -> str:
    """A small UTF-8 text file, or ERROR with one line saying why not."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise error(f"{where}: {size} bytes; a spec or config file is at most "
                        f"{MAX_FILE_BYTES} bytes")
        data = path.read_bytes()
    except OSError as e:
        raise error(f"{where}: cannot read: {e.strerror or e}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise error(f"{where}: not UTF-8 text (byte 0x{data[e.start]:02x} on line {line}); "
                    "save it as UTF-8") from None


def parse_yaml(text: str, where: str) -> Any:
    try:
        _refuse_structure(text)
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a safe loader
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        at = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise SpecError(ref.printable(f"{where}: not valid YAML{at}: {e.problem or e.context}")) \
            from None
    except yaml.reader.ReaderError as e:
        ch = chr(e.character) if isinstance(e.character, int) else str(e.character)
        raise SpecError(f"{where}: not valid YAML: character {ref.char_name(ch)} is not allowed "
                        f"(at character {e.position + 1})") from None
    except yaml.YAMLError as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise SpecError(ref.printable(f"{where}: not valid YAML: {first}")) from None
    except (ValueError, OverflowError, RecursionError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        if "integer string conversion" in first:
            first = "a number has too many digits"
        raise SpecError(ref.printable(f"{where}: not valid YAML: {first}")) from None


def load_spec(path: Path) -> Spec:
    where = display_path(path)
    try:
        is_file = path.is_file()
    except OSError as e:
        raise SpecError(f"{where}: cannot read: {e.strerror or e}") from None
    if not is_file:
        raise SpecError(f"{where}: no such spec file")
    data = parse_yaml(read_text_file(path, where, SpecError), where)
    if not isinstance(data, dict):
        raise SpecError(f"{where}: must be a mapping of fields (name, framework, ...)")
    try:
        model = ImageSpec.model_validate(data)
    except ValidationError as e:
        raise problems_error(SpecError, where, _format_errors(where, e)) from None
    if model.name != path.parent.name:
        raise SpecError(ref.printable(f"{where}: name: {model.name!r} must match its folder "
                                      f"name {ref.short(path.parent.name)}"))
    spec = Spec(model, path)
    if spec.code_dir is not None:
        _check_code_dir(spec, where)
    return spec


def _check_code_dir(spec: Spec, where: str) -> None:
    m, code_dir = spec.model, spec.code_dir
    catalog = spec.path.parent.parent
    try:
        inside = Path(os.path.realpath(code_dir)).is_relative_to(os.path.realpath(catalog))
        is_dir = code_dir.is_dir()
    except OSError as e:
        raise SpecError(f"{where}: code.src: cannot read {display_path(code_dir)}: "
                        f"{e.strerror or e}") from None
    if not inside:
        raise SpecError(f"{where}: code.src: {m.code.src!r} leaves the catalog folder "
                        f"{display_path(catalog)}")
    if not is_dir:
        raise SpecError(f"{where}: code.src: folder {display_path(code_dir)} does not exist")
    try:
        scan(code_dir)
    except SpecError as e:
        raise SpecError(ref.printable(f"{where}: code.src: {e.message}")) from None


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

    def has(self, name: str) -> bool:
        """Whether NAME is an image of this catalog (False for any string that
        is not an image name, however long or odd)."""
        if not NAME_RE.match(name):
            return False
        try:
            return self.path(name).is_file()
        except OSError:
            return False

    def get(self, name: str) -> Spec:
        if name not in self._cache:
            if not self.has(name):
                known = ", ".join(self.names()) or "none"
                what = "no image named" if NAME_RE.match(name) else "not an image name:"
                raise SpecError(ref.printable(f"{what} {ref.short(name)} in "
                                              f"{display_path(self.dir)} (known: {known})"))
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

    def install_steps(self) -> dict[str, list[str]]:
        """The requirements each RUN step that installs Python packages gives
        the installer ("framework", "jupyter", "pip": render.INSTALL_STEPS),
        only the steps this image's Dockerfile has; each repeats the framework's
        pins, so nothing replaces them."""
        m = self.spec.model
        base = list(self.variant.pip)
        steps = {"framework": base if self.parent is None else [],
                 "jupyter": base + matrix.jupyter_pip() if m.jupyter.enabled else [],
                 "pip": base + list(m.pip) if m.pip else []}
        return {step: list(dict.fromkeys(reqs)) for step, reqs in steps.items() if reqs}


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
        var = matrix.variant(fw, ver, dev, python, m.cuda, own_base=m.base is not None,
                             base_image=m.base)
    except CompatError as e:
        raise CompatError(f"{where}: {e}") from None
    return Plan(spec, fw, ver, dev, python, var, base_image=m.base or var.base_image, parent=None)
