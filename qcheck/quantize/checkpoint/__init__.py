"""GPTQ-packed checkpoints (AutoGPTQ / GPTQModel layout, formats v1 and v2).

- format.py: read a checkpoint directory (configs, safetensors headers) and check it against the
  FP model (architecture, shapes, vocabulary, missing / extra tensors) without reading weights.
- load.py: `load_checkpoint`, the checkpoint dequantized into a float32 copy of the FP model.
- export.py: `export_checkpoint`, qcheck's own RTN/GPTQ result written in the same format.
The bit packing itself is qcheck/quantize/packing.py.
"""

from qcheck.quantize.checkpoint.export import export_checkpoint
from qcheck.quantize.checkpoint.format import (Checkpoint, CheckpointWarning, check_layout, check_tokenizer,
                                               checkpoint_name, open_checkpoint)
from qcheck.quantize.checkpoint.load import load_checkpoint

__all__ = ["Checkpoint", "CheckpointWarning", "check_layout", "check_tokenizer", "checkpoint_name",
           "export_checkpoint", "load_checkpoint", "open_checkpoint"]
