"""In-process fake workers: plain ``SignalingClient``s registered as role ``worker``."""

from __future__ import annotations

from sleap_rtc.core.signaling import SignalingClient


def worker_metadata(name: str, gpu: str = "NVIDIA RTX A5000", memory_mb: int = 24576, status: str = "available",
                    inference_inputs: tuple[str, ...] | None = ("video", "data_root", "model_id")) -> dict:
    """Metadata as a real worker advertises it (``inference_inputs=None``: an older worker)."""
    extra = {} if inference_inputs is None else {"inference_inputs": list(inference_inputs)}
    return {
        "tags": ["sleap-rtc", "training-worker"],
        "properties": {
            "worker_name": name,
            "gpu_model": gpu,
            "gpu_memory_mb": memory_mb,
            "status": status,
            "hostname": f"{name}.lab",
            **extra,
        },
    }


async def start_fake_worker(url: str, room: tuple[str, str], name: str, **props) -> SignalingClient:
    """Register a fake worker in ``room``; close it with ``await client.close()``."""
    client = SignalingClient(
        url, room_id=room[0], token=room[1], role="worker", peer_id=f"worker-{name}", metadata=worker_metadata(name, **props),
        events=False, reconnect=False,
    )
    await client.connect()
    return client
