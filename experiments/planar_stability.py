"""Watch a planar flow train: per iteration, the loss, the gradient norm, and per step the smallest ‖w‖ and the
largest ‖û‖ over the batch, to find what precedes a collapse of the ELBO.

    python experiments/planar_stability.py --out runs/planar_stability.jsonl [script flags ...]
    python experiments/planar_stability.py --summarize FILE.jsonl[.gz] ...
    python experiments/planar_stability.py --saturation CKPT [--data_dir DIR]

By default it trains the 2-D amortized planar-16 run of `run_results.sh latent2` (dynamic_flow_vae.py
--latent_dim 2 --length 16 --flow planar --max_iter 10000, seed 0) with the scripts' own training step, and
writes one JSON line per iteration. û = u + (m(wᵀu) − wᵀu) w/‖w‖² grows without bound as ‖w‖ → 0, which
is one candidate cause; a gradient spike from elsewhere is the other. --saturation reads a trained planar
checkpoint and reports, on MNIST test images, how close its steps come to the invertibility bound 1 + wᵀû > 0.
"""
import argparse
import gzip
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import config  # noqa: E402
import datasets  # noqa: E402
import static_flow_vae  # noqa: E402
import train  # noqa: E402
from data_utils import mnist_test_set  # noqa: E402
from flows import PlanarFlow  # noqa: E402
from trained import trained_model  # noqa: E402
from vae import sample_q0  # noqa: E402

DEFAULT = ['--latent_dim', '2', '--length', '16', '--flow', 'planar', '--max_iter', '10000', '--iw_samples', '0']


def planar_stats(step, z, context, log_det):
    """For one planar step on input z (B, D) with output log-det (B,): over the batch, the smallest ‖w‖, the
    largest ‖û‖, the smallest 1 + wᵀû (the floor of the step's det factor 1 + ûᵀψ), the smallest log-det and
    the mean log-det."""
    with torch.no_grad():
        u_hat, w, _, one_plus_wu_hat = step.constrained(step.params(z, context))
    return (w.norm(dim=-1).min().item(), u_hat.norm(dim=-1).max().item(), one_plus_wu_hat.min().item(),
            log_det.min().item(), log_det.mean().item())


# per-block extremes of the per-iteration statistics: (key, header, min or max, format); a log written before
# a statistic was recorded lacks its column
EXTREMES = [('min_w', 'min ‖w‖', min, '.4f'), ('max_u_hat', 'max ‖û‖', max, '.1f'),
            ('min_one_plus_wu_hat', 'min 1 + wᵀû', min, '.1e'), ('min_log_det', 'min log-det', min, '.1f')]


def summarize(path, block=1000, spike=10):
    """Per block of iterations: mean and largest loss, median and largest gradient norm, the EXTREMES; then how
    many gradient spikes (over `spike` times the block's median) came with ‖û‖ > 50, and the largest ones."""
    with (gzip.open if path.endswith('.gz') else open)(path, 'rt') as f:
        rows = [json.loads(line) for line in f]
    extremes = [e for e in EXTREMES if e[0] in rows[0]]
    print(f'\n{path}\n| iterations | mean loss | max loss | median grad norm | max grad norm | '
          + ' | '.join(e[1] for e in extremes) + ' |')
    print('|---|' + '---:|' * (4 + len(extremes)))
    spikes = []
    for start in range(0, len(rows), block):
        b = rows[start:start + block]
        median = statistics.median(r['grad_norm'] for r in b)
        spikes += [r for r in b if r['grad_norm'] > spike * median]
        print(f"| {b[0]['iter']}–{b[-1]['iter']} | {statistics.mean(r['loss'] for r in b):.1f} | "
              f"{max(r['loss'] for r in b):.1f} | {median:.0f} | {max(r['grad_norm'] for r in b):.0f} | "
              + ' | '.join(f'{pick(r[key] for r in b):{fmt}}' for key, _, pick, fmt in extremes) + ' |')
    with_big_u = sum(r['max_u_hat'] > 50 for r in spikes)
    print(f'{len(spikes)} gradient spikes (> {spike}x the median of their block); {with_big_u} of them with ‖û‖ > 50; '
          f'{sum(r["max_u_hat"] > 50 for r in rows)} iterations in all with ‖û‖ > 50')
    top = sorted(rows, key=lambda r: -r['grad_norm'])[:10]
    print(f'the 10 largest gradient norms (iteration: norm, {", ".join(e[1] for e in extremes)}): ' + '; '.join(
        f"{r['iter']}: {r['grad_norm']:.0f}, " + ', '.join(f'{r[key]:{fmt}}' for key, _, _, fmt in extremes)
        for r in top))


@torch.no_grad()
def saturation(checkpoint, data_dir, n=2000, floors=(1e-2, 1e-4, 1e-8)):
    """Of a trained planar flow (an MNIST checkpoint of an MLP script) on the first n
    test images, one z0 each: how many (image, step) pairs and images have 1 + wᵀû below each floor, per step
    below the middle floor, and the smallest wᵀu. 1 + wᵀû = m(wᵀu) + 1 = softplus(wᵀu + log(e − 1)), whose
    slope in wᵀu is about 1 + wᵀû itself there, so a step pushed to the bound gets almost no gradient back."""
    model, args, state = trained_model(checkpoint)
    if args.flow != 'planar':
        raise SystemExit(f'error: --saturation reads a planar checkpoint; {checkpoint} has --flow {args.flow}')
    images, pre = mnist_test_set(data_dir, n)
    torch.manual_seed(0)
    mean, log_var, context = model.encode(pre(images, train=False)[0])
    z = sample_q0(mean, log_var)
    bound, wu = [], []
    for step in model.flow.steps:
        theta = step.params(z, context)
        _, w, _, one_plus_wu_hat = step.constrained(theta)
        u = theta[..., :step.dim]
        bound.append(one_plus_wu_hat.expand(len(z)))
        wu.append((w * u).sum(-1).expand(len(z)))
        z = step(z, context)[0]
    bound, wu = torch.stack(bound, 1), torch.stack(wu, 1)            # (n, K)
    print(f'{checkpoint}: iteration {state["iter"]}, {"amortized" if args.amortized else "static"}, '
          f'{bound.shape[1]} steps, {len(z)} test images')
    for floor in floors:
        print(f'1 + wᵀû < {floor:g}: {(bound < floor).float().mean():.2%} of (image, step) pairs, '
              f'{(bound < floor).any(1).float().mean():.2%} of images')
    print(f'per step, images with 1 + wᵀû < {floors[1]:g}: '
          + ' '.join(f'{v:.1%}' for v in (bound < floors[1]).float().mean(0).tolist()))
    print(f'smallest wᵀu {wu.min():.1f}; median {wu.median():.2f}')


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', help='JSONL file, one line per iteration')
    p.add_argument('--summarize', nargs='+', metavar='FILE', help='print the tables of finished files instead')
    p.add_argument('--saturation', metavar='CKPT', help="report how near a trained planar flow's steps are to the bound")
    p.add_argument('--data_dir', default=datasets.default_data_dir(), help='MNIST for --saturation')
    known, rest = p.parse_known_args()
    if known.saturation:
        saturation(known.saturation, known.data_dir)
        return
    if known.summarize:
        for path in known.summarize:
            summarize(path)
        return
    parser = static_flow_vae.add_mlp_flags(config.base_parser('', latent_dim=20, max_iter=10000))
    parser.set_defaults(amortized=True)
    argv = DEFAULT + rest + ['--out_dir', os.path.dirname(os.path.abspath(known.out)) or '.']
    args = parser.parse_args(argv)
    run = train.setup(args, parser, argv, 'dynamic_flow_vae.py', static_flow_vae.build_model,
                      static_flow_vae.mlp_arch, static_flow_vae.check_mlp_args)
    model, optimizer = run.model, run.optimizer
    params = [q for q in model.parameters() if q.requires_grad]
    stats = []
    for step in model.flow.steps:
        if isinstance(step, PlanarFlow):
            step.register_forward_hook(lambda mod, inputs, out: stats.append(planar_stats(mod, *inputs, out[1])))
    grad_norm = []

    def mark(part):
        if part == 'backward':
            grad_norm.append(torch.nn.utils.get_total_norm([q.grad for q in params if q.grad is not None]).item())

    with open(known.out, 'w') as f:
        for it in range(1, args.max_iter + 1):
            stats.clear()
            grad_norm.clear()
            x, log_det_pre = run.pre(next(run.batches)[0], train=True)
            loss, applied = train.train_step(model, optimizer, params, x, log_det_pre, args, it, mark=mark)
            f.write(json.dumps({'iter': it, 'loss': loss.item(), 'applied': bool(applied), 'grad_norm': grad_norm[0],
                                'min_w': min(s[0] for s in stats), 'max_u_hat': max(s[1] for s in stats),
                                'min_one_plus_wu_hat': min(s[2] for s in stats),
                                'min_log_det': min(s[3] for s in stats),
                                'mean_log_det': sum(s[4] for s in stats)}) + '\n')


if __name__ == '__main__':
    main()
