"""The speech in a media stream, cut into chunks exactly where faster-whisper's batched pipeline cuts the whole file.

BatchedInferencePipeline finds speech with Silero VAD over the whole file, packs the spans greedily into chunks of
at most 30 s and transcribes each chunk on its own. Both steps only look back, so they can run on a stream: here the
VAD runs frame by frame as audio is decoded (its probabilities are bit-identical to a whole-file run: measured, and
asserted in tests/test_speech.py), and windows are whole chunks, a multiple of the batch size. Transcribing window
by window then gives the whole-file transcript while holding only one window of speech.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Iterator

import numpy as np
from faster_whisper.vad import VadOptions, get_vad_model

from .media import SAMPLE_RATE

FRAME = 512  # Silero's frame at 16 kHz
CONTEXT = 64  # samples of the previous frame the model sees before each frame
CHUNK_S = 30  # BatchedInferencePipeline's chunk_length (the feature extractor's)
# The pipeline's own VAD settings when a job gives none (faster_whisper/transcribe.py, BatchedInferencePipeline).
PIPELINE_VAD = VadOptions(max_speech_duration_s=CHUNK_S, min_silence_duration_ms=160)


class SpeechProbs:
    """Silero speech probabilities for a stream, as SileroVADModel gives them for the whole (padded) file: the
    LSTM state and the 64-sample context carry from frame to frame, so the split into calls does not matter."""

    def __init__(self) -> None:
        self._session = get_vad_model().session
        self._h = np.zeros((1, 1, 128), dtype=np.float32)
        self._c = np.zeros((1, 1, 128), dtype=np.float32)
        self._context = np.zeros(CONTEXT, dtype=np.float32)
        self._rest = np.empty(0, dtype=np.float32)

    def feed(self, audio: np.ndarray) -> np.ndarray:
        """Probabilities for every whole frame now available; a partial frame waits for more audio."""
        audio = np.concatenate([self._rest, audio]) if len(self._rest) else audio
        whole = len(audio) - len(audio) % FRAME
        self._rest = audio[whole:].copy()
        return self._run(audio[:whole])

    def finish(self) -> np.ndarray:
        """The last frame, zero-padded; a full frame of zeros when the audio ended on a frame boundary, as
        get_speech_timestamps pads (`FRAME - n % FRAME` samples)."""
        last = np.zeros(FRAME, dtype=np.float32)
        last[:len(self._rest)] = self._rest
        self._rest = np.empty(0, dtype=np.float32)
        return self._run(last)

    def _run(self, audio: np.ndarray) -> np.ndarray:
        if not len(audio):
            return np.empty(0, dtype=np.float32)
        frames = audio.reshape(-1, FRAME)
        context = np.concatenate([self._context[None], frames[:-1, -CONTEXT:]])
        self._context = frames[-1, -CONTEXT:].copy()
        out, self._h, self._c = self._session.run(
            None, {"input": np.concatenate([context, frames], axis=1), "h": self._h, "c": self._c})
        return np.asarray(out, dtype=np.float32).reshape(-1)


class SpeechSpans:
    """faster_whisper.vad.get_speech_timestamps (1.2.1, MIT) as a stream: the same state machine fed a frame at a
    time, and the same padding applied to each span once the next one (or the end) is known. Spans come out in
    absolute samples, final, in order."""

    def __init__(self, opts: VadOptions = PIPELINE_VAD) -> None:
        sr = SAMPLE_RATE
        self.threshold = opts.threshold
        self.neg_threshold = opts.neg_threshold if opts.neg_threshold is not None else max(opts.threshold - 0.15,
                                                                                            0.01)
        self.min_speech = sr * opts.min_speech_duration_ms / 1000
        self.pad = sr * opts.speech_pad_ms / 1000
        self.max_speech = sr * opts.max_speech_duration_s - FRAME - 2 * self.pad
        self.min_silence = sr * opts.min_silence_duration_ms / 1000
        self.min_silence_at_max_speech = sr * 98 / 1000
        self.frame = 0
        self.triggered = False
        self.current: dict[str, int] = {}
        self.temp_end = self.prev_end = self.next_start = 0
        self.pending: dict[str, int] | None = None  # the newest span: its end waits for the next span's start
        self.first = True
        self.done: list[tuple[int, int]] = []

    def feed(self, probs: Iterable[float]) -> list[tuple[int, int]]:
        for p in probs:
            self._step(float(p))
        done, self.done = self.done, []
        return done

    def finish(self, n_samples: int) -> list[tuple[int, int]]:
        if self.current and n_samples - self.current["start"] > self.min_speech:
            self.current["end"] = n_samples
            self._append(self.current)
        self.current = {}
        if self.pending is not None:
            span, self.pending = self.pending, None
            self._pad_first(span)
            span["end"] = int(min(n_samples, span["end"] + self.pad))
            self.done.append((span["start"], span["end"]))
        done, self.done = self.done, []
        return done

    def earliest_needed(self) -> int:
        """The first sample a span not yet out may still cover: audio before it can be dropped."""
        starts = [self.frame * FRAME]
        if self.pending is not None:
            starts.append(self.pending["start"])
        if "start" in self.current:
            starts.append(self.current["start"])
        return max(0, int(min(starts) - self.pad) - FRAME)

    def _step(self, p: float) -> None:
        w, i = FRAME, self.frame
        self.frame += 1
        if p >= self.threshold and self.temp_end:
            self.temp_end = 0
            if self.next_start < self.prev_end:
                self.next_start = w * i
        if p >= self.threshold and not self.triggered:
            self.triggered = True
            self.current["start"] = w * i
            return
        if self.triggered and w * i - self.current["start"] > self.max_speech:
            if self.prev_end:
                self.current["end"] = self.prev_end
                self._append(self.current)
                self.current = {}
                if self.next_start < self.prev_end:  # reached silence before, and still not speech
                    self.triggered = False
                else:
                    self.current["start"] = self.next_start
                self.prev_end = self.next_start = self.temp_end = 0
            else:
                self.current["end"] = w * i
                self._append(self.current)
                self.current = {}
                self.prev_end = self.next_start = self.temp_end = 0
                self.triggered = False
                return
        if p < self.neg_threshold and self.triggered:
            if not self.temp_end:
                self.temp_end = w * i
            if w * i - self.temp_end > self.min_silence_at_max_speech:
                self.prev_end = self.temp_end
            if w * i - self.temp_end < self.min_silence:
                return
            self.current["end"] = self.temp_end
            if self.current["end"] - self.current["start"] > self.min_speech:
                self._append(self.current)
            self.current = {}
            self.prev_end = self.next_start = self.temp_end = 0
            self.triggered = False

    def _pad_first(self, span: dict[str, int]) -> None:
        if self.first:
            span["start"] = int(max(0, span["start"] - self.pad))
            self.first = False

    def _append(self, span: dict[str, int]) -> None:
        """The padding pass of get_speech_timestamps, run for the previous span now that its successor is known."""
        prev, self.pending = self.pending, span
        if prev is None:
            return
        self._pad_first(prev)
        silence = span["start"] - prev["end"]
        if silence < 2 * self.pad:
            prev["end"] += int(silence // 2)
            span["start"] = int(max(0, span["start"] - silence // 2))
        else:
            prev["end"] = int(prev["end"] + self.pad)  # min(n, ...) is a no-op: the next span starts later
            span["start"] = int(max(0, span["start"] - self.pad))
        self.done.append((prev["start"], prev["end"]))


@dataclass
class SpeechWindow:
    """Whole chunks of speech to transcribe together. `audio` is their spans joined (silence dropped, as the
    pipeline drops it); `clips` are the chunks as (start, end) in `audio`; `spans` place it in the media."""

    index: int
    spans: list[tuple[int, int]] = field(default_factory=list)
    clips: list[tuple[int, int]] = field(default_factory=list)
    pieces: list[np.ndarray] = field(default_factory=list)
    audio: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float32))
    end_s: float = 0.0  # how far into the media it reaches: its last chunk's end, the media's end for the last
    last: bool = False

    @property
    def speech_s(self) -> float:
        return sum(b - a for a, b in self.clips) / SAMPLE_RATE


class Stream:
    """Decoded chunks in, SpeechWindows of `chunks_per_window` chunks out; `decoded_s` is the media's duration
    once the input is exhausted. Holds one window of speech plus the audio of the spans still open."""

    def __init__(self, chunks: Iterable[np.ndarray], chunks_per_window: int) -> None:
        self._chunks = chunks
        self.per_window = max(1, chunks_per_window)
        self.decoded_s = 0.0

    def __iter__(self) -> Iterator[SpeechWindow]:
        probs, spans = SpeechProbs(), SpeechSpans()
        buf, base, n = np.empty(0, dtype=np.float32), 0, 0  # buf holds samples [base, n)
        window, chunk_len = SpeechWindow(0), 0
        sealed: list[SpeechWindow] = []  # the newest is held back until it is known whether it is the last
        limit = CHUNK_S * SAMPLE_RATE

        def close_chunk():
            nonlocal chunk_len
            start = sum(len(p) for p in window.pieces) - chunk_len
            window.clips.append((start, start + chunk_len))
            window.end_s = window.spans[-1][1] / SAMPLE_RATE
            chunk_len = 0

        def take(done):
            """collect_chunks's greedy packing, a span at a time; a window is sealed when it has its chunks."""
            nonlocal window, chunk_len
            for a, b in done:
                if chunk_len and chunk_len + (b - a) > limit:
                    close_chunk()
                    if len(window.clips) >= self.per_window:
                        sealed.append(self._seal(window))
                        window = SpeechWindow(window.index + 1)
                chunk_len += b - a
                window.spans.append((a, b))
                window.pieces.append(buf[a - base:b - base].copy())

        for piece in self._chunks:
            piece = np.asarray(piece, dtype=np.float32).reshape(-1)
            buf = np.concatenate([buf, piece])
            n += len(piece)
            take(spans.feed(probs.feed(piece)))
            while len(sealed) > 1:
                yield sealed.pop(0)
            keep = min(spans.earliest_needed(), n)
            if keep > base:
                buf, base = buf[keep - base:].copy(), keep
        self.decoded_s = n / SAMPLE_RATE
        take(spans.feed(probs.finish()) + spans.finish(n))
        if chunk_len:
            close_chunk()
            sealed.append(self._seal(window))
        if sealed:
            sealed[-1].last, sealed[-1].end_s = True, self.decoded_s
        yield from sealed

    @staticmethod
    def _seal(window: SpeechWindow) -> SpeechWindow:
        window.audio = np.concatenate(window.pieces) if window.pieces else window.audio
        window.pieces = []
        return window
