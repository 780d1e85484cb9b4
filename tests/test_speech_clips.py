"""bench/speech/clips.json is the reference speech of the CPU-settings benchmark (bench/cpu_settings.py) and of
later ones: a broken entry would only show up as a failed or skewed benchmark run, so it is checked here, quickly
and without the model."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

from speech_clips import CLIPS_FILE, load_clips  # noqa: E402

CLIPS = load_clips()


def test_clips_are_well_formed():
    assert CLIPS_FILE.is_file() and 10 <= len(CLIPS) <= 14
    names = [c.name for c in CLIPS]
    assert len(set(names)) == len(names), "clip names must be unique (they name the synthesized files)"
    assert all(re.fullmatch(r"[a-z0-9_-]+", n) for n in names)
    assert len({c.voice for c in CLIPS}) >= 4 and len({c.speed for c in CLIPS}) >= 4


@pytest.mark.parametrize("clip", CLIPS, ids=lambda c: c.name)
def test_clip_text_and_speed(clip):
    words = clip.text.split()
    assert 120 <= clip.speed <= 200
    # 20-45 s of speech at the clip's speed (espeak-ng's -s is roughly words per minute)
    assert 20 <= len(words) / clip.speed * 60 <= 45, f"{clip.name}: {len(words)} words at {clip.speed} wpm"
    assert not re.search(r"\d", clip.text), "numbers are written as words, as they are spoken"


@pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng is not installed")
@pytest.mark.parametrize("voice", sorted({c.voice for c in CLIPS}))
def test_espeak_ng_accepts_the_voice(voice):
    result = subprocess.run(["espeak-ng", "-v", voice, "-q", "x"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, f"espeak-ng -v {voice}: {result.stderr.strip()}"
