"""The transcript_check processor on real parts: espeak-ng speech, a sox near-silence, the offline Whisper base
model, jiwer, and both bucket backends, with items given as a tar archive and as a folder prefix."""

from __future__ import annotations

import asyncio
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pyarrow as pa
import pytest

from bucketrun.events.storage.aio import open_async_bucket
from bucketrun.images.fleet.processors import ProcessorContext
from bucketrun.images.fleet.processors.transcript_check import error_rates, make, normalise

# Sixteen to eighteen words each, of words espeak-ng says plainly: the base model's int8 transcript differs by CPU
# (CTranslate2 picks its GEMM backend and kernels per CPU), and "green umbrella" was heard as "Brihum Brella" on an
# AMD EPYC, two word errors of nine. These three were heard word for word on an AMD EPYC under seven kernel paths
# (oneDNN and MKL GEMM, AVX512, AVX2 and AVX, 2 and 8 threads: CT2_USE_MKL, CT2_FORCE_CPU_ISA).
SPOKEN = {
    "alpha": "Please bring the blue coat and the black hat from the kitchen table before we leave.",
    "bravo": "The museum closes early on holidays and weekends, so we will visit it on Monday morning.",
    "charlie": "She walked slowly along the river to the old stone bridge and then turned back toward the town.",
}
TRANSCRIPTS = {
    "alpha": SPOKEN["alpha"],  # right
    "bravo": "The museum opens late on holidays and Sundays, so we will visit it on Friday morning.",  # 4 of 16 wrong
    # charlie: no transcript
    "quiet": "",
    "broken": "this file is not audio",
}
NAMES = ["alpha", "bravo", "broken", "charlie", "quiet"]
BRAVO_WRONG = 4  # words in the bravo transcript that were not spoken
# Word errors the model may make on a clip: measured 0 on every kernel path above; 2 is one word heard as two (the
# "Brihum Brella" kind) while an empty, garbage or other-language transcript makes 14 or more.
MODEL_ERRORS = 2


def edits(rate: float, reference: str) -> int:
    """A WER back in words: the word edits it counts over the reference's (normalised) words."""
    return round(rate * len(normalise(reference).split()))


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, bytes]:
    """File name -> bytes: three spoken WAVs, a near-silent WAV (white noise at -60 dB), an undecodable .wav,
    and the transcripts."""
    for tool in ("espeak-ng", "sox", "ffprobe"):
        assert shutil.which(tool), f"{tool} is required"
    d = tmp_path_factory.mktemp("clips")
    for name, text in SPOKEN.items():
        subprocess.run(["espeak-ng", "-s", "150", "-w", str(d / f"{name}.wav"), text], check=True)
    subprocess.run(["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(d / "quiet.wav"),
                    "synth", "2.5", "whitenoise", "vol", "0.001"], check=True)
    (d / "broken.wav").write_text("not audio at all\n" * 40)
    for name, text in TRANSCRIPTS.items():
        (d / f"{name}.txt").write_text(text + "\n")
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def probe_duration(data: bytes, tmp_path: Path) -> float:
    path = tmp_path / "probe.wav"
    path.write_bytes(data)
    out = subprocess.run(["ffprobe", "-v", "error", "-show_entries", "format=duration", "-of", "csv=p=0",
                          str(path)], check=True, capture_output=True, text=True).stdout
    return float(out.strip())


def tar_bytes(files: dict[str, bytes], gz: bool = False) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def run(bucket_url: str, workdir: Path, items: list[str], process: str | None = None, options: dict | None = None):
    """make -> fetch each item -> process one, as a fleet worker would (fetch in the loop, process in a thread);
    close() then removes what was fetched but never processed."""
    async def go():
        async with open_async_bucket(bucket_url) as source:
            processor = make(options or {}, ProcessorContext(source=source, workdir=workdir))
            try:
                payloads = {item: await processor.fetch(item) for item in items}
                rows = await asyncio.to_thread(processor.process, process, payloads[process]) if process else None
                return processor.columns, payloads, rows
            finally:
                processor.close()

    return asyncio.run(go())


@pytest.mark.slow
def test_scores_every_segment(bucket, bucket_url, clips, tmp_path):
    """The same segments as a folder prefix and as a tar.gz fetch alike; the model runs on one of them per
    backend (the tar on the folder backend, the prefix on S3), which keeps the test inside a minute."""
    for name, data in clips.items():
        bucket.put(f"data/set1/{name}", data)
    bucket.put("data/set1.tar.gz", tar_bytes(clips, gz=True))
    items = ["data/set1/", "data/set1.tar.gz"]
    scored = items[0] if bucket_url.startswith("s3://") else items[1]
    workdir = tmp_path / "work"
    columns, payloads, rows = run(bucket_url, workdir, items, process=scored)

    for payload in payloads.values():
        assert [s[0] for s in payload] == NAMES
        assert {s[0]: s[2] for s in payload} == {n: TRANSCRIPTS.get(n) for n in NAMES}  # charlie: None
    assert list(workdir.iterdir()) == []  # processed or closed, no per-item folder is left
    table = pa.Table.from_pylist(rows, schema=pa.schema(list(columns.items())))
    assert table.num_rows == len(NAMES)
    by = {r["segment"]: r for r in table.to_pylist()}
    assert sorted(by) == NAMES

    for name in ("alpha", "bravo", "charlie", "quiet"):
        assert abs(by[name]["duration_s"] - probe_duration(clips[f"{name}.wav"], tmp_path)) < 0.1, name
    print({n: (by[n]["wer"], by[n]["cer"], by[n]["hypothesis"]) for n in NAMES})  # shown with -s

    assert by["alpha"]["segment_error"] is None and edits(by["alpha"]["wer"], SPOKEN["alpha"]) <= MODEL_ERRORS
    assert by["bravo"]["segment_error"] is None and by["bravo"]["reference"] == TRANSCRIPTS["bravo"]
    # the model heard bravo right, so its WER is the transcript's four wrong words, give or take the model's own
    # errors (edit distance is a metric): measured exactly 4 of 16 (WER 0.25); scored against the spoken text or
    # the wrong segment's transcript it would be 0 or over 12
    heard = edits(error_rates(SPOKEN["bravo"], by["bravo"]["hypothesis"])[0], SPOKEN["bravo"])
    assert heard <= MODEL_ERRORS
    assert abs(edits(by["bravo"]["wer"], TRANSCRIPTS["bravo"]) - BRAVO_WRONG) <= heard
    assert by["bravo"]["wer"] > by["alpha"]["wer"]
    assert by["charlie"]["segment_error"] == "no transcript" and by["charlie"]["wer"] is None
    # transcribed all the same
    assert edits(error_rates(SPOKEN["charlie"], by["charlie"]["hypothesis"])[0], SPOKEN["charlie"]) <= MODEL_ERRORS
    assert by["quiet"]["silence_fraction"] > 0.9 and by["quiet"]["rms_dbfs"] < -50
    assert by["alpha"]["silence_fraction"] < 0.7 and by["alpha"]["rms_dbfs"] > -35
    assert by["broken"]["segment_error"].startswith("audio does not decode") and by["broken"]["hypothesis"] is None


def test_items_that_are_not_datasets_are_refused(bucket, bucket_url, tmp_path):
    bucket.put("notes/only.txt", b"a transcript with no audio")
    bucket.put("junk.tar", b"this is not a tar archive" * 40)
    bucket.put("empty.tar", tar_bytes({"readme.md": b"nothing here"}))
    for item, message in [("clip.zip", "neither a tar"), ("notes/", "no audio"), ("junk.tar", "not a readable tar"),
                          ("empty.tar", "no audio")]:
        with pytest.raises(ValueError, match=message):
            run(bucket_url, tmp_path / "work", [item])
    assert list((tmp_path / "work").iterdir()) == []  # a refused item leaves nothing behind


def test_normalised_error_rates():
    assert normalise("  Don't STOP,   me-now! ") == "dont stop me now"
    assert error_rates("", "") == (0.0, 0.0) and error_rates("...", " ") == (0.0, 0.0)
    assert error_rates("Hello, world.", "hello world") == (0.0, 0.0)
    assert error_rates("a b c d", "a b x d")[0] == pytest.approx(0.25)


def test_discard_removes_what_was_fetched_for_an_item_never_processed(bucket, bucket_url, tmp_path):
    """A worker prefetches the next shard before it claims it; when another worker claims it first, the inputs
    are discarded at once, not left on disk until the processor closes."""
    bucket.put("one.tar", tar_bytes({"a.wav": b"RIFF" + b"\0" * 64, "a.txt": b"words\n"}))
    work = tmp_path / "work"

    async def go():
        async with open_async_bucket(bucket_url) as source:
            processor = make({}, ProcessorContext(source=source, workdir=work))
            try:
                payload = await processor.fetch("one.tar")
                assert payload.folder.is_dir() and list(work.iterdir()) == [payload.folder]
                processor.discard(payload)
                return list(work.iterdir())
            finally:
                processor.close()

    assert asyncio.run(go()) == []
