"""Smoke test for the image: one real job through the handler with --test_input, then check the bucket.

    python -m bucketrun.images.transcribe.smoke [--bucket DIR_OR_URL]

Uploads the bundled clip, creates a launched job in the bucket, runs
`python -m bucketrun.images.transcribe.handler --test_input ...` once, and checks the job succeeded with an SRT.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from bucketrun.events import codec, keys
from bucketrun.events.lifecycle import JobState, append_transition, read_view
from bucketrun.events.storage import open_bucket

CLIP = Path(__file__).parent / "assets" / "smoke-speech.ogg"  # its own clip: images never import local_sim
CLIP_KEY = "media/smoke-speech.ogg"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bucketrun-smoke")
    parser.add_argument("--bucket", default=None, help="default: a temporary folder")
    args = parser.parse_args(argv)
    url = args.bucket or tempfile.mkdtemp(prefix="bucketrun-smoke-")
    bucket = open_bucket(url)
    bucket.put(CLIP_KEY, CLIP.read_bytes(), "audio/ogg")
    job_id = keys.new_job_id()
    manifest = {"kind": "transcribe", "source": {"key": CLIP_KEY}, "options": {"language": "en"}}
    from bucketrun.events.manifest import parse_manifest

    bucket.create(keys.manifest_key(job_id), codec.dumps(parse_manifest(codec.dumps(manifest)).to_json()))
    for state in (JobState.SUBMITTED, JobState.QUEUED, JobState.LAUNCHED):
        append_transition(bucket, job_id, state, writer="smoke")
    test_input = {"input": {"job_id": job_id, "bucket": bucket.url, "manifest_key": keys.manifest_key(job_id),
                            "attempt": 1}}
    done = subprocess.run([sys.executable, "-m", "bucketrun.images.transcribe.handler", "--test_input", json.dumps(test_input)],
                          capture_output=True, text=True, timeout=900)
    view = read_view(bucket, job_id)
    ok = done.returncode == 0 and view.state is JobState.SUCCEEDED
    srt = b""
    if ok:
        srt = bucket.get(keys.artifact_key(job_id, 1, "transcript.srt")).data
        ok = srt.startswith(b"1\n00:00:")
    print(json.dumps({"ok": ok, "job_id": job_id, "state": view.state.value if view.state else None,
                      "handler_exit": done.returncode, "srt_bytes": len(srt)}))
    if not ok:
        print(done.stderr[-2000:], file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
