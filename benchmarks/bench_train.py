"""Training-step speed on real MNIST: our loop beside the original repo's, in one run.

    python benchmarks/bench_train.py [--iters 200] [--repeats 3] [--data_dir ./data]

Ours: the uint8 training set in memory, batches drawn by index and binarized as a batch
(data_utils.Batches + Preprocessor), then train.train_step, in four versions side by side: before
(Adam's per-parameter loop), now (the fused Adam kernel the scripts use on the CPU and CUDA), with
--compile 1 (torch.compile of the training forward), and with --compile 1 --precision bf16 (the
networks' matrix products in bfloat16). The baseline reproduces the original repo's loop: a
torchvision DataLoader over MNIST with ToTensor() and num_workers=2, the same model step, and
loss.item() every iteration. Also reported: the static MLP step's achieved GFLOP/s against a plain
torch.mm measured in the same run, the floor under the step (its matrix products alone, back to
back, and the Adam kernel alone), and the importance-weighted evaluation's throughput (test images
per second at K = 1000).

    python benchmarks/bench_train.py --device cuda --steps_only [--iters 200] [--iw 5000 10000]

--steps_only prints only the step table on --device: per configuration (the static MLP planar-16 at
latent 2; the amortized MLP planar-16 at latent 40, the README's mnist40 model; the conv VAE at its
defaults on 32x32x3 images, random CIFAR-shaped data in memory) the it/s of the eager step with a host
sync per step (the step as it was: the non-finite flag read on the host), the eager step without it
(the flag decided on the device), --compile 1, --compile 2 (CUDA graphs, CUDA only) and eager
--precision bf16, and the step's achieved GFLOP/s (the FLOPs of its forward and backward, counted by
torch.utils.flop_counter) against a torch.mm measured in the same run. --iw K N times the
importance-weighted evaluation (evaluate.evaluate, as the final test evaluation runs it) of the
latent-40 amortized planar-16 model on N images with K samples each.

    python benchmarks/bench_train.py --original PATH/static_flow_vae.py [--iters 200] [--repeats 3]

--original times the original repo's own script, static planar-16 at latent 2, beside the baseline and our loop
with --compile 1 --precision bf16, interleaved --repeats times. PATH/static_flow_vae.py is a copy of the original
(github.com/fmu2/flow-VAE) patched only to run on the CPU: `.cuda()` dropped, the device "cpu", its MNIST root
--data_dir; it runs unchanged in a subprocess in PATH (which needs a plots/ folder), and the end of each Adam step
is recorded, so that the timed iterations are those of its loop alone.
"""
import argparse
import os
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace

import torch
from torch.utils.data import DataLoader
from torchvision import datasets as tv_datasets, transforms

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data_utils  # noqa: E402
import datasets  # noqa: E402
import distributed  # noqa: E402
import static_flow_conv_vae  # noqa: E402
import static_flow_vae  # noqa: E402
import evaluate  # noqa: E402
import train  # noqa: E402
from vae import iw_log_likelihood, training_loss  # noqa: E402


def config(**overrides):
    """The original defaults (--batch_size 128 --layer 2 --hidden_dim 400 --latent_dim 2)."""
    base = dict(dataset='mnist', batch_size=128, layer=2, hidden_dim=400, latent_dim=2, gate=0, flow='none',
                length=16, amortized=False, lr=1e-3, momentum=0.9, decay=0.999, objective='elbo', warmup=0,
                clip_grad=0.0, precision='fp32', base_dim=8, scale=2, res_blocks=1, bottleneck=0, weight_norm=1,
                sync_bn=0, compile=0)
    return SimpleNamespace(**{**base, **overrides})


def make(args, build, fused=False, device='cpu'):
    torch.manual_seed(0)
    model = build(args, datasets.image_shape(args.dataset)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(args.momentum, args.decay), fused=fused)
    return model, optimizer


def compiled(model, mode=None):
    """torch.compile(model) as --compile 1 does it (mode 'reduce-overhead': --compile 2), with dynamo's caches
    emptied first: in one process the same forward compiled for more than 8 models would otherwise fall back
    to eager from the 9th on."""
    torch._dynamo.reset()
    torch._inductor.config.fallback_random = True
    return torch.compile(model, mode=mode)


def sync(device):
    """Wait for the device's queued work (what a timer must do on CUDA)."""
    if torch.device(device).type == 'cuda':
        torch.cuda.synchronize(device)


def train_step_with_host_sync(model, optimizer, params, x, log_det_pre, args, it, net=None):
    """train.train_step as it was before the skip was decided on the device: the non-finite flag is read on
    the host (a sync each step) and a skipped step does not call Adam; returns (loss, applied: bool)."""
    with train.precision_autocast(x.device.type, args.precision):
        terms = (model if net is None else net)(x)
    loss = (training_loss(terms, model.has_flow, args.objective, train.warmup_beta(it, args.warmup))
            - log_det_pre).mean()
    optimizer.zero_grad(set_to_none=True)
    (loss + model.penalty()).backward()
    grads = [p.grad for p in params if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm(grads)
    loss = distributed.mean(loss.detach())
    applied = bool(torch.isfinite(loss + grad_norm))
    if applied:
        if args.clip_grad:
            torch.nn.utils.clip_grads_with_norm_(grads, args.clip_grad, grad_norm)
        optimizer.step()
    return loss, applied


def ours(args, build, images, labels, iters, fused=True, compile=False, precision='fp32', device='cpu',
         host_sync=False):
    """Iterations per second of the loop in train.train (less logging); compile (0, 1, 2), precision: as the
    flags; host_sync: the step and the loop's bookkeeping as they were, with a host sync per step."""
    args = SimpleNamespace(**{**vars(args), 'precision': precision, 'compile': int(compile)})
    model, optimizer = make(args, build, fused, device)
    params = list(model.parameters())
    batches = data_utils.Batches(images, labels, args.batch_size, torch.device(device), seed=0)
    pre = data_utils.Preprocessor(args.dataset)
    net = compiled(model, 'reduce-overhead' if compile == 2 else None) if compile else model
    counters, running = train.StepCounters(torch.device(device)), torch.zeros((), device=device)
    for it in range(1, iters + 1):
        if it == 11:
            sync(device)
            start = time.perf_counter()  # after 10 warm-up steps (and the compilation)
        x, log_det_pre = pre(next(batches)[0])
        if host_sync:
            loss, applied = train_step_with_host_sync(model, optimizer, params, x, log_det_pre, args, it, net)
            if applied:
                running += loss
        else:
            counters.update(*train.train_step(model, optimizer, params, x, log_det_pre, args, it, net))
    sync(device)
    return (iters - 10) / (time.perf_counter() - start)


def baseline(args, build, data_dir, iters):
    """The original repo's loop: DataLoader(ToTensor(), num_workers=2), the step, loss.item() each time."""
    model, optimizer = make(args, build)
    loader = DataLoader(tv_datasets.MNIST(data_dir, train=True, transform=transforms.ToTensor()),
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


# runs the script given as argv[1] with the rest of argv, recording when each Adam step ends; prints its it/s
ORIGINAL_TIMER = """
import runpy, sys, time
import torch
ends, step = [], torch.optim.Adam.step
def timed_step(self, *args, **kwargs):
    out = step(self, *args, **kwargs)
    ends.append(time.perf_counter())
    return out
torch.optim.Adam.step = timed_step
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name='__main__')
print((len(ends) - 10) / (ends[-1] - ends[9]))
"""


def original(script, iters):
    """Iterations per second of the original repo's loop at `script` (see the module's docstring), static
    planar-16 at latent 2, over its iterations after the first 10."""
    argv = [script, '--flow', 'planar', '--length', '16', '--latent_dim', '2', '--max_iter', str(iters)]
    done = subprocess.run([sys.executable, '-c', ORIGINAL_TIMER, *argv], cwd=os.path.dirname(os.path.abspath(script)),
                          capture_output=True, text=True, check=True)
    return float(done.stdout.split()[-1])


def original_report(args, images, labels):
    """--original: the original script, the baseline and our compiled bf16 loop, interleaved --repeats times."""
    cfg, build = config(flow='planar'), static_flow_vae.build_model
    loops = {'original script': lambda: original(args.original, args.iters),
             'baseline': lambda: baseline(cfg, build, args.data_dir, args.iters),
             'ours, compiled bf16': lambda: ours(cfg, build, images, labels, args.iters, compile=True,
                                                 precision='bf16')}
    rates = {label: [] for label in loops}
    for _ in range(args.repeats):   # interleaved, so that the machine's slow spells fall on every loop
        for label, loop in loops.items():
            rates[label].append(loop())
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads; static MLP planar-16, latent 2: it/s over '
          f'{args.iters - 10} iterations, median of {args.repeats} interleaved measurements (range): ratio to the '
          'original script')
    reference = statistics.median(rates['original script'])
    for label, measured in rates.items():
        rate = statistics.median(measured)
        print(f'  {label:<20}{rate:>7.1f} ({min(measured):.1f}-{max(measured):.1f}): {rate / reference:.1f}x')


def step_parts(args, build, images, labels, iters, compile=False, precision='fp32'):
    """Milliseconds per step spent in each part of train.train_step (mean over `iters` steps after 30)."""
    model, optimizer = make(args, build, fused=True)
    params = list(model.parameters())
    batches = data_utils.Batches(images, labels, args.batch_size, 'cpu', seed=0)
    pre = data_utils.Preprocessor('mnist')
    args = SimpleNamespace(**{**vars(args), 'precision': precision})
    net = compiled(model) if compile else model
    parts = dict.fromkeys(('preprocessing', 'forward', 'backward', 'grad norm', 'Adam'), 0.0)
    marks = []   # (part, the time it ended)

    def mark(part):
        marks.append((part, time.perf_counter()))
    for it in range(1, iters + 31):
        marks.clear()
        mark('start')
        x, log_det_pre = pre(next(batches)[0])
        mark('preprocessing')
        train.train_step(model, optimizer, params, x, log_det_pre, args, it, net, mark=mark)
        if it > 30:
            for (_, start), (part, end) in zip(marks, marks[1:]):
                parts[part] += (end - start) * 1e3 / iters
    return parts


def mlp_step_flops(args, pixels=784):
    """Matrix-product FLOPs of one MLP step: forward 2BΣ(in·out), backward twice that, less the
    first layer's input gradient (the data needs none)."""
    enc = [pixels] + [args.hidden_dim] * args.layer + [2 * args.latent_dim]
    dec = [args.latent_dim] + [args.hidden_dim] * args.layer + [pixels]
    macs = sum(a * b for sizes in (enc, dec) for a, b in zip(sizes, sizes[1:]))
    return 6 * args.batch_size * macs - 2 * args.batch_size * pixels * args.hidden_dim


def seconds_per_call(fn, repeats):
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def mm_gflops(n=1024, repeats=20, dtype=torch.float32, device='cpu'):
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)

    def product():
        a @ b
        sync(device)
    return 2 * n ** 3 / seconds_per_call(product, repeats) / 1e9


def step_flops(args, build, images, device='cpu'):
    """FLOPs of one training step's forward and backward (torch.utils.flop_counter: matrix products and
    convolutions), on a batch of `images`."""
    from torch.utils.flop_counter import FlopCounterMode
    model, _ = make(args, build, device=device)
    x, log_det_pre = data_utils.Preprocessor(args.dataset)(images[:args.batch_size].to(device))
    with FlopCounterMode(display=False) as counter:
        loss = (training_loss(model(x), model.has_flow, args.objective) - log_det_pre).mean()
        (loss + model.penalty()).backward()
    return counter.get_total_flops()


def mlp_matmuls_ms(args, dtype=torch.float32, pixels=784, repeats=300):
    """The MLP step's matrix products alone, back to back: per layer the forward, the weight gradient
    and (past the first layer) the input gradient, at the step's shapes (mlp_step_flops counts them)."""
    b = args.batch_size
    sizes = [([pixels] + [args.hidden_dim] * args.layer + [2 * args.latent_dim]),
             ([args.latent_dim] + [args.hidden_dim] * args.layer + [pixels])]
    layers = [(torch.randn(o, i, dtype=dtype), torch.randn(o, dtype=dtype), torch.randn(b, i, dtype=dtype),
               torch.randn(b, o, dtype=dtype), first and k == 0)
              for first, dims in zip((True, False), sizes) for k, (i, o) in enumerate(zip(dims, dims[1:]))]

    def products():
        for weight, bias, inputs, grad, first_layer in layers:
            torch.addmm(bias, inputs, weight.t())
            grad.t() @ inputs
            if not first_layer:
                grad @ weight
    return 1e3 * seconds_per_call(products, repeats)


def adam_ms(args, build, repeats=300):
    """One fused Adam step over the model's parameters alone."""
    model, optimizer = make(args, build, fused=True)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    return 1e3 * seconds_per_call(optimizer.step, repeats)


def iw_seconds(k, n, device, data_dir=None, batch_size=None):
    """Seconds evaluate.evaluate takes for the test ELBO and IW log-likelihood with K = k of n MNIST test
    images (the real ones under data_dir, else random ones) under the mnist40 model (MLP 2x400, latent 40,
    amortized planar-16), and the IW estimate; as the final test evaluation runs it."""
    cfg = config(latent_dim=40, flow='planar', amortized=True)
    model, _ = make(cfg, static_flow_vae.build_model, device=device)
    images, pre = data_utils.mnist_test_set(data_dir, n)
    images = images.to(device)
    kw = {'iw_batch': batch_size} if batch_size else {}
    evaluate.evaluate(model, pre, images[:min(n, 100)], iw_samples=k, **kw)   # warm-up
    sync(device)
    start = time.perf_counter()
    metrics = evaluate.evaluate(model, pre, images, iw_samples=k, **kw)
    sync(device)
    return time.perf_counter() - start, metrics['test_log_px_iw']


@torch.no_grad()
def iw_images_per_second(args, build, images, k=1000, n=200):
    model, _ = make(args, build)
    model.eval()
    x, _ = data_utils.Preprocessor('mnist')(images[:n])
    start = time.perf_counter()
    for s in range(0, n, evaluate.IW_BATCH):
        iw_log_likelihood(model, x[s:s + evaluate.IW_BATCH], k)
    return n / (time.perf_counter() - start)


VARIANTS = {   # the step table's columns: ours() keyword arguments
    'eager+sync': dict(host_sync=True), 'eager': {}, 'compiled': dict(compile=1), 'graphs': dict(compile=2),
    'bf16': dict(precision='bf16')}


def steps_report(args, images, labels):
    """The step table of --steps_only on args.device (see the module's docstring)."""
    device, cuda = args.device, args.device == 'cuda'
    n = args.mm_size or (8192 if cuda else 1024)
    mm = {dtype: mm_gflops(n, dtype=dtype, device=device) for dtype in (torch.float32, torch.bfloat16)}
    name = torch.cuda.get_device_name() if cuda else f'CPU, {torch.get_num_threads()} threads'
    print(f'torch {torch.__version__}, {name}; torch.mm {n}^3: {mm[torch.float32]:.0f} GFLOP/s float32, '
          f'{mm[torch.bfloat16]:.0f} GFLOP/s bfloat16')
    cifar = torch.randint(0, 256, (max(1024, 2 * args.batch_size), 3, 32, 32), dtype=torch.uint8)
    b, mlp, conv = args.batch_size, static_flow_vae.build_model, static_flow_conv_vae.build_model
    rows = [('static MLP planar-16, latent 2', config(flow='planar', batch_size=b), mlp, images, labels),
            ('amortized MLP planar-16, latent 40', config(flow='planar', amortized=True, latent_dim=40, batch_size=b),
             mlp, images, labels),
            ('conv defaults, 32x32x3 (bd32 sc3 lt32)', config(dataset='cifar10', base_dim=32, scale=3, latent_dim=32,
                                                             length=8, batch_size=b),
             conv, cifar, torch.zeros(len(cifar), dtype=torch.int64))]
    if args.hidden_dim:
        rows = [(label, SimpleNamespace(**{**vars(cfg), 'hidden_dim': args.hidden_dim,
                                           'base_dim': min(cfg.base_dim, args.hidden_dim)}), build, x, y)
                for label, cfg, build, x, y in rows]
    if args.rows:
        rows = [rows[int(i)] for i in args.rows.split(',')]
    variants = [v for v in args.variants.split(',') if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise SystemExit(f'--variants: unknown {sorted(unknown)}; choose from {", ".join(VARIANTS)}')
    print(f'\nit/s at batch {b}, {args.iters - 10} timed iterations each; GFLOP/s of the fastest variant '
          '(forward + backward FLOPs counted by torch.utils.flop_counter)')
    print(f'{"configuration":<40}' + ''.join(f'{v:>12}' for v in variants) + f'{"MFLOP":>8}{"GFLOP/s":>9}'
          f'{"% mm":>6}{"sync gain":>10}')
    for label, cfg, build, x, y in rows if variants else []:
        rates = {}
        for variant in variants:
            if variant == 'graphs' and not cuda:
                continue   # --compile 2 is CUDA only
            rates[variant] = ours(cfg, build, x, y, args.iters, device=device, **VARIANTS[variant])
        flops = step_flops(cfg, build, x, device)
        best = max(rates.values())
        gain = f'{rates["eager"] / rates["eager+sync"]:.2f}x' if {'eager', 'eager+sync'} <= rates.keys() else '-'
        print(f'{label:<40}' + ''.join(f'{rates[v]:>12.1f}' if v in rates else f'{"-":>12}' for v in variants)
              + f'{flops / 1e6:>8.1f}{best * flops / 1e9:>9.1f}{100 * best * flops / 1e9 / mm[torch.float32]:>5.0f}%'
              + f'{gain:>10}', flush=True)
    if args.sync_repeats:
        label, cfg = 'amortized MLP planar-16, latent 40', config(flow='planar', amortized=True, latent_dim=40,
                                                                  batch_size=b, hidden_dim=args.hidden_dim or 400)
        measured = {'eager+sync': [], 'eager': []}
        for _ in range(args.sync_repeats):   # interleaved, so that slow spells of the machine fall on both
            for variant in measured:
                measured[variant].append(ours(cfg, mlp, images, labels, args.iters, device=device,
                                              **VARIANTS[variant]))
        with_sync, without = (statistics.median(measured[v]) for v in ('eager+sync', 'eager'))
        print(f'\nhost sync, {label}, median of {args.sync_repeats} interleaved: eager with a host sync per '
              f'step {with_sync:.1f} it/s, without {without:.1f} it/s: {without / with_sync:.2f}x')
    if args.iw:
        k, n = args.iw
        seconds, log_px = iw_seconds(k, n, device, args.data_dir if args.real_test_images else None)
        print(f'\nIW evaluation, K={k}, {n} test images, mnist40 amortized planar-16 (untrained): {seconds:.2f} s '
              f'({n / seconds:.0f} images/s; IW log p(x) {log_px:.1f})')


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--iters', type=int, default=200, help='timed iterations per configuration (+10 warm-up)')
    p.add_argument('--repeats', type=int, default=3,
                   help='measurements of each variant of the static planar-16 step, whose median is reported')
    p.add_argument('--data_dir', default=datasets.default_data_dir())
    p.add_argument('--device', default='cpu', choices=('cpu', 'cuda'), help='--steps_only: where the steps run')
    p.add_argument('--steps_only', action='store_true', help='only the step table on --device (docstring)')
    p.add_argument('--variants', default=','.join(VARIANTS), help='--steps_only: the columns, comma-separated')
    p.add_argument('--rows', default='', help='--steps_only: the configurations, comma-separated indices '
                                              '(0 static latent 2, 1 amortized latent 40, 2 conv; default all)')
    p.add_argument('--batch_size', type=int, default=128, help='--steps_only: the batch')
    p.add_argument('--hidden_dim', type=int, default=0,
                   help='--steps_only: a smaller hidden_dim (and conv base_dim) for a quick check (0: the defaults)')
    p.add_argument('--mm_size', type=int, default=0, help='--steps_only: n of the n^3 torch.mm (0: 8192 on CUDA, '
                                                          '1024 on the CPU)')
    p.add_argument('--sync_repeats', type=int, default=0,
                   help='--steps_only: also this many interleaved measurements of the latent-40 step with and '
                        'without the host sync, whose medians are compared')
    p.add_argument('--iw', type=int, nargs=2, metavar=('K', 'N'), help='--steps_only: time IW evaluation, K samples, '
                                                                      'N test images')
    p.add_argument('--original', metavar='SCRIPT', help="only the original repo's static_flow_vae.py at SCRIPT, "
                                                        'patched to run on the CPU, beside ours (docstring)')
    p.add_argument('--real_test_images', type=int, default=1, choices=(0, 1),
                   help='--iw: the MNIST test images under --data_dir (0: random ones)')
    args = p.parse_args()
    images, labels = datasets.load_split('mnist', args.data_dir, train=True, log=lambda *_: None)
    if args.steps_only:
        return steps_report(args, images, labels)
    if args.original:
        return original_report(args, images, labels)
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads; torch.mm 1024^3: {mm_gflops():.1f} GFLOP/s')

    mlp, conv = static_flow_vae.build_model, static_flow_conv_vae.build_model
    rows = [('static MLP, no flow', config(), mlp)]
    rows += [(f'static MLP, {k}-16', config(flow=k), mlp) for k in ('planar', 'radial', 'householder', 'nice')]
    rows += [(f'dynamic MLP, {k}-16', config(flow=k, amortized=True), mlp) for k in ('planar', 'radial', 'householder', 'nice')]
    rows += [('conv (base_dim 8, scale 2), planar-16', config(flow='planar'), conv)]
    print('\nit/s; ratios to the baseline (the original repo\'s loop)')
    print(f'{"configuration":<40}{"before":>8}{"now":>8}{"compiled":>10}{"+bf16":>8}{"baseline":>10}'
          f'{"now/base":>10}{"compiled/base":>15}{"+bf16/base":>12}')
    for name, cfg, build in rows:
        before = ours(cfg, build, images, labels, args.iters, fused=False)
        now = ours(cfg, build, images, labels, args.iters)
        compiled = ours(cfg, build, images, labels, args.iters, compile=True)
        bf16 = ours(cfg, build, images, labels, args.iters, compile=True, precision='bf16')
        slow = baseline(cfg, build, args.data_dir, args.iters)
        print(f'{name:<40}{before:>8.1f}{now:>8.1f}{compiled:>10.1f}{bf16:>8.1f}{slow:>10.1f}{now / slow:>9.1f}x'
              f'{compiled / slow:>14.1f}x{bf16 / slow:>11.1f}x', flush=True)

    cfg = config(flow='planar')
    flops = mlp_step_flops(cfg)
    limit = mm_gflops()
    print(f'\nstatic MLP planar-16: {flops / 1e6:.0f} MFLOP of matrix products per step; torch.mm '
          f'{limit:.1f} GFLOP/s, a limit of {limit * 1e9 / flops:.0f} it/s')
    variants = {'now': (False, 'fp32'), 'compiled': (True, 'fp32'), 'compiled bf16': (True, 'bf16')}
    rates = {label: [] for label in variants}
    for _ in range(args.repeats):   # interleaved, so that the machine's slow spells fall on every variant
        for label, (compile, precision) in variants.items():
            rates[label].append(ours(cfg, mlp, images, labels, args.iters, compile=compile, precision=precision))
    print(f'  median of {args.repeats} interleaved measurements (range):')
    for label, measured in rates.items():
        rate = statistics.median(measured)
        print(f'  {label:<14}{rate:>7.1f} it/s ({min(measured):.1f}-{max(measured):.1f}) = {rate * flops / 1e9:.1f} '
              f'GFLOP/s, {100 * rate * flops / 1e9 / limit:.0f}% of torch.mm')
    adam = adam_ms(cfg, mlp)
    print(f'the floor: the fused Adam kernel alone takes {adam:.2f} ms; the step\'s matrix products alone, '
          'back to back, take:')
    for dtype, mm_rate in ((torch.float32, limit), (torch.bfloat16, mm_gflops(dtype=torch.bfloat16))):
        mm = mlp_matmuls_ms(cfg, dtype)
        print(f'  {str(dtype)[6:]:<9}{mm:.2f} ms = {flops / mm / 1e6:.1f} GFLOP/s (torch.mm 1024^3 in '
              f'{str(dtype)[6:]}: {mm_rate:.1f}); with Adam at most {1e3 / (mm + adam):.0f} it/s = '
              f'{100 * flops / (mm + adam) / 1e6 / limit:.0f}% of the float32 torch.mm')
    print('\nwhere the time goes: ms per step (preprocessing, forward, backward, grad norm, Adam, total)')
    for label, flow, compile, precision in (('no flow, eager', 'none', False, 'fp32'),
                                            ('planar-16, eager', 'planar', False, 'fp32'),
                                            ('planar-16, compiled', 'planar', True, 'fp32'),
                                            ('planar-16, comp. bf16', 'planar', True, 'bf16')):
        parts = step_parts(config(flow=flow), mlp, images, labels, args.iters, compile, precision)
        print(f'  {label:<22}' + ''.join(f'{v:>7.2f}' for v in parts.values()) + f'{sum(parts.values()):>8.2f}')
    print(f'IW evaluation, K=1000, static MLP planar-16: '
          f'{iw_images_per_second(cfg, mlp, images):.1f} test images/s')


if __name__ == '__main__':
    main()
