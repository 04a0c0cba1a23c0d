"""Where a real tool's quantizer and qcheck's are the same algorithm, they give the same weights.

The references are each tool's own dequantization of its saved checkpoint
(tests/fixtures/checkpoints/README.md, section 3), so these tests read no checkpoint through
qcheck's importer: they compare qcheck's RTN (qcheck/quantize/rtn.py) with the tools' RTN.
- llm-compressor 0.14 (memoryless min-max observer, float32 model): its symmetric grid is qcheck's
  `ref` grid (scale 2·max|w|/15, codes −8..7), its asymmetric one qcheck's; bit for bit.
- GPTQModel 7.6 RTN holds the model in bfloat16 and stores float16 scales: qcheck's `ref` RTN of
  the bfloat16-rounded weights, with its scales rounded to float16, is the tool's weight bit for
  bit. From the float32 weights instead, about half the weights differ (the control below): the
  bfloat16 rounding is what separates the two, not the grid.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qcheck.quantize.grid import GridSpec
from qcheck.quantize.linears import get_rows, named_block_linears
from qcheck.quantize.rtn import rtn

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints" / "out"

# fixture -> (FP zoo model, grid, group size, what the tool held the weights in)
RTN_FIXTURES = {
    "llmcompressor-zoo-pythia-2l64-rtn-w4a16-g32": ("zoo-pythia-2l64", GridSpec(4, kind="reference"), 32, None),
    "llmcompressor-zoo-pythia-2l64-rtn-w4a16-channel": ("zoo-pythia-2l64", GridSpec(4, kind="reference"), None, None),
    "llmcompressor-zoo-pythia-2l64-rtn-w4a16asym-g32": ("zoo-pythia-2l64", GridSpec(4, sym=False), 32, None),
    "gptqmodel-zoo-pythia-2l64-rtn-w4-g32-sym-v1": ("zoo-pythia-2l64", GridSpec(4, kind="reference"), 32, torch.bfloat16),
    "gptqmodel-zoo-gpt2-2l48-rtn-w4-g32-sym-v1": ("zoo-gpt2-2l48", GridSpec(4, kind="reference"), 32, torch.bfloat16),
}


@pytest.fixture(scope="module")
def fp_model():
    from qcheck.models.load import load_model

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_model(name).hf
        return cache[name]
    return get


def qcheck_rtn(weight: torch.Tensor, grid: GridSpec, group_size: int | None, held_in) -> torch.Tensor:
    """qcheck's RTN weight (d_out, d_in) as the tool would store it: from the weights rounded to
    the dtype the tool held them in, with its scales rounded to float16 if the tool did that."""
    w = weight.detach().float()
    if held_in is not None:
        w = w.to(held_in).float()
    q = rtn(w, grid, group_size=group_size)
    scales = q.scales.half().float() if held_in is not None else q.scales  # GPTQModel stores F16 scales
    return scales[:, q.g_idx] * (q.codes - q.zeros[:, q.g_idx])


@pytest.mark.parametrize("fixture", sorted(RTN_FIXTURES))
def test_a_tools_rtn_is_qchecks_rtn_bit_for_bit(fixture, fp_model):
    model, grid, group_size, held_in = RTN_FIXTURES[fixture]
    reference = load_file(OUT / f"{fixture}.reference.safetensors")
    linears = list(named_block_linears(fp_model(model)))
    assert len(linears) == len(reference) == 8
    for name, module in linears:
        tool = reference[f"{name}.weight"]
        mine = qcheck_rtn(get_rows(module), grid, group_size, held_in)
        assert mine.shape == tool.shape
        assert torch.equal(mine, tool), (f"{fixture} {name}: {int((mine != tool).sum())} of {tool.numel()} "
                                         f"weights differ (max |diff| {float((mine - tool).abs().max()):.3g})")


def test_the_bfloat16_rounding_is_what_separates_gptqmodels_rtn_from_qchecks(fp_model):
    """The control: from the float32 weights, many of GPTQModel's RTN weights differ."""
    fixture = "gptqmodel-zoo-pythia-2l64-rtn-w4-g32-sym-v1"
    reference = load_file(OUT / f"{fixture}.reference.safetensors")
    differ = total = 0
    for name, module in named_block_linears(fp_model("zoo-pythia-2l64")):
        tool, grid = reference[f"{name}.weight"], GridSpec(4, kind="reference")
        q = rtn(get_rows(module).detach().float(), grid, group_size=32)
        mine = q.scales.half().float()[:, q.g_idx] * (q.codes - q.zeros[:, q.g_idx])
        differ, total = differ + int((mine != tool).sum()), total + tool.numel()
    assert differ > total // 4, f"only {differ} of {total} differ"
