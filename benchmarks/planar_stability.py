"""Watch a planar flow train: per iteration, the loss, the gradient norm, and per step the smallest ‖w‖ and the
largest ‖û‖ over the batch, to find what precedes a collapse of the ELBO.

    python benchmarks/planar_stability.py --out runs/planar_stability.jsonl [script flags ...]

By default it trains the 2-D amortized planar-16 run of `run_results.sh latent2` (dynamic_flow_vae.py
--latent_dim 2 --length 16 --flow planar --max_iter 10000, seed 0) with the scripts' own training step, and
writes one JSON line per iteration. û = u + (m(wᵀu) − wᵀu) w/‖w‖² grows without bound as ‖w‖ → 0, which
is one candidate cause; a gradient spike from elsewhere is the other.
"""
import argparse
import json
import os
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


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--out', required=True, help='JSONL file, one line per iteration')
    known, rest = p.parse_known_args()
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
