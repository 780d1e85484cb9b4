"""One JSON codec for every object bucketrun writes, sync or async, so bytes on the wire are identical."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import orjson

from .errors import CorruptObject


class DecodeError(CorruptObject):
    """An object that should hold JSON does not."""


def dumps(obj: Any) -> bytes:
    """Sorted keys and a trailing newline keep objects diffable and stable across writers."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE | orjson.OPT_INDENT_2)


def loads(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(str(exc)) from exc


def now() -> datetime:
    return datetime.now(timezone.utc)


def iso(ts: datetime) -> str:
    """UTC with milliseconds and a Z: sorts as text in time order."""
    return ts.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> datetime:
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
