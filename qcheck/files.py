"""Small file-system helpers shared by the places that write (the cache, the report) and read
(model and checkpoint directories)."""

from __future__ import annotations

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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


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
