"""The training loop the three scripts share, from flags to the final test-set numbers.

A script defines its model and its own flags, then calls `main(parser, SCRIPT, build_model, arch, ...)`:
  main   parses the flags and turns every expected failure into one line and an exit code;
  setup  builds the run (model, Adam, data, output folders), or rebuilds it from a --resume checkpoint;
  train  is the loop: one flat `while` with `if it % every == 0` blocks for logging, evaluation, pictures
         and checkpoints;
  finish evaluates on the test set (the best model when there is a validation set) and writes the summary.
Under torchrun the same loop runs data-parallel (distributed.py): --batch_size is the global batch,
evaluation is split over the ranks, and only rank 0 writes files.
Exit codes: 0 done, 2 bad input (one line on stderr), 3 training diverged (non-finite steps),
128 + signal number when stopped by SIGINT/SIGTERM after saving a resumable checkpoint.
"""
import json
import math
import os
import shlex
import shutil
import signal
import sys
import time
from dataclasses import dataclass

import torch

import config
import data_utils
import datasets
import distributed
import plotting
import posterior2d
from evaluate import bits_per_dim, evaluate, save_latent_plot, save_pictures
from utils import (Diverged, UsageError, atomic_write, device_name, load_checkpoint, log_json, pick_device,
                   prepare_out_dirs, progress, save_checkpoint, truncate_log, write_json)
from vae import training_loss

FUSED_ADAM_DEVICES = ('cpu', 'cuda')   # where torch has a fused Adam kernel: one kernel for all parameters
# what a checkpoint keeps of the run besides the model: losses and evaluations, skipped steps, the best
# validation ELBO so far (its iteration and the evaluations since), and whether the run stopped early
RUN_STATE = ('history', 'skipped', 'best', 'stopped_early')


@dataclass
class Run:
    """Everything one training run works with."""
    args: object            # the flags: vars(args) is the run's config
    script: str             # e.g. 'static_flow_vae.py'; checkpoints name it
    prefix: str             # the original repo's file prefix, e.g. mnist_bs128_ly2_hd400_lt2_gt0__planar_len16
    paths: dict             # output folder by kind: samples, reconstructions, plots, checkpoints, logs
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    pre: data_utils.Preprocessor
    batches: data_utils.Batches   # training minibatches
    monitor: tuple          # (images, 'val') or, without a validation set, (test images, 'test')
    test: tuple             # (test images, labels)
    state: dict             # 'iter' and RUN_STATE: what a checkpoint restores

    def path(self, kind, suffix):
        return os.path.join(self.paths[kind], f'{self.prefix}{suffix}')


# ---- one step -----------------------------------------------------------------------------------

def warmup_beta(it, warmup):
    """KL weight beta_t = min(1, t / warmup) (Rezende & Mohamed 2015, sec. 6)."""
    return 1.0 if warmup == 0 else min(1.0, it / warmup)


def learning_rate(it, args):
    """--lr, or with --lr_schedule cosine lr * (1 + cos(pi * (it - 1) / max_iter)) / 2 at step `it` (1-based)."""
    if args.lr_schedule == 'none':
        return args.lr
    return 0.5 * args.lr * (1 + math.cos(math.pi * (it - 1) / args.max_iter))


def precision_autocast(device_type, precision):
    """The autocast region of the training forward for --precision (autocast off for fp32)."""
    dtype = config.PRECISIONS[precision]
    return torch.autocast(device_type, dtype=dtype, enabled=dtype is not None)


def uses_fused_adam(optimizer):
    """Whether every parameter group steps with torch's fused Adam kernel (train.FUSED_ADAM_DEVICES)."""
    return all(group.get('fused') for group in optimizer.param_groups)


def train_step(model, optimizer, params, x, log_det_pre, args, it, net=None, mark=None):
    """One Adam step on the batch's mean loss; returns (loss, applied), 0-d tensors on the device.

    `net` runs the forward: the DistributedDataParallel wrapper of `model` (distributed.wrap) under
    torchrun. Each rank's loss is then the mean over its slice of the global batch and DDP averages the
    gradients over the ranks, which gives the gradient of the global batch's mean loss; the returned
    loss is all-reduced to that mean too, together with the flag below, so every rank sees the same loss
    and applies or skips the same steps.

    A step whose loss or gradient norm is not finite is not applied, and it is decided on the device:
    `found_inf` is 1.0 for such a step, else 0.0 (a float32 tensor, torch.amp.GradScaler's convention),
    and it is set as an attribute of the optimizer for the one call of `optimizer.step()`, as GradScaler
    does. The fused Adam kernel (CPU and CUDA) then leaves the parameters and both moments untouched, and
    takes back the increment of its step counter, so a skipped step leaves Adam's state bit for bit as it
    was. Clipping (--clip_grad) uses the norm already computed, on the device. So the step has no host
    sync, and a GPU never waits for the CPU. Where Adam is not fused (MPS) the flag is read on the host
    and optimizer.step() is not called for a skipped step: one sync per step.
    With --precision bf16 the forward runs under torch.autocast (FlowVAE.forward keeps the terms float32).
    With --compile 2 `net` replays CUDA graphs; what it returned in the last step is not read after this.
    `mark(part)`, if given, is called as each part ends: 'forward', 'backward', 'grad norm', 'Adam' (the
    benchmark's timer).
    """
    mark = mark or (lambda part: None)
    if getattr(args, 'compile', 0) == 2:
        torch.compiler.cudagraph_mark_step_begin()   # the last step's graph outputs are no longer read
    with precision_autocast(x.device.type, args.precision):
        terms = (model if net is None else net)(x)
    beta = warmup_beta(it, args.warmup)
    loss = (training_loss(terms, model.has_flow, args.objective, beta) - log_det_pre).mean()
    mark('forward')
    optimizer.zero_grad(set_to_none=True)
    (loss + model.penalty()).backward()
    mark('backward')
    grads = [p.grad for p in params if p.grad is not None]
    grad_norm = torch.nn.utils.get_total_norm(grads)
    loss = loss.detach().float()
    nonfinite = torch.logical_not(torch.isfinite(loss + grad_norm)).float()
    loss, nonfinite = distributed.mean(torch.stack([loss, nonfinite])).unbind()   # one all-reduce for both
    found_inf = (nonfinite > 0).float()   # 1.0 when any rank's loss, or the gradient norm, is not finite
    applied = found_inf == 0
    mark('grad norm')
    if args.clip_grad:
        torch.nn.utils.clip_grads_with_norm_(params, args.clip_grad, grad_norm)   # no sync: a tensor product
    if uses_fused_adam(optimizer):
        optimizer.found_inf = found_inf
        try:
            optimizer.step()
        finally:
            del optimizer.found_inf
    elif applied:   # the host sync of the unfused path
        optimizer.step()
    mark('Adam')
    return loss, applied


class StepCounters:
    """The loop's bookkeeping of steps, kept on the device so that an iteration needs no host sync.

    `update` adds one step: the running sum of applied losses and their count (for the logged mean), the
    steps skipped since the last read, the current streak of consecutive skipped steps and the longest
    streak since the last read. `read` copies them to the host in one transfer (a sync); the loop calls it
    at log, evaluation and checkpoint iterations only, so --max_bad_steps acts at the first of those at
    which a streak has reached it.
    """

    def __init__(self, device):
        zero = torch.zeros((), device=device)
        self.loss_sum, self.n, self.skipped, self.bad, self.worst = (zero.clone() for _ in range(5))

    def update(self, loss, applied):
        self.loss_sum += torch.where(applied, loss, 0.0)
        self.n += applied
        self.skipped += torch.logical_not(applied)
        self.bad = torch.where(applied, 0.0, self.bad + 1)
        self.worst = torch.maximum(self.worst, self.bad)

    def read(self):
        """(mean applied loss since reset_running (nan if none), steps skipped since the last read,
        current streak, longest streak since the last read); then the skipped count and the longest
        streak restart from here."""
        loss_sum, n, skipped, bad, worst = torch.stack(
            [self.loss_sum, self.n, self.skipped, self.bad, self.worst]).tolist()
        self.skipped.zero_()
        self.worst.copy_(self.bad)
        return loss_sum / n if n else math.nan, int(skipped), int(bad), int(worst)

    def reset_running(self):
        self.loss_sum.zero_()
        self.n.zero_()


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


# ---- the loop ------------------------------------------------------------------------------------

def checkpoint(run, it, suffix='.pt'):
    """Save the run at iteration `it` to checkpoints/<prefix><suffix>: model, Adam, data order, RNG, RUN_STATE."""
    run.state['iter'] = it
    rng = {'cpu': torch.get_rng_state(), 'cuda': torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
    return save_checkpoint({
        'script': run.script, 'config': vars(run.args), 'iter': it, 'model': run.model.state_dict(),
        'optimizer': run.optimizer.state_dict(), 'batches': run.batches.state_dict(), 'rng': rng,
        **{key: run.state[key] for key in RUN_STATE}}, run.path('checkpoints', suffix))


def train(run):
    """The training loop. Returns the stop signal's number, or None when the run ended.

    Every --eval_every iterations the ELBO of the monitored images is computed: the validation set's, or
    the test set's when there is none. With a validation set, the best model so far is saved to
    checkpoints/<prefix>_best.pt, and --patience evaluations without a better one stop the run.
    Distributed, every rank runs it (the training forward through the DDP wrapper `net`, evaluation split
    over the ranks) and only rank 0 writes logs, pictures and checkpoints.
    """
    args, model, optimizer, pre, state = run.args, run.model, run.optimizer, run.pre, run.state
    images, split = run.monitor
    log_path = run.path('logs', '.jsonl')
    params = [p for p in model.parameters() if p.requires_grad]
    net, main = distributed.wrap(model), distributed.is_main()
    if args.resume and main:   # the log reads as one run: the records after the checkpoint are written again
        truncate_log(log_path, state['iter'])
    if args.compile:
        torch._inductor.config.fallback_random = True   # draw eps from torch's generator, as in eager mode
        # 2: CUDA graphs of the compiled forward and backward (inductor's cudagraph trees), refused by setup
        # but on one CUDA device
        net = torch.compile(net, mode='reduce-overhead' if args.compile == 2 else None)

    it, bad = state['iter'], 0
    counters = StepCounters(images.device)
    t_last, it_last, t_other = time.perf_counter(), it, 0.0   # t_other: time spent outside training steps
    bar = progress(total=args.max_iter, initial=it, desc=run.prefix)
    with StopRequest() as stop:
        while not stop.requested() and it < args.max_iter and not state['stopped_early']:   # asked first
            it += 1
            for group in optimizer.param_groups:
                group['lr'] = learning_rate(it, args)
            x, log_det_pre = pre(next(run.batches)[0], train=True)
            counters.update(*train_step(model, optimizer, params, x, log_det_pre, args, it, net))
            bar.update(1)
            # the counters stay on the device but at these iterations, where they are read (one sync)
            if it % args.log_every == 0 or it == args.max_iter or it % args.eval_every == 0 \
                    or it % args.ckpt_every == 0:
                mean_loss, skipped, bad, worst = counters.read()
                state['skipped'] += skipped
                if worst >= args.max_bad_steps:
                    bar.close()
                    ckpt_path = run.path('checkpoints', '.pt')
                    kept = f'the last good checkpoint is {ckpt_path}' if os.path.exists(ckpt_path) \
                        else 'no checkpoint was saved yet'
                    raise Diverged(
                        f'training stopped at iteration {it}: {worst} consecutive non-finite losses or '
                        f'gradients with the {args.flow} flow (length {args.length}); {kept}. '
                        f'Lower --lr (now {args.lr:g}) or set --clip_grad (e.g. 100), then --resume')
            if it % args.log_every == 0 or it == args.max_iter:
                now = time.perf_counter()
                record = {'iter': it, 'loss': mean_loss, 'its_per_s': (it - it_last) / (now - t_last - t_other),
                          'skipped': state['skipped']}   # loss: nan when every step since the last log was skipped
                if not pre.binary:
                    record['bpd'] = bits_per_dim(-mean_loss, images[0].numel())
                state['history']['train'].append(record)
                if main:
                    log_json(log_path, record)
                bar.set_postfix(loss=f'{mean_loss:.2f}', skipped=state['skipped'])
                counters.reset_running()
                t_last, it_last, t_other = now, it, 0.0
            t_start = time.perf_counter()
            if it % args.eval_every == 0 or it == args.max_iter:
                record = {'iter': it, **evaluate(model, pre, images, split=split)}   # every rank: split over them
                state['history']['eval'].append(record)
                if split == 'val':
                    best = state['best']
                    if best is None or record['val_elbo'] > best['val_elbo']:
                        state['best'] = {'iter': it, 'val_elbo': record['val_elbo'], 'evals_since': 0}
                        if main:
                            checkpoint(run, it, '_best.pt')
                    else:
                        best['evals_since'] += 1
                        state['stopped_early'] = 0 < args.patience <= best['evals_since']
                    record['best_iter'] = state['best']['iter']
                if main:
                    log_json(log_path, record)
            if (it % args.sample_every == 0 or it == args.max_iter) and main:
                save_pictures(model, pre, images, args, run.paths, run.prefix, it)
            if (it % args.ckpt_every == 0 or it == args.max_iter or state['stopped_early']) and bad == 0 and main:
                checkpoint(run, it)   # not during a non-finite streak: keep the last good checkpoint on disk
            t_other += time.perf_counter() - t_start
        bar.close()
        if stop.signum is not None:
            state['skipped'] += counters.read()[1]
            if main:
                checkpoint(run, it)
                plotting.plot_curves(state['history'], run.path('plots', '_curves.png'))
                log_json(log_path, {'iter': it, 'interrupted': signal.Signals(stop.signum).name})
                print(f'stopped by {signal.Signals(stop.signum).name} at iteration {it}; checkpoint saved. '
                      f'Resume with: python {run.script} --resume {shlex.quote(run.path("checkpoints", ".pt"))}',
                      file=sys.stderr)
            return stop.signum
    state['iter'] = it
    if state['stopped_early'] and main:
        print(f"stopped early at iteration {it}: the validation ELBO has not improved for {args.patience} "
              f"evaluations since iteration {state['best']['iter']}", file=sys.stderr)
    return None


def finish(run):
    """Final test-set evaluation, its model's samples and reconstructions, latent plot, curves and the run's
    summary; printed and logged by rank 0.

    With a validation set the model evaluated is the best one (checkpoints/<prefix>_best.pt); the last
    iterate's test ELBO is logged beside it as last_test_elbo. A 2-D run also gets log p(x) by quadrature and
    the bounds' gaps to it, and its posterior figure, unless --exact 0.
    """
    args, model, pre, state = run.args, run.model, run.pre, run.state
    test_images = run.test[0]
    best = {}
    if state['best'] is not None:
        last = evaluate(model, pre, test_images)['test_elbo']
        if distributed.is_main():
            best_path = run.path('checkpoints', '_best.pt')
            model.load_state_dict(load_checkpoint(best_path, run.script, source='--out_dir')['model'])
        distributed.broadcast_state(model)
        best = {'best_iter': state['best']['iter'], 'best_val_elbo': state['best']['val_elbo'],
                'last_test_elbo': last, 'stopped_early': state['stopped_early']}
    metrics = evaluate(model, pre, test_images, iw_samples=args.iw_samples)   # every rank: split over them
    if not distributed.is_main():
        return
    record = {'iter': state['iter'], 'final': True, 'skipped': state['skipped'], **best, **metrics}
    exact = args.latent_dim == 2 and args.exact
    if exact:   # log p(x) itself, by quadrature over z, and the gaps of the two bounds to it
        log_px = posterior2d.exact_log_px(model, pre, test_images).mean().item()
        record.update(posterior2d.gaps(metrics, log_px, binary=pre.binary, dims=test_images[0].numel()))
    log_json(run.path('logs', '.jsonl'), record)
    steps = [(r['iter'], r['its_per_s']) for r in state['history']['train']]
    train_seconds = sum((it - prev) / speed for (prev, _), (it, speed) in zip([(0, None)] + steps, steps))
    write_json(run.path('logs', '_summary.json'), {
        'script': run.script, 'config': vars(args), **record,
        'train_seconds': train_seconds, 'its_per_s': state['iter'] / train_seconds if train_seconds else None,
        'device': device_name(test_images.device), 'threads': torch.get_num_threads(), 'torch': torch.__version__})
    if state['history']['train']:   # a model file (utils.model_file) has no training history
        plotting.plot_curves(state['history'], run.path('plots', '_curves.png'))
    save_pictures(model, pre, test_images, args, run.paths, run.prefix, best.get('best_iter', state['iter']))
    if args.latent_dim == 2:
        save_latent_plot(model, pre, *run.test, run.path('plots', '_latent.png'), run.prefix)
    if exact:
        posterior2d.posterior_figure(model, pre, *run.test, run.path('plots', '_posterior.png'), run.prefix)

    which = f'the best model (iteration {best["best_iter"]} of {state["iter"]})' if best else f'iteration {state["iter"]}'
    print(f'\ntest set ({test_images.shape[0]} images), {which}, {run.prefix}')
    iw = f'IW K={args.iw_samples}'
    if pre.binary:
        density = 'log p(x)'
    else:   # 8-bit data: bits/dim first; the nats are those of the dequantized image, not of the 8-bit one
        density = 'log p(y)'
        print(f'  {"-ELBO":<28}{metrics["test_bpd_elbo"]:>12.4f} bits/dim')
        if args.iw_samples:
            print(f'  {"-log p(x), " + iw:<28}{metrics["test_bpd_log_px_iw"]:>12.4f} bits/dim')
        if exact:
            print(f'  {"-log p(x), exact (grid)":<28}{record["test_bpd_log_px_exact"]:>12.4f} bits/dim')
        print('  log-density of the dequantized image y = (x + u)/256 in [0, 1)^D, in nats:')
    print(f'  {"ELBO":<28}{metrics["test_elbo"]:>12.3f} nats')
    if args.iw_samples:
        print(f'  {density + ", " + iw:<28}{metrics["test_log_px_iw"]:>12.3f} nats')
    if exact:
        print(f'  {density + ", exact (grid)":<28}{record["test_log_px_exact"]:>12.3f} nats')
        print(f'  {"  exact - ELBO (the KL)":<28}{record["test_gap_elbo"]:>12.3f} nats')
        if args.iw_samples:
            print(f'  {"  exact - IW":<28}{record["test_gap_iw"]:>12.3f} nats')
    if best:
        print(f'  {"ELBO of the last iterate":<28}{best["last_test_elbo"]:>12.3f} nats')
    if args.binarize == 'none' and pre.binary:
        print('  (--binarize none: BCE on grey levels, not a normalized likelihood)')


# ---- setting a run up -----------------------------------------------------------------------------

def setup(args, parser, argv, script, build_model, arch, check_script_args):
    """The run the flags (or the --resume checkpoint) describe, at the iteration it starts from."""
    ckpt = None
    if args.resume:
        ckpt = load_checkpoint(args.resume, script)
        if 'optimizer' not in ckpt and not args.eval_only:
            raise UsageError(f'{args.resume} holds a model alone, no optimizer state: evaluate it with --eval_only, '
                             'or resume training from its run\'s checkpoints/<prefix>.pt')
        config.merge_config(args, ckpt, config.explicit_flags(parser, argv), args.resume)
    config.check_args(args)
    image_shape = datasets.image_shape(args.dataset)
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
    if args.compile == 2 and (device.type != 'cuda' or distributed.active()):
        where = f'this {device.type} device' if device.type != 'cuda' else 'torchrun'
        raise UsageError(f'--compile 2 (CUDA graphs) needs one CUDA device in a single process, not {where}: '
                         'use --compile 1')
    if args.precision == 'bf16' and not (device.type == 'cpu' or
                                         (device.type == 'cuda' and torch.cuda.is_bf16_supported())):
        raise UsageError(f'--precision bf16 is not supported on this {device.type} device: use --precision fp32')
    paths = prepare_out_dirs(args.out_dir, create=distributed.is_main())

    if device.type == 'cpu':
        # A weight whose gradient is exactly zero for a while (a pixel black in every image of the batch, a ReLU
        # unit off) has Adam's first moment decay through the subnormal floats, which some CPUs handle 10-30x
        # slower; flushed to zero they change no weight (docs/speed.md). This sets the calling thread's flag,
        # which does all the work at one thread.
        torch.set_flush_denormal(True)
    torch.manual_seed(args.seed)
    model = build_model(args, image_shape).to(device)
    fused = device.type in FUSED_ADAM_DEVICES
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(args.momentum, args.decay), fused=fused)
    state = {'iter': 0, 'skipped': 0, 'history': {'train': [], 'eval': []}, 'best': None, 'stopped_early': False}
    if ckpt:
        try:
            model.load_state_dict(ckpt['model'])
            if 'optimizer' in ckpt:
                optimizer.load_state_dict(ckpt['optimizer'])
        except (RuntimeError, ValueError, KeyError) as e:
            raise UsageError(f'{args.resume} does not match this model: {str(e).splitlines()[0]}') from None
        for group in optimizer.param_groups:
            group.update(lr=args.lr, fused=fused)   # a checkpoint from another device may say otherwise
        state.update({key: ckpt[key] for key in ('iter', *RUN_STATE) if key in ckpt})

    log = print if distributed.is_main() else lambda *_: None
    train_images, train_labels = datasets.load_split(args.dataset, args.data_dir, train=True, log=log)
    test_images, test_labels = datasets.load_split(args.dataset, args.data_dir, train=False,
                                                   log=lambda *_: None)   # the same fetch: said once
    if args.val_size >= len(train_images):
        raise UsageError(f'--val_size {args.val_size} leaves no training images: {args.dataset} has '
                         f'{len(train_images)}; use fewer')
    n_train = len(train_images) - args.val_size   # the last --val_size images are the validation set
    val_images = train_images[n_train:]
    train_images, train_labels = train_images[:n_train], train_labels[:n_train]
    if datasets.is_binary(args.dataset) and args.binarize != 'none':
        test_images = data_utils.static_binarize(test_images, data_utils.TEST_BINARIZATION_SEED)
        val_images = data_utils.static_binarize(val_images, data_utils.VAL_BINARIZATION_SEED)
        if args.binarize == 'static':
            train_images = data_utils.static_binarize(train_images, args.seed)
    if args.batch_size > len(train_images):
        raise UsageError(f'--batch_size {args.batch_size} is larger than the {len(train_images)} training images '
                         f'of {args.dataset} under {args.data_dir}')
    batches = data_utils.Batches(train_images, train_labels, args.batch_size, device, args.seed,
                                 distributed.rank(), world)
    test = (test_images.to(device), test_labels.to(device))
    monitor = (val_images.to(device), 'val') if args.val_size else (test[0], 'test')
    if ckpt and 'batches' in ckpt:
        batches.load_state_dict(ckpt['batches'])
        torch.set_rng_state(ckpt['rng']['cpu'])
        if ckpt['rng']['cuda'] and device.type == 'cuda':
            torch.cuda.set_rng_state_all(ckpt['rng']['cuda'])
    distributed.seed_rank(args.seed, state['iter'])
    pre = data_utils.Preprocessor(args.dataset, binarize=args.binarize, flip=args.flip)
    run = Run(args, script, config.run_prefix(args, arch(args)), paths, model, optimizer, pre, batches,
              monitor, test, state)
    if ckpt and distributed.is_main():
        carry_best(run)
    return run


def already_finished(run):
    """Whether a resumed run has nothing left to do: its training ended (--max_iter reached, or stopped
    early) and `finish` wrote its summary at that iteration. Resuming it would only evaluate it again and
    replace the summary, and with it an IW estimate an --eval_only run may have added."""
    state = run.state
    if run.args.eval_only or not run.args.resume or (state['iter'] < run.args.max_iter and not state['stopped_early']):
        return False
    try:
        with open(run.path('logs', '_summary.json')) as f:
            return json.load(f).get('iter') == state['iter']
    except (OSError, ValueError):   # killed before the summary was written: `finish` has still to run
        return False


def carry_best(run):
    """Resumed into a new --out_dir, the run's best checkpoint (beside the --resume checkpoint) is copied
    there, where training replaces it by a better one and `finish` evaluates it."""
    best = run.path('checkpoints', '_best.pt')
    source = os.path.join(os.path.dirname(run.args.resume), os.path.basename(best))
    if run.state['best'] is not None and os.path.isfile(source) \
            and not (os.path.exists(best) and os.path.samefile(source, best)):
        with open(source, 'rb') as src:   # atomically: a kill mid-copy leaves no torn checkpoint
            atomic_write(best, lambda f: shutil.copyfileobj(src, f))


def main(parser, script, build_model, arch, check_script_args=None, argv=None):
    """Parse flags, then train and evaluate; every expected failure is one line and an exit code.

    Distributed, a rank other than 0 prefixes its error line with [rankN]: (as torch does); a
    divergence, which every rank meets at the same step, is printed by rank 0 only.
    """
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    tag = f'[rank{distributed.rank()}]: ' if distributed.rank() else ''
    try:
        run = setup(args, parser, argv, script, build_model, arch, check_script_args)
        if already_finished(run):
            if distributed.is_main():
                print(f'{run.prefix} finished at iteration {run.state["iter"]}; its summary stands: '
                      f'{run.path("logs", "_summary.json")}. To evaluate it again, add --eval_only', file=sys.stderr)
            code = 0
        else:
            signum = None if args.eval_only else train(run)
            if signum is None:
                finish(run)
            code = 0 if signum is None else 128 + signum
    except UsageError as e:   # datasets.DataError too
        print(f'{tag}error: {e}', file=sys.stderr)
        code = 2
    except Diverged as e:
        if not tag:
            print(f'error: {e}', file=sys.stderr)
        code = 3
    finally:
        distributed.cleanup()
    sys.exit(code)
