"""Weights and calibration data that break naive quantizers: all-zero (and denormal) weight rows,
dead inputs, too few calibration tokens, a Hessian no damping rescues, a group size that does not
divide the input dimension. Each is either recovered exactly as stated or refused naming the
quantizer and the layer; a NaN never reaches a quantized model."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from qcheck.quantize import apply
from qcheck.quantize.apply import quantize_model
from qcheck.quantize.linears import get_rows, named_block_linears, set_rows
from qcheck.quantize.grid import GridSpec
from qcheck.quantize.rtn import rtn
from qcheck.quantize.spec import parse_quant_spec

from helpers import build_tiny


def linears(model) -> dict[str, torch.nn.Module]:
    return dict(named_block_linears(model))


def finite_logits(model, tokens) -> bool:
    with torch.no_grad():
        return bool(torch.isfinite(model(tokens).logits).all())


@pytest.mark.parametrize("quant", ["rtn-w4", "rtn-w4-asym", "rtn-w3-g16", "gptq-w4", "gptq-w4-asym-g16-act"])
def test_all_zero_and_denormal_weight_rows_quantize_to_exact_zeros(tiny_model, calibration_tokens, quant):
    """A zero row has range 0, a denormal one a scale that underflows to 0: both once gave 0/0."""
    model = copy.deepcopy(tiny_model)
    name, layer = next(iter(linears(model).items()))
    rows = get_rows(layer).clone()
    rows[5] = 0.0
    rows[7] = 1e-45                                         # the smallest float32 denormal
    set_rows(layer, rows)
    grids = {}
    quantized, _ = quantize_model(model, parse_quant_spec(quant), calibration_tokens,
                                  on_layer=lambda n, q: grids.setdefault(n, q))
    q = get_rows(linears(quantized)[name])
    assert torch.equal(q[5], torch.zeros_like(q[5])) and torch.equal(q[7], torch.zeros_like(q[7]))
    assert all(torch.isfinite(g.scales).all() and (g.scales > 0).all() for g in grids.values())
    assert finite_logits(quantized, calibration_tokens)


def test_dead_inputs_get_zero_weights_and_are_counted(tiny_gpt2_lm, calibration_tokens):
    """An input never active in calibration (H_ii = 0, singular H): its weights are set to 0, as
    in the reference, and the report counts it."""
    model = copy.deepcopy(tiny_gpt2_lm)
    with torch.no_grad():  # ln_1 output 3 is always 0: input 3 of block 0's attention QKV is dead
        model.transformer.h[0].ln_1.weight[3] = 0.0
        model.transformer.h[0].ln_1.bias[3] = 0.0
    quantized, report = quantize_model(model, parse_quant_spec("gptq-w4"), calibration_tokens)
    layer = next(r for r in report.layers if r.name == "transformer.h.0.attn.c_attn")
    assert layer.dead_columns == 1 and layer.damp_retries == 0
    qkv = get_rows(quantized.transformer.h[0].attn.c_attn)
    assert torch.equal(qkv[:, 3], torch.zeros_like(qkv[:, 3])) and torch.isfinite(qkv).all()
    assert all(r.dead_columns == 0 for r in report.layers if r.name != layer.name)


def test_too_few_calibration_tokens_are_damped_not_fatal(tiny_model, calibration_tokens):
    """Two tokens for 32..128 inputs: H has rank <= 2. Damping (1% of mean diag H) makes it definite;
    the result is finite and every layer reports the damping it used."""
    few = calibration_tokens[:1, :2]                          # (n_samples, seq_len) = (1, 2)
    quantized, report = quantize_model(tiny_model, parse_quant_spec("gptq-w4"), few)
    assert all(r.damp is not None and r.damp >= 0.01 for r in report.layers)
    assert all(math.isfinite(r.output_rel_error) for r in report.layers)
    assert finite_logits(quantized, calibration_tokens)


def test_hessian_no_damping_rescues_is_an_error_naming_the_layer(tiny_gpt2_lm, calibration_tokens, monkeypatch):
    """Eigenvalue −99 against a mean diagonal of 1: still indefinite at the largest damping (10x).
    (A merely indefinite H is retried with more damping: tests/kernels/test_gptq_properties.py::
    test_failed_cholesky_is_retried_with_more_damping.)"""
    def indefinite(block, group, inputs):
        out = {}
        for name, module in group.items():
            d_in = get_rows(module).shape[1]
            out[name] = torch.eye(d_in) + 100 * (torch.ones(d_in, d_in) - torch.eye(d_in))
        return out

    monkeypatch.setattr(apply, "collect_hessians", indefinite)
    with pytest.raises(ValueError) as error:
        quantize_model(tiny_gpt2_lm, parse_quant_spec("gptq-w4"), calibration_tokens)
    assert str(error.value) == ("gptq-w4: transformer.h.0.attn.c_attn: gptq: the hessian is not positive definite "
                                "even with damp=10; check the calibration inputs for degenerate (constant or "
                                "repeated) activations")


@pytest.mark.parametrize("quant", ["rtn-w4-g32", "gptq-w4-g32", "gptq-w4-g32-static-act"])
def test_group_size_not_dividing_the_input_dimension_leaves_a_shorter_last_group(calibration_tokens, quant):
    """d_model 48 with groups of 32: columns 32..47 form a last group of 16 with its own grid, as
    in the reference and the GPTQ checkpoint format (n_groups = ceil(d_in / group_size))."""
    model = build_tiny("gpt2", n_embd=48, n_head=4)
    original = {name: get_rows(m).clone() for name, m in linears(model).items()}
    grids = {}
    quantized, _ = quantize_model(model, parse_quant_spec(quant), calibration_tokens,
                                  on_layer=lambda n, q: grids.setdefault(n, q))
    assert {original[n].shape[1] for n in grids} == {48, 192}           # 48: not a multiple of 32
    for name, q in grids.items():
        d_in = original[name].shape[1]
        assert q.scales.shape == (original[name].shape[0], math.ceil(d_in / 32))
        assert torch.isfinite(q.weight).all() and torch.equal(get_rows(linears(quantized)[name]), q.weight)
        assert torch.equal(q.weight, q.scales[:, q.g_idx] * (q.codes - q.zeros[:, q.g_idx]))  # on its grid
        if quant == "rtn-w4-g32":  # each group is RTN of its own columns, the short last one too
            assert torch.equal(q.g_idx, torch.arange(d_in) // 32)
            pieces = [rtn(original[name][:, s:s + 32], GridSpec(4)).weight for s in range(0, d_in, 32)]
            assert torch.equal(q.weight, torch.cat(pieces, dim=1))
    assert finite_logits(quantized, calibration_tokens)


def test_group_size_larger_than_the_input_dimension_is_one_group_per_row(tiny_gpt2_lm):
    """g128 on 32-wide inputs: one group, exactly the per-row grid."""
    grouped, _ = quantize_model(tiny_gpt2_lm, parse_quant_spec("rtn-w4-g128"))
    per_row, _ = quantize_model(tiny_gpt2_lm, parse_quant_spec("rtn-w4"))
    a, b = linears(grouped), linears(per_row)
    assert any(get_rows(m).shape[1] < 128 for m in a.values())
    for name, module in a.items():
        if get_rows(module).shape[1] <= 128:
            assert torch.equal(get_rows(module), get_rows(b[name]))
