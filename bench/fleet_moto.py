"""bench/fleet.py's S3 side: moto's server on loopback with every request classified by bucketrun operation (a WSGI
layer in front of moto's app, so the headers that tell a claim from a renew are seen), and moto's own ceiling."""

from __future__ import annotations

import argparse
import collections
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from typing import Any
from urllib.parse import parse_qs, unquote

from cloud_path import free_port
from fleet_common import ROOT, kill_group, log, split, store_diagnosis, worker_ids

HTTP_OPS = ("GET", "PUT", "LIST", "HEAD", "DELETE", "POST")
# fleet/<folder>/ under a job -> the operation's name in the report
FLEET_AREAS = {"leases": "lease", "done": "done marker", "heartbeats": "heartbeat", "workers": "worker registration",
               "ledgers": "ledger", "roles": "role lease", "instances": "instance", "parts": "part",
               "items": "item artifact"}


def area_of(key: str) -> str:
    """bucketrun's operation a key belongs to, by events/keys.py's layouts (the job's output prefix is its
    fleet/ folder: the bench sets no output prefix)."""
    if not key.startswith("jobs/"):
        if key.startswith("bench/items-"):
            return "item fetch"
        if key.startswith("index/"):
            return "index"
        if key.startswith("inbox/"):
            return "inbox"
        return "other"
    rest = key.split("/", 2)[2] if key.count("/") >= 2 else ""
    if rest.startswith("fleet/"):
        sub = rest[len("fleet/"):]
        folder = sub.split("/", 1)[0]
        if "/" in sub and folder in FLEET_AREAS:
            return FLEET_AREAS[folder]
        if sub == "plan.json" or sub.startswith("items-"):
            return "plan"
        if sub == "dataset.json":
            return "dataset manifest"
        return "fleet other"
    if rest == "progress.json":
        return "progress"
    if rest.startswith("events/"):
        return "job state"
    if rest in ("manifest.json", "intake.json") or rest.startswith("launch/"):
        return "job setup"
    return "job other"


def classify(method: str, path: str, query: str, env: dict[str, Any]) -> tuple[str, str, str]:
    """(operation, verb, HTTP op) of one request: path-style /bucket/key; a LIST is classed by its prefix."""
    parts = unquote(path).lstrip("/").split("/", 1)
    key = parts[1] if len(parts) > 1 else ""
    if method == "GET" and not key:
        q = parse_qs(query)
        prefix = (q.get("prefix") or [""])[0]
        return f"list {area_of(prefix + 'x')}", "list", "LIST"
    area = area_of(key)
    if method == "PUT":
        verb = ("create" if env.get("HTTP_IF_NONE_MATCH") else "replace" if env.get("HTTP_IF_MATCH")
                else "copy" if env.get("HTTP_X_AMZ_COPY_SOURCE") else "put")
        if area == "lease":
            area, verb = {"create": ("lease claim", "create"), "replace": ("lease renew", "replace")}.get(
                verb, ("lease put", verb))
    elif method == "DELETE":
        verb = "delete"
        if area == "lease":
            area = "lease release"
    else:
        verb = {"GET": "get", "HEAD": "head", "POST": "post"}.get(method, method.lower())
        if area == "lease":
            area = "lease read"
    return area, verb, method


class Classifier:
    """WSGI middleware: counts each request as (operation, verb, HTTP op, status class) before moto serves it."""

    def __init__(self, app):
        self.app, self.lock = app, threading.Lock()
        self.counts: collections.Counter[tuple[str, str, str, str]] = collections.Counter()
        # the server's CPU seconds per (operation, HTTP op): its serving thread's time, rendering included
        self.cpu: collections.Counter[tuple[str, str]] = collections.Counter()
        self.enabled = True

    def __call__(self, environ, start_response):
        if not self.enabled:
            return self.app(environ, start_response)
        area, verb, op = classify(environ.get("REQUEST_METHOD", ""), environ.get("PATH_INFO", ""),
                                  environ.get("QUERY_STRING", ""), environ)
        status = ["?"]

        def sr(st, headers, exc_info=None):
            status[0] = st.split(" ", 1)[0]
            return start_response(st, headers, exc_info)

        t0 = time.thread_time()
        out = self.app(environ, sr)
        spent = time.thread_time() - t0
        code = status[0]
        with self.lock:
            self.counts[(area, verb, op, code if code in ("404", "412") else code[:1] + "xx")] += 1
            self.cpu[(area, op)] += spent
        return out

    @property
    def ops(self) -> dict[str, int]:
        """Requests by HTTP op since the last take() (a snapshot, for the progress line)."""
        out: collections.Counter[str] = collections.Counter()
        for (_, _, op, _), n in list(self.counts.items()):
            out[op] += n
        return dict(out)

    def take(self) -> dict[str, Any]:
        """Requests since the last take(): by HTTP op (with total), by operation, by operation and verb, and the
        404/412 answers (lost creates, missing keys), then starts counting afresh."""
        with self.lock:
            snap, self.counts = self.counts, collections.Counter()
            cpu, self.cpu = self.cpu, collections.Counter()
        by_op: collections.Counter[str] = collections.Counter()
        by_area: collections.Counter[str] = collections.Counter()
        detail: collections.Counter[str] = collections.Counter()
        status: collections.Counter[str] = collections.Counter()
        for (area, verb, op, code), n in snap.items():
            by_op[op] += n
            by_area[area] += n
            detail[f"{area} {op}"] += n
            if code in ("404", "412", "5xx"):
                status[f"{area} {op} {code}"] += n
        cpu_by_op: collections.Counter[str] = collections.Counter()
        for (area, op), secs in cpu.items():
            cpu_by_op[op] += secs
        return {**dict(by_op), "total": sum(by_op.values()), "by_operation": dict(by_area),
                "by_operation_http": dict(detail), "refused": dict(status),
                "server_cpu_s": {k: round(v, 3) for k, v in sorted(cpu_by_op.items())},
                "server_cpu_s_by_operation": {f"{a} {o}": round(v, 3) for (a, o), v in
                                              sorted(cpu.items(), key=lambda kv: -kv[1])}}


def make_atomic_conditional_puts() -> None:
    """moto checks If-None-Match/If-Match and then writes, unlocked; S3 does both in one step. Serialise moto's
    PUT handler (it runs in this process), as tests/conftest.py does, so racing leases behave as on S3."""
    from moto.s3.responses import S3Response

    if getattr(S3Response.put_object, "_bench_atomic", False):
        return
    lock, put_object = threading.Lock(), S3Response.put_object

    def atomic_put_object(self, *a, **kw):
        with lock:
            return put_object(self, *a, **kw)

    atomic_put_object._bench_atomic = True  # type: ignore[attr-defined]
    S3Response.put_object = atomic_put_object


def cache_moto_module_list() -> None:
    """moto's server lists and stats its own package directory twice per request, under its dispatch lock, to
    route by Host; the list never changes while it runs. Cached, the same requests are served the same way,
    with less of the server's one GIL spent on it."""
    import moto.backends as mb

    if not getattr(mb.list_of_moto_modules, "_bench_cached", False):
        modules = tuple(mb.list_of_moto_modules())
        cached = lambda: modules  # noqa: E731
        cached._bench_cached = True  # type: ignore[attr-defined]
        mb.list_of_moto_modules = cached


class MotoStore:
    """Read-only view of moto's in-process store (no request, nothing counted), for progress and diagnosis."""

    def __init__(self, bucket):
        self.b = bucket

    def keys(self, prefix: str = "") -> list[str]:
        return [k for k in list(dict.keys(self.b.keys)) if k.startswith(prefix)]  # one C-level copy: thread-safe

    def body(self, key: str) -> bytes | None:
        fk = self.b.keys.get(key)
        return fk.value if fk is not None else None

    def mtime(self, key: str) -> float | None:
        fk = self.b.keys.get(key)
        return fk.last_modified.timestamp() if fk is not None else None


class Moto:
    """The `moto` side: one server for the whole bench, one fresh bucket per run."""

    side = "moto"

    def __init__(self):
        from moto.server import ThreadedMotoServer

        cache_moto_module_list()
        wz = logging.getLogger("werkzeug")  # requests are counted by the middleware, not from the access log
        wz.setLevel(logging.WARNING)
        wz.addHandler(logging.NullHandler())
        wz.propagate = False
        port = free_port()
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
        self.server.start()
        self.counter = Classifier(self.server._server.app)
        self.server._server.app = self.counter  # werkzeug's handler reads server.app per request
        os.environ.update({"AWS_ENDPOINT_URL_S3": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
                           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
        make_atomic_conditional_puts()
        from moto.core import DEFAULT_ACCOUNT_ID
        from moto.s3.models import s3_backends

        self.backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
        import boto3

        self.s3 = boto3.client("s3")

    def new_bucket(self, label: str, items_key: str, items: bytes) -> tuple[str, str]:
        name = f"bench-fleet-{label}-{uuid.uuid4().hex[:6]}"
        self.s3.create_bucket(Bucket=name)
        self.s3.put_object(Bucket=name, Key=items_key, Body=items, ContentType="application/x-ndjson")
        return name, f"s3://{name}"

    def store(self, name: str) -> MotoStore:
        return MotoStore(self.backend.buckets[name])

    def diagnose(self, name: str, job_id: str, sample_s: float = 5.0) -> dict[str, Any]:
        out = store_diagnosis(self.store(name), job_id)
        out["requests_until_now"] = self.counter.take()
        if sample_s:  # the workers still run: what are they asking the store for?
            time.sleep(sample_s)
            t = self.counter.take()
            out["requests_per_s_while_stalled"] = {op: round(n / sample_s, 1)
                                                   for op, n in t["by_operation_http"].items()}
        return out

    def drop_bucket(self, name: str) -> None:
        """Frees a finished run's objects (moto's heap only; no request)."""
        try:
            b = self.backend.buckets.pop(name)
            b.keys.clear()
        except KeyError:
            pass

    def stop(self) -> None:
        self.server.stop()


MOTO_LOAD = r"""
import asyncio, sys, time
import aioboto3

async def main(bucket, prefix, tasks, seconds):
    done = 0
    async with aioboto3.Session().client("s3") as s3:
        deadline = time.monotonic() + seconds
        async def one(i):
            nonlocal done
            key = f"{prefix}/{i}"
            while time.monotonic() < deadline:
                await s3.put_object(Bucket=bucket, Key=key, Body=b"x" * 300)
                await (await s3.get_object(Bucket=bucket, Key=key))["Body"].read()
                done += 2
        await asyncio.gather(*(one(i) for i in range(tasks)))
    print(done)

asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])))
"""


def moto_ceiling(moto: Moto, args: argparse.Namespace) -> dict[str, Any]:
    """Requests/s moto serves to the same layout (workers as tasks over procs) doing nothing but PUT+GET: the
    emulator's ceiling on this machine, against which the fleet's items/s x requests/item is read."""
    name = f"bench-ceiling-{uuid.uuid4().hex[:6]}"
    moto.s3.create_bucket(Bucket=name)
    groups = split(worker_ids(args.workers), args.procs)
    log(f"moto ceiling: {args.workers} tasks over {len(groups)} processes, PUT+GET for {args.calibrate_s:g} s ...")
    moto.counter.take()
    t0 = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, "-c", MOTO_LOAD, name, f"p{i}", str(len(g)), str(args.calibrate_s)],
                              cwd=ROOT, stdout=subprocess.PIPE, text=True) for i, g in enumerate(groups)]
    try:
        outs = [p.communicate(timeout=args.calibrate_s + 120)[0] for p in procs]
    finally:
        kill_group(procs)
    counted = moto.counter.take()
    served = sum(int(o.strip() or 0) for o in outs)
    res = {"tasks": args.workers, "procs": len(groups), "seconds": round(args.calibrate_s, 1),
           "wall_s": round(time.perf_counter() - t0, 2),
           "requests": {k: v for k, v in counted.items() if k in HTTP_OPS or k == "total"},
           "requests_per_s": round(served / args.calibrate_s, 1)}
    log(f"moto ceiling: {res['requests_per_s']:,.0f} requests/s ({counted['total']:,} counted at the server)")
    moto.drop_bucket(name)
    return res
