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


def _hdr_levels(density, masses=(0.99, 0.9, 0.5)):
    """Density thresholds whose upper sets hold `masses` of a gridded density, increasing."""
    values = density.flatten().sort(descending=True).values
    cumulative = values.cumsum(0) / values.sum()
    levels = sorted({float(values[min(int((cumulative < m).sum()), len(values) - 1)]) for m in masses})
    return levels if len(levels) > 1 else None


def plot_posteriors(images, labels, rows, path, title):
    """One row per image: the image; the true posterior p(z|x) (heat map); q0(z0|x) and q_K(z|x) (their
    50/90/99% highest-density contours over the posterior's, dashed; a histogram of q_K's samples where the row
    has no q_K density). `rows` are posterior2d.posterior_panels dicts: p(z|x) and q_K share the row's window;
    q0's panel is wider where q0 lies outside it, with that window drawn dotted."""
    fig, axes = plt.subplots(len(rows), 4, figsize=(12, 3.0 * len(rows)),
                             gridspec_kw={'width_ratios': (0.7, 1, 1, 1)}, squeeze=False)
    for ax_row, image, label, row in zip(axes, images, labels, rows):
        ax_img, ax_post, ax_q0, ax_qk = ax_row
        ax_img.imshow(image.permute(1, 2, 0).squeeze(-1).numpy(), cmap='gray', vmin=0, vmax=1)
        ax_img.set_title(f'label {label}', fontsize=9)
        ax_img.axis('off')
        box, gap = row['box'], row['log_px'] - row['elbo']
        ax_post.imshow(row['posterior'].numpy(), origin='lower', extent=box, cmap='viridis', aspect='equal')
        ax_post.set_title(f'p(z|x), log p(x) = {row["log_px"]:.2f}', fontsize=9)
        flow = row['flow']
        if row['qk'] is not None:
            ax_qk.contour(row['qk'].numpy(), levels=_hdr_levels(row['qk']), extent=box, colors='C3', linewidths=1)
            how = 'density'
        else:
            samples = row['qk_samples'].numpy()
            ax_qk.hist2d(samples[:, 0], samples[:, 1], bins=80, range=[box[:2], box[2:]], cmap='Reds', cmin=1)
            how = 'histogram'
        ax_qk.set_title(f'$q_K(z|x)$ ({flow})\n{how}; ELBO = {row["elbo"]:.2f}, gap = {gap:.2f}', fontsize=9)
        q0_box = row['q0_box']
        ax_q0.contour(row['q0'].numpy(), levels=_hdr_levels(row['q0']), extent=q0_box, colors='C0', linewidths=1)
        ax_q0.set_title('$q_0(z_0|x)$' + ('' if q0_box == box else ' (dotted: the window of the other two)'),
                        fontsize=9)
        if q0_box != box:
            ax_q0.add_patch(plt.Rectangle((box[0], box[2]), box[1] - box[0], box[3] - box[2], fill=False,
                                          edgecolor='0.4', linewidth=0.8, linestyle='dotted'))
        for ax, window, posterior in ((ax_q0, q0_box, row['q0_posterior']), (ax_qk, box, row['posterior'])):
            levels = _hdr_levels(posterior)
            if levels:
                ax.contour(posterior.numpy(), levels=levels, extent=window, colors='k', linewidths=0.7,
                           linestyles='dashed')
        for ax, window in ((ax_post, box), (ax_q0, q0_box), (ax_qk, box)):
            ax.set(xlim=window[:2], ylim=window[2:], aspect='equal')
            ax.tick_params(labelsize=7)
    fig.suptitle(f'{title}\nposterior p(z|x) (heat map; dashed: its 50/90/99% regions) against q0 and q_K '
                 '(nats)', fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
