"""`bucketrun ui --snapshot`: the dashboard written into the bucket as self-contained HTML files, on the folder
bucket and on a real S3-protocol server (moto): pages that need nothing else, relative links that resolve to
objects in the bucket (artifacts with their sha256), escaping, writes only of what changed, the sweep's refresh
period and its request cost, and on S3 a presigned URL that plain httpx (no credentials) opens, its links too."""

from __future__ import annotations

import hashlib
import html
import posixpath
import re
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import unquote, urlsplit

import httpx

from bucketrun.events import codec, keys
from bucketrun.events.lifecycle import JobState, append_transition
from bucketrun.events.storage import open_bucket
from bucketrun.handlers.launchers.routes import Routes
from bucketrun.handlers.ui import assets, snapshot
from bucketrun.local_sim.sim import Simulation

from conftest import make_s3_bucket, wait_for
from test_ui import DONE, FAILED, FLEET, SRT, XSS, make_jobs

BUCKETRUN = str(Path(sys.executable).with_name("bucketrun"))
LINK = re.compile(r'(?:href|src|action)="([^"]*)"')


def run_snapshot(url: str, *extra: str) -> subprocess.CompletedProcess:
    done = subprocess.run([BUCKETRUN, "--bucket", url, "ui", "--snapshot", *extra], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return done


def dashboard(bucket) -> dict[str, str]:
    """Every object under dashboard/ with its ETag: a rewrite with new bytes shows as a new ETag."""
    return {info.key: info.etag for info in bucket.list(snapshot.ROOT)}


def written(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {k[len(snapshot.ROOT):] for k in after if before.get(k) != after[k]}


def page(bucket, name: str) -> str:
    return bucket.get(snapshot.ROOT + name).data.decode()


def links(text: str) -> list[str]:
    return [html.unescape(m) for m in LINK.findall(text)]


def test_a_snapshot_is_self_contained_pages_whose_links_resolve_in_the_bucket(bucket_url):
    bucket = open_bucket(bucket_url)
    waiting = make_jobs(bucket)
    done = run_snapshot(bucket_url)
    assert "snapshot of 4 job(s)" in done.stderr
    names = {k[len(snapshot.ROOT):] for k in dashboard(bucket)}
    assert names == {"index.html", "hosts.html", "state.json"} | {f"jobs/{j}.html"
                                                                  for j in (FAILED, DONE, FLEET, waiting)}
    uplot = assets.read("uplot/uPlot.iife.min.js").decode()
    for name in sorted(names - {"state.json"}):
        text = page(bucket, name)
        assert uplot in text and assets.read("uplot/uPlot.min.css").decode() in text, name  # inline, not linked
        assert "<script src" not in text and "<link" not in text and "<body data-live" not in text, name
        assert XSS not in text and "alert(1)<" not in text, name
        assert "snapshot taken at " in text and "refreshed by the sweep every 60 s" in text, name
        assert '<form' not in text, name  # a static page has no search
        for link in links(text):
            assert not urlsplit(link).scheme and not link.startswith("/"), (name, link)  # relative, nothing else
            target = posixpath.normpath(posixpath.join(posixpath.dirname(snapshot.ROOT + name), unquote(link)))
            assert bucket.exists(target), (name, link, target)  # every link is an object in this bucket
    index = page(bucket, "index.html")
    assert f'href="jobs/{FLEET}.html"' in index and 'href="hosts.html"' in index
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page(bucket, f"jobs/{FAILED}.html")
    job = page(bucket, f"jobs/{DONE}.html")
    assert 'href="../index.html"' in job
    (art,) = [link for link in links(job) if "/artifacts/" in link]
    key = posixpath.normpath(posixpath.join(snapshot.ROOT + "jobs", art))
    assert key == keys.artifact_key(DONE, 1, "transcript.srt")
    assert hashlib.sha256(bucket.get(key).data).hexdigest() == hashlib.sha256(SRT).hexdigest()
    if not bucket_url.startswith("s3://"):  # a folder: the file:// URL a browser opens, its links are files
        assert Path(bucket.path_of(key)).read_bytes() == SRT


def test_nothing_changed_writes_nothing_and_a_change_writes_only_its_page_and_the_index(bucket_url):
    bucket = open_bucket(bucket_url)
    make_jobs(bucket)
    run_snapshot(bucket_url)
    first = dashboard(bucket)
    time.sleep(2.1)  # every age on the pages is now another number: that alone is no change
    done = run_snapshot(bucket_url)
    assert "0 object(s) written" in done.stderr
    assert dashboard(bucket) == first
    bucket.put(keys.progress_key(FLEET), codec.dumps({"attempt": 1, "stage": "shards", "percent": 65.0,
                                                       "updated_at": codec.iso(codec.now())}), "application/json")
    done = run_snapshot(bucket_url)
    assert "3 object(s) written" in done.stderr
    after = dashboard(bucket)
    assert written(first, after) == {f"jobs/{FLEET}.html", "index.html", "state.json"}
    assert '<progress max="100" value="65">' in page(bucket, "index.html")


def _no_launcher_sim(bucket, every: float) -> Simulation:
    return Simulation(bucket, Routes(), sweep_s=None, snapshot_s=every)


def test_the_sweep_refreshes_at_most_once_a_period_only_once_asked_and_what_it_costs(bucket_url):
    bucket = open_bucket(bucket_url)
    make_jobs(bucket)
    sim = _no_launcher_sim(bucket, 1.0)
    sim.refresh_snapshot(live=True)  # no snapshot was ever taken: one GET of state.json says so, nothing written
    assert sim.snapshots.refreshes == 0 and sim.snapshots.counted.calls == 1 and dashboard(bucket) == {}
    run_snapshot(bucket_url, "--snapshot-every", "1")
    first = dashboard(bucket)

    sim = _no_launcher_sim(bucket, 1.0)
    refresher = None
    start = time.monotonic()
    while time.monotonic() - start < 3.5:  # a sweep loop far faster than the period
        sim.refresh_snapshot(live=True)
        refresher = sim.snapshots
        time.sleep(0.05)
    assert 3 <= refresher.refreshes <= 4  # at 0, 1, 2, 3 s: never twice within a period
    assert dashboard(bucket) == first  # nothing changed: nothing written

    # what one refresh costs, with the ended jobs already read once by this refresher's cache
    time.sleep(1.05)
    quiet = refresher.maybe_refresh()
    assert quiet.writes == 0
    append_transition(bucket, FLEET, JobState.SUCCEEDED, writer="test", attempt=1, detail={"artifacts": []})
    time.sleep(1.05)
    changed = refresher.maybe_refresh()
    assert set(changed.written) == {f"jobs/{FLEET}.html", "index.html"} and changed.writes == 3
    time.sleep(1.05)
    after = refresher.maybe_refresh()  # the fleet ended: it is read no more
    print(f"\nsnapshot refresh on {'s3' if bucket_url.startswith('s3://') else 'folder'}: no change {quiet.reads} reads 0 writes; "
          f"a job ended {changed.reads} reads {changed.writes} writes; then {after.reads} reads {after.writes} "
          f"writes")
    assert after.writes == 0 and after.reads < quiet.reads
    assert quiet.reads <= 12 and changed.reads <= 14  # the README's figures (measured, with some slack)

    # idle: once nothing is live and a refresh ran after the last one ended, a pass costs no request at all
    sim.refresh_snapshot(live=False)
    time.sleep(1.05)
    sim.refresh_snapshot(live=False)
    calls = refresher.counted.calls
    time.sleep(1.05)
    sim.refresh_snapshot(live=False)
    assert refresher.counted.calls == calls


def test_snapshot_every_zero_never_refreshes(bucket_url):
    bucket = open_bucket(bucket_url)
    make_jobs(bucket)
    run_snapshot(bucket_url)
    sim = _no_launcher_sim(bucket, 0.0)
    sim.refresh_snapshot(live=True)
    assert sim.snapshots is None


def test_print_url_on_s3_opens_with_plain_httpx_and_so_do_its_links(s3_endpoint):
    url = f"s3://{make_s3_bucket()}/team-b"
    bucket = open_bucket(url)
    make_jobs(bucket)
    done = run_snapshot(url, "--print-url")
    assert "expire in 7 days" in done.stderr
    signed = done.stdout.strip()
    assert "X-Amz-Signature=" in signed and "X-Amz-Expires=604800" in signed
    with httpx.Client(timeout=30) as anonymous:  # no credentials: only the signature in the URL
        assert anonymous.get(signed.split("?")[0]).status_code == 403
        index = anonymous.get(signed)
        assert index.status_code == 200 and index.headers["content-type"].startswith("text/html")
        assert FLEET in index.text and "snapshot taken at" in index.text
        (job_link,) = [link for link in links(index.text) if f"/jobs/{DONE}.html" in link]
        job = anonymous.get(job_link)
        assert job.status_code == 200 and f"Job <code>{DONE}</code>" in job.text
        (art,) = [link for link in links(job.text) if "/artifacts/" in link]
        data = anonymous.get(art)
        assert data.status_code == 200 and hashlib.sha256(data.content).hexdigest() == hashlib.sha256(SRT).hexdigest()
        (back,) = [link for link in links(job.text) if "/index.html" in link and "hosts" not in link]
        assert anonymous.get(back).status_code == 200
        # the sweep keeps the presigned copy's changed pages signed, to the same expiry: the URL shows the change
        bucket.put(keys.progress_key(FLEET), codec.dumps({"attempt": 1, "stage": "shards", "percent": 65.0,
                                                           "updated_at": codec.iso(codec.now())}), "application/json")
        refreshed = snapshot.Refresher(bucket, 1.0).maybe_refresh()
        assert set(refreshed.written) == {f"jobs/{FLEET}.html", "index.html", f"signed/jobs/{FLEET}.html",
                                          "signed/index.html"}
        index = anonymous.get(signed)
        assert index.status_code == 200 and '<progress max="100" value="65">' in index.text
        (fleet,) = [link for link in links(index.text) if f"/jobs/{FLEET}.html" in link]
        assert "X-Amz-Signature=" in fleet and anonymous.get(fleet).status_code == 200
    # the plain copy stays relative, for a public bucket domain
    assert f'href="jobs/{DONE}.html"' in page(bucket, "index.html")


def test_print_url_on_a_folder_is_its_file_url(tmp_path):
    url = open_bucket(str(tmp_path / "bucket")).url
    make_jobs(open_bucket(url))
    done = run_snapshot(url, "--print-url")
    printed = done.stdout.strip()
    assert printed.startswith("file://") and Path(unquote(urlsplit(printed).path)).read_text().startswith(
        "<!doctype html>")


def test_the_lambda_skips_the_snapshot_in_one_line_without_the_ui_extra(tmp_path):
    url = open_bucket(str(tmp_path / "bucket")).url
    code = ("import logging, sys; sys.modules['jinja2'] = None\n"
            "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
            "from bucketrun.handlers import aws_lambda\n"
            "from bucketrun.events.storage import open_bucket\n"
            f"b = open_bucket({url!r})\n"
            "assert aws_lambda.refresh_snapshot(b) is None and aws_lambda.refresh_snapshot(b) is None\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    lines = [line for line in done.stderr.splitlines() if "snapshot" in line]
    assert len(lines) == 1 and "the ui extra is not installed" in lines[0]


def test_a_running_sim_puts_a_submitted_job_into_the_snapshot_as_it_ends(bucket_url, launcher):
    """The real sim (dispatch, worker, sweep loop) on a bucket with a snapshot: a submitted job that fails at once
    (its media is missing) shows in dashboard/index.html and gets its page, ended, without anyone running ui."""
    from bucketrun.handlers.client import submit

    bucket = open_bucket(bucket_url)
    run_snapshot(bucket_url, "--snapshot-every", "1")
    sim = Simulation(bucket, launcher, poll_s=0.2, poll_max_s=0.4, sweep_s=0.2, sweep_max_s=0.4, snapshot_s=1.0)
    sim.start_thread()
    try:
        job_id, _ = submit(bucket, codec.dumps({"kind": "transcribe", "source": {"key": "media/not-there.ogg"}}))

        def ended_in_snapshot():
            try:
                text = page(bucket, f"jobs/{job_id}.html")
            except Exception:  # noqa: BLE001 - not written yet
                return None
            return text if 'state <b class="state-failed">failed</b>' in text else None

        job = wait_for(ended_in_snapshot, timeout=60)
        assert "the media" in job or "not-there.ogg" in job
        index = page(bucket, "index.html")
        assert f'href="jobs/{job_id}.html"' in index and "refreshed by the sweep every 1 s" in index
    finally:
        sim.stop()


def test_the_lambda_sweep_refreshes_the_snapshot_at_most_once_a_period(tmp_path):
    from bucketrun.handlers import aws_lambda

    bucket = open_bucket(str(tmp_path / "bucket"))
    make_jobs(bucket)
    run_snapshot(bucket.url)
    bucket.put(keys.progress_key(FLEET), codec.dumps({"attempt": 1, "stage": "shards", "percent": 70.0,
                                                       "updated_at": codec.iso(codec.now())}), "application/json")
    aws_lambda.reset_context()
    try:
        first = aws_lambda.refresh_snapshot(bucket)  # a new container: its cache reads every job once
        assert first["written"] == 2 and first["writes"] == 3 and first["reads"] > 11
        assert aws_lambda.refresh_snapshot(bucket) is None  # the next scheduled sweep within 60 s: no request
    finally:
        aws_lambda.reset_context()
    assert '<progress max="100" value="70">' in page(bucket, "index.html")
