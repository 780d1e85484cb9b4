"""The part of a job page only one kind has (a fleet's workers and shards, a training window's preflight and
gate): kind -> a function of (cache, job_id, entry, links) giving HTML, read through the cache like the rest."""

from __future__ import annotations

from typing import Any, Callable

from markupsafe import Markup

Section = Callable[[Any, str, dict[str, Any], Any], Markup | None]

SECTIONS: dict[str, Section] = {}


def render(kind: str, cache, job_id: str, entry: dict[str, Any], links) -> Markup | None:
    section = SECTIONS.get(kind)
    return section(cache, job_id, entry, links) if section else None

from .window import KIND as _WINDOW, window_section  # noqa: E402 - below SECTIONS: a section module may import this one
SECTIONS[_WINDOW] = window_section
from . import fleet as _fleet  # noqa: E402
SECTIONS["fleet"] = _fleet.section
