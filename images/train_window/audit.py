"""Preflight environment audit: run on each host before a training window launches, so a host short of disk,
inodes, memory or GPU memory is refused up front instead of failing hours into the window."""

from __future__ import annotations

import math
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

GB = 10**9
# cgroup v1 reports "no limit" as a page-rounded 2**63-1; anything this large cannot be a real limit.
NO_LIMIT_ABOVE = 2**60
_UNITS = (("PB", 10**15), ("TB", 10**12), ("GB", 10**9), ("MB", 10**6), ("KB", 10**3))


@dataclass
class Audit:
    """The host's facts and what falls short of the window's requirements; `ok` when nothing does."""

    filesystem_path: str
    free_disk_bytes: int
    free_inodes: int | None
    memory_total_bytes: int
    memory_available_bytes: int
    cgroup_limit_bytes: int | None
    gpus: list[dict[str, Any]]
    gpu_note: str | None
    findings: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.findings

    def to_dict(self) -> dict[str, Any]:
        """Plain dicts, lists, ints and strings, ready for json.dumps."""
        return {**asdict(self), "ok": self.ok}


def human_bytes(n: float, *, up: bool = False) -> str:
    """One decimal in the largest fitting unit; a shortfall floors what was found and ceils what is needed,
    so the two never print as the same number."""
    for unit, size in _UNITS:
        if n >= size:
            break
    else:
        return f"{math.ceil(n) if up else math.floor(n)} bytes"
    tenths = (math.ceil if up else math.floor)(round(n / size * 10, 6))
    text = f"{tenths / 10:.1f}".removesuffix(".0")
    return f"{text} {unit}"


def existing_ancestor(path: Path) -> Path:
    """The run dir is often created by the window itself; its filesystem is that of its nearest existing ancestor."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def read_cgroup_memory(cgroup_root: Path) -> tuple[int | None, int | None]:
    """(limit, current) bytes from cgroup v2 or v1 files; limit None when absent, "max" or absurdly large
    (no cgroup on macOS, unlimited containers)."""
    v2, v1 = Path(cgroup_root), Path(cgroup_root) / "memory"
    if (v2 / "memory.max").is_file():
        limit_file, current_file = v2 / "memory.max", v2 / "memory.current"
    elif (v1 / "memory.limit_in_bytes").is_file():
        limit_file, current_file = v1 / "memory.limit_in_bytes", v1 / "memory.usage_in_bytes"
    else:
        return None, None
    limit, current = _read_int(limit_file), _read_int(current_file)
    if limit is None or limit >= NO_LIMIT_ABOVE:
        return None, current
    return limit, current


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):  # "max", unreadable, missing
        return None


def gpu_facts(nvml: Any = None) -> tuple[list[dict[str, Any]], str | None]:
    """Per GPU name, total and free memory through NVIDIA's nvidia-ml-py; ([], why) when there is none to use."""
    if nvml is None:
        try:
            import pynvml as nvml  # nvidia-ml-py
        except ImportError:
            return [], "no GPU (nvidia-ml-py is not installed)"
    try:
        nvml.nvmlInit()
    except Exception as e:  # NVMLError_LibraryNotFound, DriverNotLoaded, ...: no usable GPU
        return [], f"NVML: {e}"
    try:
        gpus = []
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            gpus.append({"index": index, "name": name.decode() if isinstance(name, bytes) else str(name),
                         "memory_total_bytes": int(memory.total), "memory_free_bytes": int(memory.free)})
    except Exception as e:
        return [], f"NVML: {e}"
    finally:
        try:
            nvml.nvmlShutdown()
        except Exception:
            pass
    return gpus, (None if gpus else "no GPU")


def audit(run_dir: Path, requirements: dict[str, float] | None = None, *,
          cgroup_root: Path = Path("/sys/fs/cgroup"), nvml: Any = None) -> Audit:
    """Gather the facts and compare them with `requirements` (min_free_disk_gb, min_free_inodes,
    min_memory_gb, min_gpu_memory_gb; all optional). `cgroup_root` and `nvml` are injectable for tests."""
    fs_path = existing_ancestor(Path(run_dir))
    free_disk = shutil.disk_usage(fs_path).free
    st = os.statvfs(fs_path)
    free_inodes = st.f_favail if st.f_files else None  # btrfs and some overlays have no fixed inode table
    vm = psutil.virtual_memory()
    limit, current = read_cgroup_memory(cgroup_root)
    available = vm.available
    if limit is not None:
        available = min(available, max(0, limit - (current or 0)))
    gpus, gpu_note = gpu_facts(nvml)
    result = Audit(filesystem_path=str(fs_path), free_disk_bytes=int(free_disk), free_inodes=free_inodes,
                   memory_total_bytes=int(vm.total), memory_available_bytes=int(available),
                   cgroup_limit_bytes=limit, gpus=gpus, gpu_note=gpu_note)
    result.findings = _findings(result, requirements or {})
    return result


def _finding(problem: str, expected: Any, found: Any, message: str) -> dict[str, Any]:
    return {"check": "environment", "problem": problem, "expected": expected, "found": found, "message": message}


def _findings(a: Audit, req: dict[str, float]) -> list[dict[str, Any]]:
    """Each unmet requirement as one finding (one per short GPU); expected and found in bytes or inode counts."""
    out = []
    if (gb := req.get("min_free_disk_gb")) is not None and a.free_disk_bytes < gb * GB:
        need = int(math.ceil(gb * GB))
        out.append(_finding("disk", need, a.free_disk_bytes,
                            f"free disk on {a.filesystem_path} is {human_bytes(a.free_disk_bytes)}, "
                            f"the window needs {human_bytes(need, up=True)}"))
    if (n := req.get("min_free_inodes")) is not None and a.free_inodes is not None and a.free_inodes < n:
        out.append(_finding("inodes", int(n), a.free_inodes,
                            f"free inodes on {a.filesystem_path} are {a.free_inodes:,}, the window needs {int(n):,}"))
    if (gb := req.get("min_memory_gb")) is not None and a.memory_available_bytes < gb * GB:
        need = int(math.ceil(gb * GB))
        bound = f" (cgroup limit {human_bytes(a.cgroup_limit_bytes)})" if a.cgroup_limit_bytes is not None else ""
        out.append(_finding("memory", need, a.memory_available_bytes,
                            f"available memory is {human_bytes(a.memory_available_bytes)}{bound}, "
                            f"the window needs {human_bytes(need, up=True)}"))
    if (gb := req.get("min_gpu_memory_gb")) is not None:
        need = int(math.ceil(gb * GB))
        if not a.gpus:
            out.append(_finding("no_gpu", need, None, f"this host has no usable GPU ({a.gpu_note}), "
                                                      f"the window needs one with {human_bytes(need, up=True)} free"))
        for gpu in a.gpus:
            if gpu["memory_free_bytes"] < gb * GB:
                out.append(_finding("gpu_memory", need, gpu["memory_free_bytes"],
                                    f"GPU {gpu['index']} ({gpu['name']}) has {human_bytes(gpu['memory_free_bytes'])} "
                                    f"free of {human_bytes(gpu['memory_total_bytes'])}, "
                                    f"the window needs {human_bytes(need, up=True)}"))
    return out
