"""The noise floor (qcheck/noise_floor.py): which models get one, and on a zoo model it is the
float rounding it claims to be (every analysis near perfect), without touching the FP model."""

import pytest
import torch

from helpers import smallest_zoo_model
from qcheck.analyses import ANALYSES
from qcheck.analyses.base import Context
from qcheck.models.bridge import wrap
from qcheck.models.load import load_model
from qcheck.noise_floor import AUTO_MAX_PARAMS, float64_twin, floor_of, wanted
from qcheck.pair import capture_prompt_set
from qcheck.thresholds import Thresholds


@pytest.mark.parametrize("mode, n_params, measured", [("auto", AUTO_MAX_PARAMS, True),
                                                       ("auto", AUTO_MAX_PARAMS + 1, False),
                                                       ("on", 10 ** 10, True), ("off", 10, False)])
def test_which_models_get_a_floor(mode, n_params, measured):
    assert wanted(mode, n_params) is measured


def test_a_bad_mode_names_the_option():
    with pytest.raises(ValueError, match="--qcheck-noise-floor 'sometimes': expected one of auto, on, off"):
        wanted("sometimes", 10)


@pytest.mark.zoo
def test_the_floor_is_float_rounding_and_leaves_the_fp_model_alone():
    model = load_model(smallest_zoo_model())
    before = {k: v.clone() for k, v in model.hf.state_dict().items()}
    twin = float64_twin(model.hf)
    assert all(p.dtype == torch.float64 for p in twin.parameters())
    assert all(p.dtype == torch.float32 for p in model.hf.parameters())
    fp32, fp64 = wrap(model.hf), wrap(twin, copy_model=False)
    floors = {}
    for name in ("activations", "attention", "fidelity", "logit_lens"):
        analysis = ANALYSES[name]
        s = analysis.prompt_set
        floors[name] = floor_of(analysis, capture_prompt_set(fp32, model, s), capture_prompt_set(fp64, model, s),
                                Context(Thresholds()))["summary"]
    assert 1 - floors["activations"]["min_resid_cosine"] < 1e-9
    assert floors["attention"]["max_jsd"] < 1e-9 and floors["fidelity"]["kl"] < 1e-9
    assert floors["fidelity"]["top1"] == 1.0 and floors["logit_lens"]["max_kl"] < 1e-9
    assert all(torch.equal(before[k], v) for k, v in model.hf.state_dict().items())


def test_a_models_float64_copy_is_dropped_once_every_floor_is_measured(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from qcheck.suite.options import ThresholdOverrides
    from qcheck.suite.session import QcheckSession

    session = QcheckSession(models=["m"], quants=[], device="cpu", base_thresholds=Thresholds(),
                            pyproject_per_model={}, overrides=ThresholdOverrides(), cache_dir=tmp_path,
                            expected_failures={})

    def measure(self, pair, analysis, context):      # what _measure_floor keeps, without a model
        self._memo[("fp64_bridge", "m")] = "bridge"
        self._memo[("fp64_capture", "m", analysis.prompt_set)] = "capture"
        return {"summary": {}}
    monkeypatch.setattr(QcheckSession, "_measure_floor", measure)
    pair = SimpleNamespace(case=SimpleNamespace(model="m"), fp=SimpleNamespace(n_params=10))
    names = list(ANALYSES)
    for name in names[:-1]:
        session.noise_floor(pair, ANALYSES[name], None)
        assert ("fp64_bridge", "m") in session._memo
    session.noise_floor(pair, ANALYSES[names[-1]], None)
    assert not [k for k in session._memo if k[0].startswith("fp64")]
    assert set(session.noise_floors) == {("m", name) for name in names}
