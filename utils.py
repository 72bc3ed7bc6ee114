"""What the three training scripts share: flags, output names, checkpoints, the loop, evaluation.

A script defines its model and its own flags, then calls `main(parser, SCRIPT, build_model, ...)`.
Under torchrun the same loop runs data-parallel (distributed.py): --batch_size is the global batch,
evaluation is split over the ranks, and only rank 0 writes files.
Exit codes: 0 done, 2 bad input (one line on stderr), 3 training diverged (non-finite steps),
128 + signal number when stopped by SIGINT/SIGTERM after saving a resumable checkpoint.
"""
import argparse
import contextlib
import json
import math
import os
import shlex
import signal
import sys
import tempfile
import time
import warnings

import torch
from tqdm import tqdm

import data_utils
import distributed
import plotting
from flows import FLOW_KINDS, HOUSEHOLDERS
from vae import OBJECTIVES, elbo, iw_log_likelihood, training_loss

TEST_BINARIZATION_SEED = 0   # the binarized MNIST test set is drawn once, the same for every run
VAL_BINARIZATION_SEED = 1    # and so is the validation set (the last --val_size training images)
EVAL_SEED = 1234             # noise of test-time evaluation (reparameterization, dequantization)
EVAL_BATCH = 500             # test images per ELBO batch
IW_BATCH = 100               # test images per importance-weighted batch (their K samples are chunked)
# flags that may change when a run is resumed; every other flag defines the run and comes from the checkpoint
RESUMABLE = {'resume', 'eval_only', 'max_iter', 'out_dir', 'data_dir', 'device', 'log_every',
             'sample_every', 'ckpt_every', 'iw_samples', 'max_bad_steps', 'lr', 'clip_grad',
             'sample_size', 'sync_bn', 'compile', 'precision', 'eval_every'}
LR_SCHEDULES = ('none', 'cosine')
PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16}   # --precision: the autocast dtype of the training forward
FUSED_ADAM_DEVICES = ('cpu', 'cuda')   # where torch has a fused Adam kernel: one kernel for all parameters
OUTPUT_DIRS = ('samples', 'reconstructions', 'plots', 'checkpoints', 'logs')
# what a checkpoint keeps of the run besides the model: losses, skipped steps, the best validation ELBO so far
# (its iteration and the evaluations since), whether the run stopped early, and the wall time spent training
RUN_STATE = ('history', 'skipped', 'best', 'stopped_early', 'wall_seconds')


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


class Diverged(Exception):
    """Too many consecutive non-finite steps: printed as one line, exit code 3."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block)."""

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def base_parser(description, latent_dim, max_iter):
    """The flags every script has (the original repo's names and defaults, plus ours)."""
    p = Parser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('--dataset', default='mnist', choices=data_utils.DATASETS, help='dataset')
    p.add_argument('--data_dir', default=data_utils.default_data_dir(),
                   help='data root ($FLOW_VAE_DATA, else ./data); missing files are fetched')
    p.add_argument('--binarize', default='dynamic', choices=('dynamic', 'static', 'none'),
                   help='MNIST only: a fresh Bernoulli draw per use (dynamic), one fixed draw '
                        '(static), or grey levels with a BCE loss (none: the original repo; '
                        'not a normalized likelihood, so its nats are not log p(x))')
    p.add_argument('--flip', type=int, default=None, choices=(0, 1),
                   help='random horizontal flips of training images (default: on for cifar10 only)')
    p.add_argument('--batch_size', type=int, default=128,
                   help='minibatch size; under torchrun the global batch, split evenly over the processes')
    p.add_argument('--latent_dim', type=int, default=latent_dim, help='dimension of z')
    p.add_argument('--flow', default='none', choices=FLOW_KINDS, help='normalizing flow on z')
    p.add_argument('--length', type=int, default=8, help='number of flow steps')
    p.add_argument('--sylvester_m', type=int, default=0,
                   help='sylvester-orthogonal: columns M of each Q, 1 to --latent_dim (0: --latent_dim)')
    p.add_argument('--householders', type=int, default=HOUSEHOLDERS,
                   help='sylvester-householder: Householder reflections per Q')
    p.add_argument('--objective', default='elbo', choices=OBJECTIVES,
                   help="'elbo': the flow ELBO with the prior at z_K; 'seed': the original "
                        "repo's KL(q0||p) at z0 minus the log-det (to reproduce its figures; not a bound)")
    p.add_argument('--warmup', type=int, default=0,
                   help='KL warm-up: the KL terms are scaled by beta rising from 0 to 1 over this many iterations')
    p.add_argument('--max_iter', type=int, default=max_iter, help='training iterations')
    p.add_argument('--sample_size', type=int, default=64, help='images in each sample grid')
    p.add_argument('--lr', type=float, default=1e-3, help='Adam learning rate')
    p.add_argument('--momentum', type=float, default=0.9, help='Adam beta1')
    p.add_argument('--decay', type=float, default=0.999, help='Adam beta2')
    p.add_argument('--clip_grad', type=float, default=0.0,
                   help='clip the gradient norm to this value (0: no clipping)')
    p.add_argument('--lr_schedule', default='none', choices=LR_SCHEDULES,
                   help='cosine: the learning rate falls from --lr to 0 over --max_iter iterations '
                        '(half a cosine, Loshchilov & Hutter 2017); none: constant')
    p.add_argument('--max_bad_steps', type=int, default=10,
                   help='stop after this many consecutive non-finite steps (each one is skipped)')
    p.add_argument('--seed', type=int, default=0, help='random seed')
    p.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda', 'mps'),
                   help='auto picks CUDA, then MPS, then the CPU')
    p.add_argument('--out_dir', default='.', help='where samples/, plots/, checkpoints/, ... go')
    p.add_argument('--log_every', type=int, default=100, help='log the running loss every N iterations')
    p.add_argument('--sample_every', type=int, default=1000, help='save samples and reconstructions every N iterations')
    p.add_argument('--val_size', type=int, default=0,
                   help='hold out the last N training images (the same whatever --seed) as a validation set; '
                        'then the periodic evaluation uses them, the best model is kept and the test set is '
                        'touched only by the final evaluation')
    p.add_argument('--eval_every', type=int, default=1000,
                   help='compute the validation ELBO (the test ELBO with --val_size 0) every N iterations')
    p.add_argument('--patience', type=int, default=0,
                   help='with --val_size: stop after this many evaluations without a better validation ELBO '
                        '(0: never stop early)')
    p.add_argument('--ckpt_every', type=int, default=1000, help='save a checkpoint every N iterations')
    p.add_argument('--resume', default=None, metavar='PATH', help='continue from this checkpoint')
    p.add_argument('--eval_only', action='store_true', help='only evaluate the --resume checkpoint')
    p.add_argument('--compile', type=int, default=0, choices=(0, 1),
                   help='1: run the training forward through torch.compile (fuses the flow steps; compiling '
                        'takes about half a minute on a 2-core CPU; on the CPU it needs a C++ compiler)')
    p.add_argument('--precision', default='fp32', choices=tuple(PRECISIONS),
                   help="bf16: the training forward under torch.autocast, so the encoder's and decoder's matrix "
                        'products run in bfloat16; the flow, the densities and the loss stay float32, and '
                        'evaluation and every reported number are float32. Fast on CPUs with AVX512-BF16 or AMX '
                        'and on GPUs with bf16 tensor cores, slower than fp32 on other CPUs')
    p.add_argument('--iw_samples', type=int, default=1000,
                   help='K, importance samples per test image for the log-likelihood estimate '
                        '(0: skip it, e.g. to train on one device and --eval_only on another)')
    return p


def flow_options(args):
    """build_flow's keyword options from the flags (a config saved before these flags gets their defaults)."""
    return dict(sylvester_m=getattr(args, 'sylvester_m', 0) or None,
                householders=getattr(args, 'householders', HOUSEHOLDERS))


def explicit_flags(parser, argv):
    """The dests of the flags written on the command line (to tell them from defaults)."""
    given = {a.split('=', 1)[0] for a in argv if a.startswith('--')}
    options = {o for act in parser._actions for o in act.option_strings}
    # argparse also accepts an unambiguous prefix (--latent for --latent_dim): resolve it the same way
    given |= {o for g in given - options for o in options if o.startswith(g)}
    return {act.dest for act in parser._actions if given & set(act.option_strings)}


def run_prefix(args, arch):
    """The original repo's file prefix, e.g. mnist_bs128_ly2_hd400_lt2_gt0__planar_len16.

    `arch` is the script's part (e.g. 'ly2_hd400_lt2_gt0'); dynamic_flow_vae.py's runs, the seed
    objective and warm-up get a suffix so that no two runs share a prefix.
    """
    prefix = f'{args.dataset}_bs{args.batch_size}_{arch}_'
    if args.flow != 'none':
        prefix += f'_{args.flow}_len{args.length}'
    if args.flow == 'sylvester-orthogonal' and args.sylvester_m:
        prefix += f'_m{args.sylvester_m}'
    if args.flow == 'sylvester-householder':
        prefix += f'_h{args.householders}'
    if getattr(args, 'amortized', False):
        prefix += '_amortized'
    if args.objective != 'elbo':
        prefix += f'_{args.objective}obj'
    if args.warmup:
        prefix += f'_wu{args.warmup}'
    return prefix


def check_args(args, image_shape):
    """Refuse flag values that cannot work together, before any data is touched."""
    for flag in ('batch_size', 'latent_dim', 'max_iter', 'sample_size', 'log_every', 'sample_every',
                 'eval_every', 'ckpt_every', 'iw_samples', 'max_bad_steps', 'length', 'warmup', 'val_size',
                 'patience', 'householders'):
        low = 0 if flag in ('max_iter', 'length', 'warmup', 'iw_samples', 'val_size', 'patience') else 1
        if getattr(args, flag) < low:
            raise UsageError(f'--{flag} {getattr(args, flag)} is invalid: it must be >= {low}')
    if args.flow != 'none' and args.length == 0:
        raise UsageError(f'--flow {args.flow} with --length 0 is no flow: use --length >= 1 or --flow none')
    if not 0 <= args.sylvester_m <= args.latent_dim:
        raise UsageError(f'--sylvester_m {args.sylvester_m} must be 0 (M = D) to --latent_dim {args.latent_dim}')
    if args.flow == 'nice' and args.latent_dim < 2:
        raise UsageError(f'--flow nice needs --latent_dim >= 2 (it splits z in two halves), got {args.latent_dim}')
    if not (0 < args.lr < math.inf and args.clip_grad >= 0):   # written so that nan is refused too
        raise UsageError(f'--lr {args.lr:g} must be finite and > 0 and --clip_grad {args.clip_grad:g} >= 0')
    if not (0 <= args.momentum < 1 and 0 <= args.decay < 1):
        raise UsageError(f'--momentum {args.momentum:g} and --decay {args.decay:g} (Adam betas) must be in [0, 1)')
    if args.patience and not args.val_size:
        raise UsageError(f'--patience {args.patience} needs a validation set: give --val_size N '
                         '(stopping early on the test set would select the model on it)')
    if args.eval_only and not args.resume:
        raise UsageError('--eval_only needs --resume PATH: there is no trained model to evaluate')


def pick_device(name):
    """The device of --device; under torchrun `auto` skips MPS, which has no process-group backend."""
    if name == 'auto':
        if torch.cuda.is_available():
            return torch.device('cuda')
        mps = torch.backends.mps.is_available() and not distributed.requested()
        return torch.device('mps' if mps else 'cpu')
    available = {'cpu': True, 'cuda': torch.cuda.is_available(), 'mps': torch.backends.mps.is_available()}
    if not available[name]:
        raise UsageError(f'--device {name} is not available on this machine: use --device auto or cpu')
    return torch.device(name)


def prepare_out_dirs(out_dir, create=True):
    """Create the output folders and prove they are writable, before training starts (create=False: only
    their paths, for the ranks of a distributed run that write nothing)."""
    paths = {}
    for sub in OUTPUT_DIRS:
        path = os.path.join(out_dir, sub)
        if not create:
            paths[sub] = path
            continue
        try:
            os.makedirs(path, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as e:
            raise UsageError(f'cannot write to {path} ({e.strerror}): choose a writable --out_dir') from None
        paths[sub] = path
    return paths


# ---- checkpoints -------------------------------------------------------------------------------

def save_checkpoint(state, path):
    """Write atomically: a temporary file in the same folder, fsync, then os.replace.

    A process killed at any moment leaves the previous or the new checkpoint, never half of one.
    Returns False (and keeps the previous checkpoint) when the write fails, e.g. on a full disk.
    """
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix='.tmp-', suffix='.pt', dir=os.path.dirname(os.path.abspath(path)))
        with os.fdopen(fd, 'wb') as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        print(f'warning: could not save checkpoint {path} ({e.strerror}); kept the previous one',
              file=sys.stderr)
        return False
    return True


def load_checkpoint(path, script):
    """Load with weights_only=True (nothing in the file can run code) and check it is ours."""
    if not os.path.isfile(path):
        raise UsageError(f'checkpoint {path} does not exist: check the --resume path')
    try:
        with warnings.catch_warnings():   # torch warns about the pickle protocol of foreign files: one line only
            warnings.simplefilter('ignore')
            ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # torch raises several types for truncated, corrupt or unsafe files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if 'GLOBAL' in str(e) or 'Unsupported global' in str(e):   # it would import something (os.system, ...)
            reason = 'it holds objects other than tensors and plain data, refused for safety'
        elif 'weights_only' in str(e):   # not a pickle of tensors and plain data: damaged, or not a checkpoint
            detail = [line for line in str(e).splitlines() if line.strip().startswith('Unsupported')]
            reason = f'not a file of tensors and plain data ({detail[0].strip() if detail else "unreadable"})'
        raise UsageError(f'cannot load checkpoint {path}: {reason}') from None
    needed = ('script', 'config', 'iter', 'model', 'optimizer')
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in needed):
        raise UsageError(f'{path} is not a flow-vae checkpoint (it lacks {needed}): pass a file from checkpoints/')
    if ckpt['script'] != script:
        raise UsageError(f'{path} was made by {ckpt["script"]}, not {script}: resume it with that script')
    return ckpt


def merge_config(args, ckpt, explicit, path):
    """The run's flags come from the checkpoint; a flag given now that differs is refused.

    RESUMABLE flags may be given anew; those not given also come from the checkpoint, so that a bare
    `--resume PATH` continues with the run's --max_iter, --lr, --data_dir and --out_dir.
    """
    saved = ckpt['config']
    for key, value in saved.items():
        if key in ('resume', 'eval_only') or not hasattr(args, key):
            continue
        if key in explicit:
            if key not in RESUMABLE and getattr(args, key) != value:
                raise UsageError(f'--{key} {getattr(args, key)} differs from {path}, made with '
                                 f'--{key} {value}: drop the flag or start a new run')
            continue
        setattr(args, key, value)


# ---- training and evaluation --------------------------------------------------------------------

def warmup_beta(it, warmup):
    """KL weight beta_t = min(1, t / warmup) (Rezende & Mohamed 2015, sec. 6)."""
    return 1.0 if warmup == 0 else min(1.0, it / warmup)


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

    For 8-bit data the logit and dequantization Jacobians are included, so the numbers are bounds
    on the log-density of the dequantized pixels in [0, 256)^D, and bits/dim follow from them.
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
        for start in distributed.shard(range(0, images.shape[0] if iw_samples else 0, iw_batch)):
            seed_batch(1, start)
            x, log_det_pre = pre(images[start:start + iw_batch], train=False)
            iw_sum += (iw_log_likelihood(model, x, iw_samples, model.iw_rows) + log_det_pre).sum().item()
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


class StopRequest:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint and exits at the next iteration.

    Distributed, a signal may reach some ranks only, or at different iterations: `requested()` takes the
    largest signal number over the ranks, so all of them stop at the same iteration.
    """

    def __init__(self):
        self.signum = None

    def __enter__(self):
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum, frame):
        self.signum = signum

    def requested(self):
        self.signum = distributed.max_int(self.signum or 0) or None
        return self.signum is not None

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def device_name(device):
    """The device in words: the GPU's name, or the CPU's model."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    if device.type == 'cpu' and os.path.exists('/proc/cpuinfo'):
        with open('/proc/cpuinfo') as f:
            names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
        return f'{names[0]} ({os.cpu_count()} cores)' if names else 'cpu'
    return device.type


def write_json(path, obj):
    with open(path, 'w') as f:
        json.dump(obj, f, indent=1)
        f.write('\n')


def log_json(path, record):
    with open(path, 'a') as f:
        f.write(json.dumps(record) + '\n')


def precision_autocast(device_type, precision):
    """The autocast region of the training forward for --precision (autocast off for fp32)."""
    dtype = PRECISIONS[precision]
    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)


def train_step(model, optimizer, params, x, log_det_pre, args, it, net=None):
    """One Adam step on the batch's mean loss; returns (loss, applied).

    `net` runs the forward: the DistributedDataParallel wrapper of `model` (distributed.wrap) under
    torchrun. Each rank's loss is then the mean over its slice of the global batch and DDP averages the
    gradients over the ranks, which gives the gradient of the global batch's mean loss; the returned
    loss is all-reduced to that mean too, so every rank sees the same loss and gradient norm and
    applies or skips the same steps. A step whose loss or gradient norm is not finite is not applied.
    Checking that is the one host sync per step, the price of never letting a NaN reach the parameters.
    With --precision bf16 the forward runs under torch.autocast (FlowVAE.forward keeps the terms float32).
    """
    with precision_autocast(x.device.type, args.precision):
        terms = (model if net is None else net)(x)
    beta = warmup_beta(it, args.warmup)
    loss = (training_loss(terms, model.has_flow, args.objective, beta) - log_det_pre).mean()
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


def learning_rate(it, args):
    """--lr, or with --lr_schedule cosine lr * (1 + cos(pi * (it - 1) / max_iter)) / 2 at step `it` (1-based)."""
    if args.lr_schedule == 'none':
        return args.lr
    return 0.5 * args.lr * (1 + math.cos(math.pi * (it - 1) / args.max_iter))


def train(args, model, optimizer, batches, pre, monitor, state, paths, prefix, script):
    """The training loop: one flat loop with `if it % every == 0` blocks. Returns the stop signal or None.

    `monitor` is (images, split): the validation images ('val'), or the test images ('test') when there is
    no validation set. Every --eval_every iterations their ELBO is computed; with a validation set the best
    model so far is saved to checkpoints/<prefix>_best.pt and --patience evaluations without a better one
    stop the run. Distributed, every rank runs it (the training forward through the DDP wrapper `net`,
    evaluation split over the ranks) and only rank 0 writes logs, pictures and checkpoints.
    """
    ckpt_path = os.path.join(paths['checkpoints'], f'{prefix}.pt')
    best_path = os.path.join(paths['checkpoints'], f'{prefix}_best.pt')
    images, split = monitor
    log_path = os.path.join(paths['logs'], f'{prefix}.jsonl')
    params = [p for p in model.parameters() if p.requires_grad]
    dims = images[0].numel()
    net, main = distributed.wrap(model), distributed.is_main()
    if args.compile:
        torch._inductor.config.fallback_random = True   # draw eps from torch's generator, as in eager mode
        net = torch.compile(net)

    t_start, wall_before = time.perf_counter(), state['wall_seconds']

    def checkpoint(it, path=ckpt_path):
        state['iter'] = it
        state['wall_seconds'] = wall_before + time.perf_counter() - t_start
        rng = {'cpu': torch.get_rng_state(),
               'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        return save_checkpoint({
            'script': script, 'config': vars(args), 'iter': it, 'model': model.state_dict(),
            'optimizer': optimizer.state_dict(), 'batches': batches.state_dict(), 'rng': rng,
            **{key: state[key] for key in RUN_STATE}}, path)

    it, bad = state['iter'], 0
    running, n_running = torch.zeros((), device=images.device), 0
    t_last, it_last, t_other = time.perf_counter(), it, 0.0   # t_other: time spent outside training steps
    bar = tqdm(total=args.max_iter, initial=it, disable=None if main else True, dynamic_ncols=True, desc=prefix)
    with StopRequest() as stop:
        while not stop.requested() and it < args.max_iter and not state['stopped_early']:   # asked first
            it += 1
            for group in optimizer.param_groups:
                group['lr'] = learning_rate(it, args)
            x, log_det_pre = pre(next(batches)[0], train=True)
            loss, applied = train_step(model, optimizer, params, x, log_det_pre, args, it, net)
            if applied:
                running += loss
                n_running, bad = n_running + 1, 0
            else:
                state['skipped'] += 1
                bad += 1
                if bad >= args.max_bad_steps:
                    bar.close()
                    kept = f'the last good checkpoint is {ckpt_path}' if os.path.exists(ckpt_path) \
                        else 'no checkpoint was saved yet'
                    raise Diverged(
                        f'training stopped at iteration {it}: {bad} consecutive non-finite losses or '
                        f'gradients with the {args.flow} flow (length {args.length}); {kept}. '
                        f'Lower --lr (now {args.lr:g}) or set --clip_grad (e.g. 100), then --resume')
            bar.update(1)

            if it % args.log_every == 0 or it == args.max_iter:
                now = time.perf_counter()
                mean_loss = (running / n_running).item() if n_running else math.nan   # nan: every step skipped
                record = {'iter': it, 'loss': mean_loss, 'its_per_s': (it - it_last) / (now - t_last - t_other),
                          'skipped': state['skipped']}
                if not pre.binary:
                    record['bpd'] = bits_per_dim(-mean_loss, dims)
                state['history']['train'].append(record)
                if main:
                    log_json(log_path, record)
                bar.set_postfix(loss=f'{mean_loss:.2f}', skipped=state['skipped'])
                running.zero_()
                n_running, t_last, it_last, t_other = 0, now, it, 0.0
            t_start = time.perf_counter()
            if it % args.eval_every == 0 or it == args.max_iter:
                record = {'iter': it, **evaluate(model, pre, images, split=split)}   # every rank: split over them
                state['history']['eval'].append(record)
                if split == 'val':
                    best = state['best']
                    if best is None or record['val_elbo'] > best['val_elbo']:
                        state['best'] = {'iter': it, 'val_elbo': record['val_elbo'], 'evals_since': 0}
                        if main:
                            checkpoint(it, best_path)
                    else:
                        best['evals_since'] += 1
                        state['stopped_early'] = 0 < args.patience <= best['evals_since']
                    record['best_iter'] = state['best']['iter']
                if main:
                    log_json(log_path, record)
            if (it % args.sample_every == 0 or it == args.max_iter) and main:
                save_pictures(model, pre, images, args, paths, prefix, it)
            if (it % args.ckpt_every == 0 or it == args.max_iter or state['stopped_early']) and bad == 0 and main:
                checkpoint(it)   # not during a non-finite streak: keep the last good checkpoint on disk
            t_other += time.perf_counter() - t_start
        bar.close()
        if stop.signum is not None:
            if main:
                checkpoint(it)
                plotting.plot_curves(state['history'], os.path.join(paths['plots'], f'{prefix}_curves.png'), 'nats')
                log_json(log_path, {'iter': it, 'interrupted': signal.Signals(stop.signum).name})
                print(f'stopped by {signal.Signals(stop.signum).name} at iteration {it}; checkpoint saved. '
                      f'Resume with: python {script} --resume {shlex.quote(ckpt_path)}', file=sys.stderr)
            return stop.signum
    state['iter'] = it
    if state['stopped_early'] and main:
        print(f"stopped early at iteration {it}: the validation ELBO has not improved for {args.patience} "
              f"evaluations since iteration {state['best']['iter']}", file=sys.stderr)
    return None


def main(parser, script, build_model, arch, check_script_args=None, argv=None):
    """Parse flags, then train and evaluate; every expected failure is one line and an exit code.

    Distributed, a rank other than 0 prefixes its error line with [rankN]: (as torch does); a
    divergence, which every rank meets at the same step, is printed by rank 0 only.
    """
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    tag = f'[rank{distributed.rank()}]: ' if distributed.rank() else ''
    try:
        code = run(args, parser, argv, script, build_model, arch, check_script_args)
    except (UsageError, data_utils.DataError) as e:
        print(f'{tag}error: {e}', file=sys.stderr)
        code = 2
    except Diverged as e:
        if not tag:
            print(f'error: {e}', file=sys.stderr)
        code = 3
    finally:
        distributed.cleanup()
    sys.exit(code)


def run(args, parser, argv, script, build_model, arch, check_script_args):
    ckpt = None
    if args.resume:
        ckpt = load_checkpoint(args.resume, script)
        merge_config(args, ckpt, explicit_flags(parser, argv), args.resume)
    if args.dataset not in data_utils.DATASETS:
        raise UsageError(f'unknown dataset {args.dataset!r}: choose from {", ".join(data_utils.DATASETS)}')
    image_shape = data_utils.image_shape(args.dataset)
    check_args(args, image_shape)
    if check_script_args:
        check_script_args(args, image_shape)
    world = distributed.world_size()
    if args.batch_size % world:
        raise UsageError(f'--batch_size {args.batch_size} is not divisible by the world size {world}: '
                         f'use a multiple of {world}')
    try:
        device = distributed.setup(pick_device(args.device))
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.precision == 'bf16' and not (device.type == 'cpu' or
                                         (device.type == 'cuda' and torch.cuda.is_bf16_supported())):
        raise UsageError(f'--precision bf16 is not supported on this {device.type} device: use --precision fp32')
    main = distributed.is_main()
    prefix = run_prefix(args, arch(args))
    paths = prepare_out_dirs(args.out_dir, create=main)

    torch.manual_seed(args.seed)
    model = build_model(args, image_shape).to(device)
    fused = device.type in FUSED_ADAM_DEVICES
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(args.momentum, args.decay), fused=fused)
    state = {'iter': 0, 'skipped': 0, 'history': {'train': [], 'eval': []}, 'best': None, 'stopped_early': False,
             'wall_seconds': 0.0}
    if ckpt:
        try:
            model.load_state_dict(ckpt['model'])
            optimizer.load_state_dict(ckpt['optimizer'])
        except (RuntimeError, ValueError, KeyError) as e:
            raise UsageError(f'{args.resume} does not match this model: {str(e).splitlines()[0]}') from None
        for group in optimizer.param_groups:
            group.update(lr=args.lr, fused=fused)   # a checkpoint from another device may say otherwise
        state.update({key: ckpt[key] for key in ('iter', *RUN_STATE) if key in ckpt})

    log = print if main else lambda *_: None
    train_images, train_labels = data_utils.load_split(args.dataset, args.data_dir, train=True, log=log)
    test_images, test_labels = data_utils.load_split(args.dataset, args.data_dir, train=False,
                                                     log=lambda *_: None)   # the same fetch: said once
    if args.val_size >= len(train_images):
        raise UsageError(f'--val_size {args.val_size} leaves no training images: {args.dataset} has '
                         f'{len(train_images)}; use fewer')
    n_train = len(train_images) - args.val_size   # the last --val_size images are the validation set
    val_images, val_labels = train_images[n_train:], train_labels[n_train:]
    train_images, train_labels = train_images[:n_train], train_labels[:n_train]
    if data_utils.is_binary(args.dataset) and args.binarize != 'none':
        test_images = data_utils.static_binarize(test_images, TEST_BINARIZATION_SEED)
        val_images = data_utils.static_binarize(val_images, VAL_BINARIZATION_SEED)
        if args.binarize == 'static':
            train_images = data_utils.static_binarize(train_images, args.seed)
    pre = data_utils.Preprocessor(args.dataset, binarize=args.binarize, flip=args.flip)
    if args.batch_size > len(train_images):
        raise UsageError(f'--batch_size {args.batch_size} is larger than the {len(train_images)} training images '
                         f'of {args.dataset} under {args.data_dir}')
    batches = data_utils.Batches(train_images, train_labels, args.batch_size, device, args.seed,
                                 distributed.rank(), world)
    test = (test_images.to(device), test_labels.to(device))
    monitor = (val_images.to(device), 'val') if args.val_size else (test[0], 'test')
    if ckpt:
        batches.load_state_dict(ckpt['batches'])
        torch.set_rng_state(ckpt['rng']['cpu'])
        if ckpt['rng']['cuda'] and device.type == 'cuda':
            torch.cuda.set_rng_state_all(ckpt['rng']['cuda'])
    distributed.seed_rank(args.seed, state['iter'])

    if not args.eval_only:
        signum = train(args, model, optimizer, batches, pre, monitor, state, paths, prefix, script)
        if signum is not None:
            return 128 + signum
    finish(args, model, pre, test, state, paths, prefix, script)
    return 0


def finish(args, model, pre, test, state, paths, prefix, script):
    """Final test-set evaluation, latent plot and curves; the table is printed and logged (by rank 0).

    With a validation set the model evaluated is the best one (checkpoints/<prefix>_best.pt); the last
    iterate's test ELBO is logged beside it as last_test_elbo.
    """
    best = {}
    if state['best'] is not None:
        last = evaluate(model, pre, test[0])['test_elbo']
        best_path = os.path.join(paths['checkpoints'], f'{prefix}_best.pt')
        if distributed.is_main():
            model.load_state_dict(load_checkpoint(best_path, script)['model'])
        distributed.broadcast_state(model)
        best = {'best_iter': state['best']['iter'], 'best_val_elbo': state['best']['val_elbo'],
                'last_test_elbo': last, 'stopped_early': state['stopped_early']}
    metrics = evaluate(model, pre, test[0], iw_samples=args.iw_samples)   # every rank: it is split over them
    if not distributed.is_main():
        return
    record = {'iter': state['iter'], 'final': True, 'skipped': state['skipped'], **best, **metrics}
    log_json(os.path.join(paths['logs'], f'{prefix}.jsonl'), record)
    train_its = [r['its_per_s'] for r in state['history']['train']]
    write_json(os.path.join(paths['logs'], f'{prefix}_summary.json'), {
        'script': script, 'config': vars(args), **record, 'wall_seconds': state['wall_seconds'],
        'its_per_s': sorted(train_its)[len(train_its) // 2] if train_its else None,
        'device': device_name(test[0].device), 'threads': torch.get_num_threads(), 'torch': torch.__version__})
    unit = 'nats' if pre.binary else 'bits/dim'
    plotting.plot_curves(state['history'], os.path.join(paths['plots'], f'{prefix}_curves.png'), 'nats')
    if args.latent_dim == 2:
        save_latent_plot(model, pre, *test, os.path.join(paths['plots'], f'{prefix}_latent.png'), prefix)
    which = f'the best model (iteration {best["best_iter"]} of {state["iter"]})' if best else f'iteration {state["iter"]}'
    print(f'\ntest set ({test[0].shape[0]} images), {which}, {prefix}')
    print(f'  {"ELBO":<28}{metrics["test_elbo"]:>12.3f} nats')
    if args.iw_samples:
        print(f'  {"log p(x), IW K=" + str(args.iw_samples):<28}{metrics["test_log_px_iw"]:>12.3f} nats')
    if best:
        print(f'  {"ELBO of the last iterate":<28}{best["last_test_elbo"]:>12.3f} nats')
    if unit == 'bits/dim':
        print(f'  {"-ELBO":<28}{metrics["test_bpd_elbo"]:>12.4f} bits/dim')
        if args.iw_samples:
            print(f'  {"-log p(x), IW":<28}{metrics["test_bpd_log_px_iw"]:>12.4f} bits/dim')
    if args.binarize == 'none' and pre.binary:
        print('  (--binarize none: BCE on grey levels, not a normalized likelihood)')
