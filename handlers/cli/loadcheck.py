"""Opening a fetched result the way its user will, short of the training framework: JSON parses, a safetensors
header holds (read here, no torch), a .npy/.npz opens with numpy. A file that hashes right can still be a
checkpoint nobody can load; this is where `bucketrun get` finds out, before the host that wrote it is gone."""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path

# safetensors dtypes and their width in bits (the format's own list, sub-byte floats included).
SAFETENSORS_BITS = {"BOOL": 8, "U8": 8, "I8": 8, "F8_E5M2": 8, "F8_E4M3": 8, "F8_E8M0": 8, "I16": 16, "U16": 16,
                    "F16": 16, "BF16": 16, "I32": 32, "U32": 32, "F32": 32, "C64": 64, "I64": 64, "U64": 64,
                    "F64": 64, "F4": 4, "F6_E2M3": 6, "F6_E3M2": 6}
MAX_HEADER = 100_000_000  # the reference reader's bound: a larger length is a corrupt (or hostile) file


class LoadError(Exception):
    """The file does not load as its name says it should; the message says where it breaks."""


def load_check(path: Path) -> str | None:
    """What loaded ("json", "safetensors: 3 tensors", "npz: 2 arrays"), None for a format not checked here;
    LoadError when it does not load."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        try:
            json.loads(path.read_bytes())
        except ValueError as exc:
            raise LoadError(f"is not valid JSON: {exc}") from None
        return "json"
    if suffix == ".jsonl":
        with open(path, "rb") as f:
            for n, line in enumerate(f, 1):
                try:
                    if line.strip():
                        json.loads(line)
                except ValueError as exc:
                    raise LoadError(f"line {n} is not valid JSON: {exc}") from None
        return "jsonl"
    if suffix == ".safetensors":
        return f"safetensors: {len(safetensors_header(path))} tensors"
    if suffix in (".npy", ".npz"):
        return _numpy(path, suffix)
    return None


def safetensors_header(path: Path) -> dict[str, dict]:
    """The tensors a safetensors file declares, after checking its layout: an 8-byte little-endian header length
    within the file, a JSON object header, and per tensor a known dtype, a shape, and data_offsets inside the data
    buffer spanning dtype x shape bytes; together the tensors fill the buffer with no hole (the format's rule)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise LoadError(f"is {size} bytes: too short for a safetensors header length")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER or 8 + n > size:
            raise LoadError(f"declares a {n}-byte header, but the file holds {size - 8} bytes after the length")
        raw = f.read(n)
    try:
        header = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise LoadError(f"has a header that is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise LoadError("has a header that is not a JSON object")
    buffer = size - 8 - n
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    spans = []
    for name, t in tensors.items():
        if not isinstance(t, dict):
            raise LoadError(f"tensor {name!r}: not an object in the header")
        dtype, shape, offsets = t.get("dtype"), t.get("shape"), t.get("data_offsets")
        if dtype not in SAFETENSORS_BITS:
            raise LoadError(f"tensor {name!r}: unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                for d in shape)):
            raise LoadError(f"tensor {name!r}: shape {shape!r} is not a list of sizes")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise LoadError(f"tensor {name!r}: data_offsets {offsets!r} is not [begin, end]")
        begin, end = offsets
        if not 0 <= begin <= end <= buffer:
            raise LoadError(f"tensor {name!r}: data_offsets [{begin}, {end}] lie outside the {buffer}-byte data "
                            "buffer (a truncated file?)")
        bits = math.prod(shape) * SAFETENSORS_BITS[dtype]
        if bits % 8 or end - begin != bits // 8:
            raise LoadError(f"tensor {name!r}: {dtype} {shape} is {bits / 8:g} bytes, its data_offsets span "
                            f"{end - begin}")
        spans.append((begin, end, name))
    at = 0
    for begin, end, name in sorted(spans):
        if begin != at:
            raise LoadError(f"tensor {name!r} starts at {begin}, the data before it ends at {at} (overlap or hole)")
        at = end
    if at != buffer:
        raise LoadError(f"the tensors span {at} bytes of a {buffer}-byte data buffer")
    return tensors


def _numpy(path: Path, suffix: str) -> str:
    try:
        import numpy as np  # late: numpy (heavy, not a core dependency) only to open .npy/.npz files
    except ImportError:
        return "not opened: numpy is not installed (pip install numpy)"
    try:
        if suffix == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)  # checks the header and that the data fits
            return f"npy: {arr.dtype} {list(arr.shape)}"
        with np.load(path, allow_pickle=False) as z:
            for name in z.files:
                z[name]  # reads the member: its zip CRC and its array header are checked
            return f"npz: {len(z.files)} arrays"
    except Exception as exc:  # noqa: BLE001 - numpy raises ValueError, OSError, zipfile.BadZipFile, EOFError...
        raise LoadError(f"does not open with numpy: {type(exc).__name__}: {exc}") from None
