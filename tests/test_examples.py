"""The newcomer's path, as a test: the README's set-up command (`./dev.sh demo`) into a fresh virtual environment,
installing from this checkout (pip's cache may be used; nothing beyond the package index), then the README's
tours line by line as a newcomer types them, with that environment's `bucketrun` on PATH: the dispatcher from
"Start a dispatcher", then every command of every tour, in a fresh folder, on the fresh default bucket. `JOB`
stands for the id the last `submit` printed; a line ending in `&` runs in the background. Every example in
examples/ must be one of those lines (but the one that needs the network), and must succeed."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

from bucketrun.events.lifecycle import read_view
from bucketrun.events.storage import open_bucket

from conftest import ROOT

NEEDS_NETWORK = {"examples/transcribe-url.json"}


def blocks(readme: str, heading: str) -> list[list[str]]:
    """The command lines of each ```sh block in the README sections whose heading starts with `heading`."""
    out = []
    for section in re.split(r"^## ", readme, flags=re.M):
        if section.startswith(heading):
            for block in re.findall(r"```sh\n(.*?)```", section, flags=re.S):
                words = [shlex.split(line, comments=True) for line in block.splitlines()]
                out.append([w for w in words if w])
    return out


def test_the_readme_tours_run_offline_and_every_example_succeeds(tmp_path):
    readme = (ROOT / "README.md").read_text()
    tours = blocks(readme, "Tour:")
    shown = {word for block in tours for line in block for word in line if word.startswith("examples/")}
    examples = {f"examples/{p.name}" for p in (ROOT / "examples").glob("*.json")}
    assert examples - NEEDS_NETWORK <= shown, f"examples no tour runs: {sorted(examples - NEEDS_NETWORK - shown)}"
    (sim,) = [line for block in blocks(readme, "Start a dispatcher") for line in block if line[:2] == ["bucketrun", "sim"]]

    home = tmp_path / "newcomer"
    home.mkdir()
    for name in ("examples", "local_sim"):  # the repository's files, as a clone has them; nothing else
        (home / name).symlink_to(ROOT / name)
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("BUCKETRUN_", "VIRTUAL_ENV", "PYTHONPATH"))}
    env.update(XDG_DATA_HOME=str(tmp_path / "data"), BUCKETRUN_VENV=str(venv),
               PIP_CACHE_DIR=os.environ.get("PIP_CACHE_DIR") or str(Path.home() / ".cache" / "pip"))
    (two,) = blocks(readme, "Two commands")
    demo = subprocess.run(two[0], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert two[0] == ["./dev.sh", "demo"] and demo.returncode == 0, demo.stderr[-3000:]
    assert "--> " in demo.stdout and "/artifacts/001/transcript.srt" in demo.stdout  # the SRT's cues, its keys
    env["PATH"] = f"{venv / 'bin'}:{env['PATH']}"  # the README's `export PATH=...`, for this venv
    bucket_dir = tmp_path / "data" / "bucketrun" / "bucket"  # the default bucket, as the demo made it

    def run(line: list[str], job: str | None) -> subprocess.CompletedProcess:
        assert "JOB" not in line or job, line
        argv = [job if w == "JOB" else w for w in line]
        return subprocess.run(argv, cwd=home, env=env, capture_output=True, text=True, timeout=600)

    background = [subprocess.Popen(sim, cwd=home, env=env, stdout=subprocess.DEVNULL,
                                   stderr=open(tmp_path / "sim.log", "wb"))]  # noqa: SIM115
    seen: list[tuple[list[str], str]] = []
    try:
        for block in tours:
            job = None
            for line in block:
                if line[-1] == "&":
                    log = open(tmp_path / f"bg{len(background)}.log", "wb")  # noqa: SIM115
                    background.append(subprocess.Popen(line[:-1], cwd=home, env=env, stdout=log, stderr=log))
                    continue
                done = run(line, job)
                assert done.returncode == 0, (line, done.stdout[-2000:], done.stderr[-2000:])
                assert "Traceback" not in done.stderr, (line, done.stderr)
                if line[:2] == ["bucketrun", "submit"]:
                    job = done.stdout.split()[0]
                    seen.append((line, job))
                if line[:2] == ["bucketrun", "get"]:
                    assert "verified" in done.stdout, (line, done.stdout)
                    assert (home / job).is_dir() and any((home / job).iterdir()), line  # ./JOB, as the README says
                if line[:2] == ["bucketrun", "agents"]:
                    assert "host-a" in done.stdout and "host-b" in done.stdout and "alive" in done.stdout, done.stdout
    finally:
        for proc in reversed(background):
            proc.terminate()
        for proc in background:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()

    bucket = open_bucket(str(bucket_dir))
    for line, job in seen:  # --wait exits 0 only on success; the bucket says so too
        assert read_view(bucket, job).state.value == "succeeded", line
    assert len(seen) == len([1 for b in tours for line in b if line[:2] == ["bucketrun", "submit"]]) >= 5
    assert (home / "hosts" / "host-a" / "runs" / "main" / "checkpoint.json").exists()
