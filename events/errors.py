"""bucketrun's own small exception hierarchy; library errors are translated into these at the boundary."""

from __future__ import annotations


class BucketrunError(Exception):
    """Base of every error bucketrun raises on purpose; the CLI prints these as one line."""


class ConfigError(BucketrunError):
    """A setting (bucket URL, option, environment) is unusable."""


class StorageError(BucketrunError):
    """A bucket backend failed for a reason other than a precondition or a missing key."""


class BucketMissing(ConfigError):
    """The bucket itself does not exist (a folder never created, an S3 bucket that is not there)."""


class NotFound(StorageError):
    """The key does not exist."""


class PreconditionFailed(StorageError):
    """A conditional write lost: the key already existed, or its ETag changed. `retried`: the write may have been
    sent more than once, so the 412 may answer our own first try that landed; False: the loss is certain."""

    def __init__(self, message: str = "", retried: bool = True):
        super().__init__(message)
        self.retried = retried


class ConditionalConflict(StorageError):
    """S3's 409 ConditionalRequestConflict: a concurrent conditional write was in flight. Neither a win nor a
    loss: events.conditional retries, then reads back to decide."""


class InvalidKey(StorageError):
    """A key that a backend cannot hold (empty segment, '..', a folder clash)."""


class CorruptObject(BucketrunError):
    """An object bucketrun wrote has a shape bucketrun does not recognise."""


class JobError(BucketrunError):
    """A job-level rule was broken."""


class UnknownJob(JobError):
    """No job with that id exists in the bucket."""


class IllegalTransition(JobError):
    """The lifecycle table does not allow this move from the job's latest state."""


class StaleAttempt(JobError):
    """A writer from an older attempt tried to write after the job moved on (fencing)."""
