"""The transcription kind's work: fetch the media, decode, transcribe, render SRT, VTT, JSON and TXT.

The attempt runtime (images/runtime/attempt.py) does everything around it: states, heartbeat, logs, cancel,
drain, the completion check and the terminal transition.
"""

from __future__ import annotations

import logging
import threading
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
    pace = Pace(ctx, duration, choice)
    try:
        with pace:
            generator, info = whisper.transcribe(
                audio, language=opts.language, task=opts.task, beam_size=opts.beam_size, vad_filter=vad,
                word_timestamps=opts.word_timestamps, condition_on_previous_text=False)
            segments: list[subtitles.Segment] = []
            for seg in generator:
                ctx.check()
                words = tuple(subtitles.Word(float(w.start), float(w.end), w.word, float(w.probability))
                              for w in (seg.words or []))
                segments.append(subtitles.Segment(float(seg.start), float(seg.end), seg.text, words,
                                                  float(seg.avg_logprob), float(seg.no_speech_prob)))
                pace.reached(float(seg.end))
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


# Seconds of work per second of audio, for a job's first window before it has measured its own: the last job's
# on the same model in this process, else a deliberately slow guess (base int8 on 2 CPU cores ran at 0.13 here).
_last_rtf: dict[model.ModelChoice, float] = {}
_FIRST_GUESS = {"cpu": 0.25, "cuda": 0.08}


class Pace:
    """The transcribe stage's progress, moving while faster-whisper decodes.

    faster-whisper yields nothing until a whole 30 s window is decoded, so a short clip would sit at 0% and jump
    to 100%. Transcribing Silero VAD chunks in groups cannot help: the demo clip is one chunk, and cutting inside
    a chunk would decode different windows than today's outputs come from. So between segments a thread
    extrapolates from the time spent and the real-time factor measured so far (this job's windows, else the last
    job's), never more than one window ahead of the audio actually transcribed, never to 100% before the end, and
    never backwards. Estimated progress is told apart by `processed_s`, which only ever reports audio whose
    transcript is out (percent runs ahead of processed_s / total_s)."""

    TICK_S = 0.25
    WINDOW_S = 30.0
    CAP = 0.99

    def __init__(self, ctx: Attempt, duration: float, choice: model.ModelChoice):
        self.ctx, self.duration, self.choice = ctx, duration, choice
        self.rtf = _last_rtf.get(choice) or _FIRST_GUESS.get(choice.device, 0.25)
        self.done_s, self.fraction = 0.0, 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._tick, name="transcribe-pace", daemon=True)

    def __enter__(self) -> "Pace":
        self.t0 = self.t_done = time.monotonic()
        self.ctx.progress("transcribe", 0.0, 0.0, self.duration)
        self._thread.start()
        return self

    def __exit__(self, exc_type, *_) -> None:
        self._stop.set()
        self._thread.join()
        if exc_type is None and self.done_s > 0:
            _last_rtf[self.choice] = (time.monotonic() - self.t0) / self.done_s

    def reached(self, end_s: float) -> None:
        """A segment is out: its end is real progress, and the time it took measures this job's pace."""
        with self._lock:
            now = time.monotonic()
            if end_s > self.done_s:
                self.done_s, self.t_done = end_s, now
                self.rtf = (now - self.t0) / end_s
            self._report(end_s / self.duration, real=True)

    def _tick(self) -> None:
        while not self._stop.wait(self.TICK_S):
            with self._lock:
                ahead = min((time.monotonic() - self.t_done) / self.rtf, self.WINDOW_S)
                self._report(min((self.done_s + ahead) / self.duration, self.CAP))

    def _report(self, fraction: float, real: bool = False) -> None:
        """Only forwards; a real position is always passed on (with processed_s), an estimate only if it moves."""
        if real or fraction > self.fraction:
            self.fraction = max(self.fraction, fraction)
            self.ctx.progress("transcribe", self.fraction, self.done_s, self.duration)


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
