"""Apply a QuantSpec to an HF model: a quantized copy (own block-linear weights, the rest shared), block by block.

Which weights: every linear map inside the transformer blocks (linears.py).

GPTQ runs layer by layer (Frantar et al. 2022, 4 "Setup"; reference opt.py `opt_sequential`):
the inputs of block 0 are captured once per calibration batch (with the keyword arguments the
model passes its blocks: masks, position ids, the rotary `position_embeddings` (cos, sin) that
NeoX, Llama and Qwen2 compute once per forward in transformers 5), and block l's inputs are
block l − 1's outputs *after* it was quantized. With true_sequential, a block's linears are
quantized in execution order, one input-sharing group at a time ((qkv), (attn out), (mlp in),
(mlp out); Llama/Qwen2: (q, k, v), (o), (gate, up), (down)), and the Hessians are recollected
after each group.

`-bf16` (spec.working_dtype "bfloat16") quantizes as GPTQModel does by default: a bfloat16 copy
of the model is the working model (its weights are what is quantized, its forward passes give
GPTQ's inputs, and it carries each quantized linear in bfloat16 to the next forward), and the
scales are rounded to float16. The twin returned is still the float32 FP model with the
dequantized linears, as an imported checkpoint is (checkpoint/load.py).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass, field
from collections.abc import Callable

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from qcheck.quantize.grid import GridSpec, QuantizedWeight, on_float32_grid
from qcheck.quantize.hessian import HessianAccumulator
from qcheck.memory import release_freed_memory
from qcheck.quantize.linears import (block_linears, copy_with_own_linears, find_blocks, get_rows,
                                     named_block_linears, set_rows)
from qcheck.quantize.spec import QuantSpec

BATCH_SIZE = 16  # calibration sequences per forward


@dataclass(frozen=True)
class LayerReport:
    """One quantized linear. Errors are relative Frobenius norms, in [0, ∞): ‖W − Q‖ / ‖W‖ and,
    when a Hessian was collected, ‖(W − Q) X‖ / ‖W X‖ over the calibration inputs."""

    name: str
    d_out: int
    d_in: int
    weight_rel_error: float
    output_rel_error: float | None = None
    damp: float | None = None
    damp_retries: int = 0
    dead_columns: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class QuantReport:
    spec: str
    layers: list[LayerReport] = field(default_factory=list)
    seconds: float = 0.0  # wall time of the whole quantization, s

    @property
    def damp_retries(self) -> int:
        return sum(layer.damp_retries for layer in self.layers)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "QuantReport":
        return cls(spec=data["spec"], layers=[LayerReport(**layer) for layer in data["layers"]],
                   seconds=data["seconds"])


def solver_dtype(device: torch.device) -> torch.dtype:
    """float64 on the CPU: a float32 Hessian summed by a multi-threaded BLAS depends on the thread
    count in its last bits, and at 3 bits that flipped a rounding decision in zoo-gpt2-3l96's last
    block between a 1-thread and a 2-thread run. In float64 such a flip needs a weight within
    ~1e-13 of a rounding boundary, so results are the same on any CPU run. float32 on GPUs."""
    return torch.float64 if torch.device(device).type == "cpu" else torch.float32


def quantize_weight(weight: Float[Tensor, "d_out d_in"], hessian: Float[Tensor, "d_in d_in"] | None,
                    spec: QuantSpec) -> QuantizedWeight:
    """Dispatch one weight to the spec's kernel."""
    from qcheck.quantize.gptq import gptq
    from qcheck.quantize.gptq_study import gptq_study
    from qcheck.quantize.rtn import rtn

    grid = GridSpec(spec.bits, sym=spec.sym, kind=spec.grid)
    if spec.method == "rtn":
        return rtn(weight, grid, group_size=spec.group_size)
    options = dict(group_size=spec.group_size, damp=spec.damp, act_order=spec.act_order,
                   group_aware=spec.group_aware, static_groups=spec.static_groups)
    if spec.method == "gptq":
        return gptq(weight, hessian, grid, block_size=spec.block_size, block_start_grids=spec.block_start_grids,
                    **options)
    if spec.method == "gptq-study":
        return gptq_study(weight, hessian, grid, **options)
    raise ValueError(f"quantize_weight: method {spec.method!r} quantizes nothing here; "
                     "checkpoints are loaded by qcheck.quantize.checkpoint")


@torch.no_grad()
def quantize_model(hf_model: nn.Module, spec: QuantSpec,
                   calibration_tokens: Int[Tensor, "n_samples seq_len"] | None = None,
                   *, batch_size: int = BATCH_SIZE,
                   on_layer: Callable[[str, QuantizedWeight], None] | None = None,
                   progress: Callable[[str], None] | None = None) -> tuple[nn.Module, QuantReport]:
    """A quantized copy of `hf_model` (in eval mode; linears.copy_with_own_linears) and a report;
    the caller's model is untouched.

    calibration_tokens are required by GPTQ (see qcheck.data.calibration), ignored by RTN.
    on_layer(name, q) receives each linear's QuantizedWeight (codes, scales, zeros, g_idx) as it
    is made, e.g. to pack it into a checkpoint (checkpoint/export.py) without keeping them all.
    progress(text) hears each block as GPTQ starts it ("block 3/12").
    """
    if spec.method not in ("rtn", "gptq", "gptq-study"):
        raise ValueError(f"quantize_model: {spec} is not one of qcheck's quantizers; checkpoints are loaded "
                         "(qcheck.quantize.checkpoint), user quantizers run by qcheck.quantize.user_apply")
    if spec.needs_calibration and calibration_tokens is None:
        raise ValueError(f"quantize_model: {spec} needs calibration tokens (n_samples, seq_len); "
                         "build them with qcheck.data.calibration.calibration_for(spec, model)")
    start = time.perf_counter()
    model = copy_with_own_linears(hf_model).eval()
    work = working_model(model, spec)
    twins = dict(named_block_linears(model))
    layers: list[LayerReport] = []
    if not spec.needs_calibration:
        for name, module in named_block_linears(work):
            layers.append(_quantize_linear(name, module, twins[name], None, spec, on_layer))
        return model, QuantReport(str(spec), layers, time.perf_counter() - start)
    path, blocks = find_blocks(work)
    inputs = capture_block_inputs(work, blocks, calibration_tokens, batch_size)
    for l, block in enumerate(blocks):
        if progress is not None:
            progress(f"block {l + 1}/{len(blocks)}")
        linears = block_linears(block)
        groups = input_groups(block, linears, inputs[0]) if spec.true_sequential else [list(linears)]
        for group in groups:
            hessians = collect_hessians(block, {name: linears[name] for name in group}, inputs)
            for name in group:
                full = f"{path}.{l}.{name}"
                layers.append(_quantize_linear(full, linears[name], twins[full], hessians[name], spec, on_layer))
        inputs = [(_output(block(hidden, *args, **kwargs)), args, kwargs) for hidden, args, kwargs in inputs]
        del hessians
        release_freed_memory()  # a block's Hessians and solver temporaries, before the next block's
    return model, QuantReport(str(spec), layers, time.perf_counter() - start)


def working_model(model: nn.Module, spec: QuantSpec) -> nn.Module:
    """The model whose weights are quantized and whose forwards calibrate GPTQ: `model` itself,
    or for `-bf16` a bfloat16 deep copy (a cast in place would change the FP model's shared tensors)."""
    if spec.working_dtype == "float32":
        return model
    return copy.deepcopy(model).to(torch.bfloat16).eval()


def _quantize_linear(name: str, module: nn.Module, twin: nn.Module, hessian: Tensor | None, spec: QuantSpec,
                     on_layer: Callable[[str, QuantizedWeight], None] | None = None) -> LayerReport:
    """Quantize `module`'s weight (the working model's) and write the result into it and into
    `twin` (the returned model's linear; the same module unless -bf16)."""
    tick = time.perf_counter()
    # A copy (set_rows below overwrites the module's weight); GPTQ solves in solver_dtype, RTN
    # (no sums, nothing thread-dependent) rounds the float32 weight as the study did.
    dtype = solver_dtype(module.weight.device) if hessian is not None else torch.float32
    W = get_rows(module).to(dtype).clone()
    if not torch.isfinite(W).all():
        raise ValueError(f"{spec}: {name}.weight holds {int((~torch.isfinite(W)).sum())} NaN/Inf value(s) in "
                         f"the FP model; nothing can be certified against it: fix or re-export its weights")
    try:
        q = quantize_weight(W, hessian, spec)
    except ValueError as error:  # the kernels' messages do not know which layer they were given
        raise ValueError(f"{spec}: {name}: {error}") from None
    if not torch.isfinite(q.weight).all():  # a kernel bug must never reach a certificate
        raise RuntimeError(f"{spec}: {name}: the quantized weight holds NaN/Inf although the FP weight "
                           f"is finite; this is a bug in qcheck's quantizer, please report it")
    # Solved in float64: the grid itself is float32, as in checkpoints.
    q = on_float32_grid(q)
    # The working model carries it on (true-sequential, the next block's inputs) in its own dtype.
    set_rows(module, q.weight.to(module.weight.dtype))
    if twin is not module:  # -bf16: float16 scales, as a bfloat16-holding tool's checkpoint stores them
        try:
            q = on_float32_grid(q, torch.float16)
        except ValueError as error:
            raise ValueError(f"{spec}: {name}: {error}; quantize without -bf16") from None
        set_rows(twin, q.weight.to(twin.weight.dtype))
    if on_layer is not None:
        on_layer(name, q)
    delta = W - q.weight.to(W.dtype)
    output_error = None
    if hessian is not None:  # ‖ΔX‖² / ‖WX‖² = tr(Δ H Δᵀ) / tr(W H Wᵀ)
        output_error = float(((delta @ hessian) * delta).sum().clamp(min=0).sqrt()
                             / ((W @ hessian) * W).sum().clamp(min=1e-30).sqrt())
    return LayerReport(name=name, d_out=W.shape[0], d_in=W.shape[1],
                       weight_rel_error=float(delta.norm() / W.norm().clamp(min=1e-30)),
                       output_rel_error=output_error, damp=getattr(q, "damp", None),
                       damp_retries=getattr(q, "damp_retries", 0), dead_columns=getattr(q, "dead", 0),
                       seconds=time.perf_counter() - tick)


class _Stop(Exception):
    """Raised from a hook to end a forward pass once the inputs it needed are captured."""


BlockInput = tuple[Tensor, tuple, dict]  # (hidden (batch, pos, d_model), other args, kwargs)


def capture_block_inputs(model: nn.Module, blocks: nn.ModuleList, tokens: Tensor, batch_size: int) -> list[BlockInput]:
    """Per calibration batch, what the model passes block 0: the hidden states and the other
    arguments (masks, position ids, rotary embeddings), which every later block receives too."""
    captured: list[BlockInput] = []

    def hook(module, args, kwargs):
        hidden, rest = (args[0], args[1:]) if args else (kwargs.pop("hidden_states"), ())
        captured.append((hidden, rest, kwargs))
        raise _Stop

    device = next(model.parameters()).device
    handle = blocks[0].register_forward_pre_hook(hook, with_kwargs=True)
    try:
        for batch in tokens.split(batch_size):
            try:
                model(input_ids=batch.to(device), use_cache=False)
            except _Stop:
                pass
    finally:
        handle.remove()
    return captured


def input_groups(block: nn.Module, linears: dict[str, nn.Module], first: BlockInput) -> list[list[str]]:
    """The linears grouped by the input tensor they share, in execution order (true-sequential).

    Found by running the block once: GPT-2 and NeoX give [[qkv], [attn out], [mlp in], [mlp out]];
    separate q/k/v projections of one input form one group, as do SwiGLU's gate and up (Llama,
    Qwen2: [[q, k, v], [o], [gate, up], [down]]).
    """
    seen: list[tuple[str, Tensor]] = []  # tensors stay referenced, so `is` comparisons are sound
    handles = [m.register_forward_pre_hook(lambda m, args, name=name: seen.append((name, args[0])))
               for name, m in linears.items()]
    try:
        hidden, args, kwargs = first
        block(hidden, *args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    groups: list[tuple[Tensor, list[str]]] = []
    for name, x in seen:
        group = next((names for t, names in groups if t is x), None)
        if group is None:
            groups.append((x, [name]))
        elif name not in group:
            group.append(name)
    missing = [name for name in linears if not any(name in names for _, names in groups)]
    return [names for _, names in groups] + ([missing] if missing else [])


def collect_hessians(block: nn.Module, linears: dict[str, nn.Module], inputs: list[BlockInput]) -> dict[str, Tensor]:
    """H = 2/n Σ x xᵀ of each linear's inputs over all calibration batches run through `block`."""
    accumulators = {name: HessianAccumulator(get_rows(m).shape[1], device=m.weight.device,
                                             dtype=solver_dtype(m.weight.device))
                    for name, m in linears.items()}
    handles = [m.register_forward_pre_hook(lambda m, args, name=name: accumulators[name].add_batch(args[0]))
               for name, m in linears.items()]
    try:
        for hidden, args, kwargs in inputs:
            block(hidden, *args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return {name: acc.hessian() for name, acc in accumulators.items()}


def _output(out) -> Tensor:
    """A block's hidden-state output (transformers 5 returns a tensor; older versions a tuple)."""
    return out[0] if isinstance(out, tuple) else out
