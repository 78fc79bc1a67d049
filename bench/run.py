#!/usr/bin/env python3
"""imagekit against the plain docker CLI doing the same work, both measured in one
run; writes BENCHMARKS.md. See bench/README.md.

Everything the harness makes (projects, images, registries, files) has a unique
name and is removed at the end, on failure and on Ctrl-C too."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from imagekit import fetch
from imagekit.config import load_project
from imagekit.errors import ImagekitError

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "engine" / "registry"))
import regtools as harness  # noqa: E402 - tests/engine/registry/regtools.py: registry processes, counting proxy

REPO = Path(__file__).resolve().parent.parent
PORT = 17313   # the bench projects' wheelhouse port; the catalog's own (17311) stays free
USER, PASSWORD = "imagekit-test", "not-a-real-secret-4711"   # test-only, baked into registry/
TITLES = {"save": "1. Save to one archive", "rebuild": "2. Rebuild after a code-only change",
          "all": "3. `imagekit build --all` against sequential `docker build`",
          "push": "4. Push to one and to two registries", "smoke": "5. Smoke-test overhead",
          "inspect": "6. Image efficiency", "installer": "7. Cold build: uv against pip",
          "resume": "8. Push resumed after a registry restart",
          "buildkit": "10. Cold build (and push) with BuildKit against `docker build` with pip"}
q = shlex.quote
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
ENGINE_LINE = re.compile(r"\s*(Removing intermediate container|---> |Running in )")
# The pip side of measurement 7: templates/partials/install.j2 as it is without an installer.
PIP_LINE = ('pip install --no-cache-dir {{ pip_opts }}{% if index %}--extra-index-url {{ index }} {% endif %}'
            '{{ reqs | map("shell") | join(" ") }}')
PIP_INSTALL = f"{{% macro pip_install(reqs, index=none, step=none) -%}}\n{PIP_LINE}\n{{%- endmacro %}}\n"


class BenchError(Exception):
    pass


def fmt(v: float, unit: str) -> str:
    return f"{v:.2f} s" if unit == "s" else f"{v / 1e6:.1f} MB"


@dataclass
class Row:
    what: str
    unit: str                        # "s" or "B"
    a: list[float]                   # imagekit's runs
    b: list[float]                   # the baseline's runs
    max_ratio: float | None = None   # goal: median a / median b at most this
    max_diff: float | None = None    # goal: median a - median b under this

    def ratio(self) -> float:
        return statistics.median(self.a) / statistics.median(self.b)

    def diff(self) -> float:
        return statistics.median(self.a) - statistics.median(self.b)

    def goal(self) -> tuple[str, str, str, bool] | None:
        """(goal, short goal, measured, met)"""
        if self.max_ratio is not None:
            r = self.ratio()
            return (f"{self.what}: at most {self.max_ratio:g}×", f"≤ {self.max_ratio:g}×",
                    f"{r:.2f}×", r <= self.max_ratio)
        if self.max_diff is not None:
            d, limit = self.diff(), fmt(self.max_diff, self.unit)
            return (f"{self.what}: under {limit} more", f"< {limit} more",
                    f"{fmt(d, self.unit)} more", d < self.max_diff)
        return None


@dataclass
class Section:
    key: str
    sides: tuple[str, str] = ("imagekit", "docker CLI")
    commands: list[tuple[str, str]] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    table: list[str] = field(default_factory=list)                      # inspect's own table
    goals: list[tuple[str, str, str, bool]] = field(default_factory=list)   # besides the rows'
    notes: list[str] = field(default_factory=list)
    error: str | None = None

    def all_goals(self) -> list[tuple[str, str, str, bool]]:
        return [g for g in (r.goal() for r in self.rows) if g] + self.goals


def dir_bytes(d: Path) -> int:
    total = 0
    for e in os.scandir(d):
        try:
            total += e.stat().st_size
        except FileNotFoundError:   # a temporary file renamed meanwhile
            pass
    return total


def log(msg: str) -> None:
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class Bench:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.id = "bk" + uuid.uuid4().hex[:8]
        self.src = load_project(args.project)
        spec = self.src.catalog.get(args.image)
        self.image, self.ref = spec.name, spec.image_ref()
        self.work = Path(tempfile.mkdtemp(prefix=f"ikbench-{self.id}-", dir=args.workdir))
        self.env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
        self.ids: list[str] = []     # images the bench built, removed at the end
        self.refs: list[str] = []    # tags it added to existing images, untagged at the end
        self.registries_made: list = []       # harness.Registry processes, stopped at the end
        self.proxies: list = []
        self.blob_sizes: dict[str, int] = {}  # the image's pushed blobs (digest prefix -> bytes)
        self.projects: dict[str, Path] = {}

    # -- running things --------------------------------------------------------------
    def sh(self, cmd: str, cwd: Path | None = None, input: str | None = None) -> tuple[float, str]:
        """Run one shell command line, as BENCHMARKS.md shows it: (wall time, stdout)."""
        t0 = time.perf_counter()
        p = subprocess.run(cmd, shell=True, cwd=cwd, input=input, capture_output=True, text=True,
                           env=self.env)
        secs = time.perf_counter() - t0
        if p.returncode != 0:
            tail = " | ".join((p.stdout + p.stderr).strip().splitlines()[-4:])
            raise BenchError(f"`{self.show(cmd)}` exited {p.returncode}: {tail}")
        return secs, p.stdout

    def time(self, cmd: str, **kw) -> float:
        return self.sh(cmd, **kw)[0]

    def timed_disk(self, cmd: str, d: Path) -> tuple[float, int]:
        """Wall time, and the peak size of folder d (polled every 0.1 s) while cmd runs there."""
        peak, stop = [0], threading.Event()

        def poll() -> None:
            while not stop.wait(0.1):
                peak[0] = max(peak[0], dir_bytes(d))

        t = threading.Thread(target=poll, daemon=True)
        t.start()
        try:
            secs = self.time(cmd, cwd=d)
        finally:
            stop.set()
            t.join()
        return secs, max(peak[0], dir_bytes(d))

    def compare(self, what: str, sides: list[str], one) -> dict[str, list]:
        """one(side, run) for every run and side, alternating which side goes first."""
        got: dict[str, list] = {s: [] for s in sides}
        for i in range(self.args.runs):
            for side in sides if i % 2 == 0 else sides[::-1]:
                got[side].append(v := one(side, i))
                log(f"{what} run {i + 1}/{self.args.runs}: {side}: {v[0] if isinstance(v, tuple) else v} s")
        return got

    def show(self, cmd: str) -> str:
        return cmd.replace(str(self.work), "$W").replace(str(REPO), "$REPO")

    def image_id(self, ref: str) -> str | None:
        p = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", ref],
                           capture_output=True, text=True)
        return p.stdout.strip() if p.returncode == 0 else None

    def built(self, *refs: str) -> None:
        self.ids += [i for i in map(self.image_id, refs) if i and i not in self.ids]

    def remove_built(self) -> None:
        for _ in range(2):   # newest first; a second pass for parents a child held
            if self.ids:
                subprocess.run(["docker", "rmi", "-f", *reversed(self.ids)], capture_output=True)
        self.ids = [i for i in self.ids if self.image_id(i)]

    def ik(self, root: Path | None = None) -> str:
        return f"imagekit -C {q(str(root or self.src.root))}"

    def ensure_built(self, name: str) -> None:
        """A catalog image, built in its own project if missing (a fresh clone)."""
        if not self.image_id(self.src.catalog.get(name).image_ref()):
            log(f"{name} is not built here: fetching and building it first")
            self.sh(f"{self.ik()} fetch {name} && {self.ik()} build {name}")

    # -- throwaway projects ------------------------------------------------------------
    def project(self, key: str) -> Path:
        """A project beside the catalog: its config with the wheelhouse made absolute and
        served on the bench's port; specs are copied in under new names."""
        if key not in self.projects:
            root = self.projects[key] = self.work / key
            (root / "images").mkdir(parents=True)
            cfg = self.src.config_path.read_text() if self.src.config_path else ""
            if self.src.wheelhouse is not None:
                cfg = re.sub(r"(?m)^(port|wheelhouse)\s*=.*\n?", "", cfg)
                pip = f"wheelhouse = {json.dumps(str(self.src.wheelhouse))}\nport = {PORT}\n"
                cfg = re.sub(r"(?m)^\[pip\]\s*$", "[pip]\n" + pip.rstrip(), cfg) \
                    if re.search(r"(?m)^\[pip\]\s*$", cfg) else cfg + "\n[pip]\n" + pip
            (root / "imagekit.toml").write_text(cfg)
        return self.projects[key]

    def copy_spec(self, root: Path, name: str, prefix: str = "") -> str:
        """Copy a catalog spec (its code and parents too) into root as <id>-<prefix><name>:bench."""
        new = f"{self.id}-{prefix}{name}"
        d = root / "images" / new
        if not d.exists():
            spec = self.src.catalog.get(name)
            data = {**yaml.safe_load(spec.path.read_text()), "name": new, "tags": ["bench"]}
            if data.get("parent"):
                data["parent"] = self.copy_spec(root, data["parent"], prefix)
            d.mkdir(parents=True)
            if spec.code_dir is not None:
                shutil.copytree(spec.code_dir.resolve(), d / "code",
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
                data["code"]["src"] = "code"
            (d / "image.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
        return new

    # -- 1. save -----------------------------------------------------------------------
    def m_save(self, s: Section) -> None:
        if not shutil.which("zip"):
            raise BenchError("`zip` is not installed (apt-get install zip; `make bench` does)")
        self.ensure_built(self.image)
        n, ref = self.image, self.ref
        cmds = {"imagekit": f"{self.ik()} save {n} --zip -o {n}.zip",
                "docker save": f"docker save -o {n}.tar {ref}",
                "docker save && zip -1": f"docker save -o {n}.tar {ref} && zip -1 {n}.zip {n}.tar"}
        result = {"imagekit": f"{n}.zip", "docker save": f"{n}.tar", "docker save && zip -1": f"{n}.zip"}
        s.commands = list(cmds.items())
        d = self.work / "save"
        self.time(f"docker save {ref} > /dev/null")   # untimed: the layers in the page cache

        def one(side: str, i: int) -> tuple[float, int, int]:
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir()
            secs, peak = self.timed_disk(cmds[side], d)
            return round(secs, 2), peak, (d / result[side]).stat().st_size

        got = {k: list(zip(*v, strict=True)) for k, v in self.compare("save", list(cmds), one).items()}
        shutil.rmtree(d, ignore_errors=True)
        (it, ip, isz), (dt, dp, _), (zt, zp, zsz) = got.values()
        s.rows = [Row("wall time vs `docker save`", "s", it, dt, max_ratio=1.15),
                  Row("wall time vs `docker save && zip -1`", "s", it, zt, max_ratio=0.55),
                  Row("peak extra disk vs `docker save`", "B", ip, dp),
                  Row("peak extra disk vs `docker save && zip -1`", "B", ip, zp),
                  Row("output size vs `zip -1`'s", "B", isz, zsz, max_ratio=1.0)]
        s.notes.append("Peak extra disk: the size of the (empty at start) output folder, polled every "
                       "0.1 s; for the CLI pipeline the tar and the zip both exist at the end. "
                       "imagekit's output size is its .zip alone (the .sha256 and .json beside it "
                       "count in its peak). Before the runs, one untimed `docker save` warms the "
                       "page cache for both sides.")

    # -- 2. rebuild after a code-only change -----------------------------------------------
    def m_rebuild(self, s: Section) -> None:
        root = self.project("p")
        n = self.copy_spec(root, self.image)
        refs = [p.spec.image_ref() for p in load_project(root).catalog.resolve(n).chain()]
        self.sh(f"{self.ik(root)} fetch {n}")
        code = root / "images" / n / "code"
        files = sorted(code.rglob("*.py")) or sorted(p for p in code.rglob("*") if p.is_file())
        if not files:
            raise BenchError(f"{self.image} has no code folder: nothing to change")
        f = files[0]
        cold_cmd, warm_cmd = f"{self.ik(root)} build {n} --no-cache", f"{self.ik(root)} build {n}"
        s.sides = ("rebuild after a code change", "cold build")
        s.commands = [("cold build", cold_cmd),
                      ("code change", f"printf '\\n# bench edit %s\\n' UNIQUE >> {q(str(f))}"),
                      ("rebuild", warm_cmd)]
        cold, warm = [], []
        for i in range(self.args.runs):
            cold.append(self.time(cold_cmd))
            self.built(*refs)
            orig = f.read_bytes()
            f.write_bytes(orig + f"\n# bench edit {uuid.uuid4().hex}\n".encode())
            try:
                warm.append(self.time(warm_cmd))
            finally:
                f.write_bytes(orig)
            self.built(*refs)
            self.remove_built()
            log(f"rebuild run {i + 1}/{self.args.runs}: cold {cold[-1]:.2f} s, "
                f"after a code change {warm[-1]:.2f} s")
        s.rows = [Row("rebuild after a code change vs cold build", "s", warm, cold, max_ratio=0.05)]
        s.notes.append(f"Spec: a copy of `{self.image}` and its code in a throwaway project (the "
                       "catalog is untouched). The file is restored after the rebuild, and the run's "
                       "images are removed.")

    # -- 3. build --all against sequential docker builds --------------------------------
    def m_all(self, s: Section) -> None:
        root, cat = self.project("all"), self.src.catalog
        names = [n for n in cat.names() if cat.resolve(n).device == "cpu"
                 and not (self.args.quick and cat.resolve(n).framework == "tensorflow")]
        for n in names:
            self.copy_spec(root, n)
        self.sh(f"{self.ik(root)} fetch --all")
        proj = load_project(root)
        new = sorted(proj.catalog.names(), key=lambda n: len(proj.catalog.resolve(n).chain()))
        refs = [proj.catalog.get(n).image_ref() for n in new]
        steps = []
        for n, ref in zip(new, refs, strict=True):   # parents first
            ctx = self.work / "ctx" / n
            ctx.mkdir(parents=True)
            (ctx / "Dockerfile").write_text(self.sh(f"{self.ik(root)} render {n}")[1])
            if (code := proj.catalog.get(n).code_dir) is not None:
                shutil.copytree(code, ctx / "code")
            steps.append(f"DOCKER_BUILDKIT=0 docker build --network host --no-cache -t {ref} {q(str(ctx))}")
        cmds = {"imagekit": f"{self.ik(root)} build --all --jobs {self.args.jobs} --no-cache",
                "docker CLI": " && ".join(steps)}
        s.commands = [("imagekit", cmds["imagekit"])] + [("docker CLI", c) for c in steps]

        def one(side: str, i: int) -> float:
            self.remove_built()   # cold against cold: nothing left from the other side
            try:
                if side == "imagekit" or proj.wheelhouse is None:
                    return round(self.time(cmds[side]), 2)
                with fetch.serve(proj.wheelhouse, PORT):
                    return round(self.time(cmds[side]), 2)
            finally:
                self.built(*refs)

        got = self.compare("build --all", list(cmds), one)
        self.remove_built()
        s.rows = [Row(f"build time of {len(new)} images", "s", got["imagekit"], got["docker CLI"],
                      max_ratio=0.6)]
        s.notes.append(f"Images: copies of {', '.join(names)}: the CPU images, which `--all` builds on an "
                       "engine with no GPU. Both sides build with --no-cache (layers are shared with "
                       "nothing, not even each other), and each side's images are removed before the "
                       f"next run. The docker CLI side gets the wheelhouse on 127.0.0.1:{PORT} from "
                       "`imagekit.fetch.serve`, as imagekit serves it to its own builds; its contexts "
                       "hold the output of `imagekit render NAME` as Dockerfile and the spec's code/.")

    # -- 4. push to one and to two registries -----------------------------------------
    def registries(self, n: int, proxy: bool = False) -> list:
        """n htpasswd registries (Debian's docker-registry, tests/engine/registry/regtools.py) as
        processes on 127.0.0.1, each with its own storage under the scratch folder; a login for
        each in the throwaway DOCKER_CONFIG that both sides read."""
        if missing := harness.environment_ok():
            raise BenchError(f"{missing} not installed (apt-get install docker-registry apache2-utils)")
        pw = self.work / "htpasswd"
        if not pw.exists():
            harness.htpasswd(pw, USER, PASSWORD)
        self.docker_config.mkdir(exist_ok=True)
        regs = []
        for _ in range(n):
            r = harness.Registry(self.work / f"registry-{len(self.registries_made)}", htpasswd_file=pw)
            self.registries_made.append(r)
            r.start()
            regs.append(r)
        return regs

    @property
    def docker_config(self) -> Path:
        return self.work / "docker-config"

    def login(self, host: str) -> str:
        """`docker login` into the throwaway DOCKER_CONFIG; the env prefix that uses it."""
        env = f"DOCKER_CONFIG={q(str(self.docker_config))}"
        self.sh(f"{env} docker login -u {USER} --password-stdin {host}", input=PASSWORD)
        return env

    @staticmethod
    def empty(regs: list) -> None:
        for r in regs:   # every push uploads every blob
            shutil.rmtree(r.storage / "docker", ignore_errors=True)

    def engine_store(self) -> tuple[str, str]:
        """(server version, "classic" or "containerd") of the engine both sides use."""
        _, out = self.sh("docker info --format '{{.ServerVersion}} {{json .DriverStatus}}'")
        version, _, status = out.strip().partition(" ")
        return version, "containerd" if "io.containerd.snapshotter.v1" in status else "classic"

    def push_json(self, cmd: str, on_event=None, via: str = "direct") -> tuple[float, dict]:
        """Run an `imagekit --json push`; wall time and a profile: seconds from the start to the
        first byte of the export compressed, to the export read and compressed through (the
        `read the image once ... in Ns` line), to the first upload chunk acknowledged; the
        pushed blobs' sizes (digest prefix -> bytes) and the result's destinations."""
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env={**self.env, "PYTHONUNBUFFERED": "1"})
        prof: dict = {"blobs": {}, "destinations": [], "warnings": []}
        tail: list[str] = []
        for line in p.stdout:
            now = time.perf_counter() - t0
            tail = (tail + [line.rstrip()])[-4:]
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            if not isinstance(ev, dict):
                continue
            status, msg = str(ev.get("status", "")), str(ev.get("message", ""))
            if ev.get("event") == "progress":
                if status == "compressing":
                    prof.setdefault("first_compressed", now)
                elif status == "Pushing":
                    prof.setdefault("first_chunk", now)
                elif status.startswith("Pushed"):
                    prof["blobs"][ev["item"].split()[-1]] = ev["total"]
            elif ev.get("event") == "info" and (m := re.search(r"read the image once: .* in ([\d.]+)s", msg)):
                prof["export"] = float(m.group(1))
                prof["export_at"] = now
            elif ev.get("event") == "warning":
                prof["warnings"].append(msg)
            elif ev.get("event") == "result":
                prof["destinations"] = ev.get("data", {}).get("destinations", [])
            if on_event is not None:
                on_event(ev, now)
        if p.wait() != 0:
            raise BenchError(f"`{self.show(cmd)}` exited {p.returncode}: {' | '.join(tail)}")
        vias = {d.get("via") for d in prof["destinations"]}
        if vias != {via}:
            raise BenchError(f"`{self.show(cmd)}` did not push via {via} (via {vias})")
        return round(time.perf_counter() - t0, 2), prof

    def m_push(self, s: Section) -> None:
        self.ensure_built(self.image)
        version, store = self.engine_store()
        # on the containerd store the engine holds the layers gzip'd, and imagekit lets it push
        via = "engine" if store == "containerd" else "direct"
        regs = self.registries(2)
        hosts = [r.host for r in regs]
        env = ""
        for h in hosts:
            env = self.login(h)
        tag = self.ref.rsplit(":", 1)[1]

        def cmd(side: str, n: int, repo: str) -> str:
            if side == "imagekit":
                to = " ".join(f"--to {h}/team" for h in hosts[:n])
                return f"{env} {self.ik()} --json push {self.image} {to} --repository {repo} --no-smoke-gate"
            dests = [f"{h}/team/{repo}:{tag}" for h in hosts[:n]]
            return " && ".join([f"docker tag {self.ref} {d}" for d in dests]
                               + [f"{env} docker push {d}" for d in dests])

        profiles: dict[int, list[dict]] = {1: [], 2: []}

        def one(n: int):
            def run(side: str, i: int) -> float:
                self.empty(regs)
                repo = f"{self.id}_{side[:2].lower()}{n}r{i}"
                self.refs += [f"{h}/team/{repo}:{tag}" for h in hosts[:n]]
                if side == "docker CLI":
                    return round(self.time(cmd(side, n, repo)), 2)
                secs, prof = self.push_json(cmd(side, n, repo), via=via)
                profiles[n].append({**prof, "wall": secs})
                return secs
            return run

        s.sides = ("imagekit", "docker CLI")
        s.commands = [(f"{side}, {n} registr{'y' if n == 1 else 'ies'}", cmd(side, n, "REPO"))
                      for n in (1, 2) for side in s.sides]
        # the export floor: the engine's export alone, read to the end (untimed goal, one figure)
        self.time(f"docker save {self.ref} > /dev/null")     # page cache warm, as for both sides
        save = round(self.time(f"docker save {self.ref} > /dev/null"), 2)
        got1 = self.compare("push to 1 registry", list(s.sides), one(1))
        got2 = self.compare("push to 2 registries", list(s.sides), one(2))
        goals = (1.1, 1.1) if store == "containerd" else (0.35, 0.20)
        s.rows = [Row("push to 1 registry", "s", got1["imagekit"], got1["docker CLI"],
                      max_ratio=goals[0]),
                  Row("push to 2 registries", "s", got2["imagekit"], got2["docker CLI"],
                      max_ratio=goals[1])]
        blobs = profiles[1][0]["blobs"] if profiles[1] else {}
        self.blob_sizes = blobs
        med = statistics.median
        s.table = ["| imagekit push (medians) | first compressed byte | export read and compressed | "
                   "first chunk acknowledged | done | bytes sent per registry |",
                   "|---|---|---|---|---|---|"]
        for n, profs in profiles.items():
            def m(key: str, ps=profs) -> str:
                vals = [p[key] for p in ps if key in p]
                return f"{med(vals):.2f} s" if vals else "-"
            sent = [d.get("bytes_sent") or 0 for p in profs for d in p["destinations"]]
            sent_s = f"{med(sent) / 1e6:.1f} MB" if sent else "-"
            s.table.append(f"| to {n} registr{'y' if n == 1 else 'ies'} | {m('first_compressed')} | "
                           f"{m('export')} | {m('first_chunk')} | {m('wall')} | {sent_s} |")
        s.table.append(f"| `docker save {self.ref} > /dev/null` (the export alone) | - | {save:.2f} s | - | "
                       f"{save:.2f} s | - |")
        s.notes.append(f"Image: `{self.ref}`, {len(blobs)} blobs, {sum(blobs.values()) / 1e6:.1f} MB "
                       "compressed (gzip, Docker v2 schema 2). Registries: Debian's docker-registry "
                       "(distribution 2.8) with htpasswd auth, run as processes on 127.0.0.1 "
                       "(tests/engine/registry/regtools.py); both sides push to the same ones. Their "
                       "storage is emptied before every push and every push uses a new repository name "
                       "(REPO), so each uploads every blob. Credentials: `docker login` into a throwaway "
                       "DOCKER_CONFIG that both sides read. imagekit runs with `--json` (for the profile "
                       f"below); every run's result says `via: {via}`. Engine: Docker {version}, "
                       f"{store} image store. Profile: seconds "
                       "from the command's start, as the `--json` events arrive; `docker save` is timed "
                       "once with the page cache warm.")

    # -- 5. smoke overhead ---------------------------------------------------------------
    def m_smoke(self, s: Section) -> None:
        root = self.project("p")
        n = f"{self.id}-mxcheck"
        (root / "images" / n).mkdir(parents=True)
        (root / "images" / n / "image.yaml").write_text(yaml.safe_dump({
            "name": n, "description": "framework check only (bench)", "device": "cpu",
            "framework": {"name": "mxnet", "version": "1.9.1"}, "python": "3.11",
            "tags": ["bench"]}, sort_keys=False))
        self.sh(f"{self.ik(root)} fetch {n} && {self.ik(root)} build {n}")
        self.built(f"{n}:bench")
        checks = q(str(REPO / "imagekit" / "checks"))
        cmds = {"imagekit": f"{self.ik(root)} smoke {n}",
                "docker CLI": f"docker run --rm -v {checks}:/imagekit/checks:ro {n}:bench "
                              "python /imagekit/checks/mxnet_check.py --steps 50"}
        s.commands = list(cmds.items())
        got = self.compare("smoke", list(cmds), lambda side, i: round(self.time(cmds[side]), 2))
        s.rows = [Row("framework check wall time", "s", got["imagekit"], got["docker CLI"], max_diff=1.5)]
        s.notes.append("Image: a spec with no train command (MXNet 1.9.1, Python 3.11, CPU), so "
                       "`imagekit smoke` runs the framework check alone.")

    # -- 6. image efficiency --------------------------------------------------------------
    def m_inspect(self, s: Section) -> None:
        cat = self.src.catalog
        names = [self.image] if self.args.quick else cat.names()
        s.commands = [("imagekit", f"{self.ik()} --json inspect NAME")]
        s.table = ["| image | size | layers | wasted | efficiency | top wasted paths |",
                   "|---|---|---|---|---|---|"]
        for n in names:
            if cat.resolve(n).device == "cpu":
                self.ensure_built(n)
            elif not self.image_id(cat.get(n).image_ref()):
                s.notes.append(f"`{n}`: a GPU image, not built here: not inspected.")
                continue
            ev = json.loads(self.sh(f"{self.ik()} --json inspect {n}")[1])
            r = {**ev["data"], "image": ev["image"]}
            top = "<br>".join(f"`{w['path']}` {w['bytes'] / 1e6:.2f} MB" for w in r["top_wasted"][:3])
            eff = f"{100 * r['efficiency']:.2f} %"
            s.table.append(f"| `{r['image']}` | {r['total_bytes'] / 1e6:.1f} MB | {len(r['layers'])} | "
                           f"{r['wasted_bytes'] / 1e6:.2f} MB | {eff} | {top or '-'} |")
            s.goals.append((f"`{n}`: at least 99 % efficient", "≥ 99 %", eff, r["efficiency"] >= 0.99))
            log(f"inspect {n}: {eff} efficient")
        s.notes.append("Wasted: bytes of files that a later layer deletes or overwrites; efficiency "
                       "= 1 − wasted / the sum of the layers' file sizes.")

    # -- 7. cold build: uv against pip ---------------------------------------------------
    def profiled_build(self, cmd: str) -> tuple[float, float, float]:
        """Wall time of a `--json` build, and summed over its steps that install Python
        packages: the time until the step's last log line (the installer's own work) and
        from there to the next step (the engine committing the layer)."""
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, env={**self.env, "PYTHONUNBUFFERED": "1"})
        work = commit = 0.0
        step: tuple[str, float] | None = None     # (instruction, started)
        last = 0.0                                 # the time of the step's last log line
        tail: list[str] = []

        def close(now: float) -> None:
            nonlocal work, commit
            if step and "pip install" in step[0]:
                end = max(last, step[1])
                work += end - step[1]
                commit += now - end

        for line in p.stdout:
            now = time.perf_counter()
            tail = (tail + [line.rstrip()])[-4:]
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            kind = ev.get("event") if isinstance(ev, dict) else None
            if kind in ("step", "built"):
                close(now)
                step = (ev.get("instruction", ""), now) if kind == "step" else None
            elif kind == "log" and not ENGINE_LINE.match(ANSI.sub("", str(ev.get("line", "")))):
                last = now   # the installer's output; not the classic builder's own line after the commit
        close(time.perf_counter())
        if p.wait() != 0:
            raise BenchError(f"`{self.show(cmd)}` exited {p.returncode}: {' | '.join(tail)}")
        return round(time.perf_counter() - t0, 2), round(work, 2), round(commit, 2)

    def m_installer(self, s: Section) -> None:
        roots = {"uv": self.project("uv"), "pip": self.project("pip")}
        own = roots["pip"] / "templates" / "partials" / "install.j2"
        own.parent.mkdir(parents=True)
        own.write_text(PIP_INSTALL)        # the pip side: this project's own partial comes first
        names = {side: self.copy_spec(root, self.image, f"{side}-") for side, root in roots.items()}
        refs: list[str] = []
        for side, root in roots.items():
            refs += [p.spec.image_ref() for p in load_project(root).catalog.resolve(names[side]).chain()]
            self.sh(f"{self.ik(root)} fetch {names[side]}")
            text = self.sh(f"{self.ik(root)} render {names[side]}")[1]
            if ("uv pip install" in text) != (side == "uv"):
                raise BenchError(f"the {side} side's Dockerfile does not install with {side}: "
                                 "is `installer` set in matrix.yaml and given to the templates?")
        cmds = {side: f"{self.ik(root)} --json build {names[side]} --no-cache"
                for side, root in roots.items()}
        s.sides = ("uv", "pip")
        s.commands = [("uv", cmds["uv"]), ("pip", cmds["pip"]),
                      ("pip side's macro in $W/pip/templates/partials/install.j2", PIP_LINE)]

        def one(side: str, i: int) -> tuple[float, float, float]:
            self.remove_built()    # cold against cold
            try:
                return self.profiled_build(cmds[side])
            finally:
                self.built(*refs)

        got = {k: list(zip(*v, strict=True))
               for k, v in self.compare("installer", ["uv", "pip"], one).items()}
        self.remove_built()
        (ut, uw, uc), (pt, pw, pc) = got["uv"], got["pip"]
        s.rows = [Row(f"cold build of `{self.image}`", "s", ut, pt, max_ratio=0.5),
                  Row("installing steps: until their last log line", "s", uw, pw),
                  Row("installing steps: from there to the next step (layer commit)", "s", uc, pc)]
        s.notes.append(f"Spec: copies of `{self.image}` (and its parents) in two throwaway projects, built "
                       "with --no-cache, each side's images removed before the next run. The uv side "
                       "renders with the built-in templates (`installer` in imagekit/matrix.yaml); the pip "
                       "side's project overrides only templates/partials/install.j2 with the one line "
                       "shown, so both Dockerfiles differ in the install commands alone. Both install "
                       "from the same wheelhouse, served on the same port. The profile rows add up the "
                       "steps whose command holds `pip install`, timed as the `--json` events arrive: "
                       "the first figure is the installer's own work, the second the engine turning the "
                       "step's container into a layer.")

    # -- 10. BuildKit cold build (+ push) against a user's docker build with pip ---------
    def m_buildkit(self, s: Section) -> None:
        version, store = self.engine_store()
        ik_root, dk_root = self.project("bk"), self.project("dk")
        own = dk_root / "templates" / "partials" / "install.j2"
        own.parent.mkdir(parents=True)
        own.write_text(PIP_INSTALL)        # the user's Dockerfile installs with pip
        n, m = self.copy_spec(ik_root, self.image, "bk-"), self.copy_spec(dk_root, self.image, "dk-")
        if load_project(ik_root).catalog.resolve(n).parent is not None:
            raise BenchError(f"{self.image} has a parent: this measurement builds one image")
        for root, name in ((ik_root, n), (dk_root, m)):
            self.sh(f"{self.ik(root)} fetch {name}")
        text = self.sh(f"{self.ik(ik_root)} render {n}")[1]
        if "--mount=type=bind,from=wheels" not in text:
            raise BenchError("imagekit does not build with BuildKit here (`imagekit doctor` says why)")
        ctx = self.work / "dk-context"
        ctx.mkdir()
        (ctx / "Dockerfile").write_text(self.sh(f"{self.ik(dk_root)} render {m} --builder classic")[1])
        spec = load_project(dk_root).catalog.get(m)
        if spec.code_dir is not None:
            shutil.copytree(spec.code_dir, ctx / "code")
        wheels = load_project(dk_root).wheelhouse
        if wheels is None:
            raise BenchError("no wheelhouse: the user's side would install from the network")
        regs = self.registries(2)
        hosts = [r.host for r in regs]
        env = ""
        for h in hosts:
            env = self.login(h)
        ik_ref, dk_ref = f"{n}:bench", f"{m}:bench"
        build = {"imagekit": f"{self.ik(ik_root)} --json build {n} --no-cache",
                 "docker CLI": f"docker build --no-cache --network host -t {dk_ref} {q(str(ctx))}"}

        def push(side: str, repo: str) -> str:
            if side == "imagekit":
                to = " ".join(f"--to {h}/team" for h in hosts)
                return f"{env} {self.ik(ik_root)} --json push {n} {to} --repository {repo} --no-smoke-gate"
            dests = [f"{h}/team/{repo}:bench" for h in hosts]
            return " && ".join([f"docker tag {dk_ref} {d}" for d in dests]
                               + [f"{env} docker push {d}" for d in dests])

        s.sides = ("imagekit", "docker CLI")
        s.commands = [("imagekit: cold build", build["imagekit"]),
                      ("imagekit: push to 2 registries", push("imagekit", "REPO")),
                      ("docker CLI: cold build (the wheelhouse served on "
                       f"127.0.0.1:{PORT} meanwhile)", build["docker CLI"]),
                      ("docker CLI: push to 2 registries", push("docker CLI", "REPO")),
                      ("the user's Dockerfile", f"imagekit render {m} --builder classic, pip "
                                                "installing (measurement 7's macro)")]
        server = subprocess.Popen([sys.executable, "-m", "http.server", str(PORT), "--bind",
                                   "127.0.0.1", "--directory", str(wheels)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1)

        def one(side: str, i: int) -> tuple[float, float]:
            self.remove_built()
            self.empty(regs)
            ref = ik_ref if side == "imagekit" else dk_ref
            built = self.time(build[side])
            self.built(ref)
            repo = f"{self.id}_{side[:2].lower()}r{i}"
            self.refs += [f"{h}/team/{repo}:bench" for h in hosts]
            pushed = self.time(push(side, repo))
            return round(built, 2), round(built + pushed, 2)

        try:
            got = {k: list(zip(*v, strict=True))
                   for k, v in self.compare("cold build and push", list(s.sides), one).items()}
        finally:
            server.terminate()
            server.wait()
        self.remove_built()
        (ib, it), (db, dt) = got["imagekit"], got["docker CLI"]
        s.rows = [Row(f"cold build of `{self.image}`", "s", ib, db, max_ratio=0.40),
                  Row("cold build + push to 2 registries", "s", it, dt, max_ratio=0.35)]
        s.notes.append(
            f"Engine {version}, {store} store. The imagekit side builds with BuildKit through buildx "
            "(its default here): each install step's wheels as a build context, uv, no network in RUN "
            "steps. The docker CLI side is the same spec as a user builds it: imagekit's classic "
            "Dockerfile with pip installing (measurement 7's macro) from the same wheelhouse, served "
            f"on 127.0.0.1:{PORT} by `python -m http.server`, built with `docker build --network host` "
            "(the docker CLI's own builder: BuildKit through buildx where the plugin is installed, "
            "as here), then `docker tag` and `docker push` to each registry. Both sides --no-cache, "
            "each side's images removed and the registries emptied before every run.")

    # -- 8. a push resumed after a registry restart ---------------------------------------
    def m_resume(self, s: Section) -> None:
        self.ensure_built(self.image)
        reg = self.registries(1)[0]
        proxy = harness.CountingProxy(reg.port)
        self.proxies.append(proxy)
        env = self.login(proxy.host)

        tag = self.ref.rsplit(":", 1)[1]

        def cmd(repo: str) -> str:
            self.refs.append(f"{proxy.host}/team/{repo}:{tag}")   # imagekit keeps the refs it pushed
            return f"{env} {self.ik()} --json push {self.image} --to {proxy.host}/team --repository {repo} " \
                   "--no-smoke-gate"

        def zero() -> None:
            with proxy.lock:
                proxy.sent = 0

        overhead = None
        if not self.blob_sizes:      # learn the blobs' sizes: one push
            self.empty([reg])
            zero()
            _, prof = self.push_json(cmd(f"{self.id}_learn"))
            self.blob_sizes = prof["blobs"]
            overhead = proxy.sent - sum(prof["blobs"].values())
        sizes: dict[str, int] = self.blob_sizes
        biggest = max(sizes, key=sizes.__getitem__)
        compressed = sum(sizes.values())
        s.sides = ("bytes re-sent", "bytes of blobs unfinished at the stop")
        s.commands = [("imagekit", cmd("REPO"))]
        kinds = {"kill": signal.SIGKILL, "drain": signal.SIGTERM}
        got: dict[str, tuple[list, list]] = {k: ([], []) for k in kinds}
        detail: list[str] = []
        base_cfg = reg.config.read_text()
        for i in range(self.args.runs):
            for kind, sig in kinds.items():
                reg.stop()
                reg.config.write_text(base_cfg if kind == "kill"
                                      else base_cfg.replace("http:\n", "http:\n  draintimeout: 30s\n"))
                reg.start()
                self.empty([reg])
                zero()
                finished: set[str] = set()
                at_stop: dict = {}
                restarted = threading.Event()

                def restart(sig=sig, restarted=restarted) -> None:
                    try:
                        reg.stop(sig)
                        time.sleep(2)
                        reg.start()
                    finally:
                        restarted.set()

                def on_event(ev: dict, now: float, finished=finished, at_stop=at_stop,
                             restart=restart) -> None:
                    if ev.get("event") != "progress":
                        return
                    item, status = str(ev.get("item", "")).split(), str(ev.get("status", ""))
                    if status.startswith("Pushed") and item:
                        finished.add(item[-1])
                    elif (status == "Pushing" and item and item[-1] == biggest and not at_stop
                          and ev["current"] >= 0.4 * ev["total"]):
                        at_stop.update(sent=proxy.sent, finished=set(finished), acked=ev["current"],
                                       at=now)
                        threading.Thread(target=restart, daemon=True).start()

                repo = f"{self.id}_rs{kind[0]}{i}"
                secs, prof = self.push_json(cmd(repo), on_event)
                restarted.wait(60)
                if not at_stop:
                    raise BenchError(f"the push ended before {biggest} was 40 % through: nothing stopped")
                pushed = sum(prof["blobs"].values())
                if prof["blobs"] != sizes:
                    raise BenchError("the blobs pushed differ from the image's: "
                                     f"{sorted(prof['blobs'])} against {sorted(sizes)}")
                resent = proxy.sent - pushed
                unfinished = sum(v for k, v in sizes.items() if k not in at_stop["finished"])
                got[kind][0].append(resent)
                got[kind][1].append(unfinished)
                detail.append(f"| {kind} | {i + 1} | {at_stop['at']:.1f} s | "
                              f"{at_stop['sent'] / 1e6:.1f} MB | "
                              f"{at_stop['acked'] / 1e6:.1f} of {sizes[biggest] / 1e6:.1f} MB | "
                              f"{unfinished / 1e6:.1f} MB | {proxy.sent / 1e6:.1f} MB | "
                              f"{resent / 1e6:.1f} MB | {secs:.1f} s | {went_on(prof['warnings'])} |")
                log(f"resume ({kind}) run {i + 1}/{self.args.runs}: re-sent {resent} B, unfinished "
                    f"at the stop {unfinished} B, {secs} s")
        names = {"kill": "registry killed (SIGKILL)", "drain": "registry stopped (SIGTERM, 30 s drain)"}
        s.rows = [Row(f"{names[k]}: re-sent vs unfinished", "B", a, b, max_ratio=1.0)
                  for k, (a, b) in got.items()]
        s.table = ["| stop | run | at | sent through the proxy by then | biggest blob acknowledged | "
                   "unfinished blobs | sent in all | re-sent | push time | blobs resumed |",
                   "|---|---|---|---|---|---|---|---|---|---|",
                   *detail]
        s.notes.append(
            f"Image: `{self.ref}`, {len(sizes)} blobs, {compressed / 1e6:.1f} MB compressed; the biggest "
            f"blob {sizes[biggest] / 1e6:.1f} MB. The push goes through a counting TCP proxy on 127.0.0.1 "
            "(tests/engine/registry/regtools.py) to one docker-registry (htpasswd auth, a fixed "
            "`http.secret` so that upload sessions outlive a restart), emptied before every push. When "
            "imagekit's `--json` progress shows the biggest blob 40 % acknowledged, the registry is "
            "stopped, and started again 2 s later on the same storage and port; the push goes on by "
            "itself (retries with backoff). Re-sent = every byte the client sent through the proxy "
            "(request lines, headers and the manifest included) minus the blobs' sizes. Unfinished = "
            "the blobs whose `Pushed` event had not arrived at the stop (those not started yet count, "
            "as the goal states it). kill: the request in flight is cut where it stands; drain: the "
            "registry finishes the request in flight first. Blobs resumed: imagekit's own warnings, "
            "`resumed at N bytes` (from the offset the registry reports) or `started again`.")
        if overhead is not None:
            s.notes.append(f"An uninterrupted push through the proxy sent {overhead / 1e3:.0f} kB "
                           "besides the blobs (requests, headers, manifest).")

    def cleanup(self) -> None:
        for p in self.proxies:
            p.close()
        for r in self.registries_made:
            r.stop()
        if self.refs:
            subprocess.run(["docker", "rmi", *self.refs], capture_output=True)
        self.remove_built()
        shutil.rmtree(self.work, ignore_errors=True)


def went_on(warnings: list[str]) -> str:
    """How imagekit's warnings say the cut uploads went on: 'resumed at N bytes' / 'started again'."""
    got = [f"{int(m.group(1)) / 1e6:.1f} MB" if (m := re.search(r"resumed at (\d+) bytes", w))
           else "from 0 (started again)" for w in warnings if "resumed at" in w or "started again" in w]
    return ", ".join(got) or "-"


def machine(b: Bench) -> list[str]:
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    mem = next(int(ln.split()[1]) * 1024 for ln in Path("/proc/meminfo").read_text().splitlines()
               if ln.startswith("MemTotal"))
    engine = b.sh("docker version -f '{{.Server.Version}} (API {{.Server.APIVersion}})'")[1].strip()
    client = b.sh("docker version -f '{{.Client.Version}}'")[1].strip()
    commit = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                            capture_output=True, text=True).stdout.strip() or "?"
    free = shutil.disk_usage(b.work).free
    return ["| CPU | cores | memory | disk free | Docker engine | docker CLI | imagekit commit |",
            "|---|---|---|---|---|---|---|",
            f"| {cpu} | {os.cpu_count()} | {mem / 2**30:.1f} GiB | {free / 2**30:.1f} GiB | {engine} "
            f"| {client} | {commit} |"]


def report(b: Bench, sections: list[Section], started: str, host: list[str]) -> str:
    a = b.args
    out = ["# Benchmarks: imagekit against the plain docker CLI", "",
           f"Written by `bench/run.py {shlex.join(sys.argv[1:])}` (`make bench`) on {started}. Both "
           "sides of every comparison are measured in this one run, alternating which goes first; a "
           f"figure is the median of {a.runs} run(s) and a ratio is median / median. Image for save, "
           f"push and rebuild: `{b.ref}`. In the commands `$W` is the run's scratch folder (removed "
           "afterwards) and `$REPO` this checkout.", ""]
    if a.quick:
        out += ["**Quick run (`--quick`): a check of the harness on a small image, one run each. "
                "These figures are not benchmarks.**", ""]
    out += ["## Machine", "", *host, "", "## Goals", "", "| goal | measured | met |", "|---|---|---|"]
    for s in sections:
        num = TITLES[s.key].split(".")[0]
        out += [f"| {num}. {g} | {got} | {'yes' if ok else '**no**'} |" for g, _, got, ok in s.all_goals()]
        out += [f"| {TITLES[s.key]} | - | not measured |"] if s.error else []
    for s in sections:
        out += ["", f"## {TITLES[s.key]}", ""]
        out += [f"Not measured: {s.error}", ""] if s.error else []
        out += [f"- {side}: `{b.show(c)}`" for side, c in s.commands]
        if s.rows:
            x, y = s.sides
            out += ["", f"| measurement | {x} (median) | {y} (median) | ratio | difference | goal | met "
                    f"| {x} runs | {y} runs |", "|---|---|---|---|---|---|---|---|---|"]
            for r in s.rows:
                g = r.goal()
                runs = [", ".join(fmt(v, r.unit).split()[0] for v in vs) for vs in (r.a, r.b)]
                out.append(f"| {r.what} | {fmt(statistics.median(r.a), r.unit)} | "
                           f"{fmt(statistics.median(r.b), r.unit)} | {r.ratio():.2f}× | "
                           f"{fmt(r.diff(), r.unit)} | {g[1] if g else '-'} | "
                           f"{'-' if g is None else 'yes' if g[3] else '**no**'} | {runs[0]} | {runs[1]} |")
        out += ["", *s.table] if s.table else []
        out += ["", *s.notes] if s.notes else []
    return "\n".join(out).rstrip() + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="check the harness: a small image, 1 run, no TensorFlow in build --all")
    ap.add_argument("--runs", type=int, help="runs per side (default 3; --quick: 1)")
    ap.add_argument("--image", help="catalog image for save, push and rebuild "
                                    "(default ocr-cpu; --quick: ssd-mxnet-cpu)")
    ap.add_argument("--only", help=f"comma-separated, of: {','.join(TITLES)}")
    ap.add_argument("--out", type=Path, help="the markdown to write (default BENCHMARKS.md; "
                                             "--quick: bench/BENCHMARKS-quick.md, git-ignored)")
    ap.add_argument("-C", "--project", type=Path, default=REPO, help="the project holding the catalog")
    ap.add_argument("--workdir", help="where the scratch folder goes (default: the system's temp)")
    ap.add_argument("--jobs", type=int, default=2, help="imagekit build --jobs (default 2)")
    a = ap.parse_args()
    a.runs = a.runs or (1 if a.quick else 3)
    a.image = a.image or ("ssd-mxnet-cpu" if a.quick else "ocr-cpu")
    a.out = a.out or (REPO / "bench" / "BENCHMARKS-quick.md" if a.quick else REPO / "BENCHMARKS.md")
    only = a.only.split(",") if a.only else list(TITLES)
    if bad := set(only) - set(TITLES):
        ap.error(f"unknown measurement {', '.join(sorted(bad))}; choose from {', '.join(TITLES)}")
    signal.signal(signal.SIGTERM, signal.default_int_handler)   # clean up when killed, too
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    b = Bench(a)
    sections = []
    try:
        host = machine(b)
        for key in [k for k in TITLES if k in only]:
            log(TITLES[key])
            s = Section(key)
            try:
                getattr(b, f"m_{key}")(s)
            except BenchError as e:
                s.error = str(e)
                log(f"{key}: not measured: {s.error}")
            sections.append(s)
    finally:
        log("cleaning up")
        b.cleanup()
    a.out.write_text(report(b, sections, started, host))
    log(f"wrote {a.out}")
    return 1 if any(s.error for s in sections) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        log("interrupted; cleaned up, nothing written")
        sys.exit(130)
    except ImagekitError as e:
        log(e.message)
        sys.exit(2)
