"""GPTQ-packed checkpoints made by other tools (AutoGPTQ, GPTQModel, ...): read and check one.

A checkpoint directory holds a quantization config (`quantize_config.json`, `quant_config.json`
or `config.json` → `quantization_config`, looked up in that order as GPTQModel does; those
present must agree) and
safetensors files with, per quantized linear, `<module>.qweight/.qzeros/.scales/.g_idx` (layout:
packing.py), module names as in the HF model's state dict (`transformer.h.0.attn.c_attn`,
`gpt_neox.layers.0.attention.query_key_value`), plus the model's unquantized tensors.

The format (GPTQModel config.py): `checkpoint_format` "gptq" is v1 (zero − 1 stored), "gptq_v2"
is v2; a missing key means v1. Kernel-specific repackings (marlin, bitblas) and other methods
(AWQ, its `version` key "gemm"...) are refused, as are pickled weights: only safetensors load.

This module only reads and checks (`open_checkpoint`, `check_layout`); load.py dequantizes into
an HF module; export.py writes qcheck's own results in the format.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from math import ceil
from pathlib import Path

import torch
from torch import nn

from qcheck.files import read_json_object
from qcheck.models.directory import indexed_shards, pickled_files
from qcheck.models.tokenizer import has_tokenizer_files
from qcheck.quantize.linears import get_rows, named_block_linears
from qcheck.quantize.packing import SUPPORTED_BITS, WORD
from qcheck.quantize.spec import GROUP_SIZES, CheckpointRef, QuantSpec

CONFIG_FILES = ("quantize_config.json", "quant_config.json", "config.json")
FORMATS = {"gptq": "v1", "gptq_v2": "v2"}
QUANTIZED_PARTS = ("qweight", "qzeros", "scales", "g_idx")
SCALE_DTYPES = ("F16", "BF16", "F32")
# Config fields that fix the architecture's shapes (or the tokenizer), compared when both the
# checkpoint's config.json and the FP model's config have them.
STRUCTURAL = ("vocab_size", "hidden_size", "n_embd", "num_hidden_layers", "n_layer", "num_attention_heads",
              "n_head", "num_key_value_heads", "intermediate_size", "n_inner", "max_position_embeddings",
              "n_positions", "rotary_pct", "rotary_emb_base", "rope_theta", "rope_parameters",
              "use_parallel_residual", "hidden_act", "activation_function", "layer_norm_eps",
              "layer_norm_epsilon", "bos_token_id", "eos_token_id")


class CheckpointWarning(UserWarning):
    """Something in a checkpoint directory was ignored (e.g. pickled weights beside safetensors)."""


@dataclass(frozen=True)
class GPTQConfig:
    """The quantization config of a checkpoint. group_size None: one group per output row."""

    bits: int
    group_size: int | None
    sym: bool
    desc_act: bool
    format: str       # "v1" | "v2" (packing.ZERO_OFFSET)
    source: str       # the file it was read from
    meta: dict = field(default_factory=dict)

    @property
    def spec(self) -> QuantSpec:
        return QuantSpec("checkpoint", bits=self.bits, group_size=self.group_size, sym=self.sym)


@dataclass(frozen=True)
class TensorInfo:
    file: Path
    dtype: str            # safetensors dtype name: "I32", "F16", ...
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Checkpoint:
    """An opened checkpoint directory: its configs and the header of every tensor (no data yet)."""

    path: Path
    quant: GPTQConfig
    model_config: dict | None      # config.json minus quantization_config, if present
    tensors: dict[str, TensorInfo]

    def refuse(self, problem: str) -> ValueError:
        return ValueError(f"checkpoint {self.path}: {problem}")

    def config_files(self) -> list[Path]:
        return [self.path / name for name in CONFIG_FILES if (self.path / name).is_file()]


def open_checkpoint(directory: str | Path) -> Checkpoint:
    """Read the configs and the safetensors headers; ValueError naming the file and the fix."""
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise ValueError(f"checkpoint {path}: not a directory; pass the folder that holds "
                         f"quantize_config.json (or config.json) and the *.safetensors files")
    quant = read_quant_config(path)
    model_config = read_json_object(path / "config.json") if (path / "config.json").is_file() else None
    if model_config is not None:
        model_config.pop("quantization_config", None)
    return Checkpoint(path=path, quant=quant, model_config=model_config, tensors=_headers(path))


def read_quant_config(path: Path) -> GPTQConfig:
    found = []  # (where, config) in lookup order
    for name in CONFIG_FILES:
        file = path / name
        if not file.is_file():
            continue
        cfg = read_json_object(file)
        if name == "config.json":
            if "quantization_config" not in cfg:
                continue
            file, cfg = f"{file} (quantization_config)", cfg["quantization_config"]
        found.append((str(file), cfg))
    if not found:
        raise ValueError(f"checkpoint {path}: no quantization config; expected quantize_config.json, "
                         f"quant_config.json or config.json with a quantization_config (as AutoGPTQ and "
                         f"GPTQModel write them)")
    parsed = [_parse_quant_config(cfg, where) for where, cfg in found]
    for other in parsed[1:]:
        keys = ("bits", "group_size", "sym", "format")
        if any(getattr(other, k) != getattr(parsed[0], k) for k in keys):
            raise ValueError(f"checkpoint {path}: {parsed[0].source} and {other.source} disagree on "
                             + ", ".join(f"{k} ({getattr(parsed[0], k)} vs {getattr(other, k)})"
                                         for k in keys if getattr(other, k) != getattr(parsed[0], k))
                             + "; remove the stale one")
    return parsed[0]


def _parse_quant_config(cfg: dict, source: str) -> GPTQConfig:
    def refuse(problem: str) -> ValueError:
        return ValueError(f"{source}: {problem}")

    if not isinstance(cfg, dict):
        raise refuse(f"expected a JSON object, got {type(cfg).__name__}")

    method = str(cfg.get("quant_method", "gptq")).lower()
    if method != "gptq":
        raise refuse(f"quant_method {method!r} is not supported; qcheck reads GPTQ-packed checkpoints "
                     f"(quant_method 'gptq')")
    if cfg.get("is_marlin_format"):
        raise refuse("is_marlin_format: the weights are repacked for the Marlin kernel; save the model "
                     "in the plain GPTQ layout (checkpoint_format 'gptq' or 'gptq_v2')")
    raw = cfg.get("checkpoint_format", cfg.get("format", cfg.get("version", "gptq")))
    if str(raw).lower() not in FORMATS:
        raise refuse(f"checkpoint_format {raw!r} is not supported; expected 'gptq' (v1) or 'gptq_v2' (v2) "
                     f"— kernel repackings (marlin, bitblas) and AWQ layouts (gemm, gemv) are not read")
    if str(cfg.get("pack_dtype", "int32")).lower() != "int32":
        raise refuse(f"pack_dtype {cfg['pack_dtype']!r} is not supported; qcheck reads int32 packing")
    if cfg.get("dynamic"):
        raise refuse("per-module overrides (`dynamic`) are not supported: every block linear must share "
                     "one bits/group_size/sym")
    if cfg.get("lm_head"):
        raise refuse("lm_head: true — the unembedding is quantized; qcheck certifies quantized block "
                     "linears only (the study's setting), with embeddings and unembedding in full precision")
    bits = cfg.get("bits", cfg.get("w_bit", cfg.get("wbits")))
    if bits not in SUPPORTED_BITS or isinstance(bits, bool):
        raise refuse(f"bits={bits!r} is not supported; the GPTQ format defines {SUPPORTED_BITS}")
    group_size = cfg.get("group_size", -1)
    if group_size != -1 and group_size not in GROUP_SIZES:
        raise refuse(f"group_size={group_size!r} is not supported; qcheck's QuantSpec knows -1 (one group per "
                     f"row) and {', '.join(map(str, GROUP_SIZES))}")
    sym, desc_act = cfg.get("sym", True), cfg.get("desc_act", False)
    if not isinstance(sym, bool) or not isinstance(desc_act, bool):
        raise refuse(f"sym={sym!r} and desc_act={desc_act!r} must be true or false")
    meta = cfg.get("meta") if isinstance(cfg.get("meta"), dict) else {}
    return GPTQConfig(bits=bits, group_size=None if group_size == -1 else group_size, sym=sym,
                      desc_act=desc_act, format=FORMATS[str(raw).lower()], source=source, meta=meta)


def _headers(path: Path) -> dict[str, TensorInfo]:
    """Every tensor's file, dtype and shape, from the safetensors headers (no data is read)."""
    from safetensors import safe_open

    files = sorted(path.glob("*.safetensors"))
    pickled = pickled_files(path)
    if not files:
        found = f"only pickled weights ({', '.join(pickled)})" if pickled else "no *.safetensors file"
        raise ValueError(f"checkpoint {path}: {found}; qcheck loads safetensors only and never unpickles. "
                         f"Re-save the quantized model with safetensors (AutoGPTQ/GPTQModel "
                         f"`save_quantized(DIR, use_safetensors=True)`)")
    if pickled:
        warnings.warn(f"checkpoint {path}: ignoring {', '.join(pickled)} (pickled; qcheck loads only "
                      f"the safetensors files)", CheckpointWarning, stacklevel=3)
    try:
        shards = indexed_shards(path)
    except ValueError as error:
        raise ValueError(f"checkpoint {path}: {error}") from None
    files = shards if shards is not None else files
    tensors: dict[str, TensorInfo] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    if name in tensors:
                        raise ValueError(f"checkpoint {path}: tensor {name} is stored twice "
                                         f"({tensors[name].file.name} and {file.name})")
                    piece = f.get_slice(name)
                    tensors[name] = TensorInfo(file, piece.get_dtype(), tuple(piece.get_shape()))
        except ValueError:
            raise
        except Exception as error:  # safetensors raises SafetensorError (a plain Exception subclass)
            raise ValueError(f"checkpoint {path}: {file.name} is not a readable safetensors file "
                             f"(truncated or corrupt: {error}); copy or download it again") from None
    return tensors


# --- the checkpoint against the FP model ---------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """What a checkpoint must match: the FP model's config, tensors and block linears."""

    name: str                                # the FP model, for messages
    config: dict
    tensors: dict[str, tuple[int, ...]]      # state_dict name -> shape
    buffers: frozenset[str]                  # buffer names a checkpoint may carry (ignored)
    linears: dict[str, tuple[int, int]]      # block linear module name -> (d_in, d_out)


def layout_of(hf_model: nn.Module, name: str) -> Layout:
    """The layout of an HF model; a model on the meta device works (no weights needed)."""
    linears = {name: tuple(reversed(get_rows(module).shape)) for name, module in named_block_linears(hf_model)}
    return Layout(name=name, config=hf_model.config.to_dict(),
                  tensors={k: tuple(v.shape) for k, v in hf_model.state_dict().items()},
                  buffers=frozenset(n for n, _ in hf_model.named_buffers()), linears=linears)


def check_layout(ckpt: Checkpoint, layout: Layout) -> None:
    """Refuse a checkpoint made for another architecture, shape or vocabulary, or with missing,
    extra, misshapen or mistyped tensors. Reads headers only."""
    _check_config(ckpt, layout)
    problems = []
    bits, group_size = ckpt.quant.bits, ckpt.quant.group_size
    seen: set[str] = set()
    for module, (d_in, d_out) in layout.linears.items():
        parts = {part: f"{module}.{part}" for part in QUANTIZED_PARTS}
        seen.update(parts.values())
        if parts["qweight"] not in ckpt.tensors:
            stored = f"{module}.weight" in ckpt.tensors
            problems.append(f"{module} is not quantized (no {module}.qweight"
                            + ("; it is stored in full precision as .weight: partial quantization is not "
                               "supported)" if stored else ")"))
            continue
        for size, what in ((d_in, "d_in"), (d_out, "d_out")):
            if size * bits % WORD:
                problems.append(f"{module}: {what}={size} cannot be packed at {bits} bits (the GPTQ layout "
                                f"needs {what}·bits to be a multiple of {WORD})")
        n_groups = 1 if group_size is None else ceil(d_in / group_size)
        expected = {"qweight": ((d_in * bits // WORD, d_out), ("I32",)),
                    "qzeros": ((n_groups, d_out * bits // WORD), ("I32",)),
                    "scales": ((n_groups, d_out), SCALE_DTYPES),
                    "g_idx": ((d_in,), ("I32", "I64"))}
        for part, (shape, dtypes) in expected.items():
            info = ckpt.tensors.get(parts[part])
            if info is None:
                problems.append(f"missing tensor {parts[part]} (expected {dtypes[0]} {list(shape)})")
            elif info.shape != shape or info.dtype not in dtypes:
                problems.append(f"{parts[part]} is {info.dtype} {list(info.shape)}, expected {dtypes[0]} "
                                f"{list(shape)} for a {d_in}->{d_out} linear at {bits} bits, group size "
                                f"{group_size or -1}")
    for name, info in sorted(ckpt.tensors.items()):
        if name in seen or name in layout.buffers:
            continue
        owner, _, part = name.rpartition(".")
        if name in layout.tensors and owner in layout.linears and part == "weight":
            if f"{owner}.qweight" in ckpt.tensors:
                problems.append(f"{name} is stored beside {owner}.qweight; keep one")
        elif name in layout.tensors:
            if info.shape != layout.tensors[name]:
                problems.append(f"{name} is {list(info.shape)}, the FP model's is {list(layout.tensors[name])}")
        elif part in QUANTIZED_PARTS:
            problems.append(f"unexpected quantized module {owner}: qcheck quantizes only the linear maps "
                            f"inside the transformer blocks")
        else:
            problems.append(f"unexpected tensor {name}: the FP model {layout.name} has no such tensor")
    quantized = sorted(name.removesuffix(".qweight") for name in ckpt.tensors if name.endswith(".qweight"))
    if quantized and not any(module in layout.linears for module in quantized):
        raise ckpt.refuse(f"it quantizes none of the block linears of the FP model {layout.name} (it has "
                          f"{quantized[0]}, ...; the FP model has {next(iter(layout.linears))}, ...): it is "
                          f"for another architecture. Pass the FP model the checkpoint was quantized from "
                          f"with --qcheck-model")
    problems = list(dict.fromkeys(problems))  # a module's four parts report it once
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ckpt.refuse("does not match the FP model " + layout.name + ": " + "; ".join(problems[:5]) + more
                          + ". Pass the FP model the checkpoint was quantized from with --qcheck-model")


def _check_config(ckpt: Checkpoint, layout: Layout) -> None:
    if ckpt.model_config is None:
        return  # nothing to compare; the tensor names and shapes are checked next
    mine, theirs = ckpt.model_config, layout.config
    if mine.get("model_type") != theirs.get("model_type") or (
            mine.get("architectures") and mine.get("architectures") != theirs.get("architectures")):
        raise ckpt.refuse(f"config.json is for {_architecture(mine)} but the FP model {layout.name} is "
                          f"{_architecture(theirs)}; pass the FP model the checkpoint was quantized from "
                          f"with --qcheck-model")
    keys = [key for key in STRUCTURAL
            if mine.get(key) is not None and theirs.get(key) is not None and mine[key] != theirs[key]]
    differ = [f"{key} {mine[key]!r} vs {theirs[key]!r}" for key in keys]
    if differ:
        what = ("vocabulary" if {"vocab_size", "bos_token_id", "eos_token_id"} & set(keys) else
                "shape" if any(key.startswith(("n_", "num_", "max_")) or key.endswith("_size") for key in keys) else
                "configuration")
        raise ckpt.refuse(f"config.json describes another {what} than the FP model {layout.name} "
                          f"(checkpoint vs FP: {'; '.join(differ)}); pass the FP model the checkpoint "
                          f"was quantized from with --qcheck-model")


def _architecture(config: dict) -> str:
    names = ", ".join(config.get("architectures") or [])
    return f"{config.get('model_type')}" + (f" ({names})" if names else "")


def check_tokenizer(ckpt: Checkpoint, fp_vocab: dict[str, int] | None, fp_name: str) -> None:
    """Refuse a checkpoint whose tokenizer files give another vocabulary than the FP model's.

    fp_vocab: the FP tokenizer's token -> id map, None for byte-level (zoo) models. A checkpoint
    without tokenizer files is not compared here (vocab_size and the embeddings still are).
    """
    if not has_tokenizer_files(str(ckpt.path)):
        return
    if fp_vocab is None:
        raise ckpt.refuse(f"it ships a tokenizer but the FP model {fp_name} reads raw bytes (no tokenizer): "
                          f"it was quantized from another model")
    from transformers import AutoTokenizer

    try:
        vocab = AutoTokenizer.from_pretrained(str(ckpt.path), local_files_only=True,
                                              trust_remote_code=False).get_vocab()
    except (OSError, ValueError) as error:
        raise ckpt.refuse(f"its tokenizer files do not load ({error}); remove them or fix them") from None
    if vocab != fp_vocab:
        changed = sorted(set(vocab.items()) ^ set(fp_vocab.items()))
        raise ckpt.refuse(f"its tokenizer differs from the FP model {fp_name}'s ({len(vocab)} vs "
                          f"{len(fp_vocab)} tokens, {len(changed)} (token, id) pairs differ, e.g. "
                          f"{changed[0]!r}); it was quantized from a model with another tokenizer")


def checkpoint_name(directory: str | Path) -> CheckpointRef:
    """The checkpoint as a quantizer: its folder name, sanitized (`checkpoint:<name>` in test ids)."""
    folder = Path(directory).expanduser().resolve().name
    return CheckpointRef(re.sub(r"[^A-Za-z0-9._-]+", "_", folder).strip("._-") or "checkpoint")
