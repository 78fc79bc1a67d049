"""`imagekit inspect` on an image built to waste a known number of bytes."""

from __future__ import annotations

import json

from helpers import docker_cli, imagekit, unique

DOCKERFILE = """FROM imagekit/base:bookworm
RUN head -c 3000000 /dev/zero > /deleted.bin && head -c 1000000 /dev/zero > /overwritten.bin \\
 && mkdir -p /opq && head -c 500000 /dev/zero > /opq/gone.bin
RUN rm /deleted.bin && head -c 7 /dev/zero > /overwritten.bin
RUN rm -rf /opq && mkdir /opq && echo kept > /opq/new.txt
"""


def _result(stdout: str) -> dict:
    """The data of `inspect --json`'s result event."""
    events = [json.loads(x) for x in stdout.splitlines() if x.startswith("{")]
    return next(e["data"] for e in events if e["event"] == "result" and e["stage"] == "inspect")


def test_wasted_bytes_are_counted(tmp_path, base_image, docker_api):
    (tmp_path / "Dockerfile").write_text(DOCKERFILE)
    ref = f"{unique('waste')}:test"
    r = docker_cli("build", "-q", "-t", ref, str(tmp_path))
    assert r.returncode == 0, r.stderr
    try:
        res = imagekit("--json", "inspect", ref)
        assert res.code == 0, res.output
        rep = _result(res.stdout)
        assert rep["wasted_bytes"] == 3_000_000 + 1_000_000 + 500_000
        assert rep["efficiency"] < 1
        top = {w["path"]: w["bytes"] for w in rep["top_wasted"]}
        assert top["deleted.bin"] == 3_000_000 and top["overwritten.bin"] == 1_000_000
        assert top["opq/gone.bin"] == 500_000
        assert len(rep["layers"]) == 4 and rep["layers"][1]["wasted"] == 4_500_000
        plain = imagekit("inspect", ref)
        assert "wasted 4.50 MB" in plain.stdout and "efficiency" in plain.stdout
    finally:
        docker_cli("rmi", "-f", ref)


def test_catalog_image_is_efficient(mxnet_image):
    rep = _result(imagekit("--json", "inspect", mxnet_image.ref).stdout)
    assert rep["efficiency"] >= 0.99, rep["top_wasted"]
    assert rep["python_packages"]["mxnet"] == "1.9.1"
    assert rep["labels"]["io.imagekit.framework"] == "mxnet"
