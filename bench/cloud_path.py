"""Benchmark the cloud path on loopback: S3 requests per complete job, and dispatch-event -> `launched` latency.

The job runs twice on one bucket: first a result-cache miss (it transcribes and leaves an entry pointing at its
artifacts), then the identical job again, a hit served from that entry. Real parts: moto's S3-protocol server, the runpod SDK's local API server running our worker handler, the
Lambda entry point called in-process with the sample S3 put event's shape. Every S3 request from every
process is counted at the server. Latency is the Lambda call from event to `launched` written, against a
baseline measured in the same run: one bare POST /run to the same server (the part no dispatcher can avoid).
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import os
import re
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

_REQUEST = re.compile(r'"(?:\x1b\[[0-9;]*m)*(?P<method>[A-Z]+) (?P<path>\S+) HTTP/')  # werkzeug colours non-2xx


class S3Counter(logging.Handler):
    """Counts requests as moto's werkzeug server logs them, by operation."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()
        self.cache_prefixes: tuple[str, ...] = ("/cache/",)  # paths whose requests are the result cache's
        self.cache = 0
        self.progress = 0  # PUTs of progress.json: about one a second of work, so they vary with the machine

    def emit(self, record: logging.LogRecord) -> None:
        m = _REQUEST.search(record.getMessage())
        if m:
            method, path = m["method"], m["path"]
            op = "LIST" if method == "GET" and "list-type=2" in path else method
            self.ops[op] += 1
            if any(p in path for p in self.cache_prefixes):
                self.cache += 1
            if method == "PUT" and path.endswith("/progress.json"):
                self.progress += 1

    def take(self) -> dict[str, int]:
        out = dict(self.ops)
        self.ops.clear()
        return {**out, "total": sum(out.values())}

    def take_cache(self) -> tuple[int, int]:
        """(the result cache's requests, progress writes) since the last call."""
        out, self.cache, self.progress = (self.cache, self.progress), 0, 0
        return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_counted_moto():
    """moto's S3 server on loopback, every request it serves counted; the AWS environment points at it."""
    from moto.server import ThreadedMotoServer

    counter = S3Counter()
    wz = logging.getLogger("werkzeug")
    wz.setLevel(logging.INFO)
    wz.addHandler(counter)
    wz.propagate = False
    port = free_port()
    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    moto.start()
    os.environ.update({"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
                       "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
    return moto, counter


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if proc.poll() is not None:
                raise SystemExit("the runpod local server exited")
            time.sleep(0.3)
    raise SystemExit("the runpod local server did not start")


def s3_event(bucket: str, key: str, size: int, etag: str) -> dict:
    """The sample single-put event, re-pointed at this run's object."""
    event = json.loads((ROOT / "events" / "samples" / "s3-put-single.json").read_text())
    obj = event["Records"][0]["s3"]
    obj["bucket"]["name"] = bucket
    obj["object"].update({"key": key.replace(" ", "+"), "size": size, "eTag": etag.strip('"')})
    return event


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--launches", type=int, default=20, help="jobs dispatched for the latency figure")
    args = ap.parse_args()

    moto, counter = start_counted_moto()
    os.environ.update({"BUCKETRUN_BUCKET": "s3://bench-bucket", "RUNPOD_ENDPOINT_ID": "bench",
                       "RUNPOD_API_KEY": "bench-not-a-key", "BUCKETRUN_WEBHOOK_SECRET": ""})
    import boto3

    boto3.client("s3").create_bucket(Bucket="bench-bucket")
    rp_port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "bucketrun.images.transcribe.handler", "--rp_serve_api",
                               "--rp_api_port", str(rp_port), "--rp_api_host", "127.0.0.1"], cwd=ROOT,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(rp_port, server)
        endpoint = f"http://127.0.0.1:{rp_port}"
        os.environ["RUNPOD_ENDPOINT_URL"] = endpoint
        run(args, counter, endpoint)
    finally:
        server.terminate()
        server.wait(30)
        moto.stop()


def one_job(bucket, counter: S3Counter, launcher, manifest: bytes, key: str, label: str) -> str:
    """Dispatch one job from an S3 event, let the worker finish it, and print its requests phase by phase."""
    from bucketrun.events.lifecycle import JobState, read_view
    from bucketrun.handlers import aws_lambda

    # The user's PutObject is the trigger, not the system's cost.
    etag = bucket.put(key, manifest, "application/json")
    counter.take()
    counter.take_cache()
    answer = aws_lambda.dispatch_handler(s3_event("bench-bucket", key, len(manifest), etag))
    job_id = answer["jobs"][0]["job_id"]
    phases = {"dispatch (Lambda)": counter.take()}
    # The worker may already be running while the benchmark reads the backend id, so its own reads are
    # subtracted exactly (they are a LIST of the events and a GET of each) instead of dropping a window.
    view = read_view(bucket, job_id)
    own = {"LIST": 1, "GET": len(view.history)}
    backend_id = view.latest.detail["backend_id"] if view.state is JobState.LAUNCHED else \
        next(t.detail["backend_id"] for t in view.history if t.state is JobState.LAUNCHED)
    assert launcher.status(backend_id).value == "COMPLETED"  # the local server runs the worker now
    worker = counter.take()
    for op, n in own.items():
        worker[op] -= n
        worker["total"] -= n
    phases["worker (GPU side)"] = worker
    cache_requests, progress_writes = counter.take_cache()
    view = read_view(bucket, job_id)
    assert view.state is JobState.SUCCEEDED, view.state
    assert view.latest.detail["cache"]["hit"] is (label == "hit"), view.latest.detail["cache"]
    counter.take()
    aws_lambda.sweep_handler({})
    phases["one sweep pass over it"] = counter.take()
    total = sum(p["total"] for name, p in phases.items() if not name.startswith("one sweep"))
    print(f"S3 requests for one complete transcription job, result cache {label} ({len(view.history)} transitions, "
          f"{len(view.latest.detail['artifacts'])} artifacts, {view.latest.detail['summary']['duration']:.0f} s clip):")
    for name, ops in phases.items():
        detail = ", ".join(f"{k} {v}" for k, v in sorted(ops.items()) if k != "total" and v)
        print(f"  {name:<24} {ops['total']:>4}   ({detail})")
    print(f"  {'job total (excl. sweep)':<24} {total:>4}   of which the result cache's {cache_requests}, "
          f"progress writes {progress_writes} (timed: about one a second of work)")
    return job_id


def run(args: argparse.Namespace, counter: S3Counter, endpoint: str) -> None:
    from bucketrun.events import codec
    from bucketrun.events.lifecycle import read_view
    from bucketrun.events.storage import open_bucket
    from bucketrun.handlers import aws_lambda
    from bucketrun.handlers.launchers.runpod import RunpodLauncher

    bucket = open_bucket("s3://bench-bucket")
    bucket.put("media/speech.ogg", (ROOT / "local_sim" / "assets" / "demo-speech.ogg").read_bytes())
    manifest = codec.dumps({"kind": "transcribe", "source": {"key": "media/speech.ogg"},
                            "options": {"language": "en"}})
    aws_lambda.dispatch_handler({"source": "aws.events", "detail-type": "Scheduled Event"})  # warm the container
    launcher = RunpodLauncher("bench", endpoint_url=endpoint, timeout_s=600)

    # 1. One complete job, phase by phase, twice: a cache miss, then the identical job served from the cache.
    miss = one_job(bucket, counter, launcher, manifest, "inbox/one job.json", "miss")
    # the hit's cache requests: its entry lookup, and its reads of the producing job's artifacts it copies
    counter.cache_prefixes = ("/cache/", f"/jobs/{miss}/artifacts/")
    one_job(bucket, counter, launcher, manifest, "inbox/same job.json", "hit")

    # 2. Latency, event -> launched, against a bare POST /run to the same server.
    ours, bare, gaps = [], [], []
    body = json.dumps({"input": {"job_id": "x", "bucket": "s3://bench-bucket", "manifest_key": "m",
                                 "attempt": 1}}).encode()
    for i in range(args.launches):
        k = f"inbox/lat-{i:03d}.json"
        etag = bucket.put(k, manifest, "application/json")
        event = s3_event("bench-bucket", k, len(manifest), etag)
        t0 = time.perf_counter()
        answer = aws_lambda.dispatch_handler(event)
        ours.append(time.perf_counter() - t0)
        assert answer["jobs"][0]["state"] == "launched", answer
        hist = read_view(bucket, answer["jobs"][0]["job_id"]).history
        gaps.append((codec.parse_iso(hist[-1].at) - codec.parse_iso(hist[0].at)).total_seconds())
        t0 = time.perf_counter()
        req = urllib.request.Request(f"{endpoint}/run", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        urllib.request.urlopen(req, timeout=30).read()
        bare.append(time.perf_counter() - t0)
    counter.take()
    med_ours, med_bare = statistics.median(ours), statistics.median(bare)
    q = statistics.quantiles(ours, n=10)
    print(f"\ndispatch event -> `launched` written, {args.launches} jobs on loopback:")
    print(f"  bucketrun dispatch median {med_ours * 1e3:7.1f} ms   p90 {q[-1] * 1e3:7.1f} ms")
    print(f"  bare POST /run    median {med_bare * 1e3:7.1f} ms")
    print(f"  ratio {med_ours / med_bare:.1f}x; median submitted->launched by transition times "
          f"{statistics.median(gaps) * 1e3:.0f} ms")


if __name__ == "__main__":
    main()
