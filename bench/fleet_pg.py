"""The seed's design as bench/fleet.py's baseline: Postgres 15 on loopback, items claimed in batches with
`FOR UPDATE SKIP LOCKED`, a worker table with heartbeats, the same worker count and no-op items."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cloud_path import free_port
from fleet_common import Monitor, RunFailed, item_name, log, split, worker_ids

PG_BIN = Path("/usr/lib/postgresql/15/bin")
APT_CMD = "apt-get install -y postgresql"


PG_SCHEMA = """
DROP TABLE IF EXISTS results, items, workers;
CREATE TABLE items(id bigserial primary key, item text, status text default 'pending', worker text,
                   claimed_at timestamptz, done_at timestamptz, attempts int default 0);
CREATE TABLE workers(id text primary key, heartbeat_at timestamptz, items_done bigint);
CREATE TABLE results(item_id bigint, length bigint);
"""
PG_PARTIAL_INDEXES = ("CREATE INDEX items_pending ON items (id) WHERE status = 'pending'",  # the claim's scan
                      "CREATE INDEX items_claimed ON items (worker) WHERE status = 'claimed'")  # reaping, the end
PG_CLAIM = ("UPDATE items SET status='claimed', worker=%s, claimed_at=now(), attempts=attempts+1 "
            "WHERE id IN (SELECT id FROM items WHERE status='pending' ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) "
            "RETURNING id, item")
PG_DONE = ("UPDATE items SET status='done', done_at=now() "
           "WHERE id = ANY(%s) AND worker = %s AND status = 'claimed'")
PG_RESULTS = "INSERT INTO results(item_id, length) SELECT * FROM unnest(%s::bigint[], %s::bigint[])"
PG_HEARTBEAT = "UPDATE workers SET heartbeat_at=now(), items_done=%s WHERE id=%s"
PG_REAP = ("UPDATE items SET status='pending', worker=NULL WHERE status='claimed' AND worker IN "
           "(SELECT id FROM workers WHERE heartbeat_at < now() - make_interval(secs => %s))")


class Fenced(Exception):
    """This worker's claim was taken from it (reaped as dead): its commit must not land."""


async def pg_worker(dsn: str, wid: str, batch: int, heartbeat_s: float, stale_s: float) -> dict[str, int]:
    import psycopg

    stats = {"items": 0, "batches": 0, "fenced": 0, "reaped": 0}
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute("INSERT INTO workers(id, heartbeat_at, items_done) VALUES (%s, now(), 0) "
                           "ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()", [wid])
        # A restarted worker (same id): whatever its earlier life claimed and did not commit goes back to the queue.
        await conn.execute("UPDATE items SET status='pending', worker=NULL WHERE worker=%s AND status='claimed'",
                           [wid])
        last_hb = time.monotonic()
        while True:
            if time.monotonic() - last_hb >= heartbeat_s:
                await conn.execute(PG_HEARTBEAT, [stats["items"], wid])
                last_hb = time.monotonic()
            rows = await (await conn.execute(PG_CLAIM, [wid, batch])).fetchall()
            if not rows:
                # Nothing pending. Claims under this worker's id that it does not hold are orphans of an earlier
                # life (a claim its dead connection committed after the restart's release); and workers whose
                # heartbeat is older than lease_s are dead: their claims go back to the queue.
                cur = await conn.execute("UPDATE items SET status='pending', worker=NULL "
                                         "WHERE worker=%s AND status='claimed'", [wid])
                n = cur.rowcount
                cur = await conn.execute(PG_REAP, [stale_s])
                if n + cur.rowcount:
                    stats["reaped"] += n + cur.rowcount
                    continue
                if not (await (await conn.execute(
                        "SELECT EXISTS (SELECT 1 FROM items WHERE status='claimed')")).fetchone())[0]:
                    break
                await asyncio.sleep(0.5)
                continue
            ids = [r[0] for r in rows]
            lengths = [len(r[1]) for r in rows]  # the no-op processor: one row per item, its length
            try:
                async with conn.transaction():
                    cur = await conn.execute(PG_DONE, [ids, wid])
                    if cur.rowcount != len(ids):
                        raise Fenced
                    await conn.execute(PG_RESULTS, [ids, lengths])
            except Fenced:
                stats["fenced"] += 1
                continue
            stats["items"] += len(ids)
            stats["batches"] += 1
        await conn.execute(PG_HEARTBEAT, [stats["items"], wid])
    stats["done_at"] = time.time()
    return stats


def pg_worker_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="fleet.py _pg_worker")
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--worker", action="append", required=True)
    ap.add_argument("--batch", type=int, default=50)
    ap.add_argument("--heartbeat-s", type=float, default=5.0)
    ap.add_argument("--stale-s", type=float, default=15.0)
    a = ap.parse_args(argv)

    async def all_workers():
        return await asyncio.gather(*(pg_worker(a.dsn, w, a.batch, a.heartbeat_s, a.stale_s) for w in a.worker))

    out = asyncio.run(all_workers())
    total = {k: sum(s[k] for s in out) for k in ("items", "batches", "fenced", "reaped")}
    print(json.dumps({"workers": len(out), **total, "last_worker_done_at": max(s["done_at"] for s in out),
                      "exit_at": time.time()}), flush=True)


def pg_binaries(install: bool) -> Path | None:
    if (PG_BIN / "initdb").exists() and (PG_BIN / "pg_ctl").exists():
        return PG_BIN
    if not install:
        log(f"Postgres 15 not found at {PG_BIN}: run `{APT_CMD}` (or pass --install); skipping the baseline")
        return None
    log(f"installing Postgres: {APT_CMD}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=False, env=env)
    subprocess.run(APT_CMD.split(), check=True, env=env)
    return PG_BIN if (PG_BIN / "initdb").exists() else None


class PgCluster:
    """A throwaway cluster in a temp dir; stopped (pg_ctl stop -m fast) and removed on exit, even on error."""

    def __init__(self, bindir: Path, durable: bool, max_connections: int):
        self.bindir, self.durable, self.max_connections = bindir, durable, max_connections
        self.tmp: Path | None = None
        self.started = False

    def _as_owner(self, argv: list[str]) -> list[str]:
        if os.geteuid() != 0:
            return argv
        runuser = shutil.which("runuser")
        if runuser:
            return [runuser, "-u", "postgres", "--", *argv]
        return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(map(shlex_quote, argv))]

    def __enter__(self) -> "PgCluster":
        self.tmp = Path(tempfile.mkdtemp(prefix="bucketrun-fleet-pg-"))
        try:
            if os.geteuid() == 0:  # initdb refuses to run as root
                pw = pwd.getpwnam("postgres")
                os.chown(self.tmp, pw.pw_uid, pw.pw_gid)
            self.data = self.tmp / "data"
            self.port = free_port()
            subprocess.run(self._as_owner([str(self.bindir / "initdb"), "-D", str(self.data), "-U", "bench",
                                           "--auth=trust", "-E", "UTF8", "--no-sync", "--locale=C"]),
                           check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.tmp} "
                    f"-c max_connections={self.max_connections} -c shared_buffers=512MB "
                    f"-c synchronous_commit={'on' if self.durable else 'off'}")
            subprocess.run(self._as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l",
                                           str(self.tmp / "server.log"), "-w", "-t", "60", "-o", opts, "start"]),
                           check=True, stdout=subprocess.DEVNULL)
            self.started = True
            self.dsn = f"host=127.0.0.1 port={self.port} user=bench dbname=postgres"
            return self
        except BaseException:
            self.__exit__(None, None, None)
            raise

    def __exit__(self, *exc) -> None:
        if self.started:
            subprocess.run(self._as_owner([str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "fast",
                                           "-w", "stop"]), check=False, stdout=subprocess.DEVNULL)
            self.started = False
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None


def shlex_quote(s: str) -> str:
    import shlex

    return shlex.quote(s)


def pg_run(pg: PgCluster, args: argparse.Namespace, size: int, rep: int, kill: bool) -> dict[str, Any]:
    import psycopg

    label = f"postgres {size:,} #{rep + 1}"
    with psycopg.connect(pg.dsn, autocommit=True) as conn:
        conn.execute(PG_SCHEMA)
        with conn.cursor().copy("COPY items (item) FROM STDIN") as cp:
            for i in range(size):
                cp.write_row([item_name(i)])
        if args.pg_index == "partial":
            for ddl in PG_PARTIAL_INDEXES:
                conn.execute(ddl)
        conn.execute("VACUUM ANALYZE items")
        conn.execute("CHECKPOINT")

    ids = worker_ids(args.workers)
    cmds = [[sys.executable, str(Path(__file__).resolve()), "_pg_worker", "--dsn", pg.dsn, "--batch",
             str(args.shard_size), "--heartbeat-s", str(args.heartbeat_s), "--stale-s", str(args.lease_s),
             *[x for w in group for x in ("--worker", w)]] for group in split(ids, args.procs)]
    mon_conn = psycopg.connect(pg.dsn, autocommit=True)

    def progress() -> tuple[float, str]:
        n = mon_conn.execute("SELECT count(*) FROM results").fetchone()[0]
        return n / size, f"{n:,}/{size:,} items done"

    logdir = Path(tempfile.mkdtemp(prefix="bucketrun-fleet-pglogs-"))
    mon = Monitor(label, size, progress, logdir, args.kill_at if kill else None, args.kill_procs,
                  timeout_s=args.timeout_s or max(600.0, size / 100), stall_s=args.stall_s)
    try:
        t0_wall, t_exit_wall = mon.run(cmds)
        row = mon_conn.execute(
            "SELECT extract(epoch FROM max(done_at)), count(*) FILTER (WHERE status <> 'done'), max(attempts), "
            "sum(attempts) FROM items").fetchone()
        t_done_wall, not_done, max_attempts, sum_attempts = float(row[0]), row[1], row[2], row[3]
        n, distinct = mon_conn.execute("SELECT count(*), count(DISTINCT item_id) FROM results").fetchone()
        missing = mon_conn.execute("SELECT count(*) FROM items i WHERE NOT EXISTS "
                                   "(SELECT 1 FROM results r WHERE r.item_id = i.id)").fetchone()[0]
        wrong = mon_conn.execute("SELECT count(*) FROM items i JOIN results r ON r.item_id = i.id "
                                 "WHERE r.length <> length(i.item)").fetchone()[0]
        if not_done or n != size or distinct != size or missing or wrong:
            raise RuntimeError(f"check failed: {not_done} items not done, {n} result rows, {distinct} "
                               f"distinct, {missing} items without a result, {wrong} wrong lengths")
        worker_stats = [json.loads(line) for p in sorted(logdir.glob("proc*.log"))
                        for line in p.read_text().splitlines() if line.startswith("{")]
    except Exception as exc:  # noqa: BLE001 - recorded; the bench goes on
        log(f"{label}: FAILED: {exc}; worker logs in {logdir}")
        raise RunFailed(f"{type(exc).__name__}: {exc}", {"worker_logs": str(logdir), "kill": mon.kill}) from None
    finally:
        mon_conn.close()
    if args.keep_logs:
        log(f"   worker logs kept in {logdir}")
    else:
        shutil.rmtree(logdir, ignore_errors=True)
    wall = t_done_wall - t0_wall
    res = {"items": size, "wall_s": round(wall, 3), "items_per_s": round(size / wall, 1),
           "workers_exit_s": round(t_exit_wall - t0_wall, 3), "kill": mon.kill,
           "last_process_exit_s": round(max((w["exit_at"] for w in worker_stats), default=t0_wall) - t0_wall, 3),
           "attempts": {"max": max_attempts, "sum": int(sum_attempts)},
           "workers": {k: sum(s.get(k, 0) for s in worker_stats) for k in ("items", "batches", "fenced", "reaped")},
           "checked": "every item done, one result per item, right lengths"}
    log(f"{label}: {res['items_per_s']:,.0f} items/s ({wall:.1f} s"
        f"{', kill -9 at %.0f%%' % (100 * mon.kill['at_fraction']) if mon.kill else ''}); checked")
    return res


# ==============================================================================================================
# bucketrun
# ==============================================================================================================


if __name__ == "__main__" and sys.argv[1:2] == ["_pg_worker"]:
    pg_worker_main(sys.argv[2:])
