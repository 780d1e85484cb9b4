"""What "complete" means for a dataset and a Hugging Face model cache: every file by path, bytes and sha256 (and
line count for JSONL). A folder merely existing proves nothing; a partial cache once stalled a run on a cold
download. Computing and checking these lives in images/train_window/fingerprint.py.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from .envelope import Strict

SHA256_RE = r"^[0-9a-f]{64}$"
COMMIT_RE = r"^[0-9a-f]{40}$"
MAX_FILES = 10_000
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?$")


def relative_posix(path: str) -> str:
    """A relative posix path that cannot climb out of its root: no '/', '\\', empty, '.' or '..' segments."""
    if path.startswith("/") or "\\" in path or any(p in ("", ".", "..") for p in path.split("/")):
        raise ValueError(f"{path[:120]!r} must be a relative posix path without empty, '.' or '..' segments")
    return path


def _unique_paths(paths: list[str]) -> None:
    seen: set[str] = set()
    for p in paths:
        if p in seen:
            raise ValueError(f"{p[:120]!r} is listed twice")
        seen.add(p)


class DatasetFile(Strict):
    path: str = Field(min_length=1, max_length=1024, description="relative posix path under the dataset root")
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=SHA256_RE, description="64 lowercase hex digits")
    lines: int | None = Field(None, ge=0, description="line count; set for .jsonl files and only for them")

    _path = field_validator("path")(classmethod(lambda cls, v: relative_posix(v)))

    @model_validator(mode="after")
    def _lines_for_jsonl(self) -> "DatasetFile":
        jsonl = self.path.endswith(".jsonl")
        if jsonl and self.lines is None:
            raise ValueError(f"{self.path}: a .jsonl file needs its line count")
        if not jsonl and self.lines is not None:
            raise ValueError(f"{self.path}: lines is only for .jsonl files")
        return self


class DatasetFingerprint(Strict):
    files: list[DatasetFile] = Field(min_length=1, max_length=MAX_FILES)
    min_lines: dict[str, int] = Field(default_factory=dict,
                                      description="split name (a .jsonl file's stem, e.g. 'train') -> minimum lines")

    @model_validator(mode="after")
    def _consistent(self) -> "DatasetFingerprint":
        _unique_paths([f.path for f in self.files])
        for split, minimum in self.min_lines.items():
            if minimum < 0:
                raise ValueError(f"min_lines[{split!r}] must be >= 0")
            found = [f for f in self.files if f.lines is not None and split_of(f.path) == split]
            if not found:
                raise ValueError(f"min_lines names split {split!r} but no {split}.jsonl is in files")
            total = sum(f.lines or 0 for f in found)
            if total < minimum:
                raise ValueError(f"split {split!r} has {total:,} lines, below its own min_lines {minimum:,}")
        return self


def split_of(path: str) -> str:
    """The split a file belongs to: its stem, so 'data/train.jsonl' is 'train'."""
    name = path.rsplit("/", 1)[-1]
    return name.rsplit(".", 1)[0] if "." in name else name


class CacheFile(Strict):
    path: str = Field(min_length=1, max_length=1024, description="relative to snapshots/<revision>/")
    bytes: int = Field(ge=0)
    sha256: str = Field(pattern=SHA256_RE, description="of the content, whatever the blob's name")

    _path = field_validator("path")(classmethod(lambda cls, v: relative_posix(v)))


class CacheFingerprint(Strict):
    repo_id: str = Field(min_length=1, max_length=256, description="e.g. 'openai/whisper-base'")
    repo_type: Literal["model", "dataset", "space"] = "model"
    revision: str = Field(pattern=COMMIT_RE, description="the 40-hex commit of the snapshot")
    ref: str | None = Field("main", min_length=1, max_length=256, description="refs/<ref> must name revision")
    files: list[CacheFile] = Field(min_length=1, max_length=MAX_FILES)

    @field_validator("repo_id")
    @classmethod
    def _repo_id(cls, v: str) -> str:
        if not _REPO_ID.match(v) or "--" in v or ".." in v:
            raise ValueError(f"{v[:120]!r} is not a hub repo id like 'org/name'")
        return v

    @field_validator("ref")
    @classmethod
    def _ref(cls, v: str | None) -> str | None:
        return None if v is None else relative_posix(v)

    @model_validator(mode="after")
    def _unique(self) -> "CacheFingerprint":
        _unique_paths([f.path for f in self.files])
        return self
