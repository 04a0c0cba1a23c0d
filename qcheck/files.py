"""Small file-system helpers shared by the places that write (the cache, the report) and read
(model and checkpoint directories)."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from pathlib import Path


def directory_problem(directory: Path) -> str | None:
    """Why `directory` cannot hold files qcheck writes, or None; creates it if it is missing."""
    if directory.exists() and not directory.is_dir():
        return "is a file, not a directory"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".qcheck-write-test-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as error:
        return f"is not writable ({error.strerror or error})"
    return None


def write_atomic(path: Path, data: bytes) -> None:
    """Write `path` whole or not at all (its folder is created if missing).

    The bytes go to NAME.tmp-PID-RANDOM in the same folder (unique per writer), are fsynced and
    moved into place with os.replace, so a reader never sees a half-written file under the final
    name; a writer killed mid-write leaves at most that temporary file.
    """
    write_atomic_with(path, lambda tmp: tmp.write_bytes(data))


def write_atomic_with(path: Path, write) -> None:
    """`write_atomic` for a writer that streams to a file itself: `write(tmp_path)` fills the
    temporary file (e.g. safetensors' save_file, which writes tensor by tensor instead of
    building the whole file in memory first), which is then fsynced and moved into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


# safetensors dtype names (its format spec) of the dtypes qcheck stores, in the order its writer
# lays tensors out: its Dtype enum's, last first (then by name)
SAFETENSORS_DTYPES = {"int64": "I64", "float64": "F64", "float32": "F32", "int32": "I32", "bfloat16": "BF16",
                      "float16": "F16", "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL"}
_LAYOUT_RANK = {dtype: rank for rank, dtype in enumerate(SAFETENSORS_DTYPES.values())}


def write_safetensors(path: Path, tensors: dict) -> str:
    """Write `tensors` (name -> contiguous CPU torch tensor) as a safetensors file, one tensor at
    a time from its own memory, and return the file's sha256 hex.

    The bytes are the ones safetensors' `save` builds (its layout: an 8-byte little-endian header
    length, the JSON header padded with spaces to 8 bytes, then the data, tensors ordered by
    dtype as its writer orders them, then name), so the library reads it back; unlike `save`, the
    whole file is never in memory, and unlike its `save_file`, writes go through Python's file
    object, so a full disk raises OSError (ENOSPC) here. tests/unit/test_files.py checks both.
    """
    import torch

    def dtype(t) -> str:
        name = str(t.dtype).removeprefix("torch.")
        if name not in SAFETENSORS_DTYPES:
            raise ValueError(f"write_safetensors: dtype {name} is not one qcheck stores ({', '.join(SAFETENSORS_DTYPES)})")
        return SAFETENSORS_DTYPES[name]

    order = sorted(tensors, key=lambda name: (_LAYOUT_RANK[dtype(tensors[name])], name))
    header, offset = {}, 0
    for name in order:
        t = tensors[name]
        if t.device.type != "cpu" or not t.is_contiguous():
            raise ValueError(f"write_safetensors: {name} must be a contiguous CPU tensor")
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": dtype(t),
                        "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for block in (len(text).to_bytes(8, "little"), text):
            f.write(block)
            h.update(block)
        for name in order:
            t = tensors[name]
            if t.numel():  # the tensor's own bytes, no copy (a 0-d tensor is viewed as 1-d first)
                data = memoryview(t.reshape(-1).view(torch.uint8).numpy())
                f.write(data)
                h.update(data)
    return h.hexdigest()


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 hex of a file, read `chunk` bytes at a time (never the whole file in memory)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def read_json_object(path: Path) -> dict:
    """The JSON object in `path`; ValueError naming the file if it is unreadable, not JSON or not
    an object."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise ValueError(f"{path}: not readable JSON ({error}); the file is truncated or corrupt") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data
