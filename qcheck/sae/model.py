"""A sparse autoencoder of the study's architecture and loss (its `feature_analysis.py`): linear →
ReLU → linear, width 4·d_model, Adam at 1e-3, loss MSE + 1e-3·mean|h|, on FP residual-stream
activations. Not the study's training: init, schedule and data differ (docs/analyses.md,
"features"), and the result is dense, not sparse.

It is a measurement basis, not a model under test: trained once per FP model (seeded, so the same
activations give the same SAE bit for bit on one machine), saved as safetensors plus a JSON config,
and then frozen. Tensor names follow SAELens (W_enc, b_enc, W_dec, b_dec); unlike SAELens's
default, b_dec is not subtracted before encoding, as in the study.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from jaxtyping import Float
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

TENSORS = ("W_enc", "b_enc", "W_dec", "b_dec")  # the parameters, in digest order


@dataclass(frozen=True)
class SAEConfig:
    """Shape and training recipe; saved beside the weights so a shipped SAE says how it was made."""

    d_model: int
    d_sae: int
    seed: int
    steps: int
    batch_size: int
    lr: float
    l1_coeff: float


class SAE(nn.Module):
    """h = ReLU(x W_enc + b_enc), x̂ = h W_dec + b_dec."""

    def __init__(self, cfg: SAEConfig, *, generator: torch.Generator | None = None):
        super().__init__()
        self.cfg = cfg
        # nn.Linear's default init, U(±1/sqrt(fan_in)), drawn from an explicit generator so the
        # global RNG is neither used nor disturbed.
        generator = generator if generator is not None else torch.Generator().manual_seed(cfg.seed)

        def uniform(shape: tuple[int, ...], fan_in: int) -> nn.Parameter:
            bound = 1 / math.sqrt(fan_in)
            return nn.Parameter((torch.rand(shape, generator=generator) * 2 - 1) * bound)

        self.W_enc = uniform((cfg.d_model, cfg.d_sae), cfg.d_model)
        self.b_enc = uniform((cfg.d_sae,), cfg.d_model)
        self.W_dec = uniform((cfg.d_sae, cfg.d_model), cfg.d_sae)
        self.b_dec = uniform((cfg.d_model,), cfg.d_sae)

    def encode(self, x: Float[Tensor, "n d_model"]) -> Float[Tensor, "n d_sae"]:
        return F.relu(x @ self.W_enc + self.b_enc)

    def decode(self, h: Float[Tensor, "n d_sae"]) -> Float[Tensor, "n d_model"]:
        return h @ self.W_dec + self.b_dec

    def forward(self, x: Float[Tensor, "n d_model"]) -> Float[Tensor, "n d_model"]:
        return self.decode(self.encode(x))

    @torch.no_grad()
    def fraction_of_variance_explained(self, x: Float[Tensor, "n d_model"]) -> float:
        """Fraction of variance explained, 1 − Σ‖x − x̂‖² / Σ‖x − mean(x)‖², dimensionless:
        1 = perfect reconstruction, ≤ 0 = no better than predicting the mean."""
        x = x.double()
        residual = ((x - self(x.float()).double()) ** 2).sum()
        total = ((x - x.mean(dim=0)) ** 2).sum()
        return float(1 - residual / total) if total > 0 else math.nan

    def digest(self) -> str:
        """sha256 of the weights (config and tensors), to pin the measurement basis."""
        h = hashlib.sha256(json.dumps(asdict(self.cfg), sort_keys=True).encode())
        for name in TENSORS:
            h.update(getattr(self, name).detach().float().contiguous().numpy().tobytes())
        return h.hexdigest()

    def tensors(self) -> dict[str, Tensor]:
        """The weights by name (TENSORS), detached float32: what `save` and the cache store."""
        return {name: getattr(self, name).detach().float().contiguous() for name in TENSORS}

    @classmethod
    def from_tensors(cls, cfg: SAEConfig, tensors: dict[str, Tensor]) -> "SAE":
        """An SAE holding `tensors` (by TENSORS name), frozen: eval mode, gradients off."""
        sae = cls(cfg)
        with torch.no_grad():
            for name in TENSORS:
                getattr(sae, name).copy_(tensors[name])
        return sae.eval().requires_grad_(False)

    def save(self, path: str | Path, *, metadata: dict[str, str] | None = None) -> None:
        """Write `path` (safetensors) and `path` with suffix .json (config, digest, metadata)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(self.tensors(), path)
        card = {"config": asdict(self.cfg), "digest": self.digest(), "metadata": metadata or {}}
        path.with_suffix(".json").write_text(json.dumps(card, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "SAE":
        """Read an SAE written by `save`; refuses one whose weights do not match its digest."""
        path = Path(path)
        card = json.loads(path.with_suffix(".json").read_text())
        sae = cls.from_tensors(SAEConfig(**card["config"]), load_file(path))
        if sae.digest() != card["digest"]:
            raise ValueError(f"{path}: weights do not match the digest in {path.with_suffix('.json')}")
        return sae


def train_sae(acts: Float[Tensor, "n_tokens d_model"], *, seed: int, steps: int = 1500,
              batch_size: int = 128, lr: float = 1e-3, l1_coeff: float = 1e-3,
              width_factor: int = 4) -> SAE:
    """Train an SAE on `acts` (FP residual stream, real tokens only), deterministically.

    Minibatches of `batch_size` rows are drawn with replacement from a generator seeded with
    `seed` (the same generator initialises the weights). Loss per step: mean squared error per
    element + l1_coeff · mean |h| (the study's). Returns the SAE in eval mode, gradients off.

    Defaults: 1500 × 128 rows is ~60 passes over a few thousand tokens, enough for the fraction
    of variance explained to level off (0.99 on synthetic sparse data at d_model 96, 0.999 on
    zoo-pythia-2l64's residual stream); it took 7-11 s at d_model 64-96 on one core shared with a
    training job; 2000 × 256 gained < 0.01 for 3x the time.
    """
    if acts.ndim != 2 or len(acts) == 0:
        raise ValueError(f"acts must be (n_tokens, d_model) with n_tokens > 0, got {tuple(acts.shape)}")
    acts = acts.detach().float()
    cfg = SAEConfig(d_model=acts.shape[1], d_sae=width_factor * acts.shape[1], seed=seed,
                    steps=steps, batch_size=batch_size, lr=lr, l1_coeff=l1_coeff)
    generator = torch.Generator().manual_seed(seed)
    sae = SAE(cfg, generator=generator)
    # foreach: one kernel per update for all four tensors; same numbers, ~2x less overhead on CPU.
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr, foreach=True)
    for _ in range(steps):
        x = acts[torch.randint(0, len(acts), (batch_size,), generator=generator)]
        h = sae.encode(x)
        loss = F.mse_loss(sae.decode(h), x) + l1_coeff * h.abs().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return sae.eval().requires_grad_(False)
