"""The N-node check against the real engine: two containers of the suite's
PyTorch and TensorFlow images on a private network meet, agree on an
all-reduce and train; ranks that cannot meet fail within the bound, with one
line; nothing imagekit made is left (containers, network, volumes); a network
a dead imagekit process left is swept."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest
from helpers import drive, leftovers, unique

from imagekit import platforms
from imagekit.engine import Engine
from imagekit.errors import SmokeError
from imagekit.smoke import SmokeTarget, _Contract, _Log, _Runner
from imagekit.smoke_nodes import NodesResult, nodes
from imagekit.spec import SmokeSpec


def _run_nodes(built, framework: str, tmp_path, profile: platforms.Profile, timeout: int = 300):
    engine = Engine.connect()
    target = SmokeTarget(built.name, built.ref, built.image_id, framework, None, "cpu",
                         SmokeSpec())
    run = _Runner(target, engine, _Log(tmp_path / "smoke.log"), False, timeout, False)
    return drive(nodes(run, _Contract.of("pytorchjob", profile), 2, framework))


def _networks(docker_api, ref: str) -> list[str]:
    return [n["Name"] for n in docker_api.networks(filters={"label": f"io.imagekit.for={ref}"})]


@pytest.mark.parametrize("fixture,framework", [("torch_image", "pytorch"),
                                               ("tf_image", "tensorflow")])
def test_two_nodes_meet_agree_and_train(request, fixture, framework, docker_api, tmp_path):
    built = request.getfixturevalue(fixture)
    started = time.monotonic()
    _, res = _run_nodes(built, framework, tmp_path, platforms.shipped()["pytorchjob"])
    wall = time.monotonic() - started
    assert leftovers(docker_api, built.ref) == [] and _networks(docker_api, built.ref) == []
    assert isinstance(res, NodesResult) and res.covered and res.framework == framework
    assert res.allreduce == [3.0, 3.0] and res.agreed
    for r in res.ranks:
        assert r["exit"] == 0 and r["loss_last"] < 0.5 * r["loss_first"], r
    assert res.ranks[0]["weights"] == pytest.approx(res.ranks[1]["weights"], rel=1e-5)
    print(f"\n2-node {framework}: {wall:.1f} s in all; " + "; ".join(
        f"{r['host']} {r['seconds']} s, loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}"
        for r in res.ranks))


def test_ranks_that_cannot_meet_fail_within_the_bound(torch_image, docker_api, tmp_path):
    """WORLD_SIZE says 3 while 2 nodes run: the group never forms. With a 40 s
    smoke timeout the ranks give up after 10 s and say so."""
    job = platforms.shipped()["pytorchjob"]
    profile = job.model_copy(update={"env": {**job.env, "WORLD_SIZE": "3"}})
    started = time.monotonic()
    with pytest.raises(SmokeError) as e:
        _run_nodes(torch_image, "pytorch", tmp_path, profile, timeout=40)
    wall = time.monotonic() - started
    assert e.value.message.startswith(
        f"{torch_image.name}: 2-node check under pytorchjob: the ranks did not meet within 10 s")
    assert wall < 40
    assert leftovers(docker_api, torch_image.ref) == [] and \
        _networks(docker_api, torch_image.ref) == []
    print(f"\nranks that cannot meet: failed after {wall:.1f} s")


def test_sweep_removes_a_network_a_dead_process_left(docker_api):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    name = unique("imagekit-smoke-swept") + "-net"
    docker_api.create_network(name, driver="bridge", internal=True, labels={
        "io.imagekit.owned": "true", "io.imagekit.for": name, "io.imagekit.host":
        socket.gethostname(), "io.imagekit.pid": dead})
    mine = docker_api.create_network(unique("imagekit-smoke-alive") + "-net", driver="bridge",
                                     internal=True, labels={
                                         "io.imagekit.owned": "true",
                                         "io.imagekit.host": socket.gethostname(),
                                         "io.imagekit.pid": str(os.getpid())})
    try:
        Engine.connect()          # sweeps what dead processes left
        assert docker_api.networks(names=[name]) == []
        assert docker_api.networks(ids=[mine["Id"]])     # a live process's network stays
    finally:
        for n in (name, mine["Id"]):
            try:
                docker_api.remove_network(n)
            except Exception:  # noqa: BLE001 - already gone
                pass
