"""Training windows over several attempts: what the report remembers, what a crash leaves in the bucket, and the
next stage surviving its agent. Same harness as test_train_window.py (two host agents, the simulation, a real
numpy trainer)."""

from __future__ import annotations

import os
import shutil
import subprocess

from bucketrun.events import codec, keys
from bucketrun.handlers.control import retry
from bucketrun.images.train_window.fingerprint import hf_repo_folder

from conftest import jobs_by_inbox_key, wait_for
from test_train_window import BIN, COMMIT, REPO, Fleet, bucket_url, hosts, manifest  # noqa: F401 - fixtures


def test_the_report_keeps_every_attempt_a_partial_cache_then_a_fixed_one(hosts, bucket_url):  # noqa: F811
    """host-b's cache is partial, so attempt 1 fails preflight; the blob is put back and the job retried. The
    report of the attempt that succeeded still says host-b had been partial, and each attempt's preflight record is
    kept under its own key."""
    roots, fps = hosts
    repo = hf_repo_folder(roots["host-b"] / "hf" / "hub", REPO, "model")
    link = repo / "snapshots" / COMMIT / "tokenizer.json"
    blob = link.parent / os.readlink(link)
    saved = blob.read_bytes()
    blob.unlink()
    with Fleet(bucket_url, roots) as f:
        job, out = f.run(manifest(fps))
        assert out["state"] == "failed" and out["detail"]["error"]["where"] == "preflight/host-b", out
        blob.write_bytes(saved)
        retry(f.bucket, job, writer="test")
        out = f.wait(job)
    assert out["state"] == "succeeded" and out["attempt"] == 2, out
    first = codec.loads(f.bucket.get(keys.preflight_key(job, 1, "host-b")).data)
    second = codec.loads(f.bucket.get(keys.preflight_key(job, 2, "host-b")).data)
    assert not first["ok"] and first["model_cache"]["partial"] and first["attempt"] == 1
    assert second["ok"] and second["attempt"] == 2
    rep = codec.loads(f.bucket.get(keys.report_json_key(job)).data)
    assert rep["state"] == "succeeded" and [e["attempt"] for e in rep["history"]] == [1, 2]
    one, two = rep["history"]
    assert one["hosts"]["host-a"] == "passed" and one["hosts"]["host-b"].startswith("model cache PARTIAL: ")
    assert "Blob missing" in one["hosts"]["host-b"] and blob.name[:10] in one["hosts"]["host-b"], one
    assert one["outcome"] == "failed" and one["failure"]["class"] == "preflight", one
    assert two == {"attempt": 2, "hosts": {"host-a": "passed", "host-b": "passed"}, "outcome": "succeeded",
                   "failure": None}
    md = f.bucket.get(keys.report_key(job)).data.decode()
    history = md.split("## History\n\n")[1].split("\n\n")[0].splitlines()
    assert len(history) == 2 and history == [f"- {line}" for line in rep["history_lines"]]
    # the report shows the cost so far: the requests the history recorded (two attempts, agents included)
    cost = rep["cost"]
    assert cost["requests"]["a"] >= 10 and "agent:host-a" in cost["requests"]["by"], cost
    assert cost["gpu"]["usd"] is None  # hosts you own: no price in the bucket
    assert f"- requests {cost['requests']['total']} (A {cost['requests']['a']}" in md.split("## Cost so far")[1]
    assert history[0].startswith("- attempt 1: host-a passed; host-b model cache PARTIAL: ")
    assert "-> failed (preflight at preflight/host-b: " in history[0]
    assert history[1] == "- attempt 2: host-a passed; host-b passed -> succeeded"


def test_a_crash_saves_its_checkpoint_and_a_retry_on_a_fresh_host_resumes_from_it(hosts, bucket_url, tmp_path):  # noqa: F811
    """The trainer crashes in step 4 after checkpoint 3 (only when it started from scratch). The failed attempt
    mirrors checkpoint 3, verified, under mirror/001-step3/, and the report names it. The retry runs on a host
    with no run directory at all (a replacement machine, same label): it resumes from the bucket at step 3, and
    only a resumed run gets past step 4."""
    roots, fps = hosts
    m = manifest(fps, "--crash-fresh-at", "4", preflight=("host-a",))
    with Fleet(bucket_url, {"host-a": roots["host-a"]}) as f:
        job, out = f.run(m)
        err = out["detail"]["error"]
        assert out["state"] == "failed" and err["class"] == "runtime_crash", out
        prefix = keys.mirror_prefix(job, 1, 3)
        assert f"the checkpoint at step 3 is saved, verified, at {prefix}: a retry resumes from it" in err["message"]
        saved = codec.loads(f.bucket.get(keys.mirror_manifest_key(job, 1, 3)).data)
        assert saved["verified"] and saved["step"] == 3
        assert {"checkpoint.json", "checkpoint-3/adapter_model.npz"} <= {x["path"] for x in saved["files"]}
        rep = codec.loads(f.bucket.get(keys.report_json_key(job)).data)
        assert rep["crash_mirror"]["prefix"] == prefix and rep["crash_mirror"]["verified"], rep["crash_mirror"]
        assert f"checkpoint saved after the failure: `{prefix}` (step 3, verified" in \
            f.bucket.get(keys.report_key(job)).data.decode()
        # a replacement host: the same label, the dataset and cache, and no run directory
        old = f.agents["host-a"]
        old.terminate()
        assert old.wait(timeout=45) == 0
        fresh = tmp_path / "replacement"
        shutil.copytree(roots["host-a"] / "data", fresh / "data")
        shutil.copytree(roots["host-a"] / "hf", fresh / "hf", symlinks=True)
        f.roots["host-a"] = fresh
        f.start_agent("host-a")
        retry(f.bucket, job, writer="test")
        out = f.wait(job)
    assert out["state"] == "succeeded" and out["attempt"] == 2, out
    assert out["detail"]["resume"] == {"from": "bucket", "step": 3, "prefix": prefix,
                                       "stopped_previous_group": None}, out["detail"]["resume"]
    log = b"".join(f.bucket.get(i.key).data for i in f.bucket.list(keys.train_log_prefix(job, 2))).decode()
    assert log.startswith("resumed from step 3\nstep 4/6 "), log[:200]


DIE_BEFORE_THEN = '''
import os, signal
if os.environ.get("BUCKETRUN_TEST_DIE_BEFORE_THEN"):
    from bucketrun.events import stages

    def die(bucket, job_id):  # the agent's task process, after `succeeded` and before the drop
        os.kill(os.getppid(), signal.SIGKILL)
        os._exit(137)

    stages.submit_next_stage = die
'''


def test_the_sweep_submits_the_next_stage_when_the_agent_dies_between_succeeded_and_the_drop(hosts, bucket_url,  # noqa: F811
                                                                                            tmp_path):
    """The agent (and its task) is killed with SIGKILL right after the window's `succeeded` and before its `then`
    drop (a sitecustomize on the agent's PYTHONPATH does it, at that exact call). The sweep sees the window's
    next stage still owed and drops it, create-once; the stage runs from the verified checkpoint."""
    roots, fps = hosts
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(DIE_BEFORE_THEN)
    nxt = manifest(fps, target=8, size=2, preflight=("host-a",), resume_from="{checkpoint_manifest}")
    nxt["checkpoint"]["run_dir"] = "runs/eval"
    fault = {"PYTHONPATH": str(hook), "BUCKETRUN_TEST_DIE_BEFORE_THEN": "1"}
    with Fleet(bucket_url, {"host-a": roots["host-a"]}, env=fault) as f:
        job, out = f.run(manifest(fps, preflight=("host-a",), then=nxt))
        assert out["state"] == "succeeded", out
        assert f.agents["host-a"].wait(timeout=30) == -9  # it died between the two writes
        f.env = {k: v for k, v in f.env.items() if k not in fault}
        f.start_agent("host-a")
        child = wait_for(lambda: jobs_by_inbox_key(f.bucket).get(keys.then_inbox_key(job)), timeout=60)
        child_out = f.wait(child)
        assert not f.bucket.exists(keys.then_watch_key(job))  # owed no more
        assert list(jobs_by_inbox_key(f.bucket).values()).count(child) == 1
    assert child_out["state"] == "succeeded", child_out
    assert child_out["detail"]["resume"]["from"] == "bucket" and child_out["detail"]["resume"]["step"] == 6


def test_a_teardown_that_needs_approval_waits_for_it_then_stops_and_keeps_the_instance(hosts, bucket_url):  # noqa: F811
    """teardown {action: stop, approve: required}: after the verified mirror, the sweep records the pending stop
    (which instance, its $/h, what stopping stops billing for and what it destroys) and leaves the host running,
    pass after pass, until `bucketrun approve JOB`; then it stops it (Vast's manage-instance PUT, faked at its
    HTTP boundary), never destroys it."""
    from test_fleet_cloud_backends import FakeVast, offer, vast_spec

    from bucketrun.handlers.launchers import Routes
    from bucketrun.handlers.launchers.agent import AgentLauncher
    from bucketrun.handlers.launchers.fleet import FleetLauncher
    from bucketrun.handlers.launchers.vast import VastBackend

    fake = FakeVast([offer(1, 0.45)])
    try:
        vast = VastBackend("vast-test-key", server_url=fake.url)
        [inst] = vast.start(bucket_url, "20260101T000000000Z-aaaaaa", ["w000"], vast_spec())
        contract = int(inst.instance_id)
        roots, fps = hosts
        routes = Routes(by_kind={"train_window": AgentLauncher(), "fleet": FleetLauncher({"vast": vast})})
        with Fleet(bucket_url, {"host-a": roots["host-a"]}, routes,
                   env={"BUCKETRUN_INSTANCE": f"vast:{inst.instance_id}"}) as f:
            job, out = f.run(manifest(fps, preflight=("host-a",), teardown={"action": "stop", "approve": "required"}))
            assert out["state"] == "succeeded", out
            record_key = keys.host_teardown_record_key(job)
            wait_for(lambda: f.bucket.exists(record_key), timeout=30)
            rec = codec.loads(f.bucket.get(record_key).data)
            assert rec["state"] == "pending_approval" and rec["action"] == "stop", rec
            assert rec["price_per_hour"] == 0.45 and rec["approve_with"] == f"bucketrun approve {job}"
            assert rec["effects"]["stops_billing"] == "GPU charges" and "disk" in rec["effects"]["still_billed"]
            assert rec["effects"]["destroys"].startswith("nothing")
            seen = f.sim.sweeps
            wait_for(lambda: f.sim.sweeps >= seen + 3, timeout=30)  # passes go by: it waits for the user
            assert fake.instances[contract]["intended_status"] == "running"
            assert not [r for r in fake.requests if r["path"].startswith(f"/api/v0/instances/{contract}/")
                        and r["method"] in ("PUT", "DELETE")]
            md = f.bucket.get(keys.report_key(job)).data.decode()
            assert f"- teardown: stop of vast:{contract} after the verified mirror, waiting for `bucketrun approve " \
                   f"{job}`" in md, md
            shown = subprocess.run([BIN, "--bucket", bucket_url, "status", job], capture_output=True, text=True)
            assert f"teardown pending approval: stop of vast:{contract} ($0.45/h; stops billing for GPU charges; " \
                   f"still billed: disk storage" in shown.stdout, shown.stdout
            assert f"run `bucketrun approve {job}`" in shown.stdout
            yes = subprocess.run([BIN, "--bucket", bucket_url, "approve", job], capture_output=True, text=True)
            assert yes.returncode == 0 and yes.stdout.startswith(f"approved: stop of vast:{contract}"), yes
            wait_for(lambda: codec.loads(f.bucket.get(record_key).data)["state"] == "done", timeout=30)
            assert fake.instances[contract]["intended_status"] == "stopped"  # stopped, still there: not destroyed
            assert fake.bodies("PUT", f"/api/v0/instances/{contract}/") == [{"state": "stopped"}]
            assert not [r for r in fake.requests if r["method"] == "DELETE"]
            assert not list(f.bucket.list(keys.TEARDOWN))
            again = subprocess.run([BIN, "--bucket", bucket_url, "approve", job], capture_output=True, text=True)
            assert again.returncode == 2 and again.stderr.count("\n") == 1 and "Traceback" not in again.stderr
            assert "no teardown waiting for approval (its teardown is done)" in again.stderr
    finally:
        fake.close()
