"""Small file-system checks shared by the places that write (the cache, the report)."""

from __future__ import annotations

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
