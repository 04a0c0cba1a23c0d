"""Quantized checkpoints: GPTQ-packed (AutoGPTQ / GPTQModel, formats v1 and v2) and
compressed-tensors pack-quantized (llm-compressor; what vLLM serves), read, checked and written.

- format.py: read a checkpoint directory (configs, safetensors headers) and check it against the
  FP model (architecture, shapes, vocabulary, which modules are quantized, missing / extra
  tensors) without reading weights; it dispatches on `quant_method` to a format config:
  - gptq_packed.py `GPTQConfig`: qweight/qzeros/scales/g_idx (bit packing: qcheck/quantize/packing.py);
  - compressed.py `CompressedConfig`: weight_packed/weight_scale/weight_shape[/weight_zero_point]
    [/weight_g_idx], config_groups targets and ignore; read with safetensors alone.
- load.py: `load_checkpoint`, either family dequantized into a float32 copy of the FP model.
- export.py: `export_checkpoint`, qcheck's own RTN/GPTQ result written GPTQ-packed;
  export_compressed.py: `export_compressed_tensors`, the same as pack-quantized; cli.py: both
  from the command line (`python -m qcheck.quantize.checkpoint ... [--as compressed-tensors]`).
"""

from qcheck.quantize.checkpoint.export import export_checkpoint
from qcheck.quantize.checkpoint.export_compressed import export_compressed_tensors
from qcheck.quantize.checkpoint.format import (Checkpoint, CheckpointWarning, check_layout, check_tokenizer,
                                               checkpoint_name, open_checkpoint)
from qcheck.quantize.checkpoint.load import load_checkpoint

__all__ = ["Checkpoint", "CheckpointWarning", "check_layout", "check_tokenizer", "checkpoint_name",
           "export_checkpoint", "export_compressed_tensors", "load_checkpoint", "open_checkpoint"]
