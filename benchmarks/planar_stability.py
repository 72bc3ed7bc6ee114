"""Watch a planar flow train: per iteration, the loss, the gradient norm, and per step the smallest ‖w‖ and the
largest ‖û‖ over the batch, to find what precedes a collapse of the ELBO.

    python benchmarks/planar_stability.py --out runs/planar_stability.jsonl [script flags ...]
    python benchmarks/planar_stability.py --summarize FILE.jsonl[.gz] ...

By default it trains the 2-D amortized planar-16 run of `run_results.sh latent2` (dynamic_flow_vae.py
--latent_dim 2 --length 16 --flow planar --max_iter 10000, seed 0) with the scripts' own training step, and
writes one JSON line per iteration. û = u + (m(wᵀu) − wᵀu) w/‖w‖² grows without bound as ‖w‖ → 0, which
is one candidate cause; a gradient spike from elsewhere is the other.
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
import static_flow_vae  # noqa: E402
import train  # noqa: E402
from flows import PlanarFlow  # noqa: E402

DEFAULT = ['--latent_dim', '2', '--length', '16', '--flow', 'planar', '--max_iter', '10000', '--iw_samples', '0']


def planar_norms(step, z, context):
    """Smallest ‖w‖ and largest ‖û‖ over the batch for one planar step on input z (B, D)."""
    theta = step.params(z, context)
    u, w = theta[..., :step.dim], theta[..., step.dim:2 * step.dim]
    wu, ww = (w * u).sum(-1, keepdim=True), (w * w).sum(-1, keepdim=True)
    u_hat = u + (torch.nn.functional.softplus(wu) - 1 - wu) * w / ww.clamp_min(1e-12)
    return ww.sqrt().min().item(), u_hat.norm(dim=-1).max().item()


def summarize(path, block=1000, spike=10):
    """Per block of iterations: mean and largest loss, median and largest gradient norm, smallest ‖w‖, largest
    ‖û‖; then how many gradient spikes (over `spike` times the block's median) came with ‖û‖ > 50."""
    with (gzip.open if path.endswith('.gz') else open)(path, 'rt') as f:
        rows = [json.loads(line) for line in f]
    print(f'\n{path}\n| iterations | mean loss | max loss | median grad norm | max grad norm | min ‖w‖ | max ‖û‖ |')
    print('|---|---:|---:|---:|---:|---:|---:|')
    spikes = []
    for start in range(0, len(rows), block):
        b = rows[start:start + block]
        median = statistics.median(r['grad_norm'] for r in b)
        spikes += [r for r in b if r['grad_norm'] > spike * median]
        print(f"| {b[0]['iter']}–{b[-1]['iter']} | {statistics.mean(r['loss'] for r in b):.1f} | "
              f"{max(r['loss'] for r in b):.1f} | {median:.0f} | {max(r['grad_norm'] for r in b):.0f} | "
              f"{min(r['min_w'] for r in b):.4f} | {max(r['max_u_hat'] for r in b):.1f} |")
    with_big_u = sum(r['max_u_hat'] > 50 for r in spikes)
    print(f'{len(spikes)} gradient spikes (> {spike}x the median of their block); {with_big_u} of them with ‖û‖ > 50; '
          f'{sum(r["max_u_hat"] > 50 for r in rows)} iterations in all with ‖û‖ > 50')
    top = sorted(rows, key=lambda r: -r['grad_norm'])[:10]
    print('the 10 largest gradient norms (iteration: norm, min ‖w‖, max ‖û‖): ' + '; '.join(
        f"{r['iter']}: {r['grad_norm']:.0f}, {r['min_w']:.4f}, {r['max_u_hat']:.0f}" for r in top))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', help='JSONL file, one line per iteration')
    p.add_argument('--summarize', nargs='+', metavar='FILE', help='print the tables of finished files instead')
    known, rest = p.parse_known_args()
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
    norms = []
    for step in model.flow.steps:
        if isinstance(step, PlanarFlow):
            step.register_forward_hook(lambda mod, inputs, out: norms.append(planar_norms(mod, *inputs)))
    grad_norm = []

    def mark(part):
        if part == 'backward':
            grad_norm.append(torch.nn.utils.get_total_norm([q.grad for q in params if q.grad is not None]).item())

    with open(known.out, 'w') as f:
        for it in range(1, args.max_iter + 1):
            norms.clear()
            grad_norm.clear()
            x, log_det_pre = run.pre(next(run.batches)[0], train=True)
            loss, applied = train.train_step(model, optimizer, params, x, log_det_pre, args, it, mark=mark)
            f.write(json.dumps({'iter': it, 'loss': loss.item(), 'applied': applied, 'grad_norm': grad_norm[0],
                                'min_w': min(n[0] for n in norms), 'max_u_hat': max(n[1] for n in norms)}) + '\n')


if __name__ == '__main__':
    main()
