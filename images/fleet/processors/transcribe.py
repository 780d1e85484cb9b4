"""The transcribe processor: each item is one source (a bucket key or a URL, events/kinds/transcription.py
`parse_item`), transcribed with the transcribe kind's own core (images/transcribe/engine.py) and settings, its
requested formats written as per-item files under the fleet's output prefix, and one row per source naming them.

A many-sources transcribe manifest runs as a fleet with this processor (events/kinds/transcribe.py `expand`). A
source that cannot be fetched or transcribed is that item's error row; the fleet goes on with the others.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from bucketrun.events import keys
from bucketrun.events.errors import BucketrunError
from bucketrun.events.failures import JobFailure
from bucketrun.events.kinds.transcription import FORMATS, BadItem, TranscribeOptions, parse_item
from bucketrun.events.result_cache import options_digest
from bucketrun.events.storage import open_bucket
from bucketrun.images.transcribe import cache, engine, fetch, settings
from bucketrun.images.transcribe.model import choose, load, sha256_file

from . import ProcessorContext, ProcessorError, ScratchFolders

log = logging.getLogger("bucketrun.fleet.transcribe")


class SourceFailed(Exception):
    """This item's source could not be fetched or transcribed (a bad URL, a missing key, not media): the
    message is the item's error row."""


@dataclass
class Fetched:
    """fetch()'s payload: the media in its own folder (removed once processed, or by close())."""

    folder: Path
    path: Path
    source_type: str  # "url" or "key"
    media_sha256: str
    media_bytes: int


COLUMNS: dict[str, pa.DataType] = {
    "source_type": pa.string(), "media_sha256": pa.string(), "media_bytes": pa.int64(), "language": pa.string(),
    "duration_s": pa.float64(), "segments": pa.int64(), "words": pa.int64(), "rtf": pa.float64(),
    "windows": pa.int64(), "model": pa.string(), "device": pa.string(), "cached": pa.bool_(),
    "seconds": pa.float64(),
    **{f"{fmt}_{field}": (pa.int64() if field == "bytes" else pa.string())
       for fmt in FORMATS for field in ("key", "sha256", "bytes")},
}


class Transcribe:
    columns = COLUMNS
    blocking = True  # Whisper holds the CPU/GPU for minutes per source

    def __init__(self, options: TranscribeOptions, ctx: ProcessorContext):
        if ctx.output is None:
            raise ProcessorError("the transcribe processor writes per-item files: its context needs `output`")
        self.options, self.ctx = options, ctx
        self._model: tuple[Any, Any] | None = None
        self._lock = threading.Lock()
        self._source_bucket = None
        self.scratch = ScratchFolders(ctx.workdir, "transcribe-")

    # --- fetch: the source -> a per-item folder ---------------------------------------------------------------

    async def fetch(self, item: str) -> Fetched:
        try:
            source = parse_item(item)
        except BadItem as exc:
            raise SourceFailed(str(exc)) from exc
        folder = self.scratch.new()
        try:
            if source.url is not None:  # yt-dlp blocks: a thread (fetch_url checks the URL's address first)
                path = await asyncio.to_thread(fetch.fetch_url, source.url, folder)
            else:
                path = await asyncio.to_thread(fetch.fetch_key, self._items_bucket(), source.key, folder)
            digest = await asyncio.to_thread(sha256_file, path)
            return Fetched(folder, path, "url" if source.url is not None else "key", digest, path.stat().st_size)
        except JobFailure as exc:
            self.scratch.discard(folder)
            raise SourceFailed(exc.message) from exc
        except BaseException:
            self.scratch.discard(folder)
            raise

    def _items_bucket(self):
        """The items' bucket, synchronous, for a streamed download (media can be hours; never one bytes object)."""
        if self._source_bucket is None:
            self._source_bucket = getattr(self.ctx.source, "sync", None) or open_bucket(self.ctx.source.url)
        return self._source_bucket

    # --- process: transcribe, write the files, one row ----------------------------------------------------------

    def model(self):
        """(WhisperModel, ModelChoice), loaded on first use, once: as the transcribe kind chooses it (base offline
        on CPU, large-v3 on CUDA). A model that cannot load is the processor's failure, not the source's."""
        with self._lock:
            if self._model is None:
                try:
                    choice = choose(self.options.model)
                    self._model = (load(choice), choice)
                except JobFailure as exc:
                    raise ProcessorError(exc.message) from exc
            return self._model

    def process(self, item: str, payload: Fetched) -> list[dict[str, Any]]:
        try:
            return [self._row(item, payload)]
        finally:
            self.scratch.discard(payload.folder)

    def _row(self, item: str, got: Fetched) -> dict[str, Any]:
        opts, started = self.options, time.monotonic()
        whisper, choice = self.model()
        vad = True if opts.vad is None else opts.vad
        decoding = settings.resolve(opts.beam_size, choice, vad)  # the same resolution as a single-source job
        resolved = settings.output_options(opts, choice, decoding, vad)
        digest = options_digest(resolved)
        served = self._from_cache(digest, got.media_sha256) if opts.cache else None
        if served is not None:
            rendered, summary = served
        else:
            try:
                run = engine.transcribe_file(got.path, whisper, choice, decoding, opts, vad)
            except JobFailure as exc:
                raise SourceFailed(exc.message) from exc
            rendered, summary = engine.render_all(run.segments, run.result(resolved)), run.summary()
        row: dict[str, Any] = dict.fromkeys(self.columns)
        row.update(source_type=got.source_type, media_sha256=got.media_sha256, media_bytes=got.media_bytes,
                   language=summary.get("language"), duration_s=summary.get("duration"),
                   segments=summary.get("segments"), words=summary.get("words"), rtf=summary.get("rtf"),
                   windows=summary.get("windows"), model=summary.get("model"), device=summary.get("device"),
                   cached=served is not None)
        for fmt in opts.formats:
            data, content_type = rendered[fmt]
            sha = hashlib.sha256(data).hexdigest()
            key = keys.fleet_item_artifact_key(self.ctx.output_prefix, item, sha, fmt)
            self.ctx.output.put(key, data, content_type)
            row.update({f"{fmt}_key": key, f"{fmt}_sha256": sha, f"{fmt}_bytes": len(data)})
        if opts.cache and served is None:
            self._store(digest, got.media_sha256, resolved, rendered, summary)
        row["seconds"] = round(time.monotonic() - started, 3)
        return row

    def _from_cache(self, digest: str, media_sha256: str) -> tuple[dict[str, tuple[bytes, str]], dict] | None:
        """The requested formats of a cached result for this media under these options, checked as a job's are
        (cache.read_files); None if there is none, or it is broken."""
        entry = cache.lookup(self.ctx.output, digest, media_sha256)
        if entry is None:
            return None
        try:
            return cache.read_files(self.ctx.output, entry, self.options.formats), entry.summary
        except cache.BrokenEntry as exc:
            log.warning("cache entry for %s… is broken (%s); transcribing afresh", media_sha256[:12], exc)
            return None

    def _store(self, digest: str, media_sha256: str, resolved: dict[str, Any],
               rendered: dict[str, tuple[bytes, str]], summary: dict[str, Any]) -> None:
        try:
            cache.store(self.ctx.output, self.ctx.job_id, self.ctx.attempt, digest, media_sha256, None, resolved,
                        rendered, summary)
        except BucketrunError as exc:  # the item's own files are written: a missed cache entry costs a re-run
            log.warning("could not store %s… in the result cache: %s", media_sha256[:12], exc)

    def discard(self, payload: Any) -> None:
        """Inputs fetched for an item that will not be processed here: remove its scratch folder now."""
        self.scratch.discard(getattr(payload, "folder", None))

    def close(self) -> None:
        self.scratch.close()

def make(options: dict[str, Any], ctx: ProcessorContext) -> Transcribe:
    return Transcribe(TranscribeOptions.model_validate(options), ctx)
