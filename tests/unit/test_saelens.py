"""SAELens's on-disk format (qcheck/sae/saelens.py): directories written by SAELens 6.54 itself
(tests/fixtures/saelens/make_saelens.py) encode as SAELens encodes them (the same active
features, values to float32 rounding); qcheck's own SAEs
round-trip through the format; the ≤ 5 flat layout is read; what qcheck does not implement is
refused by key and value."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from qcheck.sae.model import SAE, SAEConfig
from qcheck.sae.saelens import CFG_FILE, WEIGHTS_FILE, config_from_saelens, load_saelens, save_saelens
from qcheck.sae.train import Recipe, train_topk

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "saelens"
MADE_BY_SAELENS = ["jumprelu", "standard-b-dec", "standard-no-b-dec", "standard-norm-rescale", "topk-k20",
                   "topk-k20-training"]


@pytest.mark.parametrize("name", MADE_BY_SAELENS)
def test_saelens_directories_encode_and_decode_as_saelens_does(name):
    sae, cfg = load_saelens(FIXTURES / name)
    reference = load_file(FIXTURES / name / "reference.safetensors")
    x = reference["x"]
    assert sae.cfg.hook_name == "blocks.1.hook_resid_post" and (sae.cfg.d_in, sae.cfg.d_sae) == (64, 256)
    assert sae.cfg.architecture == cfg["architecture"]
    h = sae.encode(x)
    # The same features fire, with the same values to float32 rounding. Bit for bit on the machine
    # that made the fixtures; another CPU's matmul kernels round differently (an AVX-512 Xeon
    # decoded up to 4.3e-6 apart on outputs up to 10, i.e. a few float32 ulps).
    assert torch.equal(h > 0, reference["feature_acts"] > 0)
    torch.testing.assert_close(h, reference["feature_acts"], rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(sae.decode(h, x), reference["sae_out"], rtol=1e-6, atol=1e-5)
    assert 0 < (h > 0).sum() < h.numel()   # not vacuous: some features fire, not all


def test_qchecks_sae_round_trips_through_the_format(tmp_path):
    acts = torch.randn(400, 16, generator=torch.Generator().manual_seed(0)).relu() + 1
    sae, _ = train_topk(acts, Recipe(steps=50, batch_size=32), hook_name="blocks.0.hook_resid_post")
    save_saelens(sae, tmp_path / "sae", model_name="zoo-x", context_size=128)
    cfg = json.loads((tmp_path / "sae" / CFG_FILE).read_text())
    # the SAELens 6 layout: the hook under metadata, k beside the architecture
    assert cfg["architecture"] == "topk" and cfg["k"] == sae.cfg.k and cfg["apply_b_dec_to_input"] is True
    assert cfg["metadata"]["hook_name"] == "blocks.0.hook_resid_post" and cfg["metadata"]["model_name"] == "zoo-x"
    assert set(load_file(tmp_path / "sae" / WEIGHTS_FILE)) == {"W_enc", "b_enc", "W_dec", "b_dec"}
    loaded, _ = load_saelens(tmp_path / "sae")
    assert loaded.cfg == sae.cfg and loaded.digest() == sae.digest()
    assert torch.equal(loaded.encode(acts), sae.encode(acts))
    assert not list((tmp_path / "sae").glob("*.tmp-*"))   # atomic writes leave no temporaries


@pytest.mark.parametrize("name", ["jumprelu", "standard-norm-rescale"])
def test_saelens_directories_round_trip_through_qcheck(name, tmp_path):
    sae, _ = load_saelens(FIXTURES / name)
    save_saelens(sae, tmp_path / name, model_name="zoo-pythia-2l64")
    again, _ = load_saelens(tmp_path / name)
    x = load_file(FIXTURES / name / "reference.safetensors")["x"]
    assert again.digest() == sae.digest() and torch.equal(again.encode(x), sae.encode(x))


def test_the_pre_6_flat_layout_is_read():
    """SAELens ≤ 5 wrote one flat dict; 6.x reads it by mapping activation_fn_str "topk" and
    activation_fn_kwargs.k to a topk SAE and the top-level hook keys to metadata
    (`handle_pre_6_0_config`). This dict is written by hand after that mapping."""
    flat = {"architecture": "standard", "d_in": 8, "d_sae": 32, "hook_name": "blocks.2.hook_resid_pre",
            "hook_layer": 2, "model_name": "gpt2", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": 4},
            "apply_b_dec_to_input": False, "normalize_activations": "none", "finetuning_scaling_factor": False,
            "dtype": "torch.float32", "device": "cuda", "context_size": 128, "dataset_path": "x"}
    assert config_from_saelens(flat, "flat") == SAEConfig(
        d_in=8, d_sae=32, architecture="topk", k=4, apply_b_dec_to_input=False, hook_name="blocks.2.hook_resid_pre")
    assert config_from_saelens({**flat, "activation_fn_str": "relu"}, "flat").architecture == "standard"


BASE = {"architecture": "standard", "d_in": 8, "d_sae": 32, "metadata": {"hook_name": "blocks.0.hook_resid_post"}}


@pytest.mark.parametrize("change, message", [
    ({"architecture": "gated"}, "architecture 'gated'"),
    ({"architecture": "batchtopk"}, "architecture 'batchtopk'"),
    ({"normalize_activations": "expected_average_only_in"}, "normalize_activations 'expected_average_only_in'"),
    ({"reshape_activations": "hook_z"}, "reshape_activations 'hook_z'"),
    ({"metadata": {"hook_name": "blocks.0.attn.hook_z", "hook_head_index": 3}}, "hook_head_index 3"),
    ({"activation_fn_str": "tanh-relu"}, "activation_fn_str 'tanh-relu'"),
    ({"finetuning_scaling_factor": True}, "finetuning_scaling_factor True"),
    ({"dtype": "int8"}, "dtype 'int8'"),
    ({"metadata": {}}, "no hook_name"),
    ({"d_sae": 0}, "d_sae must be a positive integer"),
    ({"architecture": "topk"}, "a topk SAE needs an integer k"),
])
def test_unsupported_configs_are_refused_by_key_and_value(change, message):
    with pytest.raises(ValueError, match=message):
        config_from_saelens({**BASE, **change}, "cfg.json")


def test_bad_directories_are_refused_naming_the_file(tmp_path):
    with pytest.raises(ValueError, match="no cfg.json"):
        load_saelens(tmp_path)
    shutil.copytree(FIXTURES / "topk-k20", tmp_path / "sae")
    weights = load_file(tmp_path / "sae" / WEIGHTS_FILE)
    save_file({**weights, "W_enc": weights["W_enc"][:32].contiguous()}, tmp_path / "sae" / WEIGHTS_FILE)
    with pytest.raises(ValueError, match=r"W_enc has shape \(32, 256\), expected \(64, 256\)"):
        load_saelens(tmp_path / "sae")
    (tmp_path / "sae" / WEIGHTS_FILE).write_bytes(b"not safetensors")
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        load_saelens(tmp_path / "sae")


def test_rescale_acts_by_decoder_norm_ranks_as_if_the_decoder_rows_were_unit_norm():
    """SAELens's trainer writes it true (the topk-k20-training fixture, encoded exactly above);
    with rows of other norms the ranking and the decoding both change, as in SAELens."""
    cfg = SAEConfig(d_in=2, d_sae=2, architecture="topk", k=1, apply_b_dec_to_input=False,
                    hook_name="blocks.0.hook_resid_post", rescale_acts_by_decoder_norm=True)
    sae = SAE.from_tensors(cfg, {"W_enc": torch.eye(2), "b_enc": torch.zeros(2), "b_dec": torch.zeros(2),
                                 "W_dec": torch.tensor([[3.0, 0.0], [0.0, 1.0]])})
    h = sae.encode(torch.tensor([[1.0, 2.0]]))          # pre [1, 2] · norms [3, 1] = [3, 2]: feature 0
    assert h.tolist() == [[3.0, 0.0]]
    assert sae.decode(h).tolist() == [[3.0, 0.0]]       # h / 3 @ W_dec
    with pytest.raises(ValueError, match="topk SAEs only"):
        SAEConfig(d_in=2, d_sae=2, architecture="standard", rescale_acts_by_decoder_norm=True)
