"""Calibration sources for GPTQ: (tokens, source description, digest).

- `sampled` (the offline default): sequences sampled from the FP model itself, starting from its
  BOS token, temperature 1, multinomial with a seeded torch.Generator. Needs nothing but the model.
- `file:PATH`: a user's text file, tokenized with the given tokenizer (or as UTF-8 bytes for
  byte-level vocab-256 models), cut into seeded random windows. A `.json` PATH holds token ids
  instead, taken as they are, in order: the batches another tool calibrated on (a list of
  sequences, or an object whose `input_ids` is one), so qcheck's GPTQ can be run on exactly
  the same tokens. Its shape must be the spec's (`-nN -lenN`): the spec string says what ran.
- `wikitext2`: the study's source, WikiText-2 train via `datasets`, the documents joined with
  "\\n\\n" and cut into seeded random windows (as reference gptq datautils.get_wikitext2). Needs
  the package and the network (or its local cache); offline it fails at once with one error.

Windows are raw token spans (no BOS added), as the reference takes them. The digest is the
sha256 of the tokens' shape and int64 little-endian bytes, so equal digests mean equal tokens.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import os
from pathlib import Path
from typing import NamedTuple

import torch
from jaxtyping import Int
from torch import Tensor

from qcheck.memory import release_freed_memory
from qcheck.models.context import context_of

DEFAULT_MAX_SEQ_LEN = 128   # the default sequence length is the model's context, at most this
SAMPLING_BATCH = 32         # fixed: the sampled tokens depend on it only through float rounding
FIX = ("use the offline default (e.g. `--qcheck-quant gptq-w4`: calibration sampled from the model) "
       "or a text file (`--qcheck-quant gptq-w4-file:PATH`)")


class CalibrationError(ValueError):
    """A calibration source cannot be produced; the message names the source and the fix."""


class Calibration(NamedTuple):
    tokens: Int[Tensor, "n_samples seq_len"]   # int64, on the CPU
    source: str                                # what produced them, with its parameters
    digest: str                                # sha256 hex of the tokens (token_digest)


def token_digest(tokens: Tensor) -> str:
    """sha256 over the shape and the int64 little-endian bytes of `tokens`."""
    t = tokens.detach().to("cpu", torch.int64).contiguous()
    h = hashlib.sha256(repr(tuple(t.shape)).encode())
    h.update(t.numpy().astype("<i8").tobytes())
    return h.hexdigest()


def resolve_seq_len(hf_model, seq_len: int | None) -> int:
    """seq_len, or the default min(model context, 128); rejects lengths beyond the context."""
    context = context_of(hf_model.config)
    if context is None:
        raise CalibrationError(f"{type(hf_model).__name__}: the config names no context length; pass seq_len explicitly")
    if seq_len is None:
        return min(context, DEFAULT_MAX_SEQ_LEN)
    if seq_len > context:
        raise CalibrationError(f"calibration seq_len={seq_len} exceeds the model's context of {context} "
                               f"tokens; use -len{context} or less")
    return seq_len


@torch.no_grad()
def sampled(hf_model, *, n_samples: int, seq_len: int, seed: int) -> Calibration:
    """n_samples sequences of seq_len tokens: BOS, then tokens sampled from `hf_model` (T = 1)."""
    bos = getattr(hf_model.config, "bos_token_id", None)
    if bos is None:
        raise CalibrationError(f"calibration 'sampled': {type(hf_model).__name__} has no bos_token_id "
                               f"to start from; use a text file (`gptq-w4-file:PATH`) or wikitext2")
    generator = torch.Generator().manual_seed(seed)
    device = next(hf_model.parameters()).device
    was_training = hf_model.training
    hf_model.eval()  # dropout off; restored below
    try:
        parts = []
        for start in range(0, n_samples, SAMPLING_BATCH):
            parts.append(_sample_batch(hf_model, bos, min(SAMPLING_BATCH, n_samples - start), seq_len,
                                       generator, device))
            release_freed_memory()  # the batch's key/value cache (300 MiB at GPT-2 small's shape)
    finally:
        hf_model.train(was_training)
    tokens = torch.cat(parts)
    return Calibration(tokens, f"sampled from the FP model (bos={bos}, T=1, seed={seed}, n={n_samples}, "
                               f"len={seq_len})", token_digest(tokens))


def _sample_batch(hf_model, bos: int, batch: int, seq_len: int, generator: torch.Generator, device) -> Tensor:
    tokens = torch.full((batch, 1), bos, dtype=torch.long)                 # (batch, pos)
    out = hf_model(input_ids=tokens.to(device), use_cache=True)
    for _ in range(seq_len - 1):
        probs = torch.softmax(out.logits[:, -1].float().cpu(), dim=-1)      # (batch, d_vocab)
        step = torch.multinomial(probs, 1, generator=generator)           # (batch, 1)
        tokens = torch.cat([tokens, step], dim=1)
        if tokens.shape[1] < seq_len:
            out = hf_model(input_ids=step.to(device), past_key_values=out.past_key_values, use_cache=True)
    return tokens


def from_file(path: str | Path, *, n_samples: int, seq_len: int, seed: int, tokenizer=None,
              vocab_size: int | None = None) -> Calibration:
    """Seeded random windows of a user's text file (tokenizer, or UTF-8 bytes if vocab_size == 256)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CalibrationError(f"calibration 'file:{path}': no such file; give an existing text file, or {FIX}")
    if path.suffix == ".json":
        return _token_file(path, n_samples=n_samples, seq_len=seq_len, vocab_size=vocab_size)
    stream = _tokenize(path.read_text(encoding="utf-8", errors="replace"), tokenizer, vocab_size, f"file:{path}")
    tokens = _windows(stream, n_samples=n_samples, seq_len=seq_len, seed=seed, name=f"file:{path}")
    return Calibration(tokens, f"file:{path} (windows, seed={seed}, n={n_samples}, len={seq_len})",
                       token_digest(tokens))


def _token_file(path: Path, *, n_samples: int, seq_len: int, vocab_size: int | None) -> Calibration:
    """Token ids from a JSON file, as they are: (n_samples, seq_len) int64, checked against the spec."""
    import json

    name = f"calibration 'file:{path}'"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CalibrationError(f"{name}: not valid JSON ({error}); a .json calibration file holds token ids "
                               f"(a list of sequences, or an object with `input_ids`)") from None
    ids = data.get("input_ids") if isinstance(data, dict) else data
    if not (isinstance(ids, list) and ids and all(isinstance(row, list) and row for row in ids)
            and all(isinstance(t, int) and not isinstance(t, bool) for row in ids for t in row)):
        raise CalibrationError(f"{name}: expected a non-empty list of non-empty lists of token ids (or an object "
                               f"whose `input_ids` is one)")
    lengths = sorted({len(row) for row in ids})
    if len(lengths) > 1:
        raise CalibrationError(f"{name}: sequences of {lengths[0]}..{lengths[-1]} tokens; every sequence must have "
                               f"the same length (no padding is added)")
    if (len(ids), lengths[0]) != (n_samples, seq_len):
        raise CalibrationError(f"{name} holds {len(ids)} sequences of {lengths[0]} tokens but the spec asks for "
                               f"{n_samples} of {seq_len}; write -n{len(ids)}-len{lengths[0]} in the spec")
    tokens = torch.tensor(ids, dtype=torch.long)
    if tokens.min() < 0 or (vocab_size is not None and tokens.max() >= vocab_size):
        raise CalibrationError(f"{name}: token ids {int(tokens.min())}..{int(tokens.max())} are outside the "
                               f"model's vocabulary 0..{vocab_size - 1 if vocab_size else '?'}")
    return Calibration(tokens, f"file:{path} (token ids as stored, n={n_samples}, len={seq_len})",
                       token_digest(tokens))


def wikitext2(*, n_samples: int, seq_len: int, seed: int, tokenizer=None, vocab_size: int | None = None,
              cache_dir: str | None = None) -> Calibration:
    """The study's source: seeded windows of WikiText-2 (raw, train split) via `datasets`."""
    try:
        datasets = importlib.import_module("datasets")
    except ImportError:
        raise CalibrationError(f"calibration 'wikitext2' needs the `datasets` package (pip install datasets); "
                               f"or {FIX}") from None
    offline = _env_offline()
    try:
        with _offline_mode(offline):
            data = datasets.load_dataset("Salesforce/wikitext", "wikitext-2-raw-v1", split="train", cache_dir=cache_dir)
    except Exception as err:  # datasets raises ConnectionError, FileNotFoundError, OSError, ...
        mode = " (offline mode: HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set and it is not cached)" if offline else ""
        raise CalibrationError(f"calibration 'wikitext2' could not be loaded{mode}: {type(err).__name__}: "
                               f"{str(err)[:200]}; {FIX}") from None
    stream = _tokenize("\n\n".join(data["text"]), tokenizer, vocab_size, "wikitext2")
    tokens = _windows(stream, n_samples=n_samples, seq_len=seq_len, seed=seed, name="wikitext2")
    return Calibration(tokens, f"wikitext2 (wikitext-2-raw-v1 train, windows, seed={seed}, n={n_samples}, "
                               f"len={seq_len})", token_digest(tokens))


def calibration_for(spec, hf_model, *, tokenizer=None) -> Calibration:
    """The calibration a QuantSpec asks for (spec.calibration, n_samples, seq_len, seed)."""
    seq_len = resolve_seq_len(hf_model, spec.seq_len)
    common = dict(n_samples=spec.n_samples, seq_len=seq_len, seed=spec.seed)
    vocab = getattr(hf_model.config, "vocab_size", None)
    if spec.calibration == "sampled":
        return sampled(hf_model, **common)
    if spec.calibration == "wikitext2":
        return wikitext2(tokenizer=tokenizer, vocab_size=vocab, **common)
    if spec.calibration.startswith("file:"):
        return from_file(spec.calibration[5:], tokenizer=tokenizer, vocab_size=vocab, **common)
    raise CalibrationError(f"unknown calibration source {spec.calibration!r}; {FIX}")


def _tokenize(text: str, tokenizer, vocab_size: int | None, name: str) -> Tensor:
    if tokenizer is not None:
        ids = tokenizer.encode(text) if hasattr(tokenizer, "encode") else tokenizer(text)["input_ids"]
        return torch.tensor(ids, dtype=torch.long)
    if vocab_size == 256:  # byte-level models (the zoo): tokens are the UTF-8 bytes
        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()
    raise CalibrationError(f"calibration {name!r}: a model with vocab_size={vocab_size} needs its tokenizer "
                           f"to read text; pass one, or {FIX}")


def _windows(stream: Tensor, *, n_samples: int, seq_len: int, seed: int, name: str) -> Tensor:
    """n_samples windows of seq_len tokens at seeded random starts: (n_samples, seq_len) int64."""
    if len(stream) < seq_len:
        raise CalibrationError(f"calibration {name!r} is too short: {len(stream)} tokens, need at least "
                               f"seq_len={seq_len}; use a longer text, a smaller -lenN, or {FIX}")
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(stream) - seq_len + 1, (n_samples,), generator=generator)
    return torch.stack([stream[s:s + seq_len] for s in starts.tolist()])


def _env_offline() -> bool:
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    return any(os.environ.get(n, "").upper() in ("1", "ON", "YES", "TRUE") for n in names)


@contextlib.contextmanager
def _offline_mode(offline: bool):
    """Honour an offline variable set after `datasets` was imported (it reads them only at import;
    without this, load_dataset retries the network for ~25 s before failing)."""
    if not offline:
        yield
        return
    modules = [importlib.import_module(m) for m in ("datasets.config", "huggingface_hub.constants")]
    saved = [m.HF_HUB_OFFLINE for m in modules]
    try:
        for m in modules:
            m.HF_HUB_OFFLINE = True
        yield
    finally:
        for m, value in zip(modules, saved):
            m.HF_HUB_OFFLINE = value
