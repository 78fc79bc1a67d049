"""A quick run of the benchmark harness itself on the smallest session
image: it must measure both sides, write the table and ratios where it is told
(never over the repo's BENCHMARKS.md) and leave nothing behind. Not a benchmark."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

from helpers import REPO


def test_bench_quick_run(mxnet_image, docker_api, tmp_path):
    only = "save,smoke,inspect" if shutil.which("zip") else "smoke,inspect"
    out = tmp_path / "BENCH.md"
    repo_md = REPO / "BENCHMARKS.md"
    before = repo_md.read_bytes() if repo_md.exists() else None
    images_before = {t for i in docker_api.images() for t in i.get("RepoTags") or []}
    p = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--only", only,
                        "-C", str(mxnet_image.project.root), "--image", mxnet_image.name,
                        "--out", str(out)], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, (p.stdout + p.stderr)[-3000:]
    md = out.read_text()
    assert "Quick run (`--quick`)" in md and "## Machine" in md and "## Goals" in md
    assert re.search(r"\| \d+ \| [\d.]+ GiB \| [\d.]+ GiB \| \d+\.\d+", md), md   # cores, mem, disk, engine
    ratio = r"\| [\d.]+ (?:s|MB) \| [\d.]+ (?:s|MB) \| \d+\.\d\d× \|"
    if "save" in only:
        assert re.search(r"\| wall time vs `docker save` " + ratio, md), md
        assert re.search(r"\| output size vs `zip -1`'s " + ratio, md), md
        assert f"docker save -o {mxnet_image.name}.tar {mxnet_image.ref}" in md
    assert re.search(r"\| framework check wall time " + ratio, md), md
    assert f"| `{mxnet_image.ref}` |" in md and re.search(r"\d+\.\d\d %", md)
    assert "not measured" not in md
    # the repo's own file is untouched; every image the bench made or tagged is gone
    assert (repo_md.read_bytes() if repo_md.exists() else None) == before
    after = {t for i in docker_api.images() for t in i.get("RepoTags") or []}
    assert not {t for t in after - images_before if t.startswith("bk")}, after - images_before
