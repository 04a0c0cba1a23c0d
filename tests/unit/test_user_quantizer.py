"""User quantizers (qcheck/quantize/user.py, user_apply.py): naming and loading one, and what it
returns taken as the quantized twin or refused like a checkpoint's tensors."""

from __future__ import annotations

import textwrap

import pytest
import torch

from qcheck.data.calibration import Calibration, token_digest
from qcheck.models.digest import model_digest
from qcheck.quantize.apply import quantize_model
from qcheck.quantize.linears import get_rows, named_block_linears, set_rows
from qcheck.quantize.spec import parse_quant_spec
from qcheck.quantize.user import UserQuantizer, load_target, parse_quantizer_option, user_quantizers
from qcheck.quantize.user_apply import ReturnRefused, run_user_quantizer

from helpers import build_tiny

SPEC = parse_quant_spec("user:mine-w4")


def plain_rtn(model, calibration, options):
    """Symmetric round to nearest, one scale per output row: qcheck's `rtn` grid, written out."""
    half = 2 ** (options.bits - 1)
    for _, module in named_block_linears(model):
        w = get_rows(module)
        scale = w.abs().amax(dim=1, keepdim=True) / (half - 1)
        set_rows(module, torch.round(w / scale).clamp(-half, half - 1) * scale)
    return model


def calibration(n: int = 4, seq_len: int = 8) -> Calibration:
    tokens = torch.randint(0, 256, (n, seq_len), generator=torch.Generator().manual_seed(0))
    return Calibration(tokens, "tokens for the test", token_digest(tokens))


def run(fn, fp, spec=SPEC, calib=None):
    return run_user_quantizer(UserQuantizer(spec.name, "tests:fn", "the test", fn), fp, spec,
                              calib or calibration(), name="tiny")


# --- naming and loading ------------------------------------------------------------------

@pytest.mark.parametrize("value, expected", [
    ("my_kernels.rtn:quantize", ("quantize", "my_kernels.rtn:quantize")),
    ("fast=my_kernels.rtn:quantize", ("fast", "my_kernels.rtn:quantize")),
    ("pkg:Kernels.rtn4", ("rtn4", "pkg:Kernels.rtn4")),
    (" v2.1=pkg:fn ", ("v2.1", "pkg:fn")),
])
def test_an_option_value_gives_a_name_and_a_target(value, expected):
    assert parse_quantizer_option(value) == expected


@pytest.mark.parametrize("value, why", [
    ("my_kernels.quantize", "expected [NAME=]module:callable"),
    ("my-rtn=pkg:fn", "name 'my-rtn' must be letters"),
    ("gptq=pkg:fn", "'gptq' is qcheck's built-in method gptq"),
    ("pkg:rtn", "'rtn' is qcheck's built-in method rtn; give yours another name (--qcheck-quantizer NAME=module:callable)"),
])
def test_a_malformed_option_value_is_named_with_the_fix(value, why):
    with pytest.raises(ValueError) as error:
        parse_quantizer_option(value)
    assert str(error.value).startswith(f"--qcheck-quantizer {value}: ") and why in str(error.value)


@pytest.fixture
def scratch(tmp_path, monkeypatch):
    """A module `scratch_quantizers` on sys.path (unloaded again after the test)."""
    (tmp_path / "scratch_quantizers.py").write_text(textwrap.dedent("""
        NOT_CALLABLE = 3
        def fn(model, calibration, options):
            return model
        class Kernels:
            @staticmethod
            def rtn(model, calibration, options):
                return model
    """))
    (tmp_path / "broken_quantizers.py").write_text("raise RuntimeError('no GPU here')\n")
    (tmp_path / "needy_quantizers.py").write_text("import not_installed_at_all\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for name in ("scratch_quantizers", "broken_quantizers", "needy_quantizers"):
        monkeypatch.delitem(__import__("sys").modules, name, raising=False)
    return tmp_path


def test_a_target_loads_a_function_or_a_nested_attribute(scratch):
    import scratch_quantizers

    assert load_target("scratch_quantizers:fn", "here") is scratch_quantizers.fn
    assert load_target("scratch_quantizers:Kernels.rtn", "here") is scratch_quantizers.Kernels.rtn


@pytest.mark.parametrize("target, why", [
    ("nowhere_at_all:fn", "module nowhere_at_all does not import (ModuleNotFoundError: No module named "
                          "'nowhere_at_all'); put it on sys.path"),
    ("needy_quantizers:fn", "module needy_quantizers does not import (ModuleNotFoundError: No module named "
                            "'not_installed_at_all')"),
    ("broken_quantizers:fn", "importing broken_quantizers raised RuntimeError: no GPU here; fix the module"),
    ("scratch_quantizers:missing", "scratch_quantizers has no attribute 'missing'"),
    ("scratch_quantizers:Kernels.gptq", "scratch_quantizers.Kernels has no attribute 'gptq'"),
    ("scratch_quantizers:NOT_CALLABLE", "scratch_quantizers:NOT_CALLABLE is a int, not callable"),
])
def test_a_target_that_does_not_load_is_named_with_the_fix(scratch, target, why):
    with pytest.raises(ValueError) as error:
        load_target(target, f"--qcheck-quantizer {target}")
    assert str(error.value).startswith(f"--qcheck-quantizer {target}: ") and why in str(error.value)


def test_quantizers_by_name_from_options_and_the_entry_points_that_are_used(scratch):
    installed = {"ep": [("scratch_quantizers:Kernels.rtn", "demo 1.0")], "ghost": [("nowhere_at_all:fn", "ghost 2.0")]}
    found = user_quantizers(["scratch_quantizers:fn", "scratch_quantizers:fn"], ["ep"], installed)
    assert sorted(found) == ["ep", "fn"] and not found["fn"].installed and found["ep"].installed
    assert found["ep"].origin == "entry point ep = scratch_quantizers:Kernels.rtn (demo 1.0, group qcheck.quantizers)"
    # an installed quantizer no --qcheck-quant names is never imported
    assert sorted(user_quantizers([], [], installed)) == []
    with pytest.raises(ValueError, match=r"entry point ghost = nowhere_at_all:fn \(ghost 2.0.*module nowhere_at_all "
                                         r"does not import"):
        user_quantizers([], ["ghost"], installed)


@pytest.mark.parametrize("values, used, why", [
    (["x=scratch_quantizers:fn", "x=scratch_quantizers:Kernels.rtn"], [],
     "--qcheck-quantizer x=scratch_quantizers:Kernels.rtn: the name x is taken by --qcheck-quantizer "
     "x=scratch_quantizers:fn; name one of them NAME=module:callable"),
    (["ep=scratch_quantizers:fn"], [], "the name ep is taken by the installed entry point ep = "
                                       "scratch_quantizers:Kernels.rtn (demo 1.0, group qcheck.quantizers)"),
    ([], ["nobody"], "--qcheck-quant user:nobody-...: no user quantizer nobody; name one with --qcheck-quantizer "
                     "nobody=module:callable, or install a package with an entry point nobody in group "
                     "qcheck.quantizers (installed: ep, twice)"),
    ([], ["twice"], "2 installed entry points are named twice"),
])
def test_a_name_clash_or_an_unknown_name_is_refused(scratch, values, used, why):
    installed = {"ep": [("scratch_quantizers:Kernels.rtn", "demo 1.0")],
                 "twice": [("a:fn", "a 1.0"), ("b:fn", "b 1.0")]}
    with pytest.raises(ValueError) as error:
        user_quantizers(values, used, installed)
    assert why in str(error.value)


# --- running one -------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["gpt2", "neox", "llama"])
def test_the_twin_holds_the_returned_block_linears_and_shares_the_rest(family):
    fp = build_tiny(family)
    before = {k: v.clone() for k, v in fp.state_dict().items()}
    quantized = run(plain_rtn, fp)
    reference, _ = quantize_model(fp, parse_quant_spec("rtn-w4"))  # the same grid, qcheck's kernel
    assert all(torch.equal(a, b) for a, b in zip(quantized.model.state_dict().values(), reference.state_dict().values()))
    assert all(torch.equal(v, before[k]) for k, v in fp.state_dict().items())  # the FP model untouched
    own = {f"{n}.weight" for n, _ in named_block_linears(fp)}
    fp_params = dict(fp.named_parameters())
    for name, tensor in quantized.model.named_parameters():
        assert (tensor is fp_params[name]) == (name not in own), name
    layers = {layer.name: layer for layer in quantized.report.layers}
    assert list(layers) == [n for n, _ in named_block_linears(fp)]
    for name, module in named_block_linears(fp):
        W, Q = get_rows(module), get_rows(quantized.model.get_submodule(name))
        assert layers[name].weight_rel_error == pytest.approx(float((W - Q).norm() / W.norm()), rel=1e-6)
        assert layers[name].weight_rel_error > 0
    assert (quantized.spec, quantized.from_cache, quantized.key) == (SPEC, False, model_digest(quantized.model))
    assert quantized.notes[0].startswith("user quantizer mine = tests:fn returned the model: its ")
    assert "not cached" in quantized.notes[0]


def test_it_gets_a_copy_the_calibration_tokens_and_the_options():
    fp, calib, seen = build_tiny("neox"), calibration(3, 5), {}
    spec = parse_quant_spec("user:mine-w3-g16-asym-n3-len5")

    def spy(model, tokens, options):
        seen.update(model=model, tokens=tokens.clone(), options=options)
        tokens.zero_()  # the caller's tokens must not change
        return plain_rtn(model, tokens, options)

    quantized = run(spy, fp, spec, calib)
    assert seen["model"] is not fp and type(seen["model"]) is type(fp)
    assert torch.equal(seen["tokens"], calib.tokens) and calib.tokens.any() and seen["options"] == spec
    assert (quantized.calibration_source, quantized.calibration_digest) == (calib.source, calib.digest)


def test_a_state_dict_of_the_block_linears_alone_is_enough():
    fp = build_tiny("gpt2")
    def only_linears(model, tokens, options):
        plain_rtn(model, tokens, options)
        return {f"{n}.weight": m.weight for n, m in named_block_linears(model)}
    quantized = run(only_linears, fp)
    reference = run(plain_rtn, fp)
    assert quantized.key == reference.key
    assert "returned a state dict of 8 tensors: its 8 block linears are used (as float32); not cached" in quantized.notes[0]


def test_other_tensors_may_come_back_rounded_to_their_own_dtype_only():
    fp = build_tiny("neox")
    def bf16_embeddings(model, tokens, options):
        state = plain_rtn(model, tokens, options).state_dict()
        return {**state, "gpt_neox.embed_in.weight": state["gpt_neox.embed_in.weight"].bfloat16()}
    quantized = run(bf16_embeddings, fp)
    assert "(1 of them to their dtype's rounding)" in quantized.notes[0]
    assert quantized.key == run(plain_rtn, fp).key  # the FP embedding is what the twin holds

    def rounded_but_float32(model, tokens, options):
        state = plain_rtn(model, tokens, options).state_dict()
        return {**state, "gpt_neox.embed_in.weight": state["gpt_neox.embed_in.weight"].bfloat16().float()}
    with pytest.raises(ReturnRefused, match=r"gpt_neox.embed_in.weight differs from the FP model's at \d+ of 8192 "
                                            r"values, more than rounding to float32 allows"):
        run(rounded_but_float32, fp)


def _edit(key, change):
    """A quantizer that returns plain RTN's state dict with `key` replaced by change(tensor)."""
    def fn(model, tokens, options):
        state = plain_rtn(model, tokens, options).state_dict()
        return {**state, key: change(state[key])}
    return fn


def _nan_at_0(t):
    t = t.clone()
    t.view(-1)[0] = float("nan")
    return t


def _inf_at_0(t):
    t = t.clone()
    t.view(-1)[0] = float("inf")
    return t


QKV = "gpt_neox.layers.0.attention.query_key_value"
MLP_IN = "gpt_neox.layers.0.mlp.dense_h_to_4h"
REFUSALS = {
    "None": (lambda model, tokens, options: None,
             "returned NoneType (a function that quantizes in place must still return the model), neither an "
             "nn.Module nor a state dict; return the model you were given"),
    "a string": (lambda model, tokens, options: "done", "returned str, neither an nn.Module nor a state dict"),
    "another architecture": (lambda model, tokens, options: build_tiny("gpt2"),
                             "returned a GPT2LMHeadModel but the FP model is a GPTNeoXForCausalLM: another "
                             "architecture"),
    "another configuration": (lambda model, tokens, options: build_tiny("neox", layer_norm_eps=1e-3),
                              "returned a model of another configuration (returned vs FP: layer_norm_eps 0.001 vs 1e-05)"),
    "a state dict of another architecture": (lambda model, tokens, options: build_tiny("gpt2").state_dict(),
                                             "what it returned holds none of the FP model's 8 block linear weights "
                                             "(gpt_neox.layers.0.attention.query_key_value.weight, ...); it has "
                                             "transformer.h.0.attn.c_attn.bias, transformer.h.0.attn.c_attn.weight, "
                                             "...: another architecture"),
    "a mapping of non-tensors": (lambda model, tokens, options: {"a": 1},
                                 "returned a mapping whose entry 'a' is a int, not a state dict"),
    "a missing block linear": (lambda model, tokens, options: {k: v for k, v in model.state_dict().items()
                                                                if k != f"{MLP_IN}.weight"},
                               f"missing 1 of the 8 block linear weights ({MLP_IN}.weight, ...)"),
    "no block linear": (lambda model, tokens, options: {"gpt_neox.embed_in.weight": model.gpt_neox.embed_in.weight},
                        "holds none of the FP model's 8 block linear weights"),
    "a transposed weight": (_edit(f"{MLP_IN}.weight", lambda t: t.T),
                            f"{MLP_IN}.weight is [32, 128], the FP model's is [128, 32]"),
    "NaN in a block linear": (_edit(f"{QKV}.weight", _nan_at_0), f"{QKV}.weight holds 1 NaN/inf value(s)"),
    "inf in a bias": (_edit(f"{QKV}.bias", _inf_at_0), f"{QKV}.bias holds 1 NaN/inf value(s)"),
    "packed integer weights": (_edit(f"{QKV}.weight", lambda t: t.to(torch.int8)),
                               f"{QKV}.weight is int8: a block linear's weight must be floats"),
    "a changed norm": (_edit("gpt_neox.final_layer_norm.weight", lambda t: t + 1e-3),
                       "gpt_neox.final_layer_norm.weight differs from the FP model's at 32 of 32 values, more than "
                       "rounding to float32 allows (worst gpt_neox.final_layer_norm.weight["),
    "an extra packed tensor": (lambda model, tokens, options: {**plain_rtn(model, tokens, options).state_dict(),
                                                               f"{QKV}.qweight": torch.zeros(4, 96, dtype=torch.int32)},
                               f"unexpected tensor(s) {QKV}.qweight: the FP model has no such tensor (packed weights"),
}


@pytest.mark.parametrize("what", REFUSALS)
def test_what_cannot_be_certified_is_refused_naming_it_and_the_fix(what):
    fn, why = REFUSALS[what]
    with pytest.raises(ReturnRefused) as error:
        run(fn, build_tiny("neox"))
    message = str(error.value)
    assert message.startswith("user quantizer user:mine-w4 (tests:fn) on tiny: ") and why in message, message
    assert message.endswith("with only the block linears' weights changed, dequantized to floats")


def test_the_fp_model_itself_is_refused():
    fp = build_tiny("neox")
    with pytest.raises(ReturnRefused, match="returned the FP model itself, which every case of the run shares"):
        run(lambda model, tokens, options: fp, fp)


def test_the_calibration_is_the_one_gptq_gets_for_the_same_options(tmp_path):
    from qcheck.quantize.cache import cached_calibration

    fp = build_tiny("neox")
    common = dict(weight_digest=model_digest(fp), cache_dir=tmp_path)
    user = cached_calibration(fp, parse_quant_spec("user:mine-w4-n6-len12-seed3"), **common)
    gptq = cached_calibration(fp, parse_quant_spec("gptq-w4-n6-len12-seed3"), **common)
    other = cached_calibration(fp, parse_quant_spec("gptq-w4-n6-len12-seed4"), **common)
    assert user.tokens.shape == (6, 12) and torch.equal(user.tokens, gptq.tokens) and user.digest == gptq.digest
    assert user.digest != other.digest
