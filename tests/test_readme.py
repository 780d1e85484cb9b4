"""The README's settings table names every environment variable the code reads."""

from __future__ import annotations

import re

from conftest import ROOT

# A variable name spelled in code: a quoted literal, or a name built per kind ("..._{...}").
_IN_CODE = re.compile(r"[\"'](BUCKETRUN_[A-Z0-9_]+|RUNPOD_[A-Z0-9_]+|XDG_[A-Z0-9_]+)")


def test_every_variable_the_code_reads_is_in_the_settings_table():
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Settings"):]
    names = set()
    for folder in ("events", "handlers", "images", "local_sim"):
        for path in (ROOT / folder).rglob("*.py"):
            names |= set(_IN_CODE.findall(path.read_text()))
    names = {n.rstrip("_") for n in names}
    assert {"BUCKETRUN_BUCKET", "BUCKETRUN_MODEL", "BUCKETRUN_PRELOAD", "RUNPOD_ENDPOINT_ID"} <= names
    missing = sorted(n for n in names if f"`{n}`" not in table and f"`{n}_<KIND>`" not in table)
    assert missing == [], f"not in README's Settings table: {missing}"
