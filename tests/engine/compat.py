"""The other engines users run, beside the suite's own (Engine 26, classic
store): Debian 12's Engine 20.10 and Engine 26 with the containerd image
store. Each is a SecondEngine (tests/engine/second_engine.py) started for the
session on a unix socket of its own, holding the project's base image (copied
from the first engine), and removed with everything it made at the end.

Engine 20.10 is Debian bookworm's docker.io, extracted into
/var/cache/imagekit-tests/engines/docker-20.10/ ($IMAGEKIT_TEST_ENGINES) and
downloaded there with `apt-get download` the first time; Engine 26 is the
system's dockerd when it is 26, else trixie's docker.io the same way. A
fixture skips only when those binaries cannot be had (no apt, no mirror);
an engine that does not start, or is not the engine asked for, fails."""

from __future__ import annotations

import json
import os
import subprocess

import pytest
from second_engine import EngineUnavailable, SecondEngine, engine_binaries

from imagekit.base import CHANGES

# label -> what the engine said it is and how long its dockerd took to answer (summary)
STARTED: dict[str, str] = {}


def _compat_engine(tmp_path_factory, base_image: str, *, major: str,
                   containerd_store: bool, label: str):
    if os.geteuid() != 0:
        pytest.skip(f"{label}: a second dockerd (own bridge, mounts) needs root")
    try:
        binaries = engine_binaries(major)
    except EngineUnavailable as e:
        pytest.skip(f"{label}: cannot have its binaries: {e}")
    engine = SecondEngine(tmp_path_factory.mktemp(label.replace(" ", "").replace(".", "")),
                          binaries=binaries, containerd_store=containerd_store, unix=True,
                          label=label)
    try:
        engine.start()
        info = engine.info()
        version = str(info.get("ServerVersion", ""))
        status = dict(info.get("DriverStatus") or [])
        assert version.startswith(f"{major}."), f"{label}: the engine says {version}"
        snapshotter = status.get("driver-type") == "io.containerd.snapshotter.v1"
        assert snapshotter == containerd_store, \
            f"{label}: storage driver {info.get('Driver')}, {status}"
        if containerd_store:    # a base layer stored gzip'd, as `imagekit base bootstrap` makes it
            engine.import_from_first(base_image, CHANGES)
        else:
            engine.load_from_first(base_image)
        STARTED[label] = (f"{engine.describe()} at {engine.url}: answered in "
                          f"{engine.start_seconds}s ({binaries.origin})")
        yield engine
    finally:
        engine.close()


@pytest.fixture(scope="session")
def engine_2010(tmp_path_factory, base_image):
    """Engine 20.10 (Debian 12's docker.io), classic store, with the base image."""
    yield from _compat_engine(tmp_path_factory, base_image, major="20.10",
                              containerd_store=False, label="Engine 20.10")


@pytest.fixture(scope="session")
def engine_26_containerd(tmp_path_factory, base_image):
    """Engine 26 with the containerd image store, with the base image."""
    yield from _compat_engine(tmp_path_factory, base_image, major="26",
                              containerd_store=True, label="Engine 26 containerd store")


# -- what an engine holds, read where each store keeps it -------------------------------

def config_digest(engine: SecondEngine, ref: str) -> str:
    """The image config's digest: the same on every store. The classic store's
    image ID is that digest; the containerd store's is the manifest's (or
    index's), so there it is read from containerd's content store."""
    if not engine.containerd_store:
        return engine.api().inspect_image(ref)["Id"]
    name = ref if "/" in ref.split(":")[0] else f"docker.io/library/{ref}"
    ctr = ["ctr", "-a", str(engine.containerd_socket), "-n", engine.namespace]
    rows = subprocess.run([*ctr, "images", "ls"], capture_output=True, text=True,
                          check=True).stdout.splitlines()
    digest = next((r.split()[2] for r in rows[1:] if r.split()[0] == name), None)
    assert digest, f"containerd holds no {name}: {rows}"
    for _ in range(3):          # index -> manifest -> config
        blob = json.loads(subprocess.run([*ctr, "content", "get", digest], capture_output=True,
                                         check=True).stdout)
        if "config" in blob:
            return blob["config"]["digest"]
        digest = next(m["digest"] for m in blob["manifests"]
                      if (m.get("platform") or {}).get("architecture") == "amd64")
    raise AssertionError(f"no config under {name}")


def diff_ids(engine: SecondEngine, ref: str) -> list[str]:
    return list(engine.api().inspect_image(ref)["RootFS"]["Layers"])


def started_lines() -> list[str]:
    return [f"{label}: {what}" for label, what in STARTED.items()]


__all__ = ["engine_2010", "engine_26_containerd", "config_digest", "diff_ids", "started_lines"]
