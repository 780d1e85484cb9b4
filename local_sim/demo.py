"""`bucketrun demo`: the bundled speech clip, transcribed end to end through a bucket and the simulation."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from events import codec, keys
from events.storage import open_bucket
from handlers import client

from .launcher import LocalProcessLauncher
from .sim import Simulation

ASSETS = Path(__file__).parent / "assets"
CLIP = ASSETS / "demo-speech.ogg"
CLIP_KEY = "media/demo-speech.ogg"


def run_demo(bucket_url: str) -> int:
    from handlers.cli import _finish, _progress_printer

    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    bucket = open_bucket(bucket_url)
    err = sys.stderr
    print(f"bucket: {bucket.url}", file=err)
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
        print(f"job: {job_id}", file=err)
        progress, update = _progress_printer()
        with progress:
            status = client.wait(bucket, job_id, update, timeout_s=600)
        if status["state"] != "succeeded":
            return _finish(status)
        srt = next(a for a in status["artifacts"] if a["format"] == "srt")
        print("\n--- transcript.srt ---")
        print(bucket.get(srt["key"]).data.decode().rstrip())
        print("\n--- keys written ---")
        for info in bucket.list(keys.job_prefix(job_id)):
            print(f"{info.key}  ({info.size} B)")
        print(f"{keys.inbox_key(job_id + '.json')}  (the dropped manifest, kept untouched)")
        return 0
    finally:
        sim.stop()
        launcher.close()
