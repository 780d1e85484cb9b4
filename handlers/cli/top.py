"""`bucketrun top`: the jobs and a fleet's workers, live in the terminal (rich's Live), read from the bucket at most
every --refresh seconds; keys come from the terminal in cbreak mode, so it works over SSH in an 80x24 window."""

from __future__ import annotations

import os
import select
import sys
import termios
import time
import tty
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.text import Text

from bucketrun.events import codec, keys
from bucketrun.events.errors import BucketrunError
from bucketrun.events.fleet.status import fleet_status
from bucketrun.events.lifecycle import JobView
from bucketrun.events.status import WAITING

from ..board import ago
from ..jobcache import Cache, CountingBucket
from .common import NO_DISPATCHER, bucket_of, number
from .fleet import age_text, rate_text
from .logs import render

HEAD = f"  {'KIND':<12} {'STATE':<10} {'AGE':>5} {'ATT':>3}  {'PROGRESS':<14} ID"


class Board:
    """What the views show, read through the dashboard's cache (handlers/jobcache.py): jobs found by a folder
    listing, a live job re-read at most every refresh, an ended one never again; an open fleet's workers are read
    with it. A fleet's thousands of lease and done markers are never listed just to draw the job list."""

    def __init__(self, bucket, refresh: float = 0.0, budget: float = float("inf")) -> None:
        self.bucket = bucket
        self.cache = Cache(CountingBucket(bucket), refresh, budget)
        self.fleets: dict[str, dict[str, Any]] = {}
        self.rows: list[dict[str, Any]] = []
        self.error: str | None = None
        self.read_at: float | None = None

    @property
    def status(self) -> dict[str, dict[str, Any]]:
        return {job_id: entry["status"] for job_id, (_, entry) in self.cache.jobs.items()}

    @property
    def views(self) -> dict[str, JobView]:
        return {job_id: entry["view"] for job_id, (_, entry) in self.cache.jobs.items() if entry["view"]}

    def refresh(self, open_job: str | None = None) -> None:
        try:
            self.rows = [self._row(r) for r in self.cache.rows()]
            entry = self.cache.job(open_job) if open_job and keys.is_job_id(open_job) else None
            if entry and entry["kind"] == "fleet":
                self.fleets[open_job] = self.cache.fetch(  # once read after its end: kept
                    f"top-fleet:{open_job}:{entry['status']['state']}",
                    lambda: fleet_status(self.cache.bucket, open_job), live=not entry["status"]["terminal"])
            self.error = None
        except BucketrunError as exc:  # a blip of the network or the store: say so, keep what was shown
            self.error = f"read failed: {' '.join(str(exc).split())}"
        self.read_at = time.time()

    def _row(self, r: dict[str, Any]) -> dict[str, Any]:
        if r["state"] == WAITING:
            return {**r, "key": r["job_id"] or r["source"], "progress": "-",
                    "updated_at": codec.iso(r["at"])}
        entry = self.cache.jobs[r["job_id"]][1]
        if entry.get("corrupt"):
            return {**r, "key": r["job_id"], "progress": " ".join(entry["corrupt"].split())}
        return {**r, "key": r["job_id"], "progress": progress_text(entry["status"])}


def progress_text(status: dict[str, Any]) -> str:
    p = status.get("progress") or {}
    if status["state"] == "succeeded":
        return "100%"
    if p.get("percent") is None or status["terminal"]:
        return "-"
    return f"{p['percent']:.0f}% {p.get('stage') or ''}".strip()


def _age_of(row: dict[str, Any], now: float) -> str:
    if row["job_id"]:
        return ago(now - keys.job_time(row["job_id"]).timestamp())
    if row.get("updated_at") not in (None, "-"):
        return ago(now - codec.parse_iso(row["updated_at"]).timestamp())
    return "-"


def fit(lines: list[tuple[str, str]], width: int) -> list[Text]:
    """Each line cut to the terminal's width (with ...), never wrapped: a wrapped line would push the view down."""
    out = []
    for text, style in lines:
        line = Text(text, style=style, no_wrap=True, overflow="ellipsis")
        line.truncate(width, overflow="ellipsis")
        out.append(line)
    return out


class Screen:
    """The view state: which job is chosen, whether its detail is open, and what each view draws."""

    def __init__(self, board: Board, url: str) -> None:
        self.board, self.url = board, url
        self.chosen: str | None = None  # a row's key: its job id (or inbox key), so new jobs do not move it
        self.open: str | None = None
        self.top = 0  # the first row shown
        self.live = True  # False: a snapshot, no chosen row and no keys' line

    def index(self) -> int:
        keys_ = [r["key"] for r in self.board.rows]
        return keys_.index(self.chosen) if self.chosen in keys_ else 0

    def handle(self, key: str) -> bool:
        """Apply one key; False means quit."""
        rows = self.board.rows
        if key == "quit":
            return False
        if self.open is None and rows:
            i = self.index()
            if key in ("up", "down", "home", "end", "pgup", "pgdn"):
                step = {"up": -1, "down": 1, "home": -len(rows), "end": len(rows), "pgup": -10, "pgdn": 10}[key]
                self.chosen = rows[max(0, min(len(rows) - 1, i + step))]["key"]
            elif key == "enter":
                self.chosen = rows[i]["key"]
                self.open = self.chosen
        elif self.open is not None and key in ("back", "escape"):
            self.open = None
        return True

    def draw(self, width: int, height: int, now: float) -> list[Text]:
        read = self.board.read_at
        when = time.strftime("%H:%M:%S", time.localtime(read)) if read is not None else ""
        head = "bucketrun top  " + (f"{len(self.board.rows)} jobs  read {when}  " if read is not None else "") \
            + self.url  # a long URL is what gets cut
        lines = [(head, "bold")]
        if self.board.error:
            lines.append((self.board.error, "red"))
        if self.open is None:
            body = self._list(height - len(lines) - 1, now)
            foot = "Up/Down choose  Enter open  q quit"
        else:
            body = self._detail(self.open, height - len(lines) - 1, now)
            foot = "Esc/Backspace back  q quit"
        if not self.live:
            return fit(lines + body, width)
        shown = (lines + body)[:max(0, height - 1)]
        pad = [("", "")] * (height - 1 - len(shown))  # the keys' line at the bottom
        return fit(shown + pad + [(foot, "dim")], width)[-height:]

    def _list(self, room: int, now: float) -> list[tuple[str, str]]:
        rows = self.board.rows
        if self.board.read_at is None:
            return [("reading the bucket ...", "")]
        if not rows:
            return [("no jobs in this bucket yet; `bucketrun submit` drops one into the inbox", "")]
        room = max(1, room - 1)  # the column heads
        i = self.index()
        self.chosen = rows[i]["key"]
        self.top = min(max(self.top, i - room + 1), i, max(0, len(rows) - room))  # the chosen row stays in view
        out = [(HEAD, "bold")]
        for n, r in enumerate(rows[self.top:self.top + room], start=self.top):
            mark = ">" if n == i and self.live else " "
            text = (f"{mark} {r['kind']:<12} {r['state']:<10} {_age_of(r, now):>5} {r['attempt']:>3}  "
                    f"{r['progress'][:14]:<14} {r['job_id'] or '(not yet named) ' + r['source']}")
            out.append((text, "reverse" if n == i and self.live else _STATE_STYLE.get(r["state"], "")))
        return out

    def _detail(self, key: str, room: int, now: float) -> list[tuple[str, str]]:
        row = next((r for r in self.board.rows if r["key"] == key), None)
        if row is None:
            return [(f"{key}: no longer in the bucket", "")]
        if row["state"] == WAITING:
            return [(f"{row['job_id'] or '(not yet named)'}  {row['kind']}  waiting in the inbox", "bold"),
                    (f"  {row['source']}: no dispatcher has taken it in yet;", ""),
                    (f"  {NO_DISPATCHER}", "")]
        if row["state"] == "corrupt":
            return [(f"{key}  corrupt: {row['progress']}", "red")]
        status = self.board.status[key]
        updated = ago(now - codec.parse_iso(status["updated_at"]).timestamp())
        out = [(f"{key}  {row['kind']}  {status['state']}  attempt {status['attempt']}  updated {updated} ago", "bold")]
        if row["kind"] == "fleet":
            return out + self._fleet(key, room - len(out))
        p = status.get("progress") or {}
        if p and not status["terminal"] or status["state"] == "succeeded":
            eta = f"  ETA {age_text(p['eta_s'])}" if p.get("eta_s") else ""
            out.append((f"progress: {p.get('stage')} {p.get('percent') or 0:.0f}%{eta}", ""))
        if status["error"]:
            out.append((f"error: {status['error'].get('class')}: {status['error'].get('message')}", "red"))
        out += [(f"  {a['key']}  {a['bytes']} B", "") for a in status["artifacts"][:3]]
        transitions = render(list(self.board.views[key].history))
        room = max(1, room - len(out) - 1)
        shown = transitions[-room:]  # the newest, when not all fit
        title = "transitions" + (f" (the last {len(shown)} of {len(transitions)})" if len(shown) < len(transitions)
                                 else "")
        return out + [(title + ":", "bold")] + [(t, "") for t in shown]

    def _fleet(self, key: str, room: int) -> list[tuple[str, str]]:
        st = self.board.fleets.get(key)
        if st is None:
            return [("reading the fleet's workers ...", "")]
        total = st["items_total"]
        out = [(f"{st['items_done']}/{total if total is not None else '?'} items  failed {st['items_failed']}  "
                f"dead-lettered {st['dead_lettered']}" + rate_text(st) + (f"  ETA {age_text(st['eta_s'])}" if st["eta_s"]
                                                                       else ""), ""),
               ((f"workers: {st['workers_alive']} alive of {len(st['workers'])}; shards {st['shards_done']} done of "
                 f"{st['shards_planned'] if st['shards_planned'] is not None else '?'} planned"), "")]
        if st["cost"]:
            out.append((f"cost: ${st['cost']['total_usd']:.2f} over {len(st['cost']['instances'])} instances", ""))
        out.append((f"  {'WORKER':<14} {'STATE':<8} {'BEAT':>5}  {'SHARD':<19} {'RATE':>8} {'DONE':>7}", "bold"))
        workers = st["workers"]
        room = max(1, room - len(out))
        if len(workers) > room:
            workers, more = workers[:room - 1], len(workers) - room + 1
        else:
            more = 0
        for w in workers:
            rate = f"{w['items_per_s']:.1f}/s" if w["items_per_s"] is not None else "-"
            text = (f"  {w['worker'] or '-':<14} {w['state']:<8} {age_text(w['heartbeat_age_s']):>5}  "
                    f"{w['current_shard'] or '-':<19} {rate:>8} {w['items_done']:>7}")
            out.append((text, "" if w["state"] == "alive" else "dim"))
        if more:
            out.append((f"  ... and {more} more (bucketrun fleet status {key})", "dim"))
        return out


_STATE_STYLE = {"running": "green", "succeeded": "", "failed": "red", "rejected": "red", "waiting": "yellow",
                "corrupt": "red", "cancelled": "dim"}

_KEYS = {b"\x1b[A": "up", b"\x1bOA": "up", b"\x1b[B": "down", b"\x1bOB": "down", b"\x1b[H": "home",
         b"\x1b[1~": "home", b"\x1bOH": "home", b"\x1b[F": "end", b"\x1b[4~": "end", b"\x1bOF": "end",
         b"\x1b[5~": "pgup", b"\x1b[6~": "pgdn", b"\r": "enter", b"\n": "enter",
         b"\x7f": "back", b"\x08": "back", b"q": "quit", b"Q": "quit", b"k": "up", b"j": "down"}


def parse_keys(data: bytes) -> list[str]:
    """Key names from what the terminal sent: escape sequences (arrows), Enter, Backspace, a lone Escape."""
    out, i = [], 0
    while i < len(data):
        for seq in sorted(_KEYS, key=len, reverse=True):
            if data.startswith(seq, i):
                out.append(_KEYS[seq])
                i += len(seq)
                break
        else:
            if data[i:i + 1] == b"\x1b":
                j = i + 1  # an unknown sequence (ESC [ ... final byte) is skipped whole; a lone ESC is Escape
                if data[j:j + 1] in (b"[", b"O"):
                    j += 1
                    while j < len(data) and not 0x40 <= data[j] <= 0x7e:
                        j += 1
                    i = j + 1
                    continue
                out.append("escape")
            i += 1
    return out


class Keys:
    """The terminal in cbreak mode (keys arrive one by one, not echoed; Ctrl-C still interrupts) and put back as it
    was on the way out, whatever the way out is."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.saved = None

    def __enter__(self) -> Keys:
        self.saved = termios.tcgetattr(self.fd)
        tty.setcbreak(self.fd)
        return self

    def __exit__(self, *exc) -> None:
        termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)

    def read(self, timeout: float) -> list[str]:
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return []
        data = os.read(self.fd, 64)
        if data == b"\x1b" and select.select([self.fd], [], [], 0.05)[0]:  # the rest of an arrow's sequence
            data += os.read(self.fd, 64)
        return parse_keys(data)


def cmd_top(args) -> int:
    bucket = bucket_of(args)
    board = Board(bucket, refresh=args.refresh)
    screen = Screen(board, bucket.url)
    if not (sys.stdin.isatty() and sys.stdout.isatty()):  # a script, a pipe: one snapshot of every job, exit 0
        board.refresh()
        if board.error:
            raise BucketrunError(board.error)
        screen.live = False
        for line in screen.draw(Console().width, len(board.rows) + 4, time.time()):
            print(line.plain.rstrip())
        return 0
    console = Console()
    next_read = 0.0
    with Keys(sys.stdin.fileno()) as keyboard, Live(console=console, screen=True, auto_refresh=False,
                                                    redirect_stdout=False, redirect_stderr=False) as live:
        while True:
            now = time.monotonic()
            if now >= next_read:
                board.refresh(screen.open)
                next_read = now + args.refresh
            live.update(Group(*screen.draw(console.width, console.height, time.time())), refresh=True)
            for key in keyboard.read(next_read - time.monotonic()):
                if not screen.handle(key):
                    return 0


_seconds = number(float, 0.1, 3600.0, "a number of seconds")


def register(add) -> None:
    p = add("top", cmd_top, "the jobs and a fleet's workers, live in the terminal (q quits; a snapshot when piped)")
    p.add_argument("--refresh", type=_seconds, default=2.0, metavar="SECONDS",
                   help="read the bucket at most this often (default 2)")
