"""Engine tests: a real Docker engine, real builds, real training.

Images are shared per session (the TensorFlow one takes minutes), have unique
names, and are removed at teardown; the bootstrapped base image is kept."""

from __future__ import annotations

import docker
import pytest
from compat import engine_26_containerd, engine_2010, started_lines  # noqa: F401 (fixtures)
from helpers import Project, imagekit, unique

pytestmark = pytest.mark.engine


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/engine" in str(item.fspath):
            item.add_marker(pytest.mark.engine)


def pytest_terminal_summary(terminalreporter):
    """Which other engines the compatibility tests started, and how fast."""
    lines = started_lines()
    if lines:
        terminalreporter.section("other engines")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="session")
def docker_api():
    try:
        api = docker.APIClient(version="auto")
        api.ping()
    except Exception as e:  # noqa: BLE001
        pytest.fail(f"engine tests need a Docker engine (make engine): {e}")
    return api


@pytest.fixture(scope="session")
def base_image(docker_api):
    r = imagekit("base", "bootstrap", timeout=900)
    assert r.code == 0, r.output
    return "imagekit/base:bookworm"


class Built:
    def __init__(self, project: Project, name: str, ref: str, image_id: str):
        self.project, self.name, self.ref, self.image_id = project, name, ref, image_id


@pytest.fixture(scope="session")
def session_project(tmp_path_factory) -> Project:
    """One project for every image the engine tests share (children need
    their parents in the same catalog)."""
    project = Project(tmp_path_factory.mktemp("engine") / "proj")
    toml = project.root / "imagekit.toml"
    # a wheelhouse port of its own (another imagekit may be building with the default
    # one), fixed so that the pip layers stay cached from one test run to the next
    toml.write_text(toml.read_text().replace("port = 17311", "port = 17391"))
    return project


def build_in(project: Project, name: str, docker_api) -> Built:
    r = project.run("fetch", name, timeout=1200)
    assert r.code == 0, r.output
    r = project.run("build", name, timeout=1800)
    assert r.code == 0, r.output[-3000:]
    ref = f"{name}:test"
    return Built(project, name, ref, docker_api.inspect_image(ref)["Id"])


def build_copy(project: Project, catalog_name: str, docker_api, **changes) -> Built:
    name = unique(catalog_name)
    project.copy(catalog_name, name, tags=["test"], **changes)
    return build_in(project, name, docker_api)


def remove_image(docker_api, ref: str) -> None:
    try:
        docker_api.remove_image(ref, force=True)
    except docker.errors.NotFound:
        pass


@pytest.fixture(scope="session")
def tf_image(session_project, base_image, docker_api):
    """The ocr-cpu catalog image (TensorFlow CPU) under a unique name."""
    built = build_copy(session_project, "ocr-cpu", docker_api)
    yield built
    remove_image(docker_api, built.ref)


@pytest.fixture(scope="session")
def torch_image(session_project, base_image, docker_api):
    """The detectron2-base catalog image (PyTorch CPU) under a unique name."""
    built = build_copy(session_project, "detectron2-base", docker_api)
    yield built
    remove_image(docker_api, built.ref)


@pytest.fixture(scope="session")
def mxnet_image(session_project, base_image, docker_api):
    """The ssd-mxnet-cpu catalog image (MXNet CPU) under a unique name."""
    built = build_copy(session_project, "ssd-mxnet-cpu", docker_api)
    yield built
    remove_image(docker_api, built.ref)


@pytest.fixture(scope="session")
def child_of(session_project, docker_api):
    """Build a small child image FROM a session image; removed at the end."""
    made = []

    def make(parent: Built, prefix: str, spec: dict, files: dict | None = None) -> Built:
        name = unique(prefix)
        session_project.add(name, {"parent": parent.name, "tags": ["test"], **spec}, files)
        built = build_in(session_project, name, docker_api)
        made.append(built.ref)
        return built

    yield make
    for ref in made:
        remove_image(docker_api, ref)



@pytest.fixture(scope="session")
def notebook_image(torch_image, child_of):
    """detectron2-notebook's kind: JupyterLab FROM torch_image, its base URL from
    seed 002's platform's variable or Kubeflow's."""
    return child_of(torch_image, "notebook", {
        "jupyter": {"enabled": True, "base_url_env": ["PUMPKIN_JPY_BASE_URL", "NB_PREFIX"],
                    "notebook_dir": "/code"}})


@pytest.fixture(scope="session")
def gpu_image(session_project, base_image, docker_api):
    """The one GPU image the suite builds: the ssd-mxnet-gpu catalog image (MXNet
    with CUDA 11 from NVIDIA's wheels, about 4 GB), under a unique name."""
    built = build_copy(session_project, "ssd-mxnet-gpu", docker_api)
    yield built
    remove_image(docker_api, built.ref)


@pytest.fixture(scope="session")
def second_engine(tmp_path_factory):
    """A second, separate Docker engine (tests/engine/second_engine.py) at
    `.url`, started empty for the session and removed with its bridge and data
    at the end; `.stop(sig)` / `.start()` stop and restart it on the same data."""
    from second_engine import SecondEngine
    engine = SecondEngine(tmp_path_factory.mktemp("engine2"))
    try:
        engine.start()
        yield engine
    finally:
        engine.close()


class RemoteSmoke:
    """`imagekit smoke --engine` of tf_image against the second engine, which
    held no copy of it, and what both engines held right after."""

    def __init__(self, built: Built, run, seconds: float, held_before: bool,
                 left_here: list[str], containers_there: list[dict], volumes_there: list[dict],
                 image_there: str | None):
        self.built, self.run, self.seconds, self.held_before = built, run, seconds, held_before
        self.left_here, self.containers_there = left_here, containers_there
        self.volumes_there, self.image_there = volumes_there, image_there


@pytest.fixture(scope="session")
def remote_tf(tf_image, second_engine, docker_api) -> RemoteSmoke:
    """tf_image shipped to the second engine by its first `imagekit smoke --engine`
    there (the tests that need the image on that engine share this run)."""
    import time

    from helpers import leftovers
    api2 = second_engine.api()

    def image_id_there() -> str | None:
        try:
            return api2.inspect_image(tf_image.ref)["Id"]
        except docker.errors.NotFound:
            return None

    held_before = image_id_there() is not None
    started = time.monotonic()
    run = tf_image.project.run("--json", "smoke", tf_image.name, "--engine", second_engine.url,
                               timeout=900)
    return RemoteSmoke(tf_image, run, round(time.monotonic() - started, 1), held_before,
                       leftovers(docker_api, tf_image.ref), api2.containers(all=True),
                       api2.volumes().get("Volumes") or [], image_id_there())
