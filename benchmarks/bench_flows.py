"""Forward+backward time of a length-16 flow, B = 128, each kind (flows.FLOWS), static and amortized.

    python benchmarks/bench_flows.py [--repeats 30] [--threads N]

Sylvester and IAF flows run with build_flow's defaults (M = D, H = 8 reflections, MADE width
max(4D, 64)). torch's thread count is left at its default unless --threads is given. The load average is printed
before and after: on a small shared machine other processes' load changes these numbers a lot.

Also times, in the same run, a naive Householder flow that builds the D x D reflection matrix
(static) or the B x D x D matrices (amortized) and multiplies by them, against ours (vector form); and
the forward pass of each amortized flow at D = 40 as the importance-weighted estimate runs it, K = IW_K
samples of IW_BATCH examples, given z (K, B, D) and the context (B, C) (each example's parameters computed
once) against z (K*B, D) and the context repeated per sample (computed K times).
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from flows import FLOWS, build_flow  # noqa: E402

BATCH, LENGTH, CONTEXT_DIM = 128, 16, 400
IW_K, IW_BATCH = 500, 20


def naive_householder(flow, z, context):
    """The same map as flows.HouseholderFlow, by explicit reflection matrices I - 2 v v^T / ||v||^2."""
    eye = torch.eye(z.shape[-1], device=z.device)
    for step in flow.steps:
        v = step.params(z, context)
        outer = v.unsqueeze(-1) * v.unsqueeze(-2) / (v * v).sum(-1)[..., None, None]   # (D, D) or (B, D, D)
        H = eye - 2 * outer
        z = z @ H if H.dim() == 2 else torch.bmm(H, z.unsqueeze(-1)).squeeze(-1)
    return z, z.new_zeros(z.shape[0])


def time_call(fn, repeats):
    """Median microseconds of fn() (forward + backward) after warm-up."""
    for _ in range(5):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times)


def time_pair(fn_a, fn_b, repeats):
    """Median microseconds of fn_a() and fn_b(), calls interleaved so that a change of load hits both alike."""
    for _ in range(5):
        fn_a()
        fn_b()
    times_a, times_b = [], []
    for _ in range(repeats):
        for fn, times in ((fn_a, times_a), (fn_b, times_b)):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return 1e6 * statistics.median(times_a), 1e6 * statistics.median(times_b)


def forward_backward(forward, flow, dim, amortized):
    z = torch.randn(BATCH, dim, requires_grad=True)
    context = torch.randn(BATCH, CONTEXT_DIM, requires_grad=True) if amortized else None

    def call():
        z_k, log_det = forward(flow, z, context)
        (z_k.sum() + log_det.sum()).backward()
    return call


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--repeats', type=int, default=30, help='timed calls per row, after 5 warm-up calls (default 30)')
    p.add_argument('--threads', type=int, default=None, help="torch.set_num_threads (default: torch's own)")
    args = p.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads on {os.cpu_count()} CPUs, '
          f'load average {os.getloadavg()[0]:.1f}; B={BATCH}, length {LENGTH}, context_dim {CONTEXT_DIM}; '
          f'microseconds per forward+backward (median of {args.repeats})')
    print(f'\n{"flow":<22}{"d":>4}{"static":>10}{"amortized":>11}')
    for kind in FLOWS:
        for dim in (2, 40):
            row = []
            for amortized in (False, True):
                flow = build_flow(kind, dim, LENGTH, CONTEXT_DIM if amortized else None)
                row.append(time_call(forward_backward(lambda f, z, c: f(z, c), flow, dim, amortized), args.repeats))
            print(f'{kind:<22}{dim:>4}{row[0]:>10.0f}{row[1]:>11.0f}', flush=True)

    print('\nHouseholder, ours (vector form) vs naive (D x D / B x D x D matrices)')
    print(f'{"d":>4}{"mode":>11}{"ours":>9}{"naive":>9}{"naive/ours":>12}')
    for dim in (2, 40):
        for amortized in (False, True):
            flow = build_flow('householder', dim, LENGTH, CONTEXT_DIM if amortized else None)
            z, context = torch.randn(BATCH, dim), torch.randn(BATCH, CONTEXT_DIM) if amortized else None
            torch.testing.assert_close(naive_householder(flow, z, context)[0], flow(z, context)[0])
            ours, naive = time_pair(forward_backward(lambda f, z, c: f(z, c), flow, dim, amortized),
                                    forward_backward(naive_householder, flow, dim, amortized), args.repeats)
            mode = 'amortized' if amortized else 'static'
            print(f'{dim:>4}{mode:>11}{ours:>9.0f}{naive:>9.0f}{naive / ours:>11.1f}x', flush=True)

    print(f'\nIW forward, amortized, d = 40, K = {IW_K} samples of {IW_BATCH} examples: the context per example '
          f'(shared by its samples) vs per sample (repeated)')
    print(f'{"flow":<22}{"shared":>9}{"repeated":>10}{"repeated/shared":>17}')
    for kind in FLOWS:
        flow = build_flow(kind, 40, LENGTH, CONTEXT_DIM)
        z, context = torch.randn(IW_K, IW_BATCH, 40), torch.randn(IW_BATCH, CONTEXT_DIM)
        with torch.no_grad():
            shared, repeated = time_pair(lambda: flow(z, context),
                                         lambda: flow(z.reshape(-1, 40), context.repeat(IW_K, 1)), args.repeats)
        print(f'{kind:<22}{shared:>9.0f}{repeated:>10.0f}{repeated / shared:>16.1f}x', flush=True)
    print(f'\nload average at the end {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
    main()
