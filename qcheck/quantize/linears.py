"""Module surgery on HF models: which weights are quantized, and how to read and write them.

The quantized weights are every linear map inside the transformer blocks (GPT-2: attn.c_attn,
attn.c_proj, mlp.c_fc, mlp.c_proj, transformers' Conv1D; GPT-NeoX: attention.query_key_value,
attention.dense, mlp.dense_h_to_4h, mlp.dense_4h_to_h, nn.Linear; Llama and Qwen2:
self_attn.{q,k,v,o}_proj, mlp.{gate,up,down}_proj, nn.Linear, k/v with num_key_value_heads x
head_dim rows), found generically as every nn.Linear / Conv1D in the block list (a block holds no
other linear: the rotary embedding lives beside the blocks, `model.rotary_emb`). Never embeddings, unembedding, norms or biases (the study).
Rows are read and written in the nn.Linear layout (d_out, d_in) whatever the module stores.
tests/unit/test_apply.py checks the list and the true-sequential groups for every family.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator

import torch
from jaxtyping import Float
from torch import Tensor, nn


def find_blocks(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The transformer block list and its path: GPT-2 `transformer.h`, GPT-NeoX `gpt_neox.layers`,
    LLaMA-like `model.layers`; otherwise the one ModuleList of config.num_hidden_layers blocks."""
    for path in ("transformer.h", "gpt_neox.layers", "model.layers"):
        try:
            blocks = model.get_submodule(path)
        except AttributeError:
            continue
        if isinstance(blocks, nn.ModuleList):
            return path, blocks
    n_layers = getattr(model.config, "num_hidden_layers", None)
    found = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == n_layers]
    if len(found) != 1:
        raise ValueError(f"{type(model).__name__}: cannot find its transformer blocks (expected one "
                         f"ModuleList of {n_layers} layers, found {[n for n, _ in found]}); add its path to find_blocks")
    return found[0]


def block_linears(block: nn.Module) -> dict[str, nn.Module]:
    """Every nn.Linear / transformers Conv1D in `block`, by name relative to it, in module order."""
    from transformers.pytorch_utils import Conv1D

    return {name: m for name, m in block.named_modules() if isinstance(m, (nn.Linear, Conv1D))}


def named_block_linears(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(qualified module name, module) of every block linear, block by block in module order;
    the name is the module's in `model.state_dict()` (`transformer.h.0.attn.c_attn`)."""
    path, blocks = find_blocks(model)
    for l, block in enumerate(blocks):
        for name, module in block_linears(block).items():
            yield f"{path}.{l}.{name}", module


def copy_with_own_linears(model: nn.Module) -> nn.Module:
    """A deep copy of `model` in which only the block linears' weights are new tensors: every
    other parameter and buffer (embeddings, unembedding, norms, biases, rotary tables) is the
    model's own object. Quantization writes block-linear weights only (set_rows), so a quantized
    twin costs those weights, not a second model (GPT-2 small: 340 of 475 MiB; Pythia-410m's
    untied embeddings are another 412 MiB not copied)."""
    own = {id(module.weight) for _, module in named_block_linears(model)}
    shared = {id(t): t for t in (*model.parameters(), *model.buffers()) if id(t) not in own}
    return copy.deepcopy(model, memo=shared)


def get_rows(module: nn.Module) -> Float[Tensor, "d_out d_in"]:
    """The weight with one row per output: Conv1D stores [in, out], so it is transposed."""
    return module.weight.detach().T if _is_conv1d(module) else module.weight.detach()


def set_rows(module: nn.Module, rows: Float[Tensor, "d_out d_in"]) -> None:
    with torch.no_grad():
        module.weight.copy_(rows.T if _is_conv1d(module) else rows)


def _is_conv1d(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, Conv1D)
