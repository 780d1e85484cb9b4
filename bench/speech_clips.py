"""Reference speech for the benchmarks: clips kept in the repo as texts (bench/speech/clips.json), turned into
audio with espeak-ng on the machine that runs the benchmark, so the repo holds no audio and every run hears the
same words in several voices and speeds."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

CLIPS_FILE = Path(__file__).resolve().parent / "speech" / "clips.json"


@dataclass(frozen=True)
class Clip:
    name: str
    voice: str  # an espeak-ng voice, optionally with a variant ("en+f3")
    speed: int  # espeak-ng -s, words per minute
    text: str


@dataclass(frozen=True)
class Audio:
    clip: Clip
    path: Path
    duration: float  # seconds, from soxi -D


def load_clips(path: Path = CLIPS_FILE) -> list[Clip]:
    return [Clip(c["name"], c["voice"], int(c["speed"]), c["text"]) for c in json.loads(path.read_text())]


def synthesize(clip: Clip, folder: Path) -> Path:
    """One clip as a WAV file in `folder` (espeak-ng writes 22.05 kHz mono; Whisper resamples it)."""
    out = Path(folder) / f"{clip.name}.wav"
    subprocess.run(["espeak-ng", "-v", clip.voice, "-s", str(clip.speed), "-w", str(out), clip.text],
                   check=True, capture_output=True)
    return out


def duration(path: Path) -> float:
    return float(subprocess.run(["soxi", "-D", str(path)], capture_output=True, text=True, check=True).stdout)


def synthesize_all(folder: Path, limit: int | None = None) -> list[Audio]:
    """The first `limit` clips (all by default) synthesized into `folder`, each with its duration."""
    clips = load_clips()[:limit]
    audio = []
    for clip in clips:
        path = synthesize(clip, folder)
        audio.append(Audio(clip, path, duration(path)))
    return audio
