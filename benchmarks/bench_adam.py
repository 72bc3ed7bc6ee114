"""Adam's step with subnormal first moments, with and without flushing them to zero.

A weight whose gradient is exactly zero for a while (a pixel black in every image of the batch, a ReLU unit off)
has Adam's first moment decay by beta1 per step, through the subnormal floats (below 1.2e-38 in float32), which
some CPUs handle 10-30x slower than normal ones. train.setup flushes them on the CPU. This times the fused Adam
step over the parameters and optimizer state of a run's checkpoint (--checkpoint; what a real run holds), or over
1,000,000 weights whose first moments are subnormal in a given share, each with the flag off and on:

    OMP_NUM_THREADS=1 python benchmarks/bench_adam.py [--checkpoint RUN/checkpoints/PREFIX.pt]
"""
import argparse
import time

import torch


def adam_from_checkpoint(path):
    """(Adam holding the checkpoint's optimizer state, its parameters with zero gradients, the share of subnormal
    first moments)."""
    ckpt = torch.load(path, weights_only=True)
    params = [torch.nn.Parameter(w.float().clone()) for w in ckpt['model'].values()]
    optimizer = torch.optim.Adam(params, fused=True)
    optimizer.load_state_dict(ckpt['optimizer'])
    moments = torch.cat([s['exp_avg'].flatten() for s in optimizer.state.values()])
    share = ((moments != 0) & (moments.abs() < torch.finfo(torch.float32).tiny)).float().mean().item()
    for p in params:
        p.grad = torch.zeros_like(p)
    return optimizer, share


def synthetic_adam(share, n=1_000_000):
    """Adam over n weights after one step, the first moments of the first share*n of them set subnormal."""
    p = torch.nn.Parameter(torch.randn(n) * 0.05)
    optimizer = torch.optim.Adam([p], fused=True)
    p.grad = torch.randn(n) * 1e-3
    optimizer.step()
    optimizer.state[p]['exp_avg'][:int(share * n)] = 1e-39
    p.grad[:int(share * n)] = 0
    return optimizer


def ms_per_step(optimizer, flush, steps=20):
    """Median over 3 rounds of the mean time of one step, after 3 untimed."""
    torch.set_flush_denormal(flush)
    state = {p: {k: v.clone() for k, v in s.items()} for p, s in optimizer.state.items()}
    rounds = []
    for _ in range(3):
        for p, s in state.items():   # every round starts from the same moments
            optimizer.state[p] = {k: v.clone() for k, v in s.items()}
        for _ in range(3):
            optimizer.step()
        start = time.perf_counter()
        for _ in range(steps):
            optimizer.step()
        rounds.append((time.perf_counter() - start) / steps * 1e3)
    torch.set_flush_denormal(False)
    return sorted(rounds)[1]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--checkpoint', help="a run's checkpoints/PREFIX.pt (not a model.pt: it needs Adam's state)")
    args = parser.parse_args()
    print(f'torch {torch.__version__}, {torch.get_num_threads()} thread(s); fused Adam, ms per step (median of 3 rounds)')
    print(f'{"state":<48} {"flush off":>10} {"flush on":>10} {"ratio":>6}')
    if args.checkpoint:
        optimizer, share = adam_from_checkpoint(args.checkpoint)
        cases = [(f'the checkpoint, {share:.0%} of first moments subnormal', optimizer)]
    else:
        cases = [(f'1M weights, {share:.0%} of first moments subnormal', synthetic_adam(share))
                 for share in (0.0, 0.1, 0.4, 1.0)]
    for name, optimizer in cases:
        off, on = ms_per_step(optimizer, False), ms_per_step(optimizer, True)
        print(f'{name:<48} {off:>10.2f} {on:>10.2f} {off / on:>5.1f}x')


if __name__ == '__main__':
    main()
