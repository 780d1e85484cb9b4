"""The checkpoint gate, the mirror and resume, each held to what it promises: these were deliberate breaks that
left every other test green (a gate taking step target - 1, a mirror not re-hashed after upload, a resume not
re-hashing what it downloads, an empty required file accepted, a run past max_wall_s called a stall)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from bucketrun.events import keys
from bucketrun.events.kinds.train_window import Checkpoint, Mirror
from bucketrun.images.train_window.gate import gate, local_checkpoint, mirror_run_dir, prepare_resume
from bucketrun.images.train_window.supervise import Supervisor, child_env, triage

from test_train_window import TRAINER, _supervise, hosts  # noqa: F401 - fixture

JOB = "20261202T000000000Z-gatexx"
CK = Checkpoint.model_validate({"run_dir": "runs/t", "required_files": ["checkpoint-{target_step}/adapter_model.npz",
                                                                        "checkpoint-{target_step}/adapter_config.json"]})


def _trained(root: Path, target: int) -> Path:
    out, g = _supervise(root, target=target)
    assert out.reason == "exited" and out.rc == 0 and g["passed"], (out, g)
    return root / "runs" / "t"


def _flip(data: bytes) -> bytes:
    """Same length, different bytes: only a re-hash can tell."""
    return bytes([data[0] ^ 0xFF]) + data[1:]


def test_a_run_that_stops_one_step_short_does_not_pass_the_gate(hosts):  # noqa: F811
    roots, _ = hosts
    out, g = _supervise(roots["host-a"], "--stop-short", target=5)
    assert out.reason == "exited" and out.rc == 0 and out.step == 4, out  # it exits 0 at step 4
    assert not g["passed"] and g["step"] == 4, g
    assert g["problems"][0] == "checkpoint.json reads step 4, the target is 5", g
    cls, message = triage(out, 5, 20.0, 20.0)
    assert cls.value == "code_error" and "reads step 4, not 5" in message, message
    # required files that do not name the step prove nothing about it: the step alone must fail the gate
    plain = Checkpoint.model_validate({"run_dir": "runs/t", "required_files": ["checkpoint.json"]})
    g = gate(roots["host-a"] / "runs" / "t", plain, 5)
    assert not g["passed"] and g["problems"] == ["checkpoint.json reads step 4, the target is 5"], g


def test_an_empty_required_file_fails_the_gate_and_is_no_resume_point(hosts):  # noqa: F811
    roots, _ = hosts
    run_dir = _trained(roots["host-a"], 3)
    assert gate(run_dir, CK, 3)["passed"] and local_checkpoint(run_dir, CK) == 3
    (run_dir / "checkpoint-3" / "adapter_model.npz").write_bytes(b"")
    g = gate(run_dir, CK, 3)
    assert not g["passed"] and g["problems"] == ["checkpoint-3/adapter_model.npz is empty"], g
    assert g["required"]["checkpoint-3/adapter_model.npz"] == 0
    assert local_checkpoint(run_dir, CK) is None


def test_the_mirror_is_re_hashed_after_upload(hosts, bucket):  # noqa: F811
    """An object changed in the bucket between upload and verification, same size: the listing alone passes it,
    only re-reading and re-hashing catches it, and then no mirror manifest is written."""
    roots, _ = hosts
    run_dir = _trained(roots["host-a"], 3)
    prefix = keys.mirror_prefix(JOB, 1, 3)
    victim = "checkpoint-3/adapter_model.npz"

    def tamper(i: int, n: int) -> None:
        if i == n:  # every object is up; verification comes next
            bucket.put(prefix + victim, _flip(bucket.get(prefix + victim).data))

    m = mirror_run_dir(bucket, run_dir, Mirror(), JOB, 1, 3, progress=tamper)
    assert not m["verified"] and m["manifest"] is None
    assert m["problems"] == [f"{victim} reads back with a different sha256"], m["problems"]
    assert not bucket.exists(keys.mirror_manifest_key(JOB, 1, 3))
    ok = mirror_run_dir(bucket, run_dir, Mirror(), JOB, 2, 3)  # untouched, the same run verifies
    assert ok["verified"] and bucket.exists(keys.mirror_manifest_key(JOB, 2, 3))


def test_resume_re_hashes_the_mirror_it_downloads(hosts, bucket):  # noqa: F811
    roots, _ = hosts
    run_dir = _trained(roots["host-a"], 3)
    m = mirror_run_dir(bucket, run_dir, Mirror(), JOB, 1, 3)
    assert m["verified"]
    fresh = roots["host-b"] / "runs" / "t"
    good = prepare_resume(bucket, JOB, fresh, CK)
    assert good == {"from": "bucket", "step": 3, "prefix": m["prefix"]}
    assert local_checkpoint(fresh, CK) == 3
    victim = "checkpoint-3/adapter_model.npz"
    bucket.put(m["prefix"] + victim, _flip(bucket.get(m["prefix"] + victim).data))
    other = roots["host-b"] / "runs" / "u"
    with pytest.raises(RuntimeError, match=f"mirror object {victim} does not match its manifest"):
        prepare_resume(bucket, JOB, other, CK)
    assert not (other / victim).exists()  # the bad bytes never land where a trainer would load them


def test_a_run_past_max_wall_s_is_timed_out_not_a_stall(hosts):  # noqa: F811
    """A run that keeps logging steps, so never silent, past max_wall_s: stopped by the wall clock, classed
    timed_out."""
    roots, _ = hosts
    root = roots["host-a"]
    run_dir = root / "runs" / "t"
    argv = [sys.executable, str(TRAINER), "--data", str(root / "data"), "--run-dir", str(run_dir),
            "--target-step", "1000", "--step-sleep", "0.2"]
    out = Supervisor(argv, root, child_env([]), run_dir / "checkpoint.json", "step", 20.0, 20.0, 3.0).run()
    assert out.reason == "wall" and 3.0 <= out.wall_s < 15.0, out
    assert out.step is not None and out.step >= 2, out  # it trained, and logged, all along
    assert json.loads((run_dir / "checkpoint.json").read_text())["step"] < 1000
    cls, message = triage(out, 1000, 20.0, 20.0)
    assert cls.value == "timed_out" and "ran past max_wall_s" in message, (cls, message)
