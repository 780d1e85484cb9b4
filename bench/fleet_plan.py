"""Planning a fleet of 507,387 items, written once (plan + gzipped item list), in both of the manifest's forms:
an items file (JSONL), and every object under a prefix (ending in a suffix), on the folder and the S3 backends.
Reports wall time, CPU time and peak RSS (VmHWM) of the planning process (a fresh subprocess per measurement, medians),
each against a baseline measured in the same run: the bare minimum of reading the same file and parsing its lines,
or of listing the same keys (a sorted os.walk; boto3's ListObjectsV2 pages).

The prefix form on S3 runs at --s3-objects (default 20,000), not 507,387: moto re-sorts the whole bucket for every
ListObjectsV2 page, so its listing grows with the square of the bucket; the folder form runs at --items.

    .venv/bin/python bench/fleet_plan.py [--items 507387] [--s3-objects 20000] [--repeat 3] [--forms file,prefix]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

PREFIX, SUFFIX = "videos/", ".tar"

CHILD = r"""
import asyncio, json, os, resource, sys, time
mode, url, where, job, suffix = sys.argv[1:6]
from bucketrun.events.storage import open_bucket
data_bucket = open_bucket(url)

def cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime

def status_mb(field):  # this process's own figures: ru_maxrss would carry the parent's peak across exec
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) for line in fh if line.startswith(field + ":")) / 1024

start_rss = status_mb("VmRSS")
t0, c0 = time.perf_counter(), cpu()
if mode == "baseline-file":
    items = [json.loads(line) for line in data_bucket.get(where).data.splitlines() if line.strip()]
    n = len(items)
elif mode == "baseline-prefix" and url.startswith("s3://"):
    pages = data_bucket.client.get_paginator("list_objects_v2").paginate(
        Bucket=data_bucket.k.bucket, Prefix=data_bucket.k.prefix + where)
    cut = len(data_bucket.k.prefix)
    n = len([o["Key"][cut:] for page in pages for o in page.get("Contents", []) if o["Key"].endswith(suffix)])
elif mode == "baseline-prefix":
    keys = []
    for folder, _, files in os.walk(os.path.join(url, where)):
        rel = os.path.relpath(folder, url) + "/"
        keys.extend(rel + f for f in files if f.endswith(suffix))
    n = len(sorted(keys))
else:
    from bucketrun.events.fleet.plan import list_items, read_items_file, write_plan
    from bucketrun.events.storage.aio import open_async_bucket

    async def go():
        async with open_async_bucket(url) as b:
            if mode == "plan-file":
                items = await read_items_file(b, where)
                source = {"file": where}
            else:
                items = await list_items(b, where, suffix)
                source = {"prefix": where, "suffix": suffix}
            plan = await write_plan(b, job, items, 50, source, "bench")
            return plan.total
    n = asyncio.run(go())
elapsed, used = time.perf_counter() - t0, cpu() - c0
print(json.dumps({"items": n, "seconds": elapsed, "cpu_seconds": used,
                  "peak_rss_mb": status_mb("VmHWM"), "rss_at_start_mb": start_rss,
                  "ru_maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

FIGURES = ("seconds", "cpu_seconds", "peak_rss_mb")


def item(i: int) -> str:
    """Shaped like the seed's keys: a dated prefix and a video id."""
    return f"videos/2025/{i % 12 + 1:02d}/{uuid.UUID(int=i * 2654435761 % (1 << 128)).hex[:11]}-{i:07d}.tar"


def run_child(mode: str, url: str, where: str, job: str, expect: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, url, where, job, SUFFIX], capture_output=True,
                         text=True, env=os.environ, check=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["items"] == expect, (mode, url, result)
    return result


def make_folder_objects(root: Path, n: int) -> float:
    """n one-byte files at item(i)'s keys, written straight to disk (a folder bucket is its files); seconds."""
    t0 = time.perf_counter()
    made: set[str] = set()
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
    for i in range(n):
        path = os.path.join(root, item(i))
        folder = os.path.dirname(path)
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        fd = os.open(path, flags, 0o644)
        os.write(fd, b"x")
        os.close(fd)
    return time.perf_counter() - t0


def make_moto_objects(bucket: str, prefix: str, n: int) -> float:
    """n one-byte objects put into moto's in-process store directly (a PUT per object over HTTP is the slow part
    of the setup, not of what is measured); seconds."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.s3.models import s3_backends

    t0 = time.perf_counter()
    backend = s3_backends[DEFAULT_ACCOUNT_ID]["global"]
    for i in range(n):
        backend.put_object(bucket, prefix + item(i), b"x")
    return time.perf_counter() - t0


def measure(label: str, url: str, where: str, form: str, n: int, repeat: int, counter) -> dict:
    runs: dict[str, list[dict]] = {"plan": [], "baseline": []}
    for r in range(repeat):
        for mode, job in (("baseline", ""), ("plan", f"J-{form}-{r}-{uuid.uuid4().hex[:6]}")):
            counter.take()
            runs[mode].append(run_child(f"{mode}-{form}", url, where, job, n))
            runs[mode][-1]["s3_requests"] = counter.take()["total"]
    med = {m: {k: statistics.median(x[k] for x in v) for k in (*FIGURES, "s3_requests")} for m, v in runs.items()}
    out = {"items": n, **med, "runs": runs,
           "ratio_seconds": med["plan"]["seconds"] / med["baseline"]["seconds"],
           "ratio_rss": med["plan"]["peak_rss_mb"] / med["baseline"]["peak_rss_mb"]}
    p, b = med["plan"], med["baseline"]
    print(f"{label}: plan {p['seconds']:.2f} s ({p['cpu_seconds']:.2f} s CPU), peak RSS {p['peak_rss_mb']:.0f} MB "
          f"| baseline {b['seconds']:.2f} s ({b['cpu_seconds']:.2f} s CPU), {b['peak_rss_mb']:.0f} MB "
          f"| ratio {out['ratio_seconds']:.2f}x time, {out['ratio_rss']:.2f}x RSS (medians of {repeat})"
          + (f" | S3 requests: plan {p['s3_requests']:.0f}, baseline {b['s3_requests']:.0f}"
             if url.startswith("s3://") else ""), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=507_387)
    ap.add_argument("--s3-objects", type=int, default=20_000, help="objects under the prefix on moto S3")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--forms", default="file,prefix")
    ap.add_argument("--backends", default="folder,s3")
    ap.add_argument("--tmp", default=None, help="where the folder buckets go (default: the system temp dir)")
    args = ap.parse_args()
    forms, backends = args.forms.split(","), args.backends.split(",")
    from bucketrun.events.storage import open_bucket
    from cloud_path import start_counted_moto

    moto, counter = start_counted_moto()
    import boto3

    boto3.client("s3").create_bucket(Bucket="plan-bench")
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="fleet-plan-", dir=args.tmp) as tmp:
        if "file" in forms:
            payload = "\n".join(json.dumps(item(i)) for i in range(args.items)).encode()
            print(f"items file: {args.items:,} items, {len(payload) / 1e6:.1f} MB", flush=True)
            for backend in backends:
                url = str(Path(tmp) / "file-bucket") if backend == "folder" else "s3://plan-bench/file"
                open_bucket(url).put("exports/items.jsonl", payload)
                results[f"file/{backend}"] = measure(f"file form, {backend}", url, "exports/items.jsonl", "file",
                                                     args.items, args.repeat, counter)
            del payload
        if "prefix" in forms and "folder" in backends:
            url = str(Path(tmp) / "prefix-bucket")
            open_bucket(url)
            made = make_folder_objects(Path(url), args.items)
            print(f"prefix form: {args.items:,} objects under {url}/{PREFIX} (made in {made:.1f} s)", flush=True)
            results["prefix/folder"] = measure("prefix form, folder", url, PREFIX, "prefix", args.items,
                                               args.repeat, counter)
        if "prefix" in forms and "s3" in backends:
            made = make_moto_objects("plan-bench", "prefix/", args.s3_objects)
            print(f"prefix form: {args.s3_objects:,} objects under s3://plan-bench/prefix/{PREFIX} "
                  f"(made in {made:.1f} s)", flush=True)
            results["prefix/s3"] = measure("prefix form, s3 (moto)", "s3://plan-bench/prefix", PREFIX, "prefix",
                                           args.s3_objects, args.repeat, counter)
    moto.stop()
    out = ROOT / "bench" / "results" / "fleet_plan.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
