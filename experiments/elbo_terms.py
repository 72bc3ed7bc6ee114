"""Where a trained MNIST model's test ELBO comes from: the reconstruction term and the KL term, the flow's
share of the KL, and how many latent dimensions the encoder uses.

    python experiments/elbo_terms.py CKPT [CKPT ...] [--data_dir DIR]

On the 10,000 binarized MNIST test images, with the noise of the final test evaluation (so the ELBO column
equals the run's reported test ELBO of that checkpoint), in nats per image:
- reconstruction E log p(x|z_K);
- KL = E[log q_K(z_K|x) - log p(z_K)] = E[log q0(z0|x) - sum_k log|det dz_k/dz_(k-1)| - log p(z_K)], the
  closed-form KL(q0 || p) without a flow, as the ELBO uses it (vae.kl_term), so ELBO = reconstruction - KL;
- log-det, E sum_k log|det|: what the flow subtracts from the KL of q0's own sample;
- q0 entropy, E_x H[q0(z0|x)] = E_x sum_u (1 + log 2 pi + log sigma_u^2(x)) / 2: how broad the encoder's
  Gaussian is before the flow (a flow whose log-det is negative narrows a broader q0);
- active units (Burda et al. 2015, section 5): the dimensions u whose Cov_x(E_q0[z0_u | x]) exceeds 0.01.
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import datasets  # noqa: E402
import evaluate  # noqa: E402
from data_utils import mnist_test_set  # noqa: E402
from trained import flow_label, trained_model  # noqa: E402
from utils import progress  # noqa: E402
from vae import LOG_2PI, elbo, kl_term  # noqa: E402

ACTIVE = 0.01   # Burda et al.'s threshold on the variance over x of the posterior mean


def gaussian_entropy(log_var):
    """Entropy in nats of N(mean, diag(exp(log_var))): log_var (..., D) -> (...)."""
    return 0.5 * (log_var + 1 + LOG_2PI).sum(-1)


def active_units(means, threshold=ACTIVE):
    """How many columns of the posterior means (N, D) vary over the N images by more than `threshold`."""
    return int((means.var(0) > threshold).sum())


@torch.no_grad()
def elbo_terms(model, pre, images, batch_size=evaluate.EVAL_BATCH):
    """{'elbo', 'reconstruction', 'kl', 'log_det', 'q0_entropy', 'active_units'} of `images`, all but the
    last in nats per image, each batch's noise seeded as evaluate.evaluate seeds the test ELBO's."""
    sums, means = dict.fromkeys(('elbo', 'reconstruction', 'kl', 'log_det', 'q0_entropy'), 0.0), []
    with evaluate.eval_rng(images.device):
        for start in progress(range(0, images.shape[0], batch_size), desc='ELBO terms', unit='batch', leave=False):
            evaluate.seed_batch(0, start)
            x, log_det_pre = pre(images[start:start + batch_size], train=False)
            terms = model(x)
            kl = kl_term(terms, model.has_flow, 'elbo')
            sums['elbo'] += (elbo(terms, model.has_flow) + log_det_pre).sum().item()
            sums['reconstruction'] += terms.log_px.sum().item()
            sums['kl'] += kl.sum().item()
            sums['log_det'] += terms.log_det.sum().item()
            mean, log_var, _ = model.encode(x)
            sums['q0_entropy'] += gaussian_entropy(log_var).sum().item()
            means.append(mean)
    n = images.shape[0]
    return {**{key: value / n for key, value in sums.items()}, 'active_units': active_units(torch.cat(means))}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoints', nargs='+', metavar='CKPT', help='MNIST checkpoints of the MLP scripts')
    parser.add_argument('--data_dir', default=datasets.default_data_dir(), help='where MNIST is')
    opts = parser.parse_args()
    images, pre = mnist_test_set(opts.data_dir)
    print(f'{len(images)} MNIST test images; nats per image\n\n'
          '| checkpoint | iteration | flow | ELBO | reconstruction | KL | log-det | q0 entropy | active units |\n'
          '|---|---:|---|---:|---:|---:|---:|---:|---:|')
    for path in opts.checkpoints:
        model, args, state = trained_model(path)
        t = elbo_terms(model, pre, images)
        print(f'| {path} | {state["iter"]} | {flow_label(model, args)} | {t["elbo"]:.2f} | {t["reconstruction"]:.2f} '
              f'| {t["kl"]:.2f} | {t["log_det"]:.2f} | {t["q0_entropy"]:.2f} | {t["active_units"]}/{args.latent_dim} |')


if __name__ == '__main__':
    main()
