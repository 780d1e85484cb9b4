"""Commands that keep a bucket cheap to run: gc."""

from __future__ import annotations

import argparse
import collections
import re
from datetime import timedelta

from bucketrun.events import codec

from .. import gc
from .common import bucket_of

_AGE = re.compile(r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<unit>[dh]?)\s*$")


def age(text: str) -> timedelta:
    """`7d`, `36h`, or a bare number of days."""
    m = _AGE.match(text)
    if not m:
        raise argparse.ArgumentTypeError(f"not an age: {text!r} (e.g. 7d or 36h)")
    days = float(m["n"]) / (24 if m["unit"] == "h" else 1)
    if days > 36500:
        raise argparse.ArgumentTypeError(f"{text!r} is over a hundred years")
    return timedelta(days=days)


def cmd_gc(args) -> int:
    bucket = bucket_of(args)
    cutoff = codec.now() - args.older_than
    verb = "would remove" if args.dry_run else "removed"
    kept: collections.Counter[str] = collections.Counter()
    removed = 0
    for entry, verdict in gc.collect(bucket, cutoff, dry_run=args.dry_run):
        if verdict is gc.Verdict.REMOVE:
            removed += 1
            print(f"{verb} {entry.key}  (job {entry.job_id} {entry.state.value}, ended {codec.iso(entry.ended_at)})",
                  flush=True)
        else:
            kept[verdict.value] += 1
    why = ", ".join(f"{n} {v}" for v, n in sorted(kept.items()))
    print(f"bucketrun gc: {verb} {removed} inbox object(s) of jobs ended before {codec.iso(cutoff)}; "
          f"kept {sum(kept.values())}" + (f" ({why})" if why else ""))
    return 0


def register(add) -> None:
    p = add("gc", cmd_gc, "remove inbox objects whose jobs ended long ago (never a live or untaken one)")
    p.add_argument("--older-than", type=age, default=timedelta(days=7), metavar="AGE",
                   help="only jobs whose last event is older than this: 7d (default), 36h, or days")
    p.add_argument("--dry-run", action="store_true", help="print what would be removed, remove nothing")
