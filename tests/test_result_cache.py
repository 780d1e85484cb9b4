"""The transcription result cache: identical jobs racing leave one write-once entry and two succeeded jobs; a
later identical job is served from it with no model time; `cache: false` and a broken entry run fresh."""

from __future__ import annotations

import threading

import pytest

from bucketrun.events import codec, keys
from bucketrun.events.lifecycle import JobState, read_view
from bucketrun.events.result_cache import media_id, options_digest
from bucketrun.events.storage import open_bucket
from bucketrun.handlers import client
from bucketrun.handlers.dispatch import DispatchContext, dispatch
from bucketrun.handlers.launchers import Routes
from bucketrun.images.runtime.attempt import run_attempt
from bucketrun.local_sim.sim import s3_record

from conftest import SPEECH_TEXT
from subtitle_rules import wer

pytestmark = pytest.mark.slow
MANIFEST = {"kind": "transcribe", "source": {"key": "media/speech.ogg"}, "options": {"language": "en"}}


class ThreadLauncher:
    """Each attempt in its own thread of this process, all started as dispatch reaches them: a real race."""

    name = "thread"

    def __init__(self):
        self.threads: list[threading.Thread] = []

    def launch(self, bucket_url, job_id, attempt, manifest):
        t = threading.Thread(target=run_attempt, args=(bucket_url, job_id, attempt))
        t.start()
        self.threads.append(t)
        return f"thread-{len(self.threads)}"

    def cancel(self, backend_id):
        pass

    def join(self):
        for t in self.threads:
            t.join(300)
            assert not t.is_alive()
        self.threads.clear()


def run_jobs(bucket, manifests: list[dict], launcher: ThreadLauncher) -> list[dict]:
    """Submit all, dispatch them in one event (so their attempts start together), wait; the terminal details."""
    names = []
    for m in manifests:
        job_id, _ = client.submit(bucket, codec.dumps(m))
        names.append(keys.inbox_key(f"{job_id}.json"))
    event = {"Records": [s3_record(bucket, bucket.head(n)) for n in names]}
    outcomes = dispatch(event, DispatchContext(bucket, Routes(by_kind={"transcribe": launcher}), "test"))
    launcher.join()
    views = [read_view(bucket, o.job_id) for o in outcomes]
    assert [v.state for v in views] == [JobState.SUCCEEDED] * len(manifests), [v.latest.detail for v in views]
    return [{"job_id": v.job_id, **v.latest.detail} for v in views]


def entries(bucket) -> list[str]:
    return [o.key for o in bucket.list(keys.TRANSCRIPT_CACHE) if "/media/" in o.key]


def text_of(bucket, detail) -> str:
    art = next(a for a in detail["artifacts"] if a["format"] == "txt")
    return bucket.get(art["key"]).data.decode()


def test_identical_jobs_racing_leave_one_entry_then_later_jobs_are_served_from_it(bucket, media_dir):
    bucket.put("media/speech.ogg", (media_dir / "speech.ogg").read_bytes(), "audio/ogg")
    launcher = ThreadLauncher()
    first, second = run_jobs(bucket, [MANIFEST, MANIFEST], launcher)
    # Both ran the model (neither found an entry), exactly one entry was created, and the loser's files are gone.
    assert not first["cache"]["hit"] and not second["cache"]["hit"]
    assert first["model_seconds"] > 0 and second["model_seconds"] > 0
    # Each attempt says where its time went, hand-offs included.
    assert {"intake", "launch", "pickup", "setup", "fetch", "hash", "cache", "decode", "transcribe", "render",
            "write", "cache-store"} <= set(first["stages"])
    assert all(v >= 0 for v in first["stages"].values()) and first["stages"]["transcribe"] > 0
    assert sorted([first["cache"]["stored"], second["cache"]["stored"]]) == [False, True]
    [entry_key] = entries(bucket)
    entry = codec.loads(bucket.get(entry_key).data)
    winner = first if first["cache"]["stored"] else second
    assert entry["job_id"] == winner["job_id"] and entry["media_sha256"] == first["media_sha256"]
    files = [o.key for o in bucket.list(keys.TRANSCRIPT_CACHE) if "/files/" in o.key]
    assert len(files) == 4 and all(f"/{winner['job_id']}-001/" in k for k in files)

    # A third identical job (only the formats differ: the cache keeps all four) is served, spending no model time.
    third, = run_jobs(bucket, [{**MANIFEST, "options": {"language": "en", "formats": ["srt", "txt"]}}], launcher)
    assert third["cache"]["hit"] and third["cache"]["entry"] == entry_key
    assert third["cache"]["made_by"]["job_id"] == winner["job_id"]
    assert third["model_seconds"] == 0 and third["gpu_seconds"] == 0 and third["summary"]["cached"]
    assert "transcribe" not in third["stages"] and "load-model" not in third["stages"]
    assert [a["format"] for a in third["artifacts"]] == ["srt", "txt"]
    assert all(a["key"].startswith(keys.artifacts_prefix(third["job_id"], 1)) for a in third["artifacts"])
    by_format = {f["format"]: f["sha256"] for f in entry["files"]}
    assert all(a["sha256"] == by_format[a["format"]] for a in third["artifacts"])
    assert wer(SPEECH_TEXT, text_of(bucket, third)) < 0.15

    # cache: false runs the model again and leaves the cache as it was.
    fresh, = run_jobs(bucket, [{**MANIFEST, "options": {"language": "en", "cache": False}}], launcher)
    assert "cache" not in fresh and fresh["model_seconds"] > 0 and entries(bucket) == [entry_key]


def test_a_broken_entry_is_never_served(tmp_path, media_dir):
    bucket = open_bucket(str(tmp_path / "bucket"))
    bucket.put("media/speech.ogg", (media_dir / "speech.ogg").read_bytes(), "audio/ogg")
    launcher = ThreadLauncher()
    first, = run_jobs(bucket, [MANIFEST], launcher)
    [entry_key] = entries(bucket)
    srt = next(f for f in codec.loads(bucket.get(entry_key).data)["files"] if f["format"] == "srt")
    bucket.put(srt["key"], b"1\n00:00:00,000 --> 00:00:01,000\ntampered\n")
    again, = run_jobs(bucket, [MANIFEST], launcher)
    assert not again["cache"]["hit"] and not again["cache"]["stored"] and again["model_seconds"] > 0
    assert "tampered" not in text_of(bucket, again) and wer(SPEECH_TEXT, text_of(bucket, again)) < 0.15


def test_the_key_covers_every_output_option_and_only_site_ids_name_media():
    base = {"model": "base", "device": "cpu", "compute_type": "int8", "language": "en", "task": "transcribe",
            "vad": True, "word_timestamps": True, "beam_size": 5, "batched": False}
    digest = options_digest(base)
    assert options_digest(dict(base)) == digest and len(digest) == 24
    for field, other in [("model", "large-v3"), ("compute_type", "float16"), ("language", None),
                         ("task", "translate"), ("vad", False), ("word_timestamps", False), ("beam_size", 1),
                         ("batched", True)]:
        assert options_digest({**base, field: other}) != digest, field
    assert media_id({"extractor_key": "Youtube", "id": "dQw4w9WgXcQ"}) == "Youtube:dQw4w9WgXcQ"
    assert media_id({"extractor_key": "Generic", "id": "speech"}) is None  # a file name, not an identity
    assert media_id({"id": "x"}) is None
    assert keys.transcript_cache_alias_key(digest, "Youtube:a/b") != keys.transcript_cache_alias_key(digest, "Youtube:a")
