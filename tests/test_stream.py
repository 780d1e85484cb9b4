"""Streaming decode and silence-cut windows (images/transcribe/stream.py): cuts fall in pauses, never in words,
the windows tile the media exactly (memory: tests/test_speech.py, the default path).

No Whisper model is needed: the cuts use Silero VAD, which faster-whisper runs on CPU through onnxruntime."""

from __future__ import annotations

import shutil
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
from faster_whisper.audio import decode_audio
from faster_whisper.vad import VadOptions, get_speech_timestamps

from bucketrun.events.failures import FailureClass, JobFailure
from bucketrun.images.transcribe import stream

SR = stream.SAMPLE_RATE
FF = ["ffmpeg", "-loglevel", "error", "-y"]
SENTENCES = [
    "Object storage is a durable place to keep a queue of work.",
    "A manifest dropped into a bucket becomes a job, and every change of state is written back.",
    "The worker downloads the media, transcribes the speech, and uploads the subtitles.",
    "Long recordings are cut into windows, at the pauses between sentences.",
    "Each window is transcribed alone, and its timestamps are moved by its offset.",
    "Nothing here needs a graphics card, two processor cores are enough.",
    "If the audio never pauses, the quietest tenth of a second is chosen instead.",
]


def write_wav(path: Path, audio: np.ndarray) -> Path:
    """16 kHz mono int16, so decoding gives back exactly these samples (sample positions stay known)."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(np.round(audio * 32768).clip(-32768, 32767).astype("<i2").tobytes())
    return path


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """About five minutes of espeak-ng sentences with 0.7-1.5 s of digital silence between them, built with numpy;
    returns (dir, wav path, the inserted gaps as (start, end) samples)."""
    for tool in ("espeak-ng", "ffmpeg", "sox"):
        assert shutil.which(tool), f"{tool} is required; ./dev.sh test installs it"
    d = tmp_path_factory.mktemp("stream")
    clips = []
    for i, text in enumerate(SENTENCES):
        subprocess.run(["espeak-ng", "-s", "165", "-w", str(d / f"s{i}.wav"), text], check=True)
        clips.append(decode_audio(str(d / f"s{i}.wav")))
    rng = np.random.default_rng(7)
    parts, gaps, pos = [], [], 0
    while pos < 300 * SR:
        for clip in clips:
            parts.append(clip)
            pos += len(clip)
            gap = int(rng.uniform(0.7, 1.5) * SR)
            parts.append(np.zeros(gap, np.float32))
            gaps.append((pos, pos + gap))
            pos += gap
    return d, write_wav(d / "speech.wav", np.concatenate(parts)), gaps


def check_tiling(wins, total: np.ndarray, max_s: float):
    assert [w.index for w in wins] == list(range(len(wins)))
    assert [w.last for w in wins] == [False] * (len(wins) - 1) + [True]
    start = 0
    for w in wins:
        assert w.offset_s == start / SR and 0 < len(w.audio) <= max_s * SR
        assert w.end_s == (start + len(w.audio)) / SR
        start += len(w.audio)
    assert start == len(total)
    assert np.array_equal(np.concatenate([w.audio for w in wins]), total)


@pytest.mark.parametrize("fmt", ["wav", "mp3", "m4a", "ogg"])
def test_chunks_join_to_decode_audio_sample_for_sample(speech, fmt):
    d, wav, _ = speech
    path = wav
    if fmt != "wav":  # re-encoded at other rates and channel counts, so the resampler does real work
        args = {"mp3": ["-ac", "2", "-ar", "44100"], "m4a": ["-ar", "22050"], "ogg": ["-c:a", "libopus"]}
        path = d / f"speech.{fmt}"
        if not path.exists():
            subprocess.run(FF + ["-i", str(wav), "-t", "20"] + args[fmt] + [str(path)], check=True)
    whole = decode_audio(str(path))
    chunks = list(stream.decode_stream(path, chunk_s=7.3))
    assert all(c.dtype == np.float32 and len(c) == round(7.3 * SR) for c in chunks[:-1])
    joined = np.concatenate(chunks)
    assert len(joined) == len(whole) and np.array_equal(joined, whole)
    assert stream.probe(path) == pytest.approx(len(whole) / SR, abs=0.1)


def test_speech_is_cut_in_the_pauses(speech):
    _, wav, gaps = speech
    total = decode_audio(str(wav))
    spans = get_speech_timestamps(total, VadOptions(min_silence_duration_ms=300, speech_pad_ms=200))
    for params in ({}, {"target_s": 20.0, "max_s": 30.0, "search_s": 8.0}):
        wins = list(stream.windows(stream.decode_stream(wav), **params))
        max_s = params.get("max_s", 180.0)
        check_tiling(wins, total, max_s)
        cuts = [round(w.end_s * SR) for w in wins[:-1]]
        assert len(cuts) >= (1 if not params else 9)
        lo, hi = params.get("target_s", 120.0) - params.get("search_s", 30.0), max_s
        for w, cut in zip(wins, cuts):
            assert lo * SR <= len(w.audio) <= hi * SR
            assert any(g0 < cut < g1 for g0, g1 in gaps), f"cut at {cut / SR:.2f} s is not in an inserted pause"
            assert np.sqrt(np.mean(total[cut - 800:cut + 800] ** 2)) < 1e-3  # silent 50 ms either side
            assert not any(s["start"] < cut < s["end"] for s in spans), f"a speech span straddles {cut / SR:.2f} s"


@pytest.mark.parametrize("sound", ["sine 440", "brownnoise"])
def test_audio_without_pauses_is_still_cut(tmp_path, sound):
    path = tmp_path / "continuous.wav"
    subprocess.run(["sox", "-n", "-r", "22050", "-c", "2", str(path), "synth", "200", *sound.split(), "vol", "0.5"],
                   check=True)
    total = decode_audio(str(path))
    for params in ({}, {"target_s": 20.0, "max_s": 30.0, "search_s": 8.0}):
        wins = list(stream.windows(stream.decode_stream(path), **params))
        check_tiling(wins, total, params.get("max_s", 180.0))
        assert len(wins) >= (2 if not params else 7)


def test_quietest_frame_when_the_vad_hears_speech_everywhere(monkeypatch):
    t = np.arange(400 * SR) / SR
    audio = (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    dip = round(131.3 * SR)
    audio[dip:dip + 3200] *= 0.01  # 200 ms much quieter, inside [90, 180] s
    monkeypatch.setattr(stream, "get_speech_timestamps", lambda a, *_: [{"start": 0, "end": len(a)}])
    wins = list(stream.windows(np.array_split(audio, 40)))
    check_tiling(wins, audio, 180.0)
    assert dip <= round(wins[0].end_s * SR) <= dip + 3200


def test_short_audio_is_one_window(speech):
    _, wav, _ = speech
    audio = decode_audio(str(wav))[:170 * SR]
    [w] = stream.windows([audio[:100 * SR], audio[100 * SR:]])
    assert (w.index, w.offset_s, w.last) == (0, 0.0, True) and np.array_equal(w.audio, audio)
    assert list(stream.windows(iter([]))) == []


def test_bad_media_is_bad_input(tmp_path, media_dir):
    empty = tmp_path / "empty.wav"
    subprocess.run(FF + ["-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "0", str(empty)], check=True)
    cases = {media_dir / "video-only.mp4": "the media has no audio track",
             media_dir / "notes.mp3": "the source is not a media file ffmpeg can read"}
    for path, message in cases.items():
        for call in (stream.probe, lambda p: next(stream.decode_stream(p))):
            with pytest.raises(JobFailure) as err:
                call(path)
            assert (err.value.cls, err.value.where) == (FailureClass.BAD_INPUT, "source")
            assert err.value.message.startswith(message)
    with pytest.raises(JobFailure) as err:
        list(stream.decode_stream(empty))
    assert (err.value.cls, err.value.message, err.value.where) == (
        FailureClass.BAD_INPUT, "the audio track is empty", "source")
