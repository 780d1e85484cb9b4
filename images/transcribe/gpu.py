"""Batch size for faster-whisper's BatchedInferencePipeline, chosen from the free memory of the GPU.

The memory model comes from faster-whisper's own benchmark table (README, "Large-v2 model on GPU", faster-whisper
v1.1.0, CUDA 12.4, RTX 3070 Ti 8GB; https://github.com/SYSTRAN/faster-whisper#benchmark). Its "VRAM Usage" is the
peak of NVML's `used` in MiB (benchmark/memory_benchmark.py), so it includes the CUDA context:

    fp16 sequential, beam 5: 4525   fp16 batch_size=8, beam 5: 6090
    int8 sequential, beam 5: 2926   int8 batch_size=8, beam 5: 4500

Reading sequential as a batch of one, each further batch item costs (6090-4525)/7 = 224 MiB in fp16 and
(4500-2926)/7 = 225 MiB in int8 (int8 quantizes weights, not activations, which fits the equal cost), and the
base is 4301 MiB (fp16) or 2701 MiB (int8). large-v3 has large-v2's size (only its 128 mel bins differ, in the
first convolution).
Smaller models scale the base by parameter count; the per-item cost stays at large's value because turbo and
distil keep large's 32-layer encoder, whose batched pass is where the batch memory goes, and because guessing high
costs throughput while guessing low costs an out-of-memory failure. float32 has no published figure: its estimate
adds a second copy of the fp16 weights (1550M x 2 bytes) and doubles the per-item cost.

Batch sizes are not rounded to powers of two: CTranslate2 pads a batch to its longest item, not to a power of two,
and the decoder's rows are batch x beam (5) anyway, so rounding would only throw away up to half the batch (27 -> 16
on a 12 GB card) for no kernel or memory gain. Flooring is already the safe direction."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping

BATCH_ENV = "BUCKETRUN_BATCH_SIZE"  # an operator's override: a whole number >= 1, used as given
DEFAULT_BATCH = 8  # the published setting, for when the free memory is unknown
MIN_BATCH, MAX_BATCH = 1, 32  # a 13-min file is ~26+ VAD chunks of <= 30 s: more would mostly hold idle memory
MARGIN = 0.10  # of free memory: NVML sampled every 0.5 s misses short peaks, and the allocator caches and fragments
RESERVE_MIB = 512  # fixed: CUDA contexts differ by card and driver, and small models' scaled base omits one

MIB = 2**20
LARGE_PARAMS = 1550
# Published peaks (MiB), large-v2: (sequential, batch_size=8), both beam 5.
PUBLISHED_MIB = {"float16": (4525, 6090), "int8": (2926, 4500)}
PARAMS_M = {"tiny": 39, "base": 74, "small": 244, "medium": 769, "large": 1550, "large-v1": 1550,
            "large-v2": 1550, "large-v3": 1550, "turbo": 809, "large-v3-turbo": 809, "distil-large-v3": 756,
            "distil-large-v2": 756, "distil-medium.en": 394, "distil-small.en": 166}
_FP16 = {"float16", "bfloat16", "default", "auto"}  # on CUDA a float16 checkpoint loads as float16 by default
_INT8 = {"int8", "int8_float16", "int8_bfloat16", "int8_float32"}


def _params_m(model: str) -> int:
    """Millions of parameters of a model named as faster-whisper names it, or by a hub id or folder ending in
    that name; unknown models count as large, the safe side."""
    name = model.rstrip("/").rsplit("/", 1)[-1].lower()
    name = name.replace("faster-distil-whisper-", "distil-").removeprefix("faster-whisper-").removeprefix("whisper-")
    for candidate in (name, name.removesuffix(".en")):
        if candidate in PARAMS_M:
            return PARAMS_M[candidate]
    return PARAMS_M["distil-large-v3"] if name.startswith("distil-large") else LARGE_PARAMS


def _published(compute_type: str) -> tuple[float, float]:
    """(base MiB of large, MiB per batch item) for a compute type."""
    ct = compute_type.lower()
    if ct in _FP16 or ct == "float32":
        one, eight = PUBLISHED_MIB["float16"]
    elif ct in _INT8:
        one, eight = PUBLISHED_MIB["int8"]
    else:
        raise ValueError(f"unknown compute type {compute_type!r} (float16, bfloat16, int8*, float32)")
    per_item = (eight - one) / 7
    base = one - per_item
    if ct == "float32":  # an estimate, not a published figure
        return base + LARGE_PARAMS * 1e6 * 2 / MIB, 2 * per_item
    return base, per_item


def footprint_mib(model: str, compute_type: str, batch: int) -> float:
    """Expected peak MiB used on the device, CUDA context included, while transcribing `batch` chunks at once."""
    base, per_item = _published(compute_type)
    return base * _params_m(model) / LARGE_PARAMS + per_item * batch


def batch_override(env: Mapping[str, str]) -> int | None:
    """BUCKETRUN_BATCH_SIZE as a whole number >= 1, or None when unset; on a CPU too (images/transcribe/settings.py)."""
    raw = (env.get(BATCH_ENV) or "").strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"{BATCH_ENV} must be a whole number >= 1, not {raw!r}")
    return value


def batch_size_for(free_bytes: int | None, model: str, compute_type: str, *,
                   env: Mapping[str, str] | None = None) -> int:
    """The largest batch whose expected footprint fits the free memory less the safety margin, within
    [MIN_BATCH, MAX_BATCH]; DEFAULT_BATCH when the free memory is unknown; BUCKETRUN_BATCH_SIZE wins when set.

    `free_bytes` is measured before the model is loaded (free_vram_bytes()): the footprint counts the weights.
    The figures assume beam 5, the batched pipeline's default. Pure apart from reading `env` (os.environ)."""
    override = batch_override(os.environ if env is None else env)
    if override is not None:
        return override
    if free_bytes is None:
        return DEFAULT_BATCH
    usable = free_bytes / MIB * (1 - MARGIN) - RESERVE_MIB
    base, per_item = footprint_mib(model, compute_type, 0), _published(compute_type)[1]
    fits = math.floor((usable - base) / per_item) if usable > base else 0
    return max(MIN_BATCH, min(MAX_BATCH, fits))


def free_vram_bytes(index: int = 0) -> int | None:
    """Free memory of CUDA device `index` through NVIDIA's NVML (nvidia-ml-py), or None when it cannot be read:
    no nvidia-ml-py, no driver, no such device. None is a safe answer (batch_size_for then uses the default).

    NVML ignores CUDA_VISIBLE_DEVICES, so a numeric list there maps `index` to the physical device (a UUID entry
    is looked up by UUID). NVML numbers devices in PCI bus order, CUDA fastest first unless CUDA_DEVICE_ORDER=
    PCI_BUS_ID: on one-GPU workers, the serverless case, both are device 0."""
    try:
        import pynvml  # nvidia-ml-py, imported here so machines without it import this module fine
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...: no usable GPU
        return None
    try:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is None:
            target = str(index)
        else:
            listed = [v.strip() for v in visible.split(",") if v.strip()]
            if index >= len(listed):
                return None
            target = listed[index]
        handle = (pynvml.nvmlDeviceGetHandleByIndex(int(target)) if target.isdigit()
                  else pynvml.nvmlDeviceGetHandleByUUID(target))
        return int(pynvml.nvmlDeviceGetMemoryInfo(handle).free)
    except Exception:  # noqa: BLE001 - any NVML failure means "unknown", never a crash
        return None
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass
