"""The fleet section of a job page in `bucketrun ui`: real fleets (the real worker processes, several workers each,
shards of 50) on the folder bucket, read by the real server and checked as a person reads the page: each worker's
state (a killed process's workers stale), done/total, the ETA while it runs, leases in flight and expired, the
shard strip's proportions against the bucket's own listings, the dead letter and its error, an ended fleet with no
alive worker and its final (non-zero) rate, and what a re-read costs in requests."""

from __future__ import annotations

import html as htmllib
import os
import random
import re
import signal
import subprocess
import time

import pytest

from bucketrun.events import codec, keys
from bucketrun.events.fleet.instances import record_instance
from bucketrun.events.fleet.status import covered_items
from bucketrun.events.storage import open_bucket
from bucketrun.handlers.ui import fleet as ui_fleet
from bucketrun.handlers.ui import views
from bucketrun.handlers.jobcache import Cache, CountingBucket
from bucketrun.local_sim import fleet_harness as harness

from conftest import wait_for
from test_ui import Server, calls

SHARD = 50


class Recording:
    """The bucket, each read recorded as (method, key or prefix)."""

    def __init__(self, bucket) -> None:
        self._bucket, self.url, self.seen = bucket, bucket.url, []

    def __getattr__(self, name: str):
        method = getattr(self._bucket, name)

        def recorded(*args, **kwargs):
            self.seen.append((name, args[0] if args else kwargs.get("prefix", "")))
            return method(*args, **kwargs)

        return recorded


def manifest(options: dict, n_workers: int, lease_s: float = 4, attempts: int = 3, heartbeat_s: float = 1) -> dict:
    return {"kind": "fleet", "items": {"file": "items.jsonl"}, "processor": {"name": "noop", "options": options},
            "shard_size": SHARD, "heartbeat_s": heartbeat_s, "lease_s": lease_s, "max_item_attempts": attempts,
            "resources": {"heartbeat_s": 1, "stall_after_s": 120}, "workers": {"count": n_workers}}


def put_items(bucket, n: int) -> list[str]:
    items = [f"item-{i:05d}" for i in range(n)]
    bucket.put("items.jsonl", "\n".join(codec.dumps(x).decode() for x in items).encode())
    return items


def spawn(url: str, job: str, ids: list[str], log) -> subprocess.Popen:
    return subprocess.Popen(harness.worker_cmd(url, job, ids, grace_s=5), stdout=subprocess.DEVNULL,
                            stderr=open(log, "ab"))  # noqa: SIM115 - handed to the child


def stop_all(procs) -> None:
    for p in procs:
        if p.poll() is None:
            os.kill(p.pid, signal.SIGCONT)
            p.kill()
        p.wait()


def fleet_html(page: str) -> str:
    return page[page.index('<section class="fleet">'):page.index("</section>")]


def workers(page: str) -> dict[str, list[str]]:
    """The worker table as {worker: [cell text, ...]}."""
    out = {}
    for row in re.findall(r'<tr class="worker worker-[a-z]+">(.*?)</tr>', fleet_html(page), re.S):
        cells = [htmllib.unescape(re.sub(r"<[^>]+>", "", c)).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>",
                                                                                      row, re.S)]
        out[cells[0]] = cells
    return out


def cell(page: str, cls: str) -> str:
    m = re.search(rf'<td class="{cls}[^"]*">(.*?)</td>', fleet_html(page), re.S)
    return htmllib.unescape(re.sub(r"<[^>]+>", "", m[1])).strip().replace("\n", "")


def strip(page: str) -> dict[str, float]:
    """Percent of the strip's width per state."""
    widths = dict.fromkeys(ui_fleet.STATES, 0.0)
    for state, w in re.findall(r'<span class="s-([a-z]+)" style="width:([\d.]+)%"', fleet_html(page)):
        widths[state] += float(w)
    return widths


def legend(page: str) -> dict[str, int]:
    return {s: int(n) for s, n in re.findall(r'<b class="n-([a-z]+)">(\d+)</b>', fleet_html(page))}


def text(page: str) -> str:
    """The fleet section as a person reads it (for failure messages and the report)."""
    t = re.sub(r"<script.*?</script>", "[chart: items/s]", fleet_html(page), flags=re.S)
    t = re.sub(r"</tr>|</h3>|</p>|</div>", "\n", t)
    t = htmllib.unescape(re.sub(r"<[^>]+>", " ", t))
    return "\n".join(re.sub(r"\s+", " ", line).strip() for line in t.splitlines() if line.strip())


def test_a_running_fleet_with_a_killed_process(tmp_path):
    """Two processes of three workers, shards of 50; one process is killed -9 mid-fleet. Its workers show stale,
    the others alive, with done/total and an ETA; its leases expire. Then the live process is paused, so the
    bucket holds still: the strip's proportions are the listings', a load within --refresh costs nothing, and a
    load after it re-lists and reads nothing else (every done marker is already known)."""
    url = open_bucket(str(tmp_path / "bucket")).url
    bucket = open_bucket(url)
    n = 6000
    items = put_items(bucket, n)
    failing = items[25::100]  # an item in every other shard raises
    # beats every 2 s (stale past 4 s: a loaded machine's late beat is not taken for a death), leases of 4 s
    job = harness.start_job(url, manifest({"sleep_s": 0.02, "fail_items": failing}, 6, lease_s=4, heartbeat_s=2))
    ids = {"a": ["wa0", "wa1", "wa2"], "b": ["wb0", "wb1", "wb2"]}
    procs = {p: spawn(url, job, ids[p], tmp_path / f"{p}.log") for p in ids}
    server = None
    try:
        done_prefix = keys.fleet_done_prefix(job)
        wait_for(lambda: sum(1 for _ in bucket.list(done_prefix)) >= 8, timeout=60)
        procs["b"].kill()
        procs["b"].wait()
        time.sleep(4.5)  # past 2 x heartbeat_s (stale) and lease_s (its leases expired)
        # the launcher's record of an instance with its $/h (a local fleet has none)
        record_instance(bucket, job, {"instance_id": "pod-1", "worker": "wa0", "provider": "runpod",
                                      "price_per_hour": 0.69, "detail": {}}, 1)
        server = Server(url, "--refresh", "3", "--budget", "100000")  # a page render on a loaded CI machine: < 3 s
        page = server.get(f"/jobs/{job}").text
        first = calls(page)
        shown = text(page)
        rows = workers(page)
        assert sorted(rows) == sorted(ids["a"] + ids["b"]), shown
        assert {rows[w][3] for w in ids["b"]} == {"stale"}, shown  # the state column
        assert {rows[w][3] for w in ids["a"]} == {"alive"}, shown
        assert all(rows[w][1] == "local" for w in rows), shown  # the backend
        # failures and the last error: each worker with two shards under way or done has met a raising item; a
        # failure counts once its shard commits (a killed worker's last shard never did)
        errors = [w for w, r in rows.items() if r[9].startswith("ValueError: injected failure on item-")]
        assert errors and all(int(rows[w][8]) >= 1 for w in errors if w in ids["a"]), shown
        assert int(cell(page, "failed")) >= len(errors), shown
        assert rows["wa0"][10] == "0.690" and rows["wa1"][10] == "-", shown  # $/h
        # the shard under way and for how long (a worker between two shards at its beat shows none)
        assert any(re.fullmatch(r"\d{9}-\d{9}", rows[w][4]) and re.fullmatch(r"\d+s", rows[w][5])
                   for w in ids["a"]), shown
        assert all(rows[w][4].startswith("was on") or rows[w][4] == "-" for w in ids["b"]), shown
        done_text = cell(page, "items-done")
        assert re.fullmatch(rf"\d+/{n} \([\d.]+%\)", done_text), shown
        assert 400 <= int(done_text.split("/")[0]) < n, shown
        assert re.fullmatch(r"\d+(s|m|\.\dh)", cell(page, "eta")), shown  # an ETA, the fleet still has work
        assert re.fullmatch(r"[\d.]+ items/s", cell(page, "rate")) and not cell(page, "rate").startswith("0.00"), \
            shown
        assert "3 alive of 6" in cell(page, "workers-count"), shown
        leases = re.fullmatch(r"(\d+) in flight, (\d+) expired", cell(page, "leases"))
        assert leases and int(leases[2]) >= 1, shown  # the killed workers' shards, not yet taken over
        assert '<div class="chart">' in page

        # hold the bucket still: the live process paused (its workers go stale too; nothing is written)
        os.kill(procs["a"].pid, signal.SIGSTOP)
        time.sleep(3.2)
        page = server.get(f"/jobs/{job}").text  # a refresh: it reads whatever changed before the pause
        before = calls(page)
        page = server.get(f"/jobs/{job}").text  # within --refresh: from the cache
        assert calls(page) == before
        time.sleep(3.2)
        page = server.get(f"/jobs/{job}").text  # after --refresh: listings only
        delta = calls(page) - before
        # the job's own re-read (its transitions' listing, progress.json, the log tail) and three listings of
        # the fleet (done/, leases/, heartbeats/); none of the done markers, none of the unchanged heartbeats
        print("requests: first load", first, "re-read after --refresh", delta)
        assert 3 <= delta <= 6, delta
        shown = text(page)

        # the same re-read in-process, request by request: the fleet's part of it is its three listings
        recorder = Recording(bucket)
        cache = Cache(CountingBucket(recorder), refresh=0.2, budget=1e6)
        views.job_page(cache, job, views.Links())
        recorder.seen.clear()
        time.sleep(0.3)
        views.job_page(cache, job, views.Links())
        fleet_prefix = keys.fleet_prefix(job)
        assert sorted(c for c in recorder.seen if c[1].startswith(fleet_prefix)) == [
            ("list", keys.fleet_done_prefix(job)), ("list", keys.fleet_heartbeats_prefix(job)),
            ("list", keys.fleet_leases_prefix(job))], recorder.seen

        # the strip against the bucket's own listings (no partial commits here: every shard is the plan's)
        done = [s for s in (keys.fleet_shard_of(i.key, done_prefix) for i in bucket.list(done_prefix)) if s]
        lease_prefix = keys.fleet_leases_prefix(job)
        held = [s for s in (keys.fleet_shard_of(i.key, lease_prefix) for i in bucket.list(lease_prefix))
                if s and s not in done]
        counts = legend(page)
        assert counts["done"] == len(done) and counts["leased"] + counts["expired"] == len(held), shown
        assert counts["free"] == n // SHARD - len(done) - len(held), shown
        widths = strip(page)
        assert widths["done"] == pytest.approx(100.0 * covered_items(done) / n, abs=0.01)
        assert widths["leased"] + widths["expired"] == pytest.approx(100.0 * SHARD * len(held) / n, abs=0.01)
        assert widths["free"] == pytest.approx(100.0 - 100.0 * SHARD * (len(done) + len(held)) / n, abs=0.01)
        assert sum(widths.values()) == pytest.approx(100.0, abs=0.01)
        assert cell(page, "items-done").startswith(f"{covered_items(done)}/{n}")
        print(shown)
    finally:
        if server:
            server.stop()
        stop_all(procs.values())


def test_an_ended_fleet_with_a_dead_letter(tmp_path):
    """A poison item hard-exits its worker process (restarted under the same ids, as a pod would be); alone in
    quarantine it kills its process once more and is dead-lettered (max_item_attempts 1). Another item raises. The
    ended fleet's page names the dead letter and its error, shows no worker alive, its final average rate (not 0),
    done/total and a strip all done; and an ended fleet is never read again."""
    url = open_bucket(str(tmp_path / "bucket")).url
    bucket = open_bucket(url)
    n = 1500
    items = put_items(bucket, n)
    job = harness.start_job(url, manifest({"sleep_s": 0.002, "crash_items": [items[737]],
                                           "fail_items": [items[12]]}, 6, lease_s=10, attempts=1))
    ids = {"a": ["wa0", "wa1", "wa2"], "b": ["wb0", "wb1", "wb2"]}
    procs = {p: spawn(url, job, ids[p], tmp_path / f"{p}.log") for p in ids}
    crashed, server = 0, None
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and any(p.poll() is None or p.returncode == 70 for p in procs.values()):
            for name, p in procs.items():
                if p.poll() == 70:  # the poison item: restart under the same ids
                    crashed += 1
                    procs[name] = spawn(url, job, ids[name], tmp_path / f"{name}.log")
            time.sleep(0.05)
        result = harness.wait_finished(url, job, timeout_s=30, poll_s=0.2)
        assert result["state"] == "succeeded", result["detail"]
        assert crashed >= 1
        assert [d["index"] for d in result["dataset"]["dead_letters"]] == [737]

        server = Server(url, "--refresh", "0.2", "--budget", "100000")
        page = server.get(f"/jobs/{job}").text
        shown = text(page)
        rows = workers(page)
        assert sorted(rows) == sorted(ids["a"] + ids["b"]), shown
        assert "alive" not in {r[3] for r in rows.values()}, shown
        assert re.search(r"\b0 alive of 6\b", cell(page, "workers-count")), shown
        rate = re.fullmatch(r"([\d.]+) items/s average over \S+ \(final\)", cell(page, "rate"))
        assert rate and float(rate[1]) > 0, shown
        assert cell(page, "eta") == "ended succeeded"
        assert cell(page, "items-done").startswith(f"{n}/{n}"), shown
        dead = re.findall(r'<tr class="dead-letter">(.*?)</tr>', fleet_html(page), re.S)
        assert len(dead) == 1 and items[737] in dead[0] and "737" in dead[0], shown
        assert "killed its worker process" in dead[0], shown  # its error
        assert cell(page, "dead-count") == "1"
        assert re.fullmatch(r"\d+ done; 30 planned of 50 items, \d+ more split off or left over by the workers",
                            cell(page, "shards")), shown
        assert cell(page, "failed") == "1", shown  # the raising item (a worker's last error is its own life's:
        # the process that raised may be the one the poison item killed, whose restart begins its counts anew)
        assert strip(page) == {"done": pytest.approx(100.0), "leased": 0, "expired": 0, "free": 0}
        first = calls(page)
        time.sleep(0.5)
        assert calls(server.get(f"/jobs/{job}").text) == first  # ended: never read again
        print(shown)
    finally:
        if server:
            server.stop()
        stop_all(procs.values())


def test_the_strip_of_a_ten_thousand_shard_plan_is_at_most_500_segments():
    """507,387 items in shards of 50 (10,148 shards), done, leased, expired and free scattered: the strip is cut
    into equal bins showing each bin's dominant state, while the counts stay exact; the items/s series adds up to
    the items done."""
    total = 507_387
    plan = {"total": total, "shard_size": SHARD}
    base = ui_fleet.base_shards(plan)
    assert len(base) == 10_148
    rng = random.Random(7)
    done = {s: 1_000_000.0 + i for i, s in enumerate(base[:6000])}
    leases = {s: rng.choice(["leased", "expired", "free"]) for s in rng.sample(base[6000:], 900)}
    m = ui_fleet.shard_map(total, done, leases, base)
    assert m["binned"] and len(m["segments"]) <= ui_fleet.MAX_SEGMENTS
    assert sum(s["percent"] for s in m["segments"]) == pytest.approx(100.0)
    assert m["items"]["done"] == 6000 * SHARD and sum(m["items"].values()) == total
    assert m["shards"]["done"] == 6000 and sum(m["shards"].values()) == len(base)
    assert m["segments"][0]["state"] == "done"  # the first 6,000 shards are done: the strip's left side
    series = ui_fleet.rate_series(total, done, None)
    assert len(series["x"]) <= ui_fleet.CHART_BINS + 1
    assert sum(v * series["width_s"] for v in series["items_per_s"]) == pytest.approx(6000 * SHARD, rel=1e-3)
