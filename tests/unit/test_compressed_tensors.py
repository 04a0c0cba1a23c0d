"""compressed-tensors `pack-quantized` checkpoints (qcheck/quantize/checkpoint/compressed.py and
export_compressed.py): llm-compressor's output loads exactly as saved and equals the library's
own decompression bit for bit; what qcheck does not read is refused naming the key and value;
qcheck's own export round-trips and is what the library reads.

Fixtures (tests/fixtures/checkpoints/, README.md): the `llmcompressor-*` folders, made by
llm-compressor 0.14 on zoo-pythia-2l64 (the `-gidx-synth` one from the tool's output with
weight_g_idx written, scripts/make_llmc_gidx.py), and `qcheck-*-ct`, qcheck's export checked with
the library (scripts/check_qcheck_export_llmc.py). Each `<dir>.reference.safetensors` is the
library's decompression (float32, `<module>.weight`, [out, in]).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qcheck.quantize.apply import quantize_model
from qcheck.quantize.checkpoint import load_checkpoint, open_checkpoint
from qcheck.quantize.checkpoint.export_compressed import export_compressed_tensors
from qcheck.quantize.linears import get_rows, named_block_linears
from qcheck.quantize.packing import pack_rows, unpack_rows
from qcheck.quantize.spec import parse_quant_spec

from helpers import build_tiny, copy_of, edit_tensors

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints" / "out"
LLMC = sorted(path for path in OUT.glob("llmcompressor-*") if path.is_dir())
EXPORTED = OUT / "qcheck-zoo-pythia-2l64-gptq-w4-g32-ref-ct"
GIDX = OUT / "llmcompressor-zoo-pythia-2l64-rtn-w4a16asym-g32-gidx-synth"
FP = "zoo-pythia-2l64"   # every compressed-tensors fixture's FP model (README.md problem 5: no GPT-2)
QKV = "gpt_neox.layers.0.attention.query_key_value"


@pytest.fixture(scope="module")
def pythia():
    from qcheck.models.load import load_model

    return load_model(FP)


def block_weights(model) -> dict[str, torch.Tensor]:
    return {name: get_rows(module) for name, module in named_block_linears(model)}


def refusal(fp, directory: Path) -> str:
    with pytest.raises(ValueError) as error:
        load_checkpoint(fp.hf, directory, name=FP)
    return str(error.value)


def edit_quant_config(directory: Path, edit) -> None:
    path = directory / "config.json"
    config = json.loads(path.read_text())
    edit(config["quantization_config"])
    path.write_text(json.dumps(config))


def test_the_fixtures_are_there():
    assert [f.name.removeprefix(f"llmcompressor-{FP}-") for f in LLMC] == [
        "gptq-w4a16-channel", "gptq-w4a16-g32", "gptq-w4a16asym-g32", "rtn-w4a16-channel", "rtn-w4a16-g32",
        "rtn-w4a16asym-g32", "rtn-w4a16asym-g32-gidx-synth"]
    assert EXPORTED.is_dir() and all(Path(f"{f}.reference.safetensors").is_file() for f in [*LLMC, EXPORTED])


@pytest.mark.parametrize("fixture", [*LLMC, EXPORTED], ids=lambda f: f.name)
def test_loads_as_saved_and_equals_the_librarys_decompression(pythia, fixture, record_property):
    """Bit for bit: the library computes (q − zp) · scale in the scale's dtype (F32 for
    llm-compressor's float32 model, F16 for qcheck's default export) and so does qcheck; the only
    rounding is that one multiply, the same on both sides, so the bound is 0. Measured: 0 on all."""
    quantized = load_checkpoint(pythia.hf, fixture, name=FP)
    reference = load_file(f"{fixture}.reference.safetensors")
    ours = block_weights(quantized.model)
    assert set(reference) == {f"{name}.weight" for name in ours}
    worst = max(float((ours[name] - reference[f"{name}.weight"]).abs().max()) for name in ours)
    record_property("max_abs_diff_vs_library", worst)
    for name, weight in ours.items():
        assert torch.equal(weight, reference[f"{name}.weight"]), name
    assert str(quantized.spec).startswith("checkpoint-w4"), quantized.spec
    assert any("unquantized tensors" in note for note in quantized.notes), quantized.notes
    fp_state = pythia.hf.state_dict()                               # the FP model's own values are used
    for key, value in quantized.model.state_dict().items():
        if key.removesuffix(".weight") not in ours and key in fp_state:
            assert torch.equal(value, fp_state[key].float()), key


@pytest.mark.parametrize("fixture", LLMC, ids=lambda f: f.name)
def test_qcheck_packs_the_codes_as_the_library_did(fixture):
    """pack_rows(unpack_rows(words)) gives the stored words back: qcheck's stream is the library's
    pack_to_int32 layout (export_compressed.py writes with it), codes and zero points alike."""
    tensors = load_file(fixture / "model.safetensors")
    for key, words in tensors.items():
        if key.endswith(".weight_packed"):
            d_in = int(tensors[key.replace("_packed", "_shape")][1])
            assert torch.equal(pack_rows(unpack_rows(words, 4, d_in), 4), words), key
        elif key.endswith(".weight_zero_point"):
            d_out = int(tensors[key.replace("_zero_point", "_shape")][0])
            rows = unpack_rows(words.T.contiguous(), 4, d_out)
            assert torch.equal(pack_rows(rows, 4).T, words), key


def test_the_spec_names_the_scheme():
    specs = {f.name.removeprefix(f"llmcompressor-{FP}-"): str(open_checkpoint(f).quant.spec) for f in LLMC}
    assert specs["gptq-w4a16-channel"] == "checkpoint-w4" and specs["rtn-w4a16-g32"] == "checkpoint-w4-g32"
    assert specs["gptq-w4a16asym-g32"] == "checkpoint-w4-g32-asym"


def test_the_g_idx_fixture_needs_its_g_idx(pythia, tmp_path):
    """The synthesised act-order fixture's groups are scattered (every linear), and reading it with
    contiguous groups instead (its g_idx dropped, actorder null) gives other weights: the test
    above exercises the g_idx path."""
    tensors = load_file(GIDX / "model.safetensors")
    g_idx = {k: v for k, v in tensors.items() if k.endswith(".weight_g_idx")}
    assert len(g_idx) == 8 and all(not torch.equal(v.long(), torch.arange(len(v)) // 32) for v in g_idx.values())
    contiguous = copy_of(GIDX, tmp_path)
    edit_tensors(contiguous, lambda t: [t.pop(k) for k in list(t) if k.endswith(".weight_g_idx")])
    edit_quant_config(contiguous, lambda q: q["config_groups"]["group_0"]["weights"].update(actorder=None))
    reference = load_file(f"{GIDX}.reference.safetensors")
    wrong = block_weights(load_checkpoint(pythia.hf, contiguous, name=FP).model)
    assert not any(torch.equal(w, reference[f"{name}.weight"]) for name, w in wrong.items())


def test_the_plugins_configure_time_check_passes():
    from qcheck.suite.checkpoint_options import validate_checkpoints

    folders = [str(f) for f in [*LLMC, EXPORTED]]
    assert sorted(validate_checkpoints(folders, [FP]).values()) == sorted(str(Path(f).resolve()) for f in folders)


# --- refusals: the config ---------------------------------------------------------------

SYM, ASYM = LLMC[1], LLMC[2]     # gptq-w4a16-g32, gptq-w4a16asym-g32


def weights(**changes):
    return lambda q: q["config_groups"]["group_0"]["weights"].update(changes)


def group(**changes):
    return lambda q: q["config_groups"]["group_0"].update(changes)


@pytest.mark.parametrize("edit, message", [
    (group(input_activations={"num_bits": 8, "type": "int"}),
     "config_groups.group_0.input_activations {'num_bits': 8, 'type': 'int'} is not supported: activation quantization"),
    (group(output_activations={"num_bits": 8}), "config_groups.group_0.output_activations"),
    (lambda q: q.update(sparsity_config={"format": "sparse-24-bitmask"}), "sparsity_config {'format': 'sparse-24-bitmask'} "
     "is not supported: sparsity"),
    (lambda q: q.update(transform_config={"config_groups": {"u": {}}}), "transform_config"),
    (lambda q: q.update(kv_cache_scheme={"num_bits": 8}), "kv_cache_scheme {'num_bits': 8} is not supported: KV-cache"),
    (lambda q: q.update(quantization_status="frozen"), "quantization_status 'frozen' is not supported: the weights are "
     "not stored compressed; save the model with llm-compressor's `save_pretrained(DIR, save_compressed=True)`"),
    (group(format="naive-quantized"), "config_groups.group_0.format 'naive-quantized' is not supported"),
    (lambda q: [q.update(format="nvfp4-pack-quantized"), q["config_groups"]["group_0"].pop("format")],
     "config_groups.group_0.format 'nvfp4-pack-quantized' is not supported"),
    (weights(type="float", num_bits=8), "config_groups.group_0.weights.type 'float' is not supported: float weights (fp8"),
    (weights(num_bits=5), "config_groups.group_0.weights.num_bits 5 is not supported: qcheck unpacks 2, 3, 4, 8 bits"),
    (weights(strategy="tensor"), "config_groups.group_0.weights.strategy 'tensor' is not supported"),
    (weights(strategy="block", block_structure=[32, 32]), "config_groups.group_0.weights.strategy 'block'"),
    (weights(group_size=48), "config_groups.group_0.weights.group_size 48 is not supported"),
    (weights(dynamic=True), "config_groups.group_0.weights.dynamic True is not supported"),
    (weights(actorder="sideways"), "config_groups.group_0.weights.actorder 'sideways' is not supported"),
    (lambda q: q["config_groups"].update(group_1={**q["config_groups"]["group_0"], "targets": ["re:nothing"],
                                                  "weights": {**q["config_groups"]["group_0"]["weights"], "num_bits": 8}}),
     "config groups group_0 and group_1 quantize with different schemes"),
])
def test_unsupported_configs_are_refused_naming_the_key_and_value(pythia, tmp_path, edit, message):
    ckpt = copy_of(SYM, tmp_path)
    edit_quant_config(ckpt, edit)
    assert f"{ckpt}/config.json (quantization_config): {message}" in refusal(pythia, ckpt)


@pytest.mark.parametrize("edit, message", [
    (lambda q: q.update(ignore=[]), "quantizes lm_head (targets group_0: ['Linear']), which is not a linear map inside "
     "the transformer blocks: qcheck certifies block linears only, the unembedding and embeddings in full precision; "
     "add 'lm_head' to ignore"),
    (lambda q: q["ignore"].append("re:.*dense$"), "gpt_neox.layers.0.attention.dense is not quantized by"),
    (lambda q: q["config_groups"].update(group_1={**q["config_groups"]["group_0"], "targets": [QKV]}),
     f"{QKV} is targeted by config groups group_0, group_1: keep it in one"),
])
def test_which_modules_are_quantized_comes_from_targets_and_ignore(pythia, tmp_path, edit, message):
    ckpt = copy_of(SYM, tmp_path)
    edit_quant_config(ckpt, edit)
    assert message in refusal(pythia, ckpt)


def test_explicit_names_and_regex_targets_match_like_the_library(pythia, tmp_path):
    """`re:` is a regex matched from the start of the in-memory name; a plain target is a name or
    a class. The same tensors load to the same weights under each spelling."""
    expected = block_weights(load_checkpoint(pythia.hf, SYM, name=FP).model)
    spellings = ([*expected], ["re:gpt_neox\\.layers\\.\\d+\\.(attention|mlp)\\."], ["Linear"])
    for i, targets in enumerate(spellings):
        ckpt = copy_of(SYM, tmp_path / str(i))
        edit_quant_config(ckpt, lambda q: q["config_groups"]["group_0"].update(targets=targets))
        loaded = block_weights(load_checkpoint(pythia.hf, ckpt, name=FP).model)
        assert all(torch.equal(loaded[name], expected[name]) for name in expected), targets


# --- refusals: the tensors --------------------------------------------------------------

def dequantize_qkv(tensors: dict) -> None:
    """QKV stored in full precision instead of packed (partial quantization)."""
    for part in ("weight_packed", "weight_scale", "weight_shape"):
        tensors.pop(f"{QKV}.{part}")
    tensors[f"{QKV}.weight"] = torch.zeros(192, 64)


@pytest.mark.parametrize("fixture, edit, message", [
    (SYM, lambda t: t[f"{QKV}.weight_shape"].copy_(torch.tensor([64, 192])),
     f"{QKV}.weight_shape holds [64, 192], but the FP model's linear is [192, 64] (d_out, d_in)"),
    (SYM, lambda t: t.update({f"{QKV}.weight_packed": t[f"{QKV}.weight_packed"][:, :4].contiguous()}),
     f"{QKV}.weight_packed is I32 [192, 4], expected I32 [192, 8] for a 64->192 linear at 4 bits, group size 32"),
    (SYM, lambda t: t[f"{QKV}.weight_scale"].__setitem__((3, 1), float("nan")),
     f"{QKV}.weight_scale holds 1 NaN/inf value(s); the quantization failed or the file is corrupt"),
    (SYM, lambda t: t.update({f"{QKV}.weight_zero_point": torch.zeros(24, 2, dtype=torch.int32)}),
     f"unexpected tensor {QKV}.weight_zero_point: "),
    (ASYM, lambda t: t.pop(f"{QKV}.weight_zero_point"), f"missing tensor {QKV}.weight_zero_point (expected I32 [24, 2])"),
    (ASYM, lambda t: t.update({f"{QKV}.weight_zero_point": torch.zeros(192, 2, dtype=torch.int32)}),
     f"{QKV}.weight_zero_point is I32 [192, 2], expected I32 [24, 2]"),
    (GIDX, lambda t: t[f"{QKV}.weight_g_idx"].__setitem__(0, 2),
     f"{QKV}.weight_g_idx holds groups 0..2 with"),
    (GIDX, lambda t: t[f"{QKV}.weight_g_idx"].copy_(torch.arange(64) % 2 * 0),
     "expected each of 0..1 exactly 32 times"),
    (GIDX, lambda t: t.pop(f"{QKV}.weight_g_idx"), f"missing tensor {QKV}.weight_g_idx (expected I32 [64])"),
    (SYM, lambda t: t.update({"lm_head.weight_packed": torch.zeros(256, 8, dtype=torch.int32)}),
     "unexpected quantized module lm_head: qcheck quantizes only the linear maps inside the transformer blocks"),
    (SYM, dequantize_qkv,
     f"{QKV} is not quantized (no {QKV}.weight_packed; it is stored in full precision as .weight"),
])
def test_malformed_tensors_are_refused_naming_them(pythia, tmp_path, fixture, edit, message):
    ckpt = copy_of(fixture, tmp_path)
    edit_tensors(ckpt, edit)
    assert message in refusal(pythia, ckpt)


def test_another_models_unquantized_tensors_are_refused(pythia, tmp_path):
    ckpt = copy_of(SYM, tmp_path)
    edit_tensors(ckpt, lambda t: t["embed_out.weight"].mul_(1.01))
    assert ("embed_out.weight (read as lm_head.weight) differs from the FP model zoo-pythia-2l64's"
            in refusal(pythia, ckpt))


def test_a_gptq_config_beside_a_compressed_tensors_one_is_refused(tmp_path):
    ckpt = copy_of(SYM, tmp_path)
    (ckpt / "quantize_config.json").write_text(json.dumps({"bits": 4, "group_size": 32, "sym": True}))
    with pytest.raises(ValueError, match=r"quantize_config.json and .*config.json \(quantization_config\) disagree "
                                         r"on format \(v1 vs pack-quantized\); remove the stale one"):
        open_checkpoint(ckpt)


# --- export -----------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["neox", "llama"])
@pytest.mark.parametrize("spec", ["rtn-w4-g16", "rtn-w8", "rtn-w3-asym", "rtn-w2-g32-ref", "gptq-w4-g16-act",
                                  "gptq-w3-g32-asym-act"])
def test_float32_export_imports_to_the_in_memory_model_exactly(calibration_tokens, tmp_path, family, spec):
    model = build_tiny(family)
    out = export_compressed_tensors(model, parse_quant_spec(spec), tmp_path / "ct", calibration=calibration_tokens,
                                    dtype=torch.float32)
    loaded = load_checkpoint(model, out)
    in_memory, _ = quantize_model(model, parse_quant_spec(spec), calibration_tokens)
    assert all(torch.equal(a, b) for a, b in zip(loaded.model.state_dict().values(), in_memory.state_dict().values()))
    config = json.loads((out / "config.json").read_text())["quantization_config"]
    scheme = config["config_groups"]["group_0"]
    assert scheme["targets"] == [name for name, _ in named_block_linears(model)] and config["ignore"] == []
    stored = load_file(out / "model.safetensors")
    assert any(k.endswith(".weight_zero_point") for k in stored) == ("asym" in spec)
    assert (scheme["weights"]["actorder"] == "group") == any(k.endswith(".weight_g_idx") for k in stored)
    if spec.endswith("-g16-act"):   # d_in 32 or more, 2+ groups of 16: act-order scatters them
        assert scheme["weights"]["actorder"] == "group"


def test_float16_export_is_the_librarys_float16_arithmetic(tmp_path):
    model, spec, grids = build_tiny("neox"), parse_quant_spec("rtn-w4-g16-asym"), {}
    quantize_model(model, spec, on_layer=grids.__setitem__)
    loaded = block_weights(load_checkpoint(model, export_compressed_tensors(model, spec, tmp_path / "ct")).model)
    for name, q in grids.items():
        g = q.g_idx
        expected = ((q.codes - q.zeros[:, g].long()).half() * q.scales.half()[:, g]).float()
        assert torch.equal(loaded[name], expected), name
        # rounding the scale and the product to float16: half an ulp each, 2^-11 of the value; below
        # float16's normal range (2^-14) the product's rounding is at most half its spacing, 2^-25
        assert ((loaded[name] - q.weight).abs() <= 2 ** -10 * q.weight.abs() + 2 ** -24).all(), name


def test_what_the_format_cannot_hold_is_refused_before_quantizing(tmp_path):
    with pytest.raises(ValueError, match=r"transformer.h.0.attn.c_attn is a Conv1D, not an nn.Linear: compressed-tensors "
                                         r"compresses nn.Linear only; export this model with export_checkpoint"):
        export_compressed_tensors(build_tiny("gpt2"), parse_quant_spec("rtn-w4"), tmp_path / "a")
    with pytest.raises(ValueError, match=r"has d_in=32, not a multiple of group size 64: compressed-tensors needs whole"):
        export_compressed_tensors(build_tiny("neox"), parse_quant_spec("rtn-w4-g64"), tmp_path / "b")
    with pytest.raises(ValueError, match="checkpoint-w4 is not a quantizer qcheck runs"):
        export_compressed_tensors(build_tiny("neox"), parse_quant_spec("checkpoint-w4"), tmp_path / "c")
    assert not any(tmp_path.iterdir())


def test_the_committed_export_is_what_qcheck_exports_today(pythia, tmp_path):
    """The folder the library read (its reference and from_pretrained log beside it) is qcheck's
    export as it is now: the same tensors with the same names, dtypes and shapes, the same config,
    and every tensor outside the block linears' codes and scales bit for bit.

    The codes and scales are not compared across machines: GPTQ's sums round differently under
    another CPU's kernels. Measured on an AVX-512 Xeon against the machine that made the folder:
    0.07 % of layer 0's query_key_value weights differ, and since each layer is calibrated on the
    quantized layers before it, 66 % of the last linear's do. That an export holds exactly the codes
    the machine computed is test_float32_export_imports_to_the_in_memory_model_exactly's."""
    log = json.loads((OUT / f"{EXPORTED.name}.log.json").read_text())
    assert log["from_pretrained"]["weights_differing_from_reference"] == {} and log["from_pretrained"]["logits_finite"]
    committed_config = json.loads((EXPORTED / "config.json").read_text())
    spec = parse_quant_spec(committed_config["quantization_config"]["qcheck"]["spec"])
    again = export_compressed_tensors(pythia.hf, spec, tmp_path / "again", tokenizer=pythia.tokenizer.hf_tokenizer,
                                      cache_dir=tmp_path / "cache")
    committed, today = load_file(EXPORTED / "model.safetensors"), load_file(again / "model.safetensors")
    assert committed.keys() == today.keys() and "embed_out.weight" in today      # save_pretrained's names
    assert {k: (t.dtype, t.shape) for k, t in committed.items()} == {k: (t.dtype, t.shape) for k, t in today.items()}
    computed = (".weight_packed", ".weight_scale", ".weight_zero_point")
    differing = [k for k in committed if not k.endswith(computed) and not torch.equal(committed[k], today[k])]
    assert differing == [] and any(k.endswith(".weight_shape") for k in committed), differing
    def config(document: dict) -> dict:  # _name_or_path: where the FP model was loaded from
        return {k: v for k, v in document.items() if k != "_name_or_path"}

    assert config(json.loads((again / "config.json").read_text())) == config(committed_config)


def test_the_command_line_exports_compressed_tensors(tmp_path, capsys):
    from qcheck.quantize.checkpoint.cli import main

    main([FP, "rtn-w4-g32", str(tmp_path / "ct"), "--as", "compressed-tensors", "--dtype", "float32"])
    assert "compressed-tensors pack-quantized, float32 scales" in capsys.readouterr().out
    assert open_checkpoint(tmp_path / "ct").quant.format == "pack-quantized"
    with pytest.raises(SystemExit):
        main([FP, "rtn-w4", str(tmp_path / "x"), "--as", "compressed-tensors", "--format", "v1"])
