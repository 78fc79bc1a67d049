"""The GPU request, checked by the arguments sent to the engine (no engine
needed): what `docker run --gpus all` sends, and when imagekit asks for it."""

from __future__ import annotations

import docker
import pytest

from imagekit.engine import Engine
from imagekit.errors import GpuUnavailable
from imagekit.smoke import NO_GPU_NOTE, gpu_choice
from imagekit.spec import Catalog


class Recorder(docker.APIClient):
    def __init__(self):
        super().__init__(base_url="unix:///nonexistent.sock", version="1.41")
        self.calls = []

    def create_container(self, image, **kw):
        self.calls.append(("create", image, kw))
        return {"Id": "c0ffee"}

    def start(self, cid):
        self.calls.append(("start", cid))

    def put_archive(self, cid, path, data):
        self.calls.append(("put", cid, path))

    def remove_container(self, cid, force=False, v=False):
        self.calls.append(("remove", cid, force))


def _created(gpus: bool):
    api = Recorder()
    with Engine(api).container("img", ["python", "x.py"], name="n", gpus=gpus):
        pass
    create = next(c for c in api.calls if c[0] == "create")
    return create[2]["host_config"], api.calls


def test_gpus_all_is_a_device_request():
    hc, calls = _created(True)
    (req,) = hc["DeviceRequests"]
    assert req["Count"] == -1 and req["Capabilities"] == [["gpu"]]
    assert calls[-1] == ("remove", "c0ffee", True)


def test_no_gpu_request_by_default():
    hc, _ = _created(False)
    assert not hc.get("DeviceRequests")


def test_container_removed_on_interrupt():
    api = Recorder()
    with pytest.raises(KeyboardInterrupt):
        with Engine(api).container("img", ["true"], name="n"):
            raise KeyboardInterrupt
    assert api.calls[-1] == ("remove", "c0ffee", True)


class FakeInfoEngine(Engine):
    def __init__(self, info):
        self._info = info

    def info(self):
        return self._info


@pytest.mark.parametrize("info,capable", [
    ({"Runtimes": {"runc": {}}}, False),
    ({"Runtimes": {"runc": {}, "nvidia": {"path": "nvidia-container-runtime"}}}, True),
    ({"Runtimes": {"runc": {}}, "DiscoveredDevices": [{"Source": "cdi", "ID": "nvidia.com/gpu=0"}]},
     True),
])
def test_gpu_capability_from_engine_info(info, capable):
    assert FakeInfoEngine(info).gpu_capable() is capable


def test_gpu_choice_rules():
    from helpers import REPO
    cat = Catalog(REPO / "images")
    gpu_plan, cpu_plan = cat.resolve("ocr-gpu"), cat.resolve("ocr-cpu")
    no_gpu, has_gpu = FakeInfoEngine({}), FakeInfoEngine({"Runtimes": {"nvidia": {}}})
    assert gpu_choice(gpu_plan, no_gpu, "auto") == (False, NO_GPU_NOTE)
    assert gpu_choice(gpu_plan, has_gpu, "auto") == (True, None)
    assert gpu_choice(cpu_plan, has_gpu, "auto") == (False, None)
    assert gpu_choice(gpu_plan, has_gpu, "off")[0] is False
    with pytest.raises(GpuUnavailable) as e:
        gpu_choice(gpu_plan, no_gpu, "require")
    assert e.value.exit_code == 9
