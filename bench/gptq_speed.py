"""Speed of the quantization kernels on GPT-2-small layer shapes, printed as a table.

    OMP_NUM_THREADS=1 python bench/gptq_speed.py [--tokens 2048] [--bits 4] [--repeats 3]

For each layer (d_in -> d_out: 768->2304 attn.c_attn, 768->768 attn.c_proj, 768->3072 mlp.c_fc,
3072->768 mlp.c_proj) with correlated synthetic inputs (a few strong shared directions, a few
outlier channels, noise: like real activations), it times
  hessian   accumulating H = 2/n Σ x xᵀ over the tokens in batches of 512 (hessian.py)
  rtn       round-to-nearest, per-row study grid
  gptq      the library's GPTQ: Cholesky of H⁻¹ and lazy block updates (block 128)
  naive     the same math column by column: each column's error is pushed onto all later
            columns at once (no lazy batching), written here
  matmuls   the "equivalent matrix multiplications": W·H (d_out×d_in×d_in, the FLOPs of all of
            GPTQ's updates) plus H·H (d_in³, standing in for the factorisations)
and prints seconds (best of --repeats; naive runs once), the relative output error
‖(W − Q) X‖ / ‖W X‖ on the calibration tokens, gptq's speed-up over naive and gptq / matmuls.
"""

from __future__ import annotations

import argparse
import time

import torch

from qcheck.quantize.gptq import gptq, inverse_cholesky
from qcheck.quantize.grid import GridSpec, decode, encode, fit
from qcheck.quantize.hessian import HessianAccumulator
from qcheck.quantize.rtn import rtn

SHAPES = [("attn.c_attn", 768, 2304), ("attn.c_proj", 768, 768), ("mlp.c_fc", 768, 3072), ("mlp.c_proj", 3072, 768)]


def correlated_inputs(n: int, d_in: int, generator: torch.Generator) -> torch.Tensor:
    """(n, d_in): 8 shared directions, 4 outlier channels (x20), isotropic noise."""
    x = torch.randn(n, 8, generator=generator) @ torch.randn(8, d_in, generator=generator)
    x += 0.5 * torch.randn(n, d_in, generator=generator)
    x[:, torch.randperm(d_in, generator=generator)[:4]] *= 20
    return x


def naive_gptq(weight: torch.Tensor, H: torch.Tensor, grid: GridSpec, damp: float = 0.01) -> torch.Tensor:
    """GPTQ without lazy batching: after each column, update every later column immediately."""
    W = weight.clone().T.contiguous()         # (d_in, d_out): one input column per row
    scale, zero = fit(weight, grid)
    U, _, _ = inverse_cholesky(H, damp)
    Q = torch.empty_like(W)
    for i in range(W.shape[0]):
        Q[i] = decode(encode(W[i][:, None], scale, zero, grid.maxq), scale, zero)[:, 0]
        err = (W[i] - Q[i]) / U[i, i]
        W[i + 1:].addr_(U[i, i + 1:], err, alpha=-1)
    return Q.T


def best_of(repeats: int, fn) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=2048)
    parser.add_argument("--bits", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    generator = torch.Generator().manual_seed(0)
    grid = GridSpec(args.bits)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), {args.tokens} tokens, {args.bits} bits")
    header = (f"{'layer':12} {'d_in->d_out':>11} | {'hessian':>8} {'rtn':>7} {'gptq':>7} {'naive':>7} {'matmuls':>8} | "
              f"{'err rtn':>8} {'err gptq':>8} {'err naive':>9} | {'naive/gptq':>10} {'gptq/matmuls':>12}")
    print(header + "\n" + "-" * len(header))
    for name, d_in, d_out in SHAPES:
        x = correlated_inputs(args.tokens, d_in, generator)                   # (n, d_in)
        w = torch.randn(d_out, d_in, generator=generator) * 0.02             # (d_out, d_in)

        def accumulate():
            acc = HessianAccumulator(d_in)
            for batch in x.split(512):
                acc.add_batch(batch)
            return acc.hessian()

        t_h, H = best_of(args.repeats, accumulate)
        t_rtn, q_rtn = best_of(args.repeats, lambda: rtn(w, grid).weight)
        t_gptq, q_gptq = best_of(args.repeats, lambda: gptq(w, H, grid).weight)
        t_naive, q_naive = best_of(1, lambda: naive_gptq(w, H, grid))
        t_mm, _ = best_of(args.repeats, lambda: (w @ H, H @ H))
        reference = (w @ x.T).norm()

        def error(q):
            return float(((w - q) @ x.T).norm() / reference)

        print(f"{name:12} {f'{d_in}->{d_out}':>11} | {t_h:8.3f} {t_rtn:7.3f} {t_gptq:7.3f} {t_naive:7.3f} {t_mm:8.3f} | "
              f"{error(q_rtn):8.4f} {error(q_gptq):8.4f} {error(q_naive):9.4f} | {t_naive / t_gptq:10.2f} "
              f"{t_gptq / t_mm:12.2f}", flush=True)


if __name__ == "__main__":
    main()
