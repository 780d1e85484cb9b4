"""Smoke test for the image: one real job through the handler with --test_input, then check the bucket.

    python -m bucketrun.images.transcribe.smoke [--bucket DIR_OR_URL] [--require-js-runtime]

Uploads the bundled clip, creates a launched job in the bucket, runs
`python -m bucketrun.images.transcribe.handler --test_input ...` once, and checks the job succeeded with an SRT.
It also reports what yt-dlp needs for YouTube (since 2025.11): a JavaScript runtime and the yt-dlp-ejs solver
scripts. Missing, that is a warning (a CPU machine without deno still passes); with --require-js-runtime, as the
image build runs it, a failure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from bucketrun.events import codec, keys
from bucketrun.events.kinds.validate import parse_manifest
from bucketrun.events.lifecycle import JobState, append_transition, read_view
from bucketrun.events.storage import open_bucket

CLIP = Path(__file__).parent / "assets" / "smoke-speech.ogg"  # its own clip: images never import local_sim
CLIP_KEY = "media/smoke-speech.ogg"


def youtube_support() -> tuple[dict | None, str | None]:
    """The JavaScript runtime yt-dlp itself finds (with the default options fetch.py uses: deno, looked for next
    to this Python, then on PATH) and the yt-dlp-ejs version. yt-dlp has no public API for this; `_js_runtimes`
    is what its own YouTube challenge solver asks, so the answer is yt-dlp's, not a guess of ours."""
    import yt_dlp  # late: yt-dlp (heavy) only for the JavaScript runtime check
    from yt_dlp.dependencies import yt_dlp_ejs

    with yt_dlp.YoutubeDL({"quiet": True, "no_warnings": True}) as ydl:
        runtimes = getattr(ydl, "_js_runtimes", None)
        if runtimes is None:
            raise RuntimeError(f"yt-dlp {yt_dlp.version.__version__} has no _js_runtimes; update this check")
        infos = [r.info for r in runtimes.values() if r is not None and r.info is not None]
    found = next((i for i in infos if i.supported), infos[0] if infos else None)
    runtime = found and {"name": found.name, "version": found.version,
                         "path": shutil.which(found.path) or found.path, "supported": found.supported}
    return runtime, getattr(yt_dlp_ejs, "version", None) if yt_dlp_ejs else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bucketrun-smoke")
    parser.add_argument("--bucket", default=None, help="default: a temporary folder")
    parser.add_argument("--require-js-runtime", action="store_true",
                        help="fail unless yt-dlp finds a JavaScript runtime and yt-dlp-ejs (YouTube needs both)")
    parser.add_argument("--js-only", action="store_true",
                        help="only check yt-dlp's JavaScript runtime, without running a job (for image builds)")
    args = parser.parse_args(argv)
    try:
        js_runtime, ejs = youtube_support()
    except Exception as exc:  # noqa: BLE001 - a broken probe is reported in one line, not a traceback
        js_runtime, ejs = None, None
        print(f"warning: could not ask yt-dlp for its JavaScript runtime: {exc}", file=sys.stderr)
    missing = [what for what, ok in (("supported JavaScript runtime (deno)", js_runtime and js_runtime["supported"]),
                                     ("yt-dlp-ejs", ejs)) if not ok]
    if missing:
        print(f"{'error' if args.require_js_runtime else 'warning'}: yt-dlp finds no {' and no '.join(missing)}; "
              "YouTube URLs will fail or miss formats (pip install -c constraints.txt deno yt-dlp-ejs)",
              file=sys.stderr)
    if args.js_only:
        ok = not (missing and args.require_js_runtime)
        print(json.dumps({"ok": ok, "js_runtime": js_runtime, "yt_dlp_ejs": ejs}))
        return 0 if ok else 1
    url = args.bucket or tempfile.mkdtemp(prefix="bucketrun-smoke-")
    bucket = open_bucket(url)
    bucket.put(CLIP_KEY, CLIP.read_bytes(), "audio/ogg")
    job_id = keys.new_job_id()
    manifest = {"kind": "transcribe", "source": {"key": CLIP_KEY}, "options": {"language": "en"}}

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
    if not ok:
        print(done.stderr[-2000:], file=sys.stderr)
    ok = ok and not (missing and args.require_js_runtime)
    print(json.dumps({"ok": ok, "job_id": job_id, "state": view.state.value if view.state else None,
                      "handler_exit": done.returncode, "srt_bytes": len(srt), "js_runtime": js_runtime,
                      "yt_dlp_ejs": ejs}))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
