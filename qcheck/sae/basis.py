"""The SAE measurement basis of a model: a user's SAELens SAE, the zoo's shipped one, the cached
one, or one trained now; frozen either way.

- A user's: `--qcheck-sae [MODEL=]DIR`, a SAELens directory (qcheck/sae/saelens.py) read at its
  own hook; refused when its d_in is not the model's d_model or its hook is not one qcheck
  captures.
- Zoo models ship theirs as a SAELens directory `zoo/<name>/sae/` plus `qcheck-card.json` (the
  recipe, the FP weight digest it is pinned to, its quality on the training activations and its
  training curve), so CI never trains one and baselines stay comparable.
- Any other model gets one trained on first use and kept in the cache (atomic, locked: xdist
  workers train it once), keyed by the FP weight digest and RECIPE.
Recipe, for both: FP resid_post at layer n_layers // 2 over SAE_SAMPLES sequences sampled from the
FP model itself (seeded; no data download), real tokens after BOS only, then qcheck/sae/train.py.

    python -m qcheck.sae.basis zoo-gpt2-2l48 [...]   # (re)writes the shipped SAE of zoo models
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from qcheck.files import read_json_object, write_atomic
from qcheck.sae.model import SAE, SAEConfig
from qcheck.sae.train import Recipe, basis_quality, train_topk

SAE_SEED = 0
SAE_SAMPLES = 256       # sequences; × (context − 1) tokens: 16 k-32 k activations for the zoo
SAE_DIR = "sae"
CARD_FILE = "qcheck-card.json"
RECIPE_VERSION = 2      # 1: the dense ReLU basis (L1 1e-3) this replaced
RECIPE = Recipe(seed=SAE_SEED)


def recipe_text() -> str:
    return (f"v{RECIPE_VERSION} topk resid_post@n_layers//2 sampled n={SAE_SAMPLES} seed={SAE_SEED} "
            + json.dumps(RECIPE.as_dict(), sort_keys=True))


def feature_layer(n_layers: int) -> int:
    """The study's layer for the SAE: the middle of the network (layer 6 of GPT-2's 12)."""
    return n_layers // 2


def feature_hook(n_layers: int) -> str:
    return f"blocks.{feature_layer(n_layers)}.hook_resid_post"


@dataclass(frozen=True)
class UserSAE:
    """One `--qcheck-sae` value: DIR for every model, or MODEL=DIR for one."""

    directory: Path
    model: str | None = None

    @classmethod
    def parse(cls, text: str, base: Path) -> "UserSAE":
        model, sep, path = text.rpartition("=")
        directory = Path(path if sep else text).expanduser()
        directory = directory if directory.is_absolute() else base / directory
        from qcheck.sae.saelens import load_saelens

        try:
            load_saelens(directory)  # the cfg and tensors are checked once, before any test
        except ValueError as error:
            raise ValueError(f"--qcheck-sae {text}: {error}") from None
        return cls(directory, model if sep else None)


def pick_user_sae(user_saes: list[UserSAE], model: str) -> UserSAE | None:
    """The --qcheck-sae for `model`: its MODEL=DIR if given, else a DIR given for every model."""
    named = [u for u in user_saes if u.model == model]
    return (named or [u for u in user_saes if u.model is None] or [None])[-1]


@torch.no_grad()
def training_activations(hf_model, fp_bridge, n_ctx: int, *, progress=None) -> torch.Tensor:
    """(n_tokens, d_model) FP resid_post at the SAE layer on text sampled from the model."""
    from qcheck.data.calibration import sampled

    tokens = sampled(hf_model, n_samples=SAE_SAMPLES, seq_len=min(n_ctx, 128), seed=SAE_SEED).tokens
    layer = feature_layer(fp_bridge.cfg.n_layers)
    name = feature_hook(fp_bridge.cfg.n_layers)
    parts = []
    for i, chunk in enumerate(tokens.split(16)):
        # stop after the SAE's layer: no vocabulary-wide logits (411 MiB per chunk at GPT-2's shape)
        _, cache = fp_bridge.run_with_cache(chunk.to(fp_bridge.cfg.device), names_filter=[name],
                                            stop_at_layer=layer + 1)
        parts.append(cache[name][:, 1:].reshape(-1, fp_bridge.cfg.d_model).float().cpu())
        if progress is not None:
            progress(f"activations {16 * (i + 1)}/{len(tokens)} sequences")
    return torch.cat(parts)


def train_basis(hf_model, fp_bridge, n_ctx: int, *, progress=None) -> tuple[SAE, dict]:
    """A basis by the recipe, and its card (recipe, quality on its training activations, curve)."""
    started = time.perf_counter()
    acts = training_activations(hf_model, fp_bridge, n_ctx, progress=progress)
    say = None if progress is None else (lambda step, steps: progress(f"training step {step}/{steps}"))
    sae, curve = train_topk(acts, RECIPE, hook_name=feature_hook(fp_bridge.cfg.n_layers), progress=say)
    card = {"recipe": recipe_text(), "hook_name": sae.cfg.hook_name, "n_tokens": len(acts),
            "sae_digest": sae.digest(), "quality": basis_quality(sae, acts).as_dict(),
            "curve": [vars(point) for point in curve],
            "training_seconds": round(time.perf_counter() - started, 1)}
    return sae, card


def sae_for(model, fp_bridge, *, weight_digest: str, cache_dir: Path, user: UserSAE | None = None,
            progress=None) -> SAE:
    """The user's SAE for this model, else the shipped SAE of a zoo model, else the cached one,
    else a freshly trained one; progress(text), if given, hears the training's stages."""
    if user is not None:
        return _with_origin(_checked_user_sae(user, fp_bridge), f"--qcheck-sae {user.directory}")
    shipped = Path(model.spec.location) / SAE_DIR
    if model.spec.kind == "zoo" and (shipped / CARD_FILE).is_file():
        return _with_origin(load_shipped(shipped, weight_digest, model.spec.name), f"shipped with {model.spec.name}")
    from qcheck.quantize.store import Entry

    key = hashlib.sha256(f"{recipe_text()}\nmodel={weight_digest}".encode()).hexdigest()
    entry = Entry(cache_dir, "sae", key)
    with entry.lock():
        found = entry.read()
        if found is not None:
            sae = SAE.from_tensors(SAEConfig(**found[1]["config"]), found[0], source=f"cached SAE {key[:12]}")
            return _with_origin(sae, f"trained by qcheck's recipe, cached ({key[:12]})")
        sae, card = train_basis(model.hf, fp_bridge, model.n_ctx, progress=progress)
        entry.write(sae.tensors(), {"config": vars(sae.cfg), **card})
    return _with_origin(sae, f"trained by qcheck's recipe in {card['training_seconds']} s ({key[:12]})")


def _with_origin(sae: SAE, origin: str) -> SAE:
    """`sae` with where it came from, for the results (not part of its digest)."""
    sae.origin = origin
    return sae


def _checked_user_sae(user: UserSAE, fp_bridge) -> SAE:
    from qcheck.sae.hooks import capture_key
    from qcheck.sae.saelens import load_saelens

    sae, _ = load_saelens(user.directory)
    d_model, n_layers = fp_bridge.cfg.d_model, fp_bridge.cfg.n_layers
    if sae.cfg.d_in != d_model:
        raise ValueError(f"--qcheck-sae {user.directory}: the SAE reads d_in {sae.cfg.d_in}, this model's "
                         f"d_model is {d_model}: pass an SAE trained on this model")
    try:
        capture_key(sae.cfg.hook_name, n_layers)
    except ValueError as error:
        raise ValueError(f"--qcheck-sae {user.directory}: {error}") from None
    return sae


def load_shipped(directory: Path, weight_digest: str, name: str) -> SAE:
    """A zoo model's shipped basis, refused if it was trained for other weights or its tensors
    are not the ones its card pins."""
    from qcheck.sae.saelens import load_saelens

    card = read_json_object(directory / CARD_FILE)
    if card.get("weight_digest") != weight_digest:
        raise ValueError(f"{directory} was trained for weights {card.get('weight_digest')}, not these "
                         f"({weight_digest}); retrain it with `python -m qcheck.sae.basis {name}`")
    sae, _ = load_saelens(directory)
    if sae.digest() != card.get("sae_digest"):
        raise ValueError(f"{directory}: the weights do not match sae_digest in {CARD_FILE}; retrain it with "
                         f"`python -m qcheck.sae.basis {name}`")
    return sae


def readme_section(card: dict) -> str:
    q = card["quality"]
    return (f"## SAE basis (`sae/`, SAELens format)\n\n"
            f"TopK SAE at `{card['hook_name']}`, d_sae {q['d_sae']}, trained on {card['n_tokens']:,} FP "
            f"activations sampled from this model in {card['training_seconds']} s "
            f"(`python -m qcheck.sae.basis NAME`; recipe in `qcheck/sae/train.py`). On its training "
            f"activations: L0 {q['l0']:.1f} ({q['l0'] / q['d_sae']:.1%} of d_sae), fraction of variance "
            f"explained {q['fve']:.4f}, dead features {q['dead_fraction']:.1%} "
            f"(targets: L0 ≤ 10 % of d_sae and ≤ 32, FVE ≥ 0.9, dead ≤ 10 %). Curve (step: normalised MSE, "
            f"dead fraction): "
            + ", ".join(f"{p['step']}: {p['nmse']:.3f}, {p['dead_fraction']:.2f}" for p in card["curve"][::5]) + ".\n")


def write_shipped(model, directory: Path, sae: SAE, card: dict) -> None:
    from qcheck.sae.saelens import save_saelens

    if directory.exists():
        shutil.rmtree(directory)
    save_saelens(sae, directory, model_name=model.spec.name, context_size=min(model.n_ctx, 128))
    write_atomic(directory / CARD_FILE, (json.dumps(card, indent=2) + "\n").encode())


def main(argv: list[str] | None = None) -> None:
    from qcheck.models.bridge import wrap
    from qcheck.models.digest import model_digest
    from qcheck.models.load import load_model

    parser = argparse.ArgumentParser(description="Train and ship the SAE basis of zoo models.")
    parser.add_argument("names", nargs="+", metavar="NAME")
    args = parser.parse_args(argv)
    for name in args.names:
        model = load_model(name)
        if model.spec.kind != "zoo":
            raise SystemExit(f"{name}: only zoo models ship an SAE; others are trained into the cache")
        sae, card = train_basis(model.hf, wrap(model.hf), model.n_ctx)
        card = {"weight_digest": model_digest(model.hf), **card}
        location = Path(model.spec.location)
        write_shipped(model, location / SAE_DIR, sae, card)
        for old in ("sae.safetensors", "sae.json"):   # the v1 basis
            (location / old).unlink(missing_ok=True)
        readme = location / "README.md"
        text = readme.read_text().split("\n## SAE basis")[0].rstrip("\n")
        readme.write_text(text + "\n\n" + readme_section(card))
        q = card["quality"]
        print(f"{name}: SAE {sae.cfg.d_in}->{sae.cfg.d_sae} k {sae.cfg.k} on {card['n_tokens']} tokens "
              f"in {card['training_seconds']} s: L0 {q['l0']:.1f}, FVE {q['fve']:.4f}, dead {q['dead_fraction']:.3f}")


if __name__ == "__main__":
    main()
