"""GPTQ against a brute-force reference, and against RTN statistically.

The reference is optimal brain quantization written the slow, obvious way (Frantar et al. 2022,
eq. 2; OBQ, Frantar & Alistarh 2022): quantize one column, re-invert the Hessian of the columns
not yet quantized, push the error onto them, repeat. GPTQ's Cholesky formulation must equal it;
the study's variant, which keeps using rows of the first inverse, must not.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from qcheck.quantize.gptq import gptq
from qcheck.quantize.gptq_study import gptq_study
from qcheck.quantize.grid import GridSpec, decode, encode, fit
from qcheck.quantize.hessian import hessian
from qcheck.quantize.rtn import rtn

pytestmark = pytest.mark.kernels


def obq_reference(w, H, grid: GridSpec, *, group_size=None, act_order=False, static_groups=False, damp=0.01,
                  ties: list[float] | None = None):
    """Brute-force OBQ in float64: after every column, invert the remaining Hessian afresh.

    `ties` collects how close each rounding after column 0 came to a tie (x.5): there two exact
    implementations may round either way, from float error alone, and then legitimately differ.
    """
    W, H = w.double().clone(), H.double().clone()
    d_in = W.shape[1]
    row_grid = fit(W, grid)
    static = [fit(W[:, s:s + group_size], grid) for s in range(0, d_in, group_size)] if static_groups else None
    dead = H.diagonal() == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    order = torch.argsort(H.diagonal(), descending=True, stable=True) if act_order else torch.arange(d_in)
    W, H = W[:, order], H[order][:, order]
    H = H + damp * H.diagonal().mean() * torch.eye(d_in, dtype=H.dtype)
    Q = torch.zeros_like(W)
    scale, zero = row_grid
    for i in range(d_in):
        if static is not None:
            scale, zero = static[int(order[i]) // group_size]
        elif group_size is not None and i % group_size == 0:
            scale, zero = fit(W[:, i:i + group_size], grid)
            if not grid.sym and ties is not None and i > 0:  # the zero point is rounded too
                ties.append(_tie_distance(-W[:, i:i + group_size].amin(dim=1).clamp(max=0) / scale, 0, grid.maxq))
        if ties is not None and i > 0:
            ties.append(_tie_distance(W[:, i] / scale + zero, 0, grid.maxq))
        Q[:, i] = decode(encode(W[:, i:i + 1], scale, zero, grid.maxq), scale, zero)[:, 0]
        Hinv = torch.linalg.inv(H[i:, i:])                      # columns i.. are still free
        err = (W[:, i] - Q[:, i]) / Hinv[0, 0]
        W[:, i:] -= err[:, None] * Hinv[0][None, :]             # sets W[:, i] = Q[:, i]
    return Q[:, torch.argsort(order)]


def _tie_distance(position: torch.Tensor, low: int, high: int) -> float:
    """Smallest distance of `position` to a rounding tie k + 1/2 that clamping does not hide."""
    live = position[(position > low - 0.5) & (position < high + 0.5)]
    return float((live - live.floor() - 0.5).abs().min()) if len(live) else 1.0


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-12))


@given(data=st.data())
def test_gptq_equals_brute_force_obq(draw, data):
    """Every option, and block sizes from 1 up: lazy batching reorders updates, never changes them."""
    grid = data.draw(draw.grids, label="grid")
    d_out, d_in = draw.shape(data, max_rows=4, max_cols=10)
    w = draw.matrix(data, d_out, d_in, dtype=torch.float64)
    H = draw.hessian(data, d_in, dtype=torch.float64)
    group_size = data.draw(st.one_of(st.none(), st.integers(1, d_in)), label="group_size")
    options = dict(group_size=group_size, act_order=data.draw(st.booleans(), label="act_order"),
                   static_groups=group_size is not None and data.draw(st.booleans(), label="static"))
    ties: list[float] = []
    reference = obq_reference(w, H, grid, ties=ties, **options)
    assume(min(ties, default=1.0) > 1e-9)  # an exact tie may round either way (see obq_reference)
    got = gptq(w, H, grid, block_size=data.draw(st.integers(1, 8), label="block_size"), **options)
    assert got.damp_retries == 0  # a PSD H damped by 1% of its mean diagonal always factorises
    assert _relative(got.weight, reference) <= 1e-4


def _correlated_layer(generator: torch.Generator, d_out: int, d_in: int, n: int, rank: int = 4):
    """W ~ N(0, 1) and inputs with a few strong shared directions, as real activations have."""
    w = torch.randn(d_out, d_in, generator=generator)
    mixing = torch.randn(rank, d_in, generator=generator) * 3
    x = torch.randn(n, rank, generator=generator) @ mixing + 0.3 * torch.randn(n, d_in, generator=generator)
    return w, x


def test_study_variant_does_not_match_the_reference():
    """The stale inverse is only right for the first column: this is the test that catches it."""
    generator = torch.Generator().manual_seed(0)
    grid = GridSpec(4)
    exact, stale = [], []
    for _ in range(20):
        w, x = _correlated_layer(generator, 8, 16, 128)
        w, H = w.double(), hessian(x.double())
        reference = obq_reference(w, H, grid)
        exact.append(_relative(gptq(w, H, grid).weight, reference))
        stale.append(_relative(gptq_study(w, H, grid).weight, reference))
    assert max(exact) <= 1e-4
    assert min(stale) > 1e-2, f"gptq-study matched the exact reference on some layer: {stale}"
    # With two columns only column 0's update matters, and there the full inverse is still right.
    w, x = _correlated_layer(generator, 8, 2, 64, rank=1)
    assert _relative(gptq_study(w.double(), hessian(x.double()), grid).weight,
                     obq_reference(w.double(), hessian(x.double()), grid)) <= 1e-12


def _output_error(w, q, x) -> float:
    """‖(W − Q) Xᵀ‖ / ‖W Xᵀ‖ over the calibration inputs x (n, d_in)."""
    return float(((w - q) @ x.T).norm() / (w @ x.T).norm())


def test_gptq_beats_rtn_in_the_median_over_seeded_layers():
    """Not true for every layer (NOTES-ecosystem.md: counterexamples exist at 2 and 4 bits), but
    over 50 layers with correlated inputs the median output error must be lower."""
    generator = torch.Generator().manual_seed(1)
    errors = {"rtn": [], "gptq": [], "gptq-study": []}
    for layer in range(50):
        grid = GridSpec((3, 4)[layer % 2])
        w, x = _correlated_layer(generator, 16, 32, 256)
        H = hessian(x)
        errors["rtn"].append(_output_error(w, rtn(w, grid).weight, x))
        errors["gptq"].append(_output_error(w, gptq(w, H, grid).weight, x))
        errors["gptq-study"].append(_output_error(w, gptq_study(w, H, grid).weight, x))
    median = {name: torch.tensor(values).median().item() for name, values in errors.items()}
    ratio = (torch.tensor(errors["gptq"]) / torch.tensor(errors["rtn"])).median().item()
    assert median["gptq"] < median["rtn"], median
    assert ratio < 0.9, f"median GPTQ/RTN output-error ratio {ratio:.3f}; medians {median}"
    assert median["gptq"] < median["gptq-study"], median
