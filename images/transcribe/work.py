"""The transcription kind's work: fetch the media, decode, transcribe, render SRT, VTT, JSON and TXT.

The attempt runtime (images/runtime/attempt.py) does everything around it: states, heartbeat, logs, cancel,
drain, the completion check and the terminal transition.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from bucketrun.events import codec
from bucketrun.events.failures import FailureClass, JobFailure
from bucketrun.images.runtime.attempt import Attempt, Drained, Superseded

from . import fetch, media, model, subtitles
from .media import SAMPLE_RATE

log = logging.getLogger("bucketrun.worker")

CONTENT_TYPES = {"srt": "application/x-subrip", "vtt": "text/vtt", "json": "application/json",
                 "txt": "text/plain; charset=utf-8"}


def transcribe(ctx: Attempt) -> dict[str, Any]:
    """The registered work of the `transcribe` kind (events/kinds/transcribe.py names it)."""
    body = ctx.manifest.body
    opts, source = body.options, body.source
    ctx.progress("fetch", 0.0)
    if source.url:
        path = fetch.fetch_url(source.url, ctx.workdir, lambda f: ctx.progress("fetch", f))
    else:
        path = fetch.fetch_key(ctx.bucket, source.key, ctx.workdir)
    log.info("fetched %s (%d bytes)", path.name, path.stat().st_size)
    ctx.check()
    audio = media.decode(path)
    duration = len(audio) / SAMPLE_RATE
    choice = model.choose(opts.model)
    ctx.progress("load-model", 0.0, 0.0, duration)
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
        ctx.progress("transcribe", 0.0, 0.0, duration)
        for seg in generator:
            ctx.check()
            words = tuple(subtitles.Word(float(w.start), float(w.end), w.word, float(w.probability))
                          for w in (seg.words or []))
            segments.append(subtitles.Segment(float(seg.start), float(seg.end), seg.text, words,
                                              float(seg.avg_logprob), float(seg.no_speech_prob)))
            ctx.progress("transcribe", float(seg.end) / duration if duration else 1.0, float(seg.end), duration)
    except (Superseded, Drained, JobFailure):
        raise
    except Exception as exc:  # noqa: BLE001 - ctranslate2 raises RuntimeError and friends
        raise JobFailure(FailureClass.MODEL_ERROR, f"the model failed while transcribing: {exc}",
                         where="transcribe") from exc
    seconds = time.monotonic() - t0
    ctx.progress("upload", 1.0, duration, duration)
    result = {
        "language": info.language, "language_probability": round(float(info.language_probability), 4),
        "duration": round(duration, 3), "model": choice.name, "device": choice.device,
        "compute_type": choice.compute_type, "transcribe_seconds": round(seconds, 3),
        "rtf": round(seconds / duration, 4) if duration else None, "options": opts.model_dump(mode="json"),
        "segments": [_segment_json(i, s) for i, s in enumerate(segments)],
    }
    for fmt in opts.formats:
        ctx.put_artifact(f"transcript.{fmt}", render(fmt, segments, result), CONTENT_TYPES[fmt], format=fmt)
    words = sum(len(s.text.split()) for s in segments)
    return {"summary": {
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
