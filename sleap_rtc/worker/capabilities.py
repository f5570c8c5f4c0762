"""What a worker advertises in the room: GPU facts from NVML, software versions, identity
(name, host, and the public half of its identity key).

GPU facts come from NVML (``nvidia-ml-py``, imported as ``pynvml``) because importing torch
at start-up costs seconds and gigabytes; a machine without a GPU or without the NVIDIA
driver advertises ``gpu_model: "CPU"`` and ``gpu_memory_mb: 0``. Nothing here lets a flag
claim hardware the machine does not have: ``--gpu INDEX`` only selects among the GPUs NVML
reports. Tests build a ``Capabilities`` directly instead.
"""

from __future__ import annotations

import importlib.metadata
import logging
import socket
from dataclasses import dataclass, field
from typing import Any

from sleap_rtc.core.identity import fingerprint_of
from sleap_rtc.core.protocol import Prop, Tag, WorkerStatus

log = logging.getLogger(__name__)

JOB_TYPES = ("training", "inference")
"""Job types every worker supports (it runs both ``sleap-nn train`` and ``sleap-nn track``)."""


class CapabilityError(RuntimeError):
    """The requested GPU does not exist on this machine."""


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as NVML describes it (or the CPU stand-in when there is none)."""

    model: str = "CPU"
    memory_mb: int = 0
    cuda_version: str = ""
    index: int | None = None


@dataclass(frozen=True)
class Capabilities:
    """Everything a worker advertises, turned into metadata by ``metadata()``."""

    worker_name: str
    hostname: str
    gpu: GpuInfo = field(default_factory=GpuInfo)
    sleap_nn_version: str | None = None
    sleap_version: str | None = None
    job_types: tuple[str, ...] = JOB_TYPES
    max_concurrent_jobs: int = 1
    public_key: str | None = None  # the worker's identity key (core.identity), base64

    def metadata(self, status: WorkerStatus | str = WorkerStatus.AVAILABLE) -> dict[str, Any]:
        """The ``{"tags": [...], "properties": {...}}`` object registered with the server."""
        tags = [Tag.SLEAP_RTC.value]
        if "training" in self.job_types:
            tags.append(Tag.TRAINING_WORKER.value)
        if "inference" in self.job_types:
            tags.append(Tag.INFERENCE_WORKER.value)
        identity = {}
        if self.public_key is not None:
            identity = {Prop.PUBLIC_KEY.value: self.public_key, Prop.FINGERPRINT.value: fingerprint_of(self.public_key)}
        return {
            "tags": tags,
            "properties": {
                **identity,
                Prop.GPU_MODEL.value: self.gpu.model,
                Prop.GPU_MEMORY_MB.value: int(self.gpu.memory_mb),
                Prop.CUDA_VERSION.value: self.gpu.cuda_version,
                Prop.SLEAP_NN_VERSION.value: self.sleap_nn_version,
                Prop.SLEAP_VERSION.value: self.sleap_version,
                Prop.HOSTNAME.value: self.hostname,
                Prop.WORKER_NAME.value: self.worker_name,
                Prop.STATUS.value: str(WorkerStatus(status).value),
                Prop.MAX_CONCURRENT_JOBS.value: int(self.max_concurrent_jobs),
                Prop.SUPPORTED_JOB_TYPES.value: list(self.job_types),
                Prop.INFERENCE_INPUTS.value: list(INFERENCE_INPUTS),
            },
        }


INFERENCE_INPUTS = ("video", "data_root", "model_id")
"""What this worker's inference entries may name besides package files (``core.inference``)."""


def package_version(name: str) -> str | None:
    """Installed version of a distribution, ``None`` when it is not installed."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _text(value: Any) -> str:
    # Older pynvml versions return bytes for names.
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def format_cuda_version(raw: int) -> str:
    """NVML's integer driver CUDA version (e.g. 12040) as ``"12.4"``."""
    return f"{raw // 1000}.{(raw % 1000) // 10}" if raw > 0 else ""


def probe_gpu(index: int | None = None, nvml: Any = None) -> GpuInfo:
    """The GPU at ``index`` (default 0) via NVML; the CPU stand-in when there is no GPU.

    Raises ``CapabilityError`` when an index is asked for that NVML does not report, so a
    flag can never advertise a GPU the machine lacks. ``nvml`` is for tests (a fake module).
    """
    if nvml is None:
        try:
            import pynvml as nvml  # nvidia-ml-py
        except ImportError:
            nvml = None
    if nvml is None:
        if index is not None:
            raise CapabilityError(f"--gpu {index} was given but NVML (nvidia-ml-py) is not installed.")
        return GpuInfo()
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError: no driver / no GPU on this machine
        if index is not None:
            raise CapabilityError(f"--gpu {index} was given but no NVIDIA GPU is usable here ({exc}).") from None
        log.info("no NVIDIA GPU found (%s); advertising CPU", exc)
        return GpuInfo()
    try:
        count = nvml.nvmlDeviceGetCount()
        if count == 0:
            if index is not None:
                raise CapabilityError(f"--gpu {index} was given but NVML reports no GPU.")
            return GpuInfo()
        chosen = 0 if index is None else index
        if not 0 <= chosen < count:
            raise CapabilityError(f"--gpu {index} is out of range: this machine has {count} GPU(s) (0..{count - 1}).")
        handle = nvml.nvmlDeviceGetHandleByIndex(chosen)
        model = _text(nvml.nvmlDeviceGetName(handle))
        memory_mb = int(nvml.nvmlDeviceGetMemoryInfo(handle).total) // (1024 * 1024)
        try:
            cuda = format_cuda_version(int(nvml.nvmlSystemGetCudaDriverVersion()))
        except Exception:
            cuda = ""
        return GpuInfo(model=model, memory_mb=memory_mb, cuda_version=cuda, index=chosen)
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass


def detect_capabilities(name: str | None = None, gpu_index: int | None = None) -> Capabilities:
    """Probe this machine: GPU via NVML, sleap-nn/sleap versions, hostname."""
    hostname = socket.gethostname()
    return Capabilities(
        worker_name=name or hostname,
        hostname=hostname,
        gpu=probe_gpu(gpu_index),
        sleap_nn_version=package_version("sleap-nn"),
        sleap_version=package_version("sleap"),
    )
