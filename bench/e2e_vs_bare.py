"""Benchmark: submit-to-artifacts on a warm local simulation vs a bare faster-whisper load + transcribe.

Same ~60 s clip (espeak-ng), same model (offline base, int8, CPU), same settings, both measured in this
run; medians of --runs each. Prints the ratio (target <= 1.10) and the real-time factor.
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
SETTINGS = {"language": "en", "beam_size": 5, "vad": True, "word_timestamps": True}


def make_clip(folder: Path, seconds: float = 60.0) -> tuple[Path, float]:
    wav = folder / "clip.wav"
    text = TEXT
    while True:
        subprocess.run(["espeak-ng", "-s", "150", "-w", str(wav), text], check=True)
        duration = float(subprocess.run(["soxi", "-D", str(wav)], capture_output=True, text=True, check=True).stdout)
        if duration >= seconds - 5:
            return wav, duration
        text += TEXT


def bare(clip: Path) -> dict:
    """What a user's ad-hoc script does: load the model, transcribe, read every segment."""
    from faster_whisper import WhisperModel

    from bucketrun.images.transcribe import model as models

    path = str(models.offline_base_path())
    t0 = time.perf_counter()
    whisper = WhisperModel(path, device="cpu", compute_type="int8", cpu_threads=2, local_files_only=True)
    t_load = time.perf_counter() - t0
    segments, info = whisper.transcribe(str(clip), language="en", beam_size=5, vad_filter=True,
                                        word_timestamps=True, condition_on_previous_text=False)
    n = len(list(segments))
    total = time.perf_counter() - t0
    return {"total_s": total, "load_s": t_load, "segments": n, "rtf": (total - t_load) / info.duration}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=60.0)
    args = parser.parse_args()

    from bucketrun.events import codec
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
        ours, rtfs, bares = [], [], []
        try:
            # one untimed warm-up job so "warm simulation" means warm, as for a serverless worker
            job, _ = client.submit(bucket, codec.dumps(manifest))
            assert client.wait(bucket, job, timeout_s=600)["state"] == "succeeded"
            for i in range(args.runs):
                t0 = time.perf_counter()
                job, _ = client.submit(bucket, codec.dumps(manifest))
                status = client.wait(bucket, job, poll_s=0.05, timeout_s=600)
                elapsed = time.perf_counter() - t0
                assert status["state"] == "succeeded", status
                ours.append(elapsed)
                rtfs.append(status_rtf(bucket, status))
                b = bare(clip)
                bares.append(b["total_s"])
                print(f"run {i + 1}: bucketrun {elapsed:.2f} s (rtf {rtfs[-1]:.3f})  bare {b['total_s']:.2f} s "
                      f"(load {b['load_s']:.2f} s, rtf {b['rtf']:.3f})", flush=True)
        finally:
            sim.stop()
            launcher.close()
    med_ours, med_bare = statistics.median(ours), statistics.median(bares)
    result = {"clip_s": round(duration, 2), "runs": args.runs, "median_bucketrun_s": round(med_ours, 3),
              "median_bare_s": round(med_bare, 3), "ratio": round(med_ours / med_bare, 3),
              "median_worker_rtf": round(statistics.median(rtfs), 4), "target_ratio": 1.10}
    out = ROOT / "bench" / "results"
    out.mkdir(exist_ok=True)
    (out / "e2e_vs_bare.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["ratio"] <= 1.10 else 1


def status_rtf(bucket, status) -> float:
    from bucketrun.events import codec

    art = next(a for a in status["artifacts"] if a["format"] == "json")
    return codec.loads(bucket.get(art["key"]).data)["rtf"]


if __name__ == "__main__":
    sys.exit(main())
