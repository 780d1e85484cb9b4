"""Run fleet workers in one process:
    python -m bucketrun.images.fleet.run --bucket URL --job JOB --worker w0001 [--worker w0002 ...]
Each worker is an asyncio task; they share the plan, the processor and one connection pool.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import random
import signal
import sys
from typing import Any

from bucketrun.events import meter, needs
from bucketrun.events.errors import BucketrunError
from bucketrun.events.failures import FailureClass, JobFailure, error_detail
from bucketrun.events.kinds.validate import load_job_manifest
from bucketrun.events.lifecycle import JobState, read_view
from bucketrun.events.retry import record_failure
from bucketrun.events.storage import open_bucket

try:  # pyarrow (and aioboto3) come with the fleet extra: without them main() fails the job, not just this process
    from .beat import ProcessBeat
    from .job import FleetJob, FleetStopped
    from .progress import ProgressDuty
    from .shardwork import Stop
    from .worker import GRACE_S, Worker
except ImportError as _exc:
    MISSING: ImportError | None = _exc
    GRACE_S = 0.0  # never used: main() refuses before any work; argparse needs a default
else:
    MISSING = None

log = logging.getLogger("bucketrun.fleet")


async def run_workers(bucket_url: str, job_id: str, worker_ids: list[str], device: str = "cpu",
                      grace_s: float = GRACE_S, install_signals: bool = True) -> dict[str, str]:
    """Run workers as tasks of this process; returns each one's outcome."""
    stop = Stop()
    loop = asyncio.get_running_loop()
    if install_signals:
        def on_term() -> None:
            log.warning("SIGTERM: finishing the current items and committing what is done (grace %.0f s)", grace_s)
            stop.draining.set()
            loop.call_later(grace_s, lambda: os._exit(143))  # past the grace period nothing more is saved

        loop.add_signal_handler(signal.SIGTERM, on_term)
        loop.add_signal_handler(signal.SIGUSR1, dump_tasks)
        meter.work_for(job_id)  # a worker process serves one job: its item reads (keys of yours) are the job's
    async with FleetJob(bucket_url, job_id, writer=f"fleet:{','.join(worker_ids)[:64]}", device=device) as job:
        try:
            await job.open()
        except FleetStopped as exc:
            log.info("not running: %s", exc)
            return {w: "stopped" for w in worker_ids}
        watcher = asyncio.create_task(_watch_job(job, stop))
        duty = ProgressDuty(job, worker_ids[0])
        duty_task = asyncio.create_task(duty.loop(stop))
        beat = ProcessBeat(job, worker_ids)
        last = await beat.last()  # one read for the process: what its workers' previous lives held
        await beat.reclaim()  # and what they claimed after that beat
        beating = asyncio.create_task(beat.loop())
        try:
            workers = [Worker(job, w, stop) for w in worker_ids]
            job.keep_to_own_runs()
            outcomes = await asyncio.gather(*(w.run(last.get(w.id)) for w in workers))
        finally:
            watcher.cancel()
            duty_task.cancel()
            beating.cancel()
            await asyncio.gather(beating, return_exceptions=True)  # a beat under way must not land after the last
            await beat.final()
            if install_signals:  # a dump asked for as the process ends must not end it (SIGUSR1's default)
                loop.remove_signal_handler(signal.SIGUSR1)
                signal.signal(signal.SIGUSR1, signal.SIG_IGN)
        return dict(zip(worker_ids, outcomes))


def _where(coro: Any) -> str:
    """The await chain a task is suspended in, outermost first (Worker.run:412 > straggler:230 > ...)."""
    out = []
    while coro is not None and getattr(coro, "cr_frame", None) is not None:
        out.append(f"{coro.cr_code.co_name}:{coro.cr_frame.f_lineno}")
        coro = coro.cr_await
    return " > ".join(out) or type(coro).__name__


def dump_tasks() -> None:
    """`kill -USR1 <pid>`: where this process's tasks wait, counted, in the log; for a fleet that looks idle."""
    counts: dict[str, int] = {}
    for task in asyncio.all_tasks():
        where = _where(task.get_coro())
        counts[where] = counts.get(where, 0) + 1
    for where, n in sorted(counts.items(), key=lambda kv: -kv[1]):
        log.warning("tasks: %3d at %s", n, where)


async def _watch_job(job: FleetJob, stop: Stop) -> None:
    """Stop the workers when the job leaves this attempt (cancelled, failed, retried elsewhere); and every
    fourth beat read the other processes' new ledgers."""
    beats = 0
    while True:
        await asyncio.sleep(job.body.heartbeat_s * random.uniform(0.8, 1.2))
        beats += 1
        try:
            await job.refresh_view()
            job.check_live()
            if beats % 4 == 0:  # the others' ledgers as they come: a straggler then needs few reads at the end
                await job.learn_ledgers()
        except FleetStopped as exc:
            stop.reason = str(exc)
            stop.stopped.set()
            return
        except BucketrunError as exc:
            log.warning("job state not read: %s", exc)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bucketrun-fleet-worker", description="Run fleet workers.")
    parser.add_argument("--bucket", default=os.environ.get("BUCKETRUN_BUCKET"))
    parser.add_argument("--job", default=os.environ.get("BUCKETRUN_JOB_ID"))
    parser.add_argument("--worker", action="append", default=[])
    parser.add_argument("--device", default=os.environ.get("BUCKETRUN_DEVICE", "cpu"))
    parser.add_argument("--grace", type=float, default=GRACE_S, help="seconds to finish after SIGTERM")
    args = parser.parse_args(argv)
    workers = args.worker or [os.environ.get("BUCKETRUN_WORKER_ID") or f"w-{os.uname().nodename}-{os.getpid()}"]
    if not args.bucket or not args.job:
        print("bucketrun-fleet-worker: --bucket and --job are required", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if MISSING is not None:
        return refuse(args.bucket, args.job, MISSING, workers)
    try:
        outcomes = asyncio.run(run_workers(args.bucket, args.job, workers, args.device, args.grace))
    except BucketrunError as exc:
        print(f"bucketrun-fleet-worker: {exc}", file=sys.stderr)
        return 1
    log.info("workers done: %s", outcomes)
    return 0


def refuse(bucket_url: str, job_id: str, exc: ImportError, workers: list[str]) -> int:
    """This Python lacks what a fleet worker imports: the job fails with config_error and the pip line, written
    as a transition anyone can read, rather than a traceback in this process's log alone."""
    extra = needs.extra_of(exc.name) or "fleet"
    message = needs.refusal("fleet", {exc.name or str(exc): extra})
    print(f"bucketrun-fleet-worker: {message}", file=sys.stderr)
    try:
        bucket = open_bucket(bucket_url)
        view = read_view(bucket, job_id)
        error = error_detail(FailureClass.CONFIG_ERROR, message, where=f"fleet worker {','.join(workers)}")["error"]
        record_failure(bucket, job_id, error, writer=f"fleet:{','.join(workers)[:64]}", attempt=view.attempt,
                       max_attempts=load_job_manifest(bucket, job_id).resources.max_attempts, view=view)
    except BucketrunError as record_exc:  # a second worker may have recorded it first; the job moved on
        log.warning("failure not recorded: %s", record_exc)
    return 1


def attempt_work(ctx) -> dict[str, Any]:
    """The fleet as one attempt of the generic runtime (a host agent, the local process launcher): one worker
    in this process. The worker that finishes the dataset writes `succeeded` itself; the runtime's own
    terminal write then finds it written and stands down."""
    worker = f"w-{os.uname().nodename}-{os.getpid()}"
    outcomes = asyncio.run(run_workers(ctx.bucket.url, ctx.job_id, [worker], install_signals=False))
    view = read_view(ctx.bucket, ctx.job_id)
    if view.state is JobState.SUCCEEDED:
        return dict(view.latest.detail)
    raise JobFailure(FailureClass.LOST, f"the fleet worker stopped ({outcomes[worker]}) before the dataset "
                     f"was committed; the job is {view.state.value if view.state else 'unknown'}", where="fleet")


if __name__ == "__main__":
    sys.exit(main())
