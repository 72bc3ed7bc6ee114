"""Exact log p(x) for models with a 2-D latent space, by quadrature over a grid of z.

    log p(x) = log ∫ p(x|z) N(z; 0, I) dz ≈ logsumexp_g [log p(x|z_g) + log N(z_g; 0, I)] + log(cell area)

with z_g the centres of an n x n grid of square cells over [-limit, limit]² (the midpoint rule). The
decoder runs once per grid point, for all images together, and log p(x|z_g) for every (image, grid point)
pair is one matrix product: for Bernoulli logits l_g, log p(x|z_g) = x·l_g − Σ_d softplus(l_gd); for a
Gaussian with mean μ_g and per-pixel scale σ, −½ Σ_d (x_d − μ_gd)²/σ_d² expands into x-only, μ-only and
cross terms, the cross term the product. Only the decoder and the prior enter: the encoder and the flow do
not, so the value is the model's log-likelihood, against which the ELBO and the IW estimate are bounds.

Also here: the posterior p(z|x) on a grid and the densities of q0(z0|x) and q_K(z|x) for the figure
`posterior_figure` draws (plotting.plot_posteriors), and `gaps`, the fields the final evaluation reports.
"""
import math
import os

import torch
import torch.nn.functional as F

import plotting
from evaluate import EVAL_BATCH, EVAL_SEED, bits_per_dim, eval_rng, seed_batch
from utils import progress
from vae import LOG_2PI, elbo, log_normal_diag, log_standard_normal

GRID = 640          # default cells per axis (cells 0.025 wide); 10^4 MNIST images in about 50 CPU-seconds
LIMIT = 8.0         # default half-width: a 2-D MNIST VAE centred 6 of its 10^4 test posteriors beyond |z| = 5
GRID_CHUNK = 8192   # grid points decoded and multiplied at a time
IMAGE_CHUNK = 2500  # images per matrix product
COARSE = 125       # adaptive quadrature: about this many subgrid points per axis in the first pass
THRESHOLD = 30.0   # and tiles within this many nats of an image's peak are summed in full
POSTERIOR_IMAGES = 6


@torch.no_grad()
def latent_dim(model, x):
    """The latent dimension of `model`, from its encoder's output for one image, in eval mode (batch-norm
    statistics untouched)."""
    was_training = model.training
    dim = model.eval().encode(x[:1])[0].shape[-1]
    model.train(was_training)
    return dim


def grid_points(n, limit, device=None, dtype=torch.float32):
    """Centres of an n x n grid of cells over [-limit, limit]²: (n², 2), first coordinate slowest, and the
    log of a cell's area."""
    step = 2 * limit / n
    axis = -limit + step * (torch.arange(n, device=device, dtype=torch.float64) + 0.5)
    return torch.cartesian_prod(axis, axis).to(dtype), 2 * math.log(step)


def _likelihood_terms(model, x, z, dtype):
    """log p(x_i|z_g) = a_i + b_g + (A Bᵀ)_ig: returns a (N,), b (G,), A (N, P), B (G, P), all in `dtype`.

    x (N, C, H, W) in model space, z (G, 2). b excludes the prior.
    """
    decoded = model.decode(z).flatten(1).to(dtype)                    # (G, P)
    x = x.flatten(1).to(dtype)                                         # (N, P)
    if model.likelihood == 'bernoulli':
        return x.new_zeros(x.shape[0]), -F.softplus(decoded).sum(-1), x, decoded
    log_scale = model.log_scale.flatten().to(dtype)                    # (P,)
    precision = torch.exp(-2 * log_scale)
    const = -(0.5 * LOG_2PI + log_scale).sum()
    return (const - 0.5 * (x * x * precision).sum(-1), -0.5 * (decoded * decoded * precision).sum(-1),
            x * precision, decoded)


def _joint_terms(model, x, z, dtype):
    """log p(x_i|z_g) + log N(z_g; 0, I) = a_i + b_g + (A Bᵀ)_ig: _likelihood_terms with the prior added to b."""
    a, b, A, B = _likelihood_terms(model, x, z, dtype)
    return a, b + log_standard_normal(z.to(dtype)), A, B


def matmul_dtype(model):
    """float32 for Bernoulli logits (x is 0/1: no cancellation); float64 for the Gaussian, whose
    x², μ² and cross terms are each far larger than the (x − μ)² they sum to."""
    return torch.float32 if model.likelihood == 'bernoulli' else torch.float64


@torch.no_grad()
def log_joint(model, x, z, dtype=None, grid_chunk=GRID_CHUNK):
    """log p(x_i|z_g) + log N(z_g; 0, I) for every image and grid point: (N, G), for a few images."""
    dtype = dtype or matmul_dtype(model)
    parts = []
    for g in progress(range(0, z.shape[0], grid_chunk), desc='log p(x, z) on the grid', unit='chunk', leave=False):
        a, b, A, B = _joint_terms(model, x, z[g:g + grid_chunk], dtype)
        parts.append(torch.addmm(b, A, B.T) + a[:, None])
    return torch.cat(parts, dim=1)


@torch.no_grad()
def log_px_grid(model, x, n=GRID, limit=LIMIT, grid_chunk=GRID_CHUNK, image_chunk=IMAGE_CHUNK, dtype=None,
                adaptive=True, coarse=COARSE, threshold=THRESHOLD):
    """log p(x) per image (N,) float64 by the midpoint rule on an n x n grid over [-limit, limit]².

    x (N, C, H, W) is in model space (preprocessed); `dtype` is that of the products (default
    `matmul_dtype(model)`); logsumexps accumulate in float64.

    adaptive=False sums every (image, grid point) pair, the grid decoded `grid_chunk` points at a time,
    each chunk once for all images. adaptive=True gives the same sum without the pairs that cannot matter:
    the grid is cut into square tiles; a first pass on about `coarse` x `coarse` of the grid points
    (a 5 x 5 subgrid of each tile) finds each image's largest log-joint per tile, and only the tiles within
    `threshold` nats of the image's largest value, and their 8 neighbours, are summed in full (`kept_tiles`).
    A tile left out lies more than `threshold` nats below the peak at every sampled point, so the whole grid
    outside the kept tiles carries a fraction of the mass of order n² e^-threshold (4e-8 with the defaults)
    provided the posterior is not narrower than the subgrid's spacing; a narrower mode, or a thin ridge, can fall
    between the sampled points and be left out. `skipped_centres` flags the images where that could have happened
    at q_K.
    """
    dim = latent_dim(model, x)
    if dim != 2:
        raise ValueError(f'exact log p(x) by quadrature needs a 2-D latent space, got latent_dim={dim}')
    dtype = dtype or matmul_dtype(model)
    was_training = model.training
    model.eval()
    z_all, log_cell = grid_points(n, limit, device=x.device, dtype=x.dtype)
    total = torch.full((x.shape[0],), -math.inf, dtype=torch.float64, device=x.device)
    a = _likelihood_terms(model, x, z_all[:1], dtype)[0].double()      # the image-only term, (N,)
    if not adaptive:
        for g in progress(range(0, z_all.shape[0], grid_chunk), desc='exact log p(x)', unit='chunk', leave=False):
            _sum_block(model, x, z_all[g:g + grid_chunk], dtype, total, torch.arange(x.shape[0]), image_chunk)
    else:
        keep, tile = kept_tiles(model, x, z_all, n, dtype, grid_chunk, image_chunk, coarse, threshold)
        tiles = -(-n // tile)
        rows = torch.arange(n, device=x.device)
        for t in progress(range(tiles * tiles), desc='exact log p(x)', unit='tile', leave=False):
            images = keep[:, t].nonzero().squeeze(1)
            if images.numel():
                r = rows[(t // tiles) * tile:(t // tiles + 1) * tile]
                c = rows[(t % tiles) * tile:(t % tiles + 1) * tile]
                _sum_block(model, x, z_all[(r[:, None] * n + c[None]).flatten()], dtype, total, images, image_chunk)
    model.train(was_training)
    return total + a + log_cell


def kept_tiles(model, x, z_all, n, dtype, grid_chunk=GRID_CHUNK, image_chunk=IMAGE_CHUNK, coarse=COARSE,
               threshold=THRESHOLD):
    """(keep, tile): the first pass of log_px_grid's adaptive sum over the grid `z_all` (n², 2) of grid_points.
    keep (N, T²) bool says which of the T x T square tiles of `tile` x `tile` cells (row-major) are summed in full
    for each image: those whose largest log-joint on a subgrid of every (tile / 5)-th point lies within `threshold`
    nats of the image's largest, and their 8 neighbours."""
    stride = max(1, n // coarse)
    tile = 5 * stride                                                # fine cells per tile side
    tiles = -(-n // tile)
    sub = torch.arange(stride // 2, n, stride, device=x.device)      # subgrid rows / columns
    sub_index = (sub[:, None] * n + sub[None]).flatten()             # into z_all (first coordinate slowest)
    sub_tile = ((sub // tile)[:, None] * tiles + (sub // tile)[None]).flatten()
    tile_max = torch.full((x.shape[0], tiles * tiles), -math.inf, dtype=dtype, device=x.device)
    for g in progress(range(0, sub_index.numel(), grid_chunk), desc='exact log p(x), first pass', unit='chunk',
                      leave=False):
        z = z_all[sub_index[g:g + grid_chunk]]
        _, b, A, B = _joint_terms(model, x, z, dtype)
        index = sub_tile[g:g + grid_chunk]
        for i in range(0, x.shape[0], image_chunk):
            part = torch.addmm(b[None], A[i:i + image_chunk], B.T)
            tile_max[i:i + image_chunk].scatter_reduce_(1, index.expand_as(part), part, 'amax')
    peak = tile_max.amax(1, keepdim=True)
    keep = (tile_max > peak - threshold).view(-1, 1, tiles, tiles).to(dtype)
    return F.max_pool2d(keep, 3, stride=1, padding=1).view(x.shape[0], -1) > 0, tile   # and the 8 neighbours


@torch.no_grad()
def skipped_centres(model, x, n=GRID, limit=LIMIT, dtype=None, **kw):
    """(N,) bool: whether log_px_grid(x, n, limit) leaves out the point where q_K is centred, the flow's image of
    q0's mean: its tile is not summed, or it lies outside the window. Either q_K sits where p(z|x) has next to no
    mass (the encoder missed the posterior: a gap of tens of nats) or the first pass stepped over a mode narrower
    than its spacing (log p(x) too low); the full sum of those images' grids tells which (grid_check.py does).
    `kw` as log_px_grid's (grid_chunk, image_chunk, coarse, threshold)."""
    dtype = dtype or matmul_dtype(model)
    was_training = model.training
    model.eval()
    mean, _, context = model.encode(x)
    centre = model.flow(mean.to(x.dtype), None if context is None else context.to(x.dtype))[0]   # (N, 2)
    z_all, _ = grid_points(n, limit, device=x.device, dtype=x.dtype)
    keep, tile = kept_tiles(model, x, z_all, n, dtype, **kw)
    model.train(was_training)
    cell = torch.floor((centre.double() + limit) / (2 * limit / n)).long()          # (N, 2) cell row, column
    inside = ((cell >= 0) & (cell < n)).all(1)
    row, column = (cell.clamp(0, n - 1) // tile).unbind(1)
    kept = keep.gather(1, (row * -(-n // tile) + column)[:, None]).squeeze(1)
    return ~(inside & kept)


def _sum_block(model, x, z, dtype, total, images, image_chunk):
    """total[images] ← logaddexp(total[images], logsumexp over z of log p(x|z) + log p(z) − a(x))."""
    _, b, A, B = _joint_terms(model, x[images] if images.numel() < x.shape[0] else x, z, dtype)   # b: (G,)
    for i in range(0, images.numel(), image_chunk):
        index = images[i:i + image_chunk]
        chunk_lse = torch.logsumexp(torch.addmm(b[None], A[i:i + image_chunk], B.T), dim=1).double()
        total[index] = torch.logaddexp(total[index], chunk_lse)


def preprocess(pre, images, batch_size=EVAL_BATCH):
    """(x, log_det_pre) of uint8 `images` as evaluate.evaluate sees them: `pre(·, train=False)` per batch, each
    seeded by evaluate.seed_batch (phase 0) inside evaluate.eval_rng, so for 8-bit data the dequantized images
    are the very ones whose ELBO is reported. The global RNG is untouched."""
    xs, dets = [], []
    with eval_rng(images.device):
        for start in range(0, images.shape[0], batch_size):
            seed_batch(0, start)
            x, det = pre(images[start:start + batch_size], train=False)
            xs.append(x)
            dets.append(det)
    return torch.cat(xs), torch.cat(dets)


def exact_log_px(model, pre, images, n=GRID, limit=LIMIT, batch_size=EVAL_BATCH, **kw):
    """log p(x) per image (N,) float64 of uint8 `images`, the preprocessing's log-det included (a density of
    y in [0, 1)^D for 8-bit data, as the ELBO of utils.evaluate). For models with a 2-D latent space."""
    x, log_det_pre = preprocess(pre, images, batch_size)
    return log_px_grid(model, x, n, limit, **kw) + log_det_pre.double()


def refinement_check(model, x, n=GRID, limit=LIMIT, finer=2, wider=4 / 3, dense_reference=False, **kw):
    """The grid error of log_px_grid(x, n, limit): compared with a grid of `finer` times smaller cells over
    [-wider·limit, wider·limit]², summed in full with dense_reference=True (slow: for a subset of images,
    to check the adaptive selection too). The reference's first pass samples `finer` times more densely than the
    grid's, so that it does not step over a narrow mode the grid's found. Returns {'mean_abs_diff',
    'max_abs_diff', 'mean_diff'} in nats per image (diff = reference − value), 'reference' and 'value' (N,)."""
    value = log_px_grid(model, x, n, limit, **kw)
    reference = log_px_grid(model, x, round(n * finer * wider), limit * wider,
                            **{**kw, 'adaptive': kw.get('adaptive', True) and not dense_reference,
                               'coarse': round(kw.get('coarse', COARSE) * finer * wider)})
    diff = reference - value
    return {'mean_abs_diff': diff.abs().mean().item(), 'max_abs_diff': diff.abs().max().item(),
            'mean_diff': diff.mean().item(), 'reference': reference, 'value': value}


def gaps(metrics, log_px_exact, split='test', binary=True, dims=None):
    """The fields the final evaluation adds, from `metrics` of utils.evaluate and the mean exact log p(x):
    '{split}_log_px_exact', '{split}_gap_elbo' = exact − ELBO (the mean KL(q_K(z|x) ‖ p(z|x))),
    '{split}_gap_iw' = exact − IW when there is an IW estimate, and for 8-bit data (binary=False, dims = D)
    '{split}_bpd_log_px_exact'."""
    out = {f'{split}_log_px_exact': log_px_exact, f'{split}_gap_elbo': log_px_exact - metrics[f'{split}_elbo']}
    if f'{split}_log_px_iw' in metrics:
        out[f'{split}_gap_iw'] = log_px_exact - metrics[f'{split}_log_px_iw']
    if not binary:
        out[f'{split}_bpd_log_px_exact'] = bits_per_dim(log_px_exact, dims)
    return out


# ---- the posterior picture -----------------------------------------------------------------------------

def pick_images(labels, count=POSTERIOR_IMAGES):
    """Indices of `count` images of different classes: the first image of each of the first `count`
    classes in order of label (topped up with the first other images if there are fewer classes)."""
    labels = labels.cpu()
    chosen = [int((labels == c).nonzero()[0]) for c in labels.unique()[:count]]
    chosen += [i for i in range(len(labels)) if i not in chosen][:count - len(chosen)]
    return sorted(chosen)


def _normalize(log_density, log_cell):
    """Grid log-densities -> the density (normalized to integrate to 1 on the grid) and its log-mass."""
    log_mass = torch.logsumexp(log_density.flatten(), 0) + log_cell
    return (log_density - log_mass).exp(), log_mass


def _central(samples, mass=0.999):
    """The ends (2, 2) of the central `mass` of samples (N, 2) on each axis: rows low, high."""
    return torch.quantile(samples, torch.tensor([(1 - mass) / 2, (1 + mass) / 2], dtype=samples.dtype), dim=0)


def _bulk(posterior, z, mass=0.999):
    """The fewest points of the grid z (G, 2) that hold `mass` of the posterior (G,) on it."""
    weights = posterior.flatten() / posterior.sum()
    order = weights.argsort(descending=True)
    return z[order[:int((weights[order].cumsum(0) < mass).sum()) + 1]]


def _window(bulk, points, pad=0.15):
    """A square window [x0, x1, y0, y1] holding the posterior's `_bulk` (B, 2) and the points (P, 2)."""
    points = torch.cat([bulk, points.to(bulk.dtype)])
    low, high = points.min(0).values, points.max(0).values
    centre, half = (low + high) / 2, (high - low).max() / 2 * (1 + pad) + 1e-3
    return [float(centre[0] - half), float(centre[0] + half), float(centre[1] - half), float(centre[1] + half)]


def _moments(z, weights=None):
    """(mean (2,), covariance (2, 2)) of points z (P, 2), weighted by `weights` (P,) when given."""
    weights = torch.full_like(z[:, 0], 1 / len(z)) if weights is None else weights / weights.sum()
    mean = weights @ z
    centred = z - mean
    return mean, (weights[:, None] * centred).T @ centred


def _posterior_moments(model, x, bulk, cell, n):
    """_moments of p(z|x) for one image x (1, C, H, W), on an n x n grid over its `_bulk` (B, 2) on a coarser grid
    (cells `cell` wide) widened by a cell, so also for a posterior narrower than those cells."""
    (x0, y0), (x1, y1) = (bulk.min(0).values - cell).tolist(), (bulk.max(0).values + cell).tolist()
    grid = _window_grid([x0, x1, y0, y1], n)
    return _moments(grid[0], _window_posterior(model, x, grid))


def _holds(box, points):
    """Whether the window [x0, x1, y0, y1] holds the points (P, 2)."""
    return bool((points[:, 0] >= box[0]).all() and (points[:, 0] <= box[1]).all()
                and (points[:, 1] >= box[2]).all() and (points[:, 1] <= box[3]).all())


def _window_grid(box, n):
    xs = torch.linspace(box[0], box[1], n, dtype=torch.float64)
    ys = torch.linspace(box[2], box[3], n, dtype=torch.float64)
    zz = torch.stack(torch.meshgrid(xs, ys, indexing='xy'), -1).reshape(-1, 2)   # row = y, column = x
    return zz, math.log((xs[1] - xs[0]) * (ys[1] - ys[0]))


def _window_posterior(model, x, grid):
    """p(z|x) for one image x (1, C, H, W) on a window's grid (z, log_cell) of _window_grid, normalized there: (n², )
    float64 on the CPU."""
    z, log_cell = grid
    return _normalize(log_joint(model, x, z.to(device=x.device, dtype=x.dtype))[0].double().cpu(), log_cell)[0]


def _flow_inverse(model, z, context):
    """(f⁻¹(z), log|det df⁻¹/dz|) when the flow has a closed-form inverse, else None."""
    try:
        return model.flow.inverse(z, context)
    except NotImplementedError:
        return None


@torch.no_grad()
def posterior_panels(model, x, n=GRID, limit=LIMIT, window=200, samples=100_000, elbo_samples=10_000, seed=EVAL_SEED):
    """What each row of the posterior figure shows, for images x (M, C, H, W) in model space: a list of dicts
    with the window 'box' (the bulk of p(z|x) and the central 99.9% of q_K's samples on each axis), the densities
    'posterior' and 'qk' on a window x window grid of it (None for 'qk' when the flow has no inverse, or its
    inverse is not finite on the whole window: then 'qk_samples' (samples, 2) from q_K), q0's window 'q0_box'
    (the box, widened to hold q0's bulk where a flow carried a distant q0 onto the posterior), 'q0' and
    'q0_posterior' (the posterior again) on a grid of it, 'log_px' (the grid quadrature), 'elbo' (the mean of
    `elbo_samples` single-sample ELBOs), the 'flow' kind, and 'moments': for 'posterior' (on a window x window
    grid of its bulk), 'q0' (exact) and 'qk' (from its samples) each a (mean (2,), covariance (2, 2)) pair in
    float64."""
    was_training = model.training
    model.eval()
    dtype = x.dtype
    z, log_cell = grid_points(n, limit, device=x.device, dtype=dtype)
    rows = []
    with torch.random.fork_rng(devices=[x.device] if x.device.type == 'cuda' else []):
        torch.manual_seed(seed)
        joint = log_joint(model, x, z).double()                        # (M, G)
        z_cpu = z.cpu().double()
        for i in progress(range(x.shape[0]), desc='posterior figure', unit='image', leave=False):
            xi = x[i:i + 1]
            posterior, log_px = _normalize(joint[i], log_cell)
            mean, log_var, context = model.encode(xi)
            std = torch.exp(0.5 * log_var)
            eps = torch.randn(samples, 2, device=x.device, dtype=dtype)
            ctx_s = None if context is None else context.expand(samples, -1)
            z0_samples = mean + std * eps
            qk_samples = model.flow(z0_samples, ctx_s)[0].cpu()
            qk_ends, q0_ends = _central(qk_samples), _central(z0_samples.cpu())
            bulk = _bulk(posterior.cpu(), z_cpu)
            moments = {'posterior': _posterior_moments(model, xi, bulk, 2 * limit / n, window),
                       'q0': (mean[0].cpu().double(), torch.diag(log_var[0].cpu().double().exp())),
                       'qk': _moments(qk_samples.double())}
            box = _window(bulk, qk_ends)
            q0_box = box if _holds(box, q0_ends) else _window(bulk, torch.cat([qk_ends, q0_ends]))
            grid = _window_grid(box, window)
            q0_grid = grid if q0_box == box else _window_grid(q0_box, window)
            post_w = _window_posterior(model, xi, grid)
            post_q0 = post_w if q0_grid is grid else _window_posterior(model, xi, q0_grid)
            q0 = log_normal_diag(q0_grid[0], mean.cpu().double(), log_var.cpu().double()).exp()
            zw = grid[0].to(device=x.device, dtype=dtype)
            ctx = None if context is None else context.expand(zw.shape[0], -1)
            inverse = _flow_inverse(model, zw, ctx)
            qk = None
            if inverse is not None:   # exact contours; the samples only placed the window
                z0, inv_log_det = inverse
                log_qk = log_normal_diag(z0.double(), mean.double(), log_var.double()) + inv_log_det.double()
                if torch.isfinite(log_qk).all():   # else the inverse overflowed (an IAF can): the samples are drawn
                    qk, qk_samples = log_qk.exp().cpu(), None
            draws = elbo(model(xi.expand(elbo_samples, *xi.shape[1:])), model.has_flow)
            rows.append({'box': box, 'posterior': post_w.view(window, window),
                         'qk': None if qk is None else qk.view(window, window), 'qk_samples': qk_samples,
                         'q0_box': q0_box, 'q0': q0.view(window, window),
                         'q0_posterior': post_q0.view(window, window),
                         'log_px': float(log_px), 'elbo': float(draws.double().mean()),
                         'flow': model.flow.kind if model.has_flow else 'none', 'moments': moments})
    model.train(was_training)
    return rows


def distance_table(indices, labels, rows):
    """A markdown table of the figure's rows: for each test image its log p(x), ELBO and gap, where q0 and q_K
    lie (the distance from their mean to the posterior's) and how wide each of the three is (the standard
    deviation along its widest direction, the square root of its covariance's largest eigenvalue)."""
    def width(moments):
        return torch.linalg.eigvalsh(moments[1])[-1].clamp(min=0).sqrt().item()

    lines = ['| test image | label | log p(x) | ELBO | gap | p(z|x) sd | q0 → p(z|x) | q0 sd | q_K → p(z|x) '
             '| q_K sd |', '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|']
    for index, label, row in zip(indices, labels, rows):
        posterior, q0, qk = (row['moments'][name] for name in ('posterior', 'q0', 'qk'))
        lines.append(f'| {index} | {label} | {row["log_px"]:.2f} | {row["elbo"]:.2f} '
                     f'| {row["log_px"] - row["elbo"]:.2f} | {width(posterior):.3f} '
                     f'| {(q0[0] - posterior[0]).norm():.2f} | {width(q0):.3f} '
                     f'| {(qk[0] - posterior[0]).norm():.2f} | {width(qk):.3f} |')
    return '\n'.join(lines) + '\n'


def posterior_figure(model, pre, images, labels, path, title, indices=None, **kw):
    """plots/<prefix>_posterior.png: for 6 test images of different classes (`pick_images`), the image, the
    true posterior p(z|x), q0(z0|x) and q_K(z|x), each row zoomed on its posterior; and beside it, the same
    name ending .txt, their `distance_table`. Returns False (and draws nothing) unless the latent space is 2-D,
    else True."""
    indices = pick_images(labels) if indices is None else indices
    x, log_det_pre = preprocess(pre, images[indices])
    if latent_dim(model, x) != 2:
        return False
    rows = posterior_panels(model, x, **kw)
    for row, det in zip(rows, log_det_pre.tolist()):   # densities of y, as the reported numbers
        row['log_px'] += det
        row['elbo'] += det
    plotting.plot_posteriors(pre.to_image(x).cpu(), labels[indices].tolist(), rows, path, title)
    with open(os.path.splitext(path)[0] + '.txt', 'w') as f:
        f.write(f'{title}\n\n' + distance_table(indices, labels[indices].tolist(), rows))
    return True
