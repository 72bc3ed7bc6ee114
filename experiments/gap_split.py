"""A 2-D MNIST model's inference gap split into approximation and amortization (Cremer, Li & Duvenaud 2018,
"Inference Suboptimality in Variational Autoencoders", arXiv:1801.03558).

    python experiments/gap_split.py CKPT [CKPT ...] [--images N] [--steps N] [--draws N] [--lr LR]
                                    [--eval_draws N] [--json PATH] [--data_dir DIR]

For each of the first N binarized MNIST test images x, with log p(x) exact by quadrature (posterior2d.log_px_grid),

    log p(x) − ELBO(q_encoder) = [log p(x) − ELBO(q*)] + [ELBO(q*) − ELBO(q_encoder)]
                                   approximation gap       amortization gap

where q* is the best member of the variational family for x, found by maximizing x's ELBO over x's own q with the
decoder and every shared weight frozen, starting from the encoder's q: the first gap is what the family cannot
fit, the second what the encoder loses by not outputting q*.

Per image, q is q0's mean and log-variance (B, D) and, for an amortized flow, the flow's per-image parameters; a
static flow stays as trained. Step k's per-image parameters are what its context layer W_k (P_k, C) makes of the
encoder's context c (B, C = 400): 2D + 1 = 5 values for planar, D + 2 = 4 radial, D = 2 householder, 12
sylvester-orthogonal, 24 sylvester-householder, 8 sylvester-triangular, D = 2 NICE's scaling, and 64 shifts of
the first hidden layer of a NICE coupling's or an IAF step's network (flows: `context_weight`). Over 16 steps the
first six total at most 384 < 400, which one shared context could all reach, but NICE's 15 · 64 + 2 = 962 and
IAF's 1,024 not. So each step's parameters are optimized directly: their change δ_k (B, P_k), started at 0, is
given to step k as its own context c + δ_k W_k⁺ᵀ (W_k⁺ the pseudo-inverse; flows.FlowSequence takes one context
per step), for which the step's own code computes the encoder's parameters plus δ_k (W_k has full row rank).
Through δ_k, not the 400-dim context, Adam's steps are of the parameters' own scale: a trained planar model's
W_k rows sum 4–8 in absolute value, and Adam at lr 0.05 on its contexts took one image from a 59- to a 91-nat gap.

For an amortized flow this joint search can fail: where a narrow posterior lies far from the origin, a small step
of a Householder flow's per-image reflections turns q_K off it, and on the first 100 test images of the full-budget
amortized Householder model the joint search ended 5 nats below the search over q0 alone. So an amortized flow gets
both searches, q0 with its flow parameters and q0 alone with the encoder's flow parameters, and each image keeps the
one whose ELBO is higher over --eval_draws draws apart from the reported ones (so that picking adds no bias).

A batch of images is optimized at once: Adam on the sum over images of each image's negative ELBO averaged over
--draws draws, the lr decaying exponentially from --lr to 1% of it over --steps. Each image's ELBO under q* and
under the encoder's q is then the mean of the same --eval_draws draws eps ~ N(0, I) (z0 = mean + std · eps), so
that their difference has less noise than either; the MC error is one image's standard error of the optimized
ELBO (the mean over images of each image's: a column's mean over N images has about 1/√N of it). The convergence
column is the change of the mean optimized ELBO over the second half of the steps (the same eps again), to be
read against the approximation gap: near 0 once q* stopped improving. At the defaults, one search over
1,000 images takes 11 minutes on one CPU thread for an amortized planar flow of length 16 on the 2 × 400 MLP, and
an amortized flow gets two.

q* is a local optimum. From the encoder's q an image whose posterior has separate modes can end in a minor one:
of the first 100 test images of a briefly trained no-flow model, one ended 10.4 nats below log p(x), in a mode
holding 2e-5 of the posterior's mass. The approximation gap counts it; the largest per-image one is printed.
The search's draws are seeded once per command, so a checkpoint's row depends on the checkpoints before it.
"""
import argparse
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import datasets  # noqa: E402
import posterior2d  # noqa: E402
from data_utils import mnist_test_set  # noqa: E402
from trained import flow_label, trained_2d_model  # noqa: E402
from utils import progress, write_json  # noqa: E402
from vae import elbo  # noqa: E402

IMAGES = 1000
STEPS = 400
DRAWS = 32
EVAL_DRAWS = 1000
LR = 0.05
LR_DECAY = 0.01   # the lr's last value over its first
BATCH = 100        # images optimized together
EVAL_CHUNK = 100   # draws per forward in the evaluation
SELECTION_SEED = 2 ** 32   # plus the batch's first index: the draws that pick a search, apart from the reported ones


def image_q(model, x):
    """(q, elbo_of) for images x (B, C, H, W): q the encoder's, a list [mean, log_var] of q0, (B, D) each, then for
    an amortized flow each step's change δ_k (B, P_k) of its per-image parameters, zero; elbo_of(q, eps) each
    image's ELBO under q for draws eps (S, B, D), (S, B). Step k gets the context c + δ_k W_k⁺ᵀ, for which its
    context layer W_k (P_k, C) gives the encoder's parameters plus δ_k."""
    with torch.no_grad():
        mean, log_var, context = model.encode(x)
    amortized_steps = model.flow.steps if model.flow.amortized else []
    inverses = [torch.linalg.pinv(step.context_weight().detach()) for step in amortized_steps]   # (C, P_k) each
    changes = [mean.new_zeros(len(x), inverse.shape[1]) for inverse in inverses]

    def elbo_of(q, eps):
        mean, log_var, *changes = q
        contexts = [context + change @ inverse.T for change, inverse in zip(changes, inverses)] or None
        return elbo(model.terms(x, mean, log_var, contexts, eps), model.has_flow)
    return [mean, log_var, *changes], elbo_of


def optimize(elbo_of, q, steps=STEPS, draws=DRAWS, lr=LR, q0_only=False):
    """(q after steps // 2 of `steps` >= 2, q at the end), each a detached list like q: Adam from q on the sum over
    images of −elbo_of averaged over `draws` draws, the lr decaying exponentially from `lr` to LR_DECAY · lr. Only q
    moves; with `q0_only`, only q0's mean and log-variance, the flow's per-image parameters kept as they are."""
    q = [t.detach().clone().requires_grad_(not q0_only or i < 2) for i, t in enumerate(q)]
    moving = [t for t in q if t.requires_grad]
    optimizer = torch.optim.Adam(moving, lr=lr)
    schedule = torch.optim.lr_scheduler.ExponentialLR(optimizer, LR_DECAY ** (1 / steps))
    for step in progress(range(1, steps + 1), desc='optimizing q', unit='step', leave=False):
        eps = torch.randn(draws, *q[0].shape, dtype=q[0].dtype, device=q[0].device)
        loss = -elbo_of(q, eps).mean(0).sum()
        optimizer.zero_grad()
        loss.backward(inputs=moving)
        optimizer.step()
        schedule.step()
        if step == steps // 2:
            half = [t.detach().clone() for t in q]
    return half, [t.detach() for t in q]


@torch.no_grad()
def mean_elbo(elbo_of, q, draws=EVAL_DRAWS, seed=0, chunk=EVAL_CHUNK):
    """Each image's ELBO under q averaged over `draws` draws, and its standard error, (B,) each. The draws are
    seed `seed`'s, so that q's evaluated with one seed are compared on the same eps."""
    q0_mean = q[0]
    generator = torch.Generator(q0_mean.device).manual_seed(seed)
    values = torch.cat([elbo_of(q, torch.randn(min(chunk, draws - start), *q0_mean.shape, generator=generator,
                                               dtype=q0_mean.dtype, device=q0_mean.device))
                        for start in range(0, draws, chunk)])                # (draws, B)
    return values.mean(0), values.std(0) / draws ** 0.5


def better(elbo_of, first, second, draws=EVAL_DRAWS, seed=SELECTION_SEED):
    """Of two searches' (half, end) results, each image's from the one whose end has the higher ELBO over `draws`
    draws of seed `seed`: (half, end) like either."""
    take_second = mean_elbo(elbo_of, second[1], draws, seed)[0] > mean_elbo(elbo_of, first[1], draws, seed)[0]
    return tuple([torch.where(take_second.view(-1, *[1] * (a.dim() - 1)), b, a) for a, b in zip(qa, qb)]
                 for qa, qb in zip(first, second))


def split(model, pre, images, steps=STEPS, draws=DRAWS, lr=LR, eval_draws=EVAL_DRAWS, batch_size=BATCH):
    """Per image of uint8 `images`, (N,) each in float64, the preprocessing's log-det included as in the final
    evaluation: 'exact' log p(x), the ELBO of the 'encoder' q, of q after half the steps ('half') and of q*
    ('optimized'), and their standard errors ('encoder_error', ...)."""
    x, log_det_pre = posterior2d.preprocess(pre, images)
    parts = {'encoder': [], 'half': [], 'optimized': []}
    for start in progress(range(0, len(x), batch_size), desc='q* per image', unit='batch', leave=False):
        xb = x[start:start + batch_size]
        q, elbo_of = image_q(model, xb)
        half, optimized = optimize(elbo_of, q, steps, draws, lr)
        if len(q) > 2:   # an amortized flow: also the search over q0 alone, each image keeping the better one
            half, optimized = better(elbo_of, (half, optimized), optimize(elbo_of, q, steps, draws, lr, q0_only=True),
                                     eval_draws, seed=SELECTION_SEED + start)
        for name, qb in (('encoder', q), ('half', half), ('optimized', optimized)):
            parts[name].append(mean_elbo(elbo_of, qb, eval_draws, seed=start))
    out = {'exact': posterior2d.log_px_grid(model, x) + log_det_pre.double()}
    for name, values in parts.items():
        out[name] = torch.cat([mean for mean, _ in values]).double() + log_det_pre.double()
        out[f'{name}_error'] = torch.cat([error for _, error in values]).double()
    return out


def summary(per_image):
    """The table's numbers, in nats, means over images: 'exact', 'encoder', 'optimized', 'gap' = exact − encoder,
    'approximation' = exact − optimized, 'amortization' = optimized − encoder, 'change' = optimized − half,
    'mc_error'; and the largest approximation gap, 'approximation_max'."""
    mean = {name: values.mean().item() for name, values in per_image.items()}
    return {'exact': mean['exact'], 'encoder': mean['encoder'], 'optimized': mean['optimized'],
            'gap': mean['exact'] - mean['encoder'], 'approximation': mean['exact'] - mean['optimized'],
            'amortization': mean['optimized'] - mean['encoder'], 'change': mean['optimized'] - mean['half'],
            'mc_error': mean['optimized_error'],
            'approximation_max': (per_image['exact'] - per_image['optimized']).max().item()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoints', nargs='+', metavar='CKPT', help='2-D MNIST checkpoints of the MLP scripts')
    parser.add_argument('--images', type=int, default=IMAGES, help='the first N MNIST test images')
    parser.add_argument('--steps', type=int, default=STEPS, help='Adam steps on each image\'s q (at least 2)')
    parser.add_argument('--draws', type=int, default=DRAWS, help='draws per image in each step\'s ELBO')
    parser.add_argument('--lr', type=float, default=LR, help='Adam\'s first lr; it decays to 1% of it')
    parser.add_argument('--eval_draws', type=int, default=EVAL_DRAWS, help='draws per image for the reported ELBOs')
    parser.add_argument('--json', metavar='PATH', help='also write each checkpoint\'s numbers and settings here')
    parser.add_argument('--data_dir', default=datasets.default_data_dir(), help='where MNIST is')
    opts = parser.parse_args()
    if opts.steps < 2:
        raise SystemExit(f'error: --steps {opts.steps}: the convergence check needs at least 2')
    images, pre = mnist_test_set(opts.data_dir, opts.images)
    torch.manual_seed(0)
    print(f'{len(images)} MNIST test images; ELBOs and gaps in nats per image, q* after {opts.steps} Adam steps of '
          f'{opts.draws} draws, each ELBO of {opts.eval_draws} draws\n\n'
          '| checkpoint | flow | exact | encoder ELBO | optimized ELBO | exact − encoder ELBO | approximation gap '
          '| largest approximation gap | amortization gap | change over the last half | MC error |\n'
          '|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|')
    runs = []
    for path in opts.checkpoints:
        model, args, _ = trained_2d_model(path)
        started = time.time()
        s = summary(split(model, pre, images, opts.steps, opts.draws, opts.lr, opts.eval_draws))
        print(f'| {path} | {flow_label(model, args)} | {s["exact"]:.2f} | {s["encoder"]:.2f} | {s["optimized"]:.2f} '
              f'| {s["gap"]:.2f} | {s["approximation"]:.2f} | {s["approximation_max"]:.1f} | {s["amortization"]:.2f} '
              f'| {s["change"]:.3f} '
              f'| {s["mc_error"]:.3f} |')
        runs.append({'checkpoint': path, 'flow': flow_label(model, args), **s, 'images': len(images),
                     'steps': opts.steps, 'draws': opts.draws, 'lr': opts.lr, 'eval_draws': opts.eval_draws,
                     'seconds': time.time() - started})
    if opts.json:
        write_json(opts.json, runs)


if __name__ == '__main__':
    main()
