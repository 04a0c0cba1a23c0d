"""GPTQ-packed checkpoints (qcheck/quantize/checkpoint/): export then import gives back the
in-memory quantized model, and every malformed or mismatched checkpoint is refused with a message
that names the file or tensor and the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from qcheck.data.calibration import token_digest
from qcheck.quantize.apply import quantize_model
from qcheck.quantize.linears import get_rows, named_block_linears
from qcheck.models.digest import model_digest
from qcheck.quantize.checkpoint import (CheckpointWarning, check_layout, check_tokenizer, checkpoint_name,
                                        export_checkpoint, load_checkpoint, open_checkpoint)
from qcheck.quantize.checkpoint.format import layout_of
from qcheck.quantize.spec import CheckpointRef, parse_quant_spec

from helpers import build_tiny

WEIGHTS = "model.safetensors"


def export(model, spec: str, directory: Path, calibration=None, **options) -> Path:
    return export_checkpoint(model, parse_quant_spec(spec), directory, calibration=calibration, **options)


def block_weights(model) -> dict[str, torch.Tensor]:
    return {name: get_rows(m) for name, m in named_block_linears(model)}


def edit_tensors(directory: Path, edit) -> None:
    tensors = load_file(directory / WEIGHTS)
    edit(tensors)
    save_file(tensors, directory / WEIGHTS)


def edit_config(directory: Path, **changes) -> None:
    path = directory / "quantize_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def refusal(model, directory: Path) -> str:
    with pytest.raises(ValueError) as error:
        load_checkpoint(model, directory, name="tiny")
    return str(error.value)


# --- the round trip -----------------------------------------------------------------------

VARIANTS = [("rtn-w4-g16", "v2"), ("rtn-w8", "v1"), ("rtn-w3-asym", "v2"), ("rtn-w2-g16-ref", "v1"),
            ("gptq-w4-g16-act", "v1"), ("gptq-w3-g32-asym-act", "v2"), ("gptq-w2", "v2")]


@pytest.mark.parametrize("spec, fmt", VARIANTS)
def test_float32_export_imports_to_the_in_memory_model_exactly(tiny_model, calibration_tokens, tmp_path, spec, fmt):
    before = model_digest(tiny_model)
    export(tiny_model, spec, tmp_path / "ckpt", calibration_tokens, format=fmt, dtype=torch.float32)
    loaded = load_checkpoint(tiny_model, tmp_path / "ckpt")
    in_memory, _ = quantize_model(tiny_model, parse_quant_spec(spec), calibration_tokens)
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), in_memory.state_dict().values()))
    assert model_digest(tiny_model) == before  # export and import work on copies


@pytest.mark.parametrize("spec, fmt", [("gptq-w4-g16-ref-gar-blockfit-bf16", "v1"), ("rtn-w4-g16-ref-bf16", "v2"),
                                       ("gptq-w3-g16-asym-act-bf16", "v2")])
def test_a_bf16_spec_exports_as_float16_exactly(tiny_model, calibration_tokens, tmp_path, spec, fmt):
    """-bf16 rounds the scales to float16 already, so the default float16 checkpoint is the
    in-memory twin exactly; -gar keeps g_idx in natural order, so it exports without act-order."""
    export(tiny_model, spec, tmp_path / "ckpt", calibration_tokens, format=fmt)
    loaded = load_checkpoint(tiny_model, tmp_path / "ckpt")
    in_memory, _ = quantize_model(tiny_model, parse_quant_spec(spec), calibration_tokens)
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), in_memory.state_dict().values()))
    if "gar" in spec:
        assert json.loads((tmp_path / "ckpt" / "quantize_config.json").read_text())["desc_act"] is False


def test_float16_export_rounds_the_scales_and_nothing_else(tiny_model, tmp_path):
    spec = parse_quant_spec("rtn-w4-g16")
    grids = {}
    quantize_model(tiny_model, spec, on_layer=grids.__setitem__)
    export(tiny_model, str(spec), tmp_path / "ckpt")
    loaded = block_weights(load_checkpoint(tiny_model, tmp_path / "ckpt").model)
    for name, q in grids.items():
        expected = q.scales.half().float()[:, q.g_idx] * (q.codes - q.zeros[:, q.g_idx]).float()
        assert torch.equal(loaded[name], expected)
        assert ((loaded[name] - q.weight).abs() <= 2 ** -11 * q.weight.abs()).all()


def test_loaded_checkpoint_is_described_like_a_cached_quantization(tiny_gpt2_lm, calibration_tokens, tmp_path):
    export(tiny_gpt2_lm, "gptq-w4-g16", tmp_path / "ckpt", calibration_tokens)
    loaded = load_checkpoint(tiny_gpt2_lm, tmp_path / "ckpt")
    assert str(loaded.spec) == "checkpoint-w4-g16" and not loaded.from_cache
    assert loaded.weight_digest == model_digest(tiny_gpt2_lm)
    assert loaded.calibration_source == "tokens given by the caller"
    assert loaded.calibration_digest == token_digest(calibration_tokens)
    assert [layer.name for layer in loaded.report.layers] == list(block_weights(tiny_gpt2_lm))
    assert all(0 < layer.weight_rel_error < 0.5 for layer in loaded.report.layers)
    assert loaded.key == load_checkpoint(tiny_gpt2_lm, tmp_path / "ckpt").key  # the files' sha256
    assert next(loaded.model.parameters()).dtype == torch.float32 and not loaded.model.training


def test_config_in_config_json_and_format_keys(tiny_gpt2_lm, tmp_path):
    ckpt = export(tiny_gpt2_lm, "rtn-w4-asym", tmp_path / "ckpt")
    (ckpt / "quantize_config.json").unlink()               # config.json's quantization_config remains
    assert open_checkpoint(ckpt).quant.format == "v2" and "config.json" in open_checkpoint(ckpt).quant.source
    config = json.loads((ckpt / "config.json").read_text())
    del config["quantization_config"]["checkpoint_format"]  # missing: v1, as GPTQModel assumes
    (ckpt / "config.json").write_text(json.dumps(config))
    assert open_checkpoint(ckpt).quant.format == "v1"
    (ckpt / "quantize_config.json").write_text(json.dumps({**config["quantization_config"], "bits": 8}))
    with pytest.raises(ValueError, match=r"disagree on bits \(8 vs 4\)"):
        open_checkpoint(ckpt)


# --- refusals -----------------------------------------------------------------------------

def test_a_linear_the_format_cannot_pack_is_refused_before_quantizing(tmp_path, monkeypatch):
    """Grouped-query attention at d_model 32: k_proj and v_proj have 2 x 8 = 16 rows, and the
    format packs 3-bit zero points 32 rows a word. Refused before GPTQ runs, naming the linear;
    4 bits packs the same model."""
    from qcheck.quantize import apply

    model = build_tiny("llama", hidden_size=32)
    monkeypatch.setattr(apply, "quantize_weight", lambda *a: pytest.fail("quantized before the refusal"))
    with pytest.raises(ValueError) as error:
        export(model, "gptq-w3", tmp_path / "w3", calibration=torch.zeros(2, 8, dtype=torch.long))
    assert str(error.value).startswith("export_checkpoint(gptq-w3): model.layers.0.self_attn.k_proj (16x32) has "
                                       "16 output rows: 16 values of 3 bits do not fill whole 32-bit words")
    assert str(error.value).endswith("the GPTQ format cannot store this linear at 3 bits: export at 4 or 8 bits")
    monkeypatch.undo()
    assert (export(model, "rtn-w4", tmp_path / "w4") / WEIGHTS).is_file()


@pytest.fixture
def ckpt(tiny_gpt2_lm, tmp_path) -> Path:
    return export(tiny_gpt2_lm, "rtn-w4-g16", tmp_path / "ckpt")


def test_another_architecture_is_refused(tmp_path):
    neox = export(build_tiny("neox"), "rtn-w4", tmp_path / "neox")
    message = refusal(build_tiny("gpt2"), neox)
    assert "config.json is for gpt_neox but the FP model tiny is gpt2; pass the FP model" in message
    (neox / "config.json").unlink()                         # without a config, the tensors tell
    message = refusal(build_tiny("gpt2"), neox)
    assert ("it quantizes none of the block linears of the FP model tiny (it has gpt_neox.layers.0.attention.dense, "
            "...; the FP model has transformer.h.0.attn.c_attn, ...): it is for another architecture") in message


@pytest.mark.parametrize("changes, message, without_config", [
    (dict(n_embd=64), "config.json describes another shape than the FP model tiny (checkpoint vs FP: n_embd 64 vs 32)",
     "transformer.h.0.attn.c_attn.qweight is I32 [8, 192], expected I32 [4, 96] for a 32->96 linear at 4 bits"),
    (dict(vocab_size=300), "describes another vocabulary than the FP model tiny (checkpoint vs FP: vocab_size 300 vs 256)",
     "transformer.wte.weight is [300, 32], the FP model's is [256, 32]"),
    (dict(activation_function="relu"), "describes another configuration than the FP model tiny (checkpoint vs FP: "
     "activation_function 'relu' vs 'gelu_new')", None),
])
def test_another_shape_or_vocabulary_is_refused(tiny_gpt2_lm, tmp_path, changes, message, without_config):
    other = export(build_tiny("gpt2", **changes), "rtn-w4", tmp_path / "other")
    assert message in refusal(tiny_gpt2_lm, other)
    (other / "config.json").unlink()                       # without a config, the tensor shapes tell
    if without_config is None:                             # same tensors: nothing left to tell them apart
        load_checkpoint(tiny_gpt2_lm, other)
    else:
        assert without_config in refusal(tiny_gpt2_lm, other)


def test_another_models_weights_are_refused(tiny_gpt2_lm, tmp_path):
    other = export(build_tiny("gpt2", seed=1), "rtn-w4", tmp_path / "other")
    assert ("transformer.h.0.attn.c_attn.bias differs from the FP model tiny's" in refusal(tiny_gpt2_lm, other)
            and "made from another model" in refusal(tiny_gpt2_lm, other))


def _tokenizer(directory: Path, words: list[str]) -> dict[str, int]:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {word: i for i, word in enumerate(words)}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token=words[0]))).save_pretrained(directory)
    return vocab


def test_tokenizer_mismatch_is_refused(ckpt):
    mine = _tokenizer(ckpt, ["<unk>", "a", "b"])
    check_tokenizer(open_checkpoint(ckpt), mine, "tiny")  # the same vocabulary passes
    with pytest.raises(ValueError, match=r"its tokenizer differs from the FP model tiny's \(3 vs 3 tokens"):
        check_tokenizer(open_checkpoint(ckpt), {"<unk>": 0, "a": 1, "c": 2}, "tiny")
    with pytest.raises(ValueError, match="ships a tokenizer but the FP model tiny reads raw bytes"):
        check_tokenizer(open_checkpoint(ckpt), None, "tiny")


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("transformer.h.1.mlp.c_proj.qzeros"), "missing tensor transformer.h.1.mlp.c_proj.qzeros"),
    (lambda t: t.update({"transformer.h.0.attn.c_attn.weight": torch.zeros(32, 96)}),
     "transformer.h.0.attn.c_attn.weight is stored beside transformer.h.0.attn.c_attn.qweight"),
    (lambda t: t.update({"extra.scale": torch.zeros(3)}), "unexpected tensor extra.scale"),
    (lambda t: t.update({"lm_head.qweight": torch.zeros(4, 256, dtype=torch.int32)}),
     "unexpected quantized module lm_head: qcheck quantizes only the linear maps inside the transformer blocks"),
    (lambda t: t.update({"transformer.h.0.mlp.c_fc.scales": torch.zeros(2, 64, dtype=torch.float16)}),
     "transformer.h.0.mlp.c_fc.scales is F16 [2, 64], expected F16 [2, 128] for a 32->128 linear at 4 bits"),
    (lambda t: t.update({"transformer.h.0.mlp.c_fc.qweight": t["transformer.h.0.mlp.c_fc.qweight"].long()}),
     "transformer.h.0.mlp.c_fc.qweight is I64 [4, 128], expected I32"),
    (lambda t: t["transformer.h.0.attn.c_proj.g_idx"].__setitem__(0, 7),
     "transformer.h.0.attn.c_proj.g_idx holds groups 0..7, outside 0..1"),
    (lambda t: t["transformer.h.0.attn.c_proj.scales"].__setitem__((0, 0), float("nan")),
     "transformer.h.0.attn.c_proj.scales holds 1 NaN/inf value(s)"),
])
def test_missing_extra_and_malformed_tensors_are_refused(tiny_gpt2_lm, ckpt, edit, message):
    edit_tensors(ckpt, edit)
    assert message in refusal(tiny_gpt2_lm, ckpt)


def test_unquantized_block_linear_is_refused(tiny_gpt2_lm, ckpt):
    def dequantized(t):
        for part in ("qweight", "qzeros", "scales", "g_idx"):
            t.pop(f"transformer.h.0.attn.c_attn.{part}")
        t["transformer.h.0.attn.c_attn.weight"] = torch.zeros(32, 96, dtype=torch.float16)
    edit_tensors(ckpt, dequantized)
    assert ("transformer.h.0.attn.c_attn is not quantized (no transformer.h.0.attn.c_attn.qweight; it is stored "
            "in full precision as .weight: partial quantization is not supported)") in refusal(tiny_gpt2_lm, ckpt)


@pytest.mark.parametrize("changes, message", [
    (dict(bits=5), "bits=5 is not supported; the GPTQ format defines (2, 3, 4, 8)"),
    (dict(group_size=256), "group_size=256 is not supported"),
    (dict(checkpoint_format="marlin"), "checkpoint_format 'marlin' is not supported"),
    (dict(quant_method="awq"), "quant_method 'awq' is not supported"),
    (dict(pack_dtype="int64"), "pack_dtype 'int64' is not supported"),
    (dict(lm_head=True), "lm_head: true — the unembedding is quantized"),
    (dict(dynamic={"+:.*attn.*": {"bits": 8}}), "per-module overrides (`dynamic`) are not supported"),
])
def test_unsupported_configs_are_refused(tiny_gpt2_lm, ckpt, changes, message):
    edit_config(ckpt, **changes)
    (ckpt / "config.json").unlink()  # one config, so the refusal is about it and not a conflict
    assert "quantize_config.json: " + message in refusal(tiny_gpt2_lm, ckpt)


def test_v1_zero_point_overflow_and_false_symmetry_are_refused(tiny_gpt2_lm, tmp_path):
    asym = export(tiny_gpt2_lm, "rtn-w4-asym", tmp_path / "asym")
    edit_config(asym, sym=True)
    (asym / "config.json").unlink()
    assert "says sym=true but" in refusal(tiny_gpt2_lm, asym)
    edit_config(asym, sym=False, checkpoint_format="gptq")
    edit_tensors(asym, lambda t: t["transformer.h.0.attn.c_attn.qzeros"].fill_(-1))  # AutoGPTQ's overflow
    assert ("transformer.h.0.attn.c_attn.qzeros: 96 zero point(s) read as 16, outside 0..15: format v1 "
            "stores zero − 1") in refusal(tiny_gpt2_lm, asym)


def test_truncated_and_corrupt_files_are_refused(tiny_gpt2_lm, ckpt):
    data = (ckpt / WEIGHTS).read_bytes()
    (ckpt / WEIGHTS).write_bytes(data[:-100])
    assert "model.safetensors is not a readable safetensors file (truncated or corrupt" in refusal(tiny_gpt2_lm, ckpt)
    (ckpt / WEIGHTS).write_bytes(b"\x07" + data[1:])
    assert "model.safetensors is not a readable safetensors file" in refusal(tiny_gpt2_lm, ckpt)
    (ckpt / "quantize_config.json").write_text('{"bits": 4, ')
    assert "quantize_config.json: not readable JSON" in refusal(tiny_gpt2_lm, ckpt)


def test_pickles_are_never_loaded(tiny_gpt2_lm, ckpt):
    (ckpt / "pytorch_model.bin").write_bytes(b"not a pickle: unpickling it would fail loudly")
    with pytest.warns(CheckpointWarning, match="ignoring pytorch_model.bin"):
        load_checkpoint(tiny_gpt2_lm, ckpt)
    (ckpt / WEIGHTS).unlink()
    assert "only pickled weights (pytorch_model.bin); qcheck loads safetensors only and never unpickles" \
        in refusal(tiny_gpt2_lm, ckpt)


def test_missing_directory_config_and_shard_are_refused(tiny_gpt2_lm, ckpt, tmp_path):
    assert "not a directory" in refusal(tiny_gpt2_lm, tmp_path / "nowhere")
    (ckpt / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {"a": "model-00002.safetensors"}}))
    assert "lists shard(s) that are missing: model-00002.safetensors" in refusal(tiny_gpt2_lm, ckpt)
    (ckpt / "quantize_config.json").unlink()
    (ckpt / "config.json").unlink()
    assert "no quantization config; expected quantize_config.json" in refusal(tiny_gpt2_lm, ckpt)


def test_export_refusals(tiny_gpt2_lm, ckpt, tmp_path):
    with pytest.raises(ValueError, match="exists and is not an empty directory"):
        export(tiny_gpt2_lm, "rtn-w4", ckpt)
    with pytest.raises(ValueError, match="5-bit codes have no GPTQ packing"):
        export(tiny_gpt2_lm, "rtn-w5", tmp_path / "w5")
    positive = build_tiny("gpt2")
    with torch.no_grad():
        positive.transformer.h[0].attn.c_attn.weight.abs_()   # every asymmetric zero point is 0
    with pytest.raises(ValueError, match="transformer.h.0.attn.c_attn: format v1 stores zero − 1 and cannot hold"):
        export(positive, "rtn-w4-asym", tmp_path / "v1", format="v1")
    assert not (tmp_path / "v1").exists()                   # nothing half-written


def test_layout_is_checked_from_headers_alone(tiny_gpt2_lm, ckpt):
    from transformers import AutoConfig, AutoModelForCausalLM

    def skeleton(**changes):  # what --qcheck-checkpoint checks at configure time: no weights
        config = AutoConfig.from_pretrained(ckpt)
        for key, value in changes.items():
            setattr(config, key, value)
        with torch.device("meta"):
            return AutoModelForCausalLM.from_config(config)

    layout, real = layout_of(skeleton(), "tiny"), layout_of(tiny_gpt2_lm, "tiny")
    assert (layout.linears, layout.tensors) == (real.linears, real.tensors)
    check_layout(open_checkpoint(ckpt), layout)
    wider = layout_of(skeleton(n_embd=2 * tiny_gpt2_lm.config.n_embd), "wider")
    with pytest.raises(ValueError, match="config.json describes another shape than the FP model wider"):
        check_layout(open_checkpoint(ckpt), wider)


def test_checkpoint_name_is_the_sanitized_folder_name(tmp_path):
    assert str(checkpoint_name(tmp_path / "My GPTQ model (4 bit)")) == "checkpoint:My_GPTQ_model_4_bit"
    assert checkpoint_name("/x/llama-7b-gptq/") == CheckpointRef("llama-7b-gptq")
