"""A transcribe manifest with many sources runs as a fleet with the `transcribe` processor: real espeak-ng speech
in the bucket and behind a loopback HTTP server (yt-dlp), the offline Whisper base model, real parquet, and both
bucket backends. Intake rejects a bad many-sources manifest naming the field; the items encoding round-trips."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bucketrun.events import codec
from bucketrun.events.kinds.transcription import BadItem, Source, parse_item, source_item
from bucketrun.events.kinds.validate import load_job_manifest, validate_manifest
from bucketrun.events.manifest import ManifestRejected
from bucketrun.events.storage import open_bucket
from bucketrun.images.fleet.run import run_workers
from bucketrun.local_sim import fleet_harness as harness

from conftest import ROOT, SPEECH_TEXT
from subtitle_rules import wer

# Words espeak-ng says plainly: "green umbrella" and "walked along" were heard differently by CPU (CTranslate2 picks
# its kernels per CPU). These two were heard word for word on an AMD EPYC under seven kernel paths (oneDNN and MKL
# GEMM, AVX512/AVX2/AVX, 2 and 8 threads: CT2_USE_MKL, CT2_FORCE_CPU_ISA).
SHORT_TEXTS = {
    "second.wav": "Please bring the red umbrella and the blue coat from the kitchen table before the rain starts.",
    "third.wav": "The library closes early on Sunday, so we will go there on Monday morning instead.",
}
# Each source's WER against its text: measured 0.058 for the conftest speech (3 of 52 words) and 0.00 for the two
# above (17 and 15 words) on every kernel path. 0.25 leaves margins of 10, 4 and 3 words; a row given another
# source's transcript, an empty one or another language's scores over 0.8.
MAX_WER = 0.25


# -- the manifest and the items encoding ------------------------------------------------------------------------

def test_sources_encode_as_plain_items_and_back():
    for source in (Source(key="media/talk one.ogg"), Source(url="https://example.com/a/b.mp3?x=1&y=2"),
                   Source(key="a:b/c.wav")):
        item = source_item(source)
        assert parse_item(item) == source
    assert source_item(Source(key="media/x.ogg")) == "media/x.ogg"  # the dataset's item column reads as the source
    for bad, why in (("media//x.ogg", "key"), ("/abs.ogg", "key"), ("ftp://host/x.mp3", "URL"),
                     ("file:///etc/passwd", "URL"), ("../up.ogg", "key")):
        with pytest.raises(BadItem, match=f"not a transcribe source \\({why}\\)"):
            parse_item(bad)


def test_many_sources_become_a_fleet_manifest():
    m = validate_manifest({"kind": "transcribe", "request_id": "batch-1",
                           "sources": [{"key": "media/a.ogg"}, {"url": "https://example.com/b.mp3"}],
                           "options": {"language": "EN", "formats": ["srt", "txt"]},
                           "fleet": {"workers": {"count": 2}}})
    assert m.kind == "fleet" and m.request_id == "batch-1"
    body = m.body
    assert body.expanded_from == "transcribe" and body.shard_size == 1 and body.workers.count == 2
    assert body.items.inline == ["media/a.ogg", "https://example.com/b.mp3"]
    assert body.processor.name == "transcribe"
    assert body.processor.options["language"] == "en" and body.processor.options["formats"] == ["srt", "txt"]
    assert m.resources.stall_after_s == 600.0  # the fleet kind's liveness defaults, not a single job's
    assert validate_manifest(m.to_json()).to_json() == m.to_json()  # the stored manifest reads back the same
    example = validate_manifest(json.loads((ROOT / "docs" / "examples" / "transcribe-many-runpod.json").read_text()))
    assert example.kind == "fleet" and len(example.body.items.inline) == 3
    single = validate_manifest({"kind": "transcribe", "source": {"key": "media/a.ogg"}})
    assert single.kind == "transcribe" and "sources" not in single.to_json() and "fleet" not in single.to_json()


@pytest.mark.parametrize("body, loc", [
    ({"source": {"key": "a.ogg"}, "sources": [{"key": "b.ogg"}]}, "sources"),
    ({"sources": []}, "sources"),
    ({"sources": [{"key": "a.ogg"}, {"key": "b.ogg"}, {"url": "ftp://host/c.mp3"}]}, "sources[2].url"),
    ({"sources": [{"key": "a.ogg"}, {"key": "a.ogg", "url": "https://example.com/x"}]}, "sources[1]"),
    ({"sources": [{"key": "a.ogg"}] * 10_001}, "sources"),
    ({"source": {"key": "a.ogg"}, "fleet": {"workers": {"count": 2}}}, "fleet"),
    ({"sources": [{"key": "a.ogg"}], "fleet": {"workers": {"count": 0}}}, "fleet.workers.count"),
])
def test_bad_many_sources_manifests_are_rejected_naming_the_field(body, loc):
    with pytest.raises(ManifestRejected) as exc:
        validate_manifest({"kind": "transcribe", **body})
    assert loc in [f["loc"] for f in exc.value.fields], exc.value.fields


def test_a_fleet_manifest_with_inline_items_is_checked_for_its_processor():
    base = {"kind": "fleet", "processor": {"name": "transcribe"}}
    with pytest.raises(ManifestRejected, match=r"items.inline\[1\]: not a transcribe source \(URL\)"):
        validate_manifest({**base, "items": {"inline": ["a.ogg", "ftp://host/x"]}})
    with pytest.raises(ManifestRejected, match="exactly one of 'prefix', 'file' or 'inline'"):
        validate_manifest({**base, "items": {"inline": ["a.ogg"], "file": "x.jsonl"}})
    with pytest.raises(ManifestRejected):
        validate_manifest({**base, "items": {"inline": []}})
    assert validate_manifest({**base, "items": {"prefix": "media/"}}).body.items.prefix == "media/"


def test_a_bad_many_sources_manifest_in_the_inbox_is_rejected_with_its_field(bucket_url):
    from bucketrun.events.lifecycle import read_view
    from bucketrun.handlers.intake import intake

    bucket = open_bucket(bucket_url)
    bucket.put("inbox/many.json", codec.dumps({"kind": "transcribe", "sources": [
        {"key": "a.ogg"}, {"key": "b.ogg"}, {"url": "ftp://host/c.mp3"}]}))
    out = intake(bucket, "inbox/many.json", harness.ManualLauncher(), "test")
    assert out.state == "rejected"
    fields = read_view(bucket, out.job_id).latest.detail["error"]["fields"]
    assert [f["loc"] for f in fields] == ["sources[2].url"]


# -- a fleet of sources, end to end -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def short_clips(media_dir):
    """Two short espeak-ng clips beside the session's media (so the loopback HTTP server serves them too)."""
    for name, text in SHORT_TEXTS.items():
        if not (media_dir / name).exists():
            subprocess.run(["espeak-ng", "-s", "160", "-w", str(media_dir / name), text], check=True)
    return {name: media_dir / name for name in SHORT_TEXTS}


def read_rows(bucket, dataset: dict) -> list[dict]:
    tables = [pq.read_table(io.BytesIO(bucket.get(s["key"]).data)) for s in dataset["shards"]]
    return pa.concat_tables(tables).sort_by("item_index").to_pylist()


@pytest.mark.slow
def test_many_sources_run_as_a_fleet(bucket_url, media_dir, short_clips, http_media, tmp_path):
    """Two keys and two URLs (one the same bytes as a key: served from the result cache), a key that is not
    media and a URL that is not there: one worker, one source per shard; a committed dataset, a row per source in
    order, each good row's files present with their sha256, the transcripts right, the bad sources error rows."""
    bucket = open_bucket(bucket_url)
    bucket.put("media/speech.ogg", (media_dir / "speech.ogg").read_bytes())
    bucket.put("media/third.wav", short_clips["third.wav"].read_bytes())
    bucket.put("media/notes.mp3", (media_dir / "notes.mp3").read_bytes())
    sources = [{"key": "media/speech.ogg"}, {"url": f"{http_media}/second.wav"}, {"key": "media/notes.mp3"},
               {"key": "media/third.wav"}, {"url": f"{http_media}/speech.ogg"},
               {"url": f"{http_media}/missing.mp3"}]
    texts = [SPEECH_TEXT, SHORT_TEXTS["second.wav"], None, SHORT_TEXTS["third.wav"], SPEECH_TEXT, None]
    job = harness.start_job(bucket_url, {
        "kind": "transcribe", "sources": sources,
        "options": {"language": "en", "beam_size": 1, "formats": ["srt", "json", "txt"]},
        "fleet": {"heartbeat_s": 1, "lease_s": 30, "output": {"prefix": "transcripts/batch/"}},
        "resources": {"heartbeat_s": 2, "stall_after_s": 120}})
    stored = load_job_manifest(bucket, job)
    assert stored.kind == "fleet" and stored.body.expanded_from == "transcribe"

    outcomes = asyncio.run(run_workers(bucket_url, job, ["w0"], install_signals=False))
    assert list(outcomes.values()) == ["finished"], outcomes
    result = harness.wait_finished(bucket_url, job, timeout_s=30)
    assert result["state"] == "succeeded", result["detail"]
    dataset = result["dataset"]
    assert harness.verify(bucket_url, dataset)["items"] == len(sources)
    assert dataset["items_failed"] == 2

    rows = read_rows(bucket, dataset)
    assert [r["item_index"] for r in rows] == list(range(len(sources)))
    assert [r["item"] for r in rows] == [s.get("key") or s.get("url") for s in sources]
    for row, text in zip(rows, texts):
        if text is None:
            continue
        assert row["error"] is None, row["error"]
        assert row["source_type"] == ("key" if row["item"].startswith("media/") else "url")
        assert row["language"] == "en" and row["duration_s"] > 2 and row["segments"] >= 1 and row["words"] > 8
        for fmt in ("srt", "json", "txt"):
            key = row[f"{fmt}_key"]
            assert key.startswith("transcripts/batch/items/")
            data = bucket.get(key).data
            assert hashlib.sha256(data).hexdigest() == row[f"{fmt}_sha256"] and len(data) == row[f"{fmt}_bytes"]
        assert row["vtt_key"] is None  # not requested
        transcript = bucket.get(row["txt_key"]).data.decode()
        assert wer(text, transcript) <= MAX_WER, transcript
        assert json.loads(bucket.get(row["json_key"]).data)["language"] == "en"
    # the same bytes as a key and as a URL: one was transcribed, the other served from the cache, byte for byte
    same = [rows[0], rows[4]]
    assert rows[0]["media_sha256"] == rows[4]["media_sha256"]
    assert sorted(r["cached"] for r in same) == [False, True]
    assert rows[0]["txt_sha256"] == rows[4]["txt_sha256"] and rows[0]["txt_key"] != rows[4]["txt_key"]
    assert "not a media file" in rows[2]["error"] and rows[2]["srt_key"] is None
    assert "404" in rows[5]["error"] or "Not Found" in rows[5]["error"], rows[5]["error"]
    # `bucketrun get` checks the dataset, then each row's files, and keeps them by item index
    got = subprocess.run([str(Path(sys.executable).with_name("bucketrun")), "get", job, "--out", str(tmp_path / "got")],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "BUCKETRUN_BUCKET": bucket_url})
    assert got.returncode == 0, got.stderr
    assert "6 items, 0 dead-lettered: verified" in got.stdout and "12 per-item files: verified" in got.stdout
    assert (tmp_path / "got" / "items" / "000000003.txt").read_bytes() == bucket.get(rows[3]["txt_key"]).data


def test_fetch_keeps_each_source_in_its_own_folder_until_processed_or_closed(bucket_url, media_dir, tmp_path):
    from bucketrun.events.storage.aio import open_async_bucket
    from bucketrun.images.fleet.processors import ProcessorContext
    from bucketrun.images.fleet.processors.transcribe import SourceFailed, make

    bucket = open_bucket(bucket_url)
    bucket.put("media/notes.mp3", (media_dir / "notes.mp3").read_bytes())
    work = tmp_path / "work"

    async def go():
        async with open_async_bucket(bucket_url) as source:
            proc = make({}, ProcessorContext(source, work, output=bucket, output_prefix="out/"))
            got = await proc.fetch("media/notes.mp3")
            assert got.path.read_bytes() == (media_dir / "notes.mp3").read_bytes() and got.source_type == "key"
            assert got.media_sha256 == hashlib.sha256(got.path.read_bytes()).hexdigest()
            with pytest.raises(SourceFailed, match="does not exist"):
                await proc.fetch("media/missing.ogg")
            with pytest.raises(SourceFailed, match="not a transcribe source"):
                await proc.fetch("media//x.ogg")
            assert [p.name for p in work.iterdir()] == [got.folder.name]  # a failed fetch leaves nothing
            proc.close()
            assert not any(work.iterdir())

    asyncio.run(go())
