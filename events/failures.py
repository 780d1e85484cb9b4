"""Failure classes: every failed or rejected job says which one, and the class decides what happens next."""

from __future__ import annotations

import random
from enum import Enum
from typing import Any

from .backoff import JOB_RETRY


class FailureClass(str, Enum):
    # retry the same configuration, with backoff, up to max_attempts
    TRANSIENT = "transient"  # network or throttling
    DOWNLOAD_ERROR = "download_error"  # the source could not be fetched (often transient)
    LOST = "lost"  # preempted, or the worker vanished
    STALL = "stall"  # the worker went silent past stall_after
    TIMED_OUT = "timed_out"  # the backend's execution timeout ended it
    # no automatic retry: the detail says what to change
    BAD_INPUT = "bad_input"  # the manifest or the media is wrong
    MODEL_ERROR = "model_error"  # the model could not be loaded or run
    OUT_OF_MEMORY = "out_of_memory"  # needs a bigger GPU or a smaller model/batch
    CODE_ERROR = "code_error"  # a bug in the worker or the launcher
    CONFIG_ERROR = "config_error"  # deployment settings: wrong endpoint id, bad API key
    PREFLIGHT = "preflight"  # a host's dataset, model cache or environment failed verification
    RUNTIME_CRASH = "runtime_crash"  # the command died before a checkpoint reached the target
    PATH_ERROR = "path_error"  # a path or write error in the run (permissions, a missing directory)
    DISK_FULL = "disk_full"  # the disk or its inodes ran out
    OTHER = "other"  # unclassified: treat as a bug

    @property
    def retryable(self) -> bool:
        return self in RETRYABLE


RETRYABLE = frozenset({FailureClass.TRANSIENT, FailureClass.DOWNLOAD_ERROR, FailureClass.LOST,
                       FailureClass.STALL, FailureClass.TIMED_OUT})


class JobFailure(Exception):
    """Raised inside a worker with the class and a one-sentence cause; becomes a `failed` transition."""

    def __init__(self, cls: FailureClass, message: str, where: str | None = None):
        super().__init__(message)
        self.cls = cls
        self.message = message
        self.where = where


def error_detail(cls: FailureClass, message: str, where: str | None = None,
                 fields: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"class": cls.value, "message": message, "retryable": cls.retryable}
    if where:
        error["where"] = where
    if fields:
        error["fields"] = fields
    return {"error": error}


def backoff_s(attempt: int, rng: random.Random | None = None) -> float:
    """Full-jitter exponential backoff before attempt `attempt + 1`: the shared policy's JOB_RETRY."""
    return JOB_RETRY.delay(attempt, rng)
