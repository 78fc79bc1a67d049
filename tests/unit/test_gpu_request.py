"""The GPU request, checked by the arguments sent to the engine (no engine
needed): what `docker run --gpus all` sends, when the engine can give GPUs,
and when imagekit asks for them."""

from __future__ import annotations

import pytest
from fakes import FakeDockerAPI, FakeEngine
from helpers import REPO

from imagekit.engine import Engine, ImageInfo
from imagekit.errors import GpuUnavailable
from imagekit.smoke import NO_GPU_NOTE, SmokeTarget, gpu_choice
from imagekit.spec import Catalog
from imagekit.targets import ImageTarget


def _created(gpus: bool):
    api = FakeDockerAPI()
    with Engine(api).container("img", ["python", "x.py"], name="n", gpus=gpus):
        pass
    create = next(c for c in api.calls if c[0] == "create")
    return create[2]["HostConfig"], api.calls


def test_gpus_all_is_a_device_request():
    hc, calls = _created(True)
    (req,) = hc["DeviceRequests"]
    assert req["Count"] == -1 and req["Capabilities"] == [["gpu"]]
    assert calls[-1] == ("remove", "c0ffee", True)


def test_no_gpu_request_by_default():
    hc, _ = _created(False)
    assert not hc.get("DeviceRequests")


def test_container_removed_on_interrupt():
    api = FakeDockerAPI()
    with pytest.raises(KeyboardInterrupt):
        with Engine(api).container("img", ["true"], name="n"):
            raise KeyboardInterrupt
    assert api.calls[-1] == ("remove", "c0ffee", True)


@pytest.mark.parametrize("info,capable", [
    ({"Runtimes": {"runc": {}}}, False),
    ({"Runtimes": {"runc": {}, "nvidia": {"path": "nvidia-container-runtime"}}}, True),
    ({"Runtimes": {"runc": {}}, "DefaultRuntime": "nvidia"}, True),
    ({"Runtimes": {"runc": {}}, "DiscoveredDevices": [{"Source": "cdi", "ID": "nvidia.com/gpu=0"}]},
     True),
])
def test_gpu_capability_from_engine_info(info, capable):
    assert Engine(FakeDockerAPI(info=info)).gpu_capable() is capable


def _target(plan) -> SmokeTarget:
    return SmokeTarget.of(ImageTarget(plan.name, plan.spec.image_ref(), ImageInfo("sha256:1"), plan))


def test_gpu_choice_rules():
    cat = Catalog(REPO / "images")
    gpu_img, cpu_img = _target(cat.resolve("ocr-gpu")), _target(cat.resolve("ocr-cpu"))
    no_gpu, has_gpu = FakeEngine(gpu=False), FakeEngine(gpu=True)
    assert gpu_choice(gpu_img, no_gpu, "auto") == (False, NO_GPU_NOTE)
    assert gpu_choice(gpu_img, has_gpu, "auto") == (True, None)
    assert gpu_choice(cpu_img, has_gpu, "auto") == (False, None)
    assert gpu_choice(gpu_img, has_gpu, "off")[0] is False
    assert gpu_choice(cpu_img, has_gpu, "require") == (True, None)
    with pytest.raises(GpuUnavailable) as e:
        gpu_choice(gpu_img, no_gpu, "require")
    assert e.value.exit_code == 9
