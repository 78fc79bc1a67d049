"""`imagekit smoke NAME --engine URL` against a second, separate engine that
starts without the image: it is shipped there (streamed: export -> load, no
registry was pushed to), trains there, and nothing is left on either engine."""

from __future__ import annotations

import json

from helpers import leftovers


def _events(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def test_smoke_on_another_engine_ships_the_image_and_trains_there(remote_tf, docker_api,
                                                                  second_engine):
    r = remote_tf.run
    assert r.code == 0, r.output[-3000:]
    assert not remote_tf.held_before, "the second engine must start without the image"
    events = _events(r.stdout)
    said = [e.get("message", "") for e in events if e.get("event") == "info"]
    assert any(m.startswith(f"streaming {remote_tf.built.ref}") and second_engine.url in m
               for m in said), said
    assert any(m.startswith(f"shipped {remote_tf.built.ref} to {second_engine.url}") and
               "streamed" in m for m in said), said
    [result] = [e for e in events if e.get("event") == "result" and e.get("stage") == "smoke"]
    data = result["data"]
    assert data["passed"] is True and data["error"] is None
    assert data["image_id"] == remote_tf.built.image_id
    assert data["framework_check"]["ok"] is True
    runs = data["training"]["runs"]
    assert len(runs) == 2 and all(run["exit"] == 0 for run in runs), runs
    assert data["training"]["resumed_from"] == data["training"]["steps"]
    # the same image, by ID, on the other engine
    assert remote_tf.image_there == remote_tf.built.image_id
    # nothing left behind on either engine
    assert remote_tf.left_here == []
    assert leftovers(docker_api, remote_tf.built.ref) == []
    assert remote_tf.containers_there == []
    assert remote_tf.volumes_there == []
    print(f"remote smoke (ship + train) took {remote_tf.seconds}s")
