"""Streaming decode and silence-cut windows, so transcription memory does not grow with the media's duration.

`media.decode` holds the whole file as one float32 array and faster-whisper then extracts features for all of it
(1.06 GB over the idle worker for a 22.5-minute clip). Here the audio is decoded a chunk at a time and cut into
windows of a few minutes at pauses found by Silero VAD, so a window boundary never falls inside a word.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from faster_whisper.vad import VadOptions, get_speech_timestamps

from bucketrun.events.failures import FailureClass, JobFailure

SAMPLE_RATE = 16000

# Pauses between phrases are often 300-700 ms, so a 300 ms minimum finds plenty of candidates in a 90 s search
# region while staying longer than the gaps inside words (stop closures, ~100 ms). The 100 ms pad (faster-whisper
# uses 400 ms) keeps such pauses visible as gaps; a cut is never inside a padded span, so it is at least 100 ms
# from speech the VAD heard (150 ms when the gap lies between two spans: the middle of a >= 100 ms gap).
CUT_VAD = VadOptions(min_silence_duration_ms=300, speech_pad_ms=100)
VAD_PIECE_S = 30.0  # the VAD's working set grows with its input (~0.3 MB/s): 90 s in one call costs 27 MB
VAD_CONTEXT_S = 1.0  # audio either side of each piece given to the VAD, so piece edges are judged in context
GROUP_S = 1.0  # seconds of decoded source audio resampled at once
FRAME_S = 0.1  # the quietest-frame fallback's frame


def _bad(message: str, exc: BaseException | None = None) -> JobFailure:
    return JobFailure(FailureClass.BAD_INPUT, message if exc is None else f"{message} ({exc})", where="source")


def _open(path: Path | str):
    """Open the container and check it has audio, classifying failures as media.decode does."""
    import av  # late: PyAV (heavy) only when media is decoded

    try:
        container = av.open(str(path), mode="r", metadata_errors="ignore")
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise _bad("the source is not a media file ffmpeg can read", exc) from exc
    if not container.streams.audio:
        container.close()
        raise _bad("the media has no audio track")
    return container


def probe(path: Path | str) -> float | None:
    """The duration in seconds from the audio stream's (else the container's) metadata; None when neither says.

    Metadata only, nothing is decoded: for progress and logs, never for offsets (those count decoded samples)."""
    container = _open(path)
    with container:
        stream = container.streams.audio[0]
        if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
            return float(stream.duration * stream.time_base)
        if container.duration is not None and container.duration > 0:
            return container.duration / 1_000_000  # AV_TIME_BASE
    return None


def decode_stream(path: Path | str, chunk_s: float = 30.0) -> Iterator[np.ndarray]:
    """16 kHz mono float32 chunks of exactly chunk_s (the last one shorter), equal sample for sample when joined
    to faster_whisper.audio.decode_audio(path): the same resampler, frames without pts, invalid frames skipped.
    Holds about one chunk plus GROUP_S of decoded audio. Errors surface on the first next()."""
    import av  # late: PyAV (heavy) only when media is decoded

    chunk_n = max(1, round(chunk_s * SAMPLE_RATE))
    container = _open(path)
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    pending: list[np.ndarray] = []
    held = emitted = 0
    try:
        for samples in _resampled(container, resampler):
            pending.append(samples)
            held += len(samples)
            while held >= chunk_n:
                joined = np.concatenate(pending)
                pending, held = [joined[chunk_n:].copy()], len(joined) - chunk_n
                emitted += chunk_n
                yield _to_float(joined[:chunk_n])
        if held:
            emitted += held
            yield _to_float(np.concatenate(pending))
        if not emitted:
            raise _bad("the audio track is empty")
    finally:
        container.close()
        del resampler  # decode_audio notes the resampler's graph is only freed by a collection
        gc.collect()


def _to_float(samples: np.ndarray) -> np.ndarray:
    out = samples.astype(np.float32)
    out /= 32768.0  # in place, and bit-identical to decode_audio's `astype(np.float32) / 32768.0`
    return out


def _resampled(container, resampler) -> Iterator[np.ndarray]:
    """The first audio stream as int16 arrays, resampled GROUP_S at a time (a call per frame is 4x slower)."""
    import av  # late: PyAV (heavy) only when media is decoded

    fifo = av.AudioFifo()
    frames = container.decode(audio=0)
    while True:
        try:
            frame = next(frames)
        except StopIteration:
            break
        except av.error.InvalidDataError:
            continue  # as decode_audio does: a damaged frame is skipped, not fatal
        except av.error.FFmpegError as exc:
            raise _bad("the audio track could not be decoded", exc) from exc
        frame.pts = None  # as decode_audio does: no timestamp checks, so the output matches it
        fifo.write(frame)
        if fifo.samples >= GROUP_S * frame.sample_rate:
            for out in resampler.resample(fifo.read()):
                yield out.to_ndarray().reshape(-1)
    for group in ([fifo.read()] if fifo.samples else []) + [None]:  # None flushes the resampler
        for out in resampler.resample(group):
            yield out.to_ndarray().reshape(-1)


@dataclass(frozen=True, eq=False)
class Window:
    """A stretch of the media to transcribe alone; `offset_s` places its timestamps in the whole media."""

    index: int
    offset_s: float
    audio: np.ndarray
    last: bool

    @property
    def end_s(self) -> float:
        return (round(self.offset_s * SAMPLE_RATE) + len(self.audio)) / SAMPLE_RATE  # exact, as offset_s is


def windows(chunks: Iterable[np.ndarray], target_s: float = 120.0, max_s: float = 180.0, search_s: float = 30.0,
            vad: VadOptions | None = CUT_VAD) -> Iterator[Window]:
    """Cut a stream of 16 kHz chunks into windows of at most max_s, each ending in a pause.

    Once more than max_s is buffered (or the stream ends), the cut goes in [target_s - search_s, max_s]: the middle
    of the longest VAD silence there, else the middle of the quietest 100 ms frame (vad=None skips the VAD). The
    windows tile the input exactly; besides the window the caller holds, at most max_s plus one chunk is kept."""
    lo_n, max_n = round((target_s - search_s) * SAMPLE_RATE), round(max_s * SAMPLE_RATE)
    if not 0 <= lo_n < max_n:
        raise ValueError("windows needs 0 <= target_s - search_s < max_s")
    buf = np.empty(0, dtype=np.float32)  # audio not yet windowed is buf[:held]; it starts at sample `start`
    held = start = index = 0
    for chunk in chunks:
        chunk = np.asarray(chunk, dtype=np.float32).reshape(-1)
        if held + len(chunk) > len(buf):
            grown = np.empty(max(held + len(chunk), max_n + len(chunk)), dtype=np.float32)
            grown[:held] = buf[:held]
            buf = grown
        buf[held:held + len(chunk)] = chunk
        held += len(chunk)
        while held > max_n:  # strictly more: something remains after the cut, so this window is not the last
            cut = choose_cut(buf[:held], max(lo_n, 1), max_n, target_s * SAMPLE_RATE, vad)
            yield Window(index, start / SAMPLE_RATE, buf[:cut].copy(), last=False)
            buf[:held - cut] = buf[cut:held]  # numpy copies overlapping ranges correctly
            held, start, index = held - cut, start + cut, index + 1
    if held:
        yield Window(index, start / SAMPLE_RATE, buf[:held], last=True)


def choose_cut(audio: np.ndarray, lo: int, hi: int, target: float, vad: VadOptions | None = CUT_VAD) -> int:
    """A sample index in [lo, hi] to end a window at: mid-silence if the VAD finds one, else the quietest frame."""
    if vad is not None:
        cut = _silence_cut(audio, lo, hi, target, vad)
        if cut is not None:
            return cut
    return _quietest_cut(audio, lo, hi)


def _silence_cut(audio: np.ndarray, lo: int, hi: int, target: float, vad: VadOptions) -> int | None:
    """The middle of the longest stretch of [lo, hi] that no speech span covers; ties go to the one nearest target.

    The VAD runs on VAD_PIECE_S pieces overlapping by a second of context, so speech just outside a piece (or the
    region) still marks its edge; the union of the pieces' spans is what counts as speech."""
    ctx, piece = round(VAD_CONTEXT_S * SAMPLE_RATE), round(VAD_PIECE_S * SAMPLE_RATE)
    spans = []
    for p in range(lo, hi, piece):
        a, b = max(0, p - ctx), min(len(audio), p + piece + ctx)
        spans += [(s["start"] + a, s["end"] + a) for s in get_speech_timestamps(audio[a:b], vad, SAMPLE_RATE)]
    spans.sort()
    gaps, edge = [], lo
    for s, e in spans:
        if s > edge:
            gaps.append((edge, min(s, hi)))
        edge = max(edge, e)
        if edge >= hi:
            break
    if edge < hi:
        gaps.append((edge, hi))
    gaps = [(g0, g1) for g0, g1 in gaps if g1 > g0]
    if not gaps:
        return None
    g0, g1 = max(gaps, key=lambda g: (g[1] - g[0], -abs((g[0] + g[1]) / 2 - target)))
    return (g0 + g1) // 2


def _quietest_cut(audio: np.ndarray, lo: int, hi: int) -> int:
    """The centre of the 100 ms frame in [lo, hi] with the lowest RMS: continuous sound still gets cut."""
    frame = round(FRAME_S * SAMPLE_RATE)
    count = (hi - lo) // frame
    if count < 1:
        return hi
    region = audio[lo:lo + count * frame].reshape(count, frame)
    energy = np.einsum("ij,ij->i", region, region)  # sum of squares, ordered as RMS is, with no temporaries
    return lo + int(np.argmin(energy)) * frame + frame // 2
