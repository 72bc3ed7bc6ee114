"""The 40-D amortized training step, part by part, for the flows whose context layer is large.

    python benchmarks/bench_amortized.py [--rounds 5] [--iters 10] [--variants planar iaf ...] [--modes ...]
                                         [--steps_only] [--device cuda]
    python benchmarks/bench_amortized.py --profile --variants triangular --modes compile+bf16

The model is the mnist40 MLP (2 x 400, latent 40, flows of length 16, batch 128, random binary images), on
one thread. For each variant (amortized planar, IAF, sylvester-orthogonal at M = 8, 16, 40,
sylvester-householder with H = 8, sylvester-triangular; amortized NICE, whose context enters its coupling nets,
has its whole step timed only) and each mode (eager float32, --compile 1, --compile 1 --precision bf16) it
times, forward and backward, each part of the step on its own:

    encoder       x -> (mean, log_var, context)
    context       the context layers: context (B, 400) -> every step's parameters (a network: bfloat16 under bf16)
    R, R~, Q      Sylvester only: the steps' matrices from their parameters
    flow          the steps' arithmetic from their parameters (R, R~, Q included), float32 in every mode
    likelihood    the decoder and log p(x|z_K)
    Adam          the fused Adam step over all parameters, and over the context layers' alone

each compiled on its own in the compiled modes. Beside each part, in each mode, its matrix products alone: the
products it ran (recorded as it ran them, eagerly, in the mode's precision), replayed on the same tensors, which
is what the part costs at these shapes with no other work; and its floor at large-product rates: the part's
FLOPs (torch.utils.flop_counter: matrix products) at this CPU's torch.mm rate in float32 and bfloat16,
measured in the same run at the context layer's shape. Then the whole training step (train.train_step) of every
variant in each mode, timed in interleaved rounds so that a change of load hits all variants alike, its
it/s as a ratio to amortized planar's, and the hours a full-budget run (390,000 iterations) takes on one
core at that speed. With --device cuda (--steps_only) the whole steps run on the GPU, and the hours are those of
one GPU. With --profile it instead lists, for each variant, where its whole step's time goes (torch.profiler,
each inductor kernel by name).
"""
import argparse
import os
import statistics
import sys
import time
from types import SimpleNamespace

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import static_flow_vae  # noqa: E402
import train  # noqa: E402
from flows import IAFStep, SylvesterFlow, full_precision  # noqa: E402

BATCH, LATENT, HIDDEN, LENGTH = 128, 40, 400, 16
FULL_BUDGET = 390_000
VARIANTS = {'planar': ('planar', 0), 'nice': ('nice', 0), 'iaf': ('iaf', 0),
            'orthogonal-8': ('sylvester-orthogonal', 8), 'orthogonal-16': ('sylvester-orthogonal', 16),
            'orthogonal-40': ('sylvester-orthogonal', 40), 'householder-8': ('sylvester-householder', 0),
            'triangular': ('sylvester-triangular', 0)}
WHOLE_STEP_ONLY = ('nice',)   # no context layer to time apart
MODES = {'eager': (0, 'fp32'), 'compile': (1, 'fp32'), 'compile+bf16': (1, 'bf16')}


def flags(variant, mode):
    flow, m = VARIANTS[variant]
    compile_, precision = MODES[mode]
    return SimpleNamespace(dataset='mnist', latent_dim=LATENT, hidden_dim=HIDDEN, layer=2, gate=0, flow=flow,
                           length=LENGTH, amortized=True, sylvester_m=m, householders=8, precision=precision,
                           compile=compile_, warmup=0, objective='elbo', clip_grad=0.0, lr=1e-3)


def seconds(fn, iters):
    """Median seconds of fn() over `iters` calls, after 2 warm-up calls (which compile)."""
    fn(), fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def mm_rates(n):
    """GFLOP/s of torch.mm at the context layer's shape (B, 400) @ (400, n), float32 and bfloat16."""
    rates = {}
    for dtype in (torch.float32, torch.bfloat16):
        a, b = torch.randn(BATCH, HIDDEN, dtype=dtype), torch.randn(HIDDEN, n, dtype=dtype)
        rates[dtype] = 2 * BATCH * HIDDEN * n / seconds(lambda: a @ b, 20) / 1e9
    return rates


def mask_store_us():
    """Microseconds of a compiled x <= 0 on (B, 160), stored as booleans and as floats: what a ReLU's saved mask
    costs under torch.compile (flows.relu)."""
    x = torch.randn(BATCH, 160)
    as_bool, as_float = torch.compile(lambda x: x <= 0), torch.compile(lambda x: (x <= 0).float())
    return tuple(1e6 * seconds(lambda f=f: f(x), 200) for f in (as_bool, as_float))


def context_layers(flow):
    """Each step's context layer (FlowStep.to_theta, IAFStep.context)."""
    return [step.context if isinstance(step, IAFStep) else step.to_theta for step in flow.steps]


def backward_of(forward, inputs):
    """fn() running forward(*inputs) and the backward of the sum of its outputs, each against a fixed random
    tensor (so that every output's gradient is dense)."""
    with torch.no_grad():
        weights = [torch.randn_like(out, dtype=torch.float32) for out in forward(*inputs)]

    def fn():
        for x in inputs:
            x.grad = None
        sum((out.float() * w).sum() for out, w in zip(forward(*inputs), weights)).backward()
    return fn


def parts(model, x, precision):
    """{part: (forward, inputs)}: the step's pieces as functions of leaf tensors, run as the model runs them."""
    low = torch.autocast('cpu', dtype=torch.bfloat16, enabled=precision == 'bf16')
    with torch.no_grad():
        mean, log_var, context = model.encode(x)
        z0 = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
        thetas = [layer(context) for layer in context_layers(model.flow)]
    leaf = lambda t: t.detach().float().requires_grad_()   # noqa: E731
    context, z0, thetas = leaf(context), leaf(z0), [leaf(t) for t in thetas]

    def encoder(x):
        with low:
            return model.encode(x)

    def context_part(context):
        with low:
            return [layer(context).float() for layer in context_layers(model.flow)]

    def flow_part(z, *thetas):
        with full_precision(z):
            log_det = z.new_zeros(z.shape[0])
            for step, theta in zip(model.flow.steps, thetas):
                z, step_log_det = step.transform(z, theta)
                log_det = log_det + step_log_det
            return z, log_det

    def likelihood(z):
        with low:
            decoded = model.decode(z).float()
        return [model.log_likelihood(x, decoded)]

    out = {'encoder': (encoder, [x]), 'context': (context_part, [context])}
    if isinstance(model.flow.steps[0], SylvesterFlow):
        def matrices(*thetas):
            with full_precision(thetas[0]):
                return [t for step, theta in zip(model.flow.steps, thetas) for t in step.matrices(theta)
                        if t is not None]
        out['R, R~, Q'] = (matrices, thetas)
    out['flow'] = (flow_part, [z0, *thetas])
    out['likelihood'] = (likelihood, [leaf(z0)])
    return out


def adam_step(params):
    """fn() taking one fused Adam step on `params`, with fixed random gradients."""
    optimizer = torch.optim.Adam(params, lr=1e-3, fused=True)
    for p in params:
        p.grad = torch.randn_like(p)
    return optimizer.step


def flops(fn):
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


class RecordProducts(TorchDispatchMode):
    """Keeps every matrix product run under it, with its arguments, as `calls`."""
    OPS = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default,
           torch.ops.aten.baddbmm.default)

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.OPS:
            self.calls.append((func, [a.detach() if torch.is_tensor(a) else a for a in args], kwargs or {}))
        return func(*args, **(kwargs or {}))


def products_alone(fn):
    """fn() replaying the matrix products that one call of `fn` runs, on the tensors it ran them on."""
    recorder = RecordProducts()
    with recorder:
        fn()

    def replay():
        for func, args, kwargs in recorder.calls:
            func(*args, **kwargs)
    return replay


def profile(variant, modes, iters, rates):
    """{mode: {part: ms}}, {mode: {part: ms of its matrix products alone}} and {part: (floor ms fp32, floor ms
    bf16)} of one variant."""
    table, alone, floors = {}, {}, {}
    for mode in modes:
        args = flags(variant, mode)
        torch.manual_seed(0)
        model = static_flow_vae.build_model(args, (1, 28, 28))
        x = (torch.rand(BATCH, 1, 28, 28) < 0.3).float()
        table[mode], alone[mode] = {}, {}
        for name, (forward, inputs) in parts(model, x, args.precision).items():
            fn = backward_of(torch.compile(forward) if args.compile else forward, inputs)
            table[mode][name] = 1e3 * seconds(fn, iters)
            alone[mode][name] = 1e3 * seconds(products_alone(backward_of(forward, inputs)), iters)
            if name not in floors:
                count = flops(backward_of(forward, inputs))
                floors[name] = tuple(1e3 * count / rates[d] / 1e9 for d in (torch.float32, torch.bfloat16))
        context_params = [p for layer in context_layers(model.flow) for p in layer.parameters()]
        table[mode]['Adam'] = 1e3 * seconds(adam_step(list(model.parameters())), iters)
        table[mode]['Adam, context'] = 1e3 * seconds(adam_step(context_params), iters)
        torch._dynamo.reset()
    return table, alone, floors


def training_step(variant, mode, device):
    """train.train_step of `variant` in `mode` on `device` as a function of no arguments, compiled (2 calls)."""
    args = flags(variant, mode)
    torch.manual_seed(0)
    model = static_flow_vae.build_model(args, (1, 28, 28)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    params = list(model.parameters())
    net = torch.compile(model) if args.compile else model
    x = (torch.rand(BATCH, 1, 28, 28, device=device) < 0.3).float()
    zero = torch.zeros(BATCH, device=device)

    def step():
        train.train_step(model, optimizer, params, x, zero, args, 1, net)[0].item()
    step(), step()
    return step


def whole_steps(variants, modes, rounds, iters, device):
    """{mode: {variant: it/s}}: train.train_step on `device`, the variants interleaved in each of `rounds` rounds
    (each step ends in a host sync: its loss is read)."""
    steps = {(mode, variant): training_step(variant, mode, device) for mode in modes for variant in variants}
    times = {key: [] for key in steps}
    for _ in range(rounds):
        for key, step in steps.items():
            times[key].append(seconds(step, iters))
    return {mode: {v: 1 / statistics.median(times[mode, v]) for v in variants} for mode in modes}


def profile_whole_step(variant, mode, steps, rows=15):
    """The whole step as torch.profiler sees it: the `rows` operations and inductor kernels with the most time
    of their own, in ms per step, over `steps` steps."""
    torch._inductor.config.cpp.enable_kernel_profile = True     # name each compiled kernel in the profile
    step = training_step(variant, mode, 'cpu')
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    total = (time.perf_counter() - start) / steps
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:rows]
    print(f'\n{variant}, {mode}: {1e3 * total:.1f} ms per step under the profiler; time of its own, ms per step')
    print(f'{"ms":>7}{"calls":>7}  operation or kernel (graph_*: inductor\'s; fused_<ops> names the ops it fuses)')
    for e in events:
        print(f'{e.self_cpu_time_total / 1e3 / steps:>7.1f}{e.count / steps:>7.0f}  {e.key[:110]}')


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS),
                   help='which variants (default: all; planar is always included, for the ratios)')
    p.add_argument('--iters', type=int, default=10, help='timed calls per part, and steps per round (default 10)')
    p.add_argument('--rounds', type=int, default=5, help='interleaved rounds of the whole-step timing (default 5)')
    p.add_argument('--modes', nargs='+', default=list(MODES), choices=list(MODES), help='default: all three')
    p.add_argument('--steps_only', action='store_true', help='time the whole step only, not its parts')
    p.add_argument('--profile', action='store_true', help='instead: where the whole step of each variant '
                                                              '(in the first mode given) spends its time')
    p.add_argument('--device', default='cpu', help='where the whole steps run (default cpu; another needs '
                                                   '--steps_only)')
    args = p.parse_args()
    device = torch.device(args.device)
    if args.profile and (args.steps_only or device.type != 'cpu'):
        p.error('--profile profiles the step on the CPU: leave out --steps_only and --device')
    if device.type != 'cpu' and not args.steps_only:
        p.error(f'--device {args.device} times the whole steps only: add --steps_only')
    torch.set_num_threads(1)
    torch._dynamo.config.recompile_limit = 64             # one forward compiled for many models in one process
    torch._dynamo.config.accumulated_recompile_limit = 4096
    torch._inductor.config.fallback_random = True
    variants = ['planar'] + [v for v in args.variants if v != 'planar']
    where = (torch.cuda.get_device_name(device) if device.type == 'cuda' else device.type) \
        if device.type != 'cpu' else f'1 thread on {os.cpu_count()} CPUs'
    print(f'torch {torch.__version__}, {where}, load average {os.getloadavg()[0]:.1f}; '
          f'MLP 2x{HIDDEN}, latent {LATENT}, length {LENGTH}, batch {BATCH}')
    if args.profile:
        for variant in variants:
            profile_whole_step(variant, args.modes[0], args.iters)
        return
    if device.type == 'cpu':
        print('compiled x <= 0 on ({}, 160), stored as booleans: {:.0f} us, as floats: {:.0f} us'.format(
            BATCH, *mask_store_us()))
    if not args.steps_only:
        rates = mm_rates(1680)
        print(f'torch.mm ({BATCH}x{HIDDEN}) @ ({HIDDEN}x1680): {rates[torch.float32]:.0f} GFLOP/s float32, '
              f'{rates[torch.bfloat16]:.0f} bfloat16')
    for variant in [] if args.steps_only else [v for v in variants if v not in WHOLE_STEP_ONLY]:
        table, alone, floors = profile(variant, args.modes, args.iters, rates)
        if variant == variants[0]:
            print(f'\nms per part, forward + backward (median of {args.iters}); alone: its matrix products alone, '
                  'in that mode; floor: its matrix products at those rates')
            print(f'{"variant":<15}{"part":<15}' + ''.join(f'{m:>14}{"alone":>8}' for m in args.modes)
                  + f'{"floor fp32":>12}{"floor bf16":>12}')
        for name in table[args.modes[0]]:
            floor = ''.join(f'{f:>12.1f}' for f in floors[name]) if name in floors else f'{"":>24}'
            times = ''.join(f'{table[m][name]:>14.1f}' + (f'{alone[m][name]:>8.1f}' if name in alone[m] else f'{"":>8}')
                            for m in args.modes)
            print(f'{variant:<15}{name:<15}' + times + floor, flush=True)
    speeds = whole_steps(variants, args.modes, args.rounds, args.iters, device)
    print(f'\nwhole training step, it/s (median over {args.rounds} interleaved rounds of {args.iters} steps); '
          f'ratio to amortized planar; hours of one {"core" if device.type == "cpu" else device.type} for '
          f'{FULL_BUDGET:,} iterations')
    print(f'{"variant":<15}' + ''.join(f'{m:>14}{"ratio":>7}{"hours":>7}' for m in args.modes))
    for variant in variants:
        print(f'{variant:<15}' + ''.join(f'{speeds[m][variant]:>14.1f}{speeds[m][variant] / speeds[m]["planar"]:>7.2f}'
                                         f'{FULL_BUDGET / speeds[m][variant] / 3600:>7.1f}' for m in args.modes))
    print(f'\nload average at the end {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
    main()
