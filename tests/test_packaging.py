"""Layering promises: the dispatch path stays light, and the offline model is the pinned one."""

from __future__ import annotations

import subprocess
import sys

from images.transcribe import model


def test_dispatch_path_never_imports_the_worker_stack():
    code = ("import sys, handlers.dispatch, handlers.intake, events.lifecycle, events.storage.s3\n"
            "heavy = [m for m in ('faster_whisper', 'ctranslate2', 'yt_dlp', 'av', 'local_sim', 'images')"
            " if m in sys.modules]\n"
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


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
