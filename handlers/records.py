"""Parse notification payloads into one internal record type at the boundary."""

from __future__ import annotations

from dataclasses import dataclass
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


def parse_s3_event(event: dict[str, Any]) -> list[ObjectRecord]:
    """S3 notification records (`Records[].s3.object.key`, URL-encoded as AWS sends it); others skipped."""
    out: list[ObjectRecord] = []
    for rec in event.get("Records") or []:
        s3 = rec.get("s3") if isinstance(rec, dict) else None
        if not isinstance(s3, dict) or not str(rec.get("eventName", "")).startswith("ObjectCreated"):
            continue
        obj = s3.get("object") or {}
        if "key" not in obj:
            continue
        etag = obj.get("eTag")
        out.append(ObjectRecord(
            bucket=(s3.get("bucket") or {}).get("name", ""),
            key=unquote_plus(obj["key"]),
            etag=f'"{etag}"' if etag and not etag.startswith('"') else etag,
            size=obj.get("size"),
            event_name=rec.get("eventName", ""),
            sequencer=obj.get("sequencer"),
        ))
    return out
