"""A model's identity: the digest of its weights, which baselines, cache keys and shipped SAEs
are pinned to."""

from __future__ import annotations

import hashlib

import torch
from torch import nn


def model_digest(hf_model: nn.Module) -> str:
    """sha256 over the sorted state_dict: each name, shape and float32 (integers: int64) CPU bytes."""
    h = hashlib.sha256()
    for name, tensor in sorted(hf_model.state_dict().items()):
        t = tensor.detach().to("cpu")
        t = t.to(torch.float32) if t.is_floating_point() else t.to(torch.int64)
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()
