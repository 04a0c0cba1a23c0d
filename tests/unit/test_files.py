"""qcheck/files.py: the streaming safetensors writer gives safetensors' own bytes, and a write
that fails leaves nothing under the final name."""

from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import load, save

from qcheck.files import file_sha256, write_atomic_with, write_safetensors


def every_dtype() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"w.weight": torch.randn(3, 5, generator=g), "ids": torch.arange(7), "half": torch.randn(4, generator=g).half(),
            "bf": torch.randn(2, 2, generator=g).bfloat16(), "scalar": torch.tensor(3.0), "empty": torch.zeros(0, 4),
            "i32": torch.tensor([1, -2], dtype=torch.int32), "u8": torch.tensor([1, 255], dtype=torch.uint8),
            "f64": torch.randn(2, generator=g, dtype=torch.float64), "mask": torch.tensor([True, False]),
            "i8": torch.tensor([-1], dtype=torch.int8), "i16": torch.tensor([7], dtype=torch.int16)}


def test_the_streamed_file_is_the_bytes_safetensors_save_builds(tmp_path):
    tensors = every_dtype()
    path = tmp_path / "x.safetensors"
    digest = write_safetensors(path, tensors)
    assert path.read_bytes() == save(tensors)
    assert digest == hashlib.sha256(save(tensors)).hexdigest() == file_sha256(path, chunk=5)
    back = load(path.read_bytes())
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in tensors)


def test_a_view_is_refused_not_written_wrong(tmp_path):
    with pytest.raises(ValueError, match="t must be a contiguous CPU tensor"):
        write_safetensors(tmp_path / "x.safetensors", {"t": torch.randn(4, 4).T})
    with pytest.raises(ValueError, match="dtype complex64 is not one qcheck stores"):
        write_safetensors(tmp_path / "y.safetensors", {"c": torch.zeros(2, dtype=torch.complex64)})


def test_a_failed_streamed_write_leaves_nothing(tmp_path):
    path = tmp_path / "x.safetensors"

    def half_then_fail(tmp):
        tmp.write_bytes(b"partial")
        raise OSError(28, "No space left on device")
    with pytest.raises(OSError, match="No space left"):
        write_atomic_with(path, half_then_fail)
    assert list(tmp_path.iterdir()) == []
