"""The train_window preflight audit: real facts of this (GPU-less) host, every finding with its message, and the
cgroup v2/v1 limit read from real files in a tmp dir."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from bucketrun.images.train_window.audit import Audit, audit, existing_ancestor, human_bytes, read_cgroup_memory

GIB = 1024**3


def cgroup_v2(root: Path, limit: str, current: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "memory.max").write_text(limit + "\n")
    (root / "memory.current").write_text(current + "\n")
    return root


def cgroup_v1(root: Path, limit: str, usage: str) -> Path:
    (root / "memory").mkdir(parents=True, exist_ok=True)
    (root / "memory" / "memory.limit_in_bytes").write_text(limit + "\n")
    (root / "memory" / "memory.usage_in_bytes").write_text(usage + "\n")
    return root


class FakeNvml:
    """Stands in for pynvml's module-level API: one call per fact, as nvidia-ml-py exposes them."""

    def __init__(self, gpus=(), init_error: Exception | None = None):
        self.gpus, self.init_error, self.shut_down = list(gpus), init_error, False

    def nvmlInit(self):
        if self.init_error:
            raise self.init_error

    def nvmlShutdown(self):
        self.shut_down = True

    def nvmlDeviceGetCount(self):
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i):
        return self.gpus[i]

    def nvmlDeviceGetName(self, handle):
        return handle[0]

    def nvmlDeviceGetMemoryInfo(self, handle):
        return SimpleNamespace(total=handle[1], free=handle[2], used=handle[1] - handle[2])


def test_real_facts_of_this_host(tmp_path):
    a = audit(tmp_path, None)
    assert a.filesystem_path == str(tmp_path)
    assert a.free_disk_bytes > 0
    assert a.free_inodes > 0
    assert a.memory_total_bytes > 0
    assert 0 < a.memory_available_bytes <= a.memory_total_bytes
    assert a.gpus == []
    assert a.gpu_note.startswith("no GPU")
    assert a.findings == [] and a.ok
    d = json.loads(json.dumps(a.to_dict()))
    assert d["ok"] is True and d["gpus"] == [] and d["filesystem_path"] == str(tmp_path)
    assert set(d) == {"filesystem_path", "free_disk_bytes", "free_inodes", "memory_total_bytes",
                      "memory_available_bytes", "cgroup_limit_bytes", "gpus", "gpu_note", "findings", "ok"}


def test_requirements_this_host_cannot_meet(tmp_path):
    req = {"min_free_disk_gb": 10**9, "min_free_inodes": 10**15, "min_memory_gb": 10**6, "min_gpu_memory_gb": 1}
    a = audit(tmp_path, req, cgroup_root=tmp_path / "no-cgroup")
    assert not a.ok
    by = {f["problem"]: f for f in a.findings}
    assert [f["problem"] for f in a.findings] == ["disk", "inodes", "memory", "no_gpu"]
    assert all(f["check"] == "environment" for f in a.findings)

    assert by["disk"]["expected"] == 10**18 and by["disk"]["found"] == a.free_disk_bytes
    assert by["disk"]["message"] == (f"free disk on {tmp_path} is {human_bytes(a.free_disk_bytes)}, "
                                     "the window needs 1000 PB")
    assert by["inodes"]["expected"] == 10**15 and by["inodes"]["found"] == a.free_inodes
    assert by["inodes"]["message"] == (f"free inodes on {tmp_path} are {a.free_inodes:,}, "
                                       "the window needs 1,000,000,000,000,000")
    assert by["memory"]["expected"] == 10**15 and by["memory"]["found"] == a.memory_available_bytes
    assert by["memory"]["message"] == (f"available memory is {human_bytes(a.memory_available_bytes)}, "
                                       "the window needs 1 PB")
    assert by["no_gpu"]["expected"] == 10**9 and by["no_gpu"]["found"] is None
    assert by["no_gpu"]["message"] == f"this host has no usable GPU ({a.gpu_note}), the window needs one with 1 GB free"
    assert json.loads(json.dumps(a.to_dict()))["findings"] == a.findings


def test_requirements_met_give_no_findings(tmp_path):
    gpu = FakeNvml([("NVIDIA A100-SXM4-80GB", 80 * GIB, 70 * GIB)])
    a = audit(tmp_path, {"min_free_disk_gb": 1e-6, "min_free_inodes": 1, "min_memory_gb": 1e-6,
                         "min_gpu_memory_gb": 40}, nvml=gpu)
    assert a.findings == [] and a.ok
    assert a.gpus == [{"index": 0, "name": "NVIDIA A100-SXM4-80GB", "memory_total_bytes": 80 * GIB,
                       "memory_free_bytes": 70 * GIB}]
    assert a.gpu_note is None and gpu.shut_down
    assert audit(tmp_path, {}).ok


def test_gpu_short_of_memory_and_nvml_errors(tmp_path):
    gpus = FakeNvml([(b"Tesla T4", 16 * 10**9, 15 * 10**9), ("NVIDIA L4", 24 * 10**9, 3_150_000_000)])
    a = audit(tmp_path, {"min_gpu_memory_gb": 20}, nvml=gpus)
    assert a.gpus[0]["name"] == "Tesla T4"
    assert a.findings == [
        {"check": "environment", "problem": "gpu_memory", "expected": 20 * 10**9, "found": 15 * 10**9,
         "message": "GPU 0 (Tesla T4) has 15 GB free of 16 GB, the window needs 20 GB"},
        {"check": "environment", "problem": "gpu_memory", "expected": 20 * 10**9, "found": 3_150_000_000,
         "message": "GPU 1 (NVIDIA L4) has 3.1 GB free of 24 GB, the window needs 20 GB"},
    ]
    broken = audit(tmp_path, {"min_gpu_memory_gb": 1}, nvml=FakeNvml(init_error=RuntimeError("Driver Not Loaded")))
    assert broken.gpus == [] and broken.gpu_note == "NVML: Driver Not Loaded"
    assert broken.findings[0]["problem"] == "no_gpu"
    assert broken.findings[0]["message"] == ("this host has no usable GPU (NVML: Driver Not Loaded), "
                                             "the window needs one with 1 GB free")
    empty = audit(tmp_path, None, nvml=FakeNvml([]))
    assert empty.gpus == [] and empty.gpu_note == "no GPU"


def test_cgroup_v2_files(tmp_path):
    assert read_cgroup_memory(cgroup_v2(tmp_path / "unlimited", "max", "123456")) == (None, 123456)
    assert audit(tmp_path, None, cgroup_root=tmp_path / "unlimited").cgroup_limit_bytes is None

    root = cgroup_v2(tmp_path / "limited", "1073741824", "536870912")
    assert read_cgroup_memory(root) == (GIB, 512 * 1024**2)
    a = audit(tmp_path, None, cgroup_root=root)
    assert a.cgroup_limit_bytes == GIB
    assert 0 < a.memory_available_bytes <= 512 * 1024**2


def test_cgroup_limit_bounds_the_memory_finding(tmp_path):
    root = cgroup_v2(tmp_path / "cg", str(GIB), str(GIB - 1500))
    a = audit(tmp_path, {"min_memory_gb": 1}, cgroup_root=root)
    assert a.memory_available_bytes == 1500
    assert a.findings == [{"check": "environment", "problem": "memory", "expected": 10**9, "found": 1500,
                           "message": "available memory is 1.5 KB (cgroup limit 1 GB), the window needs 1 GB"}]
    over = audit(tmp_path, None, cgroup_root=cgroup_v2(tmp_path / "over", str(GIB), str(2 * GIB)))
    assert over.memory_available_bytes == 0


def test_cgroup_v1_files(tmp_path):
    unlimited = cgroup_v1(tmp_path / "v1-unlimited", "9223372036854771712", "1955221504")
    assert read_cgroup_memory(unlimited) == (None, 1955221504)
    root = cgroup_v1(tmp_path / "v1", str(2 * GIB), str(GIB + 4096))
    assert read_cgroup_memory(root) == (2 * GIB, GIB + 4096)
    a = audit(tmp_path, None, cgroup_root=root)
    assert a.cgroup_limit_bytes == 2 * GIB
    assert 0 < a.memory_available_bytes <= GIB - 4096
    assert read_cgroup_memory(tmp_path / "nothing-here") == (None, None)  # macOS: no cgroup files at all


def test_missing_run_dir_uses_its_existing_ancestor(tmp_path):
    run_dir = tmp_path / "runs" / "window-7" / "ckpt"
    assert existing_ancestor(run_dir) == tmp_path
    a = audit(run_dir, {"min_free_disk_gb": 10**9})
    assert a.filesystem_path == str(tmp_path) and not run_dir.exists()
    assert a.free_disk_bytes > 0 and a.free_inodes > 0
    assert a.findings[0]["message"].startswith(f"free disk on {tmp_path} is ")


@pytest.mark.parametrize("n, up, text", [
    (3_150_000_000, False, "3.1 GB"), (20 * 10**9, True, "20 GB"), (19_960_000_000, False, "19.9 GB"),
    (19_910_000_000, True, "20 GB"), (512, False, "512 bytes"), (1500, False, "1.5 KB"), (10**18, True, "1000 PB"),
])
def test_human_bytes(n, up, text):
    assert human_bytes(n, up=up) == text


def test_audit_is_a_dataclass_with_ok():
    a = Audit("/", 1, 1, 1, 1, None, [], "no GPU")
    assert a.ok and a.findings == []
    a.findings.append({"problem": "disk"})
    assert not a.ok
