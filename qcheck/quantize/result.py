"""The quantize stage's output: a quantized copy of the FP model and where it came from, made by
qcheck's own quantizers (cache.py) or loaded from a checkpoint (checkpoint/load.py)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from torch import nn

from qcheck.models.digest import model_digest
from qcheck.quantize.apply import QuantReport
from qcheck.quantize.spec import QuantSpec


@dataclass(frozen=True)
class QuantizedModel:
    """A quantized deep copy of an HF model and where it came from.

    weight_digest is the FP model's (models/digest.py); quantized_digest the quantized copy's.
    calibration_source / calibration_digest are None for methods without calibration (RTN).
    cache_note says why an existing entry was not used ("missing", "sha256 ... does not match"...).
    notes: caveats of a loaded checkpoint (a synthesised tokenizer ignored, ...), in the report.
    """

    model: nn.Module
    spec: QuantSpec
    weight_digest: str
    calibration_source: str | None
    calibration_digest: str | None
    from_cache: bool
    report: QuantReport
    key: str
    cache_note: str | None = None
    notes: tuple[str, ...] = ()  # a checkpoint's: what was ignored, how its other tensors were checked

    @cached_property
    def quantized_digest(self) -> str:
        """model_digest of `model`, computed once, on first read: hashing a whole state dict takes
        seconds for a GPT-2-XL-sized model, and only the report reads it."""
        return model_digest(self.model)
