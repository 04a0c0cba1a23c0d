"""Quantized checkpoints made by other tools: read one and check it against the FP model.

Two families (the format configs, one per family):
- GPTQ-packed (AutoGPTQ, GPTQModel): `quantize_config.json`, `quant_config.json` or `config.json`
  → `quantization_config`, looked up in that order as GPTQModel does (those present must agree);
  per linear `<module>.qweight/.qzeros/.scales/.g_idx` (gptq_packed.py `GPTQConfig`).
- compressed-tensors `pack-quantized` (llm-compressor): `config.json` → `quantization_config` with
  `quant_method: compressed-tensors`; per linear `<module>.weight_packed/.weight_scale/...`
  (compressed.py `CompressedConfig`).
A format config answers, for this module and load.py: `spec` (the QuantSpec reported), `parts`
(the tensor suffixes of a quantized linear, the first always stored), `expected_tensors(d_in,
d_out)` (each part's shape and dtypes), `packing_problems`, `unexpected_part` (a part the config
says is not stored), `module_problems(layout)` (which modules it quantizes), `dequantize(...)`
(a linear's float32 weight, (d_out, d_in)), `source` and `meta`.

Module names are as in the HF model's state dict (`transformer.h.0.attn.c_attn`,
`gpt_neox.layers.0.attention.query_key_value`), plus the model's unquantized tensors. Tensor
names are read as transformers reads a checkpoint of the FP model's class (`memory_names`): its
checkpoint conversion mapping (the `WeightRenaming`s of transformers 5
`get_model_conversion_mapping`, e.g. GPT-NeoX's on-disk `embed_out.*` -> in-memory `lm_head.*`;
transformers 4's `_checkpoint_conversion_mapping`) and the base-model prefix added or dropped, so
both the names `save_pretrained` writes and the `state_dict()` names (what GPTQModel writes) match.
Pickled weights are refused: only safetensors load.

This module only reads and checks (`open_checkpoint`, `check_layout`); load.py dequantizes into
an HF module; export.py and export_compressed.py write qcheck's own results in the formats.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import torch
from torch import nn

from qcheck.files import read_json_object
from qcheck.models.directory import indexed_shards, pickled_files
from qcheck.models.tokenizer import has_tokenizer_files, synthesised_tokenizer
from qcheck.quantize.checkpoint.compressed import PARTS as COMPRESSED_PARTS
from qcheck.quantize.checkpoint.compressed import QUANT_METHOD as COMPRESSED_TENSORS
from qcheck.quantize.checkpoint.compressed import CompressedConfig, parse_compressed_config
from qcheck.quantize.checkpoint.gptq_packed import QUANTIZED_PARTS as GPTQ_PARTS
from qcheck.quantize.checkpoint.gptq_packed import GPTQConfig, parse_gptq_config
from qcheck.quantize.linears import get_rows, named_block_linears
from qcheck.quantize.spec import CheckpointRef

CONFIG_FILES = ("quantize_config.json", "quant_config.json", "config.json")
QUANTIZED_PARTS = GPTQ_PARTS + COMPRESSED_PARTS   # every format's, for names read without a checkpoint
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
class TensorInfo:
    file: Path
    dtype: str            # safetensors dtype name: "I32", "F16", ...
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Checkpoint:
    """An opened checkpoint directory: its configs and the header of every tensor (no data yet)."""

    path: Path
    quant: GPTQConfig | CompressedConfig
    model_config: dict | None      # config.json minus quantization_config, if present
    tensors: dict[str, TensorInfo]  # by the names stored in the files
    notes: tuple[str, ...] = ()    # what was ignored, and why (e.g. a synthesised tokenizer)

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
    tokenizer = synthesised_tokenizer(str(path))
    notes = (f"checkpoint {path.name}: {tokenizer}",) if tokenizer else ()
    return Checkpoint(path=path, quant=quant, model_config=model_config, tensors=_headers(path), notes=notes)


def read_quant_config(path: Path) -> GPTQConfig | CompressedConfig:
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
                         f"quant_config.json or config.json with a quantization_config (as AutoGPTQ, "
                         f"GPTQModel and llm-compressor write them)")
    parsed = [_parse_quant_config(cfg, where) for where, cfg in found]
    for other in parsed[1:]:
        keys = ("bits", "group_size", "sym", "format")
        if any(getattr(other, k) != getattr(parsed[0], k) for k in keys):
            raise ValueError(f"checkpoint {path}: {parsed[0].source} and {other.source} disagree on "
                             + ", ".join(f"{k} ({getattr(parsed[0], k)} vs {getattr(other, k)})"
                                         for k in keys if getattr(other, k) != getattr(parsed[0], k))
                             + "; remove the stale one")
    return parsed[0]


def _parse_quant_config(cfg: dict, source: str) -> GPTQConfig | CompressedConfig:
    if not isinstance(cfg, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(cfg).__name__}")
    method = str(cfg.get("quant_method", "gptq")).lower()
    if method == COMPRESSED_TENSORS:
        return parse_compressed_config(cfg, source)
    if method != "gptq":
        raise ValueError(f"{source}: quant_method {method!r} is not supported; qcheck reads GPTQ-packed "
                         f"checkpoints (quant_method 'gptq') and compressed-tensors pack-quantized ones "
                         f"(quant_method '{COMPRESSED_TENSORS}', llm-compressor)")
    return parse_gptq_config(cfg, source)


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
    renamings: tuple = ()                    # transformers' load-time key renamings for the class
    base_model_prefix: str = ""              # e.g. "gpt_neox", "transformer"
    module_classes: dict[str, tuple[str, ...]] = field(default_factory=dict)  # module -> its classes' names (MRO)

    @cached_property
    def known(self) -> frozenset[str]:
        """The state_dict names, with each block linear's weight (its quantized parts' owner)."""
        return frozenset(self.tensors) | {f"{module}.weight" for module in self.linears}

    def memory_name(self, key: str, parts: tuple[str, ...] = QUANTIZED_PARTS) -> str:
        """The state_dict name of a checkpoint key: the key itself if it is one (what GPTQModel
        writes), else what transformers renames it to when it loads this model (what
        `save_pretrained` writes). parts: the suffixes of a quantized linear's tensors."""
        quantized = key.rpartition(".")[2] in parts

        def probe(name: str) -> str:  # a quantized part is known by its linear's weight
            return f"{name.rpartition('.')[0]}.weight" if quantized else name

        if probe(key) in self.known:
            return key
        renamed = key
        for renaming in self.renamings:
            if hasattr(renaming, "rename_source_key"):  # transformers 5 WeightRenaming
                renamed, _ = renaming.rename_source_key(renamed)
            else:                                       # transformers 4: a regex substitution
                renamed = renaming(renamed)
        prefix, known = self.base_model_prefix, self.known
        if not prefix or probe(renamed) in known:
            return renamed
        if renamed.startswith(prefix + ".") and probe(renamed[len(prefix) + 1:]) in known:
            return renamed[len(prefix) + 1:]
        if probe(f"{prefix}.{renamed}") in known:
            return f"{prefix}.{renamed}"
        return renamed


def layout_of(hf_model: nn.Module, name: str) -> Layout:
    """The layout of an HF model; a model on the meta device works (no weights needed)."""
    linears = {name: tuple(reversed(get_rows(module).shape)) for name, module in named_block_linears(hf_model)}
    classes = {module_name: tuple(c.__name__ for c in type(module).__mro__ if issubclass(c, nn.Module))
               for module_name, module in hf_model.named_modules()}
    return Layout(name=name, config=hf_model.config.to_dict(),
                  tensors={k: tuple(v.shape) for k, v in hf_model.state_dict().items()},
                  buffers=frozenset(n for n, _ in hf_model.named_buffers()), linears=linears,
                  renamings=_renamings(hf_model), base_model_prefix=getattr(hf_model, "base_model_prefix", "") or "",
                  module_classes=classes)


def _renamings(hf_model: nn.Module) -> tuple:
    """The key renamings transformers applies when it loads a checkpoint into `hf_model`.

    transformers 5: the `WeightRenaming`s of `get_model_conversion_mapping` (per class or
    model_type, plus the legacy gamma/beta ones); its `WeightConverter`s (tensors fused or split on
    load) are not renamings and are left out, so such keys stay unmatched and are refused by name.
    transformers 4: the model's `_checkpoint_conversion_mapping` {regex: replacement}.
    """
    renamings: list = []
    try:
        from transformers.conversion_mapping import get_model_conversion_mapping
        from transformers.core_model_loading import WeightRenaming

        renamings = [t for t in get_model_conversion_mapping(hf_model) if isinstance(t, WeightRenaming)]
    except (ImportError, AttributeError, TypeError, ValueError):
        pass
    legacy = getattr(hf_model, "_checkpoint_conversion_mapping", None)
    if isinstance(legacy, dict):
        renamings += [lambda key, pattern=pattern, to=to: re.sub(pattern, to, key)
                      for pattern, to in legacy.items()]
    return tuple(renamings)


def memory_names(ckpt: Checkpoint, layout: Layout) -> dict[str, str]:
    """{state_dict name: name stored in the checkpoint} for every checkpoint tensor.

    Refuses a checkpoint that stores one tensor under two names (e.g. both `embed_out.weight`
    and `lm_head.weight` of a GPT-NeoX model): which one the FP model would load is ambiguous.
    """
    names: dict[str, str] = {}
    for stored in sorted(ckpt.tensors):
        memory = layout.memory_name(stored, ckpt.quant.parts)
        if memory in names:
            raise ckpt.refuse(f"tensors {names[memory]} and {stored} are both read as {memory} by "
                              f"transformers' checkpoint conversion mapping for the FP model {layout.name}; "
                              f"keep one of them")
        names[memory] = stored
    return names


def _stored(name: str, names: dict[str, str]) -> str:
    """A tensor's name as stored, with the name it is read as if that differs."""
    stored = names.get(name, name)
    return stored if stored == name else f"{stored} (read as {name})"


def check_layout(ckpt: Checkpoint, layout: Layout) -> None:
    """Refuse a checkpoint made for another architecture, shape or vocabulary, or with missing,
    extra, misshapen or mistyped tensors. Reads headers only."""
    _check_config(ckpt, layout)
    names = memory_names(ckpt, layout)                   # state_dict name -> stored name
    tensors = {name: ckpt.tensors[stored] for name, stored in names.items()}
    quant = ckpt.quant
    main = quant.parts[0]                                # qweight / weight_packed: always stored
    problems = quant.module_problems(layout)
    seen: set[str] = set()
    for module, (d_in, d_out) in layout.linears.items():
        seen.update(f"{module}.{part}" for part in quant.parts)
        if f"{module}.{main}" not in tensors:
            stored = f"{module}.weight" in tensors
            problems.append(f"{module} is not quantized (no {module}.{main}"
                            + ("; it is stored in full precision as .weight: partial quantization is not "
                               "supported)" if stored else ")"))
            continue
        problems += quant.packing_problems(module, d_in, d_out)
        for part, (shape, dtypes, required) in quant.expected_tensors(d_in, d_out).items():
            name = f"{module}.{part}"
            info = tensors.get(name)
            if info is None:
                if required:
                    problems.append(f"missing tensor {name} (expected {dtypes[0]} {list(shape)})")
            elif quant.unexpected_part(part):
                problems.append(f"unexpected tensor {_stored(name, names)}: {quant.unexpected_part(part)}")
            elif info.shape != shape or info.dtype not in dtypes:
                problems.append(f"{_stored(name, names)} is {info.dtype} {list(info.shape)}, expected {dtypes[0]} "
                                f"{list(shape)} for a {d_in}->{d_out} linear at {quant.bits} bits, group size "
                                f"{quant.group_size or -1}")
    for name, info in sorted(tensors.items()):
        if name in seen or name in layout.buffers:
            continue
        owner, _, part = name.rpartition(".")
        if name in layout.tensors and owner in layout.linears and part == "weight":
            if f"{owner}.{main}" in tensors:
                problems.append(f"{_stored(name, names)} is stored beside {owner}.{main}; keep one")
        elif name in layout.tensors:
            if info.shape != layout.tensors[name]:
                problems.append(f"{_stored(name, names)} is {list(info.shape)}, the FP model's is "
                                f"{list(layout.tensors[name])}")
        elif part in quant.parts:
            problems.append(f"unexpected quantized module {owner}: qcheck quantizes only the linear maps "
                            f"inside the transformer blocks")
        else:
            problems.append(f"unexpected tensor {_stored(name, names)}: the FP model {layout.name} has no such "
                            f"tensor (under that name or a name transformers maps it to on load)")
    quantized = sorted(name.removesuffix(f".{main}") for name in tensors if name.endswith(f".{main}"))
    if quantized and not any(module in layout.linears for module in quantized):
        raise ckpt.refuse(f"it quantizes none of the block linears of the FP model {layout.name} (it has "
                          f"{quantized[0]}, ...; the FP model has {next(iter(layout.linears))}, ...): it is "
                          f"for another architecture. Pass the FP model the checkpoint was quantized from "
                          f"with --qcheck-model")
    problems = list(dict.fromkeys(problems))  # a module's parts report it once
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
    without tokenizer files is not compared here (vocab_size and the embeddings still are), nor
    is one whose tokenizer files a tool synthesised, with no vocabulary but special tokens
    (models/tokenizer.py synthesised_tokenizer; `ckpt.notes` says it was ignored). Any other
    tokenizer must give the FP model's vocabulary.
    """
    if not has_tokenizer_files(str(ckpt.path)) or synthesised_tokenizer(str(ckpt.path)):
        return
    if fp_vocab is None:
        raise ckpt.refuse(f"it ships a tokenizer but the FP model {fp_name} reads raw bytes (no tokenizer), and "
                          f"that tokenizer has a vocabulary: it was quantized from another model; pass that model with "
                          f"--qcheck-model, or remove the tokenizer files if they are not the model's")
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
                          f"{changed[0]!r}); it was quantized from a model with another tokenizer: pass that "
                          f"model with --qcheck-model")


def checkpoint_name(directory: str | Path) -> CheckpointRef:
    """The checkpoint as a quantizer: its folder name, sanitized (`checkpoint:<name>` in test ids)."""
    folder = Path(directory).expanduser().resolve().name
    return CheckpointRef(re.sub(r"[^A-Za-z0-9._-]+", "_", folder).strip("._-") or "checkpoint")
