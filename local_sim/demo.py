"""`bucketrun demo`: the bundled speech clip, transcribed end to end through a bucket and the simulation.

It only drives the job; the command line shows the progress and prints the result, so this layer never
imports the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bucketrun.events import codec, keys
from bucketrun.events.storage import open_bucket
from bucketrun.handlers import client
from bucketrun.handlers.launchers.local import LocalProcessLauncher

from .sim import Simulation

ASSETS = Path(__file__).parent / "assets"
CLIP = ASSETS / "demo-speech.ogg"
CLIP_KEY = "media/demo-speech.ogg"


@dataclass
class DemoResult:
    bucket_url: str
    job_id: str
    status: dict[str, Any]
    srt: str = ""
    keys: list[tuple[str, int]] = field(default_factory=list)


def run_demo(bucket_url: str, on_job: Callable[[str], None] | None = None,
             on_update: Callable[[dict[str, Any]], None] | None = None) -> DemoResult:
    bucket = open_bucket(bucket_url)
    bucket.put(CLIP_KEY, CLIP.read_bytes(), "audio/ogg")
    launcher = LocalProcessLauncher(preload="default")
    launcher.start()
    sim = Simulation(bucket, launcher)
    sim.start_thread()
    sim.ready.wait(30)
    try:
        manifest = {"kind": "transcribe", "source": {"key": CLIP_KEY},
                    "options": {"language": "en", "formats": ["srt", "vtt", "json", "txt"]}}
        job_id, _ = client.submit(bucket, codec.dumps(manifest))
        if on_job:
            on_job(job_id)
        status = client.wait(bucket, job_id, on_update, timeout_s=600)
        result = DemoResult(bucket.url, job_id, status)
        if status["state"] == "succeeded":
            srt = next(a for a in status["artifacts"] if a["format"] == "srt")
            result.srt = bucket.get(srt["key"]).data.decode().rstrip()
            result.keys = [(info.key, info.size) for info in bucket.list(keys.job_prefix(job_id))]
        return result
    finally:
        sim.stop()
        launcher.close()
