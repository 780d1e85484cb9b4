"""The dashboard in a real browser: Playwright drives Debian's chromium (never a downloaded one) over a real
`bucketrun ui` server on loopback, reading a bucket made once for the module by the real code paths
(tests/ui_scenario.py): a succeeded transcription, a training window that failed preflight on one host then
succeeded, a rejected manifest, a fleet frozen in progress with a stale worker and a dead letter, a job waiting in
the inbox, and scripts in request ids and a webhook URL. Each test asserts what a person sees and saves full-page
screenshots under $BUCKETRUN_TEST_ARTIFACTS (default: the test's tmp directory).

Without /usr/bin/chromium the module skips, except in CI (CI=true), where it fails: `./dev.sh test` installs it."""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import re
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin

import pytest

from bucketrun.events import codec, keys
from bucketrun.events.fleet.status import fleet_status
from bucketrun.events.storage import open_bucket
from bucketrun.handlers.client import submit

import ui_scenario
from test_ui import BUCKETRUN, Server

CHROMIUM = Path("/usr/bin/chromium")
# What works here: as root, on a closed network, with no GPU.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false")  # CI=true: chromium must be there
TIMEOUT_MS = 15_000


@pytest.fixture(scope="module")
def chromium() -> str:
    if not CHROMIUM.exists():
        if IN_CI:
            pytest.fail(f"{CHROMIUM} is missing: ./dev.sh test installs Debian's chromium (need_debs)")
        pytest.skip(f"{CHROMIUM} is missing (./dev.sh test installs it; `playwright install` is never used)")
    return str(CHROMIUM)


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> Path:
    given = os.environ.get("BUCKETRUN_TEST_ARTIFACTS")
    out = Path(given) / "ui_browser" if given else tmp_path_factory.mktemp("ui_browser_artifacts")
    out.mkdir(parents=True, exist_ok=True)
    return out


@pytest.fixture(scope="module")
def scenario(chromium, tmp_path_factory):
    s = ui_scenario.build(tmp_path_factory.mktemp("ui_browser"))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture(scope="module")
def server(scenario):
    srv = Server(scenario.url, "--refresh", "1", "--budget", "6000")  # a page change shows within a second or two
    try:
        yield srv
    finally:
        srv.stop()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def snapshot(scenario):
    """`bucketrun ui --snapshot` (the real command) writes dashboard/ into the folder bucket; a static file server
    over the bucket's folder stands in for a public bucket domain, so the pages' relative links (other pages,
    artifacts as bucket keys) resolve as they would there. Yields (the printed file:// URL, the server's URL)."""
    done = subprocess.run([BUCKETRUN, "--bucket", scenario.url, "ui", "--snapshot", "--print-url"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    url = done.stdout.strip()
    assert url == (scenario.root / "dashboard" / "index.html").as_uri(), done.stdout
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(scenario.root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield url, f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


@dataclass
class Site:
    """Where a person opens each page: the live server's routes, or the snapshot's files."""

    kind: str  # "live" or "snapshot"
    base: str

    @property
    def live(self) -> bool:
        return self.kind == "live"

    def jobs(self) -> str:
        return self.base + ("/" if self.live else "/dashboard/index.html")

    def job(self, job_id: str) -> str:
        return self.base + (f"/jobs/{job_id}" if self.live else f"/dashboard/jobs/{job_id}.html")

    def hosts(self) -> str:
        return self.base + ("/hosts" if self.live else "/dashboard/hosts.html")


@pytest.fixture(scope="module", params=["live", "snapshot"])
def site(request) -> Site:
    if request.param == "live":
        return Site("live", request.getfixturevalue("server").base)
    return Site("snapshot", request.getfixturevalue("snapshot")[1])


@pytest.fixture(scope="module")
def browser(chromium):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            yield b
        finally:
            b.close()


class Tab:
    """A page in a fresh browser context that records every dialog (and dismisses it) and every page error."""

    def __init__(self, browser, artifacts: Path, name: str) -> None:
        self.context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
        self.context.set_default_timeout(TIMEOUT_MS)
        self.page = self.context.new_page()
        self.artifacts, self.name = artifacts, name
        self.dialogs: list[str] = []
        self.errors: list[str] = []
        self.page.on("dialog", lambda d: (self.dialogs.append(d.message), d.dismiss()))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))

    def open(self, url: str):
        self.page.goto(url, wait_until="load")  # a live page keeps its event stream open: never "networkidle"
        return self.page

    def shot(self, label: str) -> Path:
        path = self.artifacts / f"{self.name}-{label}.png"
        self.page.screenshot(path=str(path), full_page=True)
        return path

    def shot_of(self, locator, label: str) -> Path:
        """One part of the page, at its own size (a long page's full-page shot is hard to read)."""
        path = self.artifacts / f"{self.name}-{label}.png"
        locator.screenshot(path=str(path))
        return path

    def no_script_ran(self) -> None:
        assert self.dialogs == [], self.dialogs
        assert self.page.evaluate("window.__xss === undefined"), self.page.evaluate("String(window.__xss)")
        # nothing from the probes became an element or a handler
        assert self.page.evaluate("[...document.scripts].every(s => !s.textContent.includes('__xss'))")
        assert self.page.evaluate("document.querySelectorAll('[onerror]').length") == 0

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def tab(browser, artifacts, request):
    param = getattr(getattr(request.node, "callspec", None), "id", "")
    name = request.node.originalname.removeprefix("test_")[:50] + (f"-{param}" if param else "")
    t = Tab(browser, artifacts, name)
    failed = request.session.testsfailed
    try:
        yield t
    finally:
        try:
            if request.session.testsfailed > failed:  # the page as it was when the test failed
                t.shot("failed")
        finally:
            t.close()


def row(page, job_id: str):
    return page.locator("tr.job", has=page.locator(f'td:first-child a[href*="{job_id}"]'))


def text_of(locator) -> str:
    return " ".join(locator.inner_text().split())




def open_job(site: Site, tab: Tab, job_id: str):
    """The job's page as a person reaches it: from the jobs page, by its link."""
    page = tab.open(site.jobs())
    row(page, job_id).locator("td:first-child a").click()
    page.wait_for_url(f"**/jobs/{job_id}*")
    assert text_of(page.locator("main h1")) == f"Job {job_id}"
    return page


def test_the_jobs_page_shows_every_job_with_its_kind_and_state(site, scenario, tab):
    page = tab.open(site.jobs())
    expect = {scenario.transcription: ("transcribe", "succeeded"), scenario.window: ("train_window", "succeeded"),
              scenario.rejected: ("transcribe", "rejected"), scenario.fleet: ("fleet", "running"),
              scenario.waiting: ("transcribe", "waiting")}
    ids = page.locator("tr.job td:first-child a").all_inner_texts()
    assert sorted(ids) == sorted(expect)
    for job_id, (kind, state) in expect.items():
        r = row(page, job_id)
        assert r.locator("td.kind").inner_text() == kind and r.locator("td.state").inner_text() == state, job_id
    # newest first: the waiting job was dropped last, the transcription first
    assert ids.index(scenario.waiting) < ids.index(scenario.fleet) < ids.index(scenario.transcription)
    assert text_of(row(page, scenario.rejected)).count("inbox/bad-scheme.json") == 1  # where it came from
    assert row(page, scenario.fleet).locator("progress").get_attribute("value") == "88"  # 140 of 160 items
    tab.shot("jobs")
    assert tab.errors == []


def test_the_live_jobs_page_filters_by_state_and_searches_by_id(server, scenario, tab):
    page = tab.open(server.base + "/")
    page.locator(".filters a", has_text=re.compile(r"^waiting$")).click()
    page.wait_for_url(re.compile(r"state=waiting"))
    assert page.locator("tr.job td:first-child a").all_inner_texts() == [scenario.waiting]
    page.locator(".filters a", has_text=re.compile(r"^rejected$")).click()
    page.wait_for_url(re.compile(r"state=rejected"))
    assert page.locator("tr.job td:first-child a").all_inner_texts() == [scenario.rejected]
    tab.shot("rejected")
    page.locator(".filters a", has_text=re.compile(r"^fleet$")).click()
    page.wait_for_url(re.compile(r"kind=fleet"))
    assert page.locator("tr.job").count() == 0  # rejected and a fleet: none
    page.goto(server.base + "/")
    page.fill('input[name="q"]', scenario.fleet[:21])
    page.locator("form button").click()
    page.wait_for_url(re.compile(r"q="))
    assert page.locator("tr.job td:first-child a").all_inner_texts() == [scenario.fleet]
    assert tab.errors == []


def test_a_push_keeps_what_the_reader_is_typing_in_the_search_box(server, scenario, tab):
    """A pushed update replaces <main>, search form included: text typed but not yet submitted, and the focus,
    survive it (CI once saw a push wipe the typed prefix, and the empty search listed every job)."""
    page = tab.open(server.base + "/")
    search = page.locator('input[name="q"]')
    search.click()
    search.type(scenario.fleet[:10])
    before = page.evaluate("document.body.getAttribute('data-updated')")
    bucket = open_bucket(scenario.url)
    extra, _ = submit(bucket, codec.dumps({"kind": "transcribe", "source": {"key": "media/hello.wav"}}))
    try:
        row(page, extra).wait_for()  # a push came: the new waiting row
    finally:
        bucket.delete(keys.inbox_key(f"{extra}.json"))
    row(page, extra).wait_for(state="detached")
    assert page.evaluate("document.body.getAttribute('data-updated')") != before
    assert search.input_value() == scenario.fleet[:10]
    assert page.evaluate("document.activeElement && document.activeElement.name") == "q"
    search.type(scenario.fleet[10:21])  # typing goes on where it was
    assert search.input_value() == scenario.fleet[:21]
    assert tab.errors == []


def test_a_transcriptions_artifacts_download_with_the_sha256_shown(site, scenario, tab):
    page = open_job(site, tab, scenario.transcription)
    assert page.locator("main b.state-succeeded").first.inner_text() == "succeeded"
    states = page.locator("table.timeline tbody tr td:nth-child(3)").all_inner_texts()
    assert states == ["submitted", "queued", "launched", "running", "succeeded"]
    arts = page.locator("table.artifacts tbody tr")
    names = [Path(k).name for k in arts.locator("td:first-child").all_inner_texts()]
    assert sorted(names) == ["transcript.json", "transcript.srt", "transcript.txt", "transcript.vtt"]
    tab.shot("job")
    got = {}
    for i, name in enumerate(names):
        a = arts.nth(i)
        shown = a.locator("code.sha256").inner_text()
        size = int(a.locator("td:nth-child(2)").inner_text())
        link = a.locator("a", has_text="download")
        if site.live:  # the server streams it as an attachment: a download
            with page.expect_download() as dl:
                link.click()
            data = Path(dl.value.path()).read_bytes()
            assert dl.value.suggested_filename == name
        else:  # a bucket key relative to the page: whatever serves the bucket serves it
            response = page.context.request.get(urljoin(page.url, link.get_attribute("href")))
            assert response.ok, response.status
            data = response.body()
        assert re.fullmatch(r"[0-9a-f]{64}", shown) and hashlib.sha256(data).hexdigest() == shown, name
        assert len(data) == size, name
        got[name] = data
    heard = got["transcript.srt"].decode().lower()
    assert "hello from the" in heard and "-->" in heard, heard  # the real model heard the speech
    assert tab.errors == []


def test_a_script_in_a_request_id_or_a_webhook_url_is_shown_as_text_and_never_runs(site, scenario, tab):
    """On the jobs page the transcription's source is its request_id; the waiting job's page shows its manifest
    (request_id and webhook URL). Each probe would set window.__xss and open a dialog. On the live server the jobs
    page is also watched through a pushed update (the event stream replaces <main>'s HTML, where an
    <img onerror> would run)."""
    page = tab.open(site.jobs())
    shown = page.get_by_text(f"request:{ui_scenario.XSS_REQUEST}", exact=True)
    assert shown.is_visible()
    tab.no_script_ran()
    if site.live:
        assert page.evaluate("document.body.hasAttribute('data-live')")
        # Make the jobs page change, so the server pushes its new <main>: a manifest dropped into the inbox (a new
        # waiting row), then taken away again (the row goes), leaving the bucket as the other tests expect it.
        bucket = open_bucket(scenario.url)
        extra, _ = submit(bucket, codec.dumps({"kind": "transcribe", "source": {"key": "media/hello.wav"}}))
        try:
            row(page, extra).wait_for()
        finally:
            bucket.delete(keys.inbox_key(f"{extra}.json"))
        row(page, extra).wait_for(state="detached")
        assert page.evaluate("document.body.getAttribute('data-updated')")
        assert shown.is_visible()
        tab.no_script_ran()
    tab.shot("jobs")
    page = open_job(site, tab, scenario.transcription)
    assert f"from request:{ui_scenario.XSS_REQUEST}" in text_of(page.locator("main p").first)
    tab.no_script_ran()
    page = open_job(site, tab, scenario.waiting)
    manifest = page.locator("main pre").last
    assert manifest.is_visible()
    for probe in (ui_scenario.XSS_WAITING, ui_scenario.XSS_WEBHOOK):
        assert probe.replace('"', '\\"') in manifest.inner_text()  # as JSON text, its quotes escaped
    tab.shot("waiting")
    tab.no_script_ran()
    assert tab.errors == []


def test_the_waiting_and_the_rejected_job_pages_say_why(site, scenario, tab):
    page = open_job(site, tab, scenario.waiting)
    head = text_of(page.locator("main p").first)
    assert "kind transcribe" in head and "state waiting" in head and "attempt 0" in head, head
    inbox = f"inbox/{scenario.waiting}.json"
    assert page.get_by_text(f"waiting in the inbox ({inbox}); no dispatcher has taken it in yet").is_visible()
    assert page.locator("table.timeline tbody tr").count() == 0
    tab.shot("waiting")
    page = open_job(site, tab, scenario.rejected)
    assert page.locator("main b.state-rejected").first.inner_text() == "rejected"
    error = text_of(page.locator(".error"))
    assert "bad_input" in error and "source.url" in error and "'ftp' is not allowed" in error, error
    assert ui_scenario.BAD_SCHEME not in page.locator("main").inner_text()  # a rejection never echoes input
    states = page.locator("table.timeline tbody tr td:nth-child(3)").all_inner_texts()
    assert states == ["rejected"], states  # refused at the door: its one transition
    tab.shot("rejected")
    assert tab.errors == []


def test_the_hosts_page_shows_both_agents_with_their_labels(site, scenario, tab):
    page = tab.open(site.jobs())
    page.locator("nav a", has_text="Hosts").click()
    page.wait_for_url(re.compile(r"/hosts(\.html)?$"))
    hosts = page.locator("tr.host")
    assert hosts.count() == 2
    labels = sorted(text_of(h.locator("td:nth-child(4)")) for h in hosts.all())
    assert labels == ["host-a", "host-b"]
    assert [h.locator("td:nth-child(2)").inner_text() for h in hosts.all()] == ["offline", "offline"]  # stopped
    for h in hosts.all():
        assert "train_window" in h.locator("td:last-child").inner_text()
    tab.shot("hosts")
    assert tab.errors == []


def test_the_fleet_page_marks_the_stale_worker_and_shows_the_eta_and_the_dead_letter(site, scenario, tab):
    page = open_job(site, tab, scenario.fleet)
    fleet = page.locator("section.fleet")
    assert fleet.is_visible()
    workers = {text_of(r.locator("td").first): r for r in fleet.locator("table.fleet-workers tr.worker").all()}
    assert sorted(workers) == ["w0000", "w0001", "w0002"]
    stale = workers[scenario.stale_worker].locator("td.state")
    assert stale.inner_text() == "stale" and stale.is_visible()
    assert "stale" in stale.get_attribute("class")  # marked, not only named
    assert stale.evaluate("e => getComputedStyle(e).color") == "rgb(187, 0, 0)"  # in red, as .stale is styled
    for w in scenario.alive_workers:
        assert workers[w].locator("td.state").inner_text() == "alive", w
    assert text_of(fleet.locator("td.workers-count")) == "2 alive of 3"
    eta = text_of(fleet.locator("td.eta"))
    assert re.fullmatch(r"\d+s|\d+m|\d+\.\dh", eta), eta  # a time left, not "-"
    st = fleet_status(open_bucket(scenario.url), scenario.fleet)
    assert st["eta_s"] is not None and st["state"] == "running"
    assert text_of(fleet.locator("td.items-done")).startswith(f"{st['items_done']}/{st['items_total']}")
    assert text_of(fleet.locator("td.dead-count")) == "1"
    dead = fleet.locator("table.dead-letters tr.dead-letter")
    assert dead.count() == 1 and scenario.dead_letter in text_of(dead)
    assert "it killed its worker process" in text_of(dead)
    tab.shot("fleet")
    tab.shot_of(fleet, "fleet-section")
    assert tab.errors == []


def test_the_window_page_names_the_host_that_failed_preflight_in_attempt_1(site, scenario, tab):
    page = open_job(site, tab, scenario.window)
    table = page.locator("section.window table.preflight")
    heads = table.locator("th.attempt").all_inner_texts()
    assert [" ".join(h.split()) for h in heads] == [f"attempt 1: failed (preflight at preflight/{scenario.failed_host})",
                                                     "attempt 2: succeeded"]
    hosts = {text_of(r.locator("th")).split()[0]: r for r in table.locator("tr.host").all()}
    assert sorted(hosts) == ["host-a", "host-b"]
    failed = hosts[scenario.failed_host]
    assert "bad" in failed.locator("th").get_attribute("class")
    cell = failed.locator('td[data-attempt="1"][data-check="cache"]')
    finding = text_of(cell)
    assert cell.is_visible() and "bad" in cell.get_attribute("class")
    assert finding.startswith("FAILED") and "PARTIAL" in finding and "Blob missing" in finding, finding
    assert "tokenizer.json" in finding, finding  # the file whose blob is gone
    # attempt 1's other checks on that host, and every check of the other host and of attempt 2, passed
    for r in hosts.values():
        for c in r.locator("td.check").all():
            if c.evaluate("(e, failed) => e !== failed", cell.element_handle()):
                assert text_of(c).startswith("ok"), text_of(c)
    assert [text_of(c).split()[0] for c in failed.locator('td[data-attempt="2"]').all()] == ["ok"] * 6
    tab.shot("window")
    tab.shot_of(table, "preflight")
    assert tab.errors == []


def test_the_snapshot_opens_from_its_file_url_with_nothing_running(snapshot, scenario, tab):
    """The printed file:// URL opens in a browser: the jobs, and a job page by its relative link."""
    url, _ = snapshot
    page = tab.open(url)
    assert "snapshot taken at" in text_of(page.locator("nav .snapshot"))
    assert sorted(page.locator("tr.job td:first-child a").all_inner_texts()) == sorted(
        [scenario.transcription, scenario.window, scenario.rejected, scenario.fleet, scenario.waiting])
    tab.no_script_ran()
    row(page, scenario.fleet).locator("td:first-child a").click()
    page.wait_for_url(f"file://**/dashboard/jobs/{scenario.fleet}.html")
    stale = page.locator("table.fleet-workers tr.worker", has_text=scenario.stale_worker).locator("td.state")
    assert stale.inner_text() == "stale"
    tab.shot("fleet")
    assert tab.errors == []
