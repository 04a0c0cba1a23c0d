"""Properties of GPTQ (qcheck/quantize/gptq.py) and of the Hessian collection (hessian.py)."""

from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st

from qcheck.quantize.gptq import group_aware_order, gptq
from qcheck.quantize.grid import GridSpec
from qcheck.quantize.hessian import HessianAccumulator, hessian
from qcheck.quantize.rtn import rtn

pytestmark = pytest.mark.kernels


def _layer(draw, data, *, dtype=torch.float32, max_cols: int = 12):
    d_out, d_in = draw.shape(data, max_cols=max_cols)
    return draw.matrix(data, d_out, d_in, dtype=dtype), draw.hessian(data, d_in, dtype=dtype)


@given(data=st.data())
def test_diagonal_hessian_gives_rtn(draw, data):
    """With H diagonal no error is pushed anywhere: every column is rounded on its own (paper 3.1)."""
    grid = data.draw(draw.grids, label="grid")
    d_out, d_in = draw.shape(data)
    w = draw.matrix(data, d_out, d_in)
    H = torch.diag(draw.positive(data, d_in))
    group_size = data.draw(st.one_of(st.none(), st.integers(1, d_in)), label="group_size")
    static = group_size is not None and data.draw(st.booleans(), label="static")
    # act-order regroups columns unless groups are static or per row; then it is still RTN.
    act_order = data.draw(st.booleans(), label="act_order") and (group_size is None or static)
    q = gptq(w, H, grid, group_size=group_size, static_groups=static, act_order=act_order,
             block_size=data.draw(st.integers(1, 8), label="block_size"))
    assert torch.equal(q.weight, rtn(w, grid, group_size=group_size).weight)


@given(data=st.data())
def test_output_lies_on_the_grid_it_reports(draw, data):
    grid = data.draw(draw.grids, label="grid")
    w, H = _layer(draw, data)
    group_size = data.draw(st.one_of(st.none(), st.integers(1, w.shape[1])), label="group_size")
    q = gptq(w, H, grid, group_size=group_size, act_order=data.draw(st.booleans(), label="act_order"))
    assert q.codes.min() >= 0 and q.codes.max() <= grid.maxq
    position = q.weight / q.scales[:, q.g_idx] + q.zeros[:, q.g_idx]
    assert torch.allclose(position, position.round(), atol=1e-4)
    assert torch.equal(position.round().long(), q.codes)


@given(data=st.data())
def test_per_row_output_is_on_rtns_grid(draw, data):
    """Per-row (and static-group) grids are fitted up front on the original weights: RTN's grid."""
    grid = data.draw(draw.grids, label="grid")
    w, H = _layer(draw, data)
    group_size = data.draw(st.one_of(st.none(), st.integers(1, w.shape[1])), label="group_size")
    q = gptq(w, H, grid, group_size=group_size, static_groups=group_size is not None)
    reference = rtn(w, grid, group_size=group_size)
    assert torch.equal(q.scales, reference.scales) and torch.equal(q.zeros, reference.zeros)


@given(data=st.data())
def test_rows_are_independent(draw, data):
    """Fused QKV and separate Q, K, V with the same inputs give the same quantized rows."""
    grid = data.draw(draw.grids, label="grid")
    w, H = _layer(draw, data, dtype=torch.float64)
    split = data.draw(st.integers(0, w.shape[0]), label="split")
    group_size = data.draw(st.one_of(st.none(), st.integers(1, w.shape[1])), label="group_size")
    options = dict(group_size=group_size, act_order=data.draw(st.booleans(), label="act_order"))
    fused = gptq(w, H, grid, **options).weight
    parts = [gptq(part, H, grid, **options).weight for part in (w[:split], w[split:]) if len(part)]
    # Not bit-equal: a matmul over 3 rows and one over 2 may use different BLAS kernels (seen with
    # 2 threads). A real dependence between rows moves a weight by a whole grid step, far above
    # this tolerance.
    torch.testing.assert_close(fused, torch.cat(parts), rtol=1e-9, atol=1e-12)


@given(data=st.data())
def test_act_order_is_permutation_equivariant(draw, data):
    """Relabelling the input columns (W P, Pᵀ H P) relabels the result: act-order depends only on
    diag(H), so the processing order is the same. Needs no ties in diag(H)."""
    grid = data.draw(draw.grids, label="grid")
    w, H = _layer(draw, data, dtype=torch.float64)
    diag = H.diagonal()
    assume(len(set(diag.tolist())) == len(diag))
    perm = torch.tensor(data.draw(st.permutations(range(w.shape[1])), label="perm"))
    group_size = data.draw(st.one_of(st.none(), st.integers(1, w.shape[1])), label="group_size")
    q = gptq(w, H, grid, group_size=group_size, act_order=True).weight
    q_perm = gptq(w[:, perm], H[perm][:, perm], grid, group_size=group_size, act_order=True).weight
    assert torch.equal(q_perm, q[:, perm])


@given(data=st.data())
def test_callers_tensors_untouched(draw, data):
    w, H = _layer(draw, data)
    w0, H0 = w.clone(), H.clone()
    gptq(w, H, data.draw(draw.grids), group_size=2, act_order=True)
    assert torch.equal(w, w0) and torch.equal(H, H0)


def test_dead_columns_are_zeroed():
    """An input never active in calibration (H_ii = 0) gets weight 0 (reference gptq.py)."""
    x = torch.tensor([[1.0, 0.0, 2.0], [0.5, 0.0, -1.0], [-1.0, 0.0, 0.25], [2.0, 0.0, 1.0]])
    w = torch.tensor([[0.3, 0.9, -0.2], [-0.5, 0.1, 0.4]])
    q = gptq(w, hessian(x), GridSpec(4))
    assert q.dead == 1 and torch.equal(q.weight[:, 1], torch.zeros(2))
    assert (q.weight[:, [0, 2]] != 0).any()


def test_failed_cholesky_is_retried_with_more_damping():
    """H with eigenvalue −0.05: damp 0.01·mean diag leaves it indefinite, 0.1 does not."""
    H = torch.tensor([[1.0, 1.05], [1.05, 1.0]])
    q = gptq(torch.tensor([[0.3, -0.7]]), H, GridSpec(4), damp=0.01)
    assert q.damp_retries == 1 and q.damp == pytest.approx(0.1)
    assert gptq(torch.tensor([[0.3, -0.7]]), torch.eye(2), GridSpec(4)).damp_retries == 0


def test_hopeless_hessian_is_an_error():
    with pytest.raises(ValueError, match="NaN"):
        gptq(torch.ones(1, 2), torch.tensor([[1.0, float("nan")], [0.0, 1.0]]), GridSpec(4))


@given(data=st.data())
def test_hessian_accumulates_batch_by_batch(draw, data):
    d_in = data.draw(st.integers(1, 6), label="d_in")
    sizes = data.draw(st.lists(st.integers(1, 5), min_size=1, max_size=4), label="batch sizes")
    batches = [draw.matrix(data, n, d_in, dtype=torch.float64) for n in sizes]
    acc = HessianAccumulator(d_in, dtype=torch.float64)
    for x in batches:
        acc.add_batch(x[None])  # (batch=1, pos, d_in), as a block's inputs arrive
    x = torch.cat(batches)
    assert acc.n_tokens == len(x)
    assert torch.allclose(acc.hessian(), 2 / len(x) * x.T @ x, rtol=1e-12, atol=1e-12)


@given(data=st.data())
def test_group_aware_order_moves_whole_groups(draw, data):
    """GAR: each group's columns by decreasing diag(H), groups by their largest diag(H); a
    trailing partial group stays last, in natural order."""
    d_in = data.draw(st.integers(1, 40), label="d_in")
    g = data.draw(st.integers(1, d_in), label="group_size")
    diag = draw.positive(data, d_in)
    order = group_aware_order(diag, g)
    assert sorted(order.tolist()) == list(range(d_in))
    n_full = d_in // g
    blocks = order[:n_full * g].reshape(n_full, g)
    for block in blocks:
        assert len(set((block // g).tolist())) == 1                       # one original group each
        assert torch.all(diag[block][:-1] >= diag[block][1:])             # decreasing inside
    maxima = diag[blocks[:, 0]] if n_full else diag[:0]
    assert torch.all(maxima[:-1] >= maxima[1:])                           # groups by their max
    assert torch.equal(order[n_full * g:], torch.arange(n_full * g, d_in))


@given(data=st.data())
def test_group_aware_gptq_is_natural_gptq_of_the_reordered_columns(draw, data):
    """-gar only relabels: GPTQ over GAR's column order, returned in the original order, with
    g_idx in natural order and each original group's own grid."""
    grid = data.draw(draw.grids, label="grid")
    w, H = _layer(draw, data, dtype=torch.float64)
    g = data.draw(st.integers(1, w.shape[1]), label="group_size")
    q = gptq(w, H, grid, group_size=g, group_aware=True)
    # GAR orders by diag(H) after dead columns (H_ii == 0) are set to 1, as act-order does
    diagonal = H.diagonal().clone()
    diagonal[diagonal < torch.finfo(H.dtype).tiny] = 1
    order = group_aware_order(diagonal, g)
    natural = gptq(w[:, order], H[order][:, order], grid, group_size=g)
    assert torch.equal(q.weight[:, order], natural.weight)
    assert torch.equal(q.g_idx, torch.arange(w.shape[1]) // g)
    assert torch.equal(q.scales[:, q.g_idx][:, order], natural.scales[:, natural.g_idx])


@given(data=st.data())
def test_blockfit_is_the_default_when_every_group_starts_a_block(draw, data):
    grid = data.draw(draw.grids, label="grid")
    w, H = _layer(draw, data)
    g = data.draw(st.integers(1, w.shape[1]), label="group_size")
    options = dict(group_size=g, block_size=g, act_order=data.draw(st.booleans(), label="act_order"))
    assert torch.equal(gptq(w, H, grid, block_start_grids=True, **options).weight, gptq(w, H, grid, **options).weight)


def test_blockfit_fits_a_mid_block_group_on_the_weights_of_the_blocks_start():
    """Two groups of 4 in one block of 8: with -blockfit the second group's grid is RTN's grid of
    the original columns 4..7 (no update of the block has reached it yet), by default it is
    fitted on the updated ones."""
    generator = torch.Generator().manual_seed(0)
    w = torch.randn(6, 8, generator=generator, dtype=torch.float64)
    x = torch.randn(64, 8, generator=generator, dtype=torch.float64) @ torch.randn(8, 8, generator=generator,
                                                                                  dtype=torch.float64)
    H, grid = 2 / 64 * x.T @ x, GridSpec(4, kind="reference")
    stale = gptq(w, H, grid, group_size=4, block_size=8, block_start_grids=True)
    fresh = gptq(w, H, grid, group_size=4, block_size=8)
    original = rtn(w, grid, group_size=4)
    assert torch.equal(stale.scales[:, 1], original.scales[:, 1])
    assert not torch.equal(fresh.scales[:, 1], original.scales[:, 1])
    assert torch.equal(stale.scales[:, 0], fresh.scales[:, 0])  # the first group starts the block
