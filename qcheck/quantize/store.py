"""A crash-safe, process-safe on-disk entry: tensors (safetensors) plus a JSON sidecar.

Layout: ROOT/KIND/KEY[:2]/KEY.safetensors, KEY.json, KEY.lock. The sidecar is written last and
holds the sha256 of the tensors file, so it is the commit record: an entry without a sidecar, with
a different sha256, or whose tensors do not parse is treated as absent (and rewritten by whoever
holds the lock). Each file is written to a temporary name in the same directory, fsynced and
moved into place with os.replace, so a reader never sees a half-written file under the final
name; a process killed mid-write leaves at most a `*.tmp-*` file, removed by the next writer.

Locking: `filelock.FileLock` on KEY.lock (an OS lock, released if the holder dies), so two xdist
workers never compute or write the same entry twice: the second waits, then reads.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from filelock import FileLock

from qcheck.files import directory_problem, write_atomic

if TYPE_CHECKING:
    from torch import Tensor

FORMAT = 2  # bump when the layout or the meaning of an entry changes: old entries are ignored


class CacheWriteError(RuntimeError):
    """A cache entry could not be written (disk full, permissions changed during the run)."""


def check_cache_dir(directory: Path, source: str) -> None:
    """Make sure `directory` can hold the cache (created if missing); ValueError naming it, the
    option it came from (`source`) and the fix otherwise. Run once, before any test."""
    problem = directory_problem(directory)
    if problem:
        raise ValueError(f"cache directory {directory} (from {source}) {problem}: pass a writable "
                         f"directory with --qcheck-cache DIR (or set QCHECK_CACHE_DIR)")


class Entry:
    """One cache entry; `problem` says why the last `read` returned None (None: not looked yet)."""

    def __init__(self, root: str | Path, kind: str, key: str):
        self.key = key
        self.dir = Path(root) / kind / key[:2]
        self.tensors_path = self.dir / f"{key}.safetensors"
        self.meta_path = self.dir / f"{key}.json"
        self.problem: str | None = None

    def lock(self, timeout: float = -1) -> FileLock:
        """The entry's lock (timeout in seconds; -1 waits for ever). Hold it to read then write."""
        self.dir.mkdir(parents=True, exist_ok=True)
        return FileLock(str(self.dir / f"{self.key}.lock"), timeout=timeout)

    def read(self) -> tuple[dict[str, Tensor], dict] | None:
        """(tensors, meta) if the entry is complete and intact, else None with `problem` set."""
        from safetensors.torch import load

        if not self.meta_path.exists():
            self.problem = "missing" if not self.tensors_path.exists() else "no sidecar (interrupted write)"
            return None
        try:
            meta = json.loads(self.meta_path.read_text())
            data = self.tensors_path.read_bytes()
        except (OSError, ValueError) as err:
            self.problem = f"unreadable: {type(err).__name__}: {err}"
            return None
        if meta.get("format") != FORMAT or meta.get("key") != self.key:
            self.problem = f"format {meta.get('format')!r} / key mismatch"
            return None
        if hashlib.sha256(data).hexdigest() != meta.get("sha256"):
            self.problem = "sha256 of the tensors does not match the sidecar (truncated or corrupt)"
            return None
        try:
            tensors = load(data)
        except Exception as err:  # safetensors raises SafetensorError, a plain Exception subclass
            self.problem = f"safetensors could not parse it: {err}"
            return None
        self.problem = None
        return tensors, meta

    def write(self, tensors: dict[str, Tensor], meta: dict) -> None:
        """Atomically replace the entry: tensors first, then the sidecar (the commit record)."""
        from safetensors.torch import save

        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob(f"{self.key}.*.tmp-*"):  # write_atomic's temporary files
            stale.unlink(missing_ok=True)
        data = save({name: t.detach().cpu().contiguous() for name, t in tensors.items()})
        meta = {**meta, "format": FORMAT, "key": self.key, "sha256": hashlib.sha256(data).hexdigest()}
        try:
            write_atomic(self.tensors_path, data)
            write_atomic(self.meta_path, json.dumps(meta, indent=1, sort_keys=True).encode())
        except OSError as error:
            # Nothing half-written stays under a final name (write_atomic), so the next run
            # recomputes this entry; say where and what, once, instead of a raw traceback.
            what = "the disk is full" if error.errno == errno.ENOSPC else (error.strerror or str(error))
            raise CacheWriteError(
                f"could not write the cache entry {self.key[:12]} under {self.dir.parents[1]}: {what}. "
                f"Free space there, or point --qcheck-cache (or QCHECK_CACHE_DIR) at another "
                f"directory; nothing partial was left") from None
        _fsync_dir(self.dir)


def _fsync_dir(directory: Path) -> None:
    """Make the renames durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
