"""Tests of worker capabilities: NVML probing (faked), CPU fallback and metadata shape."""

from __future__ import annotations

import types

import pytest

from sleap_rtc.core.metadata import matches_filters
from sleap_rtc.core.protocol import Prop, Tag
from sleap_rtc.worker.capabilities import (
    CapabilityError,
    Capabilities,
    GpuInfo,
    detect_capabilities,
    format_cuda_version,
    probe_gpu,
)


class NVMLError(Exception):
    pass


def fake_nvml(names: list[str], mem_bytes: int = 80 * 1024**3, cuda: int = 12040, init_fails: bool = False):
    """A stand-in for the ``pynvml`` module reporting the given GPUs."""
    state = {"shutdown": 0}

    def init():
        if init_fails:
            raise NVMLError("NVML Shared Library Not Found")

    return types.SimpleNamespace(
        nvmlInit=init,
        nvmlShutdown=lambda: state.__setitem__("shutdown", state["shutdown"] + 1),
        nvmlDeviceGetCount=lambda: len(names),
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: names[h].encode(),  # old pynvml returns bytes
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(total=mem_bytes),
        nvmlSystemGetCudaDriverVersion=lambda: cuda,
        state=state,
    )


def test_probe_gpu_reads_nvml():
    nvml = fake_nvml(["NVIDIA A100", "NVIDIA H200"], mem_bytes=143771 * 1024**2)
    info = probe_gpu(1, nvml=nvml)
    assert info == GpuInfo(model="NVIDIA H200", memory_mb=143771, cuda_version="12.4", index=1)
    assert nvml.state["shutdown"] == 1
    assert probe_gpu(None, nvml=nvml).model == "NVIDIA A100"


def test_no_gpu_falls_back_to_cpu_but_never_invents_one():
    assert probe_gpu(None, nvml=fake_nvml([], init_fails=True)) == GpuInfo(model="CPU", memory_mb=0)
    assert probe_gpu(None, nvml=fake_nvml([])).model == "CPU"
    with pytest.raises(CapabilityError, match="no NVIDIA GPU"):
        probe_gpu(0, nvml=fake_nvml([], init_fails=True))
    with pytest.raises(CapabilityError, match="out of range"):
        probe_gpu(2, nvml=fake_nvml(["A", "B"]))


def test_format_cuda_version():
    assert format_cuda_version(12040) == "12.4"
    assert format_cuda_version(11080) == "11.8"
    assert format_cuda_version(0) == ""


def test_metadata_shape_uses_protocol_names_and_is_discoverable():
    caps = Capabilities(worker_name="gpu-box", hostname="host1", gpu=GpuInfo("NVIDIA H200", 143771, "12.4", 0),
                        sleap_nn_version="0.3.5", sleap_version=None)
    md = caps.metadata("busy")
    assert md["tags"] == [Tag.SLEAP_RTC, Tag.TRAINING_WORKER, Tag.INFERENCE_WORKER]
    props = md["properties"]
    assert props[Prop.GPU_MODEL] == "NVIDIA H200" and props[Prop.GPU_MEMORY_MB] == 143771
    assert props[Prop.STATUS] == "busy" and props[Prop.WORKER_NAME] == "gpu-box"
    assert props[Prop.SUPPORTED_JOB_TYPES] == ["training", "inference"]
    assert "gpu_name" not in props
    assert matches_filters("worker", md, {"role": "worker", "properties": {"gpu_memory_mb": {"$gte": 100000}}})


def test_detect_capabilities_on_this_machine():
    caps = detect_capabilities(name="w1")
    assert caps.worker_name == "w1" and caps.hostname
    assert caps.sleap_nn_version == "0.3.5"  # installed in the test environment
    # This CI machine has no GPU: it must not claim one.
    if caps.gpu.model == "CPU":
        assert caps.gpu.memory_mb == 0
