"""The flags every script shares, their checks, the run's file prefix, and how a resumed run's flags are merged.

A script adds its own flags to `base_parser` and its own checks after `check_args`; `vars(args)` is the run's
one config dict, saved in every checkpoint and summary.
"""
import argparse
import math

import torch

import datasets
from flows import FLOW_KINDS, HOUSEHOLDERS
from utils import Parser, UsageError
from vae import OBJECTIVES

# flags that may change when a run is resumed; every other flag defines the run and comes from the checkpoint
RESUMABLE = {'resume', 'eval_only', 'max_iter', 'out_dir', 'data_dir', 'device', 'log_every',
             'sample_every', 'ckpt_every', 'iw_samples', 'exact', 'max_bad_steps', 'lr', 'clip_grad',
             'sample_size', 'sync_bn', 'compile', 'precision', 'eval_every'}
LR_SCHEDULES = ('none', 'cosine')
PRECISIONS = {'fp32': None, 'bf16': torch.bfloat16}   # --precision: the autocast dtype of the training forward


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """--help keeps the description's line breaks (its example commands) and gives each flag's default, except
    where the default is None (the flag's help says what happens without it) and for on/off switches."""

    def _get_help_string(self, action):
        if action.default is None or action.nargs == 0:
            return action.help
        return super()._get_help_string(action)


# the sections of --help, in order: key -> title; base_parser's `parser.groups[key]` takes a script's own flags
GROUPS = {'data': 'data', 'model': 'model', 'flow': 'flow', 'optimisation': 'optimisation', 'output': 'output',
          'evaluation': 'evaluation', 'performance': 'performance', 'resume': 'resuming a run'}


def base_parser(description, latent_dim, max_iter):
    """The flags every script has (the original repo's names and defaults, plus ours), in the sections of GROUPS.

    `parser.groups` maps each GROUPS key to its argument group: a script adds its own flags to
    `parser.groups['model']`.
    """
    p = Parser(description=description, formatter_class=HelpFormatter)
    p.groups = {key: p.add_argument_group(title) for key, title in GROUPS.items()}
    g = p.groups['data']
    g.add_argument('--dataset', default='mnist', choices=datasets.DATASETS, help='dataset')
    g.add_argument('--data_dir', default=datasets.default_data_dir(),
                   help='data root ($FLOW_VAE_DATA, else ./data); missing files are fetched')
    g.add_argument('--binarize', default='dynamic', choices=('dynamic', 'static', 'none'),
                   help='MNIST only: a fresh Bernoulli draw per use (dynamic), one fixed draw '
                        '(static), or grey levels with a BCE loss (none: the original repo; '
                        'not a normalized likelihood, so its nats are not log p(x))')
    g.add_argument('--flip', type=int, default=None, choices=(0, 1),
                   help='random horizontal flips of training images (without the flag: on for cifar10 only)')

    g = p.groups['model']
    g.add_argument('--latent_dim', type=int, default=latent_dim, help='dimension of z')

    g = p.groups['flow']
    g.add_argument('--flow', default='none', choices=FLOW_KINDS, help='normalizing flow on z')
    g.add_argument('--length', type=int, default=8,
                   help='number of flow steps; for nice, L - 1 additive coupling layers then one scaling step')
    g.add_argument('--sylvester_m', type=int, default=0,
                   help='sylvester-orthogonal: columns M of each Q, 1 to --latent_dim (0: --latent_dim)')
    g.add_argument('--householders', type=int, default=HOUSEHOLDERS,
                   help='sylvester-householder: Householder reflections per Q')

    g = p.groups['optimisation']
    g.add_argument('--batch_size', type=int, default=128,
                   help='minibatch size; under torchrun the global batch, split evenly over the processes')
    g.add_argument('--max_iter', type=int, default=max_iter, help='training iterations')
    g.add_argument('--lr', type=float, default=1e-3, help='Adam learning rate')
    g.add_argument('--objective', default='elbo', choices=OBJECTIVES,
                   help="'elbo': the flow ELBO with the prior at z_K; 'seed': the original "
                        "repo's KL(q0||p) at z0 minus the log-det (to reproduce its figures; not a bound). "
                        'Evaluation always reports the flow ELBO')
    g.add_argument('--warmup', type=int, default=0,
                   help='KL warm-up: the KL terms are scaled by beta rising from 0 to 1 over this many iterations')
    g.add_argument('--momentum', type=float, default=0.9, help="Adam's beta1 (the original repo's name)")
    g.add_argument('--decay', type=float, default=0.999, help="Adam's beta2 (the original repo's name)")
    g.add_argument('--clip_grad', type=float, default=0.0,
                   help='clip the gradient norm to this value (0: no clipping)')
    g.add_argument('--lr_schedule', default='none', choices=LR_SCHEDULES,
                   help='cosine: the learning rate falls from --lr to 0 over --max_iter iterations '
                        '(half a cosine, Loshchilov & Hutter 2017); none: constant')
    g.add_argument('--max_bad_steps', type=int, default=10,
                   help='stop after this many consecutive non-finite steps (each one is skipped). The count '
                        'stays on the device and is read every --log_every iterations (and at evaluations '
                        'and checkpoints), so the run stops at the first of those at which the streak has '
                        'reached N: up to --log_every - 1 iterations after the Nth')
    g.add_argument('--seed', type=int, default=0, help='random seed')

    g = p.groups['output']
    g.add_argument('--out_dir', default='.', help='where samples/, plots/, checkpoints/, ... go')
    g.add_argument('--log_every', type=int, default=100, help='log the running loss every N iterations')
    g.add_argument('--sample_every', type=int, default=1000,
                   help='save samples and reconstructions every N iterations')
    g.add_argument('--sample_size', type=int, default=64, help='images in each sample grid')
    g.add_argument('--ckpt_every', type=int, default=1000, help='save a checkpoint every N iterations')

    g = p.groups['evaluation']
    g.add_argument('--val_size', type=int, default=0,
                   help='hold out the last N training images (the same whatever --seed) as a validation set; '
                        'then the periodic evaluation uses them, the best model is kept and the test set is '
                        'touched only by the final evaluation')
    g.add_argument('--eval_every', type=int, default=1000,
                   help='compute the validation ELBO (the test ELBO with --val_size 0) every N iterations')
    g.add_argument('--patience', type=int, default=0,
                   help='with --val_size: stop after this many evaluations without a better validation ELBO '
                        '(0: never stop early)')
    g.add_argument('--iw_samples', type=int, default=1000,
                   help='K, importance samples per test image for the log-likelihood estimate '
                        '(0: skip it, e.g. to train on one device and --eval_only on another)')
    g.add_argument('--exact', type=int, default=1, choices=(0, 1),
                   help='--latent_dim 2: log p(x) by quadrature over a grid of z in the final evaluation, with the '
                        "ELBO's and IW's gaps to it, and the posterior figure (0: skip them; with the conv decoder "
                        'they can take longer than training, see docs/usage.md)')

    g = p.groups['performance']
    g.add_argument('--device', default='auto', choices=('auto', 'cpu', 'cuda', 'mps'),
                   help='auto picks CUDA, then MPS, then the CPU')
    g.add_argument('--compile', type=int, default=0, choices=(0, 1, 2),
                   help='1: run the training forward through torch.compile, which fuses the flow steps; the '
                        'first steps wait for the compilation, and on the CPU it needs a C++ compiler. '
                        '2 (CUDA only): as 1 with mode="reduce-overhead", which also captures the compiled '
                        'forward and backward in CUDA graphs and replays them, one launch each per step')
    g.add_argument('--precision', default='fp32', choices=tuple(PRECISIONS),
                   help="bf16: the training forward under torch.autocast, so the networks' matrix products (the "
                        "encoder's, the decoder's and an amortized flow's context layers) run in bfloat16; the "
                        "flow's arithmetic, the densities and the loss stay float32, and "
                        'evaluation and every reported number are float32. Fast on CPUs with AVX512-BF16 or AMX '
                        'and on GPUs with bf16 tensor cores, slower than fp32 on other CPUs')

    g = p.groups['resume']
    g.add_argument('--resume', default=None, metavar='PATH',
                   help="continue from this checkpoint, with the run's flags; only the schedule, output, "
                        'evaluation and device flags (--max_iter, --lr, --out_dir, --iw_samples, ...) may be given '
                        'anew, --max_iter only under --lr_schedule none')
    g.add_argument('--eval_only', action='store_true', help='only evaluate the --resume checkpoint')
    return p


def flow_options(args):
    """build_flow's keyword options from the flags; a config saved before these flags existed gets their defaults."""
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


def check_args(args):
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


def merge_config(args, ckpt, explicit, path):
    """The run's flags come from the checkpoint; a flag given now that differs is refused.

    RESUMABLE flags may be given anew; those not given also come from the checkpoint, so that a bare
    `--resume PATH` continues with the run's --max_iter, --lr, --data_dir and --out_dir. A new --max_iter is
    refused under --lr_schedule cosine, whose learning rates it would stretch.
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
    if saved.get('lr_schedule') == 'cosine' and args.max_iter != saved['max_iter']:
        raise UsageError(f'--max_iter {args.max_iter} differs from {path}, made with --max_iter {saved["max_iter"]} '
                         f'under --lr_schedule cosine, whose learning rate falls to 0 over --max_iter: keep '
                         f'--max_iter {saved["max_iter"]} or start a new run')
