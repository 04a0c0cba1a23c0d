"""A sparse autoencoder as SAELens defines one: the tensors W_enc (d_in, d_sae), b_enc (d_sae,),
W_dec (d_sae, d_in), b_dec (d_in,) and, for JumpReLU, threshold (d_sae,); and the config flags
that change the encoding (`SAEConfig`). qcheck trains TopK ones (qcheck/sae/train.py) and reads
and writes SAELens's directory format (qcheck/sae/saelens.py), so one class encodes both.

Encoding, with x the activation at the SAE's hook (shapes: x (n, d_in), h (n, d_sae)):
    x' = normalize(x) − b_dec·apply_b_dec_to_input
    pre = x' W_enc + b_enc
    h = ReLU(pre)                                  standard
    h = ReLU of the k largest entries of pre, 0 elsewhere   topk
        (with rescale_acts_by_decoder_norm: of pre · ‖W_dec row‖, and x̂ from h / ‖W_dec row‖)
    h = ReLU(pre) · [pre > threshold]              jumprelu (SAELens's inference form)
    x̂ = denormalize(h W_dec + b_dec)

It is a measurement basis, not a model under test: frozen after training or loading.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn

ARCHITECTURES = ("standard", "topk", "jumprelu")
# "expected_average_only_in" needs a scaling factor SAELens keeps outside the SAE's files, and
# "layer_norm" is not used by any SAE qcheck has seen: both are refused by name (saelens.py).
NORMALIZATIONS = ("none", "constant_norm_rescale")


def tensor_names(architecture: str) -> tuple[str, ...]:
    """The SAE's tensors, in digest order."""
    return ("W_enc", "b_enc", "W_dec", "b_dec") + (("threshold",) if architecture == "jumprelu" else ())


@dataclass(frozen=True)
class SAEConfig:
    """What decides the encoding. hook_name: the TransformerLens hook the SAE reads
    (`blocks.L.hook_resid_post`, ...), None when not yet placed; k: TopK's active count;
    rescale_acts_by_decoder_norm: TopK ranks pre-activations as if the decoder rows had unit norm
    (SAELens's trainer default)."""

    d_in: int
    d_sae: int
    architecture: str = "topk"
    k: int | None = None
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    hook_name: str | None = None
    rescale_acts_by_decoder_norm: bool = False

    def __post_init__(self):
        if self.architecture not in ARCHITECTURES:
            raise ValueError(f"SAE architecture {self.architecture!r} is not supported: use one of {ARCHITECTURES}")
        if (self.architecture == "topk") != (self.k is not None):
            raise ValueError(f"k must be set exactly for a topk SAE (architecture {self.architecture!r}, k {self.k})")
        if self.k is not None and not 0 < self.k <= self.d_sae:
            raise ValueError(f"k {self.k} must be in 1..d_sae ({self.d_sae})")
        if self.rescale_acts_by_decoder_norm and self.architecture != "topk":
            raise ValueError("rescale_acts_by_decoder_norm applies to topk SAEs only")
        if self.normalize_activations not in NORMALIZATIONS:
            raise ValueError(f"normalize_activations {self.normalize_activations!r} is not supported: "
                             f"use one of {NORMALIZATIONS}")


# Rows encoded at once by the quality measures: (4096, d_sae) float32 is 48 MiB at GPT-2-small's
# 3072 features, where all 32,512 training rows at once held 2.3 GB more (bench/scale.py).
QUALITY_CHUNK = 4096


class SAE(nn.Module):
    """The encoding in the module docstring; weights float32, frozen once built."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae))
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.d_in))
        self.b_dec = nn.Parameter(torch.zeros(cfg.d_in))
        if cfg.architecture == "jumprelu":
            self.threshold = nn.Parameter(torch.zeros(cfg.d_sae))

    # --- the encoding ---------------------------------------------------------------------
    def _norm_coeff(self, x: Float[Tensor, "n d_in"]) -> Float[Tensor, "n 1"] | None:
        if self.cfg.normalize_activations == "constant_norm_rescale":
            return math.sqrt(self.cfg.d_in) / x.norm(dim=-1, keepdim=True)
        return None

    def pre_activations(self, x: Float[Tensor, "n d_in"]) -> Float[Tensor, "n d_sae"]:
        coeff = self._norm_coeff(x)
        x = x * coeff if coeff is not None else x
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def activate(self, pre: Float[Tensor, "n d_sae"]) -> Float[Tensor, "n d_sae"]:
        if self.cfg.architecture == "topk":
            top = pre.topk(self.cfg.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, top.indices, F.relu(top.values))
        if self.cfg.architecture == "jumprelu":
            return F.relu(pre) * (pre > self.threshold)
        return F.relu(pre)

    def encode(self, x: Float[Tensor, "n d_in"]) -> Float[Tensor, "n d_sae"]:
        pre = self.pre_activations(x)
        if self.cfg.rescale_acts_by_decoder_norm:
            pre = pre * self.W_dec.norm(dim=-1)
        return self.activate(pre)

    def decode(self, h: Float[Tensor, "n d_sae"], x: Float[Tensor, "n d_in"] | None = None) -> Float[Tensor, "n d_in"]:
        """x̂ from h; `x` (the input h came from) is needed only to undo constant_norm_rescale."""
        if self.cfg.rescale_acts_by_decoder_norm:
            h = h * (1 / self.W_dec.norm(dim=-1))
        out = h @ self.W_dec + self.b_dec
        if self.cfg.normalize_activations == "constant_norm_rescale":
            if x is None:
                raise ValueError("decode of a constant_norm_rescale SAE needs the input x")
            out = out / self._norm_coeff(x)
        return out

    def forward(self, x: Float[Tensor, "n d_in"]) -> Float[Tensor, "n d_in"]:
        return self.decode(self.encode(x), x)

    # --- quality --------------------------------------------------------------------------
    @torch.no_grad()
    def fraction_of_variance_explained(self, x: Float[Tensor, "n d_in"]) -> float:
        """1 − Σ‖x − x̂‖² / Σ‖x − mean(x)‖², dimensionless: 1 = perfect reconstruction, ≤ 0 = no
        better than predicting the mean."""
        x = x.float()
        mean = x.double().mean(dim=0)
        residual = total = 0.0
        for rows in x.split(QUALITY_CHUNK):  # chunks: h and x̂ of every row at once are GBs at real widths
            residual += float(((rows.double() - self(rows).double()) ** 2).sum())
            total += float(((rows.double() - mean) ** 2).sum())
        return 1 - residual / total if total > 0 else math.nan

    # --- identity and storage -------------------------------------------------------------
    def digest(self) -> str:
        """sha256 of the config and the tensors: pins the measurement basis in every result."""
        h = hashlib.sha256(json.dumps(asdict(self.cfg), sort_keys=True).encode())
        for t in self.tensors().values():
            h.update(t.numpy().tobytes())
        return h.hexdigest()

    def tensors(self) -> dict[str, Tensor]:
        """The weights by name (`tensor_names`), detached float32 contiguous."""
        return {name: getattr(self, name).detach().float().contiguous()
                for name in tensor_names(self.cfg.architecture)}

    @classmethod
    def from_tensors(cls, cfg: SAEConfig, tensors: Mapping[str, Tensor], *, source: str = "SAE") -> "SAE":
        """An SAE holding `tensors`, frozen (eval mode, gradients off); ValueError naming
        `source`, the tensor and the shapes when a tensor is missing, extra or misshapen."""
        sae = cls(cfg)
        expected = {name: tuple(getattr(sae, name).shape) for name in tensor_names(cfg.architecture)}
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        if missing or extra:
            raise ValueError(f"{source}: a {cfg.architecture} SAE has tensors {sorted(expected)}; "
                             f"missing {missing}, unexpected {extra}")
        with torch.no_grad():
            for name, shape in expected.items():
                t = tensors[name]
                if tuple(t.shape) != shape:
                    raise ValueError(f"{source}: {name} has shape {tuple(t.shape)}, expected {shape} "
                                     f"for d_in {cfg.d_in}, d_sae {cfg.d_sae}")
                if not torch.isfinite(t).all():
                    raise ValueError(f"{source}: {name} holds NaN or infinite values")
                getattr(sae, name).copy_(t.float())
        return sae.eval().requires_grad_(False)
