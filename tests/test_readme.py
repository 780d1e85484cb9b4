"""The README stays a newcomer's five minutes, its links and the docs' links lead somewhere, and the settings table
in docs/settings.md names every environment variable the code reads."""

from __future__ import annotations

import re

from conftest import ROOT

# A variable name spelled in code: a quoted literal, or a name built per kind ("..._{...}").
_IN_CODE = re.compile(r"[\"'](BUCKETRUN_[A-Z0-9_]+|RUNPOD_[A-Z0-9_]+|XDG_[A-Z0-9_]+)")
# A Markdown link or image, [text](target) or ![alt](target "title"), outside code.
_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(?:(?!\1).)+?\1", re.S)

README_MAX_LINES = 200


def test_every_variable_the_code_reads_is_in_the_settings_table():
    settings = (ROOT / "docs" / "settings.md").read_text()
    table = settings[settings.index("## Environment variables"):]
    names = set()
    for folder in ("events", "handlers", "images", "local_sim"):
        for path in (ROOT / folder).rglob("*.py"):
            names |= set(_IN_CODE.findall(path.read_text()))
    names = {n.rstrip("_") for n in names}
    assert {"BUCKETRUN_BUCKET", "BUCKETRUN_MODEL", "BUCKETRUN_PRELOAD", "RUNPOD_ENDPOINT_ID"} <= names
    missing = sorted(n for n in names if f"`{n}`" not in table and f"`{n}_<KIND>`" not in table)
    assert missing == [], f"not in the Environment variables table of docs/settings.md: {missing}"


def test_the_readme_is_at_most_200_lines():
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md is {len(lines)} lines; at most {README_MAX_LINES}: move the detail into docs/")


def _relative_links(text: str) -> list[str]:
    text = _CODE_SPAN.sub("", _FENCE.sub("", text))
    out = []
    for target in _LINK.findall(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
            continue  # https:, mailto:, ... and links within the same page
        out.append(target.split("#", 1)[0])
    return out


def test_the_link_finder_skips_code_and_urls():
    text = ("[a](docs/a.md) ![b](img/b.png \"t\") [c](https://x.org/y) [d](#here) [e](f.md#g) `[h](i.md)`\n"
            "```\n[j](k.md)\n```\n")
    assert _relative_links(text) == ["docs/a.md", "img/b.png", "f.md"]


def test_every_relative_link_in_the_readme_and_docs_points_to_a_file_that_exists():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
    assert len(pages) > 1, "docs/ has no Markdown pages"
    if (ROOT / "bench" / "README.md").exists():
        pages.append(ROOT / "bench" / "README.md")
    broken = []
    for page in pages:
        for target in _relative_links(page.read_text()):
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)}: {target}")
    assert broken == [], f"relative links to files that do not exist: {broken}"
