"""The N-node check (imagekit/smoke_nodes.py) against the fake engine: one
private network and N containers with each node's rendezvous variables, its
host name as its alias, the check script copied in; the ranks' reports
compared, one line per problem; the network and every container removed on
every way out. Engine.network and the aliases a container gets on it, over
the API's wire format (FakeDockerAPI)."""

from __future__ import annotations

import contextlib
import json

import pytest
from fakes import ContainerScript, FakeDockerAPI, FakeEngine
from helpers import drive

from imagekit import platforms, smoke_nodes
from imagekit.engine import Engine, RunAs
from imagekit.errors import Interrupted, SmokeError
from imagekit.events import Info, Log, Warn
from imagekit.smoke import REPORT_MARK, SmokeTarget, _Contract, _Log, _Runner
from imagekit.smoke_nodes import NodesResult, nodes
from imagekit.spec import SmokeSpec

REF = "x:v1"
IID = "sha256:" + "ab" * 32


def report(rank: int, world: int = 2, **kw) -> str:
    rep = {"framework": "pytorch", "version": "2.13.0", "host": f"node-{rank}", "rank": rank,
           "world_size": world, "allreduce": world * (world + 1) / 2,
           "expected": world * (world + 1) / 2, "steps": 50, "loss_first": 5.5,
           "loss_last": 0.15, "weights": -2.48, "seconds": 6.0, "ok": True, "stage": "done",
           "reason": None, **kw}
    return REPORT_MARK + json.dumps(rep)


def rank_of(env: dict) -> int:
    """A node's rank from its variables (-1: not a node, e.g. a helper container)."""
    if "TF_CONFIG" in env:
        return int(json.loads(env["TF_CONFIG"])["task"]["index"])
    return int(env.get("RANK", -1))


def per_rank(eng: FakeEngine, scripts: dict[int, ContainerScript]) -> FakeEngine:
    """Each node's container does what scripts[its rank] says (the nodes run
    one command; their variables tell them apart)."""
    original = eng.container

    @contextlib.contextmanager
    def container(image, command=None, **kw):
        with original(image, command, **kw) as cid:
            script = scripts.get(rank_of(kw.get("env") or {}))
            if script is not None:
                c = eng.containers[-1]
                c.script = script
                for vol, dst in c.volumes.items():      # what it leaves in its volumes
                    eng.volume_files.setdefault(vol, []).extend(script.writes.get(dst, []))
            yield cid

    eng.container = container
    return eng


def engine(framework: str = "pytorch", **scripts: ContainerScript) -> FakeEngine:
    eng = FakeEngine()
    eng.add_image(REF, IID)
    ok = {r: ContainerScript(logs=[f"rank {r} of 2: all-reduce 3", report(r, framework=framework)])
          for r in (0, 1)}
    ok.update({int(k.removeprefix("rank")): s for k, s in scripts.items()})
    return per_rank(eng, ok)


def runner(tmp_path, eng: FakeEngine, framework: str | None = "pytorch", timeout: int = 600) \
        -> _Runner:
    target = SmokeTarget("x", REF, IID, framework, "2.13.0", "cpu", SmokeSpec())
    return _Runner(target, eng, _Log(tmp_path / "smoke.log"), False, timeout, False)


def contract(name: str) -> _Contract:
    return _Contract.of(name, platforms.shipped()[name])




def containers(eng: FakeEngine) -> list[dict]:
    return eng.calls_to("container")


def all_removed(eng: FakeEngine) -> bool:
    return all(c.removed for c in eng.containers) and not any(eng.networks.values())


def test_two_pytorch_nodes_under_pytorchjob(tmp_path):
    eng = engine()
    events, res = drive(nodes(runner(tmp_path, eng), contract("pytorchjob"), 2, "pytorch"))
    assert isinstance(res, NodesResult)
    assert res.nodes == 2 and res.framework == "pytorch" and res.covered
    assert res.allreduce == [3.0, 3.0] and res.agreed
    assert [(r["rank"], r["exit"], r["loss_first"], r["loss_last"]) for r in res.ranks] == \
        [(0, 0, 5.5, 0.15), (1, 0, 5.5, 0.15)]
    assert all(r["seconds"] >= 0 for r in res.ranks) and res.seconds >= 0
    # one internal network, made and removed
    [net] = eng.calls_to("network")
    assert net["owner"] == REF and list(eng.networks) == [net["name"]]
    # two containers on it, each known by its host name; rank 0's is MASTER_ADDR
    made = containers(eng)
    assert len(made) == 2
    for rank, c in enumerate(made):
        run_as: RunAs = c["run_as"]
        assert run_as.network == net["name"] and run_as.hostname == f"node-{rank}"
        assert run_as.aliases == (f"node-{rank}",)
        assert run_as.user == "0:0" and run_as.shm_mb == 64          # pytorchjob's contract
        assert c["gpus"] is False and c["network"] is True
        env = c["env"]
        assert env["RANK"] == str(rank) and env["WORLD_SIZE"] == "2"
        assert env["MASTER_PORT"] == "23456"                         # the profile's, not ours
        assert env["PET_NODE_RANK"] == str(rank) and env["PET_NNODES"] == "2"
        assert c["command"][:2] == ["python", "/imagekit/checks/distributed.py"]
        assert c["command"][2:6] == ["--framework", "pytorch", "--steps", "50"]
    assert made[0]["env"]["MASTER_ADDR"] == made[1]["env"]["MASTER_ADDR"] == \
        made[0]["run_as"].aliases[0]
    assert len({c["name"] for c in made}) == 2
    assert all("imagekit/checks/distributed.py" in c.file_names() for c in eng.containers)
    assert all_removed(eng)
    # every node's lines come through, marked with its host; the reports do not
    logs = [e.line for e in events if isinstance(e, Log)]
    assert "[node-0] rank 0 of 2: all-reduce 3" in logs and "[node-1] rank 1 of 2: all-reduce 3" in logs
    assert not any(REPORT_MARK in line for line in logs)
    info = [e.message for e in events if isinstance(e, Info)]
    assert any("2-node check ok under pytorchjob" in m and "all-reduce 3 on every rank" in m
               for m in info)
    assert "[node-1] IMAGEKIT_REPORT" in (tmp_path / "smoke.log").read_text()


def test_without_a_platform_imagekit_gives_the_rendezvous(tmp_path):
    eng = engine()
    _, res = drive(nodes(runner(tmp_path, eng), None, 2))
    assert res.agreed
    for rank, c in enumerate(containers(eng)):
        assert c["run_as"].user == "0:0" and c["run_as"].shm_mb == 64
        assert c["env"]["MASTER_ADDR"] == "node-0" and c["env"]["MASTER_PORT"] == "29500"
        assert c["env"]["RANK"] == str(rank) and c["env"]["WORLD_SIZE"] == "2"


def test_three_nodes(tmp_path):
    eng = per_rank(FakeEngine(), {r: ContainerScript(logs=[report(r, world=3)]) for r in range(3)})
    eng.add_image(REF, IID)
    _, res = drive(nodes(runner(tmp_path, eng), contract("pytorchjob"), 3))
    assert res.allreduce == [6.0, 6.0, 6.0] and res.agreed
    assert [c["env"]["WORLD_SIZE"] for c in containers(eng)] == ["3"] * 3
    assert [c["run_as"].hostname for c in containers(eng)] == ["node-0", "node-1", "node-2"]


def test_tensorflow_nodes_get_a_tf_config_with_every_node_as_a_worker(tmp_path):
    eng = engine("tensorflow")
    _, res = drive(nodes(runner(tmp_path, eng, "tensorflow"), contract("pytorchjob"), 2))
    assert res.framework == "tensorflow" and res.agreed
    for rank, c in enumerate(containers(eng)):
        cfg = json.loads(c["env"]["TF_CONFIG"])
        assert cfg == {"cluster": {"worker": ["node-0:2222", "node-1:2222"]},
                       "task": {"type": "worker", "index": rank}}
        assert c["command"][2:4] == ["--framework", "tensorflow"]


def test_a_profile_tf_config_that_names_one_task_is_replaced(tmp_path):
    eng = engine("tensorflow")
    events, res = drive(nodes(runner(tmp_path, eng, "tensorflow"), contract("vertex-ai"), 2))
    assert res.agreed
    warns = [e.message for e in events if isinstance(e, Warn)]
    assert warns == ["vertex-ai's TF_CONFIG names 1 task(s), not 2: the check gives every node "
                     "as a worker instead"]
    assert json.loads(containers(eng)[1]["env"]["TF_CONFIG"])["task"]["index"] == 1
    assert containers(eng)[1]["env"]["AIP_MODEL_DIR"]        # the platform's other variables


def test_ranks_that_disagree_fail_with_one_line(tmp_path):
    eng = engine(rank1=ContainerScript(logs=[report(1, allreduce=2.0)]))
    with pytest.raises(SmokeError) as e:
        drive(nodes(runner(tmp_path, eng), contract("pytorchjob"), 2))
    assert e.value.message == "x: 2-node check under pytorchjob: rank 1 reported all-reduce 2.0, " \
        "rank 0 3.0"
    assert e.value.problems == [] and e.value.details[-1].startswith("full log: ")
    assert all_removed(eng)


def test_agreeing_on_the_wrong_sum_fails(tmp_path):
    eng = engine(rank0=ContainerScript(logs=[report(0, allreduce=2.0)]),
                 rank1=ContainerScript(logs=[report(1, allreduce=2.0)]))
    with pytest.raises(SmokeError, match=r"every rank reported all-reduce 2.0; ranks "
                                         r"contributing 1..2 make 3.0"):
        drive(nodes(runner(tmp_path, eng), None, 2))


def test_weights_that_differ_after_training_fail(tmp_path):
    eng = engine(rank1=ContainerScript(logs=[report(1, weights=-1.9)]))
    with pytest.raises(SmokeError, match=r"rank 1 ended training with other weights than rank 0 "
                                         r"\(sum -1.9, rank 0 -2.48\)"):
        drive(nodes(runner(tmp_path, eng), None, 2))


def test_a_failed_rank_is_named_with_its_last_line(tmp_path):
    eng = engine(rank1=ContainerScript(logs=["Traceback (most recent call last):",
                                             "RuntimeError: gloo: connection reset"], exit_code=1))
    with pytest.raises(SmokeError) as e:
        drive(nodes(runner(tmp_path, eng), contract("pytorchjob"), 2))
    assert e.value.message == "x: 2-node check under pytorchjob: rank 1 exited with code 1: " \
        "RuntimeError: gloo: connection reset"
    assert "| node-1: RuntimeError: gloo: connection reset" in e.value.details
    assert all_removed(eng)


def test_a_rank_that_reports_its_reason_is_named_with_it(tmp_path):
    eng = engine(rank0=ContainerScript(logs=[report(0, ok=False, stage="training",
                                                    reason="loss did not fall: 5.5 -> 5.4")],
                                       exit_code=1))
    with pytest.raises(SmokeError, match="rank 0 exited with code 1: loss did not fall: 5.5 -> 5.4"):
        drive(nodes(runner(tmp_path, eng), None, 2))


def test_ranks_that_never_meet_say_so_once(tmp_path):
    why = "the ranks did not meet within 90 s (at node-0:23456)"
    late = {f"rank{r}": ContainerScript(logs=[report(r, ok=False, stage="rendezvous", reason=why,
                                                     allreduce=None)], exit_code=5)
            for r in (0, 1)}
    eng = engine(**late)
    with pytest.raises(SmokeError) as e:
        drive(nodes(runner(tmp_path, eng), contract("pytorchjob"), 2))
    assert e.value.message == f"x: 2-node check under pytorchjob: {why}"
    assert e.value.problems == []


def test_several_problems_one_line_each(tmp_path):
    eng = engine(rank0=ContainerScript(logs=["ImportError: libgomp.so.1"], exit_code=3),
                 rank1=ContainerScript(logs=["Killed"], exit_code=137))
    with pytest.raises(SmokeError) as e:
        drive(nodes(runner(tmp_path, eng), None, 2))
    assert e.value.problems == ["x: 2-node check: rank 0 exited with code 3: ImportError: libgomp.so.1",
                                "x: 2-node check: rank 1 exited with code 137: Killed"]
    assert all_removed(eng)


def test_the_others_are_stopped_soon_after_a_rank_fails(tmp_path, monkeypatch):
    monkeypatch.setattr(smoke_nodes, "GRACE_SECONDS", 0.3)
    eng = engine(rank0=ContainerScript(logs=["ValueError: bad shape"], exit_code=1),
                 rank1=ContainerScript(hang=True))        # would wait for rank 0 until told off
    with pytest.raises(SmokeError) as e:
        drive(nodes(runner(tmp_path, eng), None, 2))
    assert e.value.message == "x: 2-node check: rank 0 exited with code 1: ValueError: bad shape"
    assert "node-1 was still running 0.3 s after another rank failed: stopped" in e.value.details
    assert all_removed(eng)


def test_a_job_that_runs_past_the_time_limit_is_removed(tmp_path):
    eng = engine(rank1=ContainerScript(hang=True))
    with pytest.raises(SmokeError, match=r"2-node check timed out after 2s \(smoke.timeout\); the "
                                         r"containers and their network were removed"):
        drive(nodes(runner(tmp_path, eng, timeout=2), None, 2))
    assert all_removed(eng)


def test_ctrl_c_removes_the_containers_and_the_network(tmp_path):
    eng = engine()
    gen = nodes(runner(tmp_path, eng), None, 2)
    with pytest.raises(Interrupted, match="interrupted during the 2-node check"):
        for ev in gen:
            if isinstance(ev, Log):
                gen.throw(KeyboardInterrupt)
    assert all_removed(eng) and eng.containers


def test_mxnet_is_not_covered_and_nothing_runs(tmp_path):
    eng = engine()
    events, res = drive(nodes(runner(tmp_path, eng, "mxnet"), contract("pytorchjob"), 2))
    assert res.covered is False and res.framework == "mxnet" and res.ranks == []
    assert res.note == "2-node check: MXNet is not covered (PyTorch and TensorFlow are)"
    assert [e.message for e in events] == [res.note]
    assert eng.containers == [] and eng.networks == {}


def test_a_read_only_root_gets_the_script_on_the_command_line(tmp_path):
    eng = engine()
    _, res = drive(nodes(runner(tmp_path, eng), contract("k8s-readonly"), 2))
    assert res.agreed
    for c in eng.containers:
        assert c.command[:2] == ["python", "-c"] and "IMAGEKIT_REPORT" in c.command[2]
        assert c.command[3:5] == ["--framework", "pytorch"] and c.files is None
    assert all(c["run_as"].read_only and c["run_as"].user == "1000:1000" for c in containers(eng))


def test_the_driver_stand_in_goes_to_every_node(tmp_path):
    eng = engine()
    run = runner(tmp_path, eng)
    run.stub = {"imagekit/stub/libcuda.so.1": b"\x7fELF"}
    run.stub_env = {"LD_LIBRARY_PATH": "/imagekit/stub"}
    drive(nodes(run, None, 2))
    for c in eng.containers:
        assert "imagekit/stub/libcuda.so.1" in c.file_names()
        assert c.env["LD_LIBRARY_PATH"] == "/imagekit/stub"


# -- the engine: networks and aliases over the API ----------------------------------------

def test_engine_network_is_internal_labelled_and_removed():
    api = FakeDockerAPI()
    eng = Engine(api, "unix:///fake.sock")
    with pytest.raises(RuntimeError), eng.network("imagekit-smoke-1-net", "x:v1") as net:
        assert net == "imagekit-smoke-1-net"
        raise RuntimeError("boom")
    [(_, name, kw)] = [c for c in api.calls if c[0] == "create_network"]
    assert name == "imagekit-smoke-1-net" and kw["internal"] is True and kw["driver"] == "bridge"
    assert kw["labels"]["io.imagekit.owned"] == "true" and kw["labels"]["io.imagekit.for"] == "x:v1"
    assert ("remove_network", "imagekit-smoke-1-net") in api.calls


def test_a_container_joins_its_network_under_its_aliases():
    api = FakeDockerAPI()
    eng = Engine(api, "unix:///fake.sock")
    run_as = RunAs(hostname="node-1", network="net-a", aliases=("node-1",))
    with eng.container("x:v1", ["true"], name="c1", run_as=run_as):
        pass
    [(_, _, kw)] = [c for c in api.calls if c[0] == "create"]
    assert kw["Hostname"] == "node-1" and kw["HostConfig"]["NetworkMode"] == "net-a"
    assert kw["NetworkingConfig"] == {"EndpointsConfig": {"net-a": {"Aliases": ["node-1"]}}}


def test_a_container_without_aliases_gets_no_endpoint_settings():
    api = FakeDockerAPI()
    with Engine(api, "unix:///fake.sock").container("x:v1", ["true"], name="c1", network=False):
        pass
    [(_, _, kw)] = [c for c in api.calls if c[0] == "create"]
    assert "NetworkingConfig" not in kw and kw["HostConfig"]["NetworkMode"] == "none"


def test_the_check_script_is_plain_python_with_a_report_line():
    from imagekit.smoke_nodes import CHECKS_DIR
    source = (CHECKS_DIR / "distributed.py").read_text()
    compile(source, "distributed.py", "exec")
    assert "IMAGEKIT_REPORT " in source
    # stdlib and the framework only: no imagekit import, no third-party module at top level
    tops = {line.split()[1].split(".")[0] for line in source.splitlines()
            if line.startswith(("import ", "from "))}
    assert tops <= {"argparse", "json", "math", "os", "random", "socket", "sys", "threading",
                    "time", "traceback"}



def _train_target(framework: str = "pytorch") -> SmokeTarget:
    return SmokeTarget("x", REF, IID, framework, "2.13.0", "cpu",
                       SmokeSpec(steps_args="--steps {steps}", expect=["checkpoint.pt"]),
                       "python train.py --output-dir {output_dir}", distributed=True)


def test_distributed_training_runs_once_per_node_with_its_own_volumes(tmp_path):
    eng = engine(rank0=ContainerScript(logs=["rank 0 of 2"],
                                       writes={"/data/output": ["checkpoint.pt"]}),
                 rank1=ContainerScript(logs=["rank 1 of 2"]))
    run = runner(tmp_path, eng)
    run.target = _train_target()
    events, result = drive(smoke_nodes.training(run, contract("pytorchjob"), 2, 20))
    cs = [c for c in containers(eng) if c["command"][:2] == ["python", "train.py"]]
    assert len(cs) == 2
    assert [c["command"] for c in cs] == [["python", "train.py", "--output-dir", "/data/output",
                                           "--steps", "20"]] * 2
    assert sorted(rank_of(c["env"]) for c in cs) == [0, 1]
    assert all(c["env"]["WORLD_SIZE"] == "2" and c["env"]["MASTER_ADDR"] == "node-0" for c in cs)
    outs = [v for c in cs for v, path in c["volumes"].items() if path == "/data/output"]
    assert len(set(outs)) == 2                       # each node its own output volume
    assert result.nodes == 2 and [r.exit for r in result.runs] == [0, 0]
    assert result.output_files == ["checkpoint.pt"]
    assert not any(eng.volumes.values()) and not any(eng.networks.values())


def test_distributed_training_names_the_rank_that_failed(tmp_path):
    eng = engine(rank0=ContainerScript(logs=["waiting"], writes={"/data/output": ["checkpoint.pt"]}),
                 rank1=ContainerScript(logs=["RuntimeError: gloo connect failed"], exit_code=1))
    run = runner(tmp_path, eng)
    run.target = _train_target()
    with pytest.raises(SmokeError) as e:
        drive(smoke_nodes.training(run, contract("pytorchjob"), 2, 20))
    assert "training on 2 nodes under pytorchjob: rank 1 (node-1) exited with code 1: " \
           "RuntimeError: gloo connect failed" in e.value.message


def test_distributed_training_needs_rank_0s_checkpoint(tmp_path):
    eng = engine(rank0=ContainerScript(logs=["done"]), rank1=ContainerScript(logs=["done"]))
    run = runner(tmp_path, eng)
    run.target = _train_target()
    with pytest.raises(SmokeError, match="checkpoint.pt did not appear in rank 0's /data/output"):
        drive(smoke_nodes.training(run, contract("pytorchjob"), 2, 20))
