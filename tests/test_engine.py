"""The transcription core in windows: audio longer than a window is cut in silences and transcribed window by
window, with times shifted to the whole file, words intact, the language kept, and progress per window."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace

import pytest
from faster_whisper.audio import decode_audio

from bucketrun.events.failures import FailureClass, JobFailure
from bucketrun.images.transcribe import engine, model, settings, subtitles

from conftest import SPEECH_TEXT
from subtitle_rules import wer

pytestmark = pytest.mark.slow
OPTS = SimpleNamespace(language=None, task="transcribe", word_timestamps=True)


@pytest.fixture(scope="module")
def three_times(media_dir, tmp_path_factory):
    """The test speech three times over with 1.5 s pauses: ~50 s, cut into windows of at most 25 s below."""
    out = tmp_path_factory.mktemp("engine") / "three.ogg"
    pause = out.with_name("pause.wav")
    subprocess.run(["sox", "-n", "-r", "22050", "-c", "1", str(pause), "trim", "0", "1.5"], check=True)
    speech = str(media_dir / "speech.wav")
    joined = out.with_name("three.wav")
    subprocess.run(["sox", speech, str(pause), speech, str(pause), speech, str(joined)], check=True)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(joined), "-c:a", "libopus", str(out)], check=True)
    return out


def test_windows_transcribe_like_one_file(three_times):
    choice = model.choose(None)
    whisper = model.load(choice)
    windows, segments_seen = [], []
    small = settings.Decoding(beam_size=1, batch_size=None, window_target_s=18.0, window_max_s=25.0)
    run = engine.transcribe_file(three_times, whisper, choice, small, OPTS, vad=True,
                                 on_window=windows.append, on_segment=segments_seen.append)
    whole = settings.Decoding(beam_size=1, batch_size=None, window_target_s=600.0, window_max_s=900.0)
    one = engine.transcribe_file(three_times, whisper, choice, whole, OPTS, vad=True)
    assert run.windows >= 2 and one.windows == 1
    assert windows == sorted(windows) and len(windows) == run.windows  # progress after every window
    assert windows[-1] == pytest.approx(run.duration) and run.duration == pytest.approx(one.duration)
    assert run.language == "en" == one.language
    words = [w for s in run.segments for w in s.words]
    assert all(a.start <= b.start for a, b in zip(words, words[1:]))  # shifted to the file, in order
    assert all(0 <= w.start <= w.end <= run.duration + 0.5 for w in words)
    reference = " ".join([SPEECH_TEXT] * 3)
    windowed_wer = wer(reference, subtitles.to_txt(run.segments))
    assert windowed_wer <= wer(reference, subtitles.to_txt(one.segments)) + 0.02 and windowed_wer < 0.15
    # Cues still follow the subtitle rules when built from windowed segments.
    cues = subtitles.build_cues(run.segments)
    assert all(c.end - c.start <= subtitles.MAX_DURATION + 1e-6 for c in cues)
    assert all(a.end <= b.start for a, b in zip(cues, cues[1:]))


def test_batched_windows_give_the_whole_files_transcript(three_times):
    """The default path: windows of whole VAD chunks give the pipeline's whole-file transcript word for word, with
    times within its 10 ms rounding (twice: in the window's and in the file's compacted time)."""
    choice = model.choose(None)
    whisper = model.load(choice)
    one_chunk = settings.Decoding(beam_size=1, batch_size=1, window_target_s=30.0, window_max_s=30.0)
    windows = []
    run = engine.transcribe_file(three_times, whisper, choice, one_chunk, OPTS, vad=True, on_window=windows.append)
    generator, info = engine.run_model(whisper, one_chunk, decode_audio(str(three_times)), OPTS, True, None)
    whole = list(generator)
    assert run.windows >= 2 and len(windows) == run.windows and windows[-1] == run.duration
    assert run.language == info.language == "en"
    assert [s.text for s in run.segments] == [s.text for s in whole] and len(whole) >= 2
    ours = [w for s in run.segments for w in s.words]
    theirs = [w for s in whole for w in s.words]
    assert [w.text for w in ours] == [w.word for w in theirs]
    assert all(abs(a.start - b.start) <= 0.021 and abs(a.end - b.end) <= 0.021 for a, b in zip(ours, theirs))
    assert wer(" ".join([SPEECH_TEXT] * 3), subtitles.to_txt(run.segments)) < 0.15


def test_a_stop_between_segments_is_raised_as_is(three_times):
    class Stop(Exception):
        pass

    def check():
        raise Stop()

    choice = model.choose(None)
    with pytest.raises(Stop):
        engine.transcribe_file(three_times, model.load(choice), choice, settings.Decoding(1, None), OPTS, True,
                               check=check)


def test_media_that_does_not_decode_is_bad_input(media_dir):
    choice = model.choose(None)
    with pytest.raises(JobFailure) as err:
        engine.transcribe_file(media_dir / "notes.mp3", model.load(choice), choice, settings.Decoding(1, None),
                               OPTS, True)
    assert err.value.cls is FailureClass.BAD_INPUT and err.value.where == "source"
