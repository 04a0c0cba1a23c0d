"""The quantized-weight cache: hits and keys. Corrupt entries, interrupted writes and concurrent
workers: tests/robustness/test_faulty_cache.py."""

from __future__ import annotations

import copy
import pytest
import torch

from qcheck.data.calibration import Calibration, token_digest
from qcheck.quantize import cache
from qcheck.models.digest import model_digest
from qcheck.quantize.cache import cache_key, default_cache_dir, load_or_quantize
from qcheck.quantize.spec import parse_quant_spec
from qcheck.quantize.store import Entry


@pytest.fixture
def count_quantize(monkeypatch):
    """Counts calls of the quantizer behind the cache."""
    calls = []
    original = cache.quantize_model

    def counting(*args, **kwargs):
        calls.append(args[1])
        return original(*args, **kwargs)

    monkeypatch.setattr(cache, "quantize_model", counting)
    return calls


def _entry(tmp_path, result) -> Entry:
    return Entry(tmp_path, "quant", result.key)


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("quant", ["rtn-w4", "gptq-w4-n4-len16"])
def test_second_call_hits_the_cache(tiny_model, tmp_path, count_quantize, quant):
    spec = parse_quant_spec(quant)
    first = load_or_quantize(tiny_model, spec, cache_dir=tmp_path)
    second = load_or_quantize(tiny_model, spec, cache_dir=tmp_path)
    assert (first.from_cache, second.from_cache) == (False, True) and len(count_quantize) == 1
    assert _same_weights(first.model, second.model) and not second.model.training
    assert second.report == first.report and second.key == first.key
    assert second.weight_digest == model_digest(tiny_model)
    assert second.quantized_digest == first.quantized_digest == model_digest(first.model) != second.weight_digest
    if spec.needs_calibration:
        assert first.calibration_digest == second.calibration_digest and "sampled" in first.calibration_source
    else:
        assert first.calibration_digest is None


def test_given_calibration_is_used_and_keyed(tiny_gpt2_lm, tmp_path, calibration_tokens, count_quantize):
    spec = parse_quant_spec("gptq-w4")
    a = load_or_quantize(tiny_gpt2_lm, spec, calibration=calibration_tokens, cache_dir=tmp_path)
    b = load_or_quantize(tiny_gpt2_lm, spec, calibration=Calibration(calibration_tokens[:8], "first 8", "x"),
                         cache_dir=tmp_path)
    assert a.calibration_digest == token_digest(calibration_tokens) and b.key != a.key
    assert len(count_quantize) == 2


def test_key_covers_model_spec_and_calibration():
    spec = parse_quant_spec("gptq-w4")
    base = cache_key("m", spec, "c")
    assert len({base, cache_key("m2", spec, "c"), cache_key("m", parse_quant_spec("gptq-w3"), "c"),
                cache_key("m", spec, "c2")}) == 4
    assert cache_key("m", spec, "c") == base


def test_model_digest_sees_every_weight(tiny_gpt2_lm):
    clone = copy.deepcopy(tiny_gpt2_lm)
    assert model_digest(clone) == model_digest(tiny_gpt2_lm)
    with torch.no_grad():
        clone.transformer.ln_f.bias[0] += 1e-6
    assert model_digest(clone) != model_digest(tiny_gpt2_lm)


def test_a_stray_temporary_file_does_not_hide_a_good_entry(tiny_gpt2_lm, tmp_path, count_quantize):
    spec = parse_quant_spec("rtn-w4")
    entry = _entry(tmp_path, load_or_quantize(tiny_gpt2_lm, spec, cache_dir=tmp_path))
    (entry.dir / f"{entry.key}.json.tmp-1-0").write_text("{")
    assert load_or_quantize(tiny_gpt2_lm, spec, cache_dir=tmp_path).from_cache and len(count_quantize) == 1


def test_sampled_calibration_is_cached(tiny_gpt2_lm, tmp_path, monkeypatch):
    calls = []
    original = cache.calibration_for
    monkeypatch.setattr(cache, "calibration_for", lambda *a, **k: calls.append(1) or original(*a, **k))
    first = load_or_quantize(tiny_gpt2_lm, parse_quant_spec("gptq-w4-n4-len16"), cache_dir=tmp_path)
    # a different quantizer with the same calibration fields reuses the sampled tokens
    second = load_or_quantize(tiny_gpt2_lm, parse_quant_spec("gptq-w3-n4-len16"), cache_dir=tmp_path)
    assert len(calls) == 1 and first.calibration_digest == second.calibration_digest


def test_cache_dir_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("QCHECK_CACHE_DIR", str(tmp_path / "here"))
    assert default_cache_dir() == tmp_path / "here"
    monkeypatch.delenv("QCHECK_CACHE_DIR")
    assert default_cache_dir().parts[-2:] == (".cache", "qcheck")
