"""The pictures a run saves: sample grids, reconstructions, latent plots, training curves."""
import math

import matplotlib

matplotlib.use('Agg')  # files only; no display is needed (or present on a server)
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib import patheffects  # noqa: E402
import torch  # noqa: E402
from torchvision.utils import save_image  # noqa: E402


def save_grid(images, path, nrow=None):
    """images (N, C, H, W) in [0, 1] -> one PNG grid, about square."""
    nrow = nrow or max(1, int(math.sqrt(images.shape[0])))
    save_image(images.detach().float().clamp(0, 1).cpu(), path, nrow=nrow, padding=2)


def save_reconstructions(originals, reconstructions, path):
    """Originals (N, C, H, W) in the odd columns, their reconstructions beside them."""
    pairs = torch.stack([originals, reconstructions], dim=1).flatten(0, 1)   # (2N, C, H, W)
    save_grid(pairs, path, nrow=16)


def plot_latents(z0, z_k, labels, path, title):
    """Side by side, z0 ~ q0(z0|x) and z_K = f(z0) for 2-D latents, coloured by label.

    The prior's 1, 2 and 3 sigma circles are drawn over the points on both panels (black with a white edge,
    visible on any colour); the axes are shared, so any inflation or rotation by the flow is seen at the
    scale of the prior.
    """
    z0, z_k, labels = z0.detach().cpu(), z_k.detach().cpu(), labels.cpu()
    lim = max(3.5, float(torch.cat([z0, z_k]).abs().quantile(0.995)) * 1.05)
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.3), sharex=True, sharey=True, layout='constrained')
    halo = [patheffects.withStroke(linewidth=3.2, foreground='white')]
    for ax, z, name in zip(axes, (z0, z_k), ('$z_0$ (before the flow)', '$z_K$ (after the flow)')):
        points = ax.scatter(z[:, 0], z[:, 1], c=labels, cmap='tab10', s=2, alpha=0.6,
                            vmin=-0.5, vmax=9.5, rasterized=True, zorder=1)
        for k in (1, 2, 3):
            ax.add_patch(plt.Circle((0, 0), k, fill=False, ls='--', lw=1.4, color='k', zorder=3,
                                    path_effects=halo))
        ax.set(title=name, xlim=(-lim, lim), ylim=(-lim, lim), aspect='equal')
    fig.colorbar(points, ax=axes, ticks=range(10), shrink=0.9, pad=0.01, aspect=30, label='label')
    fig.suptitle(title, fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches='tight', pad_inches=0.05)
    plt.close(fig)


def plot_curves(history, path):
    """Training loss (running mean per logging step) and the validation (or test) -ELBO at each evaluation."""
    fig, ax = plt.subplots(figsize=(7, 4.2))
    if history['train']:
        ax.plot([h['iter'] for h in history['train']], [h['loss'] for h in history['train']],
                label='train loss (running mean)')
    for split in ('val', 'test'):
        points = [h for h in history['eval'] if f'{split}_elbo' in h]
        if points:
            ax.plot([h['iter'] for h in points], [-h[f'{split}_elbo'] for h in points], 'o-', label=f'{split} -ELBO')
    ax.set(xlabel='iteration', ylabel='nats')
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
