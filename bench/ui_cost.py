"""Benchmark the dashboard's own bill: requests a minute that `bucketrun ui` makes with 10 live jobs and 1 open page.

Why: a dashboard left open all day must not cost more than the jobs it watches. The goal (issue 21) is at most 60
requests a minute with 10 live jobs and one open page at the default settings (--refresh 2, --budget 60).

What, in one run, on moto's S3 server on 127.0.0.1:
  - 10 live transcription jobs written with the real `append_transition` (submitted -> ... -> running) and a
    progress object each; a writer thread moves each job's progress every `--progress-every` seconds (3), so the
    page has real changes to push;
  - the real `bucketrun ui` command in a subprocess, its S3 endpoint pointed at a counting proxy in front of moto
    (tests/fault_proxy.py with no faults): every request the dashboard makes is counted on the wire, and the
    writer's own requests, which go to moto directly, are not;
  - one open page: the jobs page fetched once, then its server-sent event stream held open for `--minutes`
    minutes, as a browser holds it;
  - two configurations side by side in the same run: the defaults (budget 60/min), and the baseline with the
    budget lifted (--budget 1000000), i.e. every live job re-read every --refresh;
  - per configuration: requests in each whole minute (median and max), pushes to the page a minute, and how far
    behind the page was: at each event the page receives (one per --refresh), for each job, the seconds since the
    bucket got a newer progress value than the one the page shows (0 when it shows the newest), median and 90th
    percentile over the run.

Run: python bench/ui_cost.py [--minutes 3]; writes bench/results/ui_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from cloud_path import free_port, start_counted_moto  # noqa: E402
from fault_proxy import FaultProxy  # noqa: E402

BUCKETRUN = str(Path(sys.executable).with_name("bucketrun"))
JOBS = 10


def _seed(bucket, n: int) -> list[str]:
    from bucketrun.events import codec, keys
    from bucketrun.events.lifecycle import JobState, append_transition

    ids = []
    for i in range(n):
        job_id = keys.new_job_id()
        for state in (JobState.SUBMITTED, JobState.QUEUED, JobState.LAUNCHED, JobState.RUNNING):
            detail = {"inbox": {"key": f"inbox/bench-{i}.json"}, "kind": "transcribe"} \
                if state is JobState.SUBMITTED else {}
            append_transition(bucket, job_id, state, writer="bench", detail=detail)
        bucket.put(keys.progress_key(job_id), codec.dumps({"attempt": 1, "stage": "transcribe", "percent": 0.0,
                                                           "updated_at": codec.iso(codec.now())}))
        ids.append(job_id)
        time.sleep(0.002)
    return ids


class Writer(threading.Thread):
    """Moves every job's progress by one percent every `every` seconds; remembers when each value was set."""

    def __init__(self, bucket, ids: list[str], every: float) -> None:
        super().__init__(daemon=True)
        self.bucket, self.ids, self.every = bucket, ids, every
        self.set_at: dict[tuple[str, int], float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        from bucketrun.events import codec, keys

        step = 0
        while not self.stop.wait(self.every):
            step += 1
            for job_id in self.ids:
                self.bucket.put(keys.progress_key(job_id), codec.dumps({
                    "attempt": 1, "stage": "transcribe", "percent": float(step), "updated_at": codec.iso(codec.now())}))
                self.set_at[(job_id, step)] = time.monotonic()


ROW = re.compile(r'<a href="/jobs/([^"]+)">[^<]*</a>(?:(?!</tr>).)*?<progress max="100" value="(\d+)">', re.S)


def one_config(url: str, proxy: FaultProxy, ids: list[str], bucket, minutes: float, budget: float,
               progress_every: float) -> dict:
    env = {**os.environ, "AWS_ENDPOINT_URL_S3": proxy.url}
    port = free_port()
    proc = subprocess.Popen([BUCKETRUN, "--bucket", url, "ui", "--port", str(port), "--budget", str(budget)],
                            env=env, stderr=subprocess.PIPE, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                httpx.get(base + "/static/uplot/LICENSE", timeout=2)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        writer = Writer(bucket, ids, progress_every)
        shown: dict[str, int] = {}
        behind: list[float] = []
        pushes, per_minute = 0, []
        start_count = proxy.counts["forwarded"]
        httpx.get(base + "/", timeout=30)  # the page opened
        writer.start()
        began = time.monotonic()
        minute_mark, minute_count = began + 60, proxy.counts["forwarded"]
        with httpx.stream("GET", base + "/live", params={"path": "/"}, timeout=None) as live:
            for line in live.iter_lines():
                now = time.monotonic()
                if not line.startswith("data: "):
                    continue
                data = json.loads(line[6:])
                if "main" in data:
                    pushes += 1
                    shown.update({job_id: int(value) for job_id, value in ROW.findall(data["main"])})
                if now - began > 10:  # each event (one per --refresh): how long each job's shown value has been old
                    for job_id in ids:
                        newer = writer.set_at.get((job_id, shown.get(job_id, 0) + 1))
                        behind.append(now - newer if newer is not None else 0.0)
                if now >= minute_mark:
                    per_minute.append(proxy.counts["forwarded"] - minute_count)
                    minute_count, minute_mark = proxy.counts["forwarded"], minute_mark + 60
                if now - began >= minutes * 60:
                    break
        writer.stop.set()
        behind.sort()
        return {"budget_per_min": budget, "minutes": minutes,
                "requests_per_minute": per_minute, "median_per_minute": statistics.median(per_minute),
                "max_per_minute": max(per_minute), "total_requests": proxy.counts["forwarded"] - start_count,
                "pushes_per_minute": round(pushes / minutes, 1),
                "behind_s": {"median": round(statistics.median(behind), 2),
                             "p90": round(behind[int(0.9 * (len(behind) - 1))], 2), "samples": len(behind)}}
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, default=3.0, help="how long the page stays open, per configuration")
    ap.add_argument("--progress-every", type=float, default=3.0, help="seconds between each job's progress writes")
    args = ap.parse_args()

    from bucketrun.events.storage import open_bucket

    moto, _ = start_counted_moto()
    try:
        import boto3

        name = "ui-cost"
        boto3.client("s3").create_bucket(Bucket=name)
        url = f"s3://{name}/bench"
        bucket = open_bucket(url)
        results = {}
        with FaultProxy(os.environ["AWS_ENDPOINT_URL_S3"], fault_rate=0.0) as proxy:
            for label, budget in (("default", 60.0), ("unbudgeted", 1e6)):
                ids = _seed(bucket, JOBS)
                results[label] = one_config(url, proxy, ids, bucket, args.minutes, budget, args.progress_every)
                from bucketrun.events.lifecycle import JobState, append_transition

                for job_id in ids:  # ended: the next configuration's page watches only its own 10 live jobs
                    append_transition(bucket, job_id, JobState.CANCELLED, writer="bench")
                print(label, json.dumps(results[label]), flush=True)
        results["ratio_default_to_unbudgeted"] = round(
            results["default"]["median_per_minute"] / results["unbudgeted"]["median_per_minute"], 3)
        results["machine"] = os.uname().machine
        out = ROOT / "bench" / "results" / "ui_cost.json"
        out.write_text(json.dumps(results, indent=2) + "\n")
        print(json.dumps(results, indent=2))
    finally:
        moto.stop()


if __name__ == "__main__":
    main()
