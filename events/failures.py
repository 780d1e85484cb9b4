"""Failure classes: every failed or rejected job says which one, and the class decides what happens next."""

from __future__ import annotations

from enum import Enum
from typing import Any


class FailureClass(str, Enum):
    BAD_INPUT = "bad_input"  # the manifest or the media is wrong: fix the input, do not retry
    DOWNLOAD_ERROR = "download_error"  # the source could not be fetched
    MODEL_ERROR = "model_error"  # the model could not be loaded or run
    OTHER = "other"  # anything unclassified: a bug to report

    @property
    def retryable(self) -> bool:
        return self is FailureClass.DOWNLOAD_ERROR


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
