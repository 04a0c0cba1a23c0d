"""Bad models: unknown names, hub ids with no weights offline, broken local directories, configs
that do not match their weights, NaN/Inf in the FP weights. A name is a command-line value, so
whatever can be checked without loading weights is one usage error at collection."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from qcheck.models.load import load_model
from qcheck.models.errors import ModelNotAvailable
from qcheck.models.registry import zoo_names
from qcheck.quantize.apply import quantize_model
from qcheck.quantize.spec import parse_quant_spec


@pytest.mark.parametrize("name, message", [
    ("zoo-nope", "--qcheck-model zoo-nope: unknown zoo model 'zoo-nope'; the embedded models are: {zoo}"),
    ("not a model!", "--qcheck-model not a model!: model 'not a model!' is neither a zoo name, an existing "
                     "directory nor a Hugging Face id; provide it one of three ways"),
    ("./no/such/dir", "--qcheck-model ./no/such/dir: model './no/such/dir' is neither a zoo name, an existing "
                      "directory nor a Hugging Face id; provide it one of three ways"),
])
def test_unknown_model_name_is_one_usage_error(cli, name, message):
    assert cli.usage_error("--qcheck-model", name).startswith(message.format(zoo=", ".join(zoo_names())))


@pytest.mark.parametrize("name", ["gpt2", "EleutherAI/pythia-70m"])
def test_hub_id_without_weights_offline_is_one_usage_error(cli, name, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)   # what HF_HUB_OFFLINE=1 sets at import
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hf-cache"))
    message = cli.usage_error("--qcheck-model", name)
    assert message.startswith(f"--qcheck-model {name}: model '{name}' has no local weights and the Hugging "
                              f"Face hub is off (HF_HUB_OFFLINE=1); provide it one of three ways: (1)")
    assert f"M.from_pretrained('{name}').save_pretrained('DIR')" in message and zoo_names()[0] in message


def _truncate(d):
    weights = d / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])


def _overwrite_header(d):
    weights = d / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[8:40] = b"\xff" * 32
    weights.write_bytes(bytes(data))


def _lose_a_shard(d):
    (d / "model.safetensors").rename(d / "model-00001-of-00002.safetensors")
    weight_map = {"transformer.wte.weight": "model-00001-of-00002.safetensors",
                  "transformer.h.0.attn.c_attn.weight": "model-00002-of-00002.safetensors"}
    (d / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


BROKEN_DIRECTORIES = {
    "no weights": (lambda d: (d / "model.safetensors").unlink(),
                   "has no model.safetensors: qcheck loads safetensors only and never unpickles a file; "
                   "write config and weights together with `model.save_pretrained(DIR)`"),
    "truncated weights": (_truncate, "model.safetensors is truncated or corrupt (Error while deserializing "
                                     "header: incomplete metadata, file not fully covered); copy or download it "
                                     "again"),
    "corrupt header": (_overwrite_header, "model.safetensors is truncated or corrupt (Error while deserializing "
                                          "header"),
    "missing shard": (_lose_a_shard, "model.safetensors.index.json lists shard(s) that are missing: "
                                     "model-00002-of-00002.safetensors; copy the whole directory again"),
    "no config.json": (lambda d: (d / "config.json").unlink(),
                       "has no config.json; write it with `model.save_pretrained("),
    "config.json not JSON": (lambda d: (d / "config.json").write_text('{"model_type": "gpt2",'),
                             "config.json: not readable JSON (Expecting property name enclosed in double quotes"),
}


@pytest.mark.parametrize("breakage", BROKEN_DIRECTORIES)
def test_broken_local_directory_is_one_usage_error(cli, tiny_gpt2_lm, tmp_path, tree, breakage):
    directory = tmp_path / "my-model"
    tiny_gpt2_lm.save_pretrained(directory)
    # `--opt=VALUE`: a bare existing path would be taken for a test path when pytest looks for its rootdir
    cli.collects(f"--qcheck-model={directory}")  # the control: the intact directory is accepted
    breaks, expected = BROKEN_DIRECTORIES[breakage]
    breaks(directory)
    before = tree(directory)
    message = cli.usage_error(f"--qcheck-model={directory}")
    assert message.startswith(f"--qcheck-model {directory}: ") and expected in message
    assert tree(directory) == before  # read, never repaired or removed


def _more_layers(config):
    config["n_layer"] += 1


def _fewer_layers(config):
    config["n_layer"] -= 1


def _narrower(config):
    config["n_embd"], config["n_head"] = 16, 2


def _another_architecture(config):
    """Every other field takes GPT-NeoX's defaults: a 20-billion-parameter model. transformers
    would allocate it (the process is killed) before noticing that no weight fits."""
    config.update(model_type="gpt_neox", architectures=["GPTNeoXForCausalLM"])


MISMATCHES = {
    "more layers": (_more_layers, "config.json does not match the weights: it describes a model of 48,416 "
                                  "parameters, the safetensors files hold 35,712 values. The config belongs to "
                                  "another model"),
    "fewer layers": (_fewer_layers, "config.json does not match the weights: 11 tensor(s) in the weights but not "
                                    "in the config's model: transformer.h.1.attn.c_attn.weight, "
                                    "transformer.h.1.attn.c_proj.bias, transformer.h.1.attn.c_proj.weight and 8 more"),
    "other widths": (_narrower, "config.json does not match the weights: 28 tensor(s) whose stored shape differs "
                                "from the config's: transformer.h.0.attn.c_attn.bias [96] vs [48]"),
    "another architecture": (_another_architecture, "it describes a model of 19,9"),
}


@pytest.mark.parametrize("mismatch", MISMATCHES)
def test_config_that_does_not_match_the_weights_is_refused(tiny_gpt2_lm, tmp_path, tree, mismatch):
    directory = tmp_path / "my-model"
    tiny_gpt2_lm.save_pretrained(directory)
    edit, expected = MISMATCHES[mismatch]
    config = json.loads((directory / "config.json").read_text())
    edit(config)
    (directory / "config.json").write_text(json.dumps(config))
    before = tree(directory)
    with pytest.raises(ModelNotAvailable) as error:
        load_model(str(directory))
    assert str(error.value).startswith(f"model directory '{directory}': ")
    assert expected in str(error.value)
    assert str(error.value).endswith("write config and weights together with `model.save_pretrained(DIR)` "
                                     "(safetensors, the default)")
    assert tree(directory) == before


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_nan_or_inf_in_fp_weights_is_refused(tiny_gpt2_lm, tmp_path, value):
    broken = copy.deepcopy(tiny_gpt2_lm)
    with torch.no_grad():
        broken.transformer.h[1].mlp.c_fc.weight[3, 5] = value
    broken.save_pretrained(tmp_path)
    with pytest.raises(ModelNotAvailable) as error:
        load_model(str(tmp_path))
    assert str(error.value) == (f"model directory '{tmp_path}': 1 weight tensor(s) hold NaN/Inf values: "
                                f"transformer.h.1.mlp.c_fc.weight (1 of 4096). The FP model itself is broken (a "
                                f"failed training run or a corrupt file); fix or re-export its weights")


def test_nan_in_a_model_handed_to_the_quantizer_is_refused(tiny_gpt2_lm, calibration_tokens):
    """The library path (no loader in between): the quantizer names the layer, never returns NaN."""
    broken = copy.deepcopy(tiny_gpt2_lm)
    with torch.no_grad():
        broken.transformer.h[0].attn.c_proj.weight[0, 0] = float("nan")
    for quant in ("rtn-w4", "gptq-w4"):
        with pytest.raises(ValueError, match=rf"^{quant}: transformer\.h\.0\.attn\.c_proj\.weight holds 1 NaN/Inf "
                                             r"value\(s\) in the FP model; nothing can be certified against it"):
            quantize_model(broken, parse_quant_spec(quant), calibration_tokens)


@pytest.mark.parametrize("family", ["llama", "qwen2"])
@pytest.mark.parametrize("kv_heads, expected", [
    (4, "it describes a model of {needed} parameters, the safetensors files hold {stored} values (grouped-query "
        "attention: model.layers.0.self_attn.k_proj.weight has 32 rows of head_dim 16, i.e. 2 key/value heads, "
        "but config.json says num_key_value_heads=4). The config belongs to another model"),
    (1, "tensor(s) whose stored shape differs from the config's: {first} [32, 64] vs [16, 64]"),
])
def test_config_with_the_wrong_key_value_head_count_is_refused(family, kv_heads, expected, tmp_path, tree):
    """Grouped-query attention: k_proj/v_proj hold num_key_value_heads x head_dim rows. A config
    claiming more heads than the weights hold is refused before loading, one claiming fewer after
    (transformers would re-initialise k/v); both say how many heads the weights hold."""
    from helpers import build_tiny

    directory = tmp_path / "my-model"
    build_tiny(family).save_pretrained(directory)
    config = json.loads((directory / "config.json").read_text())
    load_model(str(directory))  # the control: the intact directory loads
    config["num_key_value_heads"] = kv_heads
    (directory / "config.json").write_text(json.dumps(config))
    before = tree(directory)
    with pytest.raises(ModelNotAvailable) as error:
        load_model(str(directory))
    stored = {"llama": "94,528", "qwen2": "94,784"}[family]
    needed = {"llama": "102,720", "qwen2": "103,104"}[family]
    first = {"llama": "model.layers.0.self_attn.k_proj.weight", "qwen2": "model.layers.0.self_attn.k_proj.bias [32] vs "
             "[16], model.layers.0.self_attn.k_proj.weight"}[family]
    message = str(error.value)
    assert message.startswith(f"model directory '{directory}': config.json does not match the weights: ")
    assert expected.format(needed=needed, stored=stored, first=first) in message
    assert f"i.e. 2 key/value heads, but config.json says num_key_value_heads={kv_heads})" in message
    assert tree(directory) == before
