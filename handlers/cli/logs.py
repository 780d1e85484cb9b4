"""`bucketrun logs`: a job's transitions as a person reads them, one line each with its detail summarised, and
attempts that failed the same way collapsed into one line (`×7`); `--json` gives the raw objects; `-f` follows
the job with its worker log; `--worker` prints an attempt's worker log."""

from __future__ import annotations

import json
import sys
import time

from bucketrun.events import keys
from bucketrun.events.errors import NotFound, UnknownJob
from bucketrun.events.lifecycle import JobState, JobView, Transition, read_view
from bucketrun.events.status import waiting_in_inbox

from .. import client
from ..board import transition_error, summary
from .common import NO_DISPATCHER, CliError, bucket_of

def _line(t: Transition, spent: float | None) -> str:
    took = f"{spent:8.1f}s" if spent is not None else "        -"
    return f"{t.seq:>4} {t.at}  {t.state.value:<10}{took}  attempt {t.attempt}  {summary(t)}".rstrip()


def render(history: list[Transition]) -> list[str]:
    """One line per transition, except that a run of attempts that each went the same way (same states, same
    error) after the first of them is one line: `attempts 2-8: launched → running → queued ×7: <error>`."""
    durations = client.state_durations(history)
    attempts: dict[int, list[int]] = {}
    for i, t in enumerate(history):
        attempts.setdefault(t.attempt, []).append(i)

    def shape(n: int) -> tuple:  # states and errors; ids and times differ from one attempt to the next
        return tuple((history[i].state.value, summary(history[i]) if transition_error(history[i]) else "")
                     for i in attempts[n])

    lines, order = [], sorted(attempts)
    k = 0
    while k < len(order):
        n = order[k]
        run = 1
        while k + run < len(order) and shape(order[k + run]) == shape(n) and k + run < len(order) - 1:
            run += 1  # the last attempt is always shown whole: it says how the job ended
        lines += [_line(history[i], durations[i]) for i in attempts[n]]
        if run > 1:
            first, last = order[k + 1], order[k + run - 1]
            seqs = [history[i].seq for a in order[k + 1:k + run] for i in attempts[a]]
            states = " → ".join(s for s, _ in shape(n))
            said = next((s for _, s in reversed(shape(n)) if s), "")
            lines.append(f"{seqs[0]:>4}-{seqs[-1]}  attempts {first}-{last}: {states} ×{run - 1}"
                         + (f": {said}" if said else ""))
        k += run
    return lines


def _worker_log(bucket, job_id: str, attempt: int) -> bytes | None:
    try:
        return bucket.get(keys.log_key(job_id, attempt)).data
    except NotFound:
        return None


def cmd_logs(args) -> int:
    bucket = bucket_of(args)
    view = read_view(bucket, args.job)
    if not view.history:
        inbox = waiting_in_inbox(bucket, args.job)
        if inbox is None:
            raise UnknownJob(f"no job {args.job!r} in {bucket.url}")
        if args.json:
            print(json.dumps([]))
            return 0
        print(f"{args.job}: waiting in the inbox ({inbox}); no dispatcher has taken it in yet; {NO_DISPATCHER}")
        if not args.follow:
            return 0
    if args.worker:
        attempt = args.attempt or view.attempt
        data = _worker_log(bucket, args.job, attempt)
        if data is None:
            raise CliError(f"bucketrun: no worker log for attempt {attempt} of {args.job} yet "
                           "(a worker writes it as it runs, and when the attempt ends)")
        sys.stdout.write(data.decode(errors="replace"))
        return 0
    if args.json:
        print(json.dumps([t.to_json() for t in view.history], sort_keys=True))
        return 0
    if not args.follow:
        for line in render(list(view.history)):
            print(line, flush=True)
        return 0
    return _follow(bucket, args.job, view)


def _follow(bucket, job_id: str, view: JobView, poll_s: float = 1.0) -> int:
    """Print transitions as they are written, and each attempt's worker log as it grows, until the job ends."""
    shown, log_shown = 0, {}
    while True:
        for t in view.history[shown:]:
            print(_line(t, None), flush=True)
        shown = len(view.history)
        for attempt in sorted({t.attempt for t in view.history if t.state is JobState.RUNNING}):
            data = _worker_log(bucket, job_id, attempt) or b""
            if len(data) > log_shown.get(attempt, 0):
                for line in data[log_shown.get(attempt, 0):].decode(errors="replace").splitlines():
                    print(f"    [attempt {attempt}] {line}", flush=True)
                log_shown[attempt] = len(data)
        if view.state is not None and view.state.terminal:
            return 0
        time.sleep(poll_s)
        view = read_view(bucket, job_id, known=view)


def register(add) -> None:
    p = add("logs", cmd_logs, "every transition, one readable line each (repeated failures collapsed)")
    p.add_argument("job", help="a job id, the start of one, or `last`")
    p.add_argument("-f", "--follow", action="store_true", help="follow the job until it ends, with its worker log")
    p.add_argument("--worker", action="store_true", help="print the worker log of an attempt")
    p.add_argument("--attempt", type=int, default=None, help="with --worker: which attempt (default: the latest)")
    p.add_argument("--json", action="store_true", help="the raw transition objects, one JSON array")
