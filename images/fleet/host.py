"""What a fleet worker reports about where it runs, in its registration: the GPU and the bucketrun version."""

from __future__ import annotations

import importlib.metadata
from typing import Any


def gpu() -> dict[str, Any] | None:
    try:
        import pynvml  # nvidia-ml-py, when the image has it

        pynvml.nvmlInit()
        h = pynvml.nvmlDeviceGetHandleByIndex(0)
        name = pynvml.nvmlDeviceGetName(h)
        return {"name": name.decode() if isinstance(name, bytes) else name,
                "vram_mb": pynvml.nvmlDeviceGetMemoryInfo(h).total // 2**20}
    except Exception:  # noqa: BLE001 - no NVIDIA library or no GPU: reported as none
        return None


def version() -> str:
    try:
        return importlib.metadata.version("bucketrun")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"
