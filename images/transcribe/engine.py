"""The transcription core shared by the `transcribe` kind, the fleet's `transcribe` processor and the benchmarks:
a local media file in, segments and their four renderings out, decoded one silence-cut window at a time."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

from faster_whisper.transcribe import restore_speech_timestamps

from bucketrun.events import codec
from bucketrun.events.failures import FailureClass, JobFailure

from . import model, settings, speech, stream, subtitles
from .media import SAMPLE_RATE

log = logging.getLogger("bucketrun.worker")

FORMATS = ("srt", "vtt", "json", "txt")
CONTENT_TYPES = {"srt": "application/x-subrip", "vtt": "text/vtt", "json": "application/json",
                 "txt": "text/plain; charset=utf-8"}


@dataclass
class Run:
    segments: list[subtitles.Segment]
    language: str | None
    language_probability: float
    duration: float
    windows: int
    seconds: float  # wall time in decode + model, the figure the real-time factor is made of
    choice: model.ModelChoice

    @property
    def rtf(self) -> float | None:
        return round(self.seconds / self.duration, 4) if self.duration else None

    def result(self, options: dict[str, Any]) -> dict[str, Any]:
        """The JSON rendering's body; `options` are the resolved output options (what produced it)."""
        return {"language": self.language, "language_probability": self.language_probability,
                "duration": round(self.duration, 3), "model": self.choice.name, "device": self.choice.device,
                "compute_type": self.choice.compute_type, "transcribe_seconds": round(self.seconds, 3),
                "rtf": self.rtf, "options": options, "windows": self.windows,
                "segments": [segment_json(i, s) for i, s in enumerate(self.segments)]}

    def summary(self) -> dict[str, Any]:
        return {"language": self.language, "duration": round(self.duration, 3), "segments": len(self.segments),
                "words": sum(len(s.text.split()) for s in self.segments), "rtf": self.rtf,
                "model": self.choice.name, "device": self.choice.device, "windows": self.windows}


def run_model(whisper, decoding: settings.Decoding, audio, opts: Any, vad: bool, language: str | None):
    kwargs = dict(language=language, task=opts.task, beam_size=decoding.beam_size, vad_filter=vad,
                  word_timestamps=opts.word_timestamps, condition_on_previous_text=False)
    if decoding.batch_size:
        return model.batched(whisper).transcribe(audio, batch_size=decoding.batch_size, **kwargs)
    return whisper.transcribe(audio, **kwargs)


def run_speech(whisper, decoding: settings.Decoding, window: speech.SpeechWindow, opts: Any, language: str | None):
    """One window of speech chunks through the batched pipeline, given the chunks it would have cut itself, and
    timestamps mapped back to the media, as the pipeline maps a whole file's."""
    # clip_timestamps are seconds the pipeline turns back into samples with int(): a quarter sample over keeps
    # int() on the intended sample despite float error.
    clips = [{"start": (a + 0.25) / SAMPLE_RATE, "end": (b + 0.25) / SAMPLE_RATE} for a, b in window.clips]
    generator, info = model.batched(whisper).transcribe(
        window.audio, batch_size=decoding.batch_size, clip_timestamps=clips, vad_filter=False, language=language,
        task=opts.task, beam_size=decoding.beam_size, word_timestamps=opts.word_timestamps,
        condition_on_previous_text=False)
    spans = [{"start": a, "end": b} for a, b in window.spans]
    return restore_speech_timestamps(generator, spans, SAMPLE_RATE), info


def chunks_per_window(decoding: settings.Decoding) -> int:
    """Whole batches of 30 s chunks, about window_target_s of speech: the batches are then the whole file's."""
    batch = decoding.batch_size or 1
    return batch * max(1, round(decoding.window_target_s / (speech.CHUNK_S * batch)))


def _nothing(*_: Any) -> None:
    return None


def transcribe_file(path, whisper, choice: model.ModelChoice, decoding: settings.Decoding, opts: Any, vad: bool,
                    stages: Any = None, check: Callable[[], None] = _nothing,
                    on_segment: Callable[[float], None] = _nothing,
                    on_window: Callable[[float], None] = _nothing) -> Run:
    """Decode and transcribe one window at a time, so peak memory is one window's whatever the duration.

    Batched (the default with VAD): windows are whole chunks of the pipeline's own VAD chunking (speech.py), so
    the transcript is the whole file's. Sequential: windows are cut in silences (stream.py) and times shifted by
    each window's offset. The language is detected on the first window and kept, as a whole-file run detects it
    once. `check` raises to stop between segments."""
    def stage(name: str):
        return stages(name) if stages is not None else nullcontext()

    chunks = stream.decode_stream(path)
    by_speech = bool(vad and decoding.batch_size)
    if by_speech:
        source: Any = speech.Stream(chunks, chunks_per_window(decoding))
    else:
        source = stream.windows(chunks, target_s=decoding.window_target_s, max_s=decoding.window_max_s,
                                search_s=min(settings.WINDOW_SEARCH_S, decoding.window_target_s / 2))
    windows = iter(source)
    segments: list[subtitles.Segment] = []
    language, probability, n, end_s = opts.language, None, 0, 0.0
    t0 = time.monotonic()
    try:
        while True:
            with stage("decode"):
                try:
                    window = next(windows, None)
                except (ValueError, OSError) as exc:  # PyAV mid-stream (a format change, a truncated file)
                    raise JobFailure(FailureClass.BAD_INPUT, f"the audio could not be decoded past "
                                     f"{end_s:.1f} s ({exc})", where="source") from exc
            if window is None:
                break
            check()
            with stage("transcribe"):
                if by_speech:
                    offset = 0.0
                    generator, info = run_speech(whisper, decoding, window, opts, language)
                else:
                    offset = window.offset_s
                    generator, info = run_model(whisper, decoding, window.audio, opts, vad, language)
                for seg in generator:
                    check()
                    words = tuple(subtitles.Word(offset + float(w.start), offset + float(w.end), w.word,
                                                 float(w.probability)) for w in (seg.words or []))
                    segments.append(subtitles.Segment(offset + float(seg.start), offset + float(seg.end), seg.text,
                                                      words, float(seg.avg_logprob), float(seg.no_speech_prob)))
                    on_segment(offset + float(seg.end))
            if probability is None:
                language, probability = language or info.language, float(info.language_probability)
            n, end_s = n + 1, window.end_s
            on_window(end_s)
            if not window.last:
                log.info("window %d done: %.1f s of audio transcribed", n, end_s)
    except JobFailure:
        raise
    except (RuntimeError, ValueError, MemoryError) as exc:  # ctranslate2 raises RuntimeError and friends
        raise JobFailure(FailureClass.MODEL_ERROR, f"the model failed while transcribing: {exc}",
                         where="transcribe") from exc
    duration = source.decoded_s if by_speech else end_s
    return Run(segments, language, round(probability or 0.0, 4), duration, n, time.monotonic() - t0, choice)


def segment_json(i: int, s: subtitles.Segment) -> dict[str, Any]:
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


def render_all(segments: list[subtitles.Segment], result: dict[str, Any]) -> dict[str, tuple[bytes, str]]:
    """All four renderings, whatever a job asked for: the cache keeps every one."""
    return {fmt: (render(fmt, segments, result), CONTENT_TYPES[fmt]) for fmt in FORMATS}
