"""Under the real defaults, a threshold no source grounds (default None, docs/thresholds.md) judges
nothing: the planted damage that fails every gate under GATED fails none of the ungated ones, the
grounded ones still fail, and setting an ungated threshold (or 'off' on a grounded one) turns its
gate on (or off)."""

from dataclasses import replace

import pytest
import torch

from qcheck.analyses import activations, attention, fidelity, logit_lens
from qcheck.thresholds import DECLARED, Thresholds

from .captures import GATED, make_capture, with_acts
from .test_attention import previous_token_pattern

DEFAULTS = Thresholds()
GROUNDED = {"min_resid_cosine", "min_induction_survival"}


def test_only_the_grounded_thresholds_gate_by_default():
    numeric = {key for key, t in DECLARED.items() if not t.is_setting}
    assert {key for key in numeric if DEFAULTS[key] is not None} == GROUNDED
    assert set(DEFAULTS.ungated()) == numeric - GROUNDED
    assert all(DECLARED[key].suggested is not None for key in DEFAULTS.ungated())
    assert all(GATED[key] is not None for key in numeric)


def planted():
    """One result per analysis, each failing its gates under GATED."""
    fp = make_capture()
    lens = fp.lens_logits.clone()
    lens[1] = -lens[1]
    pattern = fp.acts["blocks.0.attn.hook_pattern"].clone()
    pattern[:, 1] = previous_token_pattern()
    fp_heads = with_acts(fp, blocks__0__attn__hook_pattern=pattern)
    broken = pattern.clone()
    broken[:, 1] = 0
    broken[:, 1, :, 0] = 1
    scrambled = {name: -acts for name, acts in fp.acts.items() if "resid" in name}
    return {"fidelity": fidelity.compare_outputs(fp, replace(fp, logits=-fp.logits)),
            "logit_lens": logit_lens.compare_logit_lens(fp, replace(fp, lens_logits=lens)),
            "attention": attention.compare_attention(fp_heads, with_acts(fp_heads, blocks__0__attn__hook_pattern=broken)),
            "activations": activations.compare_activations(fp, replace(fp, acts={**fp.acts, **scrambled}))}


@pytest.mark.parametrize("analysis", ["fidelity", "logit_lens", "attention", "activations"])
def test_planted_damage_fails_only_the_grounded_gates_by_default(analysis):
    result = planted()[analysis]
    gated = {f.criterion for f in result.failures(GATED) if not f.borderline}
    assert gated, "not vacuous: the damage fails some gate when every threshold is set"
    by_default = {f.criterion for f in result.failures(DEFAULTS)}
    assert by_default == gated & GROUNDED


def test_setting_a_threshold_turns_its_gate_on_and_off_turns_a_grounded_one_off():
    result = planted()["fidelity"]
    assert result.failures(DEFAULTS) == []
    (failure,) = result.failures(DEFAULTS.updated({"min_top1_agreement": 0.9}, source="test"))
    assert failure.criterion == "min_top1_agreement"
    cosine = planted()["activations"]
    assert cosine.failures(DEFAULTS)
    assert cosine.failures(DEFAULTS.updated({"min_resid_cosine": "off"}, source="test")) == []
