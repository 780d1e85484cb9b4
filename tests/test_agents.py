"""Host agents a person can run and see: `bucketrun agents` lists them as their heartbeats say (version, labels,
age, alive/stale/offline, what each runs, which kinds it can run); an agent whose environment lacks a kind's
module leaves that kind's offers to one that has it, and when no live agent on the label has it, fails the job as
`config_error` with the pip line; `bucketrun agent --print-unit` prints a unit whose command really starts one.

A module goes missing as it would in a real environment: PYTHONPATH puts a `psutil.py` that raises ImportError
first, so `import psutil` fails in the agent's interpreter (and is found, so a find_spec check would miss it)."""

from __future__ import annotations

import importlib.metadata
import json
import os
import plistlib
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bucketrun.events import codec, keys
from bucketrun.events.storage import open_bucket
from bucketrun.handlers.client import submit

from conftest import wait_for
from test_train_window import BIN, Fleet, bucket_url, hosts, manifest  # noqa: F401 - fixtures: a folder bucket, hosts

ALL_KINDS = ["fleet", "train_window", "transcribe"]


@pytest.fixture
def no_psutil(tmp_path) -> dict[str, str]:
    """An environment in which `import psutil` fails (the agent extra's module for training windows)."""
    blocker = tmp_path / "no-psutil"
    blocker.mkdir()
    (blocker / "psutil.py").write_text('raise ImportError("psutil is not installed in this environment")\n')
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(blocker), os.environ.get("PYTHONPATH")]))}


def start_agent(f: Fleet, agent_id: str, label: str, root: Path, env: dict[str, str] | None = None):
    log = open(root.parent / f"agent-{agent_id}.log", "ab")  # noqa: SIM115 - handed to the child
    f.agents[agent_id] = subprocess.Popen(
        [BIN, "--bucket", f.url, "agent", "--labels", label, "--root", str(root), "--id", agent_id, "--poll", "0.3",
         "--poll-max", "1"], env={**os.environ, **(env or {})}, start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=log)
    log.close()


def agents(url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([BIN, "--bucket", url, "agents", *args], capture_output=True, text=True, timeout=60)


def listed(url: str) -> dict[str, dict]:
    done = agents(url, "--json")
    assert done.returncode == 0, done.stderr
    return {h["agent"]: h for h in json.loads(done.stdout)}


def test_an_agent_without_a_kinds_module_leaves_it_to_one_with_it_and_agents_shows_both(hosts, bucket_url,
                                                                                         no_psutil):
    roots, fps = hosts
    with Fleet(bucket_url, {}) as f:
        start_agent(f, "lacking", "host-a", roots["host-a"], no_psutil)
        start_agent(f, "full", "host-a", roots["host-a"])
        seen = wait_for(lambda: (lambda h: h if {"lacking", "full"} <= set(h) else None)(listed(bucket_url)), 60)
        version = importlib.metadata.version("bucketrun")
        assert seen["full"]["kinds"] == ALL_KINDS and seen["full"]["cannot_run"] == {}
        assert seen["lacking"]["kinds"] == ["fleet", "transcribe"]
        said = seen["lacking"]["cannot_run"]["train_window"]
        assert "psutil does not import" in said and "pip install 'bucketrun[agent]'" in said, said
        for h in seen.values():
            assert h["status"] == "alive" and h["version"] == version and h["labels"] == ["host-a"]
            assert h["heartbeat_age_s"] < 60 and h["tasks"] == []
        m = manifest(fps, preflight=("host-a",))
        m["command"][m["command"].index("0.05")] = "0.4"  # slow enough to be seen running
        job, _ = submit(f.bucket, codec.dumps(m))
        running = wait_for(lambda: listed(bucket_url)["full"]["tasks"], timeout=60)
        assert {(t["job_id"], t["role"]) for t in running} <= {(job, "preflight"), (job, "run")}
        table = agents(bucket_url).stdout
        assert table.splitlines()[0].split() == ["AGENT", "STATUS", "HEARTBEAT", "VERSION", "LABELS", "RUNNING",
                                                 "CAN", "RUN"]
        row = next(line for line in table.splitlines() if line.startswith("full "))
        assert "alive" in row and version in row and f"{job} #1" in row and "fleet, train_window, transcribe" in row
        assert "lacking cannot run train_window: psutil does not import" in table
        out = f.wait(job, timeout=120)
        assert out["state"] == "succeeded", out
        claims = [codec.loads(f.bucket.get(i.key).data) for i in f.bucket.list(f"{keys.job_prefix(job)}agents/")]
        assert claims and {c["agent"] for c in claims} == {"full"}
        # stale: killed without a word, its heartbeat ages past the limit; offline: stopped, it says so
        os.killpg(f.agents["lacking"].pid, signal.SIGKILL)
        f.agents["lacking"].wait()
        beat = Path(f.bucket.path_of(keys.host_key("lacking")))
        os.utime(beat, (time.time() - 300, time.time() - 300))
        f.agents["full"].send_signal(signal.SIGTERM)
        assert f.agents["full"].wait(timeout=60) == 0
        after = listed(bucket_url)
        assert after["lacking"]["status"] == "stale" and after["lacking"]["heartbeat_age_s"] >= 299
        assert after["full"]["status"] == "offline"
        assert "5m ago" in next(line for line in agents(bucket_url).stdout.splitlines() if line.startswith("lacking"))


def test_a_kind_no_live_agent_can_run_fails_at_once_as_config_error_with_the_pip_line(hosts, bucket_url, no_psutil):
    roots, fps = hosts
    with Fleet(bucket_url, {}) as f:
        start_agent(f, "lacking", "host-a", roots["host-a"], no_psutil)
        wait_for(lambda: f.bucket.exists(keys.host_key("lacking")), timeout=60)
        m = manifest(fps, preflight=("host-a",))
        m["timeouts"]["preflight_s"] = 120  # so a failure within the wait below is the agent's, not the timeout
        started = time.monotonic()
        job, out = f.run(m, timeout=60)
    err = out["detail"]["error"]
    assert out["state"] == "failed" and err["class"] == "config_error" and err["where"] == "agent/host-a", err
    assert "pip install 'bucketrun[agent]'" in err["message"] and "psutil" in err["message"], err["message"]
    assert "no live agent on label host-a can run train_window" in err["message"]
    assert time.monotonic() - started < 60
    assert not list(f.bucket.list(f"{keys.job_prefix(job)}agents/"))  # nothing was claimed
    assert not list(f.bucket.list(keys.agent_offer_prefix("host-a")))  # and no offer is left waiting
    status = subprocess.run([BIN, "--bucket", bucket_url, "status", job], capture_output=True, text=True)
    assert "config_error" in status.stdout and "pip install 'bucketrun[agent]'" in status.stdout


@pytest.mark.parametrize("kind", ["systemd", "launchd"])
def test_print_unit_prints_a_service_whose_command_starts_the_agent(kind, tmp_path):
    bucket = open_bucket(str(tmp_path / "bucket"))
    root = tmp_path / "host root"  # a space, so the quoting is exercised
    root.mkdir()
    env = {**os.environ, "BUCKETRUN_S3_ADDRESSING_STYLE": "path", "AWS_SECRET_ACCESS_KEY": "never-printed-123"}
    done = subprocess.run([BIN, "--bucket", bucket.url, "agent", "--labels", "mac4,gpu", "--root", str(root),
                           "--print-unit", kind], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    unit = done.stdout
    assert "never-printed-123" not in unit and "AWS_SECRET_ACCESS_KEY" in unit  # named, never its value
    if kind == "systemd":
        lines = unit.splitlines()
        assert "[Service]" in lines and "Restart=on-failure" in lines and "[Install]" in lines
        assert "Environment=BUCKETRUN_S3_ADDRESSING_STYLE=path" in lines
        argv = shlex.split(next(line for line in lines if line.startswith("ExecStart="))[len("ExecStart="):])
        assert f"WorkingDirectory={root}" in lines
    else:
        plist = plistlib.loads(unit.encode())
        assert plist["KeepAlive"] == {"SuccessfulExit": False} and plist["RunAtLoad"] is True
        assert plist["EnvironmentVariables"]["BUCKETRUN_S3_ADDRESSING_STYLE"] == "path"
        assert plist["WorkingDirectory"] == str(root)
        argv = plist["ProgramArguments"]
    assert argv[0] == str(Path(sys.executable).with_name("bucketrun"))
    assert argv[1:] == ["--bucket", bucket.url, "agent", "--labels", "mac4,gpu", "--root", str(root)]
    ran = subprocess.run([*argv, "--id", "from-unit", "--once"], capture_output=True, text=True, timeout=120,
                         cwd=root)
    assert ran.returncode == 0, ran.stderr
    beat = codec.loads(bucket.get(keys.host_key("from-unit")).data)
    assert beat["labels"] == ["mac4", "gpu"] and beat["root"] == str(root) and beat["state"] == "offline"
