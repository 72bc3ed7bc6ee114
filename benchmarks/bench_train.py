"""Training-step speed on real MNIST: our loop beside the original repo's, in one run.

    python benchmarks/bench_train.py [--iters 200] [--data_dir ./data]

Ours: the uint8 training set in memory, batches drawn by index and binarized as a batch
(data_utils.Batches + Preprocessor), then utils.train_step, in three versions side by side: before
(Adam's per-parameter loop), now (the fused Adam kernel the scripts use on the CPU and CUDA) and
with --compile 1 (torch.compile of the training forward). The baseline reproduces the original
repo's loop: a torchvision DataLoader over MNIST with ToTensor() and num_workers=2, the same model
step, and loss.item() every iteration. Also reported: the static MLP step's achieved GFLOP/s
against a plain torch.mm measured in the same run, and the importance-weighted evaluation's
throughput (test images per second at K = 1000).
"""
import argparse
import os
import sys
import time
from types import SimpleNamespace

import torch
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data_utils  # noqa: E402
import static_flow_conv_vae  # noqa: E402
import static_flow_vae  # noqa: E402
import utils  # noqa: E402
from vae import iw_log_likelihood, training_loss  # noqa: E402


def config(**overrides):
    """The original defaults (--batch_size 128 --layer 2 --hidden_dim 400 --latent_dim 2)."""
    base = dict(dataset='mnist', batch_size=128, layer=2, hidden_dim=400, latent_dim=2, gate=0, flow='none',
                length=16, amortized=False, lr=1e-3, momentum=0.9, decay=0.999, objective='elbo', warmup=0,
                clip_grad=0.0, base_dim=8, scale=2, res_blocks=1, bottleneck=0, weight_norm=1)
    return SimpleNamespace(**{**base, **overrides})


def make(args, build, fused=False):
    torch.manual_seed(0)
    model = build(args, (1, 28, 28))
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(args.momentum, args.decay), fused=fused)
    return model, optimizer


def ours(args, build, images, labels, iters, fused=True, compile=False):
    """Iterations per second of the loop in utils.train (less logging); compile: as with --compile 1."""
    model, optimizer = make(args, build, fused)
    params = list(model.parameters())
    batches = data_utils.Batches(images, labels, args.batch_size, 'cpu', seed=0)
    pre = data_utils.Preprocessor('mnist')
    torch._inductor.config.fallback_random = True
    net = torch.compile(model) if compile else model
    for it in range(1, iters + 1):
        if it == 11:
            start = time.perf_counter()  # after 10 warm-up steps (and the compilation)
        x, log_det_pre = pre(next(batches)[0])
        utils.train_step(model, optimizer, params, x, log_det_pre, args, it, net)
    return (iters - 10) / (time.perf_counter() - start)


def baseline(args, build, data_dir, iters):
    """The original repo's loop: DataLoader(ToTensor(), num_workers=2), the step, loss.item() each time."""
    model, optimizer = make(args, build)
    loader = DataLoader(datasets.MNIST(data_dir, train=True, transform=transforms.ToTensor()),
                        batch_size=args.batch_size, shuffle=True, num_workers=2, drop_last=True,
                        persistent_workers=True)
    it = 0
    while it < iters:
        for x, _ in loader:
            it += 1
            if it == 11:
                start = time.perf_counter()
            x = torch.bernoulli(x)
            loss = training_loss(model(x), model.has_flow, args.objective).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()
            if it == iters:
                break
    return (iters - 10) / (time.perf_counter() - start)


def step_parts(args, build, images, labels, iters, compile=False):
    """Milliseconds per step spent in each part of utils.train_step (mean over `iters` steps after 30)."""
    model, optimizer = make(args, build, fused=True)
    params = list(model.parameters())
    batches = data_utils.Batches(images, labels, args.batch_size, 'cpu', seed=0)
    pre = data_utils.Preprocessor('mnist')
    net = torch.compile(model) if compile else model
    parts = dict.fromkeys(('preprocessing', 'forward', 'backward', 'grad norm', 'Adam'), 0.0)
    for it in range(1, iters + 31):
        t = [time.perf_counter()]
        x, log_det_pre = pre(next(batches)[0])
        t.append(time.perf_counter())
        loss = (training_loss(net(x), model.has_flow, args.objective) - log_det_pre).mean()
        t.append(time.perf_counter())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t.append(time.perf_counter())
        bool(torch.isfinite(loss + torch.nn.utils.get_total_norm([p.grad for p in params])))
        t.append(time.perf_counter())
        optimizer.step()
        t.append(time.perf_counter())
        if it > 30:
            for key, start, end in zip(parts, t, t[1:]):
                parts[key] += (end - start) * 1e3 / iters
    return parts


def mlp_step_flops(args, pixels=784):
    """Matrix-product FLOPs of one MLP step: forward 2BΣ(in·out), backward twice that, less the
    first layer's input gradient (the data needs none)."""
    enc = [pixels] + [args.hidden_dim] * args.layer + [2 * args.latent_dim]
    dec = [args.latent_dim] + [args.hidden_dim] * args.layer + [pixels]
    macs = sum(a * b for sizes in (enc, dec) for a, b in zip(sizes, sizes[1:]))
    return 6 * args.batch_size * macs - 2 * args.batch_size * pixels * args.hidden_dim


def mm_gflops(n=1024, repeats=20):
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n ** 3 * repeats / (time.perf_counter() - start) / 1e9


@torch.no_grad()
def iw_images_per_second(args, build, images, k=1000, n=200):
    model, _ = make(args, build)
    model.eval()
    x, _ = data_utils.Preprocessor('mnist')(images[:n])
    start = time.perf_counter()
    for s in range(0, n, utils.IW_BATCH):
        iw_log_likelihood(model, x[s:s + utils.IW_BATCH], k, model.iw_rows)
    return n / (time.perf_counter() - start)


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--iters', type=int, default=200, help='timed iterations per configuration (+10 warm-up)')
    p.add_argument('--data_dir', default=data_utils.default_data_dir())
    args = p.parse_args()
    images, labels = data_utils.load_split('mnist', args.data_dir, train=True, log=lambda *_: None)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads; torch.mm 1024^3: {mm_gflops():.1f} GFLOP/s')

    mlp, conv = static_flow_vae.build_model, static_flow_conv_vae.build_model
    rows = [('static MLP, no flow', config(), mlp)]
    rows += [(f'static MLP, {k}-16', config(flow=k), mlp) for k in ('planar', 'radial', 'householder', 'nice')]
    rows += [(f'dynamic MLP, {k}-16', config(flow=k, amortized=True), mlp) for k in ('planar', 'radial', 'householder', 'nice')]
    rows += [('conv (base_dim 8, scale 2), planar-16', config(flow='planar'), conv)]
    print('\nit/s; ratios to the baseline (the original repo\'s loop)')
    print(f'{"configuration":<40}{"before":>8}{"now":>8}{"compiled":>10}{"baseline":>10}{"now/base":>10}'
          f'{"compiled/base":>15}')
    for name, cfg, build in rows:
        before = ours(cfg, build, images, labels, args.iters, fused=False)
        now = ours(cfg, build, images, labels, args.iters)
        compiled = ours(cfg, build, images, labels, args.iters, compile=True)
        slow = baseline(cfg, build, args.data_dir, args.iters)
        print(f'{name:<40}{before:>8.1f}{now:>8.1f}{compiled:>10.1f}{slow:>10.1f}{now / slow:>9.1f}x'
              f'{compiled / slow:>14.1f}x', flush=True)

    cfg = config(flow='planar')
    flops = mlp_step_flops(cfg)
    limit = mm_gflops()
    print(f'\nstatic MLP planar-16: {flops / 1e6:.0f} MFLOP of matrix products per step; torch.mm '
          f'{limit:.1f} GFLOP/s, a limit of {limit * 1e9 / flops:.0f} it/s')
    for label, compile in (('now', False), ('compiled', True)):
        rate = ours(cfg, mlp, images, labels, args.iters, compile=compile)
        print(f'  {label:<9}{rate:>7.1f} it/s = {rate * flops / 1e9:.1f} GFLOP/s, '
              f'{100 * rate * flops / 1e9 / limit:.0f}% of torch.mm')
    print('\nwhere the time goes: ms per step (preprocessing, forward, backward, grad norm, Adam, total)')
    for label, flow, compile in (('no flow, eager', 'none', False), ('planar-16, eager', 'planar', False),
                                 ('planar-16, compiled', 'planar', True)):
        parts = step_parts(config(flow=flow), mlp, images, labels, args.iters, compile)
        print(f'  {label:<22}' + ''.join(f'{v:>7.2f}' for v in parts.values()) + f'{sum(parts.values()):>8.2f}')
    print(f'IW evaluation, K=1000, static MLP planar-16: '
          f'{iw_images_per_second(cfg, mlp, images):.1f} test images/s')


if __name__ == '__main__':
    main()
