"""Cache faults: a corrupt entry, a run killed while writing one, two xdist workers asking for the
same one at once. The outcome is always the same weights as a clean computation; an entry is
either complete under its final name or absent, and the next run repairs it."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import signal
import time

import pytest
import torch

from qcheck.quantize import cache, store
from qcheck.models.digest import model_digest
from qcheck.quantize.cache import load_or_quantize
from qcheck.quantize.spec import parse_quant_spec
from qcheck.quantize.store import Entry

SPEC = parse_quant_spec("rtn-w4")
LOCK_TIMEOUT = 30  # s: a lock left held by a dead process fails the test instead of hanging it


@pytest.fixture
def computations(monkeypatch):
    """Counts the quantizations behind the cache (in this process)."""
    calls = []
    original = cache.quantize_model
    monkeypatch.setattr(cache, "quantize_model", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def entry_of(root, result) -> Entry:
    return Entry(root, "quant", result.key)


def _truncate(entry: Entry) -> None:
    data = entry.tensors_path.read_bytes()
    entry.tensors_path.write_bytes(data[: len(data) // 2])


def _garbage_with_its_digest(entry: Entry) -> None:
    """A buggy writer that recorded the sha256 of garbage: the digest matches, safetensors refuses."""
    entry.tensors_path.write_bytes(b"not a safetensors file")
    meta = json.loads(entry.meta_path.read_text())
    meta["sha256"] = hashlib.sha256(b"not a safetensors file").hexdigest()
    entry.meta_path.write_text(json.dumps(meta))


def _another_models_tensors(entry: Entry) -> None:
    """Intact, but holding tensors that do not fit this model (a key collision, a hand copy)."""
    from safetensors.torch import save

    data = save({"transformer.h.0.attn.c_attn.weight": torch.zeros(3, 3)})
    entry.tensors_path.write_bytes(data)
    meta = json.loads(entry.meta_path.read_text())
    meta["sha256"] = hashlib.sha256(data).hexdigest()
    entry.meta_path.write_text(json.dumps(meta))


CORRUPTIONS = {
    "truncated tensors": (_truncate, "sha256 of the tensors does not match the sidecar (truncated or corrupt)"),
    "garbage with its digest": (_garbage_with_its_digest, "safetensors could not parse it"),
    "unreadable sidecar": (lambda e: e.meta_path.write_text("{ truncated"), "unreadable: JSONDecodeError"),
    "sidecar of another format": (lambda e: e.meta_path.write_text(json.dumps({"format": 0})),
                                  "format 0 / key mismatch"),
    "another model's tensors": (_another_models_tensors, "its tensors do not match this model's block linears"),
}


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_corrupt_cache_entry_is_recomputed_and_repaired(tiny_gpt2_lm, tmp_path, computations, corruption):
    first = load_or_quantize(tiny_gpt2_lm, SPEC, cache_dir=tmp_path)
    corrupt, note = CORRUPTIONS[corruption]
    corrupt(entry_of(tmp_path, first))
    again = load_or_quantize(tiny_gpt2_lm, SPEC, cache_dir=tmp_path)
    assert not again.from_cache and again.cache_note.startswith(note) and len(computations) == 2
    assert same_weights(again.model, first.model)
    assert [r.weight_rel_error for r in again.report.layers] == [r.weight_rel_error for r in first.report.layers]
    repaired = load_or_quantize(tiny_gpt2_lm, SPEC, cache_dir=tmp_path)
    assert repaired.from_cache and same_weights(repaired.model, first.model) and len(computations) == 2


def test_corrupt_calibration_entry_is_resampled(tiny_gpt2_lm, tmp_path):
    """Cached calibration tokens are checked against their digest before use."""
    spec = parse_quant_spec("gptq-w4-n4-len16")
    first = load_or_quantize(tiny_gpt2_lm, spec, cache_dir=tmp_path)
    [meta] = (tmp_path / "calibration").rglob("*.json")
    tokens = meta.with_suffix(".safetensors")
    from safetensors.torch import load, save

    planted = {"tokens": load(tokens.read_bytes())["tokens"].flip(0)}  # valid file, wrong tokens
    data = save(planted)
    tokens.write_bytes(data)
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "sha256": hashlib.sha256(data).hexdigest()}))
    again = load_or_quantize(tiny_gpt2_lm, spec, cache_dir=tmp_path)
    assert again.calibration_digest == first.calibration_digest and again.from_cache


# --- processes: xdist workers are processes, so these fork real ones -----------------------------
def _in_child(target, *args) -> multiprocessing.Process:
    """Run target(*args) in a forked process (one torch thread: no OpenMP pool after fork)."""
    def run():
        torch.set_num_threads(1)
        target(*args)
    process = multiprocessing.get_context("fork").Process(target=run, daemon=True)
    process.start()
    return process


def _killed_while_writing(model, root, which: str) -> None:
    """Quantize and store, but die (SIGKILL: no cleanup runs) halfway through writing `which`.
    The tensors stream to their file (store.write_atomic_with), the sidecar goes as bytes
    (store.write_atomic): both are patched to leave half a temporary file, then die."""
    original = store.write_atomic_with

    def dying(path, write):
        if path.name.endswith(which):
            tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}-deadbeef")
            write(tmp)
            with open(tmp, "r+b") as f:
                f.truncate(os.path.getsize(tmp) // 2)
                f.flush()
            os.kill(os.getpid(), signal.SIGKILL)
        original(path, write)

    store.write_atomic_with = dying
    store.write_atomic = lambda path, data: dying(path, lambda tmp: tmp.write_bytes(data))
    load_or_quantize(model, SPEC, cache_dir=root)


@pytest.mark.parametrize("which", [".safetensors", ".json"], ids=["tensors", "sidecar"])
def test_run_killed_while_writing_a_cache_entry_recovers(tiny_gpt2_lm, tmp_path, computations, tree, which):
    child = _in_child(_killed_while_writing, tiny_gpt2_lm, tmp_path, which)
    child.join(timeout=120)
    assert child.exitcode == -signal.SIGKILL
    [stray] = [p for p in tmp_path.rglob("*.tmp-*")]
    key = stray.name.split(".")[0]
    entry = Entry(tmp_path, "quant", key)
    assert not entry.meta_path.exists()  # no commit record: the entry reads as absent
    # Under its final name a file is complete or absent: os.replace never exposes a partial one.
    assert entry.tensors_path.exists() == (which == ".json")
    again = load_or_quantize(tiny_gpt2_lm, SPEC, cache_dir=tmp_path, lock_timeout=LOCK_TIMEOUT)  # lock freed
    assert not again.from_cache and again.key == key and len(computations) == 1
    assert again.cache_note == ("missing" if which == ".safetensors" else "no sidecar (interrupted write)")
    assert not stray.exists() and entry.read() is not None  # cleaned up and committed
    assert not [p for p in tree(tmp_path) if ".tmp-" in p]
    assert load_or_quantize(tiny_gpt2_lm, SPEC, cache_dir=tmp_path).from_cache


def _worker(model, root, digest, log) -> None:
    """One 'xdist worker': slow quantization, so the other one asks while it is computing."""
    original = cache.quantize_model

    def slow(*args, **kwargs):
        with open(log, "a") as f:
            f.write(f"compute {os.getpid()}\n")
        time.sleep(1.0)
        return original(*args, **kwargs)

    cache.quantize_model = slow
    result = load_or_quantize(model, SPEC, cache_dir=root, weight_digest=digest, lock_timeout=LOCK_TIMEOUT)
    with open(log, "a") as f:
        f.write(f"{'cache' if result.from_cache else 'computed'} {model_digest(result.model)}\n")


def test_two_workers_asking_for_one_entry_compute_it_once(tiny_gpt2_lm, tmp_path):
    log, root = tmp_path / "log.txt", tmp_path / "cache"
    workers = [_in_child(_worker, tiny_gpt2_lm, root, model_digest(tiny_gpt2_lm), log) for _ in range(2)]
    for worker in workers:
        worker.join(timeout=120)
    assert [w.exitcode for w in workers] == [0, 0]
    lines = log.read_text().splitlines()
    assert sum(line.startswith("compute ") for line in lines) == 1
    outcomes = sorted(line.split()[0] for line in lines if not line.startswith("compute "))
    digests = {line.split()[1] for line in lines if not line.startswith("compute ")}
    assert outcomes == ["cache", "computed"] and len(digests) == 1  # the waiter loaded the same weights
    assert len(list(root.rglob("*.safetensors"))) == 1 and not list(root.rglob("*.tmp-*"))


# --- faults of the cache directory itself -------------------------------------------------
@pytest.mark.parametrize("how", ["option", "environment"])
def test_cache_path_that_is_a_file_is_one_usage_error(cli, tmp_path, monkeypatch, tree, how):
    path = tmp_path / "cache.txt"
    path.write_text("not a directory")
    before = tree(tmp_path)
    if how == "option":
        message = cli.usage_error(f"--qcheck-cache={path}")
        assert "from --qcheck-cache" in message
    else:
        monkeypatch.setenv("QCHECK_CACHE_DIR", str(path))
        message = cli.usage_error()
        assert "from QCHECK_CACHE_DIR" in message
    assert f"cache directory {path}" in message and "is a file, not a directory" in message
    assert "pass a writable directory with --qcheck-cache DIR" in message
    assert tree(tmp_path) == before


def test_cache_directory_that_cannot_be_created_is_one_usage_error(cli, tmp_path, tree):
    # Under a regular file: mkdir fails whatever the user's rights (root included).
    blocker = tmp_path / "file"
    blocker.write_text("")
    before = tree(tmp_path)
    message = cli.usage_error(f"--qcheck-cache={blocker / 'cache'}")
    assert f"cache directory {blocker / 'cache'} (from --qcheck-cache) is not writable" in message
    assert tree(tmp_path) == before


def test_disk_full_while_writing_an_entry_is_one_clear_error_and_leaves_nothing_partial(
        tiny_gpt2_lm, tmp_path, monkeypatch, tree):
    real_open = open

    def full_disk(path, mode="r", *args, **kwargs):
        handle = real_open(path, mode, *args, **kwargs)
        if "w" in mode and ".tmp-" in str(path):
            handle.close()
            raise OSError(28, "No space left on device")  # errno.ENOSPC
        return handle
    monkeypatch.setattr("builtins.open", full_disk)
    with pytest.raises(store.CacheWriteError) as error:
        load_or_quantize(tiny_gpt2_lm, SPEC, cache_dir=tmp_path)
    monkeypatch.undo()
    message = str(error.value)
    assert f"under {tmp_path}: the disk is full" in message and "--qcheck-cache" in message
    assert not [name for name in tree(tmp_path) if name.endswith((".safetensors", ".json")) or ".tmp-" in name]
    again = load_or_quantize(tiny_gpt2_lm, SPEC, cache_dir=tmp_path)  # space again: computed, stored
    assert not again.from_cache and load_or_quantize(tiny_gpt2_lm, SPEC, cache_dir=tmp_path).from_cache
