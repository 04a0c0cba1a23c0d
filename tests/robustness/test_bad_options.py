"""Bad quantizer values on the command line: one usage error at collection, naming the text, why,
and the grammar (or the length that fits), before any model is loaded."""

from __future__ import annotations

import pytest

from qcheck.data.calibration import CalibrationError, calibration_for
from qcheck.models.context import context_length
from qcheck.models.registry import resolve, zoo_names
from qcheck.quantize.spec import GRAMMAR, parse_quant_spec

MALFORMED = {
    "rtn-w9": "QuantSpec('rtn', ...): bits=9 is out of range; use an integer 2..8",
    "rtn-w1": "QuantSpec('rtn', ...): bits=1 is out of range; use an integer 2..8",
    "gptq-w4-g100": "QuantSpec('gptq', ...): group_size=100 is not supported; use None (per output row) or "
                    "one of (16, 32, 64, 128)",
    "gptq-w4-g0": "group_size=0 is not supported",
    "rtn": "missing the bit width, e.g. rtn-w4",
    "awq-w4": "unknown method 'awq' (expected one of rtn, gptq, gptq-study, checkpoint, user:NAME)",
    "rtn--w4": "empty token (doubled '-')",
    "rtn-w4-w3": "'w3' repeats or contradicts an earlier token",
    "rtn-w4-act": "act_order only apply to gptq, gptq-study and user quantizers; remove them from the rtn spec",
    "gptq-w4-damp0": "damp=0.0 must be a fraction in (0, 1], e.g. 0.01",
    "gptq-w4-len1": "seq_len=1 must be >= 2",
    "gptq-w4-n0": "n_samples=0 must be >= 1",
}


@pytest.mark.parametrize("text", MALFORMED)
def test_malformed_quant_spec_is_one_usage_error(cli, text):
    message = cli.usage_error("--qcheck-quant", text)
    assert message.startswith(f"bad quantization spec {text!r}: ") and MALFORMED[text] in message
    assert message.endswith(f". Grammar: {GRAMMAR}")


def test_calibration_longer_than_the_context_is_one_usage_error(cli, tiny_gpt2_lm):
    model = zoo_names()[0]
    context = context_length(resolve(model))
    too_long = f"gptq-w4-len{2 * context}"
    assert cli.usage_error("--qcheck-model", model, "--qcheck-quant", too_long) == (
        f"--qcheck-quant {too_long}: calibration sequences of {2 * context} tokens are longer than the context "
        f"of {model} ({context} tokens); use -len{context} or less, or leave -lenN out (default: the context, "
        f"at most 128)")
    cli.collects("--qcheck-model", model, "--qcheck-quant", f"gptq-w4-len{context}")
    # without --qcheck-model the named quantizer joins every zoo model's matrix: checked for each
    assert "are longer than the context of" in cli.usage_error("--qcheck-quant", too_long)
    # the library path (a model built in memory): the same refusal when the calibration is built
    with pytest.raises(CalibrationError, match=r"calibration seq_len=65 exceeds the model's context of 64 "
                                               r"tokens; use -len64 or less"):
        calibration_for(parse_quant_spec("gptq-w4-len65"), tiny_gpt2_lm)
