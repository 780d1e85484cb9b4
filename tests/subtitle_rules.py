"""An independent reader for SRT and VTT that asserts the rules players and readers need."""

from __future__ import annotations

import re

SRT_TIME = re.compile(r"^(\d{2}):(\d{2}):(\d{2}),(\d{3}) --> (\d{2}):(\d{2}):(\d{2}),(\d{3})$")
VTT_TIME = re.compile(r"^(\d{2}):(\d{2}):(\d{2})\.(\d{3}) --> (\d{2}):(\d{2}):(\d{2})\.(\d{3})$")


def _secs(g: tuple[str, ...]) -> tuple[float, float]:
    h1, m1, s1, ms1, h2, m2, s2, ms2 = map(int, g)
    return h1 * 3600 + m1 * 60 + s1 + ms1 / 1000, h2 * 3600 + m2 * 60 + s2 + ms2 / 1000


def _check_cues(cues: list[tuple[float, float, list[str]]]) -> None:
    prev_end = 0.0
    for start, end, lines in cues:
        assert end > start, (start, end)
        assert end - start <= 7.0 + 1e-6, f"cue {start}-{end} is longer than 7 s"
        assert start >= prev_end - 1e-6, f"cue at {start} overlaps the previous one ending {prev_end}"
        assert 1 <= len(lines) <= 2, lines
        assert all(0 < len(line) <= 42 for line in lines), lines
        prev_end = end


def parse_srt(text: str) -> list[tuple[float, float, list[str]]]:
    blocks = [b for b in text.strip().split("\n\n") if b.strip()]
    cues = []
    for n, block in enumerate(blocks, 1):
        lines = block.split("\n")
        assert lines[0] == str(n), f"cue {n} is numbered {lines[0]!r}"
        m = SRT_TIME.match(lines[1])
        assert m, f"bad SRT time line {lines[1]!r}"
        cues.append((*_secs(m.groups()), lines[2:]))
    _check_cues(cues)
    return cues


def parse_vtt(text: str) -> list[tuple[float, float, list[str]]]:
    assert text.startswith("WEBVTT\n"), text[:20]
    cues = []
    for block in text.split("\n\n")[1:]:
        if not block.strip():
            continue
        lines = block.strip().split("\n")
        m = VTT_TIME.match(lines[0])
        assert m, f"bad VTT time line {lines[0]!r}"
        for line in lines[1:]:
            assert "<" not in line and not re.search(r"&(?!amp;|lt;|gt;)", line), line
        cues.append((*_secs(m.groups()), lines[1:]))
    _check_cues(cues)
    return cues


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]+", " ", text.lower()).split()


def word_errors(reference: str, hypothesis: str) -> int:
    """Word edits (substitutions, deletions, insertions) from reference to hypothesis: WER's numerator, so a
    bound can be stated in words."""
    ref, hyp = words(reference), words(hypothesis)
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
    return d[len(hyp)]


def wer(reference: str, hypothesis: str) -> float:
    return word_errors(reference, hypothesis) / max(len(words(reference)), 1)
