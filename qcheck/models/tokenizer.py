"""Text -> token ids for both kinds of model: byte-level zoo models and HF-tokenizer models.

Every prompt starts with BOS so that position 0 is the same "attention sink" for every model
(GPT-2's tokenizer adds no BOS by itself, NeoX's neither; we add it explicitly).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Tokenizer:
    """encode(text) -> [bos] + ids. `random_range` is the [low, high) token range used for
    induction probes: bytes 1..255 for zoo models (heads exist only for the trained range), the
    study's [100, d_vocab - 100) otherwise."""

    bos: int
    vocab_size: int
    random_range: tuple[int, int]
    hf_tokenizer: Any = None  # None for byte-level models

    def encode(self, text: str) -> list[int]:
        if self.hf_tokenizer is None:
            return [self.bos] + list(text.encode("utf-8").replace(b"\0", b""))
        return [self.bos] + list(self.hf_tokenizer.encode(text, add_special_tokens=False))

    def decode(self, ids: list[int]) -> str:
        if self.hf_tokenizer is None:
            return bytes(i for i in ids if i != self.bos).decode("utf-8", errors="replace")
        return self.hf_tokenizer.decode(ids)


def byte_tokenizer() -> Tokenizer:
    return Tokenizer(bos=0, vocab_size=256, random_range=(1, 256))


def hf_tokenizer(location: str, vocab_size: int, *, local_only: bool) -> Tokenizer:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(location, local_files_only=local_only,
                                              trust_remote_code=False)
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return Tokenizer(bos=bos, vocab_size=vocab_size, random_range=(100, vocab_size - 100),
                     hf_tokenizer=tokenizer)


def tokenizer_for(kind: str, location: str, vocab_size: int, *, local_only: bool) -> Tokenizer:
    """Zoo models read bytes; a local directory of a vocab-256 model without tokenizer files is
    byte-level too; everything else needs its HF tokenizer beside the weights."""
    if kind == "zoo" or (kind == "local" and vocab_size == 256 and not has_tokenizer_files(location)):
        return byte_tokenizer()
    try:
        return hf_tokenizer(location, vocab_size, local_only=local_only)
    except (OSError, ValueError) as error:
        raise LookupError(f"model {location!r} has no tokenizer that loads here ({error}); save it "
                          f"beside the weights with `tokenizer.save_pretrained(DIR)`") from None


def has_tokenizer_files(directory: str) -> bool:
    """Whether `directory` holds the files of an HF tokenizer (a checkpoint may ship one)."""
    names = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    return any((Path(directory) / name).is_file() for name in names)


# Files that carry a vocabulary in a format read here only as "a real tokenizer" (SentencePiece,
# WordPiece): their presence means the tokenizer is not a synthesised, special-tokens-only one.
_OPAQUE_VOCABULARIES = ("tokenizer.model", "spiece.model", "sentencepiece.bpe.model", "vocab.txt")
_SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")


def synthesised_tokenizer(directory: str) -> str | None:
    """What a tokenizer made from nothing holds, or None if `directory` has a real tokenizer (or none).

    A tool that saves a model with no tokenizer beside it may still write tokenizer files:
    transformers 5 `AutoTokenizer` fabricates one from the config (GPTQModel 7.6 saves it), with
    no vocabulary but its special tokens (`<|endoftext|>`, `<|padding|>`) and no merges. Such
    files say nothing about which model was quantized. Read as JSON, never executed: a tokenizer
    is synthesised when tokenizer.json, vocab.json and merges.txt (those present) hold no token
    that is not special (tokenizer.json `added_tokens` with `special`, or tokenizer_config.json's
    bos/eos/unk/pad/... tokens) and no merge, and no SentencePiece/WordPiece vocabulary file is
    there. Anything unreadable or unexpected counts as real (and is compared as one).
    """
    import json

    path = Path(directory)
    present = [name for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt")
               if (path / name).is_file()]
    if not present or any((path / name).is_file() for name in _OPAQUE_VOCABULARIES):
        return None
    special: set[str] = set()
    tokens: set[str] = set()
    try:
        def read(name: str):
            return json.loads((path / name).read_text(encoding="utf-8")) if (path / name).is_file() else None

        config = read("tokenizer_config.json") or {}
        for key in _SPECIAL_KEYS:
            value = config.get(key)
            value = value.get("content") if isinstance(value, dict) else value
            if isinstance(value, str):
                special.add(value)
        for token in config.get("additional_special_tokens") or []:
            special.add(token.get("content") if isinstance(token, dict) else token)
        for token in (config.get("added_tokens_decoder") or {}).values():
            (special if token.get("special") else tokens).add(token["content"])
        whole = read("tokenizer.json")
        if whole is not None:
            for token in whole.get("added_tokens") or []:
                (special if token.get("special") else tokens).add(token["content"])
            model = whole.get("model") or {}
            vocab = model.get("vocab", {})
            if isinstance(vocab, dict):
                tokens.update(vocab)
            elif isinstance(vocab, list):  # Unigram: [[token, score], ...]
                tokens.update(entry[0] for entry in vocab)
            else:
                return None
            if model.get("merges"):
                return None
        vocab_json = read("vocab.json")
        if vocab_json is not None:
            if not isinstance(vocab_json, dict):
                return None
            tokens.update(vocab_json)
        if (path / "merges.txt").is_file():
            lines = (path / "merges.txt").read_text(encoding="utf-8").splitlines()
            if any(line.strip() and not line.startswith("#version") for line in lines):
                return None
    except (OSError, ValueError, AttributeError, TypeError, KeyError, IndexError):
        return None
    if tokens - special:
        return None
    return (f"{', '.join(present)}: a tokenizer with no vocabulary but its {len(special)} special token(s) "
            f"({', '.join(sorted(special)) or 'none'}) and no merges, as tools write when the model had no tokenizer "
            f"beside it; ignored: the FP model's tokenizer is used")
