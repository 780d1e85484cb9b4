"""`bucketrun get` brings a result home verified: a training window's mirror (run on two host agents with the tiny
numpy trainer, as tests/test_train_window.py runs it) checked file by file against its manifest and loaded; a
tampered file named; a safetensors header that claims more than the file holds refused; an interrupted download
never left under its final name. The window runs once; each test that changes the bucket works on a copy."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest

from bucketrun.events import codec, keys
from bucketrun.events.lifecycle import JobState, append_transition
from bucketrun.events.storage import open_bucket
from bucketrun.images.train_window.fingerprint import fingerprint_dataset, fingerprint_hf_cache

from test_train_window import BIN, REPO, Fleet, _trainer_module, build_cache, manifest


@pytest.fixture(scope="module")
def window(tmp_path_factory):
    """One succeeded two-host window (preflight on host-a and host-b, run on host-a) in a folder bucket."""
    tmp = tmp_path_factory.mktemp("window")
    roots = {}
    for label in ("host-a", "host-b"):
        roots[label] = tmp / label
        _trainer_module().make_dataset(roots[label] / "data", n_train=120, n_valid=30, n_test=30, dim=6, seed=1)
        build_cache(roots[label])
    fps = {"dataset": fingerprint_dataset(roots["host-a"] / "data", {"train": 100}).model_dump(mode="json"),
           "cache": fingerprint_hf_cache(roots["host-a"] / "hf" / "hub", REPO).model_dump(mode="json")}
    url = open_bucket(str(tmp / "bucket")).url
    with Fleet(url, roots) as f:
        job, out = f.run(manifest(fps))
    assert out["state"] == "succeeded", out
    mirror = codec.loads(open_bucket(url).get(out["detail"]["mirror"]["manifest"]).data)
    return {"url": url, "job": job, "mirror": mirror, "run_dir": roots["host-a"] / "runs" / "main"}


def get(url: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([BIN, "--bucket", url, "get", *args], capture_output=True, text=True, timeout=timeout)


def copy_bucket(window, tmp_path: Path) -> str:
    shutil.copytree(window["url"], tmp_path / "bucket", symlinks=True)
    return str(tmp_path / "bucket")


def test_get_of_a_window_fetches_the_mirror_checks_every_file_and_loads_them(window, tmp_path):
    out = tmp_path / "got"
    done = get(window["url"], window["job"], "--out", str(out))
    assert done.returncode == 0, done.stderr
    files = window["mirror"]["files"]
    n = len(files)
    assert n >= 4 and any(f["path"].endswith(".npz") for f in files)
    assert done.stdout.strip().splitlines()[-1] == f"{out}/: verified {n}/{n}, errors 0", done.stdout
    for f in files:  # every file is the host's own, byte for byte
        assert (out / f["path"]).read_bytes() == (window["run_dir"] / f["path"]).read_bytes(), f["path"]
    assert "checkpoint-6/adapter_model.npz" in done.stdout and "npz: 2 arrays" in done.stdout
    assert codec.loads((out / ".bucketrun-mirror.json").read_bytes()) == window["mirror"]
    assert not list(out.rglob("*.bucketrun-partial"))
    as_json = json.loads(get(window["url"], window["job"], "--out", str(tmp_path / "again"), "--json").stdout)
    assert (as_json["verified"], as_json["total"], as_json["errors"]) == (n, n, [])
    assert as_json["mirror"]["step"] == 6 and as_json["mirror"]["loaded"]["npz"] >= 1
    by_path = {Path(f["path"]).relative_to(tmp_path / "again").as_posix(): f for f in as_json["files"]}
    assert set(by_path) == {f["path"] for f in files}
    assert by_path["checkpoint-6/adapter_model.npz"]["loaded"] == "npz: 2 arrays"
    assert by_path["checkpoint-6/adapter_config.json"]["loaded"] == "json"
    assert all(f["verified"] and f["error"] is None for f in as_json["files"])


def test_a_tampered_mirror_file_fails_get_naming_it(window, tmp_path):
    url = copy_bucket(window, tmp_path)
    key = window["mirror"]["prefix"] + "checkpoint-6/adapter_model.npz"
    path = Path(url) / key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, one byte changed
    path.write_bytes(bytes(data))
    out = tmp_path / "got"
    done = get(url, window["job"], "--out", str(out))
    assert done.returncode != 0
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("bucketrun: ") and key in line and "does not match" in line, line
    n = len(window["mirror"]["files"])
    assert f"verified {n - 1}/{n}, errors 1" in line and f"verified {n - 1}/{n}, errors 1" in done.stdout
    assert not (out / "checkpoint-6" / "adapter_model.npz").exists()  # never kept under its name
    assert not list(out.rglob("*.bucketrun-partial"))


def _safetensors(tensors: dict[str, tuple[str, list[int], bytes]], claim: int | None = None) -> bytes:
    """A safetensors file built by hand: u64 little-endian header length, JSON header, the data buffer."""
    header, buffer = {"__metadata__": {"format": "np"}}, b""
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(buffer), len(buffer) + len(data)]}
        buffer += data
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw) if claim is None else claim) + raw + buffer


def test_the_safetensors_parser_refuses_a_header_that_claims_more_than_the_file_holds(tmp_path):
    from bucketrun.handlers.cli.loadcheck import LoadError, load_check, safetensors_header

    good = tmp_path / "model.safetensors"
    good.write_bytes(_safetensors({"w": ("F32", [2, 3], struct.pack("<6f", *range(6))),
                                   "step": ("I64", [1], struct.pack("<q", 6))}))
    assert set(safetensors_header(good)) == {"w", "step"}
    assert load_check(good) == "safetensors: 2 tensors"
    whole = good.read_bytes()
    cases = {
        "header_past_the_end": _safetensors({"w": ("F32", [2], b"\0" * 8)}, claim=10_000),
        "truncated_data": whole[:-5],  # the header promises 32 bytes of data; the file ends early
        "shape_mismatch": _safetensors({"w": ("F32", [3, 3], b"\0" * 24)}),
    }
    said = {"header_past_the_end": "declares a 10000-byte header", "truncated_data": "outside the",
            "shape_mismatch": "F32 [3, 3] is 36 bytes"}
    for name, data in cases.items():
        bad = tmp_path / f"{name}.safetensors"
        bad.write_bytes(data)
        with pytest.raises(LoadError) as exc:
            safetensors_header(bad)
        assert said[name] in str(exc.value), (name, str(exc.value))


def _open_writer(fifo: Path, timeout: float) -> int | None:
    """The FIFO's write end once a reader holds it open (get has begun that download); None if none came."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
        time.sleep(0.05)
    return None


def test_an_interrupted_download_leaves_no_file_under_its_final_name(window, tmp_path):
    """The object stands in for a slow download: a FIFO in the folder bucket that yields half its bytes and then
    nothing. get is killed (-9) mid-file; the file is not there under its name. A second get completes it."""
    url = copy_bucket(window, tmp_path)
    rel = "checkpoint-6/adapter_model.npz"
    obj = Path(url) / (window["mirror"]["prefix"] + rel)
    data = obj.read_bytes()
    obj.unlink()
    os.mkfifo(obj)
    out = tmp_path / "got"
    proc = subprocess.Popen([BIN, "--bucket", url, "get", window["job"], "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    fd = None
    try:
        fd = _open_writer(obj, timeout=60)
        assert fd is not None, "get never began downloading the mirror's files"
        os.write(fd, data[: len(data) // 2])
        partial = out / (rel + ".bucketrun-partial")
        deadline = time.monotonic() + 30
        while not partial.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert partial.exists()  # the download is under way, under its temporary name
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if fd is not None:
            os.close(fd)
    assert not (out / rel).exists()
    obj.unlink()
    obj.write_bytes(data)
    done = get(url, window["job"], "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == hashlib.sha256(data).hexdigest()
    assert not list(out.rglob("*.bucketrun-partial"))


def test_get_json_of_a_transcription_lists_each_artifact_verified(tmp_path):
    bucket = open_bucket(str(tmp_path / "b"))
    job = keys.new_job_id()
    arts = []
    for name, data in (("transcript.txt", b"hello\n"), ("transcript.json", b'{"segments": []}')):
        key = keys.artifact_key(job, 1, name)
        bucket.put(key, data)
        arts.append({"key": key, "format": name.split(".")[1], "bytes": len(data),
                     "sha256": hashlib.sha256(data).hexdigest()})
    for s in (JobState.SUBMITTED, JobState.QUEUED, JobState.LAUNCHED, JobState.RUNNING):
        append_transition(bucket, job, s, writer="t")
    append_transition(bucket, job, JobState.SUCCEEDED, writer="t", detail={"artifacts": arts})
    done = get(bucket.url, job, "--out", str(tmp_path / "o"), "--json")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    assert (got["verified"], got["total"], got["errors"]) == (2, 2, [])
    assert [(f["key"], f["verified"], f["loaded"]) for f in got["files"]] == [
        (arts[0]["key"], True, None), (arts[1]["key"], True, "json")]
    assert (tmp_path / "o" / "transcript.json").read_bytes() == b'{"segments": []}'


def test_get_json_of_a_fleet_lists_the_dataset_its_parts_and_rows(tmp_path):
    from test_fleet_dataset import OUT, standard

    f = standard(tmp_path / "bucket")
    f.finalize()
    key = keys.fleet_dataset_key(OUT)
    data = f.bucket.get(key).data
    job = keys.new_job_id()
    for s in (JobState.SUBMITTED, JobState.QUEUED, JobState.LAUNCHED, JobState.RUNNING):
        append_transition(f.bucket, job, s, writer="t")
    append_transition(f.bucket, job, JobState.SUCCEEDED, writer="t", detail={"artifacts": [
        {"key": key, "format": "dataset", "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}]})
    done = get(f.bucket.url, job, "--out", str(tmp_path / "o"), "--json")
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    parts = [x for x in got["files"] if x["loaded"] == "parquet"]
    assert len(parts) == got["dataset"]["parts"] == 4 and got["dataset"]["items"] == 12
    assert (got["verified"], got["total"], got["errors"]) == (5, 5, [])  # dataset.json and its four parts
    for x in parts:
        assert hashlib.sha256(Path(x["path"]).read_bytes()).hexdigest() == x["sha256"]
