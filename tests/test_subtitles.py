"""Cue building on constructed segments, checked by the independent reader in subtitle_rules."""

from __future__ import annotations

from bucketrun.images.transcribe.subtitles import Segment, Word, build_cues, to_srt, to_txt, to_vtt, wrap

from subtitle_rules import parse_srt, parse_vtt, wer


def _words(text: str, start: float, step: float) -> tuple[Word, ...]:
    return tuple(Word(start + i * step, start + (i + 1) * step - 0.05, w) for i, w in enumerate(text.split()))


LONG = ("this is a deliberately long segment that goes on and on well past any reasonable subtitle length "
        "so that it must be split into several cues on its word timestamps")


def test_long_segment_is_split_on_words_within_limits():
    seg = Segment(0.0, 30.0, LONG, _words(LONG, 0.0, 30.0 / len(LONG.split())))
    cues = parse_srt(to_srt(build_cues([seg])))
    assert len(cues) >= 5
    assert wer(LONG, " ".join(" ".join(c[2]) for c in cues)) == 0.0
    parse_vtt(to_vtt(build_cues([seg])))


def test_segment_without_words_is_split_by_text_and_time():
    seg = Segment(10.0, 40.0, LONG)
    cues = parse_srt(to_srt(build_cues([seg])))
    assert cues[0][0] == 10.0 and cues[-1][1] <= 40.0
    assert wer(LONG, " ".join(" ".join(c[2]) for c in cues)) == 0.0


def test_overlapping_and_unsorted_segments_become_ordered_cues():
    segs = [Segment(5.0, 9.0, "second part"), Segment(0.0, 6.0, "first part overlaps"),
            Segment(8.5, 8.5, "zero length")]
    cues = parse_srt(to_srt(build_cues(segs)))
    assert [" ".join(c[2]) for c in cues] == ["first part overlaps", "second part", "zero length"]


def test_vtt_escapes_markup_and_srt_numbers_from_one():
    cues = build_cues([Segment(0.0, 2.0, "Tom & Jerry <3 a>b")])
    vtt = to_vtt(cues)
    assert "Tom &amp; Jerry &lt;3 a&gt;b" in vtt
    parse_vtt(vtt)
    assert to_srt(cues).startswith("1\n00:00:00,000 --> 00:00:02,000\nTom & Jerry <3 a>b")


def test_wrap_balances_two_lines_and_refuses_what_cannot_fit():
    lines = wrap("the quick brown fox jumps over the lazy dog and keeps running")
    assert len(lines) == 2 and all(len(l) <= 42 for l in lines)
    assert abs(len(lines[0]) - len(lines[1])) < 12
    assert wrap("word " * 30) is None


def test_very_long_token_is_hard_split():
    url = "https://example.com/" + "a" * 100
    cues = parse_srt(to_srt(build_cues([Segment(0.0, 3.0, url, (Word(0.0, 3.0, url),))])))
    assert "".join("".join(c[2]) for c in cues) == url


def test_empty_input_gives_empty_but_valid_files():
    assert to_srt(build_cues([])) == ""
    assert to_vtt(build_cues([])) == "WEBVTT\n\n"
    assert to_txt([]) == ""
