"""Benchmark: submit-to-artifacts on a warm local simulation vs bare faster-whisper with the model preloaded.

Same ~55 s clip (espeak-ng), same model (offline base, int8, CPU) and the same resolved settings
(images/transcribe/settings.py) on both sides, both measured in this run, alternating, medians of --runs each.
The bare side is what the compute costs by itself: the model is loaded before the clock starts, and the clock
covers transcribe() from the file path and reading every segment. bucketrun's side is everything a user waits
for: submit, intake, launch, pickup, fetch, decode, transcribe, render, artifact writes, the terminal state
(timed to the terminal transition's own timestamp; the bench watches at the CLI's 0.25 s so it takes no CPU).
The cache is off (`cache: false`), so every job really transcribes. Target: ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TEXT = ("Object storage is a durable place to keep a queue of work. A manifest dropped into a bucket becomes a job, "
        "and every change of state is written back as a small object. The worker downloads the media, transcribes "
        "the speech, and uploads the subtitles next to the history of the job. ")
SETTINGS = {"language": "en", "vad": True, "word_timestamps": True, "cache": False}
TARGET = 1.05


def make_clip(folder: Path, seconds: float = 60.0) -> tuple[Path, float]:
    wav = folder / "clip.wav"
    text = TEXT
    while True:
        subprocess.run(["espeak-ng", "-s", "150", "-w", str(wav), text], check=True)
        duration = float(subprocess.run(["soxi", "-D", str(wav)], capture_output=True, text=True, check=True).stdout)
        if duration >= seconds - 5:
            return wav, duration
        text += TEXT


class Bare:
    """What a user's own script does once the model is loaded: transcribe the file, read every segment."""

    def __init__(self):
        from faster_whisper import WhisperModel

        from bucketrun.images.transcribe import model as models, settings

        self.decoding = settings.resolve(None, models.choose(None))
        self.whisper = WhisperModel(str(models.offline_base_path()), device="cpu", compute_type="int8",
                                    cpu_threads=2, local_files_only=True)

    def run(self, clip: Path) -> dict:
        t0 = time.perf_counter()
        kwargs = dict(language="en", beam_size=self.decoding.beam_size, vad_filter=True, word_timestamps=True,
                      condition_on_previous_text=False)
        if self.decoding.batch_size:
            from faster_whisper import BatchedInferencePipeline

            segments, info = BatchedInferencePipeline(self.whisper).transcribe(
                str(clip), batch_size=self.decoding.batch_size, **kwargs)
        else:
            segments, info = self.whisper.transcribe(str(clip), **kwargs)
        n = len(list(segments))
        total = time.perf_counter() - t0
        return {"total_s": total, "segments": n, "rtf": total / info.duration}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=55.0)
    args = parser.parse_args()

    from bucketrun.events import codec
    from bucketrun.events.lifecycle import read_view
    from bucketrun.events.storage import open_bucket
    from bucketrun.handlers import client
    from bucketrun.handlers.launchers.local import LocalProcessLauncher
    from bucketrun.local_sim.sim import Simulation

    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        clip, duration = make_clip(tmpdir, args.seconds)
        print(f"clip: {duration:.1f} s of espeak-ng speech; {args.runs} runs each; model base int8 CPU", flush=True)
        bucket = open_bucket(str(tmpdir / "bucket"))
        bucket.put("media/clip.wav", clip.read_bytes(), "audio/wav")
        launcher = LocalProcessLauncher(preload="default")
        launcher.start()
        launcher.wait_ready()
        sim = Simulation(bucket, launcher)
        sim.start_thread()
        sim.ready.wait(30)
        manifest = {"kind": "transcribe", "source": {"key": "media/clip.wav"}, "options": SETTINGS}
        ours, bares, stages = [], [], []
        try:
            bare = Bare()
            bare.run(clip)  # warm both sides: a warm simulation has run a job, a warm script has run once
            job, _ = client.submit(bucket, codec.dumps(manifest))
            assert client.wait(bucket, job, timeout_s=600)["state"] == "succeeded"
            for i in range(args.runs):
                submitted = codec.now()
                job, _ = client.submit(bucket, codec.dumps(manifest))
                # Watched at the CLI's own pace (0.25 s) so the watcher takes no CPU from the worker; the time is
                # the terminal transition's own timestamp (same clock), not when a poll happened to see it.
                status = client.wait(bucket, job, poll_s=0.25, timeout_s=600)
                assert status["state"] == "succeeded", status
                elapsed = (read_view(bucket, job).latest.time - submitted).total_seconds()
                ours.append(elapsed)
                stages.append(job_stages(bucket, job))
                b = bare.run(clip)
                bares.append(b["total_s"])
                print(f"run {i + 1}: bucketrun {elapsed:.2f} s  bare (preloaded) {b['total_s']:.2f} s "
                      f"(rtf {b['rtf']:.3f})  ratio {elapsed / b['total_s']:.3f}", flush=True)
        finally:
            sim.stop()
            launcher.close()
    med_ours, med_bare = statistics.median(ours), statistics.median(bares)
    names = sorted({k for st in stages for k in st})
    median_stages = {k: round(statistics.median(st.get(k, 0.0) for st in stages), 4) for k in names}
    result = {"clip_s": round(duration, 2), "runs": args.runs, "median_bucketrun_s": round(med_ours, 3),
              "median_bare_preloaded_s": round(med_bare, 3), "ratio": round(med_ours / med_bare, 3),
              "median_stages_s": median_stages, "decoding": bare.decoding.__dict__, "target_ratio": TARGET}
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "e2e_vs_bare.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


def job_stages(bucket, job_id: str) -> dict:
    """The attempt's own per-stage seconds, from its terminal transition."""
    from bucketrun.events.lifecycle import read_view

    return read_view(bucket, job_id).latest.detail.get("stages", {})


if __name__ == "__main__":
    sys.exit(main())
