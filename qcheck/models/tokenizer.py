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
