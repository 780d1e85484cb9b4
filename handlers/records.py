"""Parse notification payloads into one internal record type at the boundary.

Accepted shapes: AWS S3 notifications (direct, or the same records from MinIO's webhook), Cloudflare R2
event notifications delivered through a Queue, EventBridge scheduled events (the sweep), and s3:TestEvent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from typing import Any
from urllib.parse import unquote_plus


@dataclass(frozen=True)
class ObjectRecord:
    """An object-created notification, whatever shape it arrived in; `key` is decoded."""

    bucket: str
    key: str
    etag: str | None = None
    size: int | None = None
    event_name: str = "ObjectCreated:Put"
    sequencer: str | None = None


class EventKind(str, Enum):
    OBJECTS = "objects"
    SCHEDULE = "schedule"
    TEST = "test"
    UNKNOWN = "unknown"


def _quoted(etag: str | None) -> str | None:
    return f'"{etag}"' if etag and not etag.startswith('"') else etag


def classify(event: Any) -> EventKind:
    if not isinstance(event, dict):
        return EventKind.UNKNOWN
    if event.get("Event") == "s3:TestEvent":
        return EventKind.TEST
    if event.get("source") == "aws.events" or event.get("detail-type") == "Scheduled Event":
        return EventKind.SCHEDULE
    if "Records" in event or "messages" in event:
        return EventKind.OBJECTS
    return EventKind.UNKNOWN


def parse_s3_event(event: dict[str, Any]) -> list[ObjectRecord]:
    """S3-notification records (`Records[].s3.object.key`, URL-encoded as AWS and MinIO send it)."""
    out: list[ObjectRecord] = []
    for rec in event.get("Records") or []:
        s3 = rec.get("s3") if isinstance(rec, dict) else None
        name = str(rec.get("eventName", "")) if isinstance(rec, dict) else ""
        if not isinstance(s3, dict) or "ObjectCreated" not in name:
            continue
        obj = s3.get("object") or {}
        if "key" not in obj:
            continue
        out.append(ObjectRecord(
            bucket=(s3.get("bucket") or {}).get("name", ""),
            key=unquote_plus(obj["key"]),
            etag=_quoted(obj.get("eTag")),
            size=obj.get("size"),
            event_name=name.removeprefix("s3:"),
            sequencer=obj.get("sequencer"),
        ))
    return out


_R2_CREATE_ACTIONS = {"PutObject", "CopyObject", "CompleteMultipartUpload"}


def parse_r2_batch(event: dict[str, Any]) -> list[ObjectRecord]:
    """Cloudflare R2 event notifications from a Queue: `messages[].body` (an object, or its JSON text).
    R2 sends keys unencoded."""
    out: list[ObjectRecord] = []
    for msg in event.get("messages") or []:
        body = msg.get("body") if isinstance(msg, dict) else None
        if isinstance(body, str):
            try:
                body = json.loads(body)
            except ValueError:
                continue
        if not isinstance(body, dict) or body.get("action") not in _R2_CREATE_ACTIONS:
            continue
        obj = body.get("object") or {}
        if "key" not in obj:
            continue
        out.append(ObjectRecord(bucket=body.get("bucket", ""), key=obj["key"], etag=_quoted(obj.get("eTag")),
                                size=obj.get("size"), event_name=f"ObjectCreated:{body['action']}"))
    return out


def parse_records(event: dict[str, Any]) -> list[ObjectRecord]:
    """Every object-created record in any accepted shape, in delivery order."""
    if "messages" in event:
        return parse_r2_batch(event)
    return parse_s3_event(event)
