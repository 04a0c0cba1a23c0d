"""Checks of a model's files and weights, so a broken model is one clear refusal, never a
certificate measured against garbage.

- `check_model_dir` (cheap: JSON and safetensors headers, no weights; run by `resolve` at
  collection): config.json is a JSON object of an architecture transformers ships (no code from
  the directory is ever run); the weights are safetensors (pickles are refused, never unpickled),
  every shard is present and every header parses and covers its file exactly (a truncated or
  overwritten file fails here).
- `check_config_fits(config, ...)` (before loading): a config that describes more parameters than
  the files hold is refused before anything is allocated (transformers would randomly initialise
  the rest, or run out of memory building a model the weights never described). For grouped-query
  models the refusal says how many key/value heads the weights hold (`kv_heads_hint`).
- `check_loading_info` (after loading): no missing, unexpected or misshapen tensor.
- `check_finite` (after loading): no NaN/Inf in the FP weights.

Every error names the directory or model and how to fix it.
"""

from __future__ import annotations

import math
from pathlib import Path

from qcheck.files import read_json_object
from qcheck.models.directory import indexed_shards, pickled_files
from qcheck.models.errors import ModelNotAvailable

SAVE_FIX = "write config and weights together with `model.save_pretrained(DIR)` (safetensors, the default)"


def weight_files(directory: Path) -> list[Path]:
    """The safetensors files of a save_pretrained directory (the shards its index names, if any)."""
    try:
        shards = indexed_shards(directory)
    except ValueError as error:
        raise ModelNotAvailable(f"model directory {str(directory)!r}: {error}") from None
    return shards if shards is not None else sorted(directory.glob("*.safetensors"))


def check_model_dir(directory: Path) -> None:
    """Refuse a local model directory whose config or weight files cannot be what they claim."""
    where = f"model directory {str(directory)!r}"
    config = _json_object(directory / "config.json")
    if not isinstance(config.get("model_type"), str):
        raise ModelNotAvailable(f"{where}: config.json has no model_type; {SAVE_FIX}")
    check_no_remote_code(config, where)
    files = weight_files(directory)
    if not files:
        pickled = pickled_files(directory)
        found = f"only pickled weights ({', '.join(pickled)})" if pickled else "no model.safetensors"
        raise ModelNotAvailable(f"{where} has {found}: qcheck loads safetensors only and never unpickles "
                                f"a file; {SAVE_FIX}, or convert the weights to safetensors")
    for file in files:
        header_numel(file, where)


def header_numel(file: Path, where: str) -> int:
    """Values stored in one safetensors file, from its header; refuses a truncated or corrupt file.

    The header is parsed and its data offsets must cover the rest of the file exactly, which is
    what safetensors itself checks when loading (so truncation is caught without reading data).
    """
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            return sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())
    except Exception as error:  # SafetensorError is a plain Exception subclass
        raise ModelNotAvailable(f"{where}: {file.name} is truncated or corrupt ({error}); copy or "
                                f"download it again, or {SAVE_FIX}") from None


def check_config_fits(config, directory: Path, where: str) -> None:
    """Refuse a config that needs more parameters than the weight files hold (built on the meta
    device: nothing is allocated). Tied weights count once, as in the files."""
    import torch
    from transformers import AutoModelForCausalLM

    stored = sum(header_numel(file, where) for file in weight_files(directory))
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, trust_remote_code=False)
    needed = sum(p.numel() for p in skeleton.parameters())
    if needed > stored:
        raise ModelNotAvailable(f"{where}: config.json does not match the weights: it describes a model "
                                f"of {needed:,} parameters, the safetensors files hold {stored:,} values"
                                f"{kv_heads_hint(config, directory)}. The config belongs to another model; {SAVE_FIX}")


def kv_heads_hint(config, directory: Path) -> str:
    """Grouped-query attention (Llama, Qwen2): k_proj has num_key_value_heads x head_dim rows, a
    count configs get wrong when copied between sizes; say which count the weights hold."""
    from safetensors import safe_open

    n_kv = getattr(config, "num_key_value_heads", None)
    n_heads = getattr(config, "num_attention_heads", None)
    head_dim = getattr(config, "head_dim", None) or (config.hidden_size // n_heads if n_heads else None)
    if not n_kv or not head_dim:
        return ""
    for file in weight_files(directory):
        with safe_open(str(file), framework="pt") as f:
            name = next((k for k in f.keys() if k.endswith("self_attn.k_proj.weight")), None)
            if name is None:
                continue
            rows = f.get_slice(name).get_shape()[0]
            if rows % head_dim or rows // head_dim == n_kv:
                return ""
            return (f" (grouped-query attention: {name} has {rows} rows of head_dim {head_dim}, i.e. "
                    f"{rows // head_dim} key/value heads, but config.json says num_key_value_heads={n_kv})")
    return ""


def check_loading_info(info: dict, where: str, hint: str = "") -> None:
    """transformers' loading report: any missing, unexpected or misshapen tensor is a refusal
    (missing ones would be randomly initialised, misshapen ones re-initialised). `hint` (e.g.
    kv_heads_hint) is appended to a misshapen-tensor refusal."""
    problems = []
    for key, what in (("missing_keys", "missing from the weights (would be random)"),
                      ("unexpected_keys", "in the weights but not in the config's model")):
        names = sorted(info.get(key) or ())
        if names:
            problems.append(f"{len(names)} tensor(s) {what}: {_listing(names)}")
    mismatched = sorted(info.get("mismatched_keys") or ())
    if mismatched:
        shown = [f"{name} {list(stored)} vs {list(expected)}" for name, stored, expected in mismatched]
        problems.append(f"{len(shown)} tensor(s) whose stored shape differs from the config's: {_listing(shown)}"
                        f"{hint}")
    if problems:
        raise ModelNotAvailable(f"{where}: config.json does not match the weights: {'; '.join(problems)}; "
                                f"{SAVE_FIX}")


def check_finite(model, where: str) -> None:
    """Refuse FP weights holding NaN/Inf: every comparison against them would be meaningless."""
    import torch

    bad = [(name, int((~torch.isfinite(p)).sum()), p.numel()) for name, p in model.named_parameters()
           if p.is_floating_point() and not torch.isfinite(p).all()]
    if bad:
        shown = [f"{name} ({n} of {total})" for name, n, total in bad]
        raise ModelNotAvailable(f"{where}: {len(bad)} weight tensor(s) hold NaN/Inf values: {_listing(shown)}. "
                                f"The FP model itself is broken (a failed training run or a corrupt file); "
                                f"fix or re-export its weights")


def check_no_remote_code(config_dict: dict, where: str) -> None:
    """A config that only loads with code shipped in the directory (auto_map, an architecture
    transformers does not know) is refused: qcheck never sets trust_remote_code."""
    if "auto_map" not in config_dict:
        return
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    if config_dict.get("model_type") not in CONFIG_MAPPING_NAMES:
        raise ModelNotAvailable(f"{where}: model_type {config_dict.get('model_type')!r} needs the code its "
                                f"config.json names in auto_map; qcheck never runs code shipped with a model "
                                f"(trust_remote_code stays off). Use an architecture transformers ships")


def _json_object(path: Path) -> dict:
    try:
        return read_json_object(path)
    except ValueError as error:
        raise ModelNotAvailable(f"{error}; {SAVE_FIX}") from None


def _listing(items: list[str], limit: int = 3) -> str:
    return ", ".join(items[:limit]) + (f" and {len(items) - limit} more" if len(items) > limit else "")
