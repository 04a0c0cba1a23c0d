"""Where a real tool's quantizer and qcheck's are the same algorithm, they give the same weights.

The references are each tool's own dequantization of its saved checkpoint
(tests/fixtures/checkpoints/README.md, section 3), so these tests read no checkpoint through
qcheck's importer: they compare qcheck's RTN (qcheck/quantize/rtn.py) with the tools' RTN.
- llm-compressor 0.14 (memoryless min-max observer, float32 model): its symmetric grid is qcheck's
  `ref` grid (scale 2·max|w|/15, codes −8..7), its asymmetric one qcheck's; bit for bit.
- GPTQModel 7.6 RTN holds the model in bfloat16 and stores float16 scales: qcheck's `ref` RTN of
  the bfloat16-rounded weights, with its scales rounded to float16, is the tool's weight bit for
  bit. From the float32 weights instead, about half the weights differ (the control below): the
  bfloat16 rounding is what separates the two, not the grid. Through the whole quantizer that is
  `rtn-w4-g32-ref-bf16`.
- GPTQModel 7.6 GPTQ is qcheck's `-gar-blockfit-bf16` (group-aware order, groups fitted as of the
  lazy block's start, the bfloat16 working model): the first linear GPTQ meets, whose inputs are
  the same, agrees to ≥ 99 % of its weights; without any one of the three options ≤ 80 % do. Later
  linears differ more (its float32 solve, qcheck's float64 one, move codes by a step that later
  layers see as other inputs); what decides is that the verdicts agree (certify_table.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qcheck.data.calibration import from_file
from qcheck.quantize.apply import quantize_model
from qcheck.quantize.grid import GridSpec
from qcheck.quantize.spec import parse_quant_spec
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


def test_rtn_bf16_is_gptqmodels_rtn_through_the_whole_quantizer(fp_model):
    """`-bf16` in quantize_model: the tool's weights bit for bit; the rest of the twin is the FP
    model's own tensors, and the FP model is left as it was."""
    fixture = "gptqmodel-zoo-pythia-2l64-rtn-w4-g32-sym-v1"
    model = fp_model("zoo-pythia-2l64")
    before = {name: t.clone() for name, t in model.state_dict().items()}
    twin, _ = quantize_model(model, parse_quant_spec("rtn-w4-g32-ref-bf16"))
    reference = load_file(OUT / f"{fixture}.reference.safetensors")
    for name, module in named_block_linears(twin):
        assert torch.equal(get_rows(module), reference[f"{name}.weight"]), name
    quantized = {f"{name}.weight" for name, _ in named_block_linears(twin)}
    fp_tensors = dict(model.state_dict(keep_vars=True))
    for name, t in twin.state_dict(keep_vars=True).items():
        assert t.dtype == torch.float32, name
        if name not in quantized:
            assert t is fp_tensors[name], f"{name} is a copy, not the FP model's tensor"
    assert all(torch.equal(before[name], t) for name, t in model.state_dict().items())


GPTQ_FIXTURE = "gptqmodel-zoo-pythia-2l64-gptq-w4-g32-sym-v1"
GPTQ_SPEC = "gptq-w4-g32-ref-gar-blockfit-damp0.05-bf16-n32-len64"


def _first_linear_agreement(model, spec: str) -> float:
    """Fraction of the first block-linear's weights within half a bfloat16 ulp of GPTQModel's."""
    calibration = from_file(OUT / "calibration-ids.json", n_samples=32, seq_len=64, seed=0,
                            vocab_size=model.config.vocab_size).tokens
    twin, _ = quantize_model(model, parse_quant_spec(spec), calibration)
    name, module = next(iter(named_block_linears(twin)))
    tool = load_file(OUT / f"{GPTQ_FIXTURE}.reference.safetensors")[f"{name}.weight"]
    return float(((get_rows(module) - tool).abs() <= 2 ** -9 * tool.abs() + 1e-7).float().mean())


@pytest.mark.parametrize("dropped", [None, "gar", "blockfit", "bf16"])
def test_gptqmodels_gptq_needs_all_three_options(dropped, fp_model):
    spec = GPTQ_SPEC if dropped is None else GPTQ_SPEC.replace(f"-{dropped}", "")
    agreement = _first_linear_agreement(fp_model("zoo-pythia-2l64"), spec)
    if dropped is None:
        assert agreement >= 0.99, f"{spec}: only {agreement:.3f} of the weights agree"
    else:
        assert agreement <= 0.8, f"{spec} without -{dropped} agrees on {agreement:.3f}: is the option needed?"
