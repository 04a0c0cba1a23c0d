"""Training a TopK sparse autoencoder (Gao et al. 2024, "Scaling and evaluating sparse
autoencoders"), seeded and deterministic on the CPU.

The recipe (`Recipe`, every field recorded on the basis card):
- Architecture: topk with apply_b_dec_to_input, d_sae = width·d_in, k = `k_for(d_sae)`.
- Scale: training runs on x / c with c the root mean squared distance of the activations from
  their mean per coordinate, so one learning rate serves residual streams of any scale; c is
  folded back at the end (b_enc and b_dec times c; activations come out in the stream's units).
- Init: W_dec rows drawn from a unit sphere, W_enc = W_decᵀ, b_enc = 0, b_dec = the mean.
- Steps: minibatches of `batch_size` rows drawn with replacement from a generator seeded with
  `seed` (the same generator draws the init). Adam, lr constant then linearly to 0 over the last
  20 % of steps. After every step the decoder rows are set back to unit norm.
- Loss: the batch mean of ‖x − x̂‖² over the batch mean of ‖x − mean‖² (a normalised MSE), plus
  `aux_coeff` × AuxK: the k_aux = d_in / 2 largest pre-activations of the dead features
  (not active on any of the last `dead_window` rows) reconstruct the detached residual x − x̂.
  It revives dead features; without it 20-40 % of a zoo basis stayed dead.

`train_topk` returns the SAE and its training curve (every `log_every` steps: the step, the
normalised MSE of the batch, and the dead fraction).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from qcheck.sae.model import QUALITY_CHUNK, SAE, SAEConfig

# Basis-quality targets (the issue that introduced this trainer; docs/analyses.md "features"):
# a feature result on a basis that misses one is flagged in its verdict.
MAX_L0_FRACTION = 0.10   # of d_sae
MAX_L0 = 32
MIN_FVE = 0.90
MAX_DEAD_FRACTION = 0.10


def k_for(d_sae: int) -> int:
    """TopK's k: 8 % of d_sae, at most MAX_L0 − 4 and at least 4. Below the L0 target with room,
    since an SAE's L0 on other text than it trained on is at most k but FVE there is lower."""
    return max(4, min(MAX_L0 - 4, int(0.08 * d_sae)))


@dataclass(frozen=True)
class Recipe:
    seed: int = 0
    width: int = 4            # d_sae / d_in, the study's
    steps: int = 3000
    batch_size: int = 256
    lr: float = 2e-3
    aux_coeff: float = 1 / 32  # Gao et al.'s
    dead_window: int = 8192    # rows without activity after which a feature counts as dead
    log_every: int = 100

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CurvePoint:
    step: int
    nmse: float           # the batch's normalised MSE, ‖x − x̂‖² / ‖x − mean‖²
    dead_fraction: float


def train_topk(acts: Float[Tensor, "n_tokens d_in"], recipe: Recipe = Recipe(), *,
               hook_name: str | None = None, progress=None) -> tuple[SAE, list[CurvePoint]]:
    """Train a TopK SAE on `acts` (FP activations at one hook, real tokens only) by `recipe`;
    progress(step, steps), if given, is called every log_every steps."""
    if acts.ndim != 2 or len(acts) < 2:
        raise ValueError(f"acts must be (n_tokens, d_in) with n_tokens >= 2, got {tuple(acts.shape)}")
    acts = acts.detach().float()
    n, d_in = acts.shape
    d_sae = recipe.width * d_in
    cfg = SAEConfig(d_in=d_in, d_sae=d_sae, architecture="topk", k=k_for(d_sae), hook_name=hook_name)
    generator = torch.Generator().manual_seed(recipe.seed)

    mean = acts.mean(dim=0)
    scale = float((acts - mean).pow(2).mean().sqrt())
    if not scale > 0:
        raise ValueError("the activations are constant: nothing for an SAE to explain")
    x_all = acts / scale

    W_dec = torch.randn(d_sae, d_in, generator=generator)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    W_dec.requires_grad_(True)
    W_enc = W_dec.detach().T.clone().requires_grad_(True)
    b_enc = torch.zeros(d_sae, requires_grad=True)
    b_dec = (mean / scale).clone().requires_grad_(True)
    params = [W_enc, b_enc, W_dec, b_dec]
    optimizer = torch.optim.Adam(params, lr=recipe.lr, foreach=True)
    decay_from = int(0.8 * recipe.steps)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 1.0 if s < decay_from else max(0.0, (recipe.steps - s) / (recipe.steps - decay_from)))
    variance = float((x_all - x_all.mean(dim=0)).pow(2).sum(dim=1).mean())
    rows_since_active = torch.zeros(d_sae, dtype=torch.long)
    k_aux = max(1, d_in // 2)
    curve: list[CurvePoint] = []

    for step in range(recipe.steps):
        x = x_all[torch.randint(0, n, (recipe.batch_size,), generator=generator)]
        pre = (x - b_dec) @ W_enc + b_enc                                    # (batch, d_sae)
        top = pre.topk(cfg.k, dim=-1)
        h = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        x_hat = h @ W_dec + b_dec
        nmse = (x - x_hat).pow(2).sum(dim=1).mean() / variance
        loss = nmse
        fired = (h > 0).any(dim=0)
        rows_since_active = torch.where(fired, 0, rows_since_active + recipe.batch_size)
        dead = rows_since_active >= recipe.dead_window
        n_dead = int(dead.sum())
        if n_dead and recipe.aux_coeff:
            k = min(k_aux, n_dead)
            aux_top = torch.where(dead, pre, -torch.inf).topk(k, dim=-1)
            h_aux = torch.zeros_like(pre).scatter(-1, aux_top.indices, torch.relu(aux_top.values))
            residual = (x - x_hat).detach()
            aux = (h_aux @ W_dec - residual).pow(2).sum(dim=1).mean() / variance
            loss = loss + recipe.aux_coeff * aux
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        with torch.no_grad():
            W_dec /= W_dec.norm(dim=1, keepdim=True)
        if step % recipe.log_every == 0 or step == recipe.steps - 1:
            curve.append(CurvePoint(step, float(nmse.detach()), n_dead / d_sae))
            if progress is not None:
                progress(step, recipe.steps)

    with torch.no_grad():  # fold the scale back: h and W_dec unchanged, biases in stream units
        tensors = {"W_enc": W_enc.detach(), "b_enc": b_enc.detach() * scale,
                   "W_dec": W_dec.detach(), "b_dec": b_dec.detach() * scale}
    return SAE.from_tensors(cfg, tensors, source="trained SAE"), curve


@dataclass(frozen=True)
class BasisQuality:
    """How good a basis is on some activations: l0 (mean active features per row), fve, dead
    fraction (features active on none of the rows), and which targets it misses."""

    l0: float
    fve: float
    dead_fraction: float
    d_sae: int
    n_rows: int

    def misses(self, *, dead: bool = True) -> list[str]:
        """The targets missed; `dead=False` leaves out the dead fraction (on prompts other than its
        training text, a feature the text never calls for is inactive, not dead)."""
        out = []
        l0_max = min(MAX_L0_FRACTION * self.d_sae, MAX_L0)
        if self.l0 > l0_max:
            out.append(f"L0 {self.l0:.1f} > {l0_max:g} (min of {MAX_L0_FRACTION:.0%} of d_sae {self.d_sae} and {MAX_L0})")
        if not self.fve >= MIN_FVE:
            out.append(f"fraction of variance explained {self.fve:.3f} < {MIN_FVE}")
        if dead and self.dead_fraction > MAX_DEAD_FRACTION:
            out.append(f"dead features {self.dead_fraction:.1%} > {MAX_DEAD_FRACTION:.0%}")
        return out

    def as_dict(self) -> dict:
        return {"l0": self.l0, "fve": self.fve, "dead_fraction": self.dead_fraction,
                "d_sae": self.d_sae, "n_rows": self.n_rows}


@torch.no_grad()
def basis_quality(sae: SAE, acts: Float[Tensor, "n_tokens d_in"]) -> BasisQuality:
    n_active, ever_active = 0, torch.zeros(sae.cfg.d_sae, dtype=torch.bool)
    for rows in acts.float().split(QUALITY_CHUNK):
        active = sae.encode(rows) > 0                                         # (chunk, d_sae)
        n_active += int(active.sum())
        ever_active |= active.any(dim=0)
    return BasisQuality(l0=n_active / len(acts), fve=sae.fraction_of_variance_explained(acts),
                        dead_fraction=float((~ever_active).double().mean()), d_sae=sae.cfg.d_sae,
                        n_rows=len(acts))
