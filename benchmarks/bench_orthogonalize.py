"""The orthonormal Q of amortized sylvester-orthogonal, forward and backward, by each way there is to compute it.

    python benchmarks/bench_orthogonalize.py [--batch 128] [--dim 40] [--m 16] [--steps 16] [--rounds 7]

A training step of the amortized flow needs one Q (D, M) per example and flow step: 2,048 matrices at the 40-D
MLP's batch 128, 16 steps and M = 16. On one thread, with the gradient of a random linear function of Q, the
minimum over `rounds` rounds of:

    qr           torch.linalg.qr with the columns' signs fixed (flows.orthonormal_factor, the flow's own)
    cholesky-qr  Q = W R⁻¹ with RᵀR = WᵀW (Cholesky), the same Q as qr in exact arithmetic
    cholesky-qr2 cholesky-qr applied twice, which restores orthonormality lost to WᵀW's conditioning
    gram-schmidt modified Gram–Schmidt over the M columns, batched: the same Q again
    bjorck       the iteration of van den Berg et al.'s code (W / ‖W‖_F, then Q ← Q(I + ½(I − QᵀQ)) until
                 ‖QᵀQ − I‖ ≤ 1e-6, at most 100 times): the polar factor of W, a different Q (another model)

each per flow step (`steps` calls of `batch` matrices, as the flow computes it) and in one call over all steps.
Before timing, each method's Q is compared in float64 with qr's (bjorck's differs by construction) and its
orthonormality ‖QᵀQ − I‖ measured in float32.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from flows import orthonormal_factor as qr  # noqa: E402

TOLERANCE, MAX_ITERATIONS = 1e-6, 100   # van den Berg et al.'s stopping rule for M < D


def cholesky_qr(W):
    L = torch.linalg.cholesky(W.mT @ W)                               # WᵀW = L Lᵀ, R = Lᵀ
    return torch.linalg.solve_triangular(L.mT, W, upper=True, left=False)


def cholesky_qr2(W):
    return cholesky_qr(cholesky_qr(W))


def gram_schmidt(W):
    columns = []
    for w in W.unbind(-1):
        for q in columns:
            w = w - (q * w).sum(-1, keepdim=True) * q
        columns.append(w / w.norm(dim=-1, keepdim=True))
    return torch.stack(columns, -1)


def bjorck(W):
    Q = W / W.flatten(-2).norm(dim=-1)[..., None, None]
    eye = torch.eye(W.shape[-1], dtype=W.dtype)
    for _ in range(MAX_ITERATIONS):
        Q = Q @ (eye + 0.5 * (eye - Q.mT @ Q))
        with torch.no_grad():
            if (Q.mT @ Q - eye).norm(dim=(-2, -1)).max() <= TOLERANCE:
                break
    return Q


METHODS = {'qr': qr, 'cholesky-qr': cholesky_qr, 'cholesky-qr2': cholesky_qr2, 'gram-schmidt': gram_schmidt,
           'bjorck': bjorck}


def milliseconds(method, shape, calls, rounds):
    """Minimum over rounds of `calls` forward and backward passes of `method` on random W of `shape`."""
    times = []
    for _ in range(rounds):
        Ws = [torch.randn(shape, requires_grad=True) for _ in range(calls)]
        weights = [torch.randn(shape) for _ in range(calls)]
        start = time.perf_counter()
        sum((method(W) * weight).sum() for W, weight in zip(Ws, weights)).backward()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--batch', type=int, default=128)
    p.add_argument('--dim', type=int, default=40)
    p.add_argument('--m', type=int, default=16)
    p.add_argument('--steps', type=int, default=16)
    p.add_argument('--rounds', type=int, default=7)
    a = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    W64 = torch.randn(a.batch, a.dim, a.m, dtype=torch.float64)
    W32 = W64.float()
    eye = torch.eye(a.m)
    print(f'Q ({a.dim} x {a.m}) of {a.steps} steps x {a.batch} examples, forward and backward, one thread; '
          f'ms, minimum of {a.rounds} rounds')
    print(f'{"method":<14}{"max |Q - Q_qr|, f64":>22}{"‖QᵀQ − I‖, f32":>17}{"per step":>11}{"one call":>11}')
    for name, method in METHODS.items():
        difference = (method(W64) - qr(W64)).abs().max().item()
        Q = method(W32)
        orthonormality = (Q.mT @ Q - eye).norm(dim=(-2, -1)).max().item()
        per_step = milliseconds(method, (a.batch, a.dim, a.m), a.steps, a.rounds)
        one_call = milliseconds(method, (a.batch * a.steps, a.dim, a.m), 1, a.rounds)
        print(f'{name:<14}{difference:>22.1e}{orthonormality:>17.1e}{per_step:>11.1f}{one_call:>11.1f}')


if __name__ == '__main__':
    main()
