"""A training window's section of its job page, over a real window: two host agents, the simulation and the real
numpy trainer (test_train_window.py's harness). host-b's model cache misses a blob, so attempt 1 fails preflight on
host-b; the blob is put back and the job retried, and attempt 2 trains to its target, gates, mirrors and reports.
The page is read from the real `bucketrun ui` server, and the assertions are on what a person sees."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import time
from html.parser import HTMLParser
from types import SimpleNamespace

import pytest

from bucketrun.events import codec, keys
from bucketrun.events.storage import open_bucket
from bucketrun.handlers.client import submit
from bucketrun.handlers.control import retry
from bucketrun.images.train_window.fingerprint import hf_repo_folder

from conftest import wait_for
from test_train_window import COMMIT, REPO, Fleet, make_hosts, manifest
from test_ui import Server, calls

TARGET = 6


@pytest.fixture(scope="module")
def window(tmp_path_factory):
    """The window, ended: its bucket, its id, the blob host-b missed, the trainer's last checkpoint.json, the host
    roots and the fingerprints (for another window on the same hosts)."""
    tmp = tmp_path_factory.mktemp("window")
    roots, fps = make_hosts(tmp)
    link = hf_repo_folder(roots["host-b"] / "hf" / "hub", REPO, "model") / "snapshots" / COMMIT / "tokenizer.json"
    blob = link.parent / os.readlink(link)
    saved = blob.read_bytes()
    blob.unlink()
    folder = tmp / "bucket"
    url = open_bucket(str(folder)).url
    with Fleet(url, roots) as f:
        # a `\r` download bar before training, as huggingface_hub draws one: the log's tail shows its last state
        # a looser stall_after_s than the harness's 8 s: on two busy cores an agent once took longer to start
        job, out = f.run(manifest(fps, "--download-bar", "0.7", target=TARGET, size=TARGET,
                                  resources={"heartbeat_s": 1, "stall_after_s": 30, "max_attempts": 1}))
        assert out["state"] == "failed" and out["detail"]["error"]["where"] == "preflight/host-b", out
        blob.write_bytes(saved)
        retry(f.bucket, job, writer="test")
        out = f.wait(job)
    assert out["state"] == "succeeded" and out["attempt"] == 2, out
    progress = json.loads((roots["host-a"] / "runs" / "main" / "checkpoint.json").read_text())
    return SimpleNamespace(folder=folder, url=url, job=job, blob=blob.name, progress=progress, roots=roots, fps=fps)


@pytest.fixture(scope="module")
def page(window):
    """The job page as the server first sends it, and the server (still running) with its --refresh."""
    server = Server(window.url, "--refresh", "0.2", "--budget", "100000")
    try:
        yield server, server.get(f"/jobs/{window.job}").text
    finally:
        server.stop()


class Cells(HTMLParser):
    """The preflight matrix as {(host, attempt, check): (class, text)} and each row's host cell class."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.cells: dict[tuple[str, int, str], tuple[str, str]] = {}
        self.host_class: dict[str, str] = {}
        self.inside, self.at, self.host, self.buf = False, None, None, []
        self.feed(text.split('<table class="preflight">', 1)[1].split("</table>", 1)[0])

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tr" and a.get("class") == "host":
            self.host, self.at = "?", ("host", a)
            self.buf = []
        elif tag == "th" and self.host == "?":
            self.at, self.buf = ("host", a), []
        elif tag == "td" and "data-check" in a:
            self.at, self.buf = ("cell", a), []

    def handle_endtag(self, tag):
        if self.at is None:
            return
        text = " ".join("".join(self.buf).split())
        if tag == "th" and self.at[0] == "host" and self.host == "?":
            self.host = text.split()[0]
            self.host_class[self.host] = self.at[1].get("class") or ""
            self.at = None
        elif tag == "td" and self.at[0] == "cell":
            a = self.at[1]
            self.cells[(self.host, int(a["data-attempt"]), a["data-check"])] = (a["class"], text)
            self.at = None

    def handle_data(self, data):
        self.buf.append(data)


def text_of(fragment: str) -> str:
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", fragment)).split())


def test_the_preflight_matrix_names_the_failed_host_and_its_finding_then_all_ok(page, window):
    _, text = page
    blob = window.blob
    m = Cells(text)
    checks = ("dataset", "cache", "disk", "inodes", "memory", "GPU")
    assert {(h, n, c) for h, n, c in m.cells} == {(h, n, c) for h in ("host-a", "host-b") for n in (1, 2)
                                                 for c in checks}
    heads = re.findall(r'<th colspan="6" class="attempt ([a-z]*)">(.*?)</th>', text, re.S)
    assert heads[0][0] == "bad" and text_of(heads[0][1]) == "attempt 1: failed (preflight at preflight/host-b)"
    assert heads[1][0] == "good" and text_of(heads[1][1]) == "attempt 2: succeeded"
    # attempt 1: host-b's cache is the one failed cell, its finding named; everything else passed
    cls, said = m.cells[("host-b", 1, "cache")]
    assert "bad" in cls and said.startswith("FAILED PARTIAL: ") and "Blob missing" in said and blob[:10] in said, said
    bad = {k for k, (c, _) in m.cells.items() if "bad" in c}
    assert bad == {("host-b", 1, "cache")}, bad
    assert m.host_class == {"host-a": "", "host-b": "bad"}
    assert "preflight failed on host-b: host-b:" in text_of(text.split('<table class="preflight">')[1])
    # attempt 2: all ok, with figures (not a folder check)
    for host in ("host-a", "host-b"):
        for check in checks:
            cls, said = m.cells[(host, 2, check)]
            assert "good" in cls and said.startswith("ok "), (host, check, said)
        assert m.cells[(host, 2, "dataset")][1] .endswith("180 lines")
        assert "(sha256 of every file)" in m.cells[(host, 2, "cache")][1]
        assert " free on " in m.cells[(host, 2, "disk")][1]


def test_steps_against_the_target_and_the_metrics_chart(page, window):
    _, text = page
    progress = window.progress
    steps = text_of(re.search(r'<p class="steps">(.*?)</p>', text, re.S)[1])
    assert steps == f"step {TARGET} of target {TARGET} 100% of the window (from step 0)", steps
    islands = [json.loads(s) for s in re.findall(
        r'<div class="chart"><script type="application/json">(.*?)</script></div>', text, re.S)]
    (chart,) = [c for c in islands if c["title"] == "training metrics"]
    assert chart["time"] is False and chart["x_label"] == "step"
    assert chart["x"] == [float(s) for s in range(1, TARGET + 1)]
    series = {s["label"]: s["values"] for s in chart["series"]}
    assert set(series) == {"loss", "valid_acc"} and all(len(v) == TARGET for v in series.values())
    # the trainer's own numbers: its last step line and its checkpoint.json agree (4 decimals in the log)
    assert series["loss"][-1] == pytest.approx(progress["loss"], abs=1e-4)
    assert series["valid_acc"][-1] == pytest.approx(progress["valid_acc"], abs=1e-4)
    assert series["loss"][-1] < series["loss"][0]  # it learned
    log = text_of(re.search(r'<pre class="log train-log">(.*?)</pre>', text, re.S)[1])
    assert f"step {TARGET}/{TARGET} loss=" in log
    bucket = open_bucket(window.url)
    raw = b"".join(bucket.get(k.key).data for k in bucket.list(keys.train_log_prefix(window.job, 2))).decode()
    drawn = re.findall(r"model\.safetensors: (\d+)%", raw)
    assert len(drawn) >= 3  # the bar was redrawn in the log several times ...
    shown = re.findall(r"model\.safetensors: (\d+)%", log)
    assert shown == [drawn[-1]], (shown, drawn)  # ... and the page shows its last state, once
    assert "\r" not in html.unescape(re.search(r'<pre class="log train-log">(.*?)</pre>', text, re.S)[1])
    assert log.startswith("Fetching 4 files for org/model")
    assert "attempt 2, last" in text_of(text.split("<h2>Training log")[1].split("</h2>")[0])


def test_the_gate_the_mirror_verification_and_the_report(page, window):
    _, text = page
    job, progress = window.job, window.progress
    bucket = open_bucket(window.url)
    rep = codec.loads(bucket.get(keys.report_json_key(job)).data)
    gate = text_of(re.search(r'<table class="gate">(.*?)</table>', text, re.S)[1])
    assert gate.startswith(f"verdict passed progress file step {TARGET} (target {TARGET})"), gate
    assert f"checkpoint-{TARGET}/adapter_model.npz " in gate and "missing" not in gate
    mirror = text_of(re.search(r'<table class="mirror">(.*?)</table>', text, re.S)[1])
    assert mirror.startswith("verdict verified: listed back and every object re-hashed"), mirror
    assert keys.mirror_prefix(job, 2, TARGET) in mirror and keys.mirror_manifest_key(job, 2, TARGET) in mirror
    manifest = codec.loads(bucket.get(keys.mirror_manifest_key(job, 2, TARGET)).data)
    shown = re.findall(r"<tr><td>([^<]+)</td><td>(\d+)</td><td><code class=\"sha256\">([0-9a-f]{64})</code>",
                       text.split('<table class="mirror-files">')[1])
    assert shown == [(f["path"], str(f["bytes"]), f["sha256"]) for f in manifest["files"]]
    report = text_of(re.search(r'<table class="report">(.*?)</table>', text, re.S)[1])
    assert report.startswith("state succeeded attempt 2 command ") and f"--target-step {TARGET}" in report
    assert "launch_host host-a" in report and f"target_step {TARGET}" in report
    history = re.findall(r"<li>(.*?)</li>", text.split('<ul class="history">')[1].split("</ul>")[0])
    assert [html.unescape(h) for h in history] == rep["history_lines"]
    assert history[1] == "attempt 2: host-a passed; host-b passed -&gt; succeeded"
    assert "nothing: the checkpoint is verified in the bucket" in text
    md = bucket.get(keys.report_key(job)).data.decode()
    shown_md = re.search(r'<pre class="log report-md">(.*?)</pre>', text, re.S)[1]
    assert html.unescape(shown_md) == md and "**reached**" in shown_md and "<h1" not in shown_md  # text, not HTML
    assert f"loss: {progress['loss']:g}" in html.unescape(shown_md)


def test_an_ended_window_page_is_not_read_again(page, window):
    server, first = page
    job = window.job
    before = calls(server.get(f"/jobs/{job}").text)
    time.sleep(0.5)  # more than --refresh 0.2: a live job would be read again
    again = server.get(f"/jobs/{job}").text
    assert calls(again) == before
    assert again.split('<main id="main">')[1].split("</main>")[0] == \
        first.split('<main id="main">')[1].split("</main>")[0]


def test_a_running_window_shows_its_step_then_its_end(window):
    """Another window on host-a, held after step 3 by a 6 s `\\r` evaluation bar: while it runs its page shows
    attempt 1 running with host-a's checks ok and step 3 of 6; once it ended, the same server's page (re-read
    after --refresh) shows it succeeded at step 6, its gate passed and its report."""
    server = Server(window.url, "--refresh", "0.2", "--budget", "100000")
    m = manifest(window.fps, "--eval-bar", "3", "6", target=TARGET, size=TARGET, preflight=("host-a",),
                 resources={"heartbeat_s": 1, "stall_after_s": 30, "max_attempts": 1})
    m["checkpoint"]["run_dir"] = "runs/live"  # from scratch, beside the first window's run directory
    try:
        with Fleet(window.url, {"host-a": window.roots["host-a"]}) as f:
            job, _ = submit(f.bucket, codec.dumps(m))

            def at_step_3():
                text = server.get(f"/jobs/{job}").text
                return text if '<b class="step">3</b>' in text else None

            running = wait_for(at_step_3, timeout=90, every=0.2)
            out = f.wait(job)
        assert out["state"] == "succeeded", out
        steps = text_of(re.search(r'<p class="steps">(.*?)</p>', running, re.S)[1])
        assert steps == f"step 3 of target {TARGET} 50% of the window (from step 0)", steps
        heads = [text_of(h) for h in re.findall(r'<th colspan="6" class="attempt [a-z]*">(.*?)</th>', running, re.S)]
        assert heads == ["attempt 1: running"]
        m_ = Cells(running)
        assert set(m_.cells) == {("host-a", 1, c) for c in ("dataset", "cache", "disk", "inodes", "memory", "GPU")}
        assert all("good" in cls and said.startswith("ok ") for cls, said in m_.cells.values()), m_.cells
        assert "no report yet" in running and "<h2>Gate</h2>\n<p>not reached yet</p>" in running

        def ended():
            text = server.get(f"/jobs/{job}").text
            return text if "attempt 1: succeeded" in text else None

        done = wait_for(ended, timeout=30, every=0.3)
        steps = text_of(re.search(r'<p class="steps">(.*?)</p>', done, re.S)[1])
        assert steps == f"step {TARGET} of target {TARGET} 100% of the window (from step 0)", steps
        assert "verdict passed" in text_of(re.search(r'<table class="gate">(.*?)</table>', done, re.S)[1])
        assert re.search(r'<pre class="log report-md"># Training window ' + job + r" \(attempt 1\): succeeded", done)
        chart = json.loads(re.search(r'<div class="chart"><script type="application/json">(.*?)</script>', done)[1])
        assert chart["x"] == [float(s) for s in range(1, TARGET + 1)]
        eval_bar = text_of(re.search(r'<pre class="log train-log">(.*?)</pre>', done, re.S)[1])
        assert len(re.findall(r"eval: \d+%", eval_bar)) == 1  # the bar, redrawn for 6 s, in its last state
    finally:
        server.stop()


def test_a_live_window_reads_only_new_log_chunks(window, tmp_path):
    """The section as the server renders it for a window still running (its status said so), every refresh: the
    training log's listing is read again, nothing else (every host has reported this attempt's preflight, and the
    report changes only with the state); a chunk is read once, a new one when it appears."""
    from bucketrun.handlers.jobcache import Cache, CountingBucket
    from bucketrun.handlers.ui.window import window_section

    job = window.job
    shutil.copytree(window.folder, tmp_path / "bucket")
    bucket = open_bucket(str(tmp_path / "bucket"))
    asked: list[tuple[str, str]] = []

    class Spy:  # what the section asks of the bucket, below the dashboard's counting wrapper
        url = bucket.url

        def __getattr__(self, name):
            method = getattr(bucket, name)

            def spied(key, *a, **kw):
                asked.append((name, key))
                return method(key, *a, **kw)

            return spied if name in ("get", "list") else method

    cache = Cache(CountingBucket(Spy()), refresh=0.0, budget=1e9)
    entry = cache.job(job)
    running = {**entry, "status": {**entry["status"], "terminal": False, "state": "running"}}
    chunks = [i.key for i in bucket.list(keys.train_log_prefix(job, 2))]
    asked.clear()
    window_section(cache, job, running, None)
    assert {("get", c) for c in chunks} <= set(asked)
    for _ in range(2):
        asked.clear()
        window_section(cache, job, running, None)
        assert asked == [("list", keys.train_log_prefix(job, 2))], asked
    new = keys.train_log_key(job, 2, len(chunks))
    bucket.put(new, b"step 7/6 loss=0.01 valid_acc=1.0\n<script>alert(1)</script>\n", "text/plain")
    asked.clear()
    shown = str(window_section(cache, job, running, None))
    assert asked == [("list", keys.train_log_prefix(job, 2)), ("get", new)], asked
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown and "<script>alert" not in shown  # text, never markup
    assert "step 7/6 loss=0.01" in shown and '"x":[1.0,2.0,3.0,4.0,5.0,6.0,7.0]' in shown
    # a third attempt just queued: its column waits for the hosts, and the report on the page is attempt 2's
    later = {**entry, "status": {**entry["status"], "terminal": False, "state": "queued", "attempt": 3,
                                 "progress": None, "error": None}}
    shown = str(window_section(cache, job, later, None))
    heads = [text_of(h) for h in re.findall(r'<th colspan="6" class="attempt [a-z]*">(.*?)</th>', shown, re.S)]
    assert heads == ["attempt 1: failed (preflight at preflight/host-b)", "attempt 2: succeeded", "attempt 3: queued"]
    assert shown.count('<td colspan="6" class="check">not reported yet</td>') == 2
    assert "<h2>Report <small>(attempt 2's; attempt 3 writes its own when it ends)</small></h2>" in shown


def test_a_log_fed_in_chunks_reads_as_a_terminal_shows_it():
    """Chunks cut lines, `\\r\\n` and UTF-8 characters anywhere; the follower's tail and metrics are the same."""
    from bucketrun.handlers.ui.window import LogFollower, step_metrics

    log = ("Fetching\r\n\rbar 10%\rbar 50%\rbar 99%\n"
           "step 1/3 loss=0.9 acc=0.5 \u00e9t\u00e9\n"
           "{'loss': 0.7, 'learning_rate': 5e-05, 'step': 2}\n"
           "Step: 3 loss=nan eval.loss=1e-3\n"
           "eval 40%\reval 80%").encode()
    whole = LogFollower()
    whole.feed(log)
    for cut in range(1, len(log)):
        f = LogFollower()
        f.feed(log[:cut])
        f.feed(log[cut:])
        assert f.view() == whole.view(), cut
    tail, by_step, last = whole.view()
    assert tail == ["Fetching", "bar 99%", "step 1/3 loss=0.9 acc=0.5 \u00e9t\u00e9",
                    "{'loss': 0.7, 'learning_rate': 5e-05, 'step': 2}", "Step: 3 loss=nan eval.loss=1e-3", "eval 80%"]
    assert by_step == {1: {"loss": 0.9, "acc": 0.5}, 2: {"loss": 0.7, "learning_rate": 5e-05},
                       3: {"loss": None, "eval.loss": 0.001}}
    assert last == 3
    assert step_metrics(["resumed from step 3", "no step here loss=1"]) == ({}, 3)
