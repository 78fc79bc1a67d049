"""`imagekit smoke NAME --platform P`: the image's own training and the
notebook run under a training platform's contract, and what breaks it is
named in one line each (exit 8)."""

from __future__ import annotations

import json

from helpers import leftovers, unique

PYTHON_WRITES_VAR = "python -c \"open('/var/lib/imagekit-state.txt', 'w').write('x')\""
NEEDS_SHM = ("python -c \"from multiprocessing import shared_memory as s; "
             "m = s.SharedMemory(create=True, size=200 * 2**20); m.buf[:] = bytes(200 * 2**20)\"")


def _smoke(built, *args, ref: str | None = None):
    what = [ref] if ref else [built.name]
    return built.project.run("--json", "smoke", *what, *args, timeout=900)


def _report(r) -> dict:
    events = [json.loads(x) for x in r.stdout.splitlines() if x.startswith("{")]
    return next(e["data"] for e in events if e["event"] == "result" and e["stage"] == "smoke")


def _error(r) -> list[str]:
    lines = [json.loads(x) for x in r.stderr.splitlines() if x.startswith("{")]
    assert lines and all(e["event"] == "error" for e in lines), r.stderr[-2000:]
    return [e["message"] for e in lines]


def test_sagemaker_names_the_path_it_writes_and_the_one_it_collects(tf_image, docker_api):
    r = _smoke(tf_image, "--platform", "sagemaker")
    assert r.code == 8, r.output[-3000:]
    [line] = _error(r)
    assert "breaks the sagemaker contract" in line
    assert "writes its checkpoint to /data/output" in line
    assert "sagemaker collects /opt/ml/model (SM_MODEL_DIR)" in line
    assert leftovers(docker_api, tf_image.ref) == []


def test_a_spec_writing_to_output_dir_passes_sagemaker_and_its_seed_platform(
        session_project, tf_image, docker_api):
    """The same code with {data_dir} / {output_dir} in train.command: `docker
    run IMAGE train` (the image's launcher) takes SageMaker's folders, and
    the seed platform's run its own."""
    import types
    name = unique("ocr-sm")
    session_project.copy("ocr-cpu", name, tags=["test"], train={
        "command": "python tools/train_shadownet.py --data-dir {data_dir} "
                   "--output-dir {output_dir}"})
    r = session_project.run("build", name, timeout=1800)
    assert r.code == 0, r.output[-3000:]
    built = types.SimpleNamespace(project=session_project, name=name, ref=f"{name}:test")
    try:
        for platform, where in (("sagemaker", "/opt/ml/model"), ("cloud-training", "/data/output")):
            r = _smoke(built, "--platform", platform)
            assert r.code == 0, r.output[-3000:]
            rep = _report(r)
            assert rep["platform"] == platform and rep["passed"] is True
            cmds = [run["command"] for run in rep["training"]["runs"]]
            if platform == "sagemaker":
                assert cmds[0][:1] == ["train"], cmds        # docker run IMAGE train ...
            else:
                assert cmds[0][cmds[0].index("--output-dir") + 1] == where, cmds
            assert any(f.startswith("checkpoint") or "ckpt" in f
                       for f in rep["training"]["output_files"]), rep["training"]
        assert leftovers(docker_api, built.ref) == []
    finally:
        docker_api.remove_image(built.ref, force=True)


def test_held_out_images_fail_the_contract_that_forbids_them(tf_image, docker_api, tmp_path):
    """What runs as root with a writable root and Docker's /dev/shm fails,
    with its reason, under a profile that forbids it."""
    toml = tf_image.project.root / "imagekit.toml"
    before = toml.read_text()
    toml.write_text(before + '\n[platforms.ro-root-test]\nread_only_root = true\n'
                             'writable = ["/tmp"]\nmounts = { output = "/data/output" }\n')
    try:
        ref = tf_image.ref
        r = _smoke(tf_image, "--platform", "cloud-training", "--command", PYTHON_WRITES_VAR,
                   ref=ref)
        assert r.code == 0, r.output[-3000:]                       # the control: root, writable
        cases = [("openshift", PYTHON_WRITES_VAR, "cannot write /var/lib/imagekit-state.txt as uid"),
                 ("k8s-readonly", PYTHON_WRITES_VAR, "/var/lib/imagekit-state.txt"),
                 ("ro-root-test", PYTHON_WRITES_VAR,
                  "writes /var/lib/imagekit-state.txt on the read-only root file system"),
                 ("cloud-training", NEEDS_SHM, "needs more than the platform's 64 MB /dev/shm")]
        for platform, command, reason in cases:
            r = _smoke(tf_image, "--platform", platform, "--command", command, ref=ref)
            assert r.code == 8, (platform, r.output[-3000:])
            lines = _error(r)
            assert any(f"breaks the {platform} contract" in x and reason in x for x in lines), \
                (platform, lines)
            assert not any("Traceback" in x for x in lines)     # the container's is a detail
        assert leftovers(docker_api, ref) == []
    finally:
        toml.write_text(before)


def test_notebook_passes_kubeflow_as_uid_1000_and_its_seed_platform(notebook_image, docker_api):
    for platform, who in (("kubeflow-notebook", "NB_PREFIX=/imagekit/smoke/ as uid 1000 gid 100"),
                          ("pumpkin-workbench", "PUMPKIN_JPY_BASE_URL=/imagekit/smoke/ as root")):
        r = _smoke(notebook_image, "--platform", platform)
        assert r.code == 0, r.output[-3000:]
        rep = _report(r)
        assert rep["platform"] == platform and rep["notebook"]["lab"] == 200
        said = [json.loads(x).get("message", "") for x in r.stdout.splitlines()
                if x.startswith("{")]
        assert any(who in m for m in said), said
    assert leftovers(docker_api, notebook_image.ref) == []


def test_a_bad_profile_in_imagekit_toml_is_one_line_exit_3(tf_image):
    toml = tf_image.project.root / "imagekit.toml"
    before = toml.read_text()
    toml.write_text(before + '\n[platforms.broken]\nuser = "bob"\n')
    try:
        r = tf_image.project.run("smoke", tf_image.name, "--platform", "broken")
        assert r.code == 3
        [line] = r.stderr.strip().splitlines()
        assert line.startswith("imagekit: ") and line.endswith(
            "imagekit.toml: platforms.broken.user: 'bob' is not root, arbitrary or "
            "UID[:GID] (e.g. 1000:100)"), line
    finally:
        toml.write_text(before)


def test_pytorchjob_two_nodes_agree_and_nothing_is_left(torch_image, docker_api):
    """`imagekit smoke detectron2-base --platform pytorchjob --nodes 2`."""
    nets_before = {n["Id"] for n in docker_api.networks()}
    r = _smoke(torch_image, "--platform", "pytorchjob", "--nodes", "2")
    assert r.code == 0, r.output[-3000:]
    rep = _report(r)
    nodes = rep["nodes"]
    assert nodes["nodes"] == 2 and nodes["agreed"] is True and nodes["covered"] is True
    assert nodes["allreduce"] == [3.0, 3.0]
    assert [x["exit"] for x in nodes["ranks"]] == [0, 0]
    assert all(x["loss_last"] < x["loss_first"] for x in nodes["ranks"])
    assert rep["training"]["runs"] and rep["platform"] == "pytorchjob"
    assert leftovers(docker_api, torch_image.ref) == []
    assert {n["Id"] for n in docker_api.networks()} == nets_before


def test_a_distributed_training_runs_as_one_job_on_two_nodes(torch_image, child_of, docker_api):
    """train.distributed: the image's own training (imagekit new's PyTorch
    starter: gloo + DDP) on both nodes of a pytorchjob, rank 0's checkpoint."""
    from helpers import REPO
    code = (REPO / "templates" / "new" / "train_pytorch.py").read_text()
    ddp = child_of(torch_image, "ddp", {
        "code": {"src": "code", "dest": "/opt/ddp"}, "workdir": "/opt/ddp",
        "train": {"command": "python train.py --data-dir {data_dir} --output-dir {output_dir}",
                  "distributed": True},
        "smoke": {"steps": 20, "steps_args": "--steps {steps}", "expect": ["checkpoint.pt"]}},
        files={"code/train.py": code})
    nets_before = {n["Id"] for n in docker_api.networks()}
    r = _smoke(ddp, "--platform", "pytorchjob")
    assert r.code == 0, r.output[-3000:]
    rep = _report(r)
    tr = rep["training"]
    assert tr["nodes"] == 2 and [x["exit"] for x in tr["runs"]] == [0, 0]
    assert "checkpoint.pt" in tr["output_files"]
    assert rep["nodes"]["agreed"] is True
    log = (ddp.project.root / rep["log"]).read_text() if not rep["log"].startswith("/") else \
        open(rep["log"]).read()
    assert "[node-0] rank 0 of 2" in log and "[node-1] rank 1 of 2" in log
    assert leftovers(docker_api, ddp.ref) == []
    assert {n["Id"] for n in docker_api.networks()} == nets_before
