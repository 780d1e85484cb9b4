"""examples/train-window/tiny_trainer.py, the real (numpy) trainer the training-window tests supervise: it must train,
checkpoint atomically, resume only from complete checkpoints, and fail in exactly the ways its fault flags say."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import wait_for

TRAINER = Path(__file__).resolve().parent.parent / "examples" / "train-window" / "tiny_trainer.py"
_spec = importlib.util.spec_from_file_location("tiny_trainer", TRAINER)
tiny_trainer = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tiny_trainer)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return tiny_trainer.make_dataset(tmp_path_factory.mktemp("tiny_data"))


@pytest.fixture
def procs():
    """Popen'd trainers, SIGKILLed at teardown if a test left them running (the hang flags never exit)."""
    started: list[subprocess.Popen] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)


def argv(data: Path, run_dir: Path, target: int, *extra) -> list[str]:
    return [sys.executable, str(TRAINER), "--data", str(data), "--run-dir", str(run_dir),
            "--target-step", str(target), *map(str, extra)]


def run(data: Path, run_dir: Path, target: int, *extra, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(argv(data, run_dir, target, "--step-sleep", 0, *extra),
                          capture_output=True, text=True, timeout=timeout)


def start(procs, tmp_path: Path, data: Path, run_dir: Path, target: int, *extra, name: str = "out"):
    """Start a trainer in the background with stdout/stderr going to files (polled without blocking)."""
    out, err = tmp_path / f"{name}.stdout", tmp_path / f"{name}.stderr"
    with open(out, "wb") as fo, open(err, "wb") as fe:
        p = subprocess.Popen(argv(data, run_dir, target, *extra), stdout=fo, stderr=fe)
    procs.append(p)
    return p, out, err


def parse(stdout: str) -> list[tuple[int, float, float]]:
    """(step, loss, valid_acc) per stdout line; asserts every stdout line is a step line."""
    rows = []
    for line in stdout.splitlines():
        assert line.startswith("step "), f"non-step line on stdout: {line!r}"
        _, frac, loss, acc = line.split()
        rows.append((int(frac.split("/")[0]), float(loss.removeprefix("loss=")), float(acc.removeprefix("valid_acc="))))
    return rows


def committed(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / "checkpoint.json").read_text())
    except FileNotFoundError:
        return None


def weights(run_dir: Path) -> np.ndarray:
    ckpt = committed(run_dir)
    with np.load(run_dir / ckpt["checkpoint_dir"] / "adapter_model.npz") as z:
        return np.append(z["w"], z["b"])


def test_make_dataset_matches_its_manifest(tmp_path):
    """The manifest's counts and dim are what the trainer checks the splits against."""
    d = tiny_trainer.make_dataset(tmp_path, n_train=30, n_valid=7, n_test=5, dim=3, seed=4)
    manifest = json.loads((d / "manifest.json").read_text())
    assert manifest == {"splits": {"train": 30, "valid": 7, "test": 5}, "dim": 3}
    rows = [json.loads(line) for line in (d / "valid.jsonl").read_text().splitlines()]
    assert len(rows) == 7 and all(len(r["x"]) == 3 and r["y"] in (0, 1) for r in rows)
    assert (d / "train.jsonl").read_text() == tiny_trainer.make_dataset(tmp_path / "again", 30, 7, 5, 3, 4).joinpath(
        "train.jsonl").read_text()


def test_trains_to_target_with_complete_checkpoints(data, tmp_path):
    """Five steps: five step lines and nothing else on stdout, checkpoint.json at 5, the newest two dirs kept."""
    run_dir = tmp_path / "run"
    r = run(data, run_dir, 5)
    assert r.returncode == 0, r.stderr
    assert [s for s, _, _ in parse(r.stdout)] == [1, 2, 3, 4, 5]
    assert r.stdout.splitlines()[0].startswith("step 1/5 loss=")
    ckpt = committed(run_dir)
    assert ckpt["step"] == 5 and ckpt["checkpoint_dir"] == "checkpoint-5"
    assert ckpt["loss"] == pytest.approx(parse(r.stdout)[-1][1], abs=1e-4)
    for name in ("adapter_model.npz", "adapter_config.json"):
        assert (run_dir / "checkpoint-5" / name).stat().st_size > 0
    assert json.loads((run_dir / "checkpoint-5" / "adapter_config.json").read_text()) == {"dim": 8, "lr": 0.5}
    assert weights(run_dir).shape == (9,)
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint-4", "checkpoint-5", "checkpoint.json"]


def test_loss_decreases_and_the_model_learns(data, tmp_path):
    """Real learning: the training loss falls every step and validation accuracy beats chance by far."""
    r = run(data, tmp_path / "run", 30)
    assert r.returncode == 0, r.stderr
    rows = parse(r.stdout)
    losses = [loss for _, loss, _ in rows]
    assert all(b <= a for a, b in zip(losses, losses[1:])), losses
    assert losses[-1] < 0.5 * losses[0]
    assert rows[-1][2] >= 0.8


def test_deterministic_and_exits_0_when_already_at_target(data, tmp_path):
    """Same seed and data give the same weights; a rerun at the target trains nothing."""
    a, b = tmp_path / "a", tmp_path / "b"
    assert run(data, a, 4).returncode == 0 and run(data, b, 4).returncode == 0
    assert np.array_equal(weights(a), weights(b))
    again = run(data, a, 3)
    assert again.returncode == 0 and again.stdout == "" and committed(a)["step"] == 4


def test_window_larger_than_target_exits_2(data, tmp_path):
    """A window reaching below step 0 is a usage error, caught before any training."""
    r = run(data, tmp_path / "run", 3, "--window", 5)
    assert r.returncode == 2 and "window" in r.stderr and r.stdout == ""
    assert committed(tmp_path / "run") is None
    assert run(data, tmp_path / "ok", 3, "--window", 3).returncode == 0


def test_resumes_after_kill_9(data, tmp_path, procs):
    """SIGKILL mid-run, restart: training continues from the committed step and ends where an unkilled run does."""
    run_dir = tmp_path / "run"
    p, _, _ = start(procs, tmp_path, data, run_dir, 20, "--step-sleep", 0.3, name="first")
    wait_for(lambda: (committed(run_dir) or {}).get("step", 0) >= 2, timeout=15, every=0.02)
    p.send_signal(signal.SIGKILL)
    assert p.wait(timeout=10) == -signal.SIGKILL
    killed_at = committed(run_dir)["step"]
    assert 2 <= killed_at < 20

    r = run(data, run_dir, 20)
    assert r.returncode == 0, r.stderr
    steps = [s for s, _, _ in parse(r.stdout)]
    assert steps[0] > killed_at and steps == list(range(killed_at + 1, 21))
    assert f"resumed from step {killed_at}" in r.stderr
    assert committed(run_dir)["step"] == 20
    reference = tmp_path / "reference"
    assert run(data, reference, 20).returncode == 0
    assert np.array_equal(weights(run_dir), weights(reference))


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_partial_checkpoint_is_not_resumed(data, tmp_path, damage):
    """A newest npz that is empty or unreadable is skipped: the run resumes from the previous complete one."""
    run_dir = tmp_path / "run"
    assert run(data, run_dir, 4).returncode == 0
    npz = run_dir / "checkpoint-4" / "adapter_model.npz"
    if damage == "truncate":
        os.truncate(npz, 0)
    else:
        npz.write_bytes(b"not a zip file at all")

    r = run(data, run_dir, 6)
    assert r.returncode == 0, r.stderr
    assert [s for s, _, _ in parse(r.stdout)] == [4, 5, 6]
    assert "resumed from step 3" in r.stderr
    reference = tmp_path / "reference"
    assert run(data, reference, 6).returncode == 0
    assert np.array_equal(weights(run_dir), weights(reference))


def test_no_complete_checkpoint_starts_over(data, tmp_path):
    """With both kept checkpoints damaged there is nothing to resume: training starts again at step 1."""
    run_dir = tmp_path / "run"
    assert run(data, run_dir, 4).returncode == 0
    os.truncate(run_dir / "checkpoint-4" / "adapter_model.npz", 0)
    (run_dir / "checkpoint-3" / "adapter_model.npz").unlink()
    r = run(data, run_dir, 2)
    assert r.returncode == 0, r.stderr
    assert [s for s, _, _ in parse(r.stdout)] == [1, 2] and "resumed" not in r.stderr
    assert committed(run_dir)["step"] == 2
    assert sorted(p.name for p in run_dir.iterdir()) == ["checkpoint-1", "checkpoint-2", "checkpoint.json"]


def test_hang_before_log(data, tmp_path, procs):
    """A trainer stuck in startup: alive, silent, and nothing written."""
    p, out, err = start(procs, tmp_path, data, tmp_path / "run", 5, "--hang-before-log")
    time.sleep(2)
    assert p.poll() is None
    assert out.read_bytes() == b"" and err.read_bytes() == b""
    assert committed(tmp_path / "run") is None
    p.kill()


def test_crash_at(data, tmp_path):
    """A crash during step 3 exits 3 with a traceback; the committed checkpoint stays at step 2."""
    run_dir = tmp_path / "run"
    r = run(data, run_dir, 5, "--crash-at", 3)
    assert r.returncode == 3
    assert "Traceback" in r.stderr and "RuntimeError: injected crash during step 3" in r.stderr
    assert [s for s, _, _ in parse(r.stdout)] == [1, 2]
    assert committed(run_dir)["step"] == 2 and not (run_dir / "checkpoint-3").exists()


def test_exit_nonzero_after_last(data, tmp_path):
    """Every checkpoint up to the target is committed, yet the process exits 1: the checkpoint is the truth."""
    run_dir = tmp_path / "run"
    r = run(data, run_dir, 4, "--exit-nonzero-after-last")
    assert r.returncode == 1 and "teardown error" in r.stderr
    assert committed(run_dir)["step"] == 4
    assert (run_dir / "checkpoint-4" / "adapter_model.npz").stat().st_size > 0


def test_write_nothing(data, tmp_path):
    """Exit 0 with full logs but no checkpoint at all: success by exit code alone is a lie."""
    run_dir = tmp_path / "run"
    r = run(data, run_dir, 4, "--write-nothing")
    assert r.returncode == 0
    assert [s for s, _, _ in parse(r.stdout)] == [1, 2, 3, 4]
    assert committed(run_dir) is None and not list(run_dir.glob("checkpoint-*"))


def test_hang_after_step(data, tmp_path, procs):
    """A stall after step 2's checkpoint: still alive, no more output, checkpoint frozen at 2."""
    run_dir = tmp_path / "run"
    p, out, _ = start(procs, tmp_path, data, run_dir, 10, "--hang-after-step", 2)
    wait_for(lambda: (committed(run_dir) or {}).get("step") == 2, timeout=15, every=0.02)
    wait_for(lambda: "step 2/10" in out.read_text(), timeout=15, every=0.02)
    size = out.stat().st_size
    time.sleep(2)
    assert p.poll() is None
    assert out.stat().st_size == size and [s for s, _, _ in parse(out.read_text())] == [1, 2]
    assert committed(run_dir)["step"] == 2
    p.kill()


def test_fail_write(data, tmp_path):
    """The first checkpoint write fails with ENOSPC: exit 1, the error on stderr, nothing committed."""
    run_dir = tmp_path / "run"
    r = run(data, run_dir, 4, "--fail-write")
    assert r.returncode == 1
    assert "OSError: [Errno 28] No space left on device" in r.stderr
    assert [s for s, _, _ in parse(r.stdout)] == [1]
    assert committed(run_dir) is None
