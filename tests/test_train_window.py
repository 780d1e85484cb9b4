"""Training windows end to end with a real trainer (examples/train-window/tiny_trainer.py): two host agents on this
machine, each with its own root, stand in for two hosts; the simulation does intake, launch and the sweep.
Model caches are built in huggingface_hub's own layout from the offline Whisper base files."""

from __future__ import annotations

import importlib.util
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from bucketrun.events import codec, keys
from bucketrun.events.kinds.train_window import TrainWindowBody
from bucketrun.events.lifecycle import read_view
from bucketrun.events.storage import open_bucket
from bucketrun.handlers.client import submit
from bucketrun.images.train_window.fingerprint import fingerprint_dataset, fingerprint_hf_cache, hf_repo_folder
from bucketrun.images.train_window.gate import gate
from bucketrun.images.train_window.preflight import check_host, findings_of
from bucketrun.images.train_window.supervise import Outcome, Supervisor, child_env, triage
from bucketrun.images.transcribe.model import offline_base_parts

from conftest import jobs_by_inbox_key, wait_for

TRAINER = Path(__file__).resolve().parent.parent / "examples" / "train-window" / "tiny_trainer.py"
REPO = "openai/whisper-base"
COMMIT = "a" * 40
BIN = str(Path(sys.executable).with_name("bucketrun"))


def _trainer_module():
    spec = importlib.util.spec_from_file_location("tiny_trainer", TRAINER)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build_cache(root: Path) -> Path:
    """The layout hf_hub_download leaves: blobs by etag, snapshot links ../../blobs/<etag>, refs/main."""
    import hashlib

    part1, _ = offline_base_parts()
    cache = root / "hf" / "hub"
    repo = hf_repo_folder(cache, REPO, "model")
    (repo / "blobs").mkdir(parents=True)
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        data = (part1 / name).read_bytes()
        etag = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()
        (repo / "blobs" / etag).write_bytes(data)
        (repo / "snapshots" / COMMIT / name).symlink_to(f"../../blobs/{etag}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return cache


def make_hosts(under: Path) -> tuple[dict[str, Path], dict]:
    """Two host roots with the same dataset and model cache; fingerprints taken from host-a's copies."""
    make = _trainer_module().make_dataset
    roots = {}
    for label in ("host-a", "host-b"):
        root = under / label
        make(root / "data", n_train=120, n_valid=30, n_test=30, dim=6, seed=1)
        build_cache(root)
        roots[label] = root
    fps = {"dataset": fingerprint_dataset(roots["host-a"] / "data", {"train": 100}).model_dump(mode="json"),
           "cache": fingerprint_hf_cache(roots["host-a"] / "hf" / "hub", REPO).model_dump(mode="json")}
    return roots, fps


@pytest.fixture
def hosts(tmp_path):
    return make_hosts(tmp_path)


def manifest(fps, *flags, target=6, size=6, preflight=("host-a", "host-b"), **over):
    m = {"kind": "train_window",
         "command": [sys.executable, str(TRAINER), "--data", "data", "--run-dir", "{run_dir}",
                     "--target-step", "{target_step}", "--window", "{window}", "--step-sleep", "0.05", *flags],
         "workdir": ".",
         "window": {"target_step": target, "size": size},
         "checkpoint": {"run_dir": "runs/main", "required_files": ["checkpoint-{target_step}/adapter_model.npz",
                                                                    "checkpoint-{target_step}/adapter_config.json"]},
         "dataset": {"path": "data", "fingerprint": fps["dataset"]},
         "model_cache": {"repo_id": REPO, "cache_dir": "hf/hub", "fingerprint": fps["cache"], "mode": "full"},
         "hosts": {"preflight": list(preflight), "launch": "host-a"},
         "timeouts": {"first_log_s": 20, "stall_s": 20, "max_wall_s": 300, "preflight_s": 30},
         "resources": {"heartbeat_s": 1, "stall_after_s": 8, "max_attempts": 1}}
    m.update(over)
    return m


class Fleet:
    """The simulation in a thread plus one agent process per host root."""

    def __init__(self, bucket_url: str, roots: dict[str, Path], routes=None, env: dict[str, str] | None = None):
        from bucketrun.handlers.launchers import Routes
        from bucketrun.handlers.launchers.agent import AgentLauncher
        from bucketrun.local_sim.sim import Simulation

        self.url, self.roots = bucket_url, roots
        self.bucket = open_bucket(bucket_url)
        routes = routes or Routes(by_kind={"train_window": AgentLauncher()})
        self.sim = Simulation(self.bucket, routes, poll_s=0.2,
                              sweep_s=0.5, poll_max_s=0.5, sweep_max_s=1.0)
        self.thread = threading.Thread(target=self.sim.run, daemon=True)
        self.agents: dict[str, subprocess.Popen] = {}
        self.env = {**os.environ, **(env or {})}

    def start_agent(self, label: str) -> subprocess.Popen:
        # Its log goes to a file beside the host's root: a pipe nobody reads blocks the agent once it fills.
        log = open(self.roots[label].parent / f"agent-{label}.log", "ab")  # noqa: SIM115 - handed to the child
        self.agents[label] = subprocess.Popen(
            [BIN, "--bucket", self.url, "agent", "--labels", label, "--root", str(self.roots[label]), "--poll", "0.3",
             "--poll-max", "1"],
            env=self.env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=log)
        log.close()
        return self.agents[label]

    def __enter__(self):
        self.thread.start()
        for label in self.roots:
            self.start_agent(label)
        return self

    def __exit__(self, *exc):
        for proc in self.agents.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.agents.values():
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        self.sim.stop()
        self.thread.join(timeout=30)

    def run(self, m: dict, timeout: float = 120) -> tuple[str, dict]:
        job_id, _ = submit(self.bucket, codec.dumps(m))
        return job_id, self.wait(job_id, timeout)

    def wait(self, job_id: str, timeout: float = 120) -> dict:
        def ended():
            view = read_view(self.bucket, job_id)
            return view if view.state is not None and view.state.terminal else None

        view = wait_for(ended, timeout=timeout, every=0.3)
        return {"state": view.state.value, "attempt": view.attempt, "detail": view.history[-1].detail}


@pytest.fixture
def bucket_url(tmp_path):
    return open_bucket(str(tmp_path / "bucket")).url


def test_a_window_on_two_hosts_gates_mirrors_reports_and_chains(hosts, bucket_url, tmp_path):
    roots, fps = hosts
    nxt = manifest(fps, target=8, size=2, preflight=("host-a",), resume_from="{checkpoint_manifest}")
    nxt["checkpoint"]["run_dir"] = "runs/eval"  # a fresh directory: it must start from the bucket's checkpoint
    with Fleet(bucket_url, roots) as f:
        job, out = f.run(manifest(fps, then=nxt))
        assert out["state"] == "succeeded", out
        d = out["detail"]
        assert d["gate"]["step"] == 6 and d["mirror"]["verified"] and d["mirror"]["files"] >= 4
        assert set(d["preflight"]) == {"host-a", "host-b"} and all(v["ok"] for v in d["preflight"].values())
        # each host wrote its own preflight verdict, with figures, not a folder check
        for label in ("host-a", "host-b"):
            pf = codec.loads(f.bucket.get(keys.preflight_key(job, 1, label)).data)
            assert pf["ok"] and pf["dataset"]["lines"] == 180 and pf["model_cache"]["hashed_bytes"] > 0
        # the mirror: every object re-hashes to what the host has
        mm = codec.loads(f.bucket.get(d["mirror"]["manifest"]).data)
        run_dir = roots["host-a"] / "runs" / "main"
        import hashlib
        for entry in mm["files"]:
            assert hashlib.sha256((run_dir / entry["path"]).read_bytes()).hexdigest() == entry["sha256"]
        assert any(e["path"] == "checkpoint-6/adapter_model.npz" for e in mm["files"])
        log = b"".join(f.bucket.get(i.key).data for i in f.bucket.list(keys.train_log_prefix(job, 1)))
        assert b"step 6/6" in log
        report = subprocess.run([BIN, "--bucket", bucket_url, "report", job], capture_output=True, text=True)
        assert report.returncode == 0 and "**reached**" in report.stdout and "host-b" in report.stdout
        assert "nothing: the checkpoint is verified" in report.stdout and "--target-step 6" in report.stdout
        # metrics at the target step (every numeric field of the progress file) and the lines to rerun it
        progress = json.loads((run_dir / "checkpoint.json").read_text())
        rep = codec.loads(f.bucket.get(keys.report_json_key(job)).data)
        assert rep["metrics"]["step"] == 6 and rep["metrics"]["loss"] == progress["loss"]
        assert rep["metrics"]["valid_acc"] == progress["valid_acc"]
        assert "## Metrics at step 6" in report.stdout and f"loss: {progress['loss']:g}" in report.stdout
        rerun = rep["reproduce_lines"]
        assert rerun[1] == shlex.join(d["command"]) and rerun[1] in report.stdout
        assert rerun[2].startswith(f"bucketrun --bucket {bucket_url} submit ") and keys.manifest_key(job) in rerun[2]
        # status after success is final (not the last heartbeat) and points to the report and the mirror
        shown = subprocess.run([BIN, "--bucket", bucket_url, "status", job], capture_output=True, text=True)
        assert shown.returncode == 0 and "succeeded" in shown.stdout, shown
        assert "training: step 6/6 100.0%" in shown.stdout, shown.stdout
        assert f"report: bucketrun report {job}" in shown.stdout and d["mirror"]["prefix"] in shown.stdout
        as_json = json.loads(subprocess.run([BIN, "--bucket", bucket_url, "status", job, "--json"],
                                            capture_output=True, text=True, check=True).stdout)
        assert as_json["progress"]["percent"] == 100 and as_json["progress"]["stage"] == "training: step 6/6"
        assert as_json["window"]["mirror"]["manifest"] == d["mirror"]["manifest"]
        # the chained stage: submitted after success, started from the verified checkpoint in the bucket
        child = wait_for(lambda: jobs_by_inbox_key(f.bucket).get(keys.inbox_key(f"{job}-then.json")), timeout=60)
        child_out = f.wait(child)
        assert child_out["state"] == "succeeded", child_out
        assert child_out["detail"]["resume"]["from"] == "bucket" and child_out["detail"]["resume"]["step"] == 6
        assert (roots["host-a"] / "runs" / "eval" / "checkpoint.json").exists()
        assert json.loads((roots["host-a"] / "runs" / "eval" / "checkpoint.json").read_text())["step"] == 8


def test_a_host_with_a_truncated_dataset_fails_preflight_and_nothing_launches(hosts, bucket_url):
    roots, fps = hosts
    train = roots["host-b"] / "data" / "train.jsonl"
    train.write_bytes(train.read_bytes()[:-40])
    with Fleet(bucket_url, roots) as f:
        job, out = f.run(manifest(fps))
    err = out["detail"]["error"]
    assert out["state"] == "failed" and err["class"] == "preflight" and err["where"] == "preflight/host-b"
    assert "train.jsonl" in err["message"]
    assert not (roots["host-a"] / "runs" / "main" / "checkpoint.json").exists()  # the window never started
    rep = codec.loads(f.bucket.get(keys.report_json_key(job)).data)
    assert rep["state"] == "failed" and any("host-b" in b for b in rep["blockers"])
    assert rep["reproduce_lines"][-1] == f"bucketrun --bucket {bucket_url} retry {job}"  # a failed one is retried


@pytest.mark.parametrize("damage,problem", [
    ("missing_blob", "missing_blob"), ("truncated_blob", "bytes"), ("incomplete", "incomplete_blob"),
    ("ref", "ref_mismatch"), ("truncated_dataset", "truncated_line")])
def test_preflight_names_each_partial_cache_and_dataset(hosts, damage, problem):
    roots, fps = hosts
    root = roots["host-b"]
    repo = hf_repo_folder(root / "hf" / "hub", REPO, "model")
    blob = repo / "snapshots" / COMMIT / "tokenizer.json"
    target = blob.parent / os.readlink(blob)
    if damage == "missing_blob":
        target.unlink()
    elif damage == "truncated_blob":
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 3])
    elif damage == "incomplete":
        (repo / "blobs" / "0123abcd.1a2b3c4d.incomplete").write_bytes(b"partial")
    elif damage == "ref":
        (repo / "refs" / "main").write_text("b" * 40)
    else:
        p = root / "data" / "valid.jsonl"
        p.write_bytes(p.read_bytes()[:-7])
    body = TrainWindowBody.model_validate({k: v for k, v in manifest(fps).items() if k not in ("kind", "resources")})
    verdict = check_host(body, root=root)
    assert not verdict["ok"]
    assert problem in {f["problem"] for f in findings_of(verdict)}
    if damage != "truncated_dataset":
        assert verdict["model_cache"]["partial"] == (damage in ("missing_blob", "truncated_blob", "incomplete"))
    assert check_host(body, root=roots["host-a"])["ok"]  # the good host passes the same checks


def _supervise(root: Path, *flags, target=5, first_log_s=20.0, stall_s=20.0):
    run_dir = root / "runs" / "t"
    argv = [sys.executable, str(TRAINER), "--data", str(root / "data"), "--run-dir", str(run_dir),
            "--target-step", str(target), "--step-sleep", "0.05", *flags]
    sup = Supervisor(argv, root, child_env([]), run_dir / "checkpoint.json", "step", first_log_s, stall_s, 120)
    out = sup.run()
    from bucketrun.events.kinds.train_window import Checkpoint

    ck = Checkpoint.model_validate({"run_dir": "runs/t", "required_files": ["checkpoint-{target_step}/adapter_model.npz"]})
    return out, gate(run_dir, ck, target)


def _processes_running(needle: str) -> list[str]:
    """Command lines of live processes (zombies excluded) that mention `needle`."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if needle in cmdline and state not in ("Z", "X"):
            found.append(cmdline)
    return found


@pytest.mark.parametrize("flags,cls,said,reason,rc", [
    (["--hang-before-log"], "model_error", "no training step reported within first_log_s", "first_log_timeout", None),
    (["--hang-after-step", "2"], "stall", "went silent", "stall", None),
    (["--crash-at", "3"], "runtime_crash", "exit code 3", "exited", 3),
    (["--fail-write"], "disk_full", "No space left", "exited", 1),
    (["--write-nothing"], "code_error", "exited 0", "exited", 0),
])
def test_triage_classifies_each_way_a_run_fails(hosts, flags, cls, said, reason, rc):
    """Each failure is classified, and the run ended for its own reason: a hang was stopped by the watch that
    fits it (first_log_s or stall_s, never the 120 s max_wall_s), and no trainer is left running."""
    roots, _ = hosts
    out, g = _supervise(roots["host-a"], *flags, first_log_s=3.0, stall_s=3.0)
    assert not g["passed"]
    got, message = triage(out, 5, 3.0, 3.0)
    assert got.value == cls and said in message, (got, message, out)
    assert out.reason == reason and out.rc == rc, out  # stopped by its condition, not by the wall clock
    assert _processes_running(str(roots["host-a"] / "runs" / "t")) == []  # the hang was stopped, not left
    if reason == "first_log_timeout":
        assert out.first_log_s is None and out.lines == 0 and out.step is None, out
    if reason == "stall":  # it logged, then its silence outlasted stall_s, and that is what stopped it
        assert out.first_log_s is not None and out.silent_s > 3.0 and out.step == 2, out
        assert any("step 2/5" in line for line in out.tail) and not any("step 3/5" in line for line in out.tail)
    if cls == "runtime_crash":
        assert out.step == 2 and "injected crash" in message  # the last log lines are in the message
    if cls == "code_error":
        assert out.step is None and any("step 5/5" in line for line in out.tail), out  # trained, wrote nothing


def test_a_path_error_is_named_as_such(hosts, tmp_path):
    roots, _ = hosts
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a directory should be")
    argv = [sys.executable, str(TRAINER), "--data", str(roots["host-a"] / "data"), "--run-dir",
            str(blocker / "run"), "--target-step", "3", "--step-sleep", "0"]
    out = Supervisor(argv, tmp_path, child_env([]), blocker / "run" / "checkpoint.json", "step", 20, 20, 60).run()
    got, message = triage(out, 3, 20, 20)
    assert got.value == "path_error" and out.rc not in (0, None), (got, message)


def test_a_noisy_teardown_after_the_gate_is_success_with_a_warning(hosts, bucket_url):
    roots, fps = hosts
    with Fleet(bucket_url, {"host-a": roots["host-a"]}) as f:
        _, out = f.run(manifest(fps, "--exit-nonzero-after-last", preflight=("host-a",)))
    assert out["state"] == "succeeded", out
    assert any("exited 1 after the checkpoint reached step 6" in w for w in out["detail"]["warnings"])


def test_a_stalled_window_fails_as_a_stall_through_the_agent(hosts, bucket_url):
    roots, fps = hosts
    m = manifest(fps, "--hang-after-step", "2", preflight=("host-a",))
    m["timeouts"]["stall_s"] = 3
    with Fleet(bucket_url, {"host-a": roots["host-a"]}) as f:
        _, out = f.run(m)
    assert out["state"] == "failed" and out["detail"]["error"]["class"] == "stall"
    message = out["detail"]["error"]["message"]
    assert "at step 2" in message
    assert m["resources"]["max_attempts"] == 1 and out["attempt"] == 1  # so no resume may be promised
    assert "no attempt is left: `bucketrun retry JOB`" in message and "next attempt" not in message, message


def test_resume_after_kill_9_of_the_agent_mid_run(hosts, bucket_url):
    """The agent and its attempt die with kill -9 while the trainer runs on, orphaned; the sweep sees the
    silence, retries, a new agent stops the orphan and resumes from the checkpoint, never from scratch."""
    roots, fps = hosts
    m = manifest(fps, target=60, size=60, preflight=("host-a",))
    m["command"][m["command"].index("0.05")] = "0.5"
    m["resources"]["max_attempts"] = 2
    with Fleet(bucket_url, {"host-a": roots["host-a"]}) as f:
        job, _ = submit(f.bucket, codec.dumps(m))
        progress = roots["host-a"] / "runs" / "main" / "checkpoint.json"
        wait_for(lambda: progress.exists() and json.loads(progress.read_text())["step"] >= 3, timeout=60)
        agent = f.agents["host-a"]
        os.killpg(agent.pid, signal.SIGKILL)  # the agent and its attempt; the trainer has its own session
        agent.wait()
        killed_at = json.loads(progress.read_text())["step"]
        f.start_agent("host-a")
        out = f.wait(job, timeout=180)
    assert out["state"] == "succeeded" and out["attempt"] == 2, out
    retried = next(t.detail["retry"]["error"] for t in read_view(f.bucket, job).history if t.detail.get("retry"))
    assert retried["class"] in ("lost", "stall") and "on host " in retried["message"], retried  # where it ran
    assert keys.log_key(job, 1) in retried["message"], retried  # and where the attempt's own log is
    resume = out["detail"]["resume"]
    assert resume["from"] == "host" and resume["step"] >= killed_at
    log = b"".join(f.bucket.get(i.key).data for i in f.bucket.list(keys.train_log_prefix(job, 2))).decode()
    import re

    first = int(re.search(r"^step (\d+)/60", log, re.M)[1])
    assert first == resume["step"] + 1 and first > killed_at  # resumed, not restarted from step 1


def test_a_failing_smoke_run_stops_the_window_before_it_starts(hosts, bucket_url):
    roots, fps = hosts
    m = manifest(fps, preflight=("host-a",))
    m["smoke"] = {"command": [*m["command"], "--crash-at", "1"], "run_dir": "scratch/smoke", "target_step": 1,
                  "timeout_s": 60}
    with Fleet(bucket_url, {"host-a": roots["host-a"]}) as f:
        job, out = f.run(m)
        err = out["detail"]["error"]
        assert out["state"] == "failed" and err["where"] == "smoke" and err["class"] == "runtime_crash", err
        assert not (roots["host-a"] / "runs" / "main" / "checkpoint.json").exists()  # the real window never ran
        ok = manifest(fps, preflight=("host-a",))
        ok["smoke"] = {"command": ok["command"], "run_dir": "scratch/smoke", "target_step": 1}
        _, out = f.run(ok)
        assert out["state"] == "succeeded", out
        rep = codec.loads(f.bucket.get(keys.report_json_key(_)).data)
        assert rep["smoke"]["passed"] and rep["smoke"]["step"] == 1


def test_only_named_variables_reach_the_command(tmp_path, monkeypatch):
    """`env` names what passes through; the agent's own bucket credentials never reach the training command."""
    monkeypatch.setenv("TRAIN_PROFILE", "p7")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "never-in-the-run")
    out_file = tmp_path / "env.json"
    code = f"import json, os; json.dump(dict(os.environ), open({str(out_file)!r}, 'w')); print('step 1')"
    out = Supervisor([sys.executable, "-c", code], tmp_path, child_env(["TRAIN_PROFILE"]), tmp_path / "p.json",
                     "step", 20, 20, 60).run()
    seen = json.loads(out_file.read_text())
    assert out.rc == 0 and out.first_log_s is not None
    assert seen["TRAIN_PROFILE"] == "p7" and "AWS_SECRET_ACCESS_KEY" not in seen and "PATH" in seen


def test_cli_fingerprint_and_agent_errors_are_one_line(hosts, tmp_path, bucket_url):
    roots, fps = hosts
    ok = subprocess.run([BIN, "fingerprint", "dataset", str(roots["host-a"] / "data"), "--min-lines", "train=100"],
                        capture_output=True, text=True)
    assert ok.returncode == 0 and json.loads(ok.stdout) == fps["dataset"]
    hf = subprocess.run([BIN, "fingerprint", "hf-cache", str(roots["host-a"] / "hf" / "hub"), "--repo", REPO],
                        capture_output=True, text=True)
    assert hf.returncode == 0 and json.loads(hf.stdout)["revision"] == COMMIT
    for argv in (["fingerprint", "dataset", str(tmp_path / "nowhere")],
                 ["fingerprint", "hf-cache", str(roots["host-a"] / "hf" / "hub"), "--repo", "org/absent"],
                 ["--bucket", bucket_url, "agent", "--labels", "Bad Label"],
                 ["--bucket", bucket_url, "report", "20991231T000000000Z-zzzzzz"]):
        bad = subprocess.run([BIN, *argv], capture_output=True, text=True)
        assert bad.returncode != 0 and "Traceback" not in bad.stderr, (argv, bad.stderr)
        assert len(bad.stderr.strip().splitlines()) == 1, (argv, bad.stderr)


def test_a_manifest_that_names_agents_runs_transcription_on_one(bucket_url, tmp_path, http_media):
    """Any kind can run on an agent: a transcription with launch.agent.labels goes to the agent, not the cloud."""
    roots = {"gpu-box": tmp_path / "gpu-box"}
    roots["gpu-box"].mkdir()
    with Fleet(bucket_url, roots) as f:
        job, out = f.run({"kind": "transcribe", "source": {"url": f"{http_media}/speech.ogg"},
                          "launch": {"agent": {"labels": ["gpu-box"]}}, "resources": {"max_attempts": 1}},
                         timeout=300)
        assert out["state"] == "succeeded", out
        claims = [i.key for i in f.bucket.list(f"{keys.job_prefix(job)}agents/")]
        assert claims == [keys.agent_claim_key(job, 1, "gpu-box", "run")]
        assert codec.loads(f.bucket.get(claims[0]).data)["label"] == "gpu-box"
        assert {a["format"] for a in out["detail"]["artifacts"]} >= {"srt", "vtt", "json", "txt"}


def test_a_rented_host_is_stopped_only_after_its_checkpoint_is_verified(hosts, bucket_url, monkeypatch):
    """hosts.teardown: the window asks, and the sweep stops the instance (Vast, faked at its HTTP boundary) once
    the mirror verified; a request whose mirror is not verified is dropped, the host left running."""
    from test_fleet_cloud_backends import FakeVast, offer, vast_spec

    from bucketrun.handlers import host_teardown
    from bucketrun.handlers.launchers import Routes
    from bucketrun.handlers.launchers.agent import AgentLauncher
    from bucketrun.handlers.launchers.fleet import FleetLauncher
    from bucketrun.handlers.launchers.vast import VastBackend

    fake = FakeVast([offer(1, 0.45)])
    try:
        vast = VastBackend("vast-test-key", server_url=fake.url)
        [inst] = vast.start(bucket_url, "20260101T000000000Z-aaaaaa", ["w000"], vast_spec())
        roots, fps = hosts
        routes = Routes(by_kind={"train_window": AgentLauncher(), "fleet": FleetLauncher({"vast": vast})})
        with Fleet(bucket_url, {"host-a": roots["host-a"]}, routes,
                   env={"BUCKETRUN_INSTANCE": f"vast:{inst.instance_id}"}) as f:
            m = manifest(fps, preflight=("host-a",))
            m["hosts"]["teardown"] = True
            job, out = f.run(m)
            assert out["state"] == "succeeded", out
            record = wait_for(lambda: f.bucket.exists(keys.host_teardown_record_key(job)), timeout=30)
            assert record
            rec = codec.loads(f.bucket.get(keys.host_teardown_record_key(job)).data)
            assert rec["state"] == "done" and rec["action"] == "terminate", rec  # hosts.teardown: at once
            assert rec["instance"] == {"backend": "vast", "id": inst.instance_id}
            assert vast.alive(inst.instance_id) is False
            assert not list(f.bucket.list(keys.TEARDOWN))
    finally:
        fake.close()
    req = {"job_id": "j", "agent": "a", "instance": {"backend": "vast", "id": "1"}}
    assert host_teardown.decide(req, "succeeded", None, None)[0] == "drop"
    assert host_teardown.decide(req, "succeeded", {"verified": False}, None)[0] == "drop"
    assert host_teardown.decide(req, "running", {"verified": True}, None)[0] == "wait"
    assert host_teardown.decide(req, "succeeded", {"verified": True}, {"tasks": [{"job_id": "other"}]})[0] == "wait"
    assert host_teardown.decide(req, "succeeded", {"verified": True}, {"tasks": [{"job_id": "j"}]})[0] == "go"
    asks = {**req, "approve": "required"}
    assert host_teardown.decide(asks, "succeeded", {"verified": True}, None, approved=False)[0] == "ask"
    assert host_teardown.decide(asks, "succeeded", {"verified": True}, None, approved=True)[0] == "go"
    assert host_teardown.decide(asks, "succeeded", {"verified": False}, None, approved=True)[0] == "drop"


def test_a_dataset_from_a_bucket_prefix_is_synced_then_verified(hosts, bucket_url, tmp_path):
    roots, fps = hosts
    bucket = open_bucket(bucket_url)
    for p in sorted((roots["host-a"] / "data").iterdir()):
        bucket.put(f"datasets/v1/{p.name}", p.read_bytes())
    m = manifest(fps, preflight=("host-a",))
    m["dataset"] = {"path": "synced", "prefix": "datasets/v1", "fingerprint": fps["dataset"]}
    body = TrainWindowBody.model_validate({k: v for k, v in m.items() if k not in ("kind", "resources")})
    empty = tmp_path / "fresh-host"
    build_cache(empty)
    first = check_host(body, bucket, root=empty)
    assert first["ok"] and first["dataset"]["sync"]["fetched"] == 4 and first["dataset"]["lines"] == 180
    again = check_host(body, bucket, root=empty)  # present and the right size: kept, and still verified
    assert again["ok"] and again["dataset"]["sync"] == {"prefix": "datasets/v1/", "fetched": 0, "kept": 4}
    bucket.put("datasets/v1/train.jsonl", b'{"x": [1], "y": 0}\n')  # the bucket copy is wrong: verify says so
    (empty / "synced" / "train.jsonl").unlink()
    bad = check_host(body, bucket, root=empty)
    assert not bad["ok"] and {"bytes", "sha256"} <= {f["problem"] for f in findings_of(bad)}


def test_sigterm_stops_the_agent_cleanly_and_the_window_resumes_elsewhere(hosts, bucket_url):
    """SIGTERM: the agent stops claiming, its attempt stops the trainer's process group and ends as `lost`
    (retried), the agent goes offline and exits 0; the next agent resumes from the checkpoint."""
    roots, fps = hosts
    m = manifest(fps, target=40, size=40, preflight=("host-a",))
    m["command"][m["command"].index("0.05")] = "0.3"
    m["resources"]["max_attempts"] = 2
    with Fleet(bucket_url, {"host-a": roots["host-a"]}) as f:
        job, _ = submit(f.bucket, codec.dumps(m))
        run_dir = roots["host-a"] / "runs" / "main"
        wait_for(lambda: (run_dir / "checkpoint.json").exists()
                 and json.loads((run_dir / "checkpoint.json").read_text())["step"] >= 2, timeout=60)
        pgid = json.loads((run_dir / ".bucketrun-run.json").read_text())["pgid"]
        agent = f.agents["host-a"]
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=45) == 0
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)  # the trainer's whole group is gone, not orphaned
        history = read_view(f.bucket, job).history
        retry = next(t for t in history if t.state.value == "queued" and "retry" in t.detail)  # at once: lost
        assert retry.detail["retry"]["error"]["class"] == "lost", retry.detail
        assert not any(t.state.value == "failed" for t in history)
        beats = [codec.loads(f.bucket.get(i.key).data) for i in f.bucket.list(keys.HOSTS)]
        assert beats and all(b["state"] == "offline" for b in beats)
        f.start_agent("host-a")
        out = f.wait(job, timeout=180)
    assert out["state"] == "succeeded" and out["attempt"] == 2, out
    assert out["detail"]["resume"]["from"] == "host" and out["detail"]["resume"]["step"] >= 2


def test_failure_messages_promise_only_what_will_happen():
    """A stall promises a resume on the next attempt only when one is left, else names the retry; the model_error
    advice suggests model_cache.mode=full only to a manifest that does not already run it."""
    stalled = Outcome("stall", None, 1.0, 900.0, 1000.0, 4, ["step 4/10"])
    _, left = triage(stalled, 10, 600, 900, attempts_left=True)
    _, last = triage(stalled, 10, 600, 900, attempts_left=False)
    assert "resume from the last verified checkpoint on its next attempt" in left
    assert "next attempt" not in last and "no attempt is left" in last and "bucketrun retry" in last
    silent = Outcome("first_log_timeout", None, None, 600.0, 600.0, None, ["Downloading model.bin"])
    _, quick = triage(silent, 10, 600, 900, cache_mode="quick")
    _, full = triage(silent, 10, 600, 900, cache_mode="full")
    assert "verify it with model_cache.mode=full" in quick
    assert "verify it with model_cache.mode=full" not in full and "mode=full passed" in full


def test_a_preflight_host_without_an_agent_fails_within_preflight_s_naming_how_to_start_it(hosts, bucket_url):
    """Waiting for a host is the manifest's choice (timeouts.preflight_s, 120 s by default, not 15 minutes), and
    the failure names each missing host with the command that starts its agent."""
    from bucketrun.events.kinds.train_window import Timeouts

    assert Timeouts().preflight_s == 120
    roots, fps = hosts
    m = manifest(fps, preflight=("host-a", "host-b", "mac4", "mac5"))
    m["timeouts"]["preflight_s"] = 3
    with Fleet(bucket_url, roots) as f:
        _, out = f.run(m, timeout=100)  # under the default 120 s: the manifest's 3 s is what was waited
    err = out["detail"]["error"]
    assert out["state"] == "failed" and err["class"] == "preflight" and err["where"] == "preflight/mac4", err
    assert "timeouts.preflight_s=3 s" in err["message"]
    for host in ("mac4", "mac5"):
        assert f"agent --labels {host}`" in err["message"], err["message"]
    assert "host-a" not in err["message"].split("did not")[0]  # only the missing ones are named


def test_a_download_bar_is_progress_and_a_run_with_no_step_past_first_log_s_is_a_model_error(hosts):
    """Output counts by the byte: a banner then only a `\\r` bar for longer than stall_s is busy, not a stall, and
    the run trains. A bar that never ends with no training step past first_log_s is model_error (the run never
    began: materialization), quoting the bar, not a stall."""
    roots, _ = hosts
    out, g = _supervise(roots["host-a"], "--download-bar", "4", first_log_s=15.0, stall_s=2.0)
    assert out.reason == "exited" and out.rc == 0 and g["passed"], out
    assert any("model.safetensors" in line for line in out.tail)
    shutil.rmtree(roots["host-a"] / "runs" / "t")
    # Training has begun: a `\r` evaluation bar for longer than stall_s, with no newline and no progress-file
    # change, is still output, so busy, not a stall (counted per line, it was a stall).
    out, g = _supervise(roots["host-a"], "--eval-bar", "2", "4", first_log_s=15.0, stall_s=2.0)
    assert out.reason == "exited" and out.rc == 0 and g["passed"], out
    shutil.rmtree(roots["host-a"] / "runs" / "t")  # a fresh run directory: the first run's checkpoint is gone
    out, g = _supervise(roots["host-a"], "--download-bar", "-1", first_log_s=4.0, stall_s=2.0)
    assert out.reason == "first_log_timeout" and not g["passed"], out
    cls, message = triage(out, 5, 4.0, 2.0)
    assert cls.value == "model_error" and "no training step reported within first_log_s=4 s" in message
    assert "MB/1.2 GB" in message  # the bar itself, the last output line, is quoted


def test_an_offer_seen_before_launched_is_kept_and_claimed_once_the_job_is_launched(tmp_path):
    """The launcher puts its offers just before it writes `launched`. An agent polling in between saw a queued job,
    took the offer for stale and deleted it, and the job (a chained `then` stage in CI) waited forever."""
    from bucketrun.events.lifecycle import JobState, append_transition
    from bucketrun.images.runtime.agent import Agent

    bucket = open_bucket(str(tmp_path / "bucket"))
    job = "20261202T000000000Z-abcdef"
    append_transition(bucket, job, JobState.SUBMITTED, writer="t", attempt=1)
    append_transition(bucket, job, JobState.QUEUED, writer="t", attempt=1)
    offer = keys.agent_offer_key("host-a", job, 1, "preflight")
    bucket.put(offer, codec.dumps({"job_id": job, "attempt": 1}), "application/json")
    agent = Agent(bucket, ["host-a"], root=tmp_path, agent_id="a1")
    spawned = []
    agent.spawn = lambda *args: spawned.append(args) or subprocess.Popen([sys.executable, "-c", "pass"])
    agent.consider(offer, "host-a", job, 1, "preflight")
    assert bucket.exists(offer) and offer not in agent.done and spawned == []  # kept, not claimed yet
    append_transition(bucket, job, JobState.LAUNCHED, writer="t", attempt=1)
    agent.consider(offer, "host-a", job, 1, "preflight")
    assert spawned == [(job, 1, "host-a", "preflight")]
    assert bucket.exists(keys.agent_claim_key(job, 1, "host-a", "preflight"))
