"""The certification matrix: which (model, quantizer) cases exist, and which are expected to fail.

The default matrix is every zoo model x DEFAULT_QUANTS. Command-line models and quantizers are
*added* to it (never substituted), then everything not asked for is deselected: syrupy would
otherwise treat the other baselines as unused and delete them on --snapshot-update. A checkpoint
(--qcheck-checkpoint, quantizer `checkpoint:<name>`) belongs to one FP model: it is paired with
the command-line models only, and adds to the selected quantizers without replacing the defaults.

Expected failures of the matrix are declared in tests/certify/expected_failures.toml (read by
qcheck/suite/expected.py, judged by qcheck/verdict.py).
"""

from __future__ import annotations

from qcheck.pair import Case
from qcheck.quantize.spec import CheckpointRef, QuantSpec, parse_quant_spec

# 8-bit RTN is the control that must pass, 2-bit RTN the control that must fail; 4 and 3 bits
# under both methods are where the study's question lives.
DEFAULT_QUANTS = tuple(parse_quant_spec(text) for text in
                       ("rtn-w8", "rtn-w4", "gptq-w4", "rtn-w3", "gptq-w3", "rtn-w2", "gptq-w2"))


def build_cases(zoo: list[str], models: list[str], quants: list[QuantSpec],
                checkpoints: list[CheckpointRef] = ()) -> list[Case]:
    """Default matrix plus every combination the command line names, in a stable order."""
    default = {Case(m, q) for m in zoo for q in DEFAULT_QUANTS}
    all_models = list(dict.fromkeys([*zoo, *models]))
    all_quants = list(dict.fromkeys([*DEFAULT_QUANTS, *quants, *checkpoints]))
    named = {Case(m, q) for m in (models or all_models) for q in (quants or DEFAULT_QUANTS)
             if m in models or q in quants}
    named |= {Case(m, c) for m in models for c in checkpoints}
    return sorted(default | named, key=lambda c: (all_models.index(c.model), all_quants.index(c.quant)))


def is_selected(case: Case, models: list[str], quants: list[QuantSpec],
                checkpoints: list[CheckpointRef] = ()) -> bool:
    """With no --qcheck-quant, only the default quantizers run (plus a named checkpoint)."""
    model_ok = not models or case.model in models
    quant_ok = case.quant in quants if quants else case.quant in DEFAULT_QUANTS
    return model_ok and (quant_ok or case.quant in checkpoints)
