"""How a 2-D MNIST model's gap exact − ELBO spreads over the test images.

    python experiments/gap_spread.py CKPT [CKPT ...] [--samples S] [--data_dir DIR] [--worst PREFIX]

The mean gap log p(x) − ELBO is the mean over images of KL(q_K(z|x) ‖ p(z|x)); the final evaluation reports only
that mean. Here each of the 10,000 binarized MNIST test images gets its own: log p(x) by quadrature
(posterior2d.log_px_grid) minus its ELBO averaged over S draws z0 ~ q0(z0|x), whose Monte Carlo standard error
is printed beside (the mean over images of each image's error). The table gives, in nats per image, the mean gap,
its quantiles, the largest, and the share of the summed gap that the worst 1% and 10% of images carry: whether a
flow narrows the gap of most images, or a few. The draws are seeded once per command, so a checkpoint's row
depends on the checkpoints before it on the command line (the committed tables were made so).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import datasets  # noqa: E402
import posterior2d  # noqa: E402
from data_utils import mnist_test_set  # noqa: E402
from trained import flow_label, trained_2d_model  # noqa: E402
from utils import progress  # noqa: E402
from vae import elbo  # noqa: E402

SAMPLES = 100
QUANTILES = (0.1, 0.5, 0.9, 0.99)


@torch.no_grad()
def elbo_per_image(model, x, samples=SAMPLES, batch_size=100):
    """Each image's ELBO averaged over `samples` draws, and its standard error: x (N, C, H, W) -> (N,), (N,)."""
    means, errors = [], []
    for start in progress(range(0, x.shape[0], batch_size), desc=f'ELBO, {samples} draws', unit='batch', leave=False):
        xb = x[start:start + batch_size]
        draws = elbo(model(xb.repeat(samples, 1, 1, 1)), model.has_flow).view(samples, -1)   # (S, B)
        means.append(draws.mean(0))
        errors.append(draws.std(0) / samples ** 0.5)
    return torch.cat(means), torch.cat(errors)


def per_image(model, pre, images, samples=SAMPLES):
    """(exact log p(x), ELBO averaged over `samples` draws, its standard error), each (N,), of uint8 `images`,
    the preprocessing's log-det included in both as in the final evaluation."""
    x, log_det_pre = posterior2d.preprocess(pre, images)
    exact = posterior2d.log_px_grid(model, x) + log_det_pre.double()
    mean, error = elbo_per_image(model, x, samples)
    return exact, (mean + log_det_pre).double(), error


def spread(gaps):
    """{'mean', 'q10', 'q50', 'q90', 'q99', 'max', 'top1', 'top10'} of per-image gaps (N,): top1 and top10 are the
    shares of the summed gap in the images with the largest 1% and 10% of gaps."""
    gaps = gaps.double()
    ordered = gaps.sort(descending=True).values
    quantiles = torch.quantile(gaps, torch.tensor(QUANTILES, dtype=gaps.dtype))
    out = {'mean': gaps.mean().item(), **{f'q{round(100 * q)}': v.item() for q, v in zip(QUANTILES, quantiles)},
           'max': ordered[0].item()}
    for percent in (1, 10):
        out[f'top{percent}'] = (ordered[:max(1, len(gaps) * percent // 100)].sum() / gaps.sum()).item()
    return out


def worst_posteriors(model, pre, images, gaps, path, data_dir, title, **kw):
    """posterior2d.posterior_figure (keyword arguments: its) of the images with the largest `gaps` (N,), the
    largest first; returns their indices."""
    indices = gaps.topk(posterior2d.POSTERIOR_IMAGES).indices.tolist()
    labels = datasets.load_split('mnist', data_dir, train=False, log=lambda *_: None)[1][:len(images)]
    posterior2d.posterior_figure(model, pre, images, labels, path, title, indices=indices, **kw)
    return indices


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoints', nargs='+', metavar='CKPT', help='2-D MNIST checkpoints of the MLP scripts')
    parser.add_argument('--samples', type=int, default=SAMPLES, help='draws per image for its ELBO')
    parser.add_argument('--data_dir', default=datasets.default_data_dir(), help='where MNIST is')
    parser.add_argument('--worst', metavar='PREFIX', help='also draw the posteriors of each checkpoint\'s '
                        f'{posterior2d.POSTERIOR_IMAGES} images with the largest gaps into PREFIX_<n>.png, n its '
                        'place on the command line, and their table into PREFIX_<n>.txt')
    opts = parser.parse_args()
    images, pre = mnist_test_set(opts.data_dir)
    torch.manual_seed(0)
    print(f'{len(images)} MNIST test images; exact − ELBO in nats per image, the ELBO of {opts.samples} draws\n\n'
          '| checkpoint | flow | mean | 10% | median | 90% | 99% | max | worst 1% | worst 10% | MC error |\n'
          '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
    for n, path in enumerate(opts.checkpoints):
        model, args, _ = trained_2d_model(path)
        exact, elbos, errors = per_image(model, pre, images, opts.samples)
        s = spread(exact - elbos)
        if opts.worst:
            worst_posteriors(model, pre, images, exact - elbos, f'{opts.worst}_{n}.png', opts.data_dir,
                             f'{path}: the largest exact − ELBO')
        print(f'| {path} | {flow_label(model, args)} | {s["mean"]:.2f} | {s["q10"]:.2f} | {s["q50"]:.2f} '
              f'| {s["q90"]:.2f} | {s["q99"]:.2f} | {s["max"]:.1f} | {100 * s["top1"]:.0f}% '
              f'| {100 * s["top10"]:.0f}% | {errors.mean().item():.2f} |')


if __name__ == '__main__':
    main()
