"""The vendored front-end files (uPlot, from the npm registry with its licence) and their pinned digests: the
server links them under /static/, a snapshot inlines them so its one HTML file needs nothing else."""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from markupsafe import Markup

STATIC = Path(__file__).with_name("static")
# name -> sha256 of the file as `npm pack uplot@1.6.32` ships it (static/uplot/VENDORED.md says how)
PINNED = {
    "uplot/uPlot.iife.min.js": "19c8d4c6ad88929a79f4ae49d6f7161566dfd0ba3d15cc495e974f787eb78f1f",
    "uplot/uPlot.min.css": "df630c6a8d6f8eeaff264b50f73ce5b114f646ffd9a0bb74f049b0a00135fa04",
    "uplot/LICENSE": "8f989229699b4fe2f1a0432d0e9edc338a8a911e250e2d1b01ecd770a5f5b1bd",
}
SCRIPTS, STYLES = ["uplot/uPlot.iife.min.js"], ["uplot/uPlot.min.css"]
TYPES = {".js": "text/javascript", ".css": "text/css"}


@cache
def read(name: str) -> bytes:
    """A vendored file's bytes, refused if they are not the pinned ones (a damaged install shows, not a broken chart)."""
    if name not in PINNED:
        raise KeyError(name)
    data = (STATIC / name).read_bytes()
    if hashlib.sha256(data).hexdigest() != PINNED[name]:
        raise ValueError(f"{STATIC / name} is not the vendored file (sha256 differs); reinstall bucketrun")
    return data


def linked() -> Markup:
    """<link> and <script> tags naming the server's /static/ copies."""
    tags = [f'<link rel="stylesheet" href="/static/{n}">' for n in STYLES]
    tags += [f'<script src="/static/{n}"></script>' for n in SCRIPTS]
    return Markup("\n".join(tags))


def inlined() -> Markup:
    """The same files inside the page, for a snapshot that must work as one object. `</` cannot occur in them
    unescaped (checked), so they cannot close their own tag."""
    out = []
    for n in STYLES:
        text = read(n).decode()
        assert "</style" not in text.lower()
        out.append(f"<style>{text}</style>")
    for n in SCRIPTS:
        text = read(n).decode()
        assert "</script" not in text.lower()
        out.append(f"<script>{text}</script>")
    return Markup("\n".join(out))
