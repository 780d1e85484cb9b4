"""The transcription core in windows: audio longer than a window is cut in silences and transcribed window by
window, with times shifted to the whole file, words intact, the language kept, and progress per window."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace

import pytest

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
