"""What docs/analyses.md says of the committed features baselines: on the zoo's gptq-w4 results no
SAE feature whose activation barely changed (FP-vs-quantized r >= 0.99) is counted as lost under
either survival rule. A re-recorded baseline that breaks this means a rule is measuring rank
noise again (the dense basis did: REVIEW-correctness W-3), so it fails here, not only in a doc."""

import json
from pathlib import Path

import pytest

from qcheck.analyses.features import lost_features
from qcheck.models.registry import zoo_names

pytestmark = pytest.mark.zoo
BASELINES = Path(__file__).resolve().parents[2] / "baselines" / "cpu" / "certify" / "test_features"
MIN_PEARSON = 0.99


@pytest.mark.parametrize("model", zoo_names())
def test_no_feature_at_r_099_is_lost_under_gptq_w4(model):
    path = BASELINES / f"test_features[{model}-gptq-w4].json"
    assert path.is_file(), f"no committed gptq-w4 features baseline for {model}: {path}"
    recorded = json.loads(path.read_text())["results"]
    correlated = [loss for loss in lost_features(recorded) if loss[2] >= MIN_PEARSON]
    assert not correlated, f"{model} gptq-w4 loses features at r >= {MIN_PEARSON}: {correlated}"


def test_lost_features_reads_both_rules():
    recorded = {"features": {
        "F1": {"pearson": 0.999, "positions": 0.7, "token_overlap": 0.9, "survived_positions": False,
               "survived_study": True},
        "F2": {"pearson": 0.5, "positions": 0.2, "token_overlap": 0.4, "survived_positions": False,
               "survived_study": False},
        "F3": {"pearson": 0.9, "positions": 1.0, "token_overlap": 1.0, "survived_positions": True,
               "survived_study": True}}}
    assert lost_features(recorded) == [("F1", "positions", 0.999, 0.7), ("F2", "positions", 0.5, 0.2),
                                       ("F2", "study", 0.5, 0.4)]
