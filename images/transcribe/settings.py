"""How a job's audio is decoded: beam size, sequential or batched inference, and the window size. One place, so
the work, the cache key and the benchmarks agree on what a default means.

Defaults were measured, not guessed: bench/cpu_settings.py (CPU) and bench/gpu_throughput.py (GPU); the README's
"Transcription speed" section quotes them.
"""

from __future__ import annotations

import importlib.metadata
import os
from dataclasses import dataclass
from typing import Any

from .gpu import batch_override, batch_size_for, free_vram_bytes
from .model import ModelChoice

# CPU default (bench/cpu_settings.py; README "Benchmark"): faster-whisper's batched pipeline at beam 5, the
# fastest setting whose WER stayed within 0.01 of sequential beam 5 both on 12 short clips and on the same speech
# as one 5-minute file. Beam 1 is faster but lost 0.045 WER on the long file. Each batch item adds about 110 MB
# to the peak; batch 8 was 10% faster than 2 on the clips, batch 1 16% slower than 2: so batch 2
# (BUCKETRUN_BATCH_SIZE sets another).
CPU_BEAM = 5
CPU_BATCH: int | None = 2
GPU_BEAM = 5
# Windows: decoded and transcribed one at a time, so memory does not grow with duration. Batched (with VAD, the
# default), a window is whole chunks of the pipeline's own 30 s VAD chunking, a multiple of the batch size, about
# window_target_s of speech (speech.py): the transcript is then the whole file's and the batches are too. The peak
# is the batch's activations plus one window of audio, whatever the duration: 324-338 MB over the idle worker at
# batch 2, about 110 MB less at batch 1, which is 16% slower (bench/long_audio.py; README "Benchmark").
# Sequential (no VAD), windows are cut in silences, 60-90 s: a window's peak is about 70 MB plus 0.8 MB per second
# of audio (base, int8). On a GPU a window is one batch of chunks or more (16 x 30 s = 480 s); host memory is not
# the constraint there.
WINDOW_SEARCH_S = 20.0
CPU_WINDOW = (60.0, 90.0)
GPU_WINDOW = (480.0, 600.0)


@dataclass(frozen=True)
class Decoding:
    beam_size: int
    batch_size: int | None  # None: WhisperModel.transcribe; n: BatchedInferencePipeline with batches of n
    window_target_s: float = CPU_WINDOW[0]
    window_max_s: float = CPU_WINDOW[1]


def resolve(beam_size: int | None, choice: ModelChoice, vad: bool = True) -> Decoding:
    """The job's beam if it set one; else the device's default. On CUDA batches are sized from free VRAM; on a CPU
    the batch is CPU_BATCH; BUCKETRUN_BATCH_SIZE overrides either. The batched pipeline cuts its batches at VAD
    speech spans, so without VAD a job runs sequentially."""
    if choice.device == "cuda":
        batch = batch_size_for(free_vram_bytes(), choice.name, choice.compute_type) if vad else None
        return Decoding(beam_size or GPU_BEAM, batch, *GPU_WINDOW)

    batch = (batch_override(os.environ) or CPU_BATCH) if vad else None
    return Decoding(beam_size or CPU_BEAM, batch, *CPU_WINDOW)


def output_options(opts: Any, choice: ModelChoice, decoding: Decoding, vad: bool) -> dict[str, Any]:
    """Every resolved setting that changes the transcript, for the cache key; formats are not among them (the
    cache keeps all four renderings)."""
    return {"model": choice.name, "device": choice.device, "compute_type": choice.compute_type,
            "language": opts.language, "task": opts.task, "vad": vad, "word_timestamps": opts.word_timestamps,
            "beam_size": decoding.beam_size, "batched": decoding.batch_size is not None,  # batch size: speed only
            "window_target_s": decoding.window_target_s, "window_max_s": decoding.window_max_s,
            "faster_whisper": importlib.metadata.version("faster-whisper")}
