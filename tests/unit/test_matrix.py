"""The certification matrix: default cases, command-line additions, deselection."""

from qcheck.pair import Case
from qcheck.quantize.spec import parse_quant_spec
from qcheck.suite.matrix import DEFAULT_QUANTS, build_cases, is_selected

ZOO = ["zoo-a", "zoo-b"]
RTN_W4, GPTQ_W4, GPTQ_W4_G128_ACT = (parse_quant_spec(t) for t in ("rtn-w4", "gptq-w4", "gptq-w4-g128-act"))


def test_default_matrix_is_every_zoo_model_times_the_default_quantizers():
    cases = build_cases(ZOO, [], [])
    assert cases == [Case(m, q) for m in ZOO for q in DEFAULT_QUANTS]


def test_command_line_adds_cases_and_never_removes_default_ones():
    cases = build_cases(ZOO, ["gpt2"], [GPTQ_W4_G128_ACT])
    assert set(build_cases(ZOO, [], [])) <= set(cases)
    assert Case("gpt2", GPTQ_W4_G128_ACT) in cases
    assert Case("zoo-a", GPTQ_W4_G128_ACT) not in cases  # only the named model gets the named quant


def test_a_named_model_alone_gets_every_default_quantizer():
    cases = build_cases(ZOO, ["gpt2"], [])
    assert {c.quant for c in cases if c.model == "gpt2"} == set(DEFAULT_QUANTS)


def test_selection_follows_the_command_line():
    assert is_selected(Case("zoo-a", RTN_W4), [], [])
    assert not is_selected(Case("zoo-a", RTN_W4), ["zoo-b"], [])
    assert not is_selected(Case("zoo-a", RTN_W4), [], [GPTQ_W4])
    assert is_selected(Case("zoo-a", GPTQ_W4), ["zoo-a"], [GPTQ_W4])


def test_a_case_id_is_the_model_and_the_canonical_quantizer():
    assert [c.id for c in build_cases(ZOO, [], [])][:2] == ["zoo-a-rtn-w8", "zoo-a-rtn-w4"]
    assert Case("gpt2", parse_quant_spec("gptq-act-g128-w4")).id == "gpt2-gptq-w4-g128-act"
