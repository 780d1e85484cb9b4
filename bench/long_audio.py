"""Benchmark: peak worker memory and WER for hours-long audio, windowed (bucketrun) vs whole-file transcription.

Speech is the reference clips (bench/speech/clips.json) cycled with 1 s pauses to 5, 30 and 120 minutes,
encoded as Opus as a user's upload would be. bucketrun runs each through a warm local simulation as a user
would (submit, the sim dispatches, the warm worker transcribes), while a sampler reads the worker's RSS every
0.1 s. The baseline is whole-file faster-whisper on the same file with the same model and settings, in its own
process, with the same resolved settings (images/transcribe/settings.py) over the whole file at once (peak from
ru_maxrss, idle after the model is loaded). Goal: peak within 300 MB of the idle worker at
every length, and a WER no worse than whole-file.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from speech_clips import synthesize_all  # noqa: E402

BUDGET_MB = 300.0


def build(folder: Path, minutes: float, audio) -> tuple[Path, str]:
    """Clips cycled with 1 s pauses until `minutes`, as one Opus file; and its reference text."""
    pause = folder / "pause.wav"
    subprocess.run(["sox", "-n", "-r", "22050", "-c", "1", str(pause), "trim", "0", "1"], check=True)
    parts, texts, total = [], [], 0.0
    while total < minutes * 60:
        for a in audio:
            parts += [str(a.path), str(pause)]
            texts.append(a.clip.text)
            total += a.duration + 1
            if total >= minutes * 60:
                break
    listing = folder / f"list-{minutes}.txt"
    listing.write_text("".join(f"file '{p}'\n" for p in parts))
    out = folder / f"speech-{minutes:g}min.ogg"
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing),
                    "-ac", "1", "-c:a", "libopus", "-b:a", "32k", str(out)], check=True)
    return out, " ".join(texts)


def error_rate(reference: str, hypothesis: str) -> float:
    import jiwer

    from bucketrun.images.fleet.processors.transcript_check import normalise

    return round(float(jiwer.wer(normalise(reference), normalise(hypothesis))), 4)


WHOLE_FILE = r"""
import json, resource, sys, time
from faster_whisper import WhisperModel
from bucketrun.images.transcribe import model as models, settings
choice = models.choose(None)
decoding = settings.resolve(None, choice)
whisper = WhisperModel(str(models.offline_base_path()), device="cpu", compute_type="int8", cpu_threads=2,
                       local_files_only=True)
idle = int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20
t0 = time.perf_counter()
kwargs = dict(language="en", beam_size=decoding.beam_size, vad_filter=True, word_timestamps=True,
              condition_on_previous_text=False)
if decoding.batch_size:  # the same settings as the worker's default, over the whole file at once
    from faster_whisper import BatchedInferencePipeline
    segments, info = BatchedInferencePipeline(whisper).transcribe(sys.argv[1], batch_size=decoding.batch_size, **kwargs)
else:
    segments, info = whisper.transcribe(sys.argv[1], **kwargs)
text = " ".join(s.text.strip() for s in segments)
print(json.dumps({"idle_mb": idle, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - t0, "text": text}))
"""


def whole_file(path: Path) -> dict:
    out = subprocess.run([sys.executable, "-c", WHOLE_FILE, str(path)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


class Sampler:
    """The peak RSS of one process, read every 0.1 s from another thread."""

    def __init__(self, pid: int):
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(pid), 0.0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def rss_mb(self) -> float:
        return self.proc.memory_info().rss / 2**20

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, self.rss_mb())

    def __enter__(self) -> "Sampler":
        self.peak = self.rss_mb()
        self.thread.start()
        return self

    def __exit__(self, *_) -> None:
        self._stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.rss_mb())


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, nargs="+", default=[5, 30, 120])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "long_audio.json")
    args = parser.parse_args()

    from bucketrun.events import codec
    from bucketrun.events.storage import open_bucket
    from bucketrun.handlers import client
    from bucketrun.handlers.launchers.local import LocalProcessLauncher
    from bucketrun.local_sim.sim import Simulation

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmpdir = Path(tmp)
        audio = synthesize_all(tmpdir)
        bucket = open_bucket(str(tmpdir / "bucket"))
        launcher = LocalProcessLauncher(preload="default")
        launcher.start()
        launcher.wait_ready()
        sim = Simulation(bucket, launcher)
        sim.start_thread()
        sim.ready.wait(30)
        try:
            pid = launcher._proc.pid
            import psutil

            idle_preloaded = psutil.Process(pid).memory_info().rss / 2**20
            bucket.put("media/warm.wav", audio[0].path.read_bytes(), "audio/wav")  # a warm worker has run a job
            job, _ = client.submit(bucket, codec.dumps({"kind": "transcribe", "source": {"key": "media/warm.wav"},
                                                        "options": {"language": "en", "cache": False}}))
            assert client.wait(bucket, job, timeout_s=600)["state"] == "succeeded"
            time.sleep(1)
            for minutes in args.minutes:
                path, reference = build(tmpdir, minutes, audio)
                key = f"media/{path.name}"
                bucket.put(key, path.read_bytes(), "audio/ogg")
                manifest = {"kind": "transcribe", "source": {"key": key},
                            "options": {"language": "en", "cache": False, "formats": ["txt", "json"]}}
                with Sampler(pid) as sampler:
                    idle = sampler.rss_mb()
                    t0 = time.perf_counter()
                    job, _ = client.submit(bucket, codec.dumps(manifest))
                    status = client.wait(bucket, job, poll_s=0.2, timeout_s=6 * 3600)
                    wall = time.perf_counter() - t0
                assert status["state"] == "succeeded", status
                txt = next(a for a in status["artifacts"] if a["format"] == "txt")
                ours_wer = error_rate(reference, bucket.get(txt["key"]).data.decode())
                result = codec.loads(bucket.get(next(a for a in status["artifacts"]
                                                     if a["format"] == "json")["key"]).data)
                base = whole_file(path)
                row = {"minutes": minutes, "duration_s": result["duration"], "windows": result["windows"],
                       "idle_mb": round(idle, 1), "peak_mb": round(sampler.peak, 1),
                       "over_idle_mb": round(sampler.peak - idle, 1), "wer": ours_wer, "wall_s": round(wall, 1),
                       "whole_file": {"idle_mb": round(base["idle_mb"], 1), "peak_mb": round(base["peak_mb"], 1),
                                      "over_idle_mb": round(base["peak_mb"] - base["idle_mb"], 1),
                                      "wer": error_rate(reference, base["text"]),
                                      "seconds": round(base["seconds"], 1)}}
                row["within_budget"] = row["over_idle_mb"] <= BUDGET_MB
                row["wer_no_worse"] = row["wer"] <= row["whole_file"]["wer"]
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            sim.stop()
            launcher.close()
    summary = {"budget_mb": BUDGET_MB, "idle_preloaded_mb": round(idle_preloaded, 1), "rows": rows,
               "max_over_idle_mb": max(r["over_idle_mb"] for r in rows),
               "median_wer": statistics.median(r["wer"] for r in rows),
               "median_whole_file_wer": statistics.median(r["whole_file"]["wer"] for r in rows)}
    args.out.parent.mkdir(exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'minutes':>8} {'windows':>8} {'peak-idle MB':>13} {'whole-file MB':>14} {'WER':>7} {'whole WER':>10}")
    for r in rows:
        print(f"{r['minutes']:>8g} {r['windows']:>8} {r['over_idle_mb']:>13.0f} "
              f"{r['whole_file']['over_idle_mb']:>14.0f} {r['wer']:>7.4f} {r['whole_file']['wer']:>10.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
