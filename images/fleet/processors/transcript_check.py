"""The transcript_check processor: re-transcribe each audio segment of a dataset item with faster-whisper and
score the dataset's own transcript against it (WER/CER), with level and silence figures to explain outliers.

An item is a tar archive (.tar, .tar.gz, .tgz) or a folder prefix (ending in "/") holding NAME.<audio> +
NAME.txt pairs. Each segment is one row; a bad segment is a row with `segment_error`, never a failed item.
"""

from __future__ import annotations

import asyncio
import gzip
import re
import shutil
import tarfile
import threading
import zlib
from pathlib import Path, PurePosixPath
from typing import Any

import jiwer
import numpy as np
import pyarrow as pa

from bucketrun.events.failures import JobFailure
from bucketrun.events.kinds.fleet import TranscriptCheckOptions
from bucketrun.images.transcribe.media import decode
from bucketrun.images.transcribe.model import choose, load

from . import ProcessorContext, ProcessorError, ScratchFolders

AUDIO_SUFFIXES = (".wav", ".flac", ".mp3", ".ogg", ".m4a")
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz")
SAMPLE_RATE = 16000
FRAME_S = 0.030
FLOOR_DBFS = -120.0  # digital silence has RMS 0 (-inf dB); a finite floor keeps the column plain numbers
DOWNLOADS = 8  # concurrent GETs when an item is a folder of many small objects


class Segments(list):
    """fetch()'s payload: a plain list of (segment, audio path or None, transcript or None) that also knows its
    per-item folder, so process() (or close(), if the item is never processed) can remove it."""

    def __init__(self, items, folder: Path):
        super().__init__(items)
        self.folder = folder


def _split(name: str) -> tuple[str, str] | None:
    """(stem, kind) for a member we use, kind being an audio suffix or ".txt"; None for anything else, hidden
    files included (macOS tar adds "._NAME.wav" metadata beside each file)."""
    path = PurePosixPath(name)
    suffix = path.suffix.lower()
    if path.name.startswith(".") or (suffix not in AUDIO_SUFFIXES and suffix != ".txt"):
        return None
    return str(path.with_suffix("")).lstrip("/"), suffix


def normalise(text: str) -> str:
    """Lower case, punctuation out, whitespace collapsed: what the two sides are compared on."""
    text = re.sub(r"['’`]", "", text.lower())  # "don't" and "dont" are the same word
    text = re.sub(r"[^\w\s]|_", " ", text)
    return " ".join(text.split())


def error_rates(reference: str, hypothesis: str) -> tuple[float, float]:
    ref, hyp = normalise(reference), normalise(hypothesis)
    if not ref and not hyp:
        return 0.0, 0.0
    return float(jiwer.wer(ref, hyp)), float(jiwer.cer(ref, hyp))


def levels(audio: np.ndarray, silence_db: float) -> tuple[float, float]:
    """(RMS of the whole segment in dBFS, fraction of 30 ms frames quieter than silence_db)."""
    def dbfs(rms):
        return 20 * np.log10(np.maximum(rms, 10 ** (FLOOR_DBFS / 20)))

    samples = audio.astype(np.float64)
    overall = float(dbfs(np.sqrt(np.mean(samples ** 2))))
    n = int(SAMPLE_RATE * FRAME_S)
    frames = samples[: len(samples) // n * n].reshape(-1, n) if len(samples) >= n else samples.reshape(1, -1)
    frame_db = dbfs(np.sqrt(np.mean(frames ** 2, axis=1)))
    return overall, float(np.mean(frame_db < silence_db))


class TranscriptCheck:
    columns = {"segment": pa.string(), "duration_s": pa.float64(), "rms_dbfs": pa.float64(),
               "silence_fraction": pa.float64(), "reference": pa.string(), "hypothesis": pa.string(),
               "wer": pa.float64(), "cer": pa.float64(), "segment_error": pa.string()}
    blocking = True  # decoding and Whisper hold the CPU/GPU for seconds per item

    def __init__(self, options: TranscriptCheckOptions, ctx: ProcessorContext):
        self.options, self.ctx = options, ctx
        self._model = None
        self._model_lock = threading.Lock()
        self.scratch = ScratchFolders(ctx.workdir, "transcript-check-")

    # --- fetch: bucket -> per-item folder -------------------------------------------------------------------

    async def fetch(self, item: str) -> Segments:
        is_tar = item.lower().endswith(TAR_SUFFIXES)
        if not is_tar and not item.endswith("/"):
            raise ValueError(f"item {item!r} is neither a tar archive ({', '.join(TAR_SUFFIXES)}) "
                             "nor a folder prefix ending in '/'")
        folder = self.scratch.new()
        try:
            if is_tar:
                blob = await self.ctx.source.get(item)
                files = await asyncio.to_thread(self._unpack, blob.data, folder)
            else:
                files = await self._download(item, folder)
            return await asyncio.to_thread(self._pair, item, files, folder)
        except BaseException:
            self.scratch.discard(folder)
            raise

    def _unpack(self, data: bytes, folder: Path) -> dict[str, Path]:
        """Only regular members we use are written, under names we choose: a hostile archive's paths, links
        and devices never reach the disk."""
        archive = folder / "item.tar"
        archive.write_bytes(data)
        files: dict[str, Path] = {}
        try:
            with tarfile.open(archive, "r:*") as tar:
                for member in tar:
                    if not member.isfile() or _split(member.name) is None:
                        continue
                    source = tar.extractfile(member)
                    dest = folder / f"{len(files):05d}{PurePosixPath(member.name).suffix.lower()}"
                    with open(dest, "wb") as out:
                        shutil.copyfileobj(source, out)
                    files[member.name] = dest
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as exc:
            raise ValueError(f"not a readable tar archive: {type(exc).__name__}: {exc}") from exc
        finally:
            archive.unlink(missing_ok=True)
        return files

    async def _download(self, prefix: str, folder: Path) -> dict[str, Path]:
        keys = [o.key async for o in self.ctx.source.list(prefix) if _split(o.key[len(prefix):]) is not None]
        gate = asyncio.Semaphore(DOWNLOADS)

        async def one(i: int, key: str) -> tuple[str, Path]:
            async with gate:
                blob = await self.ctx.source.get(key)
            dest = folder / f"{i:05d}{PurePosixPath(key).suffix.lower()}"
            await asyncio.to_thread(dest.write_bytes, blob.data)
            return key[len(prefix):], dest

        return dict(await asyncio.gather(*(one(i, k) for i, k in enumerate(keys))))

    def _pair(self, item: str, files: dict[str, Path], folder: Path) -> Segments:
        audio: dict[str, Path] = {}
        texts: dict[str, str] = {}
        for name, path in sorted(files.items()):
            stem, kind = _split(name)
            if kind == ".txt":
                texts[stem] = path.read_bytes().decode("utf-8", errors="replace").strip()
                path.unlink()
            elif stem not in audio:  # two audio files with one stem: the first (by name) is the segment
                audio[stem] = path
        if not audio:
            raise ValueError(f"item {item!r} holds no audio ({', '.join(AUDIO_SUFFIXES)})")
        stems = sorted(set(audio) | set(texts))
        return Segments([(s, audio.get(s), texts.get(s)) for s in stems], folder)

    # --- process: one row per segment -----------------------------------------------------------------------

    def model(self):
        """Loaded on first use, once: base offline on CPU, large-v3 on CUDA (images/transcribe/model.py). A model
        that cannot load is the processor's failure, not the item's: ProcessorError stops the worker."""
        with self._model_lock:
            if self._model is None:
                try:
                    self._model = load(choose(self.options.model))
                except JobFailure as exc:
                    raise ProcessorError(exc.message) from exc
            return self._model

    def process(self, item: str, payload: Segments) -> list[dict[str, Any]]:
        try:
            model = self.model()
            return [self._row(model, name, path, text) for name, path, text in payload]
        finally:
            self.scratch.discard(getattr(payload, "folder", None))

    def _row(self, model, name: str, path: Path | None, reference: str | None) -> dict[str, Any]:
        row: dict[str, Any] = dict.fromkeys(self.columns)
        row.update(segment=name, reference=reference)
        if path is None:
            row["segment_error"] = "no audio"
            return row
        try:
            audio = decode(path)
        except Exception as exc:  # noqa: BLE001 - any decoder failure is this segment's, not the item's
            row["segment_error"] = f"audio does not decode: {getattr(exc, 'message', None) or exc}"
            return row
        row["duration_s"] = len(audio) / SAMPLE_RATE
        row["rms_dbfs"], row["silence_fraction"] = levels(audio, self.options.silence_db)
        try:
            segments, _ = model.transcribe(audio, language=self.options.language, beam_size=self.options.beam_size,
                                           vad_filter=False, condition_on_previous_text=False)
            row["hypothesis"] = " ".join(s.text.strip() for s in segments).strip()
        except Exception as exc:  # noqa: BLE001 - one segment Whisper chokes on must not lose the others
            row["segment_error"] = f"transcription failed: {type(exc).__name__}: {exc}"
            return row
        if reference is None:
            row["segment_error"] = "no transcript"
        else:
            row["wer"], row["cer"] = error_rates(reference, row["hypothesis"])
        return row

    def discard(self, payload: Any) -> None:
        """Inputs fetched for an item that will not be processed here: remove its scratch folder now."""
        self.scratch.discard(getattr(payload, "folder", None))

    def close(self) -> None:
        self.scratch.close()

def make(options: dict[str, Any], ctx: ProcessorContext) -> TranscriptCheck:
    return TranscriptCheck(TranscriptCheckOptions.model_validate(options), ctx)
