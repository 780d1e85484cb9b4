"""What every command shares: one-line errors, the bucket option, the progress bar and the exit code."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from bucketrun.events.lifecycle import JobState
from bucketrun.events.storage import Bucket, default_bucket_url, open_bucket, resolve_bucket_url


NO_DISPATCHER = ("is a dispatcher running? Start one with `bucketrun sim` (it watches this bucket), or deploy "
                 "template.yaml for an S3 bucket")


class CliError(Exception):
    """A usage problem, reported as one line with exit code 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line instead of argparse's usage block
        raise CliError(f"{self.prog}: {message} (see --help)")


def number(cast, low: float, high: float, what: str, why: str = ""):
    """An argparse type: a number (`cast`) from `low` to `high`, or one line saying what was wanted."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not {what}: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be {what} from {_plain(low)} to {_plain(high)}{why}, not {text}")
        return value

    return parse


def _plain(x: float) -> str:
    return f"{int(x):,}" if float(x).is_integer() else f"{x:g}"


def bucket_of(args: argparse.Namespace, create: bool = False) -> Bucket:
    """The bucket a command works on. Only the default folder (and `sim`, `demo`, `init`, which pass
    create=True) may come into being here; a mistyped --bucket is a one-line error, not a new folder."""
    url = resolve_bucket_url(args.bucket)
    return open_bucket(url, create=create or url == default_bucket_url())


def progress_printer(enabled: bool = True):
    """A rich progress bar on stderr, fed by job_status dicts (none with `enabled=False`: `--json` output)."""
    progress = Progress(TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn(),
                        TextColumn("{task.fields[eta]}"), console=Console(stderr=True), transient=False,
                        disable=not enabled)
    task = progress.add_task("dropped", total=100, eta="")

    def update(status: dict[str, Any]) -> None:
        p = status.get("progress") or {}
        state = status.get("state", "?")
        stage = f" / {p['stage']}" if p.get("stage") and state == "running" else ""
        eta = f"ETA {p['eta_s']:.0f}s" if p.get("eta_s") and state == "running" else ""
        done = 100 if state == "succeeded" else (p.get("percent") or 0)
        progress.update(task, description=f"{status['job_id'][:30]} {state}{stage}", completed=done, eta=eta)

    return progress, update


GAVE_UP = 3  # `submit --wait --timeout`: the job did not end in time (it goes on); 1 means it ended badly


def finish(status: dict[str, Any], quiet: bool = False) -> int:
    """The exit code of a wait: 0 succeeded (its artifact keys printed), 1 ended otherwise, 3 still going."""
    if status["state"] == JobState.SUCCEEDED.value:
        if not quiet:
            for a in status["artifacts"]:
                print(a["key"])
        return 0
    ended = status["state"] in {s.value for s in JobState if s.terminal}
    if not ended:
        print(f"bucketrun: gave up waiting; job {status['job_id']} is {status['state']} and goes on "
              f"(bucketrun status {status['job_id']})", file=sys.stderr)
        return GAVE_UP
    err = status.get("error") or {}
    reason = f"{err.get('class', 'error')}: {err.get('message', '')}" if err else "no error recorded"
    print(f"bucketrun: job {status['job_id']} {status['state']}: {reason}", file=sys.stderr)
    return 1


def read_file(path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from exc


