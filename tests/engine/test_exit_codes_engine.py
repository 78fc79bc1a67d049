"""The README's exit codes that need an engine, each triggered once through the
command line (the others: tests/unit/test_exit_codes.py). Each failure is one
JSON error object on stderr with --json, no traceback, and nothing left in
the engine. The images are small ones made from the bootstrapped base (and a
`docker import`), except 17's, the suite's GPU image."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import uuid
from pathlib import Path

import pytest
from auth_listener import AuthListener
from helpers import REPO, Project, leftovers, one_error, unique

MOUNT = "/bin/mount"


def _build(docker_api, ref: str, dockerfile: str) -> str:
    for item in docker_api.build(fileobj=io.BytesIO(dockerfile.encode()), tag=ref, rm=True,
                                 forcerm=True, decode=True):
        assert "error" not in item, item
    return ref


@pytest.fixture(scope="module")
def made(docker_api, base_image, tmp_path_factory):
    """A throwaway project and the images the cases use, removed at the end:
    `tiny` (one imported layer of 2 MB of random bytes, a catalog image of the
    project with no smoke record), and images FROM the base: `plain` (Python,
    no framework), `nouser` (a USER the engine cannot find), `sleeper` (its
    entrypoint sleeps, whatever command it is given)."""
    project = Project(tmp_path_factory.mktemp("exits") / "proj")
    (project.root / "imagekit.toml").write_text("[bases]\n")
    tiny = unique("ikexit")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        payload = os.urandom(2 * 1024 * 1024)
        info = tarfile.TarInfo("payload.bin")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    docker_api.import_image_from_data(buf.getvalue(), repository=tiny, tag="test")
    project.add(tiny, {"framework": {"name": "pytorch", "version": "2.13.0"}, "tags": ["test"]})
    refs = {"tiny": f"{tiny}:test", "plain": base_image}
    for key, lines in (("nouser", 'USER ikexit-no-such-user\n'),
                       ("sleeper", 'ENTRYPOINT ["/bin/sh", "-c", "sleep 300"]\n')):
        refs[key] = _build(docker_api, f"{unique('ikexit-' + key)}:t",
                           f"FROM {base_image}\n{lines}")
    yield project, tiny, refs
    for key, ref in refs.items():
        if key != "plain":
            for img in docker_api.images(name=ref.split(":")[0]):
                for tag in img.get("RepoTags") or []:
                    docker_api.remove_image(tag, force=True)
    for img in docker_api.images(name=f"127.0.0.1:*/team/{tiny}"):
        for tag in img.get("RepoTags") or []:
            docker_api.remove_image(tag, force=True)


@pytest.fixture
def tmpfs(tmp_path):
    """Mount a tmpfs: (size, options) -> its folder; unmounted afterwards."""
    mounted = []

    def mount(size: str, *options: str) -> Path:
        d = tmp_path / f"tmpfs{len(mounted)}"
        d.mkdir()
        opts = ",".join([f"size={size}", *options])
        r = subprocess.run([MOUNT, "-t", "tmpfs", "-o", opts, "tmpfs", str(d)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here (root needed): {r.stderr.strip()}")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", str(d)], capture_output=True)


def test_6_build_failed(tmp_path):
    """FROM an image no engine or registry has: the build fails naming it."""
    project = Project(tmp_path / "proj")
    (project.root / "imagekit.toml").write_text(
        '[pip]\nindex_url = "http://127.0.0.1:1/simple"\n')       # nothing to fetch
    name = unique("ikexit-build")
    project.add(name, {"framework": {"name": "pytorch", "version": "2.13.0"},
                       "base": f"ikexit-missing-{uuid.uuid4().hex[:8]}:1", "tags": ["test"]})
    obj = one_error(project.run("--json", "build", name, timeout=300), 6)
    # the classic builder fails at step 1/N (FROM); BuildKit while resolving the base
    assert "ikexit-missing-" in obj["message"], obj


def test_8_smoke_failed(made, docker_api):
    project, _, refs = made
    obj = one_error(project.run("--json", "smoke", refs["plain"], timeout=300), 8)
    assert "no framework found" in obj["message"]
    assert leftovers(docker_api, refs["plain"]) == []


def test_9_gpu_required(made, docker_api):
    project, _, refs = made
    if docker_api.info().get("Runtimes", {}).get("nvidia"):
        pytest.skip("this engine has a GPU runtime")
    obj = one_error(project.run("--json", "smoke", refs["plain"], "--gpu", "require",
                                timeout=300), 9)
    assert "--gpu require" in obj["message"]


def test_10_push_failed(made):
    project, tiny, _ = made
    r = project.run("--json", "push", tiny, "--to", "127.0.0.1:1/team", "--no-smoke-gate",
                    "--retries", "0", timeout=300)
    one_error(r, 10)


def test_11_authentication_failed(made, tmp_path):
    project, tiny, _ = made
    with AuthListener() as listener:
        r = project.run("--json", "push", tiny, "--to", f"{listener.host}/team",
                        "--no-smoke-gate", "--username", "u", "--password-stdin",
                        input="wrong-password\n", env={"DOCKER_CONFIG": str(tmp_path)},
                        timeout=300)
    obj = one_error(r, 11)
    assert "wrong-password" not in r.output and "401" in obj["message"]


def test_12_smoke_gate(made):
    project, tiny, _ = made
    obj = one_error(project.run("--json", "push", tiny, "--to", "127.0.0.1:1/team",
                                timeout=300), 12)
    assert "has not passed its smoke test" in obj["message"]


def test_13_save_failed(made, tmpfs):
    project, tiny, _ = made
    folder = tmpfs("4m", "ro")
    one_error(project.run("--json", "save", tiny, "--tar", "-o", str(folder / "x.tar"),
                          timeout=300), 13)
    assert list(folder.iterdir()) == []


def test_14_load_failed(tmp_path):
    bad = tmp_path / "corrupt.tar"
    bad.write_bytes(b"this is not an image archive\n" * 1000)
    one_error(Project(tmp_path / "proj").run("--json", "load", str(bad), timeout=300), 14)


def test_15_disk_full(made, tmpfs):
    project, tiny, _ = made
    folder = tmpfs("1m")
    one_error(project.run("--json", "save", tiny, "--tar", "-o", str(folder / "x.tar"),
                          timeout=300), 15)
    assert [p.name for p in folder.iterdir()] == []


def test_16_engine_refused(made, docker_api):
    project, _, refs = made
    obj = one_error(project.run("--json", "smoke", refs["nouser"], timeout=300), 16)
    assert "ikexit-no-such-user" in obj["message"]
    assert leftovers(docker_api, refs["nouser"]) == []


def test_17_platform_mismatch(gpu_image, docker_api):
    """The suite's GPU image (CUDA 11, so NVIDIA driver >= 450.80.02) against a
    platform with an older driver."""
    r = gpu_image.project.run("--json", "smoke", gpu_image.name, "--driver", "418.40.04",
                              timeout=900)
    assert "418.40.04" in one_error(r, 17)["message"]
    assert leftovers(docker_api, gpu_image.ref) == []


def test_130_interrupted_smoke(made, docker_api):
    """Ctrl-C (SIGINT) while a smoke container runs: 130, one line, nothing left."""
    project, _, refs = made
    ref = refs["sleeper"]
    proc = subprocess.Popen([sys.executable, "-m", "imagekit", "-C", str(project.root), "--json",
                             "smoke", ref], cwd=REPO, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        while not docker_api.containers(filters={"label": f"io.imagekit.for={ref}"}):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no smoke container started"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, (out[-1500:], err)
    [line] = err.strip().splitlines()
    assert json.loads(line)["exit_code"] == 130 and "Traceback" not in err
    assert leftovers(docker_api, ref) == []


def test_130_interrupted_push_removes_the_tags_it_made(made, docker_api, tmp_path):
    """Ctrl-C while the engine pushes (it retries a refused upload for about a
    minute): 130, one line, and the REGISTRY/NAMESPACE/REPO:TAG it made is gone."""
    project, tiny, _ = made
    with AuthListener() as listener:
        proc = subprocess.Popen(
            [sys.executable, "-m", "imagekit", "-C", str(project.root), "--json", "push", tiny,
             "--to", f"{listener.host}/team", "--no-smoke-gate", "--via-engine", "--username", "u",
             "--password-stdin"], cwd=REPO, text=True, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env={**os.environ, "DOCKER_CONFIG": str(tmp_path)})
        try:
            proc.stdin.write("pw\n")
            proc.stdin.close()
            assert listener.wait_for_authorization(60), "the push never reached the listener"
            made_ref = f"{listener.host}/team/{tiny}:test"
            assert [made_ref] == [t for img in docker_api.images() for t in img["RepoTags"] or []
                                  if t == made_ref]
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    out, err = proc.stdout.read(), proc.stderr.read()
    assert proc.returncode == 130, (out[-1500:], err)
    [line] = err.strip().splitlines()
    assert json.loads(line)["exit_code"] == 130
    left = [t for img in docker_api.images() for t in img["RepoTags"] or [] if t == made_ref]
    assert left == [], "the tag made for the interrupted push is left"
