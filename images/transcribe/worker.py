"""The transcription worker function: the same code for the local launcher and the GPU image.

It reads its job from the bucket (the launch input names only the job), writes `running`, progress,
the artifacts for its attempt, and a final transition listing each artifact's key, bytes and sha256.
"""

from __future__ import annotations

import hashlib
import io
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from bucketrun.events import codec, keys
from bucketrun.events.errors import BucketrunError, IllegalTransition, StaleAttempt
from bucketrun.events.failures import FailureClass, JobFailure, error_detail
from bucketrun.events.lifecycle import JobState, JobView, append_transition, default_writer, read_view
from bucketrun.events.manifest import TranscribeManifest, load_job_manifest
from bucketrun.events.retry import record_failure
from bucketrun.events.storage import Bucket, open_bucket

from . import fetch, media, model, subtitles
from bucketrun.images.runtime.heartbeat import Heartbeat
from .media import SAMPLE_RATE

log = logging.getLogger("bucketrun.worker")

CONTENT_TYPES = {"srt": "application/x-subrip", "vtt": "text/vtt", "json": "application/json",
                 "txt": "text/plain; charset=utf-8"}


class Superseded(Exception):
    """The job left this attempt (cancelled, retried) while it ran."""


def wait_for_launch(bucket: Bucket, job_id: str, attempt: int, timeout_s: float = 30.0) -> JobView:
    """The launcher appends `launched` after the backend accepts the job, so a fast worker waits for it."""
    deadline = time.monotonic() + timeout_s
    view = read_view(bucket, job_id)
    while view.state is JobState.QUEUED and view.attempt == attempt and time.monotonic() < deadline:
        time.sleep(0.05)
        view = read_view(bucket, job_id, known=view)
    return view


def run_job(bucket_url: str, job_id: str, attempt: int, writer: str | None = None) -> dict[str, Any]:
    """Run one attempt to a terminal transition; returns a small summary (never secrets)."""
    bucket = open_bucket(bucket_url)
    writer = writer or default_writer("worker")
    view = wait_for_launch(bucket, job_id, attempt)
    if view.state is not JobState.LAUNCHED or view.attempt != attempt:
        return {"job_id": job_id, "attempt": attempt, "status": "skipped",
                "reason": f"job is {view.state.value if view.state else 'unknown'} on attempt {view.attempt}"}
    try:
        _, view = append_transition(bucket, job_id, JobState.RUNNING, writer=writer, attempt=attempt,
                                    expect=JobState.LAUNCHED, view=view)
    except (IllegalTransition, StaleAttempt) as exc:
        return {"job_id": job_id, "attempt": attempt, "status": "skipped", "reason": str(exc)}

    buffer = io.StringIO()
    handler = logging.StreamHandler(buffer)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("bucketrun").addHandler(handler)
    started = time.monotonic()
    manifest: TranscribeManifest | None = None
    error: dict[str, Any] | None = None
    try:
        try:
            manifest = load_job_manifest(bucket, job_id)
            with Heartbeat(bucket, job_id, attempt, every_s=manifest.resources.heartbeat_s, view=view) as beat:
                detail = _transcribe(bucket, job_id, attempt, manifest, beat)
        except JobFailure as exc:
            log.error("job failed (%s): %s", exc.cls.value, exc.message)
            error = error_detail(exc.cls, exc.message, where=exc.where)["error"]
        except Superseded:
            return {"job_id": job_id, "attempt": attempt, "status": "superseded"}
        except Exception as exc:  # noqa: BLE001 - the job must end in a state, whatever broke
            log.exception("unexpected error")
            error = error_detail(FailureClass.CODE_ERROR, f"internal error: {type(exc).__name__}: {exc}",
                                 where="worker")["error"]
        elapsed = {"elapsed_s": round(time.monotonic() - started, 3)}
        # Catch up from the last view (one listing, new events only); a lost race re-reads inside.
        view = read_view(bucket, job_id, known=view)
        try:
            if error is None:
                t, _ = append_transition(bucket, job_id, JobState.SUCCEEDED, writer=writer, attempt=attempt,
                                         expect=JobState.RUNNING, detail={**detail, **elapsed}, view=view)
            else:
                max_attempts = manifest.resources.max_attempts if manifest else 1
                t = record_failure(bucket, job_id, error, writer=writer, attempt=attempt,
                                   max_attempts=max_attempts, extra=elapsed, view=view)
        except (IllegalTransition, StaleAttempt) as exc:
            log.warning("result not recorded: %s", exc)
            return {"job_id": job_id, "attempt": attempt, "status": "superseded", "reason": str(exc)}
        return {"job_id": job_id, "attempt": attempt, "status": t.state.value,
                "artifacts": [a["key"] for a in t.detail.get("artifacts", [])]}
    finally:
        logging.getLogger("bucketrun").removeHandler(handler)
        try:
            bucket.put(keys.log_key(job_id, attempt), buffer.getvalue().encode(), "text/plain; charset=utf-8")
        except BucketrunError:
            pass


def _transcribe(bucket: Bucket, job_id: str, attempt: int, manifest: TranscribeManifest,
                beat: Heartbeat) -> dict[str, Any]:
    opts = manifest.options
    with tempfile.TemporaryDirectory(prefix="bucketrun-") as tmp:
        workdir = Path(tmp)
        beat.update("fetch", 0.0)
        if manifest.source.url:
            path = fetch.fetch_url(manifest.source.url, workdir, lambda f: beat.update("fetch", f))
        else:
            path = fetch.fetch_key(bucket, manifest.source.key, workdir)
        log.info("fetched %s (%d bytes)", path.name, path.stat().st_size)
        audio = media.decode(path)
    duration = len(audio) / SAMPLE_RATE
    choice = model.choose(opts.model)
    beat.update("load-model", 0.0, 0.0, duration)
    whisper = model.load(choice)
    vad = True if opts.vad is None else opts.vad
    log.info("transcribing %.1f s with %s on %s (%s), beam %d, vad %s", duration, choice.name, choice.device,
             choice.compute_type, opts.beam_size, vad)
    t0 = time.monotonic()
    try:
        generator, info = whisper.transcribe(
            audio, language=opts.language, task=opts.task, beam_size=opts.beam_size, vad_filter=vad,
            word_timestamps=opts.word_timestamps, condition_on_previous_text=False)
        segments: list[subtitles.Segment] = []
        beat.update("transcribe", 0.0, 0.0, duration)
        for seg in generator:
            if beat.superseded.is_set():
                raise Superseded()
            words = tuple(subtitles.Word(float(w.start), float(w.end), w.word, float(w.probability))
                          for w in (seg.words or []))
            segments.append(subtitles.Segment(float(seg.start), float(seg.end), seg.text, words,
                                              float(seg.avg_logprob), float(seg.no_speech_prob)))
            beat.update("transcribe", float(seg.end) / duration if duration else 1.0, float(seg.end), duration)
    except (Superseded, JobFailure):
        raise
    except Exception as exc:  # noqa: BLE001 - ctranslate2 raises RuntimeError and friends
        raise JobFailure(FailureClass.MODEL_ERROR, f"the model failed while transcribing: {exc}",
                         where="transcribe") from exc
    seconds = time.monotonic() - t0
    beat.update("upload", 1.0, duration, duration)
    result = {
        "language": info.language, "language_probability": round(float(info.language_probability), 4),
        "duration": round(duration, 3), "model": choice.name, "device": choice.device,
        "compute_type": choice.compute_type, "transcribe_seconds": round(seconds, 3),
        "rtf": round(seconds / duration, 4) if duration else None, "options": opts.model_dump(mode="json"),
        "segments": [_segment_json(i, s) for i, s in enumerate(segments)],
    }
    artifacts = _upload(bucket, job_id, attempt, opts.formats, segments, result)
    words = sum(len(s.text.split()) for s in segments)
    return {"artifacts": artifacts, "summary": {
        "language": result["language"], "duration": result["duration"], "segments": len(segments),
        "words": words, "rtf": result["rtf"], "model": choice.name, "device": choice.device}}


def _segment_json(i: int, s: subtitles.Segment) -> dict[str, Any]:
    return {"id": i, "start": round(s.start, 3), "end": round(s.end, 3), "text": s.text.strip(),
            "avg_logprob": round(s.avg_logprob, 4), "no_speech_prob": round(s.no_speech_prob, 4),
            "words": [{"start": round(w.start, 3), "end": round(w.end, 3), "word": w.text.strip(),
                       "probability": round(w.probability, 4)} for w in s.words]}


def render(fmt: str, segments: list[subtitles.Segment], result: dict[str, Any]) -> bytes:
    if fmt == "json":
        return codec.dumps(result)
    if fmt == "txt":
        return subtitles.to_txt(segments).encode()
    cues = subtitles.build_cues(segments)
    return (subtitles.to_srt(cues) if fmt == "srt" else subtitles.to_vtt(cues)).encode()


def _upload(bucket: Bucket, job_id: str, attempt: int, formats: list[str], segments: list[subtitles.Segment],
            result: dict[str, Any]) -> list[dict[str, Any]]:
    artifacts = []
    for fmt in formats:
        data = render(fmt, segments, result)
        key = keys.artifact_key(job_id, attempt, f"transcript.{fmt}")
        bucket.put(key, data, CONTENT_TYPES[fmt])
        artifacts.append({"key": key, "format": fmt, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    return artifacts
