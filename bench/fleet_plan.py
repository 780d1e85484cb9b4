"""Planning a fleet: 507,387 items from an items file, written once (plan + gzipped item list), on the folder
and the S3 backends. Reports wall time and peak RSS of the planning process, each against a baseline measured in
the same run: the bare minimum of reading the same file and parsing its lines into a Python list.

    .venv/bin/python bench/fleet_plan.py [--items 507387] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

CHILD = r"""
import asyncio, json, resource, sys, time
mode, url, key = sys.argv[1:4]
from bucketrun.events.storage import open_bucket
data_bucket = open_bucket(url)
start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
if mode == "baseline":
    items = [json.loads(line) for line in data_bucket.get(key).data.splitlines() if line.strip()]
    n = len(items)
else:
    from bucketrun.events.fleet.plan import read_items_file, write_plan
    from bucketrun.events.storage.aio import open_async_bucket

    async def go():
        async with open_async_bucket(url) as b:
            items = await read_items_file(b, key)
            plan = await write_plan(b, sys.argv[4], items, 50, {"file": key}, "bench")
            return plan.total
    n = asyncio.run(go())
elapsed = time.perf_counter() - t0
print(json.dumps({"items": n, "seconds": elapsed,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_at_start_mb": start_rss / 1024}))
"""


def item(i: int) -> str:
    """Shaped like the seed's keys: a dated prefix and a video id."""
    return f"videos/2025/{i % 12 + 1:02d}/{uuid.UUID(int=i * 2654435761 % (1 << 128)).hex[:11]}-{i:07d}.tar"


def run_child(mode: str, url: str, key: str, job: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode, url, key, job], capture_output=True, text=True,
                         env=os.environ, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=507_387)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from bucketrun.events.storage import open_bucket
    from cloud_path import start_counted_moto

    payload = "\n".join(json.dumps(item(i)) for i in range(args.items)).encode()
    print(f"items file: {args.items:,} items, {len(payload) / 1e6:.1f} MB")
    moto, counter = start_counted_moto()
    import boto3

    boto3.client("s3").create_bucket(Bucket="plan-bench")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend, url in (("folder", str(Path(tmp) / "bucket")), ("s3", "s3://plan-bench/p")):
            open_bucket(url).put("exports/items.jsonl", payload)
            counter.take()
            runs = {"plan": [], "baseline": []}
            for r in range(args.repeat):
                runs["baseline"].append(run_child("baseline", url, "exports/items.jsonl", ""))
                runs["plan"].append(run_child("plan", url, "exports/items.jsonl", f"J{r}"))
            requests = counter.take()
            med = {m: {k: statistics.median(x[k] for x in v) for k in ("seconds", "peak_rss_mb")}
                   for m, v in runs.items()}
            results[backend] = {**med, "ratio_seconds": med["plan"]["seconds"] / med["baseline"]["seconds"],
                                "ratio_rss": med["plan"]["peak_rss_mb"] / med["baseline"]["peak_rss_mb"],
                                "requests_per_plan": requests["total"] / args.repeat if backend == "s3" else None}
            print(f"{backend}: plan {med['plan']['seconds']:.2f} s, peak RSS {med['plan']['peak_rss_mb']:.0f} MB "
                  f"| baseline (read + parse) {med['baseline']['seconds']:.2f} s, "
                  f"{med['baseline']['peak_rss_mb']:.0f} MB | ratio {results[backend]['ratio_seconds']:.2f}x time, "
                  f"{results[backend]['ratio_rss']:.2f}x RSS (medians of {args.repeat})")
    moto.stop()
    out = ROOT / "bench" / "results" / "fleet_plan.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"items": args.items, **results}, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
