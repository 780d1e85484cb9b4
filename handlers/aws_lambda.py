"""AWS Lambda entry points: thin. Parse the event, call the same dispatch/sweep code as the simulation.

Configuration comes from the environment the template sets: BUCKETRUN_BUCKET (s3://bucket/prefix),
RUNPOD_ENDPOINT_ID_<KIND> for each kind's endpoint, and the Runpod key's (and the optional webhook signing secret's) Secrets Manager ARN or
SSM SecureString name, read once per container and never logged.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import boto3

from bucketrun.events import webhook
from bucketrun.events.errors import ConfigError
from bucketrun.events.lifecycle import default_writer
from bucketrun.events.storage import open_bucket

from .dispatch import DispatchContext, dispatch
from .notify import Notifier
from .records import EventKind, classify
from .launchers import routes_from_env
from .sweep import sweep

log = logging.getLogger("bucketrun.lambda")
logging.getLogger().setLevel(logging.INFO)
_context: DispatchContext | None = None
_notifier: Notifier | None = None


class _WhileReadingSecrets(logging.Filter):
    """botocore logs every response body at DEBUG, and a GetSecretValue/GetParameter body holds the secret:
    its parser's records are dropped while this thread reads one."""

    reading = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.reading, "on", False)


_quiet = _WhileReadingSecrets()
logging.getLogger("botocore.parsers").addFilter(_quiet)


def secret_from_env(name: str, arn_var: str, parameter_var: str) -> str | None:
    """`name` itself, else the Secrets Manager secret whose ARN is in `arn_var`, else the SSM SecureString
    named in `parameter_var`; the value is never logged."""
    if os.environ.get(name):
        return os.environ[name]

    _quiet.reading.on = True
    try:
        if os.environ.get(arn_var):
            return boto3.client("secretsmanager").get_secret_value(
                SecretId=os.environ[arn_var])["SecretString"].strip()
        if os.environ.get(parameter_var):
            return boto3.client("ssm").get_parameter(Name=os.environ[parameter_var],
                                                     WithDecryption=True)["Parameter"]["Value"].strip()
    finally:
        _quiet.reading.on = False
    return None


def runpod_api_key() -> str:
    key = secret_from_env("RUNPOD_API_KEY", "RUNPOD_API_KEY_SECRET_ARN", "RUNPOD_API_KEY_PARAMETER")
    if not key:
        raise ConfigError("no Runpod API key: set RUNPOD_API_KEY_SECRET_ARN or RUNPOD_API_KEY_PARAMETER")
    return key


def vast_api_key() -> str | None:
    """Only fleets on Vast.ai need it; read when the first such fleet is launched or swept."""
    return secret_from_env("VAST_API_KEY", "VAST_API_KEY_SECRET_ARN", "VAST_API_KEY_PARAMETER")


def context() -> DispatchContext:
    """Built once per container and reused across invocations (warm Lambdas keep clients)."""
    global _context
    if _context is None:
        url = os.environ.get("BUCKETRUN_BUCKET", "")
        if not url.startswith("s3://"):
            raise ConfigError("BUCKETRUN_BUCKET must be s3://bucket[/prefix] in the cloud")
        api_key = runpod_api_key()  # read once per container, up front: a missing key fails the deploy's first call
        _context = DispatchContext(open_bucket(url), routes_from_env(lambda: api_key, vast_api_key),
                                   default_writer("lambda"))
    return _context


def notifier() -> Notifier:
    global _notifier
    if _notifier is None:
        _notifier = Notifier(secret_from_env(webhook.SECRET_ENV, f"{webhook.SECRET_ENV}_ARN",
                                             f"{webhook.SECRET_ENV}_PARAMETER"))
    return _notifier


def reset_context() -> None:
    global _context, _notifier, _snapshots
    _context = _notifier = _snapshots = None


def dispatch_handler(event: dict[str, Any], _lambda_context: Any = None) -> dict[str, Any]:
    kind = classify(event)
    if kind in (EventKind.TEST, EventKind.UNKNOWN):
        log.info("ignored %s event", kind.value)
        return {"ignored": kind.value}
    if kind is EventKind.SCHEDULE:
        return sweep_handler(event, _lambda_context)
    outcomes = dispatch(event, context())
    return {"jobs": [{"key": o.inbox_key, "job_id": o.job_id, "state": o.state} for o in outcomes]}


def sweep_handler(_event: dict[str, Any], _lambda_context: Any = None) -> dict[str, Any]:
    ctx = context()
    out: dict[str, Any] = {"swept": sweep(ctx.bucket, ctx.launchers, ctx.writer, notifier=notifier())}
    snapshot = refresh_snapshot(ctx.bucket)
    if snapshot is not None:
        out["snapshot"] = snapshot
    return out


_snapshots: Any = None  # the dashboard snapshot's refresher, kept while the container lives (False: no ui extra)


def refresh_snapshot(bucket) -> dict[str, Any] | None:
    """Refresh the bucket's dashboard snapshot (handlers/ui/snapshot.py) once `bucketrun ui --snapshot` wrote one,
    at most every 60 s (or what that command recorded). The function's package may lack the ui extra (jinja2):
    then it is skipped with one logged line, and a failure never fails the sweep."""
    global _snapshots
    if _snapshots is False:
        return None
    try:
        if _snapshots is None:
            # late: jinja2 and markupsafe are the ui extra's, which the Lambda package need not carry
            from .ui.snapshot import Refresher

            _snapshots = Refresher(bucket)
        result = _snapshots.maybe_refresh()
    except ImportError as exc:
        log.info("dashboard snapshot skipped: the ui extra is not installed in this function (%s)", exc)
        _snapshots = False
        return None
    except Exception as exc:  # noqa: BLE001 - the snapshot is a convenience; the sweep's outcome stands
        log.error("dashboard snapshot failed: %s: %s", type(exc).__name__, exc)
        return {"error": str(exc)}
    return None if result is None else {"written": len(result.written), "reads": result.reads,
                                        "writes": result.writes}
