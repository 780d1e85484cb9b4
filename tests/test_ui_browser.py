"""The dashboard in a real browser: Playwright drives Debian's chromium (never a downloaded one) over a real
`bucketrun ui` server on loopback, reading a bucket made once for the module by the real code paths
(tests/ui_scenario.py): a succeeded transcription, a training window that failed preflight on one host then
succeeded, a rejected manifest, a fleet frozen in progress with a stale worker and a dead letter, a job waiting in
the inbox, and scripts in request ids and a webhook URL. Each test asserts what a person sees and saves full-page
screenshots under $BUCKETRUN_TEST_ARTIFACTS (default: the test's tmp directory).

Without /usr/bin/chromium the module skips, except in CI (CI=true), where it fails: `./dev.sh test` installs it."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest

import ui_scenario
from bucketrun.events import codec, keys
from bucketrun.events.storage import open_bucket
from bucketrun.handlers.client import submit
from test_ui import Server

CHROMIUM = Path("/usr/bin/chromium")
# What works here: as root, on a closed network, with no GPU.
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
IN_CI = os.environ.get("CI", "").lower() == "true"
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
    t = Tab(browser, artifacts, request.node.name.removeprefix("test_")[:60])
    try:
        yield t
    finally:
        try:
            t.shot("end")
        finally:
            t.close()


def row(page, job_id: str):
    return page.locator("tr.job", has=page.locator(f'a[href$="/jobs/{job_id}"]'))


def text_of(locator) -> str:
    return " ".join(locator.inner_text().split())


def test_the_jobs_page_shows_every_job_with_its_kind_and_state_and_filters(server, scenario, tab):
    page = tab.open(server.base + "/")
    expect = {scenario.transcription: ("transcribe", "succeeded"), scenario.window: ("train_window", "succeeded"),
              scenario.rejected: ("-", "rejected"), scenario.fleet: ("fleet", "running"),
              scenario.waiting: ("transcribe", "waiting")}
    for job_id, (kind, state) in expect.items():
        r = row(page, job_id)
        assert r.count() == 1, job_id
        assert r.locator("td.kind").inner_text() == kind and r.locator("td.state").inner_text() == state, job_id
    # newest first: the waiting job was dropped last, the transcription first
    ids = page.locator("tr.job td:first-child a").all_inner_texts()
    assert ids.index(scenario.waiting) < ids.index(scenario.fleet) < ids.index(scenario.transcription)
    assert "inbox/bad-scheme.json" in text_of(row(page, scenario.rejected))  # where the rejected one came from
    tab.shot("all")
    page.locator(".filters a", has_text=re.compile(r"^waiting$")).click()
    page.wait_for_url(re.compile(r"state=waiting"))
    assert page.locator("tr.job td:first-child a").all_inner_texts() == [scenario.waiting]
    page.locator(".filters a", has_text=re.compile(r"^rejected$")).click()
    page.wait_for_url(re.compile(r"state=rejected"))
    assert page.locator("tr.job td:first-child a").all_inner_texts() == [scenario.rejected]
    tab.shot("rejected")
    page.goto(server.base + "/")
    page.fill('input[name="q"]', scenario.fleet[:21])
    page.locator("form button").click()
    page.wait_for_url(re.compile(r"q="))
    assert page.locator("tr.job td:first-child a").all_inner_texts() == [scenario.fleet]
    assert tab.errors == []


def test_a_succeeded_transcriptions_artifacts_download_with_the_sha256_shown(server, scenario, tab):
    page = tab.open(server.base + "/")
    row(page, scenario.transcription).locator("a").first.click()
    page.wait_for_url(f"**/jobs/{scenario.transcription}")
    assert text_of(page.locator("main h1")) == f"Job {scenario.transcription}"
    assert page.locator("b.state-succeeded").inner_text() == "succeeded"
    states = page.locator("table.timeline tbody tr td:nth-child(3)").all_inner_texts()
    assert states == ["submitted", "queued", "launched", "running", "succeeded"]
    arts = page.locator("table.artifacts tbody tr")
    names = [Path(k).name for k in arts.locator("td:first-child").all_inner_texts()]
    assert sorted(names) == ["transcript.json", "transcript.srt", "transcript.txt", "transcript.vtt"]
    tab.shot("job")
    for i in range(arts.count()):
        a = arts.nth(i)
        shown = a.locator("code.sha256").inner_text()
        size = int(a.locator("td:nth-child(2)").inner_text())
        with page.expect_download() as dl:
            a.locator("a", has_text="download").click()
        got = Path(dl.value.path()).read_bytes()
        assert hashlib.sha256(got).hexdigest() == shown and len(got) == size, names[i]
        assert dl.value.suggested_filename == names[i]
    srt = next(i for i, n in enumerate(names) if n == "transcript.srt")
    with page.expect_download() as dl:
        arts.nth(srt).locator("a", has_text="download").click()
    heard = Path(dl.value.path()).read_text().lower()
    assert "hello from the" in heard and "-->" in heard, heard  # the real model heard the speech
    assert tab.errors == []


def test_a_script_in_a_request_id_or_a_webhook_url_is_shown_as_text_and_never_runs(server, scenario, tab):
    """On the jobs page the transcription's source is its request_id; the waiting job's page shows its manifest
    (request_id and webhook URL). Each probe would set window.__xss and open a dialog. The jobs page is also
    watched through a live update (the event stream replaces <main>'s HTML, where an <img onerror> would run)."""
    page = tab.open(server.base + "/")
    assert page.get_by_text(f"request:{ui_scenario.XSS_REQUEST}", exact=True).is_visible()
    tab.no_script_ran()
    assert page.evaluate("document.body.hasAttribute('data-live')")  # the live server pushes changed pages
    # Make the jobs page change, so the server pushes its new <main>: a manifest dropped into the inbox (a new
    # waiting row), then taken away again (the row goes), leaving the bucket as the other tests expect it.
    bucket = open_bucket(scenario.url)
    extra, _ = submit(bucket, codec.dumps({"kind": "transcribe", "source": {"key": "media/hello.wav"}}))
    try:
        row(page, extra).wait_for()
    finally:
        bucket.delete(keys.inbox_key(f"{extra}.json"))
    row(page, extra).wait_for(state="detached")
    assert page.get_by_text(f"request:{ui_scenario.XSS_REQUEST}", exact=True).is_visible()
    tab.no_script_ran()
    tab.shot("jobs")
    page.goto(server.base + f"/jobs/{scenario.transcription}")
    assert ui_scenario.XSS_REQUEST in page.locator("main").inner_text()
    tab.no_script_ran()
    page.goto(server.base + f"/jobs/{scenario.waiting}")
    manifest = page.locator("main pre").last.inner_text()
    for probe in (ui_scenario.XSS_WAITING, ui_scenario.XSS_WEBHOOK):
        assert probe.replace('"', '\\"') in manifest, manifest  # as JSON text, its quotes escaped
    assert page.locator("main pre").last.is_visible()
    tab.shot("waiting")
    tab.no_script_ran()
    assert tab.errors == []


def test_the_waiting_and_the_rejected_job_pages_say_why(server, scenario, tab):
    page = tab.open(server.base + f"/jobs/{scenario.waiting}")
    head = text_of(page.locator("main p").first)
    assert "kind transcribe" in head and "state waiting" in head and "attempt 0" in head, head
    inbox = f"inbox/{scenario.waiting}.json"
    assert page.get_by_text(f"waiting in the inbox ({inbox}); no dispatcher has taken it in yet").is_visible()
    assert page.locator("table.timeline tbody tr").count() == 0
    tab.shot("waiting")
    page.goto(server.base + f"/jobs/{scenario.rejected}")
    assert page.locator("b.state-rejected").inner_text() == "rejected"
    error = text_of(page.locator(".error"))
    assert "bad_input" in error and "source.url" in error and "'ftp' is not allowed" in error, error
    assert ui_scenario.BAD_SCHEME not in page.locator("main").inner_text()  # a rejection never echoes input
    states = page.locator("table.timeline tbody tr td:nth-child(3)").all_inner_texts()
    assert states == ["rejected"], states  # refused at the door: its one transition
    tab.shot("rejected")
    assert tab.errors == []


def test_the_hosts_page_shows_both_agents_with_their_labels(server, scenario, tab):
    page = tab.open(server.base + "/")
    page.locator("nav a", has_text="Hosts").click()
    page.wait_for_url("**/hosts")
    hosts = page.locator("tr.host")
    assert hosts.count() == 2
    labels = sorted(text_of(h.locator("td:nth-child(4)")) for h in hosts.all())
    assert labels == ["host-a", "host-b"]
    assert [h.locator("td:nth-child(2)").inner_text() for h in hosts.all()] == ["offline", "offline"]  # stopped
    for h in hosts.all():
        assert "train_window" in h.locator("td:last-child").inner_text()
    tab.shot("hosts")
    assert tab.errors == []
