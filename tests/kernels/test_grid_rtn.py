"""Properties of the grids and of RTN (qcheck/quantize/grid.py, rtn.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from qcheck.quantize.grid import GridSpec, fit
from qcheck.quantize.rtn import rtn

pytestmark = pytest.mark.kernels


def _groups(data, d_in: int) -> int | None:
    return data.draw(st.one_of(st.none(), st.integers(1, max(1, d_in))), label="group_size")


def _steps(q) -> torch.Tensor:
    """The grid step of every element, (d_out, d_in)."""
    return q.scales[:, q.g_idx]


@given(data=st.data())
def test_rtn_values_on_the_grid_and_in_range(draw, data):
    grid = data.draw(draw.grids, label="grid")
    w = draw.matrix(data, *draw.shape(data))
    q = rtn(w, grid, group_size=_groups(data, w.shape[1]))
    assert q.codes.min() >= 0 and q.codes.max() <= grid.maxq
    # Independently of how the kernel built it: weight / step + zero is an integer code.
    position = q.weight / _steps(q) + q.zeros[:, q.g_idx]
    assert torch.allclose(position, position.round(), atol=1e-4)
    assert torch.equal(position.round().long(), q.codes)


@given(data=st.data())
def test_rtn_error_at_most_half_a_step(draw, data):
    grid = data.draw(draw.grids, label="grid")
    w = draw.matrix(data, *draw.shape(data))
    q = rtn(w, grid, group_size=_groups(data, w.shape[1]))
    assert ((q.weight - w).abs() <= _steps(q) * (0.5 + 1e-5) + 1e-7).all()


@given(data=st.data())
def test_rtn_is_idempotent_on_the_study_and_asymmetric_grids(draw, data):
    grid = data.draw(st.one_of(draw.study_grids, st.builds(GridSpec, bits=st.integers(2, 8), sym=st.just(False))))
    w = draw.matrix(data, *draw.shape(data))
    group_size = _groups(data, w.shape[1])
    once = rtn(w, grid, group_size=group_size)
    twice = rtn(once.weight, grid, group_size=group_size)
    assert torch.equal(twice.codes, once.codes)
    assert torch.allclose(twice.weight, once.weight, rtol=1e-6, atol=0)


def test_reference_grid_is_not_idempotent():
    """Why `study` is the default: the reference grid's levels are −8..7 steps of 2·max/15, so a
    row whose extreme is negative rounds to −8 steps = −16/15·max and the next pass rescales."""
    w = torch.tensor([[-7.5, 1.0, 2.0]])  # scale = 2 · 7.5 / 15 = 1 exactly
    grid = GridSpec(4, kind="reference")
    once = rtn(w, grid)
    assert once.weight[0, 0] == -8.0
    assert not torch.allclose(rtn(once.weight, grid).weight, once.weight)


@given(data=st.data())
def test_rtn_sign_symmetry_on_the_study_grid(draw, data):
    grid = data.draw(draw.study_grids, label="grid")
    w = draw.matrix(data, *draw.shape(data))
    group_size = _groups(data, w.shape[1])
    assert torch.equal(rtn(-w, grid, group_size=group_size).weight, -rtn(w, grid, group_size=group_size).weight)


@given(data=st.data())
def test_groups_are_rtn_of_each_column_slice(draw, data):
    grid = data.draw(draw.grids, label="grid")
    w = draw.matrix(data, *draw.shape(data))
    g = data.draw(st.integers(1, w.shape[1]), label="group_size")
    grouped = rtn(w, grid, group_size=g).weight
    sliced = torch.cat([rtn(w[:, s:s + g], grid).weight for s in range(0, w.shape[1], g)], dim=1)
    assert torch.equal(grouped, sliced)


@given(data=st.data())
def test_rtn_leaves_the_callers_tensor_alone(draw, data):
    w = draw.matrix(data, *draw.shape(data))
    before = w.clone()
    rtn(w, data.draw(draw.grids), group_size=_groups(data, w.shape[1]))
    assert torch.equal(w, before)


def test_study_grid_is_the_studys_formula():
    """The study: symmetric, one scale per output row, scale = max|w|/7 at 4 bits, levels −8..7."""
    w = torch.tensor([[0.7, -0.35, 0.1, 0.0], [-2.0, 1.0, 0.5, 0.29]])
    q = rtn(w, GridSpec(4))
    scale = w.abs().amax(dim=1, keepdim=True) / 7
    assert torch.equal(q.scales, scale)
    assert torch.equal(q.weight, torch.clamp(torch.round(w / scale), -8, 7) * scale)


def test_grid_formulas_at_two_bits():
    """The study's grid is degenerate at 2 bits ({−2,−1,0,1}·max|w|); the reference's is not."""
    w = torch.tensor([[1.0, 0.4, -0.4, 0.2]])
    study, reference = fit(w, GridSpec(2)), fit(w, GridSpec(2, kind="reference"))
    assert study[0].item() == 1.0 and study[1].item() == 2.0
    assert reference[0].item() == pytest.approx(2 / 3) and reference[1].item() == 2.0
    assert rtn(w, GridSpec(2)).weight.tolist() == [[1.0, 0.0, 0.0, 0.0]]
    assert rtn(w, GridSpec(2, kind="reference")).weight[0].tolist() == pytest.approx([2 / 3, 2 / 3, -2 / 3, 0.0])


def test_zero_rows_stay_zero():
    w = torch.zeros(2, 5)
    for grid in (GridSpec(4), GridSpec(4, kind="reference"), GridSpec(3, sym=False)):
        q = rtn(w, grid)
        assert torch.equal(q.weight, w) and torch.isfinite(q.scales).all()
