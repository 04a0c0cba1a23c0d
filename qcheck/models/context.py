"""A model's context length in tokens, read one way from any config: a transformers config
object once the model is loaded, or its config.json before (no torch, no weights)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from qcheck.models.registry import ModelSpec

# GPT-2 names it n_positions (older configs n_ctx), GPT-NeoX and LLaMA max_position_embeddings.
CONTEXT_KEYS = ("n_positions", "max_position_embeddings", "n_ctx")


def context_of(config: Any) -> int | None:
    """The first positive integer under CONTEXT_KEYS in `config` (a transformers config or a
    config.json dict); None if it names none."""
    for key in CONTEXT_KEYS:
        value = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def context_length(spec: ModelSpec) -> int | None:
    """The context of a resolved model from its config.json; None if unknown here (a hub model
    not in the local cache, an unreadable config)."""
    if spec.kind == "hub":
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(spec.location, "config.json")
        path = Path(found) if isinstance(found, str) else None
    else:
        path = Path(spec.location) / "config.json"
    try:
        config = json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):
        return None
    return context_of(config)
