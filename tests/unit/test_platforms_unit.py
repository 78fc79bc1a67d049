"""Platform profiles as data: the shipped file, a project's own, their
validation; the contract a smoke run gets from one; the verdict lines; the
image's `train` launcher."""

from __future__ import annotations

import shlex
import subprocess

import pytest
from helpers import imagekit

from imagekit import platforms, render
from imagekit.errors import ConfigError
from imagekit.smoke import RunOutcome, _Contract, _contract_problems

REQUIRED = {"cloud-training", "pumpkin-workbench", "sagemaker", "vertex-ai",
            "kubeflow-notebook", "pytorchjob"}


def test_the_shipped_profiles_hold_the_six_platforms_and_validate():
    shipped = platforms.shipped()
    assert REQUIRED <= set(shipped)
    sm = shipped["sagemaker"]
    assert sm.args == ["train"] and sm.mounts.output == "/opt/ml/model"
    assert sm.env["SM_MODEL_DIR"] == "{output}"
    kf = shipped["kubeflow-notebook"]
    assert kf.user == "1000:100" and kf.notebook.base_url_env == "NB_PREFIX"
    assert shipped["pytorchjob"].nodes == 2 and "RANK" in shipped["pytorchjob"].env
    assert shipped["openshift"].user == "arbitrary"


def test_a_project_profile_is_validated_one_line_per_problem():
    with pytest.raises(ConfigError) as e:
        platforms.validate_own({"x": {"mounts": {"data": "rel", "output": "/o"}, "user": "bob",
                                      "env": {"A": "{nope}"}, "shm": 3}}, "imagekit.toml")
    lines = e.value.lines()
    assert len(lines) == 4
    assert any("platforms.x.mounts.data" in x for x in lines)
    assert any("platforms.x.user: 'bob' is not root, arbitrary or UID[:GID]" in x for x in lines)
    assert any("unknown placeholder {nope}" in x for x in lines)
    assert any("platforms.x.shm: unknown field" in x for x in lines)
    with pytest.raises(ConfigError, match="overlaps"):
        platforms.validate_own({"x": {"mounts": {"data": "/d", "output": "/d/out"}}}, "t")


def test_imagekit_platforms_lists_shipped_and_own(tmp_path):
    (tmp_path / "imagekit.toml").write_text(
        '[platforms.mine]\ndescription = "my cluster"\nuser = "2000:2000"\nshm_mb = 1024\n'
        'mounts = { data = "/in", output = "/out" }\n')
    r = imagekit("-C", str(tmp_path), "--output", "plain", "platforms")
    assert r.code == 0, r.output
    rows = {line.split("\t")[0]: line.split("\t") for line in r.stdout.splitlines() if "\t" in line}
    assert REQUIRED <= set(rows)
    assert rows["mine"][2] == "2000:2000" and rows["mine"][3] == "1024"
    assert rows["mine"][-1] == "imagekit.toml" and rows["sagemaker"][7] == "IMAGE train"
    (tmp_path / "imagekit.toml").write_text('[platforms.bad]\nnodes = 0\n')
    r = imagekit("-C", str(tmp_path), "platforms")
    assert r.code == 3 and len(r.stderr.strip().splitlines()) == 1
    assert "platforms.bad.nodes" in r.stderr


def test_a_contract_fills_the_platforms_variables_and_files():
    c = _Contract.of("sagemaker", platforms.shipped()["sagemaker"])
    assert c.env["SM_MODEL_DIR"] == "/opt/ml/model"
    assert c.env["SM_CHANNEL_TRAINING"] == "/opt/ml/input/data/training"
    assert c.env["SM_HOSTS"] == '["algo-1"]' and c.env["SM_CURRENT_HOST"] == "algo-1"
    assert b'"hosts": ["algo-1"]' in c.files["opt/ml/input/config/resourceconfig.json"]
    assert c.run_as.user == "0:0" and c.run_as.shm_mb == 64 and c.var_for("output") == "SM_MODEL_DIR"
    arb = _Contract.of("openshift", platforms.shipped()["openshift"])
    uid, gid = arb.run_as.user.split(":")
    assert int(uid) >= platforms.ARBITRARY_UIDS[0] and gid == "0"


@pytest.mark.parametrize("profile,tail,code,want", [
    ("k8s-readonly", ["OSError: [Errno 30] Read-only file system: '/opt/app/cache'"], 1,
     "writes /opt/app/cache on the read-only root file system; k8s-readonly makes only"),
    ("openshift", ["PermissionError: [Errno 13] Permission denied: '/opt/venv/x'"], 1,
     "cannot write /opt/venv/x as uid"),
    ("cloud-training", ["ERROR: Unexpected bus error encountered in worker. This might be "
                        "caused by insufficient shared memory (shm)."], 1,
     "needs more than the platform's 64 MB /dev/shm"),
    ("sagemaker", ["exec: \"train\": executable file not found in $PATH"], 127,
     "sagemaker starts the container as `IMAGE train`, and the image has no `train` command"),
    ("cloud-training", ["ValueError: nope"], 3, "training exited with code 3 under "
                                                  "cloud-training: ValueError: nope"),
])
def test_contract_problems_name_the_reason(profile, tail, code, want):
    c = _Contract.of(profile, platforms.shipped()[profile])
    lines = _contract_problems(c, RunOutcome(code, 1.0, tail), "training")
    assert any(want in x for x in lines), lines


def test_the_train_launcher_runs_the_command_with_sagemakers_folders(tmp_path):
    lines = render.train_launcher(
        "python train.py --data-dir {data_dir} --out={output_dir}/run \"$HOME\" 'a\"b'",
        "/data/data", "/data/output", "/opt/app")
    script = tmp_path / "train"
    # the RUN step's printf, run here by bash
    subprocess.run(["bash", "-c", f"printf '%s\\n' {' '.join(lines)} > {shlex.quote(str(script))}"],
                   check=True)
    text = script.read_text()
    assert text.startswith("#!/bin/sh\ncd /opt/app || exit 1\nexec ")
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").write_text('#!/bin/sh\nfor a in "$@"; do echo "[$a]"; done\n')
    (fake / "python").chmod(0o755)
    env = {"PATH": f"{fake}:/usr/bin:/bin", "HOME": "/home/x"}
    out = subprocess.run(["sh", "-c", text.split("\n", 2)[2], "train", "--steps", "5"],
                         capture_output=True, text=True, env=env, cwd=tmp_path).stdout
    assert out.split() == ["[train.py]", "[--data-dir]", "[/data/data]", "[--out=/data/output/run]",
                           "[$HOME]", "[a\"b]", "[--steps]", "[5]"]
    env.update(SM_CHANNEL_TRAINING="/opt/ml/input/data/training", SM_MODEL_DIR="/opt/ml/model")
    out = subprocess.run(["sh", "-c", text.split("\n", 2)[2], "train"], capture_output=True,
                         text=True, env=env, cwd=tmp_path).stdout
    assert "[/opt/ml/input/data/training]" in out.split() and \
        "[--out=/opt/ml/model/run]" in out.split()


def test_an_unknown_profile_is_named_where_it_was_asked_for(tmp_path):
    r = imagekit("-C", str(tmp_path), "smoke", "x", "--platform", "nope")
    assert r.code == 2 and "--platform 'nope': no such platform profile" in r.stderr
    (tmp_path / "imagekit.toml").write_text('[platform]\nprofile = "nope"\n')
    r = imagekit("-C", str(tmp_path), "smoke", "x")
    assert r.code == 3 and "[platform] profile 'nope': no such platform profile" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
