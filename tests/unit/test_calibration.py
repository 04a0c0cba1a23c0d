"""Calibration sources: sampled (offline default), user file, WikiText-2 (fails clearly offline)."""

from __future__ import annotations

import json
import sys
import time

import pytest
import torch

from qcheck.data.calibration import (CalibrationError, calibration_for, from_file, resolve_seq_len, sampled,
                                     token_digest, wikitext2)
from qcheck.quantize.spec import parse_quant_spec

TEXT = "The quick brown fox jumps over the lazy dog. " * 20  # 900 bytes


def test_sampled_starts_at_bos_and_is_seeded(tiny_model):
    a = sampled(tiny_model, n_samples=5, seq_len=12, seed=3)
    assert a.tokens.shape == (5, 12) and a.tokens.dtype == torch.int64
    assert (a.tokens[:, 0] == tiny_model.config.bos_token_id).all()
    assert a.tokens.min() >= 0 and a.tokens.max() < 256
    assert a.digest == token_digest(a.tokens) and "seed=3" in a.source
    again = sampled(tiny_model, n_samples=5, seq_len=12, seed=3)
    assert torch.equal(again.tokens, a.tokens) and again.digest == a.digest
    assert sampled(tiny_model, n_samples=5, seq_len=12, seed=4).digest != a.digest


def test_sampled_uses_the_models_distribution(tiny_gpt2_lm):
    """Tokens come from the model: one whose next-token logits are 50 for token 7 and 0 for the
    rest (ln_f outputs a constant vector of ones) samples nothing else."""
    import copy

    model = copy.deepcopy(tiny_gpt2_lm)
    with torch.no_grad():
        model.transformer.ln_f.weight.zero_()
        model.transformer.ln_f.bias.fill_(1.0)
        model.lm_head.weight.zero_()
        model.lm_head.weight[7] = 50 / 32
    tokens = sampled(model, n_samples=4, seq_len=10, seed=0).tokens
    assert (tokens[:, 1:] == 7).all()


def test_sampling_keeps_the_callers_mode(tiny_gpt2_lm):
    tiny_gpt2_lm.train()
    try:
        sampled(tiny_gpt2_lm, n_samples=2, seq_len=4, seed=0)
        assert tiny_gpt2_lm.training
    finally:
        tiny_gpt2_lm.eval()


def test_more_samples_than_one_sampling_batch(tiny_gpt2_lm):
    assert sampled(tiny_gpt2_lm, n_samples=33, seq_len=3, seed=0).tokens.shape == (33, 3)


def test_file_windows_are_spans_of_the_text(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(TEXT)
    calibration = from_file(path, n_samples=6, seq_len=40, seed=1, vocab_size=256)
    assert calibration.tokens.shape == (6, 40)
    for row in calibration.tokens:
        assert bytes(row.tolist()).decode() in TEXT
    assert from_file(path, n_samples=6, seq_len=40, seed=1, vocab_size=256).digest == calibration.digest
    assert str(path) in calibration.source


def test_file_with_a_tokenizer(tmp_path):
    class WordTokenizer:
        def encode(self, text):
            return [len(word) for word in text.split()]

    path = tmp_path / "calib.txt"
    path.write_text(TEXT)
    tokens = from_file(path, n_samples=2, seq_len=5, seed=0, tokenizer=WordTokenizer(), vocab_size=50257).tokens
    assert set(tokens.flatten().tolist()) <= {3, 4, 5}


def test_file_errors_name_the_source_and_the_fix(tmp_path):
    with pytest.raises(CalibrationError, match=r"file:.*nope.txt': no such file.*--qcheck-quant"):
        from_file(tmp_path / "nope.txt", n_samples=1, seq_len=8, seed=0, vocab_size=256)
    short = tmp_path / "short.txt"
    short.write_text("tiny")
    with pytest.raises(CalibrationError, match="too short: 4 tokens, need at least seq_len=8"):
        from_file(short, n_samples=1, seq_len=8, seed=0, vocab_size=256)
    with pytest.raises(CalibrationError, match="vocab_size=50257 needs its tokenizer"):
        from_file(short, n_samples=1, seq_len=2, seed=0, vocab_size=50257)


def test_a_json_file_gives_its_token_ids_as_they_are(tmp_path):
    ids = [[0, 5, 6, 7], [0, 9, 8, 7], [0, 1, 2, 3]]
    path = tmp_path / "ids.json"
    path.write_text(json.dumps({"source": "another tool", "input_ids": ids}))
    calibration = from_file(path, n_samples=3, seq_len=4, seed=0, vocab_size=256)
    assert calibration.tokens.tolist() == ids
    assert from_file(path, n_samples=3, seq_len=4, seed=7, vocab_size=256).digest == calibration.digest  # no windows
    (tmp_path / "list.json").write_text(json.dumps(ids))
    assert from_file(tmp_path / "list.json", n_samples=3, seq_len=4, seed=0, vocab_size=256).digest == calibration.digest


def test_a_json_file_must_match_the_spec_and_the_vocabulary(tmp_path):
    path = tmp_path / "ids.json"
    path.write_text(json.dumps([[0, 1, 2], [3, 4, 5]]))
    with pytest.raises(CalibrationError, match=r"holds 2 sequences of 3 tokens .* write -n2-len3"):
        from_file(path, n_samples=128, seq_len=64, seed=0, vocab_size=256)
    with pytest.raises(CalibrationError, match=r"token ids 0..300 are outside the model's vocabulary 0..255"):
        path.write_text(json.dumps([[0, 1, 300]]))
        from_file(path, n_samples=1, seq_len=3, seed=0, vocab_size=256)
    with pytest.raises(CalibrationError, match=r"sequences of 2..3 tokens; every sequence must have the same length"):
        path.write_text(json.dumps([[0, 1, 2], [0, 1]]))
        from_file(path, n_samples=2, seq_len=3, seed=0, vocab_size=256)
    with pytest.raises(CalibrationError, match=r"expected a non-empty list of non-empty lists of token ids"):
        path.write_text(json.dumps({"input_ids": [[0, 1.5]]}))
        from_file(path, n_samples=1, seq_len=2, seed=0, vocab_size=256)
    with pytest.raises(CalibrationError, match=r"not valid JSON"):
        path.write_text("[[0, 1")
        from_file(path, n_samples=1, seq_len=2, seed=0, vocab_size=256)


def test_wikitext2_without_datasets_is_one_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(CalibrationError, match=r"needs the `datasets` package.*--qcheck-quant gptq-w4"):
        wikitext2(n_samples=1, seq_len=8, seed=0, vocab_size=256)


def test_wikitext2_offline_fails_fast_with_the_fix(monkeypatch, tmp_path):
    pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(CalibrationError, match=r"wikitext2' could not be loaded \(offline mode.*--qcheck-quant"):
        wikitext2(n_samples=1, seq_len=8, seed=0, vocab_size=256, cache_dir=str(tmp_path))
    assert time.perf_counter() - start < 20  # no network retries


def test_default_length_is_the_context_capped_at_128(tiny_gpt2_lm):
    assert resolve_seq_len(tiny_gpt2_lm, None) == 64
    assert resolve_seq_len(tiny_gpt2_lm, 16) == 16
    with pytest.raises(CalibrationError, match="exceeds the model's context of 64"):
        resolve_seq_len(tiny_gpt2_lm, 65)


def test_calibration_for_follows_the_spec(tiny_gpt2_lm, tmp_path):
    spec = parse_quant_spec("gptq-w4-n3-len8-seed5")
    assert torch.equal(calibration_for(spec, tiny_gpt2_lm).tokens, sampled(tiny_gpt2_lm, n_samples=3, seq_len=8, seed=5).tokens)
    path = tmp_path / "c.txt"
    path.write_text(TEXT)
    from_spec = calibration_for(parse_quant_spec(f"gptq-w4-n2-len8-file:{path}"), tiny_gpt2_lm)
    assert from_spec.tokens.shape == (2, 8) and from_spec.source.startswith(f"file:{path}")


def test_digest_depends_on_values_and_shape():
    t = torch.arange(12)
    assert token_digest(t.reshape(3, 4)) != token_digest(t.reshape(4, 3))
    assert token_digest(t) != token_digest(t.flip(0))
    assert token_digest(t.int()) == token_digest(t)  # dtype-independent: the values are what count
