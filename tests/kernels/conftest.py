"""Hypothesis draws shared by the kernel property tests. Every random value comes from hypothesis
(`st.data()`), never torch.rand; shapes stay small so the tier runs in well under a minute."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qcheck.quantize.grid import GridSpec

# Bounds are exactly representable in float32 (width=32 requires it).
BOUND = 4.0



class Draw:
    """Tensors (and grids) drawn through a hypothesis `data` object."""

    grids = st.builds(GridSpec, bits=st.integers(2, 8), sym=st.booleans(),
                      kind=st.sampled_from(["study", "reference"]))
    study_grids = st.builds(GridSpec, bits=st.integers(2, 8))  # the default, symmetric grid

    @staticmethod
    def matrix(data, rows: int, cols: int, *, bound: float = BOUND, dtype=torch.float32) -> torch.Tensor:
        # extra.numpy.arrays draws ~6x faster than a list of floats and shrinks as well.
        values = data.draw(arrays(np.float32, (rows, cols), elements=st.floats(-bound, bound, width=32,
                                                                            allow_subnormal=False)),
                           label=f"matrix {rows}x{cols}")
        return torch.from_numpy(values).to(dtype)

    @staticmethod
    def positive(data, n: int, *, low: float = 0.25, high: float = BOUND, dtype=torch.float32) -> torch.Tensor:
        values = data.draw(arrays(np.float32, (n,), elements=st.floats(low, high, width=32)), label="positive")
        return torch.from_numpy(values).to(dtype)

    @staticmethod
    def shape(data, *, max_rows: int = 6, max_cols: int = 12) -> tuple[int, int]:
        return data.draw(st.integers(1, max_rows), label="d_out"), data.draw(st.integers(1, max_cols), label="d_in")

    @staticmethod
    def hessian(data, d_in: int, *, n: int | None = None, dtype=torch.float32) -> torch.Tensor:
        """H = 2/n XᵀX of drawn inputs X (n, d_in), n drawn in [d_in, d_in + 2] unless given:
        full rank is likely, not guaranteed (damping covers the rest, as in real layers)."""
        n = n if n is not None else data.draw(st.integers(d_in, d_in + 2), label="n tokens")
        x = Draw.matrix(data, n, d_in, dtype=dtype)
        return 2.0 / n * x.T @ x


@pytest.fixture(scope="session")
def draw() -> Draw:
    return Draw()
