"""SAELens's on-disk SAE format, read and written with safetensors and json alone (SAELens itself
pins transformer-lens < 4 and cannot be imported beside TransformerLens 4).

A directory holds `cfg.json` and `sae_weights.safetensors` (W_enc (d_in, d_sae), b_enc (d_sae,),
W_dec (d_sae, d_in), b_dec (d_in,); `threshold` (d_sae,) for jumprelu). Two cfg layouts exist:
- SAELens 6 (`SAEConfig.to_dict`): `architecture` ("standard", "topk", "jumprelu", ...), `d_in`,
  `d_sae`, `dtype`, `device`, `apply_b_dec_to_input`, `normalize_activations`,
  `reshape_activations`, `k` for topk, and the hook under `metadata` (older 6.x: `meta`):
  `model_name`, `hook_name`, `hook_layer`, `hook_head_index`, `context_size`, `prepend_bos`, ...
- SAELens ≤ 5: one flat dict with `hook_name`, `model_name`, `activation_fn_str` ("relu",
  "topk"), `activation_fn_kwargs` ({"k": ...}), `finetuning_scaling_factor`, and the same
  d_in/d_sae/apply_b_dec_to_input/normalize_activations.
qcheck writes the SAELens 6 layout (`metadata` key) and reads both. Keys that change the encoding
and that qcheck does not implement are refused by name and value (`_refusals`); keys that do not
(dataset_path, device, ...) are ignored, as SAELens ignores unknown keys.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file

from qcheck.files import read_json_object, write_atomic, write_atomic_with, write_safetensors
from qcheck.sae.model import ARCHITECTURES, NORMALIZATIONS, SAE, SAEConfig

CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
_DTYPES = ("float32", "float16", "bfloat16", "float64", "torch.float32", "torch.float16", "torch.bfloat16")


def _meta(cfg: dict) -> dict:
    meta = cfg.get("metadata", cfg.get("meta"))
    return meta if isinstance(meta, dict) else cfg   # ≤ 5: the hook keys are top-level


def _refusals(cfg: dict, meta: dict) -> list[str]:
    """What in `cfg` changes the encoding in a way qcheck does not implement."""
    out = []
    architecture = cfg.get("architecture", "standard")
    if architecture not in ARCHITECTURES:
        out.append(f"architecture {architecture!r} (qcheck encodes {', '.join(ARCHITECTURES)})")
    activation = cfg.get("activation_fn_str")
    if activation is not None and activation not in ("relu", "topk"):
        out.append(f"activation_fn_str {activation!r} (qcheck encodes relu and topk)")
    if cfg.get("normalize_activations", "none") not in NORMALIZATIONS:
        out.append(f"normalize_activations {cfg['normalize_activations']!r} (qcheck applies "
                   f"{', '.join(NORMALIZATIONS)}; fold a constant scaling factor into the weights)")
    if cfg.get("reshape_activations", "none") != "none":
        out.append(f"reshape_activations {cfg['reshape_activations']!r} (per-head hook_z SAEs)")
    if meta.get("hook_head_index") is not None:
        out.append(f"hook_head_index {meta['hook_head_index']!r} (per-head SAEs)")
    if cfg.get("finetuning_scaling_factor"):
        out.append(f"finetuning_scaling_factor {cfg['finetuning_scaling_factor']!r}")
    if cfg.get("dtype", "float32") not in _DTYPES:
        out.append(f"dtype {cfg['dtype']!r}")
    return out


def config_from_saelens(cfg: dict, source: str) -> SAEConfig:
    """qcheck's SAEConfig for a SAELens cfg dict; ValueError naming `source`, the key and the value
    for anything missing or unsupported."""
    meta = _meta(cfg)
    problems = _refusals(cfg, meta)
    if problems:
        raise ValueError(f"{source}: not supported: {'; '.join(problems)}")
    for key in ("d_in", "d_sae"):
        if not isinstance(cfg.get(key), int) or cfg[key] < 1:
            raise ValueError(f"{source}: {key} must be a positive integer, got {cfg.get(key)!r}")
    hook = meta.get("hook_name")
    if not isinstance(hook, str) or not hook:
        raise ValueError(f"{source}: no hook_name (SAELens 6 keeps it under metadata.hook_name): "
                         f"qcheck cannot tell which activation the SAE reads")
    architecture = cfg.get("architecture", "standard")
    k = None
    if architecture == "topk":
        k = cfg.get("k")
    elif cfg.get("activation_fn_str") == "topk":   # ≤ 5: a standard SAE with a topk activation
        architecture, k = "topk", (cfg.get("activation_fn_kwargs") or {}).get("k")
    if architecture == "topk" and not isinstance(k, int):
        raise ValueError(f"{source}: a topk SAE needs an integer k, got {k!r}")
    try:
        return SAEConfig(d_in=cfg["d_in"], d_sae=cfg["d_sae"], architecture=architecture, k=k,
                         apply_b_dec_to_input=bool(cfg.get("apply_b_dec_to_input", True)),
                         normalize_activations=cfg.get("normalize_activations", "none"), hook_name=hook,
                         rescale_acts_by_decoder_norm=bool(cfg.get("rescale_acts_by_decoder_norm", False)))
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def load_saelens(directory: str | Path) -> tuple[SAE, dict]:
    """The SAE in a SAELens directory and its cfg dict; ValueError naming the file and the fix
    for a missing file, a bad cfg or tensors that do not fit it."""
    directory = Path(directory)
    cfg_path, weights_path = directory / CFG_FILE, directory / WEIGHTS_FILE
    for path in (cfg_path, weights_path):
        if not path.is_file():
            raise ValueError(f"{directory}: no {path.name}; a SAELens SAE directory holds {CFG_FILE} and "
                             f"{WEIGHTS_FILE} (SAELens's save_model writes both)")
    cfg = read_json_object(cfg_path)
    config = config_from_saelens(cfg, str(cfg_path))
    try:
        tensors = load_file(weights_path)
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{weights_path}: not a readable safetensors file ({error})") from None
    sae = SAE.from_tensors(config, tensors, source=str(weights_path))
    return sae, cfg


def saelens_config(sae: SAE, *, model_name: str, context_size: int | None = None,
                   extra_metadata: dict[str, Any] | None = None) -> dict:
    """The SAELens 6 cfg dict of `sae` (what `save_saelens` writes)."""
    cfg = sae.cfg
    if cfg.hook_name is None:
        raise ValueError("an SAE saved in SAELens's format needs cfg.hook_name")
    layer = cfg.hook_name.split(".")[1]
    out: dict[str, Any] = {"architecture": cfg.architecture, "d_in": cfg.d_in, "d_sae": cfg.d_sae,
                           "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": cfg.apply_b_dec_to_input,
                           "normalize_activations": cfg.normalize_activations, "reshape_activations": "none"}
    if cfg.k is not None:
        out["k"] = cfg.k
        out["rescale_acts_by_decoder_norm"] = cfg.rescale_acts_by_decoder_norm
    out["metadata"] = {"model_name": model_name, "hook_name": cfg.hook_name,
                       "hook_layer": int(layer) if layer.isdigit() else None, "hook_head_index": None,
                       "prepend_bos": True, "context_size": context_size, **(extra_metadata or {})}
    return out


def save_saelens(sae: SAE, directory: str | Path, *, model_name: str, context_size: int | None = None,
                 extra_metadata: dict[str, Any] | None = None) -> None:
    """Write `sae` as a SAELens directory: the weights first, cfg.json last, each atomically, so a
    directory with a cfg.json always has its weights."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = saelens_config(sae, model_name=model_name, context_size=context_size, extra_metadata=extra_metadata)
    tensors = sae.tensors()
    write_atomic_with(directory / WEIGHTS_FILE, lambda tmp: write_safetensors(tmp, tensors))
    write_atomic(directory / CFG_FILE, (json.dumps(cfg, indent=2) + "\n").encode())
