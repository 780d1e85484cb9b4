"""Cues a player and a reader accept, from Whisper segments: at most 2 lines of 42 characters, at most 7 s,
sorted and never overlapping; long segments are split on their word timestamps."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MAX_CHARS = 42
MAX_LINES = 2
MAX_DURATION = 7.0
MIN_DURATION = 0.05


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    text: str
    probability: float = 1.0


@dataclass(frozen=True)
class Segment:
    start: float
    end: float
    text: str
    words: tuple[Word, ...] = ()
    avg_logprob: float = 0.0
    no_speech_prob: float = 0.0


@dataclass
class Cue:
    start: float
    end: float
    lines: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return " ".join(self.lines)


def wrap(text: str) -> list[str] | None:
    """Split into at most two balanced lines of at most MAX_CHARS, or None if it cannot fit."""
    text = " ".join(text.split())
    if len(text) <= MAX_CHARS:
        return [text] if text else []
    best: tuple[int, int] | None = None
    for i, ch in enumerate(text):
        if ch == " ":
            a, b = len(text[:i]), len(text[i + 1:])
            if a <= MAX_CHARS and b <= MAX_CHARS and (best is None or max(a, b) < best[0]):
                best = (max(a, b), i)
    if best is None:
        return None
    return [text[: best[1]], text[best[1] + 1:]]


def _split_long_token(token: str) -> list[str]:
    return [token[i:i + MAX_CHARS] for i in range(0, len(token), MAX_CHARS)]


def _chunks_by_text(text: str) -> list[str]:
    """Greedy word packing into chunks that each wrap within the line limits."""
    chunks: list[str] = []
    current = ""
    for token in text.split():
        for piece in (_split_long_token(token) if len(token) > MAX_CHARS else [token]):
            candidate = f"{current} {piece}".strip()
            if current and wrap(candidate) is None:
                chunks.append(current)
                current = piece
            else:
                current = candidate
    if current:
        chunks.append(current)
    return chunks


def _cues_from_words(words: list[Word]) -> list[Cue]:
    cues: list[Cue] = []
    group: list[Word] = []

    def flush() -> None:
        if group:
            lines = wrap(" ".join(w.text for w in group)) or _chunks_by_text(" ".join(w.text for w in group))[:2]
            cues.append(Cue(group[0].start, group[-1].end, lines))
            group.clear()

    for word in words:
        if len(word.text) > MAX_CHARS:  # a URL-like token: spread it over its own cues
            flush()
            pieces = _split_long_token(word.text)
            step = max((word.end - word.start) / len(pieces), MIN_DURATION)
            for i, piece in enumerate(pieces):
                cues.append(Cue(word.start + i * step, word.start + (i + 1) * step, [piece]))
            continue
        text = " ".join(w.text for w in group + [word])
        if group and (wrap(text) is None or word.end - group[0].start > MAX_DURATION):
            flush()
        group.append(word)
    flush()
    return cues


def _cues_from_text(seg: Segment) -> list[Cue]:
    chunks = _chunks_by_text(seg.text)
    if not chunks:
        return []
    duration = max(seg.end - seg.start, 0.0)
    n = max(len(chunks), math.ceil(duration / MAX_DURATION))
    if n > len(chunks):  # too long for its text: split time evenly, text by characters
        words = seg.text.split()
        per = math.ceil(len(words) / n)
        chunks = [" ".join(words[i:i + per]) for i in range(0, len(words), per)]
        n = len(chunks)
    total = sum(len(c) for c in chunks) or 1
    cues, t = [], seg.start
    for chunk in chunks:
        span = duration * len(chunk) / total
        cues.append(Cue(t, t + span, wrap(chunk) or _chunks_by_text(chunk)[:2]))
        t += span
    return cues


def build_cues(segments: list[Segment]) -> list[Cue]:
    cues: list[Cue] = []
    for seg in segments:
        words = [Word(w.start, w.end, w.text.strip(), w.probability) for w in seg.words if w.text.strip()]
        cues.extend(_cues_from_words(words) if words else _cues_from_text(seg))
    cues = [c for c in cues if c.text]
    cues.sort(key=lambda c: (c.start, c.end))
    out: list[Cue] = []
    for cue in cues:
        start = max(cue.start, out[-1].end if out else 0.0)
        end = min(max(cue.end, start + MIN_DURATION), start + MAX_DURATION)
        out.append(Cue(round(start, 3), round(end, 3), cue.lines))
    return out


def _stamp(seconds: float, sep: str) -> str:
    ms = int(round(seconds * 1000))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(cues: list[Cue]) -> str:
    blocks = [f"{i}\n{_stamp(c.start, ',')} --> {_stamp(c.end, ',')}\n" + "\n".join(c.lines)
              for i, c in enumerate(cues, 1)]
    return "\n\n".join(blocks) + ("\n" if blocks else "")


def vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def to_vtt(cues: list[Cue]) -> str:
    blocks = [f"{_stamp(c.start, '.')} --> {_stamp(c.end, '.')}\n" + "\n".join(vtt_escape(l) for l in c.lines)
              for c in cues]
    return "WEBVTT\n\n" + "\n\n".join(blocks) + ("\n" if blocks else "")


def to_txt(segments: list[Segment]) -> str:
    lines = [" ".join(s.text.split()) for s in segments if s.text.strip()]
    return "\n".join(lines) + ("\n" if lines else "")
