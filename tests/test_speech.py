"""Speech chunks on a stream (images/transcribe/speech.py): the spans, chunks and VAD probabilities are exactly the
ones faster-whisper's batched pipeline computes over the whole file, however the stream is split, and windows are
whole chunks in whole batches.

No Whisper model is needed: Silero VAD runs on CPU through onnxruntime."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from faster_whisper.audio import decode_audio
from faster_whisper.vad import collect_chunks, get_speech_timestamps, get_vad_model

from bucketrun.images.transcribe import speech, stream

SR = speech.SAMPLE_RATE
FF = ["ffmpeg", "-loglevel", "error", "-y"]
PHRASES = [
    "A manifest in the inbox becomes a job.",
    "The bucket keeps the queue, the status and the outputs.",
    "Every change of state is an object written back, so anyone who can read the bucket sees the history.",
    "Short.",
]
# Over 30 s of it, read by two overlapping voices so it never pauses: one span longer than the pipeline's limit,
# which the VAD must split.
RUN_ON = " ".join(["the worker reads the media and writes the subtitles and the bucket keeps them"] * 7)


@pytest.fixture(scope="module")
def varied(tmp_path_factory):
    """About three minutes of espeak-ng speech with pauses from 0.1 to 2.5 s and a 40 s stretch without one, under
    faint pink noise (so probabilities are never trivially zero), encoded as mp3 as an upload would be."""
    for tool in ("espeak-ng", "ffmpeg", "sox"):
        assert shutil.which(tool), f"{tool} is required; ./dev.sh test installs it"
    d = tmp_path_factory.mktemp("speech")
    rng = np.random.default_rng(11)
    clips = []
    for i, text in enumerate(PHRASES + [RUN_ON]):
        subprocess.run(["espeak-ng", "-s", "175", "-g", "0", "-w", str(d / f"p{i}.wav"), text], check=True)
        clips.append(decode_audio(str(d / f"p{i}.wav")))
    shift = int(0.37 * SR)
    clips[-1] = np.concatenate([clips[-1], np.zeros(shift, np.float32)]) + np.concatenate(
        [np.zeros(shift, np.float32), clips[-1]])
    parts, total = [], 0
    order = [0, 1, 2, 3, 4] + list(rng.integers(0, 4, 30))
    for i in order:
        parts += [clips[i], np.zeros(int(rng.uniform(0.1, 2.5) * SR), np.float32)]
        total += len(parts[-1]) + len(parts[-2])
    audio = np.concatenate(parts)
    audio += np.asarray(rng.normal(0, 0.002, len(audio)), np.float32)
    raw = d / "varied.f32"
    raw.write_bytes(audio.astype("<f4").tobytes())
    out = d / "varied.mp3"
    subprocess.run(FF + ["-f", "f32le", "-ar", str(SR), "-ac", "1", "-i", str(raw), "-b:a", "48k", str(out)],
                   check=True)
    return out


@pytest.mark.parametrize("chunk_s", [7.3, 30.0])
def test_spans_and_chunks_are_the_pipelines(varied, chunk_s):
    audio = decode_audio(str(varied))
    spans = get_speech_timestamps(audio, speech.PIPELINE_VAD)
    chunks, _ = collect_chunks(audio, spans, max_duration=speech.CHUNK_S)
    assert max(s["end"] - s["start"] for s in spans) > 25 * SR  # the run-on stretch took the max-speech branch
    assert len(chunks) >= 5

    source = speech.Stream(stream.decode_stream(varied, chunk_s=chunk_s), chunks_per_window=2)
    windows = list(source)
    assert [(a, b) for w in windows for a, b in w.spans] == [(s["start"], s["end"]) for s in spans]
    ours = [w.audio[a:b] for w in windows for a, b in w.clips]
    assert len(ours) == len(chunks) and all(np.array_equal(x, y) for x, y in zip(ours, chunks))
    assert [len(w.clips) for w in windows[:-1]] == [2] * (len(windows) - 1) and 1 <= len(windows[-1].clips) <= 2
    assert [w.index for w in windows] == list(range(len(windows)))
    assert [w.last for w in windows] == [False] * (len(windows) - 1) + [True]
    assert source.decoded_s == len(audio) / SR == windows[-1].end_s
    ends = [w.end_s for w in windows]
    assert ends == sorted(ends) and all(w.speech_s <= 2 * speech.CHUNK_S for w in windows)
    for w in windows[:-1]:  # a window reaches to its last span's end, where the next window's speech has not begun
        assert w.end_s == w.spans[-1][1] / SR


@pytest.mark.parametrize("tail", [0, 100])
def test_probabilities_are_the_whole_files_bit_for_bit(varied, tail):
    """Split at uneven sizes, with the audio ending on a frame boundary (a whole frame of padding) or not."""
    audio = decode_audio(str(varied))
    audio = audio[:len(audio) - len(audio) % speech.FRAME + tail]
    whole = get_vad_model()(np.pad(audio, (0, speech.FRAME - len(audio) % speech.FRAME)))
    probs, got, pos = speech.SpeechProbs(), [], 0
    for size in [1, 511, 513, 5000, 160_000, 3]:
        got.append(probs.feed(audio[pos:pos + size]))
        pos += size
    got += [probs.feed(audio[pos:]), probs.finish()]
    assert np.array_equal(np.concatenate(got), np.asarray(whole).reshape(-1))


def test_silence_has_no_windows(tmp_path):
    path = tmp_path / "quiet.wav"
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", str(path), "trim", "0", "12"], check=True)
    source = speech.Stream(stream.decode_stream(path), chunks_per_window=4)
    assert list(source) == [] and source.decoded_s == 12.0


def test_one_window_when_the_speech_is_short(varied):
    """Everything in one window: it is the last, and reaches to the end of the media."""
    windows = list(speech.Stream(stream.decode_stream(varied), chunks_per_window=100))
    assert len(windows) == 1 and windows[0].last and windows[0].index == 0
    assert windows[0].end_s == pytest.approx(len(decode_audio(str(varied))) / SR)


# Peak RSS is read as VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the process that forked the
# child (here pytest, which already holds whole decodes), so the child's own ru_maxrss would start at pytest's.
MEMORY_PROBE = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    from bucketrun.images.transcribe import speech, stream
    speech.SpeechProbs().feed(np.zeros(16000, np.float32))  # load the VAD model first
    def peak_mb():
        return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM")) / 1024
    before, t0 = peak_mb(), time.monotonic()
    source = speech.Stream(stream.decode_stream(sys.argv[1]), chunks_per_window=4)
    count, longest = 0, 0.0
    for w in source:
        count, longest = count + 1, max(longest, w.speech_s)
    print(json.dumps({"growth_mb": round(peak_mb() - before, 1), "before_mb": round(before, 1),
                      "seconds": round(time.monotonic() - t0, 2), "audio_s": source.decoded_s, "windows": count,
                      "longest_speech_s": longest}))
""")


def test_peak_memory_does_not_grow_with_duration(varied, tmp_path):
    reports = {}
    for minutes in (10, 40):  # looped by stream copy: 40 minutes of mp3 in under a second
        path = tmp_path / f"{minutes}min.mp3"
        subprocess.run(FF + ["-stream_loop", "-1", "-i", str(varied), "-t", str(minutes * 60), "-c", "copy",
                             str(path)], check=True)
        out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(path)], check=True, capture_output=True,
                             text=True).stdout
        reports[minutes] = report = json.loads(out)
        print(f"speech stream memory probe, {minutes} min:", report)
        assert report["audio_s"] == pytest.approx(minutes * 60, abs=1) and report["longest_speech_s"] <= 120
        assert report["windows"] >= minutes * 60 // 200
    # A whole decode of 40 minutes is a 154 MB float32 array (decode_audio peaks at about twice that making it);
    # the stream holds a window of speech, the spans still open and the VAD's working set, whatever the duration:
    # 60-80 MB over the loaded VAD, the same at 10, 40 and 120 minutes (the figure moves with the machine's
    # libraries, not the audio). Memory that grew with duration would put 40 minutes 115 MB over 10; a third of
    # that is allowed for the allocator's spread run to run.
    assert reports[40]["growth_mb"] < 154, reports
    assert reports[40]["growth_mb"] - reports[10]["growth_mb"] < 115 / 3, reports
