"""Benchmark: large-v3 through faster-whisper's BatchedInferencePipeline on a CUDA GPU, in audio-minutes per
wall-second, beside faster-whisper's published figure.

The published figure (README "Large-v2 model on GPU", faster-whisper v1.1.0, CUDA 12.4, RTX 3070 Ti 8GB,
https://github.com/SYSTRAN/faster-whisper#benchmark): 13 minutes of audio in 17 s with batch_size=8, fp16, beam 5,
the pipeline's other defaults (word_timestamps=False, VAD on) = 13/17 = 0.765 audio-min per wall-second (45.9x real
time). It is large-v2 on a real talk; this runs large-v3 (same size, 128 mel bins) on N minutes of espeak-ng speech,
so the ratio compares machines and settings, not exact workloads.

The batch size comes from images/transcribe/gpu.py (free VRAM before the model loads); batch 8 is measured too,
for the like-for-like comparison. One untimed warm-up on a short clip, then medians of --runs, every segment read.
Without a CUDA device it says so, writes {"cuda": false, ...} and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import wave
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PUBLISHED = {"model": "large-v2", "audio_min": 13.0, "wall_s": 17.0, "batch_size": 8, "precision": "fp16",
             "beam_size": 5, "word_timestamps": False, "gpu": "RTX 3070 Ti 8GB", "cuda": "12.4",
             "faster_whisper": "1.1.0", "source": "https://github.com/SYSTRAN/faster-whisper#benchmark"}
PUBLISHED_RATE = PUBLISHED["audio_min"] / PUBLISHED["wall_s"]  # audio-min per wall-second
PUBLISHED_TEXT = (f"13 min of audio in 17 s, batch 8, fp16 = {PUBLISHED_RATE:.3f} audio-min/s "
                  f"({PUBLISHED_RATE * 60:.1f}x real time)")

SENTENCES = [
    "Object storage is a durable place to keep a queue of work.",
    "A manifest dropped into a bucket becomes a job, and every change of state is written back as a small object.",
    "The worker downloads the media, transcribes the speech, and uploads the subtitles next to the job.",
    "When a worker stops in the middle of a job, its lease runs out and another worker picks the job up.",
    "Each attempt keeps its own record, so a retry never overwrites what the first attempt found.",
    "The graphics card holds the model once, and every job after the first one starts without loading it.",
    "Short pauses between sentences let the voice detector cut the recording into pieces of thirty seconds or less.",
    "A batch of those pieces goes through the encoder together, which keeps the card busy.",
    "The cost of a run is the time the card is rented, so a faster transcription is also a cheaper one.",
    "Numbers such as four hundred and twelve, or the year two thousand and nineteen, are read out in full.",
    "Subtitles are written in several formats, and each line stays short enough to read comfortably.",
    "The history of a job tells an operator when it was queued, when it started, and when it finished.",
]


def make_speech(folder: Path, minutes: float, seed: int = 7) -> tuple[Path, Path, float]:
    """(long clip, short warm-up clip, long clip's seconds): espeak-ng paragraphs of shuffled sentences in two
    voices and several speeds, joined with 0.6 s silences, cut at `minutes`."""
    rng = random.Random(seed)
    frames, params, short, i = [], None, None, 0
    total, target = 0.0, minutes * 60
    while total < target:
        text = " ".join(rng.sample(SENTENCES, 4))
        part = folder / f"part{i}.wav"
        subprocess.run(["espeak-ng", "-v", rng.choice(["en-us", "en"]), "-s", str(rng.choice([145, 160, 175])),
                        "-w", str(part), text], check=True, capture_output=True)
        with wave.open(str(part)) as w:
            params = params or w.getparams()
            data = w.readframes(w.getnframes())
        short = short or part
        silence = b"\0" * int(params.framerate * 0.6) * params.sampwidth * params.nchannels
        frames += [data, silence]
        total += len(data + silence) / (params.framerate * params.sampwidth * params.nchannels)
        i += 1
    frame = params.sampwidth * params.nchannels
    audio = b"".join(frames)[:int(target * params.framerate) * frame]  # exactly `minutes`; the last words may go
    out = folder / "speech.wav"
    with wave.open(str(out), "wb") as w:
        w.setparams(params)
        w.writeframes(audio)
    return out, short, len(audio) / frame / params.framerate


class VramWatch:
    """Lowest free VRAM (NVML) seen while it runs, sampled every 0.2 s: the peak used is free before - that."""

    def __init__(self, free_vram_bytes):
        self.read, self.lowest, self._stop = free_vram_bytes, None, threading.Event()

    def __enter__(self):
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_):
        self._stop.set()
        self._thread.join()

    def _run(self):
        while not self._stop.wait(0.2):
            free = self.read()
            if free is not None:
                self.lowest = free if self.lowest is None else min(self.lowest, free)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=13.0, help="minutes of speech (default 13, as published)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per batch size; the median is reported")
    parser.add_argument("--model", default="large-v3")
    parser.add_argument("--compute-type", default="float16")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "gpu_throughput.json")
    args = parser.parse_args()

    try:
        import ctranslate2

        devices = ctranslate2.get_cuda_device_count()
    except Exception as exc:  # noqa: BLE001 - a broken driver or library is "no CUDA device" here
        devices, why = 0, f"{type(exc).__name__}: {exc}"
    else:
        why = "ctranslate2.get_cuda_device_count() == 0"
    if devices == 0:
        print(f"no CUDA device on this machine: the GPU throughput benchmark did not run "
              f"(faster-whisper's published figure: {PUBLISHED_TEXT})")
        return write(args.out, {"cuda": False, "ran": False, "why": why,
                                "published": {**PUBLISHED, "audio_min_per_s": round(PUBLISHED_RATE, 4)}})

    from faster_whisper import BatchedInferencePipeline, WhisperModel

    from bucketrun.images.transcribe.gpu import BATCH_ENV, batch_size_for, footprint_mib, free_vram_bytes

    free = free_vram_bytes()  # before the model loads: the formula counts the weights itself
    chosen = batch_size_for(free, args.model, args.compute_type)
    sizes = sorted({chosen, PUBLISHED["batch_size"]})
    print(f"{devices} CUDA device(s); free VRAM "
          f"{'unknown (no nvidia-ml-py or NVML)' if free is None else f'{free / 2**20:.0f} MiB'}; "
          f"chosen batch {chosen}; measuring batch {', '.join(map(str, sizes))}", flush=True)
    with tempfile.TemporaryDirectory(prefix="bucketrun-gpu-bench-") as tmp:
        speech, short, seconds = make_speech(Path(tmp), args.minutes)
        print(f"speech: {seconds / 60:.2f} min of espeak-ng English; model {args.model} {args.compute_type}; "
              f"{args.runs} runs per batch size", flush=True)
        model = WhisperModel(args.model, device="cuda", compute_type=args.compute_type)
        pipe = BatchedInferencePipeline(model)
        list(pipe.transcribe(str(short), language="en", batch_size=chosen)[0])  # untimed warm-up
        results = []
        for size in sizes:
            times, watch = [], VramWatch(free_vram_bytes)
            with watch:
                for _ in range(args.runs):
                    t0 = time.perf_counter()
                    segments, info = pipe.transcribe(str(speech), language="en", batch_size=size, beam_size=5,
                                                     word_timestamps=False)
                    n = sum(1 for _ in segments)
                    times.append(time.perf_counter() - t0)
            med = statistics.median(times)
            rate = info.duration / 60 / med
            results.append({"batch_size": size, "chosen": size == chosen, "runs_s": [round(t, 3) for t in times],
                            "median_s": round(med, 3), "segments": n, "audio_min_per_s": round(rate, 4),
                            "x_realtime": round(rate * 60, 2), "ratio_to_published": round(rate / PUBLISHED_RATE, 3),
                            "predicted_vram_mib": round(footprint_mib(args.model, args.compute_type, size)),
                            "peak_vram_mib": None if free is None or watch.lowest is None
                            else round((free - watch.lowest) / 2**20)})
            print(f"batch {size:>2}{' (chosen)' if size == chosen else '         '}: "
                  f"{info.duration / 60:.2f} audio-min in {med:.2f} s (median of {args.runs}) = {rate:.3f} "
                  f"audio-min/s ({rate * 60:.1f}x real time); published {PUBLISHED_RATE:.3f} audio-min/s "
                  f"(batch 8, fp16) -> ratio {rate / PUBLISHED_RATE:.2f}", flush=True)
    return write(args.out, {"cuda": True, "ran": True, "devices": devices, "model": args.model,
                            "compute_type": args.compute_type, "audio_min": round(seconds / 60, 3),
                            "free_vram_mib": None if free is None else round(free / 2**20),
                            "chosen_batch_size": chosen, "batch_env": os.environ.get(BATCH_ENV),
                            "runs": args.runs, "results": results,
                            "published": {**PUBLISHED, "audio_min_per_s": round(PUBLISHED_RATE, 4)}})


def write(path: Path, result: dict) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
