"""A locked build on the real engine (MXNet CPU, the smallest framework, with
one package of the spec's own): `imagekit lock` then `imagekit build`, and the
image holds exactly the lock: `pip list` gives its versions, the bill of
materials its hashes, the label its digest. A lock whose hash does not match
the wheel fails the build naming the package."""

from __future__ import annotations

import hashlib
import json
import re

from conftest import remove_image
from helpers import docker_cli, unique


def _pip_list(ref: str) -> dict[str, str]:
    r = docker_cli("run", "--rm", "--network", "none", "--entrypoint", "pip", ref,
                   "list", "--format", "json", "--disable-pip-version-check")
    assert r.returncode == 0, r.stderr
    return {_key(p["name"]): p["version"] for p in json.loads(r.stdout)}


def _key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock_entries(text: str) -> dict[str, tuple[str, str]]:
    out = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+) \\$", line)
        if m:
            out[_key(m[1])] = (m[2], lines[i + 1].strip().removeprefix("--hash=sha256:"))
    return out


def test_a_locked_build_installs_exactly_the_lock(session_project, base_image, docker_api):
    project = session_project
    name = unique("locked")
    project.copy("ssd-mxnet-cpu", name, tags=["test"], pip=["six==1.17.0"])
    ref = f"{name}:test"
    try:
        r = project.run("lock", name, timeout=600)
        assert r.code == 0, r.output[-3000:]
        assert f"wrote {project.root}/images/{name}/requirements.lock" in r.stdout, r.output
        lock_file = project.root / "images" / name / "requirements.lock"
        locked = _lock_entries(lock_file.read_text())
        assert {"mxnet", "numpy", "six", "pip"} <= set(locked)

        r = project.run("build", name, timeout=1800)
        assert r.code == 0, r.output[-3000:]
        assert "no requirements.lock" not in r.output

        installed = _pip_list(ref)
        assert installed == {k: v for k, (v, _) in locked.items()}

        # the bill of materials: every Python package hashed by its wheel, as locked
        r = project.run("sbom", name, timeout=300)
        assert r.code == 0, r.output[-2000:]
        doc = json.loads(r.stdout)
        hashes = {_key(c["name"]): c["hashes"][0]["content"] for c in doc["components"]
                  if c.get("purl", "").startswith("pkg:pypi/") and c.get("hashes")}
        assert hashes == {k: h for k, (_, h) in locked.items()}
        props = {p["name"]: p["value"] for p in doc["metadata"]["component"]["properties"]}
        digest = docker_api.inspect_image(ref)["Config"]["Labels"]["io.imagekit.lock"]
        assert digest == "sha256:" + hashlib.sha256(lock_file.read_bytes()).hexdigest()
        assert props["imagekit:requirements-lock"] == digest

        # a hash that is not the wheel's: the install step fails, naming the package
        text = lock_file.read_text()
        six_hash = locked["six"][1]
        lock_file.write_text(text.replace(six_hash, "0" * 64))
        r = project.run("build", name, timeout=1800)
        assert r.code == 6, r.output[-3000:]
        error = r.stderr.strip().splitlines()[0]
        assert "build failed at step" in error, error
        assert error.endswith(f"the wheel of six==1.17.0 does not have the sha256 the lock gives "
                              f"it ({project.root}/images/{name}/requirements.lock)"), error
        assert "Traceback" not in r.stderr
    finally:
        remove_image(docker_api, ref)
