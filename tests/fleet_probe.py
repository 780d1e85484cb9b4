"""A user's own fleet processor, loaded by entry point (`fleet_probe:make`, with tests/ on PYTHONPATH) as a
user's image would load theirs. It appends every item it finishes to a per-process file under
$FLEET_PROBE_DIR (<pid>.log), so a test can count how many times each item was really processed, and every
item it starts to <pid>.start, so a test can tell which shards a killed process was inside. Items named in
`crash_items` hard-exit the process, as a segfaulting decoder would; items named in `slow_items` take that many
seconds."""

from __future__ import annotations

import os
import time
from typing import Any

import pyarrow as pa


class Probe:
    columns = {"pid": pa.int64()}
    blocking = True

    def __init__(self, options: dict[str, Any], ctx):
        self.sleep_s = float(options.get("sleep_s", 0.0))
        self.crash = set(options.get("crash_items", ()))
        self.slow = {k: float(v) for k, v in (options.get("slow_items") or {}).items()}
        self.path = os.path.join(os.environ["FLEET_PROBE_DIR"], f"{os.getpid()}.log")
        self.start_path = os.path.join(os.environ["FLEET_PROBE_DIR"], f"{os.getpid()}.start")

    async def fetch(self, item: str) -> None:
        return None

    def process(self, item: str, payload: Any) -> list[dict[str, Any]]:
        with open(self.start_path, "a") as f:
            f.write(item + "\n")
        if item in self.crash:
            os._exit(70)
        time.sleep(self.slow.get(item, self.sleep_s))
        with open(self.path, "a") as f:  # one short append per finished item
            f.write(item + "\n")
        return [{"pid": os.getpid()}]

    def close(self) -> None:
        pass


def make(options: dict[str, Any], ctx) -> Probe:
    return Probe(options, ctx)
