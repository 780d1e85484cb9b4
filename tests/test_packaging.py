"""Layering promises: the dispatch path stays light, the install has one namespace, and the offline model is
the pinned one."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile

from bucketrun.images.transcribe import model

from conftest import ROOT


def test_dispatch_path_never_imports_the_worker_stack():
    code = ("import sys, bucketrun.handlers.dispatch, bucketrun.handlers.intake, bucketrun.handlers.sweep, "
            "bucketrun.events.lifecycle, bucketrun.events.storage.s3, bucketrun.events.kinds\n"
            "heavy = [m for m in ('faster_whisper', 'ctranslate2', 'yt_dlp', 'av', 'numpy', 'bucketrun.local_sim',"
            " 'bucketrun.images') if m in sys.modules]\n"
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/")
    assert done.returncode == 0, done.stderr


def test_wheel_installs_one_namespace(tmp_path):
    """`pip install bucketrun` must not drop top-level `events`, `handlers` or `images` into site-packages."""
    src = tmp_path / "src"  # a copy, so the build leaves no build/ folder in the work tree
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__",
                                                             ".pytest_cache", "tests", "bench"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(tmp_path), str(src)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    (wheel,) = tmp_path.glob("bucketrun-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"bucketrun", wheel.name.split("-py")[0] + ".dist-info"}
    for layer in ("events", "handlers", "local_sim", "images"):
        assert any(n.startswith(f"bucketrun/{layer}/") for n in names), layer
    assert "bucketrun/images/transcribe/assets/smoke-speech.ogg" in names
    assert "bucketrun/events/samples/s3-put-single.json" in names


def test_layers_import_downwards_only():
    """images never import local_sim; local_sim never imports the CLI (that was a cycle)."""
    rules = {"images": ("bucketrun.local_sim", "bucketrun.handlers"),
             "local_sim": ("bucketrun.handlers.cli",),
             "events": ("bucketrun.handlers", "bucketrun.local_sim", "bucketrun.images")}
    offenders = []
    for folder, banned in rules.items():
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            offenders += [f"{path.relative_to(ROOT)} imports {b}" for b in banned
                          if f"from {b}" in text or f"import {b}" in text]
    assert offenders == []


def test_offline_base_model_is_reassembled_and_matches_its_pins(tmp_path, monkeypatch):
    monkeypatch.setenv("BUCKETRUN_MODEL_CACHE", str(tmp_path))
    path = model.offline_base_path()
    assert path == tmp_path / "whisper-base-ct2"
    assert model.sha256_file(path / "model.bin") == model.PINNED["model.bin"]
    # a damaged cache is detected by hash (not by the folder existing) and rebuilt
    with open(path / "model.bin", "r+b") as fh:
        fh.seek(1000)
        fh.write(b"\x00" * 16)
    assert not model._verify(path)
    assert model.offline_base_path() == path and model._verify(path)
