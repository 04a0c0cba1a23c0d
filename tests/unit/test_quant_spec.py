"""QuantSpec: the short form round-trips and bad input is rejected with the grammar shown."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qcheck.quantize.spec import GRAMMAR, METHODS, CheckpointRef, QuantSpec, parse_quant_spec

CANONICAL = [
    "rtn-w4", "rtn-w3-g64", "gptq-w4", "gptq-w4-g128-act", "rtn-w4-asym", "gptq-w4-damp0.1",
    "gptq-study-w4", "rtn-w2-ref", "rtn-w8-g16", "gptq-w3-g32-asym-act-static-bs64-noseq",
    "gptq-w4-wikitext2-n32-len512-seed42", "gptq-w4-n8-file:/tmp/my-calib-set.txt", "checkpoint",
    "checkpoint-w4-g128", "gptq-w4-damp0.00001", "user:my_rtn-w4", "user:kernels.v2-w3-g32-asym-act-n8-len16",
    "user:q-w4-file:/tmp/my-calib.txt", "gptq-w4-g32-ref-gar-blockfit-damp0.05-bf16-n32", "rtn-w4-g32-ref-bf16",
    "gptq-w4-g32-act-blockfit",
]


@pytest.mark.parametrize("text", CANONICAL)
def test_canonical_forms_round_trip(text):
    spec = parse_quant_spec(text)
    assert str(spec) == text
    assert parse_quant_spec(str(spec)) == spec


def test_fields_of_a_full_spec():
    spec = parse_quant_spec("gptq-w3-g32-asym-act-static-damp0.05-bs64-noseq-wikitext2-n32-len256-seed42")
    assert spec == QuantSpec("gptq", 3, group_size=32, sym=False, act_order=True, static_groups=True, damp=0.05,
                             block_size=64, true_sequential=False, calibration="wikitext2", n_samples=32,
                             seq_len=256, seed=42)
    assert spec.needs_calibration and not parse_quant_spec("rtn-w4").needs_calibration


def test_defaults():
    spec = parse_quant_spec("gptq-w4")
    assert (spec.group_size, spec.sym, spec.grid, spec.damp, spec.block_size, spec.true_sequential) == \
        (None, True, "study", 0.01, 128, True)
    assert (spec.calibration, spec.n_samples, spec.seq_len, spec.seed) == ("sampled", 128, None, 0)


def test_tokens_in_any_order_give_the_canonical_form():
    assert str(parse_quant_spec("gptq-act-g128-w4")) == "gptq-w4-g128-act"
    assert str(parse_quant_spec("gptq-w4-sampled")) == "gptq-w4"  # the default is omitted
    assert str(parse_quant_spec("  rtn-w4 ")) == "rtn-w4"


@pytest.mark.parametrize("text, without_bits", [
    ("gptq-w4-g128-act", "gptq-g128-act"), ("rtn-w8", "rtn"), ("gptq-study-w3-n32", "gptq-study-n32"),
    ("gptq-w4-file:/data/a-w8.txt", "gptq-file:/data/a-w8.txt"), ("checkpoint-w4-g32", "checkpoint-g32"),
])
def test_without_bits_drops_the_bit_width_only(text, without_bits):
    assert parse_quant_spec(text).without_bits == without_bits


def test_a_checkpoint_ref_is_named_whole():
    ref = CheckpointRef("gptqmodel-gptq-w4g32")
    assert str(ref) == ref.without_bits == "checkpoint:gptqmodel-gptq-w4g32" and ref.bits is None


def test_a_user_quantizer_is_a_spec_with_a_name():
    spec = parse_quant_spec("user:my_rtn-w3-g32-damp0.1")
    assert spec == QuantSpec("user", 3, group_size=32, damp=0.1, name="my_rtn")
    assert (spec.without_bits, spec.bits, spec.needs_calibration) == ("user:my_rtn-g32-damp0.1", 3, True)
    assert spec != QuantSpec("user", 3, group_size=32, damp=0.1, name="other")


def test_only_a_user_quantizer_has_a_name():
    with pytest.raises(ValueError, match="name='x' only applies to user quantizers"):
        QuantSpec("rtn", 4, name="x")
    with pytest.raises(ValueError, match="user quantizer name None"):
        QuantSpec("user", 4)


def test_file_source_keeps_hyphens_in_the_path():
    spec = parse_quant_spec("gptq-w4-file:/data/wiki-text-2.txt")
    assert spec.calibration == "file:/data/wiki-text-2.txt" and spec.bits == 4


@pytest.mark.parametrize("text, why", [
    ("", "empty"),
    ("foo-w4", "unknown method 'foo'"),
    ("rtn", "missing the bit width"),
    ("rtn-w9", "bits=9 is out of range"),
    ("rtn-w1", "bits=1 is out of range"),
    ("rtn-w4-g100", "group_size=100 is not supported"),
    ("rtn-w4-act", "act_order only apply to gptq"),
    ("rtn-w4-n32", "n_samples only apply to gptq"),
    ("rtn-w4-asym-ref", "symmetric grids only"),
    ("gptq-w4-static", "static groups need a group size"),
    ("gptq-w4--act", "empty token"),
    ("gptq-w4-g128-g64", "'g64' repeats"),
    ("gptq-w4-damp0", "damp=0.0 must be a fraction"),
    ("gptq-w4-damp1e-5", "unknown token 'damp1e'"),
    ("gptq-w4-len1", "seq_len=1 must be >= 2"),
    ("gptq-w4-bs0", "block_size=0"),
    ("gptq-study-w4-bs64", "gptq-study has no lazy batching"),
    ("gptq-w4-int4", "unknown token 'int4'"),
    ("gptq-w4-gar", "(-gar) reorders within groups and needs a group size"),
    ("gptq-w4-g32-act-gar", "cannot be combined with -act"),
    ("gptq-w4-g32-static-gar", "cannot be combined with -static"),
    ("rtn-w4-g32-gar", "group_aware only apply to gptq"),
    ("gptq-w4-blockfit", "needs a group size and no -static"),
    ("gptq-w4-g32-static-blockfit", "needs a group size and no -static"),
    ("gptq-study-w4-g32-blockfit", "gptq-study has no lazy-update blocks"),
    ("checkpoint-bf16", "a checkpoint was quantized already; drop -bf16"),
    ("gptq-w4-bf16-bf16", "'bf16' repeats"),
    ("user-w4", "a user quantizer is written user:NAME"),
    ("user:-w4", "user quantizer name '' must be letters"),
    ("user:rtn-w4", "'rtn' is qcheck's built-in method rtn"),
    ("user:checkpoint-w4", "'checkpoint' is qcheck's built-in method"),
    ("user:my_rtn", "missing the bit width, e.g. user:my_rtn-w4"),
    ("user:my-rtn-w4", "unknown token 'rtn'"),
    ("user:9lives-w4", "user quantizer name '9lives' must be letters"),
])
def test_malformed_specs_show_the_text_and_the_grammar(text, why):
    with pytest.raises(ValueError) as err:
        parse_quant_spec(text)
    message = str(err.value)
    assert why in message and repr(text.strip()) in message and GRAMMAR in message


def test_direct_construction_is_validated_too():
    with pytest.raises(ValueError, match="bits is required"):
        QuantSpec("gptq")
    with pytest.raises(ValueError, match="unknown method"):
        QuantSpec("awq", 4)
    with pytest.raises(ValueError, match="calibration="):
        QuantSpec("gptq", 4, calibration="file:")


@st.composite
def valid_specs(draw) -> QuantSpec:
    method = draw(st.sampled_from(["rtn", "gptq", "gptq-study", "user"]))
    group_size = draw(st.sampled_from([None, 16, 32, 64, 128]))
    sym = draw(st.booleans())
    grid = dict(bits=draw(st.integers(2, 8)), group_size=group_size, sym=sym,
                grid=draw(st.sampled_from(["study", "reference"])) if sym else "study")
    if method == "rtn":
        return QuantSpec(method, **grid)
    name = draw(st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,8}", fullmatch=True)
                .filter(lambda n: n not in METHODS)) if method == "user" else None
    return QuantSpec(method, **grid, act_order=draw(st.booleans()),
                     static_groups=group_size is not None and draw(st.booleans()),
                     damp=draw(st.floats(1e-6, 1.0)), name=name,
                     block_size=draw(st.integers(1, 1024)) if method in ("gptq", "user") else 128,
                     true_sequential=draw(st.booleans()),
                     calibration=draw(st.sampled_from(["sampled", "wikitext2", "file:/tmp/a-b.txt"])),
                     n_samples=draw(st.integers(1, 4096)), seq_len=draw(st.one_of(st.none(), st.integers(2, 4096))),
                     seed=draw(st.integers(0, 2**31)))


@given(valid_specs())
def test_every_valid_spec_round_trips(spec):
    assert parse_quant_spec(str(spec)) == spec
