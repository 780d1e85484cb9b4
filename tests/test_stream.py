"""Streaming decode and silence-cut windows (images/transcribe/stream.py): cuts fall in pauses, never in words,
the windows tile the media exactly, and peak memory does not grow with the media's duration.

No Whisper model is needed: the cuts use Silero VAD, which faster-whisper runs on CPU through onnxruntime."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
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


# Peak RSS is read as VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the process that forked the
# child (here pytest, which already holds whole decodes), so the child's own ru_maxrss would start at pytest's.
MEMORY_PROBE = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from faster_whisper.vad import get_speech_timestamps
    from bucketrun.images.transcribe import stream
    get_speech_timestamps(np.zeros(SR := 16000, np.float32), stream.CUT_VAD)  # load the VAD model first
    def peak_mb():
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
    before, t0, total, count, longest = peak_mb(), time.monotonic(), 0, 0, 0
    for w in stream.windows(stream.decode_stream(sys.argv[1])):
        total, count, longest = total + len(w.audio), count + 1, max(longest, len(w.audio))
    print(json.dumps({"growth_mb": round(peak_mb() - before, 1), "before_mb": round(before, 1),
                      "seconds": round(time.monotonic() - t0, 2), "audio_s": total / SR, "windows": count,
                      "longest_s": longest / SR}))
""")


def test_peak_memory_does_not_grow_with_duration(speech):
    d, wav, _ = speech
    unit = d / "unit.mp3"
    subprocess.run(FF + ["-i", str(wav), "-b:a", "24k", str(unit)], check=True)
    reports = {}
    for minutes in (10, 60):  # the speech looped by stream copy: an hour of mp3 in under a second
        path = d / f"{minutes}min.mp3"
        subprocess.run(FF + ["-stream_loop", "-1", "-i", str(unit), "-t", str(minutes * 60), "-c", "copy", str(path)],
                       check=True)
        assert path.stat().st_size < 20e6
        out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path)], check=True, capture_output=True,
                             text=True).stdout
        reports[minutes] = report = json.loads(out)
        print(f"stream memory probe, {minutes} min:", report)
        assert report["audio_s"] == pytest.approx(minutes * 60, abs=1) and report["longest_s"] <= 180
        assert report["windows"] >= minutes * 60 // 180
    # A whole decode of the hour is a 230 MB float32 array (decode_audio peaks over 500 MB making it); the stream
    # holds a few minutes of audio, the VAD's working set and the allocator's slack, whatever the duration: 60-100
    # MB here for both files (the spread is the allocator's, run to run). Memory that grew with duration would put
    # the hour 190 MB over the 10 minutes; a quarter of that is allowed for the spread.
    assert reports[60]["growth_mb"] < 230 / 2, reports
    assert reports[60]["growth_mb"] - reports[10]["growth_mb"] < 190 / 4, reports
