"""The certification matrix: which (model, quantizer) cases exist, and which are expected to fail.

The default matrix is every zoo model x DEFAULT_QUANTS. Command-line models and quantizers are
*added* to it (never substituted), then everything not asked for is deselected: syrupy would
otherwise treat the other baselines as unused and delete them on --snapshot-update. A checkpoint
(--qcheck-checkpoint, quantizer `checkpoint:<name>`) belongs to one FP model: it is paired with
the command-line models only, and adds to the selected quantizers without replacing the defaults.
So does a user quantizer (--qcheck-quantizer) that no --qcheck-quant names: it runs as
`user:NAME-w4` (default_user_quants) beside the selection, for the named models or every zoo model.

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


# A user quantizer named by --qcheck-quantizer alone runs at 4 bits, the bit width the study is about.
DEFAULT_USER_BITS = 4


def default_user_quants(names: list[str], quants: list[QuantSpec]) -> list[QuantSpec]:
    """`user:NAME-w4` for each --qcheck-quantizer NAME that no --qcheck-quant `user:NAME-...` names."""
    named = {q.name for q in quants if q.method == "user"}
    return [QuantSpec("user", DEFAULT_USER_BITS, name=name) for name in names if name not in named]


def build_cases(zoo: list[str], models: list[str], quants: list[QuantSpec],
                added: list[QuantSpec | CheckpointRef] = ()) -> list[Case]:
    """Default matrix plus every combination the command line names, in a stable order. `added`:
    quantizers that join whatever is selected (checkpoints, default_user_quants), paired with the
    command-line models, or with every model when none is named (a checkpoint always names one)."""
    default = {Case(m, q) for m in zoo for q in DEFAULT_QUANTS}
    all_models = list(dict.fromkeys([*zoo, *models]))
    all_quants = list(dict.fromkeys([*DEFAULT_QUANTS, *quants, *added]))
    named = {Case(m, q) for m in (models or all_models) for q in (quants or DEFAULT_QUANTS)
             if m in models or q in quants}
    named |= {Case(m, q) for m in (models or all_models) for q in added}
    return sorted(default | named, key=lambda c: (all_models.index(c.model), all_quants.index(c.quant)))


def is_selected(case: Case, models: list[str], quants: list[QuantSpec],
                added: list[QuantSpec | CheckpointRef] = ()) -> bool:
    """With no --qcheck-quant, only the default quantizers run (plus the `added` ones)."""
    model_ok = not models or case.model in models
    quant_ok = case.quant in quants if quants else case.quant in DEFAULT_QUANTS
    return model_ok and (quant_ok or case.quant in added)
