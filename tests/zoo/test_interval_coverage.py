"""Every measured value a result records has an interval (issue: calibrated verdicts): each
analysis runs on a zoo pair where quantization changes little (rtn-w8) and one where it breaks
nearly everything (rtn-w2), so both the surviving and the lost branches of the head and feature
counts are covered; qcheck/report/coverage.py lists any value of as_baseline() without [low,
high] in intervals() that its analysis does not declare unmeasured."""

import pytest
import torch

from helpers import smallest_zoo_model
from qcheck.analyses import ANALYSES
from qcheck.analyses.base import Context
from qcheck.models.bridge import wrap
from qcheck.models.load import load_model
from qcheck.pair import capture_prompt_set
from qcheck.quantize.cache import load_or_quantize
from qcheck.quantize.spec import parse_quant_spec
from qcheck.report.coverage import without_interval
from qcheck.sae.basis import SAE_DIR
from qcheck.sae.saelens import load_saelens
from qcheck.thresholds import Thresholds

pytestmark = pytest.mark.zoo


@pytest.fixture(scope="module")
def zoo_model():
    model = load_model(smallest_zoo_model())
    sae, _ = load_saelens(f"{model.spec.location}/{SAE_DIR}")
    return model, sae


@pytest.mark.parametrize("quant", ["rtn-w8", "rtn-w2"])
def test_every_measured_value_has_an_interval(zoo_model, quant):
    model, sae = zoo_model
    quantized = load_or_quantize(model.hf, parse_quant_spec(quant), tokenizer=model.tokenizer)
    fp_bridge, q_bridge = wrap(model.hf), wrap(quantized.model)
    captures, missing = {}, {}
    with torch.no_grad():
        for name, analysis in ANALYSES.items():
            s = analysis.prompt_set
            if s not in captures:
                captures[s] = (capture_prompt_set(fp_bridge, model, s), capture_prompt_set(q_bridge, model, s))
            result = analysis.compare(*captures[s], Context(Thresholds(), sae))
            assert result.intervals(), f"{name}: no intervals at all"
            if gaps := without_interval(analysis, result.as_baseline(), result.intervals()):
                missing[name] = gaps
    assert not missing, f"values without an interval ({quant}): {missing}"


def test_the_check_finds_a_value_without_an_interval():
    analysis = ANALYSES["fidelity"]
    metrics = {"n_positions": 10, "summary": {"kl": 0.1, "top1": 0.9, "loss_increase_ci": {"low": 0.0}}}
    assert without_interval(analysis, metrics, {"summary": {"kl": [0.05, 0.15]}}) == ["summary.top1"]
