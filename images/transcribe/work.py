"""The transcription kind's work: fetch the media, decode, transcribe, render SRT, VTT, JSON and TXT.

The attempt runtime (images/runtime/attempt.py) does everything around it: states, heartbeat, logs, cancel,
drain, the completion check and the terminal transition.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from typing import Any

from bucketrun.events import codec
from bucketrun.events.failures import FailureClass, JobFailure
from bucketrun.images.runtime.attempt import Attempt, Drained, Superseded

from bucketrun.events.result_cache import options_digest

from . import cache, fetch, model, settings, stream, subtitles
from .media import SAMPLE_RATE

log = logging.getLogger("bucketrun.worker")

FORMATS = ("srt", "vtt", "json", "txt")
CONTENT_TYPES = {"srt": "application/x-subrip", "vtt": "text/vtt", "json": "application/json",
                 "txt": "text/plain; charset=utf-8"}


def transcribe(ctx: Attempt) -> dict[str, Any]:
    """The registered work of the `transcribe` kind (events/kinds/transcribe.py names it): fetch, answer from
    the result cache if it holds this media under these options, else transcribe window by window and store."""
    opts, source, st = ctx.manifest.body.options, ctx.manifest.body.source, ctx.stages
    choice = model.choose(opts.model)
    vad = True if opts.vad is None else opts.vad
    decoding = settings.resolve(opts.beam_size, choice)
    resolved = settings.output_options(opts, choice, decoding, vad)
    digest = options_digest(resolved)
    ctx.progress("fetch", 0.0)
    with contextlib.ExitStack() as stack:
        media_id = None
        if source.url:
            with st("fetch"):
                session = stack.enter_context(fetch.url_session(source.url, ctx.workdir,
                                                                lambda f: ctx.progress("fetch", f)))
            media_id = session.media_id
            if opts.cache and media_id:
                with st("cache"):
                    known = cache.lookup_alias(ctx.bucket, digest, media_id)
                    entry = cache.lookup(ctx.bucket, digest, known) if known else None
                if entry and (served := _serve(ctx, entry, opts.formats, digest)):
                    return served
            with st("fetch"):
                path = session.download()
        else:
            with st("fetch"):
                path = fetch.fetch_key(ctx.bucket, source.key, ctx.workdir)
    with st("hash"):
        media_sha256 = cache.sha256_file(path)
    log.info("fetched %s (%d bytes, sha256 %s…)", path.name, path.stat().st_size, media_sha256[:12])
    if opts.cache:
        with st("cache"):
            entry = cache.lookup(ctx.bucket, digest, media_sha256)
        if entry and (served := _serve(ctx, entry, opts.formats, digest)):
            return served
    ctx.check()
    with st("probe"):
        hint = stream.probe(path)
    ctx.progress("load-model", 0.0, 0.0, hint)
    with st("load-model"):
        whisper = model.load(choice)
    log.info("transcribing %s with %s on %s (%s), beam %d, %s, vad %s", f"{hint:.1f} s" if hint else "media",
             choice.name, choice.device, choice.compute_type, decoding.beam_size,
             f"batches of {decoding.batch_size}" if decoding.batch_size else "sequential", vad)
    run = _transcribe_windows(ctx, path, whisper, choice, decoding, opts, vad, hint)
    duration = run["duration"]
    result = {
        "language": run["language"], "language_probability": run["language_probability"],
        "duration": round(duration, 3), "model": choice.name, "device": choice.device,
        "compute_type": choice.compute_type, "transcribe_seconds": round(run["seconds"], 3),
        "rtf": round(run["seconds"] / duration, 4) if duration else None, "options": resolved,
        "windows": run["windows"], "segments": [_segment_json(i, s) for i, s in enumerate(run["segments"])],
    }
    ctx.progress("upload", 1.0, duration, duration)
    with st("render"):
        rendered = {fmt: (render(fmt, run["segments"], result), CONTENT_TYPES[fmt]) for fmt in FORMATS}
    with st("write"):
        for fmt in opts.formats:
            data, content_type = rendered[fmt]
            ctx.put_artifact(f"transcript.{fmt}", data, content_type, format=fmt)
    words = sum(len(s.text.split()) for s in run["segments"])
    summary = {"language": result["language"], "duration": result["duration"], "segments": len(run["segments"]),
               "words": words, "rtf": result["rtf"], "model": choice.name, "device": choice.device,
               "windows": run["windows"]}
    model_seconds = st.seconds.get("load-model", 0.0) + run["seconds"]
    out: dict[str, Any] = {"summary": summary, "media_sha256": media_sha256, "model_seconds": round(model_seconds, 3),
                           "gpu_seconds": round(model_seconds, 3) if choice.device == "cuda" else 0.0}
    if opts.cache:
        with st("cache-store"):
            out["cache"] = {"hit": False, **cache.store(ctx, digest, media_sha256, media_id, resolved, rendered,
                                                         summary)}
    return out


def _serve(ctx: Attempt, entry, formats: list[str], digest: str) -> dict[str, Any] | None:
    """The cached result under this job, or None (and a warning) if the entry turns out broken."""
    from bucketrun.events import keys

    try:
        with ctx.stages("write"):
            cache.serve(ctx, entry, formats)
    except cache.BrokenEntry as exc:
        log.warning("cache entry for %s… is broken (%s); transcribing afresh", entry.media_sha256[:12], exc)
        ctx.artifacts.clear()
        return None
    ctx.progress("upload", 1.0, entry.summary.get("duration"), entry.summary.get("duration"))
    log.info("served from the cache: %s (made by job %s)", entry.media_sha256[:12], entry.job_id)
    return {"summary": {**entry.summary, "cached": True}, "media_sha256": entry.media_sha256,
            "model_seconds": 0.0, "gpu_seconds": 0.0,
            "cache": {"hit": True, "entry": keys.transcript_cache_entry_key(digest, entry.media_sha256),
                      "made_by": {"job_id": entry.job_id, "attempt": entry.attempt}}}


def _run_model(whisper, decoding: settings.Decoding, audio, opts, vad: bool, language: str | None):
    kwargs = dict(language=language, task=opts.task, beam_size=decoding.beam_size, vad_filter=vad,
                  word_timestamps=opts.word_timestamps, condition_on_previous_text=False)
    if decoding.batch_size:
        return model.batched(whisper).transcribe(audio, batch_size=decoding.batch_size, **kwargs)
    return whisper.transcribe(audio, **kwargs)


def _transcribe_windows(ctx: Attempt, path, whisper, choice: model.ModelChoice, decoding: settings.Decoding,
                        opts, vad: bool, hint: float | None) -> dict[str, Any]:
    """Decode and transcribe one silence-cut window at a time (images/transcribe/stream.py), so peak memory is
    one window's, whatever the duration. Times and words are shifted by each window's offset; the language is
    detected on the first window and kept, as a whole-file run detects it once."""
    st = ctx.stages
    windows = iter(stream.windows(stream.decode_stream(path), target_s=decoding.window_target_s,
                                  max_s=decoding.window_max_s, search_s=settings.WINDOW_SEARCH_S))
    segments: list[subtitles.Segment] = []
    language, probability, n, end_s = opts.language, None, 0, 0.0
    pace = Pace(ctx, hint, choice)
    t0 = time.monotonic()
    try:
        with pace:
            while True:
                with st("decode"):
                    window = next(windows, None)
                if window is None:
                    break
                ctx.check()
                offset = window.offset_s
                with st("transcribe"):
                    generator, info = _run_model(whisper, decoding, window.audio, opts, vad, language)
                    for seg in generator:
                        ctx.check()
                        words = tuple(subtitles.Word(offset + float(w.start), offset + float(w.end), w.word,
                                                     float(w.probability)) for w in (seg.words or []))
                        segments.append(subtitles.Segment(offset + float(seg.start), offset + float(seg.end),
                                                          seg.text, words, float(seg.avg_logprob),
                                                          float(seg.no_speech_prob)))
                        pace.reached(offset + float(seg.end))
                if probability is None:
                    language, probability = language or info.language, float(info.language_probability)
                n, end_s = n + 1, offset + len(window.audio) / SAMPLE_RATE
                pace.reached(end_s)
                if not window.last:
                    log.info("window %d done: %.1f s of audio transcribed", n, end_s)
    except (Superseded, Drained, JobFailure):
        raise
    except Exception as exc:  # noqa: BLE001 - ctranslate2 raises RuntimeError and friends
        raise JobFailure(FailureClass.MODEL_ERROR, f"the model failed while transcribing: {exc}",
                         where="transcribe") from exc
    return {"segments": segments, "language": language, "windows": n, "duration": end_s,
            "language_probability": round(probability or 0.0, 4), "seconds": time.monotonic() - t0}


# Seconds of work per second of audio, for a job's first window before it has measured its own: the last job's
# on the same model in this process, else a deliberately slow guess (base int8 on 2 CPU cores ran at 0.13 here).
_last_rtf: dict[model.ModelChoice, float] = {}
_FIRST_GUESS = {"cpu": 0.25, "cuda": 0.08}


class Pace:
    """The transcribe stage's progress, moving while faster-whisper decodes.

    faster-whisper yields nothing until a whole 30 s window is decoded, so a short clip (one window of ours)
    would sit at 0% and jump to 100%. So between segments and windows a thread
    extrapolates from the time spent and the real-time factor measured so far (this job's windows, else the last
    job's), never more than one window ahead of the audio actually transcribed, never to 100% before the end, and
    never backwards. Estimated progress is told apart by `processed_s`, which only ever reports audio whose
    transcript is out (percent runs ahead of processed_s / total_s)."""

    TICK_S = 0.25
    WINDOW_S = 30.0
    CAP = 0.99

    def __init__(self, ctx: Attempt, duration: float | None, choice: model.ModelChoice):
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
            self._report(min(end_s / self.duration, self.CAP) if self.duration else 0.0, real=True)

    def _tick(self) -> None:
        while not self._stop.wait(self.TICK_S):
            with self._lock:
                ahead = min((time.monotonic() - self.t_done) / self.rtf, self.WINDOW_S)
                if self.duration:
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
