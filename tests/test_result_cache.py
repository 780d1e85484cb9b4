"""The transcription result cache: identical jobs racing leave one entry, pointing at the winner's artifacts, and
two succeeded jobs; a later identical job is served from it with no model time; `cache: false` and a broken
entry (its files deleted or changed) run fresh. Its bill, counted at the S3 server: a miss pays 2 requests (the
lookup and the entry) and a whole miss job at most 25, a hit's cache share at most 10."""

from __future__ import annotations

import collections
import json
import logging
import re
import threading
from urllib.parse import parse_qs, unquote, urlsplit

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

from conftest import SPEECH_TEXT, make_s3_bucket
from subtitle_rules import wer

pytestmark = pytest.mark.slow
MANIFEST = {"kind": "transcribe", "source": {"key": "media/speech.ogg"}, "options": {"language": "en"}}


class ThreadLauncher:
    """Each attempt in its own thread of this process, all started as dispatch reaches them: a real race."""

    name = "thread"
    takes_handoff = True  # as Runpod's: the worker gets the log so far and the manifest, through JSON as on the wire

    def __init__(self):
        self.threads: list[threading.Thread] = []

    def launch(self, bucket_url, job_id, attempt, manifest, handoff=None):
        t = threading.Thread(target=run_attempt, args=(bucket_url, job_id, attempt),
                             kwargs={"handoff": json.loads(json.dumps(handoff))})
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
    # The entry points at the winner's own artifacts (all four formats were asked for): no copies of its own.
    assert not [o.key for o in bucket.list(keys.TRANSCRIPT_CACHE) if "/files/" in o.key]
    assert sorted((f["key"], f["sha256"]) for f in entry["files"]) == \
        sorted((a["key"], a["sha256"]) for a in winner["artifacts"])

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


def test_a_job_asking_for_fewer_formats_leaves_copies_of_the_rest_so_the_entry_holds_all_four(tmp_path, media_dir):
    bucket = open_bucket(str(tmp_path / "bucket"))
    bucket.put("media/speech.ogg", (media_dir / "speech.ogg").read_bytes(), "audio/ogg")
    launcher = ThreadLauncher()
    first, = run_jobs(bucket, [{**MANIFEST, "options": {"language": "en", "formats": ["srt"]}}], launcher)
    [entry_key] = entries(bucket)
    files = {f["format"]: f["key"] for f in codec.loads(bucket.get(entry_key).data)["files"]}
    assert files["srt"] == first["artifacts"][0]["key"]
    assert all(k.startswith(keys.TRANSCRIPT_CACHE) for fmt, k in files.items() if fmt != "srt")
    later, = run_jobs(bucket, [MANIFEST], launcher)
    assert later["cache"]["hit"] and sorted(a["format"] for a in later["artifacts"]) == ["json", "srt", "txt", "vtt"]


def test_a_broken_entry_is_never_served(tmp_path, media_dir):
    bucket = open_bucket(str(tmp_path / "bucket"))
    bucket.put("media/speech.ogg", (media_dir / "speech.ogg").read_bytes(), "audio/ogg")
    launcher = ThreadLauncher()
    first, = run_jobs(bucket, [MANIFEST], launcher)
    [entry_key] = entries(bucket)
    srt = next(f for f in codec.loads(bucket.get(entry_key).data)["files"] if f["format"] == "srt")
    bucket.put(srt["key"], b"1\n00:00:00,000 --> 00:00:01,000\ntampered\n")
    again, = run_jobs(bucket, [MANIFEST], launcher)
    assert not again["cache"]["hit"] and again["model_seconds"] > 0
    assert "tampered" not in text_of(bucket, again) and wer(SPEECH_TEXT, text_of(bucket, again)) < 0.15
    # The fresh result replaced the broken entry, so the next identical job is served again.
    assert again["cache"]["stored"] and codec.loads(bucket.get(entry_key).data)["job_id"] == again["job_id"]
    third, = run_jobs(bucket, [MANIFEST], launcher)
    assert third["cache"]["hit"] and third["cache"]["made_by"]["job_id"] == again["job_id"]


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


_REQUEST = re.compile(r'"(?:\x1b\[[0-9;]*m)*(?P<method>[A-Z]+) (?P<path>\S+) HTTP/')


class Served(logging.Handler):
    """Every request moto's server answered for one bucket, as (operation, key), from its access log."""

    def __init__(self, name: str):
        super().__init__()
        self.name, self.seen, self.seen_lock = name, [], threading.Lock()

    def emit(self, record: logging.LogRecord) -> None:
        m = _REQUEST.search(record.getMessage())
        if not m:
            return
        url = urlsplit(m["path"])
        bucket_name, _, key = unquote(url.path).lstrip("/").partition("/")
        if bucket_name == self.name:
            op = "LIST" if m["method"] == "GET" and "list-type" in parse_qs(url.query) else m["method"]
            with self.seen_lock:
                self.seen.append((op, key.partition("/")[2]))  # without the bucket URL's prefix

    def take(self) -> list[tuple[str, str]]:
        with self.seen_lock:
            out, self.seen = self.seen, []
        return out


@pytest.fixture
def served(s3_endpoint):
    name = make_s3_bucket()
    counter = Served(name)
    wz = logging.getLogger("werkzeug")
    saved = wz.level, wz.propagate
    wz.setLevel(logging.INFO)
    wz.propagate = False
    wz.addHandler(counter)
    yield open_bucket(f"s3://{name}/bill"), counter
    wz.removeHandler(counter)
    wz.setLevel(saved[0])
    wz.propagate = saved[1]


def billed_job(bucket, counter: Served, manifest: dict, launcher: ThreadLauncher):
    """One job from intake to its terminal transition: its detail and every request the server served for it
    (the user's own PUT of the manifest not counted)."""
    job_id, _ = client.submit(bucket, codec.dumps(manifest))
    event = {"Records": [s3_record(bucket, bucket.head(keys.inbox_key(f"{job_id}.json")))]}
    counter.take()
    [outcome] = dispatch(event, DispatchContext(bucket, Routes(by_kind={"transcribe": launcher}), "test"))
    launcher.join()
    requests = counter.take()
    view = read_view(bucket, outcome.job_id)
    counter.take()
    assert view.state is JobState.SUCCEEDED, view.latest.detail
    return {"job_id": view.job_id, **view.latest.detail}, requests


def bill(requests, *prefixes: str) -> dict[str, int]:
    """Requests on keys under any of `prefixes` (all when none), by operation, with a total."""
    ops = collections.Counter(op for op, key in requests if not prefixes or key.startswith(prefixes))
    return {**ops, "total": sum(ops.values())}


def test_a_miss_pays_the_cache_two_requests_and_a_hit_at_most_ten(served, media_dir):
    bucket, counter = served
    bucket.put("media/speech.ogg", (media_dir / "speech.ogg").read_bytes(), "audio/ogg")
    launcher = ThreadLauncher()
    off, off_requests = billed_job(bucket, counter, {**MANIFEST, "options": {"language": "en", "cache": False}},
                                   launcher)
    miss, miss_requests = billed_job(bucket, counter, MANIFEST, launcher)
    hit, hit_requests = billed_job(bucket, counter, MANIFEST, launcher)
    assert not miss["cache"]["hit"] and miss["cache"]["stored"] and hit["cache"]["hit"]
    progress = keys.progress_key(miss["job_id"]), keys.progress_key(off["job_id"])
    timed = [(op, key) for op, key in off_requests + miss_requests if key in progress]  # ~1 a second of work
    assert all(op == "PUT" for op, _ in timed)
    # A miss: one lookup and one entry (no copies), at most 25 requests for the whole job, its timed progress
    # writes included (issue 23); the worker reads neither the manifest nor the events the launch handed it.
    assert bill(miss_requests, keys.TRANSCRIPT_CACHE) == {"GET": 1, "PUT": 1, "total": 2}
    assert bill(miss_requests)["total"] <= 25, bill(miss_requests)
    events = keys.events_prefix(miss["job_id"])
    assert bill(miss_requests, keys.manifest_key(miss["job_id"])) == {"PUT": 1, "total": 1}
    handed = {keys.event_key(miss["job_id"], 1), keys.event_key(miss["job_id"], 2)}  # submitted, queued
    assert not [r for r in miss_requests if r[0] == "LIST" and r[1].startswith(events)]
    assert not [r for r in miss_requests if r[0] == "GET" and r[1] in handed]
    fixed = [r for r in miss_requests if r[1] not in progress]
    assert bill(fixed)["total"] == bill([r for r in off_requests if r[1] not in progress])["total"] + 2
    # A hit: the lookup and a read of each file it serves, checked against its sha256, then its own copies.
    producer = keys.artifacts_prefix(miss["job_id"], 1)
    cache_share = bill(hit_requests, keys.TRANSCRIPT_CACHE, producer)
    assert cache_share == {"GET": 5, "total": 5} and cache_share["total"] <= 10
    assert bill(hit_requests, keys.artifacts_prefix(hit["job_id"], 1)) == {"PUT": 4, "total": 4}
    assert not [r for r in hit_requests if r[1] == keys.progress_key(hit["job_id"])]
    assert hit["model_seconds"] == 0 and [a["sha256"] for a in hit["artifacts"]] == \
        [a["sha256"] for a in miss["artifacts"]]
    assert bill([r for r in hit_requests if r[1] not in progress])["total"] <= bill(fixed)["total"] - 2 + 5 + 4
    print(f"\nrequests: cache off {bill(off_requests)}, miss {bill(miss_requests)}, hit {bill(hit_requests)}")


def test_an_entry_whose_artifacts_were_deleted_is_a_miss_that_the_fresh_result_replaces(served, media_dir):
    """A job's artifacts may be deleted (a user, a lifecycle rule); the entry pointing at them then serves nothing."""
    bucket, counter = served
    bucket.put("media/speech.ogg", (media_dir / "speech.ogg").read_bytes(), "audio/ogg")
    launcher = ThreadLauncher()
    first, _ = billed_job(bucket, counter, MANIFEST, launcher)
    for art in first["artifacts"]:
        bucket.delete(art["key"])
    again, requests = billed_job(bucket, counter, MANIFEST, launcher)
    assert not again["cache"]["hit"] and again["model_seconds"] > 0 and again["cache"]["stored"]
    assert wer(SPEECH_TEXT, text_of(bucket, again)) < 0.15
    # the lookup, the first missing file (nothing is written before all are read), the replaced entry
    assert bill(requests, keys.TRANSCRIPT_CACHE, keys.artifacts_prefix(first["job_id"], 1)) == \
        {"GET": 2, "PUT": 1, "total": 3}
    [entry_key] = entries(bucket)
    assert codec.loads(bucket.get(entry_key).data)["job_id"] == again["job_id"]
    served_again, _ = billed_job(bucket, counter, MANIFEST, launcher)
    assert served_again["cache"]["hit"] and served_again["cache"]["made_by"]["job_id"] == again["job_id"]


def test_an_entry_whose_artifact_changed_is_a_miss(served, media_dir):
    bucket, counter = served
    bucket.put("media/speech.ogg", (media_dir / "speech.ogg").read_bytes(), "audio/ogg")
    launcher = ThreadLauncher()
    first, _ = billed_job(bucket, counter, MANIFEST, launcher)
    txt = next(a for a in first["artifacts"] if a["format"] == "txt")
    bucket.put(txt["key"], b"not what was transcribed\n", "text/plain")
    again, _ = billed_job(bucket, counter, MANIFEST, launcher)
    assert not again["cache"]["hit"] and again["model_seconds"] > 0
    assert "not what was" not in text_of(bucket, again) and wer(SPEECH_TEXT, text_of(bucket, again)) < 0.15
