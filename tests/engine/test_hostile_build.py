"""Nothing outside a spec's code folder reaches an image, proven through real
builds: a link to a secret outside code/ is refused by validate and by build
(no image is made), and links that stay inside arrive in the image as links."""

from __future__ import annotations

import random
import re
import shutil

import pytest
from helpers import docker_cli, unique

SECRET = '{"auths": {"registry.example.com": {"auth": "c2VjcmV0LXRva2Vu"}}}'


@pytest.fixture(scope="session", autouse=True)
def _own_wheelhouse_port(session_project):
    """This session's builds serve the wheelhouse on a port of their own."""
    cfg = session_project.root / "imagekit.toml"
    port = random.randint(17400, 17499)
    cfg.write_text(re.sub(r"(?m)^port = \d+$", f"port = {port}", cfg.read_text()))


def _no_image(docker_api, name: str) -> bool:
    return not docker_api.images(name=name)


def test_link_to_a_file_outside_code_never_reaches_an_image(session_project, tf_image, docker_api,
                                                             tmp_path):
    secret = tmp_path / "docker-config.json"
    secret.write_text(SECRET)
    name = unique("hostile-out")
    d = session_project.add(name, {"parent": tf_image.name, "tags": ["test"],
                                   "code": {"src": "code", "dest": "/opt/hostile"}},
                            {"code/run.py": "print('ok')\n"})
    (d / "code" / "config.json").symlink_to(secret)
    try:
        r = session_project.run("validate", name)
        assert r.code == 3, r.output
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert len(lines) == 1, r.stderr
        assert "code/config.json is a link to" in lines[0] and str(secret) in lines[0]
        assert "outside the code folder" in lines[0]

        r = session_project.run("build", name, timeout=600)
        assert r.code == 3, r.output[-2000:]
        assert "outside the code folder" in r.stderr and "Traceback" not in r.output
        assert "c2VjcmV0LXRva2Vu" not in r.output
        assert _no_image(docker_api, name)

        # a directory link out is refused the same way
        (d / "code" / "config.json").unlink()
        (d / "code" / "home").symlink_to(tmp_path, target_is_directory=True)
        r = session_project.run("build", name, timeout=600)
        assert r.code == 3 and "code/home is a link to" in r.stderr, r.output[-2000:]
        assert _no_image(docker_api, name)
    finally:
        shutil.rmtree(d)


def test_links_inside_code_are_kept_as_links(session_project, tf_image, docker_api):
    name = unique("hostile-in")
    d = session_project.add(name, {"parent": tf_image.name, "tags": ["test"],
                                   "code": {"src": "code", "dest": "/opt/hostile"}},
                            {"code/data/real.txt": "inside\n"})
    code = d / "code"
    (code / "link.txt").symlink_to("data/real.txt")
    (code / "abs.txt").symlink_to(code / "data" / "real.txt")   # absolute, but inside
    (code / "datalink").symlink_to("data", target_is_directory=True)
    ref = f"{name}:test"
    try:
        r = session_project.run("build", name, timeout=900)
        assert r.code == 0, r.output[-3000:]
        probe = ("for f in link.txt abs.txt datalink; do test -L /opt/hostile/$f && "
                 "echo \"$f -> $(readlink /opt/hostile/$f)\"; done; cat /opt/hostile/link.txt; "
                 "ls /opt/hostile/datalink/")
        p = docker_cli("run", "--rm", "--network", "none", ref, "sh", "-c", probe)
        assert p.returncode == 0, p.stderr
        assert p.stdout.splitlines() == ["link.txt -> data/real.txt", "abs.txt -> data/real.txt",
                                         "datalink -> data", "inside", "real.txt"], p.stdout
    finally:
        docker_cli("rmi", "-f", ref)
        shutil.rmtree(d)
