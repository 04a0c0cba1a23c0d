"""Checkpoints made by a real tool (GPTQModel 7.6.0), exactly as it saved them, import through
qcheck.quantize.checkpoint against their zoo FP model (tests/fixtures/checkpoints/README.md).

Parametrized over the `gptqmodel-*` folders found on disk under tests/fixtures/checkpoints/out/;
each folder's name says its FP model (`gptqmodel-zoo-pythia-2l64-...` -> `zoo-pythia-2l64`).
What the tool does differently from qcheck's own export, each checked here:
- it writes a synthesised tokenizer (special tokens only, no vocabulary): ignored with a note;
- it holds the model in bfloat16 and saves norms/embeddings as BF16, the quantized linears'
  biases as F16 (bfloat16 values): checked to the rounding of those dtypes, not refused;
- GPT-NeoX's unembedding is saved as `lm_head.weight` (the state_dict name), while
  `save_pretrained` writes `embed_out.weight`: both names are read.
The controls show the refusals that protect users still hold: a real, different tokenizer and
another model's weights.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from qcheck.quantize.checkpoint import check_tokenizer, load_checkpoint, open_checkpoint
from qcheck.quantize.checkpoint.format import layout_of
from qcheck.quantize.checkpoint.load import half_ulp
from qcheck.quantize.linears import get_rows, named_block_linears

from helpers import copy_of, edit_tensors

OUT = Path(__file__).resolve().parents[1] / "fixtures" / "checkpoints" / "out"
FIXTURES = sorted(path for path in OUT.glob("gptqmodel-*") if path.is_dir())
SYNTHESISED = "a tokenizer with no vocabulary but its"


def fp_name(fixture: Path) -> str:
    """The zoo FP model a fixture was quantized from, from its folder name."""
    match = re.match(r"gptqmodel-(zoo-[a-z0-9]+-\d+l\d+)-", fixture.name)
    assert match, f"{fixture.name}: the folder name does not say its zoo model"
    return match.group(1)


@pytest.fixture(scope="module")
def fp_models():
    from qcheck.models.load import load_model

    cache: dict = {}

    def get(name: str):
        if name not in cache:
            cache[name] = load_model(name)
        return cache[name]
    return get


@pytest.fixture(scope="module")
def loaded(fp_models):
    """Each fixture loaded once: (QuantizedModel, FP LoadedModel)."""
    cache: dict = {}

    def get(fixture: Path):
        if fixture not in cache:
            fp = fp_models(fp_name(fixture))
            cache[fixture] = load_checkpoint(fp.hf, fixture, name=fp.spec.name), fp
        return cache[fixture]
    return get


def test_the_fixtures_are_there():
    assert len(FIXTURES) == 16, [f.name for f in FIXTURES]   # 8 variants x 2 models (README.md section 4)
    assert {fp_name(f) for f in FIXTURES} == {"zoo-gpt2-2l48", "zoo-pythia-2l64"}


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.name.removeprefix("gptqmodel-"))
def test_imports_and_equals_the_tools_own_dequantization(loaded, fixture, record_property):
    """The block linears equal `<name>.reference.safetensors` bit for bit.

    The reference is GPTQModel's own `dequantize_weight` with the F16 scales upcast to float32
    first (README.md section 3); qcheck computes float32(scale16) · (q − zero) too. That product
    is exact in float32 (11 significand bits times |q − zero| <= 255, 8 bits, fits in 24), so the
    only rounding either side could add is none: the justified bound is 0. Measured: 0 on all
    16 fixtures. (The tool's native float16 arithmetic would differ by up to half a float16 ulp
    at |W|: checked against its log below.)
    """
    quantized, fp = loaded(fixture)
    reference = load_file(fixture.parent / f"{fixture.name}.reference.safetensors")
    modules = dict(named_block_linears(quantized.model))
    assert set(reference) == {f"{name}.weight" for name in modules}
    worst = 0.0
    for name, module in modules.items():
        ours, theirs = get_rows(module).float(), reference[f"{name}.weight"].float()   # (d_out, d_in) both
        assert ours.shape == theirs.shape, name
        worst = max(worst, float((ours - theirs).abs().max()))
        assert torch.equal(ours, theirs), f"{name}: max |qcheck − reference| {float((ours - theirs).abs().max()):.3g}"
    record_property("max_abs_diff_vs_reference", worst)
    assert worst == 0.0

    log = json.loads((fixture.parent / f"{fixture.name}.log.json").read_text())
    for name, module in log["reference"]["modules"].items():
        magnitude = reference[f"{name}.weight"].abs().max().reshape(1)
        assert module["max_abs_diff_native_vs_fp32"] <= float(half_ulp(magnitude, torch.float16)), name

    assert str(quantized.spec).startswith("checkpoint-w"), quantized.spec
    assert any("unquantized tensors" in note and "held as bfloat16 (config.json dtype)" in note
               for note in quantized.notes), quantized.notes
    untouched = fp.hf.state_dict()                                 # the FP model's own values are used
    for key, value in quantized.model.state_dict().items():
        if not any(key == f"{name}.weight" for name in modules) and key in untouched:
            assert torch.equal(value, untouched[key].float()), key


@pytest.mark.parametrize("fixture", FIXTURES, ids=lambda f: f.name.removeprefix("gptqmodel-"))
def test_the_synthesised_tokenizer_is_ignored_with_a_note(loaded, fixture):
    """Every GPTQModel fixture has the tokenizer.json transformers fabricated (special tokens only);
    the byte-level zoo model's check passes and the load says what it ignored."""
    assert (fixture / "tokenizer.json").is_file()
    ckpt = open_checkpoint(fixture)
    check_tokenizer(ckpt, None, fp_name(fixture))                 # a zoo model reads raw bytes
    assert len(ckpt.notes) == 1 and SYNTHESISED in ckpt.notes[0] and "ignored" in ckpt.notes[0]
    assert ckpt.notes[0] in loaded(fixture)[0].notes


def test_the_notes_reach_the_reports_pair_entry(loaded):
    """results.json's pair entry carries the checkpoint's notes (and conforms to its schema)."""
    from types import SimpleNamespace

    from qcheck.quantize.checkpoint import checkpoint_name
    from qcheck.report.results import entry_for_pair
    from qcheck.report.schema import PAIR, validate

    fixture = FIXTURES[0]
    quantized, fp = loaded(fixture)
    ref = checkpoint_name(fixture)
    case = SimpleNamespace(id=f"{fp.spec.name}-{ref}", quant=ref)
    entry = entry_for_pair(SimpleNamespace(case=case, fp=fp, quant=quantized, fp_bridge=None), "main")
    assert entry["quant"]["notes"] == list(quantized.notes) and len(entry["quant"]["notes"]) == 2
    assert validate(entry, PAIR) == []


def test_the_plugins_configure_time_check_passes():
    """What --qcheck-checkpoint runs before any test (headers, config, tokenizer): no refusal."""
    from qcheck.suite.checkpoint_options import validate_checkpoints

    pythia = next(f for f in FIXTURES if fp_name(f) == "zoo-pythia-2l64")
    assert list(validate_checkpoints([str(pythia)], ["zoo-pythia-2l64"]).values()) == [str(pythia.resolve())]


# --- names --------------------------------------------------------------------------------

def test_save_pretrained_names_and_state_dict_names_both_match(fp_models, tmp_path):
    """GPTQModel stores Pythia's unembedding as lm_head.weight (the state_dict name);
    `save_pretrained` writes embed_out.weight (transformers' conversion mapping, reversed). Both
    load, to the same weights; storing both is refused, naming them."""
    from transformers.core_model_loading import revert_weight_conversion

    fp = fp_models("zoo-pythia-2l64")
    layout = layout_of(fp.hf, "zoo-pythia-2l64")
    on_disk = revert_weight_conversion(fp.hf, dict(fp.hf.state_dict()))     # what save_pretrained writes
    assert "embed_out.weight" in on_disk and "lm_head.weight" not in on_disk
    assert sorted(layout.memory_name(key) for key in on_disk) == sorted(fp.hf.state_dict())

    fixture = next(f for f in FIXTURES if f.name.endswith("pythia-2l64-gptq-w4-g32-sym-v2"))
    renamed = copy_of(fixture, tmp_path)
    edit_tensors(renamed, lambda t: t.update({"embed_out.weight": t.pop("lm_head.weight")}))
    assert "embed_out.weight" in open_checkpoint(renamed).tensors
    a = load_checkpoint(fp.hf, fixture, name="zoo-pythia-2l64").model.state_dict()
    b = load_checkpoint(fp.hf, renamed, name="zoo-pythia-2l64").model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    both = copy_of(fixture, tmp_path / "both")
    edit_tensors(both, lambda t: t.update({"embed_out.weight": t["lm_head.weight"].clone()}))
    with pytest.raises(ValueError, match=r"tensors embed_out.weight and lm_head.weight are both read as "
                                         r"lm_head.weight .* keep one of them"):
        load_checkpoint(fp.hf, both, name="zoo-pythia-2l64")


def test_names_without_the_base_model_prefix_match(fp_models, tmp_path):
    """A base-model checkpoint's names (`layers.0...`, no `gpt_neox.`) are read as transformers
    reads them: with base_model_prefix added."""
    fp = fp_models("zoo-pythia-2l64")
    fixture = next(f for f in FIXTURES if f.name.endswith("pythia-2l64-gptq-w4-g32-asym-v2"))
    bare = copy_of(fixture, tmp_path)
    edit_tensors(bare, lambda t: t.update({k.removeprefix("gpt_neox."): t.pop(k) for k in list(t)}))
    assert "layers.0.attention.dense.qweight" in open_checkpoint(bare).tensors
    a = load_checkpoint(fp.hf, fixture, name="zoo-pythia-2l64").model.state_dict()
    b = load_checkpoint(fp.hf, bare, name="zoo-pythia-2l64").model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_misshapen_renamed_tensor_is_refused_by_its_stored_name(fp_models, tmp_path):
    fixture = next(f for f in FIXTURES if fp_name(f) == "zoo-pythia-2l64")
    bad = copy_of(fixture, tmp_path)
    edit_tensors(bad, lambda t: t.update({"embed_out.weight": t.pop("lm_head.weight")[:100].contiguous()}))
    with pytest.raises(ValueError, match=r"embed_out.weight \(read as lm_head.weight\) is \[100, 64\], the FP "
                                         r"model's is \[256, 64\]"):
        load_checkpoint(fp_models("zoo-pythia-2l64").hf, bad, name="zoo-pythia-2l64")


# --- unquantized values: the dtype's rounding, and no more ------------------------------

def test_values_beyond_their_dtypes_rounding_or_nan_are_refused(fp_models, tmp_path):
    fp = fp_models("zoo-pythia-2l64").hf
    fixture = next(f for f in FIXTURES if fp_name(f) == "zoo-pythia-2l64")
    key = "gpt_neox.final_layer_norm.weight"                       # BF16 in the file

    def nudge(t):  # two bfloat16 ulps off: more than half an ulp of rounding
        value = t[key].float()
        value[3] += 4 * float(half_ulp(value[3].abs().reshape(1), torch.bfloat16))
        t[key] = value.to(torch.bfloat16)
    off = copy_of(fixture, tmp_path / "off")
    edit_tensors(off, nudge)
    with pytest.raises(ValueError) as error:
        load_checkpoint(fp, off, name="zoo-pythia-2l64")
    message = str(error.value)
    assert f"{key} differs from the FP model zoo-pythia-2l64's at 1 of 64 values" in message
    assert f"worst {key}[3] = " in message and "half an ulp of bfloat16" in message
    assert message.endswith("pass the FP model it was quantized from with --qcheck-model")

    nan = copy_of(fixture, tmp_path / "nan")
    edit_tensors(nan, lambda t: t["gpt_neox.layers.0.attention.dense.bias"].__setitem__(0, float("nan")))
    with pytest.raises(ValueError, match=r"gpt_neox.layers.0.attention.dense.bias holds 1 NaN/inf value\(s\) "
                                         r"where the FP model zoo-pythia-2l64's are finite.*save it again"):
        load_checkpoint(fp, nan, name="zoo-pythia-2l64")

    # Without config.json's dtype (bfloat16), the F16 biases (bfloat16 values) exceed float16's
    # own half ulp: the tolerance comes from the dtypes the tool says it used, not a blanket one.
    undeclared = copy_of(fixture, tmp_path / "undeclared")
    config = json.loads((undeclared / "config.json").read_text())
    config.pop("dtype")
    (undeclared / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"\.bias differs from the FP model .* half an ulp of float16; stored "
                                         r"float16, config.json dtype not set\)"):
        load_checkpoint(fp, undeclared, name="zoo-pythia-2l64")


# --- controls: the refusals that protect users --------------------------------------------

def _real_tokenizer(directory: Path, words: list[str]) -> dict[str, int]:
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    for name in ("tokenizer.json", "tokenizer_config.json"):
        (directory / name).unlink()
    vocab = {word: i for i, word in enumerate(words)}
    PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token=words[0]))).save_pretrained(directory)
    return vocab


def test_control_a_real_different_tokenizer_is_still_refused(tmp_path):
    fixture = next(f for f in FIXTURES if fp_name(f) == "zoo-pythia-2l64")
    real = copy_of(fixture, tmp_path)
    vocab = _real_tokenizer(real, ["<unk>", "hello", "world"])
    ckpt = open_checkpoint(real)
    assert ckpt.notes == ()                                         # not taken for a synthesised one
    with pytest.raises(ValueError, match=r"ships a tokenizer but the FP model zoo-pythia-2l64 reads raw bytes .*"
                                         r"it was quantized from another model; pass that model with --qcheck-model"):
        check_tokenizer(ckpt, None, "zoo-pythia-2l64")
    with pytest.raises(ValueError, match=r"its tokenizer differs from the FP model hf's \(3 vs 3 tokens"):
        check_tokenizer(ckpt, {"<unk>": 0, "hello": 1, "there": 2}, "hf")
    check_tokenizer(ckpt, vocab, "hf")                              # the same vocabulary passes

    # the tool's own files with one ordinary token added: a vocabulary, so a real tokenizer
    grown = copy_of(fixture, tmp_path / "grown")
    whole = json.loads((grown / "tokenizer.json").read_text())
    whole["model"]["vocab"]["hello"] = 2
    (grown / "tokenizer.json").write_text(json.dumps(whole))
    assert open_checkpoint(grown).notes == ()
    with pytest.raises(ValueError, match="ships a tokenizer but the FP model zoo-pythia-2l64 reads raw bytes"):
        check_tokenizer(open_checkpoint(grown), None, "zoo-pythia-2l64")


def test_control_a_checkpoint_of_another_model_is_still_refused(fp_models):
    """The same architecture and shapes with other weights (zoo-pythia-2l64's config, another
    seed): refused at the first unquantized tensor, naming it. Another architecture: refused by
    config.json."""
    from transformers import AutoModelForCausalLM

    fp = fp_models("zoo-pythia-2l64").hf
    torch.manual_seed(1)
    other = AutoModelForCausalLM.from_config(fp.config, attn_implementation="eager").float().eval()
    fixture = next(f for f in FIXTURES if fp_name(f) == "zoo-pythia-2l64")
    with pytest.raises(ValueError, match=r"gpt_neox.embed_in.weight differs from the FP model other's at \d+ of "
                                         r"16384 values.*made from another model; pass the FP model it was "
                                         r"quantized from with --qcheck-model"):
        load_checkpoint(other, fixture, name="other")
    gpt2 = next(f for f in FIXTURES if fp_name(f) == "zoo-gpt2-2l48")
    with pytest.raises(ValueError, match=r"config.json is for gpt2 \(GPT2LMHeadModel\) but the FP model "
                                         r"zoo-pythia-2l64 is gpt_neox"):
        load_checkpoint(fp, gpt2, name="zoo-pythia-2l64")
