"""The SAE measurement basis of a model: trained once on FP activations, then frozen.

Zoo models ship theirs beside the weights (`zoo/<name>/sae.safetensors`, pinned to the model's
weight digest), so CI never trains one and baselines stay comparable. Any other model gets one
trained on first use and kept in the cache (atomic, locked: xdist workers train it once).
Recipe, for both: FP resid_post at layer n_layers // 2 over SAE_SAMPLES sequences sampled from the
FP model itself (seeded; no data download), real tokens after BOS only.

    python -m qcheck.sae.basis zoo-gpt2-2l48 [...]   # (re)writes the shipped SAE of zoo models
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import torch

from qcheck.sae.model import SAE, SAEConfig, train_sae

SAE_SEED = 0
SAE_SAMPLES = 64        # sequences; x (context - 1) tokens: 4k-8k activations for the zoo
SAE_FILE = "sae.safetensors"
RECIPE = f"v1 resid_post@n_layers//2 sampled n={SAE_SAMPLES} seed={SAE_SEED} train_sae defaults"


def feature_layer(n_layers: int) -> int:
    """The study's layer for the SAE: the middle of the network (layer 6 of GPT-2's 12)."""
    return n_layers // 2


@torch.no_grad()
def training_activations(hf_model, fp_bridge, n_ctx: int) -> torch.Tensor:
    """(n_tokens, d_model) FP resid_post at the SAE layer on text sampled from the model."""
    from qcheck.data.calibration import sampled

    tokens = sampled(hf_model, n_samples=SAE_SAMPLES, seq_len=min(n_ctx, 128), seed=SAE_SEED).tokens
    layer = feature_layer(fp_bridge.cfg.n_layers)
    name = f"blocks.{layer}.hook_resid_post"
    parts = []
    for chunk in tokens.split(16):
        # stop after the SAE's layer: no vocabulary-wide logits (411 MiB per chunk at GPT-2's shape)
        _, cache = fp_bridge.run_with_cache(chunk.to(fp_bridge.cfg.device), names_filter=[name],
                                            stop_at_layer=layer + 1)
        parts.append(cache[name][:, 1:].reshape(-1, fp_bridge.cfg.d_model).float().cpu())
    return torch.cat(parts)


def sae_for(model, fp_bridge, *, weight_digest: str, cache_dir: Path, progress=None) -> SAE:
    """The shipped SAE of a zoo model, else the cached one, else a freshly trained one;
    progress(text), if given, hears the training's stages ("sampling", "training")."""
    shipped = Path(model.spec.location) / SAE_FILE
    if model.spec.kind == "zoo" and shipped.is_file():
        sae = SAE.load(shipped)
        pinned = sae_metadata(shipped).get("weight_digest")
        if pinned != weight_digest:
            raise ValueError(f"{shipped} was trained for weights {pinned}, not these ({weight_digest}); "
                             f"retrain it with `python -m qcheck.sae.basis {model.spec.name}`")
        return sae
    from qcheck.quantize.store import Entry

    key = hashlib.sha256(f"{RECIPE}\nmodel={weight_digest}".encode()).hexdigest()
    entry = Entry(cache_dir, "sae", key)
    with entry.lock():
        found = entry.read()
        if found is not None:
            return SAE.from_tensors(SAEConfig(**found[1]["config"]), found[0])
        if progress is not None:
            progress("sampling")
        acts = training_activations(model.hf, fp_bridge, model.n_ctx)
        if progress is not None:
            progress(f"training on {len(acts)} tokens")
        sae = train_sae(acts, seed=SAE_SEED)
        entry.write(sae.tensors(), {"config": vars(sae.cfg), "digest": sae.digest(), "recipe": RECIPE})
    return sae


def sae_metadata(path: Path) -> dict:
    import json

    return json.loads(path.with_suffix(".json").read_text()).get("metadata", {})


def main(argv: list[str] | None = None) -> None:
    from qcheck.models.bridge import wrap
    from qcheck.models.load import load_model
    from qcheck.models.digest import model_digest

    parser = argparse.ArgumentParser(description="Train and ship the SAE basis of zoo models.")
    parser.add_argument("names", nargs="+", metavar="NAME")
    args = parser.parse_args(argv)
    for name in args.names:
        model = load_model(name)
        if model.spec.kind != "zoo":
            raise SystemExit(f"{name}: only zoo models ship an SAE; others are trained into the cache")
        acts = training_activations(model.hf, wrap(model.hf), model.n_ctx)
        sae = train_sae(acts, seed=SAE_SEED)
        sae.save(Path(model.spec.location) / SAE_FILE,
                 metadata={"weight_digest": model_digest(model.hf), "recipe": RECIPE,
                           "n_tokens": str(len(acts)), "fve": f"{sae.fraction_of_variance_explained(acts):.4f}"})
        print(f"{name}: SAE {sae.cfg.d_model}->{sae.cfg.d_sae} on {len(acts)} tokens, "
              f"FVE {sae.fraction_of_variance_explained(acts):.4f}")


if __name__ == "__main__":
    main()
