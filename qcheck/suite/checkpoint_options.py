"""`--qcheck-checkpoint DIR`: each directory checked against the FP model at configure time.

Everything that needs no weights is checked here, so a wrong checkpoint is one usage error, not
a failed test per analysis: the quantization config, the safetensors headers (truncated files),
the architecture, shapes, vocabulary and tokenizer, missing and extra tensors. The FP model's
layout comes from its config on the meta device (no weights loaded). What needs the values
(zero points, g_idx range, the unquantized tensors matching the FP model) is checked on load.
"""

from __future__ import annotations

from pathlib import Path

from qcheck.quantize.checkpoint.format import (Layout, check_layout, check_tokenizer, checkpoint_name,
                                               layout_of, open_checkpoint)
from qcheck.quantize.spec import CheckpointRef


def validate_checkpoints(directories: list[str], models: list[str]) -> dict[CheckpointRef, str]:
    """{checkpoint: resolved directory} for the --qcheck-checkpoint values.

    Raises ValueError naming the option value and the fix; `models` are the --qcheck-model names.
    """
    if not directories:
        return {}
    if len(models) != 1:
        raise ValueError(f"--qcheck-checkpoint needs exactly one --qcheck-model, the FP model the checkpoint "
                         f"was quantized from (got {len(models)}: {', '.join(models) or 'none'})")
    layout, vocab = fp_layout(models[0])
    checkpoints: dict[CheckpointRef, str] = {}
    for directory in dict.fromkeys(directories):
        try:
            ckpt = open_checkpoint(directory)
            check_layout(ckpt, layout)
            check_tokenizer(ckpt, vocab, models[0])
        except ValueError as error:
            raise ValueError(f"--qcheck-checkpoint {directory}: {error}") from None
        name, path = checkpoint_name(directory), str(Path(directory).expanduser().resolve())
        if name in checkpoints and checkpoints[name] != path:
            raise ValueError(f"--qcheck-checkpoint {directory}: its name {name} is taken by "
                             f"{checkpoints[name]}; rename one of the folders")
        checkpoints[name] = path
    return checkpoints


def fp_layout(name: str) -> tuple[Layout, dict[str, int] | None]:
    """The FP model's layout (built on the meta device from its config) and its tokenizer's
    vocabulary (None: a byte-level model)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from qcheck.models.registry import resolve
    from qcheck.models.tokenizer import tokenizer_for

    spec = resolve(name, probe_hub=False)
    try:
        config = AutoConfig.from_pretrained(spec.location, local_files_only=True, trust_remote_code=False)
    except OSError:
        config = AutoConfig.from_pretrained(spec.location, trust_remote_code=False)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    try:
        tokenizer = tokenizer_for(spec.kind, spec.location, config.vocab_size, local_only=True).hf_tokenizer
    except LookupError as error:  # loading the model would fail the same way, later
        raise ValueError(f"--qcheck-model {name}: {error}") from None
    return layout_of(skeleton, name), tokenizer.get_vocab() if tokenizer is not None else None
