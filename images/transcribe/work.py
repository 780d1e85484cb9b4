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

from bucketrun.events import keys
from bucketrun.events.result_cache import options_digest
from bucketrun.images.runtime.attempt import Attempt

from . import cache, engine, fetch, model, settings, stream

log = logging.getLogger("bucketrun.worker")


def transcribe(ctx: Attempt) -> dict[str, Any]:
    """The registered work of the `transcribe` kind (events/kinds/transcribe.py names it): fetch, answer from
    the result cache if it holds this media under these options, else transcribe window by window and store."""
    opts, source, st = ctx.manifest.body.options, ctx.manifest.body.source, ctx.stages
    choice = model.choose(opts.model)
    vad = True if opts.vad is None else opts.vad
    decoding = settings.resolve(opts.beam_size, choice, vad)
    resolved = settings.output_options(opts, choice, decoding, vad)
    digest = options_digest(resolved)
    ctx.progress("fetch", 0.0)
    broken: tuple[str | None, str | None] = (None, None)  # (media sha256 looked up, ETag of its broken entry)
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
                    entry, etag = cache.find(ctx.bucket, digest, known) if known else (None, None)
                if entry and (served := _serve(ctx, entry, opts.formats, digest)):
                    return served
                if known:  # looked up already: the media's own lookup below is not repeated
                    broken = (known, etag)
            with st("fetch"):
                path = session.download()
        else:
            with st("fetch"):
                path = fetch.fetch_key(ctx.bucket, source.key, ctx.workdir)
    with st("hash"):
        media_sha256 = model.sha256_file(path)
    log.info("fetched %s (%d bytes, sha256 %s…)", path.name, path.stat().st_size, media_sha256[:12])
    if opts.cache and broken[0] != media_sha256:
        with st("cache"):
            entry, etag = cache.find(ctx.bucket, digest, media_sha256)
        if entry and (served := _serve(ctx, entry, opts.formats, digest)):
            return served
        broken = (media_sha256, etag)
    ctx.check()
    with st("probe"):
        hint = stream.probe(path)
    ctx.progress("load-model", 0.0, 0.0, hint)
    with st("load-model"):
        whisper = model.load(choice)
    log.info("transcribing %s with %s on %s (%s), beam %d, %s, vad %s", f"{hint:.1f} s" if hint else "media",
             choice.name, choice.device, choice.compute_type, decoding.beam_size,
             f"batches of {decoding.batch_size}" if decoding.batch_size else "sequential", vad)
    pace = Pace(ctx, hint, choice)
    with pace:
        run = engine.transcribe_file(path, whisper, choice, decoding, opts, vad, stages=st, check=ctx.check,
                                     on_segment=pace.reached, on_window=pace.reached)
    result = run.result(resolved)
    # No progress write for the writes that follow: the `succeeded` transition comes within them, and status
    # reports a succeeded job at 100%, so a forced "upload 100%" PUT would be read by nobody.
    with st("render"):
        rendered = engine.render_all(run.segments, result)
    with st("write"):
        for fmt in opts.formats:
            data, content_type = rendered[fmt]
            ctx.put_artifact(f"transcript.{fmt}", data, content_type, format=fmt)
    summary = run.summary()
    model_seconds = st.seconds.get("load-model", 0.0) + run.seconds
    out: dict[str, Any] = {"summary": summary, "media_sha256": media_sha256, "model_seconds": round(model_seconds, 3),
                           "gpu_seconds": round(model_seconds, 3) if choice.device == "cuda" else 0.0}
    if opts.cache:
        with st("cache-store"):
            out["cache"] = {"hit": False, **cache.store(ctx.bucket, ctx.job_id, ctx.attempt, digest,
                                                         media_sha256, media_id, resolved, rendered, summary,
                                                         ctx.artifacts, broken[1] if broken[0] == media_sha256
                                                         else None)}
    return out


def _serve(ctx: Attempt, entry, formats: list[str], digest: str) -> dict[str, Any] | None:
    """The cached result under this job, or None (and a warning) if the entry turns out broken."""
    try:
        with ctx.stages("write"):
            cache.serve(ctx, entry, formats)
    except cache.BrokenEntry as exc:
        log.warning("cache entry for %s… is broken (%s); transcribing afresh", entry.media_sha256[:12], exc)
        ctx.artifacts.clear()
        return None
    log.info("served from the cache: %s (made by job %s)", entry.media_sha256[:12], entry.job_id)
    return {"summary": {**entry.summary, "cached": True}, "media_sha256": entry.media_sha256,
            "model_seconds": 0.0, "gpu_seconds": 0.0,
            "cache": {"hit": True, "entry": keys.transcript_cache_entry_key(digest, entry.media_sha256),
                      "made_by": {"job_id": entry.job_id, "attempt": entry.attempt}}}


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
