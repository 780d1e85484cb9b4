"""The GPU batch size: batch_size_for's memory model, the BUCKETRUN_BATCH_SIZE override, free_vram_bytes without
a GPU (and through a stand-in NVML), and the GPU benchmark saying plainly that it did not run here."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from bucketrun.images.transcribe import gpu
from bucketrun.images.transcribe.gpu import BATCH_ENV, batch_size_for, free_vram_bytes

ROOT = Path(__file__).resolve().parent.parent
GIB = 2**30
NO_ENV: dict[str, str] = {}


def test_monotone_in_free_memory():
    for model, ct in [("large-v3", "float16"), ("large-v3", "int8"), ("turbo", "float16"), ("tiny", "float32")]:
        sizes = [batch_size_for(mib * 2**20, model, ct, env=NO_ENV) for mib in range(0, 48 * 1024, 256)]
        assert sizes == sorted(sizes), (model, ct)
        assert sizes[0] == 1 and sizes[-1] == gpu.MAX_BATCH


def test_24_gb_runs_large_v3_fp16_at_least_at_the_published_batch():
    assert batch_size_for(24 * GIB, "large-v3", "float16", env=NO_ENV) >= 8


def test_8_gb_gives_a_small_batch_that_fits():
    size = batch_size_for(8 * GIB, "large-v3", "float16", env=NO_ENV)
    assert 1 <= size <= 16
    # what it expects to use stays under the free memory less the margin
    assert gpu.footprint_mib("large-v3", "float16", size) <= 8 * 1024 * (1 - gpu.MARGIN) - gpu.RESERVE_MIB


def test_too_little_memory_gives_one():
    assert batch_size_for(3 * GIB, "large-v3", "float16", env=NO_ENV) == 1
    assert batch_size_for(0, "large-v3", "int8", env=NO_ENV) == 1


def test_unknown_free_memory_gives_the_published_setting():
    assert batch_size_for(None, "large-v3", "float16", env=NO_ENV) == 8


def test_published_figures_are_reproduced():
    # batch 1 and batch 8 of large-v2 on the README's RTX 3070 Ti, MiB
    assert gpu.footprint_mib("large-v2", "float16", 1) == pytest.approx(4525)
    assert gpu.footprint_mib("large-v2", "float16", 8) == pytest.approx(6090)
    assert gpu.footprint_mib("large-v2", "int8", 8) == pytest.approx(4500)


def test_smaller_models_get_larger_batches():
    order = ["large-v3", "turbo", "medium", "small", "base", "tiny"]
    for free in (6 * GIB, 8 * GIB, 10 * GIB):
        sizes = [batch_size_for(free, m, "float16", env=NO_ENV) for m in order]
        assert sizes == sorted(sizes), (free, sizes)
    assert batch_size_for(10 * GIB, "medium", "float16", env=NO_ENV) > batch_size_for(10 * GIB, "large-v3",
                                                                                       "float16", env=NO_ENV)
    # int8 weights leave room for more items than fp16 ones
    assert batch_size_for(8 * GIB, "large-v3", "int8", env=NO_ENV) > batch_size_for(8 * GIB, "large-v3", "float16",
                                                                                     env=NO_ENV)


def test_model_names_from_the_hub_or_a_folder_count_as_their_model():
    for name in ("Systran/faster-whisper-large-v3", "/models/large-v3/", "mystery-model"):
        assert batch_size_for(10 * GIB, name, "float16", env=NO_ENV) == batch_size_for(10 * GIB, "large-v3",
                                                                                         "float16", env=NO_ENV)
    assert gpu._params_m("Systran/faster-distil-whisper-large-v3") == 756
    assert gpu._params_m("small.en") == 244


def test_unknown_compute_type_is_refused():
    with pytest.raises(ValueError, match="compute type"):
        batch_size_for(8 * GIB, "large-v3", "float8", env=NO_ENV)


def test_env_override_wins(monkeypatch):
    monkeypatch.setenv(BATCH_ENV, "3")
    assert batch_size_for(80 * GIB, "large-v3", "float16") == 3
    assert batch_size_for(None, "tiny", "int8") == 3
    assert batch_size_for(0, "large-v3", "float16", env={BATCH_ENV: "64"}) == 64  # used as given, not clamped
    monkeypatch.setenv(BATCH_ENV, " ")
    assert batch_size_for(None, "large-v3", "float16") == 8  # blank is unset


@pytest.mark.parametrize("bad", ["0", "-2", "eight", "2.5"])
def test_bad_override_raises_one_line(bad):
    with pytest.raises(ValueError) as err:
        batch_size_for(8 * GIB, "large-v3", "float16", env={BATCH_ENV: bad})
    assert BATCH_ENV in str(err.value) and "\n" not in str(err.value)


def test_free_vram_is_unknown_on_this_machine():
    assert free_vram_bytes() is None


def _fake_nvml(free_by_index: dict[object, int], fail_init: bool = False):
    class Info:
        def __init__(self, free):
            self.free = free

    calls = []
    mod = types.SimpleNamespace(
        nvmlInit=lambda: (_ for _ in ()).throw(RuntimeError("no driver")) if fail_init else calls.append("init"),
        nvmlShutdown=lambda: calls.append("shutdown"),
        nvmlDeviceGetHandleByIndex=lambda i: free_by_index[i],
        nvmlDeviceGetHandleByUUID=lambda u: free_by_index[u],
        nvmlDeviceGetMemoryInfo=lambda h: Info(h))
    return mod, calls


def test_free_vram_through_nvml(monkeypatch):
    mod, calls = _fake_nvml({0: 5 * GIB, 2: 7 * GIB, "GPU-abc": 9 * GIB})
    monkeypatch.setitem(sys.modules, "pynvml", mod)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert free_vram_bytes() == 5 * GIB
    assert calls == ["init", "shutdown"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")  # CUDA's device 0 is the machine's device 2
    assert free_vram_bytes(0) == 7 * GIB and free_vram_bytes(1) == 5 * GIB
    assert free_vram_bytes(2) is None  # not visible to this process
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-abc")
    assert free_vram_bytes() == 9 * GIB
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "7")  # NVML has no such device: unknown, not a crash
    assert free_vram_bytes() is None
    broken, _ = _fake_nvml({}, fail_init=True)
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    assert free_vram_bytes() is None


def test_bench_says_plainly_that_there_is_no_cuda_device(tmp_path):
    out = tmp_path / "gpu_throughput.json"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_throughput.py"), "--out", str(out)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "no CUDA device" in proc.stdout
    assert "13 min of audio in 17 s" in proc.stdout
    result = json.loads(out.read_text())
    assert result["cuda"] is False and result["ran"] is False
    assert result["published"]["audio_min_per_s"] == pytest.approx(13 / 17, abs=1e-3)


def test_settings_resolve_per_device_and_without_vad(monkeypatch):
    from bucketrun.images.transcribe import settings
    from bucketrun.images.transcribe.model import ModelChoice

    cpu = ModelChoice("base", "cpu", "int8")
    assert settings.resolve(None, cpu) == settings.Decoding(settings.CPU_BEAM, settings.CPU_BATCH, *settings.CPU_WINDOW)
    assert settings.resolve(3, cpu).beam_size == 3  # the job's own beam wins
    assert settings.resolve(None, cpu, vad=False).batch_size is None  # the batched pipeline cuts at VAD spans
    monkeypatch.setenv(gpu.BATCH_ENV, "12")
    cuda = settings.resolve(None, ModelChoice("large-v3", "cuda", "float16"))
    assert cuda.batch_size == 12 and cuda.beam_size == settings.GPU_BEAM
    assert (cuda.window_target_s, cuda.window_max_s) == settings.GPU_WINDOW
    assert cuda.window_target_s >= 16 * 30  # a window holds enough 30 s chunks to fill large batches
    assert settings.resolve(None, cpu).batch_size == 12  # the override holds on a CPU too (less memory at 1)
    assert settings.resolve(None, cpu, vad=False).batch_size is None


def test_a_window_is_whole_batches_of_chunks():
    from bucketrun.images.transcribe import engine, settings

    def per(batch, target):
        return engine.chunks_per_window(settings.Decoding(5, batch, target, target + 30))

    assert per(2, 60.0) == 2 and per(2, 120.0) == 4 and per(1, 60.0) == 2
    assert per(16, 480.0) == 16 and per(24, 480.0) == 24 and per(4, 480.0) == 16  # never less than one batch
