"""Small synthetic captures shared by the analysis unit tests: 2 layers, 3 heads, d_model 8,
vocab 11, three prompts right-padded to 6 positions; and the helpers that derive captures from them
(changed activations, garbage in the padding) or check a baseline dict."""

import json
import math
from dataclasses import replace

import torch

from qcheck.capture import Capture
from qcheck.thresholds import Thresholds  # the defaults, and where each comes from: docs/thresholds.md

N_LAYERS, N_HEADS, D_MODEL, D_VOCAB = 2, 3, 8, 11
LENGTHS = (6, 4, 5)  # right-padded to POS
POS = max(LENGTHS)
# Every threshold gated (the ungated ones at their suggested values): these tests are of the gates.
# Under the real defaults most thresholds judge nothing (test_ungated.py).
GATED = Thresholds.suggested()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def causal_softmax(scores: torch.Tensor) -> torch.Tensor:
    n = scores.shape[-1]
    causal = torch.tril(torch.ones(n, n, dtype=torch.bool))
    return torch.softmax(scores.masked_fill(~causal, -math.inf), dim=-1)


def make_capture(seed: int = 0) -> Capture:
    g = gen(seed)
    batch = len(LENGTHS)
    mask = torch.arange(POS)[None, :] < torch.tensor(LENGTHS)[:, None]
    tokens = torch.randint(1, D_VOCAB, (batch, POS), generator=g).masked_fill(~mask, 0)
    acts = {}
    for l in range(N_LAYERS):
        for hook in ("hook_resid_post", "hook_attn_out", "hook_mlp_out"):
            acts[f"blocks.{l}.{hook}"] = torch.randn(batch, POS, D_MODEL, generator=g)
        # random heads, steered away from p − 1 so that none is a previous-token head by chance
        scores = torch.randn(batch, N_HEADS, POS, POS, generator=g) * 2 - 4 * torch.eye(POS).roll(-1, 1)
        acts[f"blocks.{l}.attn.hook_pattern"] = causal_softmax(scores)
    return Capture(tokens=tokens, mask=mask, logits=torch.randn(batch, POS, D_VOCAB, generator=g) * 2,
                   acts=acts, lens_logits=torch.randn(N_LAYERS, batch, D_VOCAB, generator=g) * 2)


def with_acts(capture: Capture, **changes: torch.Tensor) -> Capture:
    return replace(capture, acts={**capture.acts, **{k.replace("__", "."): v for k, v in changes.items()}})


def garbage_in_padding(capture: Capture) -> Capture:
    """The same capture with nonsense at every padded position (what padding must not affect)."""
    g, pad = gen(99), ~capture.mask
    acts = {}
    for name, value in capture.acts.items():
        value = value.clone()
        noise = torch.rand(value.shape, generator=g) * 50
        if name.endswith("hook_pattern"):
            value[pad.unsqueeze(1).expand(-1, value.shape[1], -1)] = causal_softmax(noise)[
                pad.unsqueeze(1).expand(-1, value.shape[1], -1)]
        else:
            value[pad] = noise[pad]
        acts[name] = value
    logits = capture.logits.clone()
    logits[pad] = torch.randn(logits.shape, generator=g)[pad] * 50
    return replace(capture, acts=acts, logits=logits)


def assert_baseline_json(baseline: dict) -> None:
    text = json.dumps(baseline, allow_nan=False)
    assert json.loads(text) == baseline
