"""qcheck's pytest plugin, the `pytest11` entry point `qcheck` (pyproject.toml): its options and
markers in every project where qcheck is installed, also in xdist workers. pytest picks its
rootdir before plugins load, so a directory value written with a space can be taken for a test
path: qcheck/suite/rootdir.py makes the choice again.

This module imports nothing of the library: pytest loads entry points before jaxtyping's import
hook is installed (pytest.ini `--jaxtyping-packages`), and a library module imported here would
escape its shape checks. At configure time it registers the hooks and fixtures
(qcheck/suite/hooks.py) and the baselines (qcheck/suite/baselines.py), which import the library.
"""

from __future__ import annotations

import pytest

# jaxtyping's hook calls `qcheck.suite.typechecker.typecheck` from every instrumented module: it
# must be loaded (it imports only beartype).
import qcheck.suite.typechecker  # noqa: F401


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("qcheck", "qcheck: certify quantized models mechanistically")
    group.addoption("--qcheck-model", action="append", default=[], metavar="NAME",
                    help="certify only this model (repeatable): a zoo name (zoo-...), a Hugging "
                         "Face id or a save_pretrained directory. Default: every zoo model.")
    group.addoption("--qcheck-quant", action="append", default=[], metavar="SPEC",
                    help="certify only this quantizer (repeatable), e.g. rtn-w4, gptq-w4-g128-act. "
                         "Default: the reviewed matrix in qcheck/suite/matrix.py.")
    group.addoption("--qcheck-checkpoint", action="append", default=[], metavar="DIR",
                    help="also certify this GPTQ-packed checkpoint (repeatable; AutoGPTQ/GPTQModel "
                         "layout, safetensors) as quantizer checkpoint:<folder name>, against the one "
                         "--qcheck-model it was quantized from.")
    group.addoption("--qcheck-quantizer", action="append", default=[], metavar="[NAME=]MODULE:CALLABLE",
                    help="also certify your own quantizer (repeatable): quantize(model, calibration, "
                         "options) -> nn.Module | state dict, given a copy of the FP model, the "
                         "calibration token ids (n_samples, seq_len) and the QuantSpec options; never "
                         "cached. It runs as user:NAME-w4 (NAME: the callable's name unless given) "
                         "beside the selection, or as each --qcheck-quant user:NAME-w3-g32... that names "
                         "it. Installed packages register NAME = module:callable in the entry-point group "
                         "qcheck.quantizers. README, \"Your own quantizer\".")
    group.addoption("--qcheck-device", default="cpu", metavar="DEVICE",
                    help="auto, cpu, cuda or cuda:N (under xdist each worker takes its own GPU). "
                         "Default: cpu.")
    group.addoption("--qcheck-induction-rule", default=None, metavar="RULE",
                    help="induction-head rule: fixed (a fixed score before and after) or relative "
                         "(mean + 2 sigma of FP scores, survival above half); the definitions are in "
                         "docs/analyses.md. Default: fixed, or [tool.qcheck.thresholds] induction_rule.")
    group.addoption("--qcheck-feature-rule", default=None, choices=("positions", "study"),
                    help="SAE feature survival rule: positions (>= 80%% of a feature's top-10 positions kept) "
                         "or study (>= 80%% of the token ids at them, as the study's code); docs/analyses.md. "
                         "Default: positions, or [tool.qcheck.thresholds] feature_survival_rule.")
    group.addoption("--qcheck-sae", action="append", default=[], metavar="[MODEL=]DIR",
                    help="a SAELens SAE directory (cfg.json + sae_weights.safetensors) to use as the "
                         "features basis, at its own hook, instead of qcheck's: for MODEL, or for every "
                         "model (repeatable). README, \"SAE basis\".")
    group.addoption("--qcheck-borderline", default="pass", choices=("pass", "fail"),
                    help="a criterion whose 95%% interval straddles its threshold is borderline: "
                         "pass (default: the test passes and the report names it) or fail.")
    group.addoption("--qcheck-noise-floor", default="auto", choices=("auto", "on", "off"),
                    help="measure each analysis between the FP model in float32 and in float64 and report it "
                         "beside the results (costs a float64 copy of the FP model): auto (default: models up "
                         "to 100M parameters), on or off. qcheck/noise_floor.py.")
    group.addoption("--qcheck-seeds", default="1", metavar="N",
                    help="draw N independent induction sets of 50 x [BOS, 25 random, same 25] (the induction "
                         "seed, then +1, ...); the circuits intervals are over all 50*N sequences. Default: 1 (the "
                         "set the baselines were recorded on).")
    group.addoption("--qcheck-threshold", action="append", default=[], metavar="[MODEL:]KEY=VALUE",
                    help="override a threshold, for every model or one (repeatable), e.g. "
                         "min_resid_cosine=0.9. Keys: THRESHOLDS in qcheck/analyses/<name>.py.")
    group.addoption("--qcheck-cache", default=None, metavar="DIR",
                    help="cache of quantized weights and SAEs (default: $QCHECK_CACHE_DIR or "
                         "~/.cache/qcheck).")
    group.addoption("--qcheck-require-baselines", action="store_true", default=False,
                    help="fail a certification test of the default matrix that has no comparable "
                         "baseline (missing, or recorded on another device or dtype) instead of "
                         "warning. .ci/run sets it.")
    group.addoption("--qcheck-report", default=None, metavar="DIR",
                    help="write a report to DIR: results.json, a certificate per (model, quantizer), "
                         "plots, the scaling table and index.html. DIR must be new, empty or hold an "
                         "earlier report, which is replaced.")




@pytest.hookimpl(tryfirst=True)
def pytest_load_initial_conftests(early_config: pytest.Config, args: list[str]) -> None:
    from qcheck.suite.rootdir import rechoose_rootdir

    rechoose_rootdir(early_config, args)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "xdist_group(name): group tests on one xdist worker "
                                       "(registered here for -p no:xdist runs)")
    from qcheck.suite import baselines, hooks

    for module in (hooks, baselines):
        if not config.pluginmanager.is_registered(module):
            config.pluginmanager.register(module, module.__name__)
    hooks.configure(config)
