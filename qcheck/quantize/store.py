"""A crash-safe, process-safe on-disk entry: tensors (safetensors) plus a JSON sidecar.

Layout: ROOT/KIND/KEY[:2]/KEY.safetensors, KEY.json, KEY.lock. The sidecar is written last and
holds the sha256 of the tensors file, so it is the commit record: an entry without a sidecar, with
a different sha256, or whose tensors do not parse is treated as absent (and rewritten by whoever
holds the lock). Each file is written to a temporary name in the same directory, fsynced and
moved into place with os.replace, so a reader never sees a half-written file under the final
name; a process killed mid-write leaves at most a `*.tmp-*` file, removed by the next writer.

Memory: an entry is never held whole as bytes. `write` streams the tensors to the file from
their own memory, hashing as it goes (files.py write_safetensors: the bytes safetensors' `save`
would build);
`read` hashes the file in chunks and returns a lazy mapping that loads one tensor when it is
asked for, so a caller that copies tensors into a model one by one never holds a second copy of
the entry (a GPT-2-small quantized entry is 0.34 GB of block weights).

Locking: `filelock.FileLock` on KEY.lock (an OS lock, released if the holder dies), so two xdist
workers never compute or write the same entry twice: the second waits, then reads.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

from filelock import FileLock

from qcheck.files import directory_problem, file_sha256, write_atomic, write_atomic_with, write_safetensors

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

    def read(self) -> tuple[Mapping[str, Tensor], dict] | None:
        """(tensors, meta) if the entry is complete and intact, else None with `problem` set.
        The tensors are a StoredTensors mapping: each is read from the file when indexed."""
        if not self.meta_path.exists():
            self.problem = "missing" if not self.tensors_path.exists() else "no sidecar (interrupted write)"
            return None
        try:
            meta = json.loads(self.meta_path.read_text())
            if meta.get("format") != FORMAT or meta.get("key") != self.key:
                self.problem = f"format {meta.get('format')!r} / key mismatch"
                return None
            digest = file_sha256(self.tensors_path)
        except (OSError, ValueError) as err:
            self.problem = f"unreadable: {type(err).__name__}: {err}"
            return None
        if digest != meta.get("sha256"):
            self.problem = "sha256 of the tensors does not match the sidecar (truncated or corrupt)"
            return None
        try:
            tensors = StoredTensors(self.tensors_path)
        except Exception as err:  # safetensors raises SafetensorError, a plain Exception subclass
            self.problem = f"safetensors could not parse it: {err}"
            return None
        self.problem = None
        return tensors, meta

    def write(self, tensors: Mapping[str, Tensor], meta: dict) -> None:
        """Atomically replace the entry: tensors first, then the sidecar (the commit record)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for stale in self.dir.glob(f"{self.key}.*.tmp-*"):  # write_atomic's temporary files
            stale.unlink(missing_ok=True)
        # .contiguous() copies only what is not contiguous already (none of qcheck's tensors are)
        flat = {name: t.detach().cpu().contiguous() for name, t in tensors.items()}
        try:
            digest: list[str] = []
            write_atomic_with(self.tensors_path, lambda tmp: digest.append(write_safetensors(tmp, flat)))
            meta = {**meta, "format": FORMAT, "key": self.key, "sha256": digest[0]}
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


class StoredTensors(Mapping):
    """The tensors of a safetensors file, each read when indexed (a fresh CPU tensor each time).

    The file stays open for the mapping's life: a writer replacing it (os.replace) leaves this
    reader on the file it verified."""

    def __init__(self, path: Path):
        from safetensors import safe_open

        self._file = safe_open(str(path), framework="pt")
        self._names = list(self._file.keys())

    def __getitem__(self, name: str) -> Tensor:
        if name not in self._names:
            raise KeyError(name)
        return self._file.get_tensor(name)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names)

    def __len__(self) -> int:
        return len(self._names)


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
