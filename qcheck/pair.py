"""An FP model and one quantized twin, wrapped alike, with their captures built once.

A Pair is what every certification test receives. Captures are made lazily, once per prompt set,
and shared by all analyses of the pair; the FP side of each capture is shared across every
quantizer of the model (the session passes it in).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from qcheck.analyses.base import PROMPT_SETS, PromptSet
from qcheck.capture import Capture, block_hooks, capture, pad_prompts
from qcheck.data.induction import INDUCTION_HALF, INDUCTION_SEED, induction_sets
from qcheck.data.prompts import LOGIT_LENS, encode_prompts, natural_texts
from qcheck.memory import release_freed_memory
from qcheck.models.load import LoadedModel

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from qcheck.quantize.result import QuantizedModel
    from qcheck.quantize.spec import CheckpointRef, QuantSpec



def prompt_tokens(model: LoadedModel, prompt_set: str, *, n_induction_sets: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens, mask) of a prompt set for this model (BOS first, cut to its context); the induction
    set is `n_induction_sets` independent sets of 50 sequences (--qcheck-seeds)."""
    tokenizer = model.tokenizer
    if prompt_set == "induction":
        low, high = tokenizer.random_range
        tokens = induction_sets(n_induction_sets, half=INDUCTION_HALF, low=low, high=high, bos=tokenizer.bos,
                                seed=INDUCTION_SEED)
        return tokens, torch.ones_like(tokens, dtype=torch.bool)
    texts = {"natural": natural_texts(), "lens": LOGIT_LENS}[prompt_set]
    return pad_prompts(encode_prompts(texts, tokenizer.encode, model.n_ctx), pad=tokenizer.bos)


def capture_prompt_set(bridge, model: LoadedModel, prompt_set: str, *, n_induction_sets: int = 1) -> Capture:
    tokens, mask = prompt_tokens(model, prompt_set, n_induction_sets=n_induction_sets)
    n_layers = bridge.cfg.n_layers
    if prompt_set == "natural":
        return capture(bridge, tokens, mask, names=block_hooks(n_layers), lens=False)
    if prompt_set == "lens":  # the lens reads lens_logits only
        return capture(bridge, tokens, mask, names=[f"blocks.{l}.hook_resid_post" for l in range(n_layers)],
                       logit_positions=None)
    # the in-context loss reads the logits that predict the repeated half (analyses/circuits.py)
    return capture(bridge, tokens, mask, names=[f"blocks.{l}.attn.hook_pattern" for l in range(n_layers)],
                   lens=False, logit_positions=slice(INDUCTION_HALF + 1, 2 * INDUCTION_HALF))


@dataclass(frozen=True)
class Case:
    """One (model, quantizer) case of the certification matrix: a model name and its quantizer,
    a QuantSpec or, for --qcheck-checkpoint, a CheckpointRef (qcheck/quantize/spec.py), parsed
    once when the options are validated (qcheck/suite/session.py)."""

    model: str
    quant: QuantSpec | CheckpointRef

    @property
    def quant_id(self) -> str:
        """The quantizer as test ids, baselines, tests/certify/expected_failures.toml and
        results.json name it: the canonical QuantSpec short form (`user:<name>-w4` for a user
        quantizer), or `checkpoint:<name>`."""
        return str(self.quant)

    @property
    def id(self) -> str:
        return f"{self.model}-{self.quant_id}"


@dataclass
class Pair:
    """One case's two sides, named alike: `fp` and `quant` (the models), `fp_bridge` and
    `quant_bridge` (their TransformerBridges), and their captures."""

    case: Case
    fp: LoadedModel
    quant: "QuantizedModel"
    fp_bridge: "TransformerBridge"
    quant_bridge: "TransformerBridge"
    fp_capture: Callable[[str], Capture]   # the session's shared FP captures
    n_induction_sets: int = 1               # --qcheck-seeds
    _quant_captures: dict = field(default_factory=dict, repr=False)

    def captures(self, prompt_set: PromptSet) -> tuple[Capture, Capture]:
        """(FP, quantized) captures of one prompt set: "natural", "lens" or "induction"."""
        if prompt_set not in PROMPT_SETS:
            raise ValueError(f"unknown prompt set {prompt_set!r}; expected one of {PROMPT_SETS}")
        if prompt_set not in self._quant_captures:
            self._quant_captures[prompt_set] = capture_prompt_set(self.quant_bridge, self.fp, prompt_set,
                                                                  n_induction_sets=self.n_induction_sets)
            release_freed_memory()
        return self.fp_capture(prompt_set), self._quant_captures[prompt_set]
