"""Decode any media file to 16 kHz mono samples, classifying what is wrong when it cannot be done."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bucketrun.events.failures import FailureClass, JobFailure

SAMPLE_RATE = 16000


def decode(path: Path) -> np.ndarray:
    import av  # late: PyAV and faster-whisper (heavy) only when media is decoded
    from faster_whisper.audio import decode_audio

    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise JobFailure(FailureClass.BAD_INPUT, "the media has no audio track", where="source")
    except JobFailure:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise JobFailure(FailureClass.BAD_INPUT, f"the source is not a media file ffmpeg can read ({exc})",
                         where="source") from exc
    try:
        audio = decode_audio(str(path), sampling_rate=SAMPLE_RATE)
    except av.error.FFmpegError as exc:
        raise JobFailure(FailureClass.BAD_INPUT, f"the audio track could not be decoded ({exc})",
                         where="source") from exc
    if audio.size == 0:
        raise JobFailure(FailureClass.BAD_INPUT, "the audio track is empty", where="source")
    return audio
