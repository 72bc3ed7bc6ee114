"""Evaluation: the ELBO and the importance-weighted log-likelihood of a set of images, bits/dim, and the
pictures of a model (samples, reconstructions, the 2-D latent plot). Its noise is seeded, so a number is the
same whenever, and on whichever rank, it is computed.
"""
import contextlib
import math
import os

import torch

import distributed
import plotting
from utils import progress
from vae import elbo, iw_log_likelihood

EVAL_SEED = 1234             # noise of evaluation (reparameterization, dequantization)
EVAL_BATCH = 500             # images per ELBO batch
IW_BATCH = 100               # images per importance-weighted batch (their K samples are chunked)


@contextlib.contextmanager
def eval_rng(device):
    """Fork the RNG and seed it: evaluation is repeatable and leaves training's RNG untouched."""
    with torch.random.fork_rng(devices=[device] if device.type == 'cuda' else []):
        torch.manual_seed(EVAL_SEED)
        yield


def seed_batch(phase, start):
    """Seed the noise of the test batch that begins at index `start` (phase 0: ELBO, 1: IW) from those two
    alone, so that a batch gets the same noise whichever rank evaluates it and in whatever order."""
    torch.manual_seed(EVAL_SEED + 2 * start + phase)


@torch.no_grad()
def evaluate(model, pre, images, iw_samples=0, split='test', batch_size=EVAL_BATCH, iw_batch=IW_BATCH):
    """ELBO (and IW log-likelihood when iw_samples > 0) of `images`, in nats per example, as '{split}_elbo', ....

    For 8-bit data the logit's Jacobian is included, so the numbers are bounds on the log-density of the
    dequantized image y = (x + u)/256 in [0, 1)^D (data_utils.dequantize), and bits/dim follow from them.
    Distributed, each rank takes a contiguous share of the batches and the sums are all-reduced; with
    each batch's noise seeded from its start index the numbers equal a single process's (to float
    rounding of the sum). Every rank must call this.
    """
    model.eval()
    distributed.broadcast_buffers(model)   # every rank evaluates the model rank 0 checkpoints
    elbo_sum = iw_sum = 0.0
    with eval_rng(images.device):
        for start in distributed.shard(range(0, images.shape[0], batch_size)):
            seed_batch(0, start)
            x, log_det_pre = pre(images[start:start + batch_size], train=False)
            elbo_sum += (elbo(model(x), model.has_flow) + log_det_pre).sum().item()
        if iw_samples:   # the long part: a bar of its batches
            starts = distributed.shard(range(0, images.shape[0], iw_batch))
            for start in progress(starts, desc=f'IW, K={iw_samples}', unit='batch', leave=False):
                seed_batch(1, start)
                x, log_det_pre = pre(images[start:start + iw_batch], train=False)
                iw_sum += (iw_log_likelihood(model, x, iw_samples) + log_det_pre).sum().item()
    model.train()
    elbo_sum, iw_sum = distributed.sum_floats([elbo_sum, iw_sum])
    n, dims = images.shape[0], images[0].numel()
    metrics = {f'{split}_elbo': elbo_sum / n}
    if iw_samples:
        metrics.update({f'{split}_log_px_iw': iw_sum / n, 'iw_samples': iw_samples})
    if not pre.binary:
        metrics.update({key.replace(f'{split}_', f'{split}_bpd_'): bits_per_dim(value, dims)
                        for key, value in list(metrics.items()) if key.startswith(f'{split}_')})
    return metrics


def bits_per_dim(log_density, dims):
    """Bits/dim of 8-bit data from log p(y), y = (x + u)/256 in [0, 1)^D: (-log p + D log 256) / (D log 2)."""
    return (-log_density + dims * math.log(256)) / (dims * math.log(2))


@torch.no_grad()
def save_pictures(model, pre, test_images, args, paths, prefix, it):
    """Prior samples and test reconstructions at iteration `it`."""
    model.eval()
    device = test_images.device
    with eval_rng(device):
        z = torch.randn(args.sample_size, args.latent_dim, device=device)
        samples = pre.to_image(model.mean_image(model.decode(z)))
        plotting.save_grid(samples, os.path.join(paths['samples'], f'{prefix}_{it}.png'))
        x, _ = pre(test_images[:32], train=False)
        recon = pre.to_image(model.mean_image(model.decode(model.latents(x)[1])))
        plotting.save_reconstructions(pre.to_image(x), recon,
                                      os.path.join(paths['reconstructions'], f'{prefix}_{it}.png'))
    model.train()


@torch.no_grad()
def save_latent_plot(model, pre, images, labels, path, title):
    model.eval()
    with eval_rng(images.device):
        pairs = [model.latents(pre(images[s:s + 1000], train=False)[0]) for s in range(0, len(images), 1000)]
    model.train()
    z0, z_k = (torch.cat(z) for z in zip(*pairs))
    plotting.plot_latents(z0, z_k, labels, path, title)
