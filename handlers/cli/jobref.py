"""A job named the way people name things: its whole id, any unique prefix of it, or `last` (the newest job,
waiting ones included). Ids begin with their UTC time, so a prefix is one listing of jobs/ and inbox/ under it."""

from __future__ import annotations

import posixpath
import re

from bucketrun.events import keys
from bucketrun.events.errors import UnknownJob
from bucketrun.events.storage import Bucket

from .common import CliError

PREFIX_RE = re.compile(r"^[0-9TZa-z-]{1,25}$")  # the characters of an id, shorter than a whole one
LAST = "last"


def _ids_under(bucket: Bucket, prefix: str) -> list[str]:
    """Ids of jobs (taken in) and of manifests waiting in the inbox, that start with `prefix`, oldest first."""
    found: set[str] = set()
    for info in bucket.list(keys.JOBS + prefix):
        job_id = keys.job_id_from_key(info.key)
        if job_id:
            found.add(job_id)
    for info in bucket.list(keys.INBOX + prefix):
        name = posixpath.basename(info.key)[: -len(".json")]
        if keys.is_inbox_manifest(info.key) and keys.is_job_id(name):
            found.add(name)
    return sorted(found)


def resolve(bucket: Bucket, ref: str) -> str:
    if keys.is_job_id(ref):
        return ref
    if ref == LAST:
        ids = _ids_under(bucket, "")
        if not ids:
            raise UnknownJob(f"no jobs yet in {bucket.url}")
        return ids[-1]
    if not PREFIX_RE.match(ref):
        raise CliError(f"bucketrun: {ref[:80]!r} is not a job id, the start of one, or `last`")
    ids = _ids_under(bucket, ref)
    if len(ids) == 1:
        return ids[0]
    if not ids:
        raise UnknownJob(f"no job id starts with {ref!r} in {bucket.url}")
    shown = ", ".join(ids[-5:]) + (" ..." if len(ids) > 5 else "")
    raise CliError(f"bucketrun: {ref!r} is the start of {len(ids)} job ids ({shown}); give more of it")


def completer(bucket_of):
    """For argcomplete: the job ids that start with what was typed (and `last`), from the bucket in the args."""
    def complete(prefix: str, parsed_args, **_) -> list[str]:
        if prefix and not PREFIX_RE.match(prefix) and not keys.is_job_id(prefix):
            return []
        try:
            ids = _ids_under(bucket_of(parsed_args), prefix)
        except Exception:  # noqa: BLE001 - completion must never print a traceback into the shell
            return []
        return ids[-200:] + ([LAST] if LAST.startswith(prefix) else [])

    return complete
