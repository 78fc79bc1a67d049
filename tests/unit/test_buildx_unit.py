"""The BuildKit builder's side of the engine seam, without an engine: buildx's
--progress=rawjson decoded into build items (recorded streams of buildx 0.13,
the same objects one per line as buildx 0.15+ writes them, hostile ones), the
builder choice, the command line, and the wheel set a build mounts."""

from __future__ import annotations

import base64
import io
import json
import tarfile
from pathlib import Path

import pytest

from imagekit.engine import (
    BuildCached,
    BuildOutput,
    BuildStep,
    Buildx,
    BuildxBuilder,
    ClassicBuilder,
    EngineFacts,
    RawJson,
    choose,
)
from imagekit.engine import buildx as buildx_mod
from imagekit.errors import EngineError, EngineStreamError

HERE = Path(__file__).parent / "buildx"


def decode(lines: list[str]) -> tuple[list, RawJson]:
    d = RawJson()
    items = []
    for line in lines:
        items += d.feed(line)
    return items + d.close(), d


def recorded(name: str) -> list[str]:
    return (HERE / name).read_text().splitlines(keepends=True)


def compact(name: str) -> list[str]:
    """The same objects as buildx 0.15+ writes them: one per line."""
    dec, text, i, out = json.JSONDecoder(), (HERE / name).read_text(), 0, []
    while i < len(text):
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            break
        if text[i] != "{":
            end = text.find("\n", i)
            out.append(text[i:end + 1 if end >= 0 else len(text)])
            i = end + 1 if end >= 0 else len(text)
            continue
        obj, i = dec.raw_decode(text, i)
        out.append(json.dumps(obj) + "\n")
    return out


@pytest.mark.parametrize("form", [recorded, compact])
def test_a_recorded_build_becomes_steps_and_log_lines(form):
    items, d = decode(form("wheels-and-no-network.rawjson"))
    steps = [i for i in items if isinstance(i, BuildStep)]
    assert [(s.index, s.total) for s in steps] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert steps[0].instruction == "FROM docker.io/imagekit/base:bookworm"
    # BuildKit's flags are not part of what is shown
    assert steps[1].instruction == "RUN ls /wheels && echo step-two-output"
    assert steps[2].instruction.startswith("RUN echo hello;")
    lines = [i.line for i in items if isinstance(i, BuildOutput)]
    assert "a.whl" in lines and "step-two-output" in lines and "no network" in lines
    # a log chunk holding several lines gives each of them
    assert any(x.startswith("Traceback") for x in lines)
    assert not [i for i in items if isinstance(i, BuildCached)]     # FROM is never "cached"
    assert d.errors == [] and d.text == []
    # each step's lines come after it starts
    order = [type(i).__name__ + (f"{i.index}" if isinstance(i, BuildStep) else "") for i in items]
    assert order.index("BuildStep2") < next(k for k, i in enumerate(items)
                                            if isinstance(i, BuildOutput) and i.line == "a.whl")


@pytest.mark.parametrize("form", [recorded, compact])
def test_a_failed_step_is_named_in_buildkits_words(form):
    items, d = decode(form("failing-run.rawjson"))
    assert BuildOutput("before-fail") in items
    assert d.errors[0][0] == "RUN echo before-fail && exit 3"
    assert d.failure(1) == ('process "/bin/sh -c echo before-fail && exit 3" did not complete '
                            "successfully: exit code: 3")
    assert any(t.startswith("ERROR: failed to solve") for t in d.text)


def _obj(**kw) -> str:
    return json.dumps(kw, indent=2) + "\n"


def _pretty(obj: str) -> list[str]:
    return obj.splitlines(keepends=True)


def test_cached_steps_partial_lines_and_buildx_own_error():
    run = "sha256:" + "a" * 64
    frm = "sha256:" + "b" * 64
    lines = _pretty(_obj(vertexes=[{"digest": frm, "name": "[1/3] FROM docker.io/x",
                                    "started": "t", "completed": "t", "cached": True},
                                   {"digest": run, "name": "[2/3] RUN --network=none make",
                                    "started": "t", "completed": "t", "cached": True}]))
    log = "sha256:" + "c" * 64
    lines += _pretty(_obj(vertexes=[{"digest": log, "name": "[3/3] RUN make test",
                                     "started": "t"}]))
    for chunk in (b"par", b"tial\nsecond line\r\nthi", b"rd"):
        lines += _pretty(_obj(logs=[{"vertex": log, "stream": 1,
                                     "data": base64.b64encode(chunk).decode()}]))
    lines += ["ERROR: failed to solve: something buildx says itself\n"]
    items, d = decode(lines)
    assert items == [BuildStep(1, 3, "FROM docker.io/x"), BuildStep(2, 3, "RUN make"),
                     BuildCached(), BuildStep(3, 3, "RUN make test"), BuildOutput("partial"),
                     BuildOutput("second line"), BuildOutput("third")]
    assert d.failure(1) == "failed to solve: something buildx says itself"
    assert RawJson().failure(7) == "docker buildx build exited 7"


def test_hostile_progress_is_bounded(monkeypatch):
    """An object that never ends is dropped past the limit, not kept in memory;
    garbage and wrong types are skipped."""
    monkeypatch.setattr(buildx_mod, "MAX_OBJECT", 10_000)
    d = RawJson()
    assert d.feed("{\n") == []
    for _ in range(200):
        d.feed('  "x": "' + "y" * 100 + '",\n')
    assert d._size <= 10_000 and any("over 64 MiB" in t for t in d.text)
    assert d.feed('{"vertexes": [1, "a", {"name": 5}], "logs": [{"data": "!!!"}, 3]}\n') == []
    assert d.feed('{"vertexes": "nope"}\n') == []


class _Engine:
    def __init__(self, buildkit=True, version="26.1.5"):
        self._facts = EngineFacts(where="unix:///var/run/docker.sock", server_version=version,
                                  buildkit=buildkit)
        self.where = self._facts.where
        self.context = ""

    def facts(self):
        return self._facts


WORKS = Buildx("0.13.1", "/usr/libexec/docker/cli-plugins/docker-buildx", True)
MISSING = Buildx(problem="'buildx' is not a docker command")


def test_the_builder_choice():
    e = _Engine()
    b = choose(e, "auto", buildx=WORKS)
    assert isinstance(b, BuildxBuilder) and b.kind == "buildkit" and b.engine is e
    assert "buildx 0.13.1" in b.reason
    b = choose(e, "auto", buildx=MISSING)
    assert isinstance(b, ClassicBuilder) and "no buildx plugin" in b.reason
    old = _Engine(buildkit=False, version="20.10.24")
    b = choose(old, "auto", buildx=WORKS)
    assert isinstance(b, ClassicBuilder) and "20.10.24 has no BuildKit" in b.reason
    assert isinstance(choose(e, "classic", buildx=WORKS), ClassicBuilder)
    with pytest.raises(EngineError, match="--builder buildkit: no buildx plugin"):
        choose(e, "buildkit", buildx=MISSING)
    with pytest.raises(EngineError, match="has no BuildKit"):
        choose(old, "buildkit", buildx=WORKS)


def test_a_named_builder_is_asked_for(monkeypatch):
    e = _Engine()
    monkeypatch.setattr(buildx_mod, "inspect_builder",
                        lambda name: buildx_mod.BuilderInfo(name, "docker-container", "unix://x"))
    b = choose(e, "ci", buildx=WORKS)
    assert b.builder == "ci" and b.load and b.engine is e and "loaded here" in b.reason

    def none(name):
        raise EngineError(f"no buildx builder {name!r} (ERROR: no builder found); "
                          "`docker buildx ls` lists them")
    monkeypatch.setattr(buildx_mod, "inspect_builder", none)
    with pytest.raises(EngineError, match="no buildx builder 'nope'"):
        choose(e, "nope", buildx=WORKS)


def test_the_command_line(tmp_path):
    b = BuildxBuilder(_Engine(), builder="far")
    cmd = b.command(tmp_path / "ctx", "x:1", tmp_path / "m.json", nocache=True,
                    contexts={"wheels": tmp_path / "w"}, out=None)
    assert cmd[1:5] == ["buildx", "build", "--progress=rawjson", "--provenance=false"]
    assert ["--builder", "far"] == cmd[cmd.index("--builder"):cmd.index("--builder") + 2]
    assert f"wheels={tmp_path / 'w'}" in cmd and "--no-cache" in cmd and "--load" in cmd
    assert cmd[-1] == str(tmp_path / "ctx")
    cmd = BuildxBuilder(_Engine(), load=True).command(
        tmp_path / "ctx", "x:1", tmp_path / "m.json", nocache=False, contexts={},
        out=tmp_path / "i.tar")
    assert "--builder" not in cmd and "--load" not in cmd
    assert f"type=docker,dest={tmp_path / 'i.tar'}" in cmd


def test_a_failing_buildx_is_one_error(tmp_path, monkeypatch):
    """The builder runs the buildx it is given: here a stand-in script that
    prints a recorded failing stream and exits 1."""
    script = tmp_path / "docker"
    script.write_text("#!/bin/sh\ncat " + str(HERE / "failing-run.rawjson") + " >&2\nexit 1\n")
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}:/usr/bin:/bin")
    ctx = io.BytesIO()
    with tarfile.open(fileobj=ctx, mode="w") as tar:
        data = b"FROM scratch\n"
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    ctx.seek(0)
    items = []
    with pytest.raises(EngineStreamError, match="exit code: 3"):
        for item in BuildxBuilder(_Engine()).build(ctx, "x:1"):
            items.append(item)
    assert BuildOutput("before-fail") in items


@pytest.mark.parametrize("key,value", [("builder", "no such;builder"), ("compression", "lz4")])
def test_build_section_in_imagekit_toml_is_validated(project, key, value):
    cfg = project.root / "imagekit.toml"
    project.add("x", {"framework": {"name": "pytorch", "version": "2.13.0"}})
    text = cfg.read_text()
    cfg.write_text(f'[build]\n{key} = "{value}"\n' + text)
    r = project.run("render", "x")
    assert r.code == 3 and f"build.{key}" in r.stderr and "Traceback" not in r.output
    assert len(r.stderr.strip().splitlines()) == 1
    if key != "builder":
        return
    cfg.write_text('[build]\nbuilder = "classic"\n' + text)
    r = project.run("render", "x")
    assert r.code == 0 and "127.0.0.1" in r.stdout and "--network=none" not in r.stdout
    r = project.run("render", "x", "--builder", "buildkit")
    assert r.code == 0 and "--find-links /wheels" in r.stdout


def test_registry_cache_flags_and_refs(tmp_path):
    from imagekit.build import cache_ref
    assert cache_ref("", "ocr") == ""
    assert cache_ref("reg:5000/team/cache", "ocr-cpu") == "reg:5000/team/cache:ocr-cpu"
    assert cache_ref("reg:5000/team/cache:mine", "ocr-cpu") == "reg:5000/team/cache:mine"
    cmd = BuildxBuilder(_Engine()).command(
        tmp_path, "x:1", tmp_path / "m.json", nocache=False, contexts={}, out=None,
        cache_to="r/c:x", cache_from="r/c:x")
    assert cmd[cmd.index("--cache-from") + 1] == "type=registry,ref=r/c:x"
    assert cmd[cmd.index("--cache-to") + 1] == ("type=registry,ref=r/c:x,mode=max,"
                                                 "oci-mediatypes=true,image-manifest=true")
    classic = BuildxBuilder(_Engine())                       # docker driver, classic store
    assert "containerd image store" in classic.cache_export_problem()
    cd = _Engine()
    cd._facts = EngineFacts(where=cd.where, server_version="26.1.5", buildkit=True,
                            store="containerd")
    assert BuildxBuilder(cd).cache_export_problem() == ""
    assert BuildxBuilder(_Engine(), driver="docker-container").cache_export_problem() == ""


def test_a_bad_cache_reference_is_a_usage_error(project):
    project.add("x", {"framework": {"name": "pytorch", "version": "2.13.0"}})
    r = project.run("build", "x", "--cache-to", "Not A/Ref!")
    assert r.code == 2 and "--cache-to/--cache-from" in r.stderr and "Traceback" not in r.output


def test_the_containerd_store_gets_the_chosen_compression(tmp_path):
    """On the containerd store the export's compression is what pushes send:
    gzip level 1 by default, zstd with OCI media types on request; the
    classic store (which keeps layers uncompressed) loads as it is."""
    cd = _Engine()
    cd._facts = EngineFacts(where=cd.where, server_version="26.1.5", buildkit=True,
                            store="containerd")

    def output(builder) -> list[str]:
        cmd = builder.command(tmp_path, "x:1", tmp_path / "m.json", nocache=False, contexts={},
                              out=None)
        return cmd[cmd.index("--output") + 1:-1] if "--output" in cmd else \
            [c for c in cmd if c == "--load"]

    assert output(BuildxBuilder(cd)) == [
        "type=image,name=x:1,compression=gzip,compression-level=1,force-compression=true"]
    assert output(BuildxBuilder(cd, compression="zstd")) == [
        "type=image,name=x:1,compression=zstd,compression-level=3,force-compression=true,"
        "oci-mediatypes=true"]
    assert output(BuildxBuilder(_Engine(), compression="zstd")) == ["--load"]
    assert choose(cd, "auto", buildx=WORKS, compression="zstd").compression == "zstd"

