"""Data-parallel training on the CPU with Gloo: two processes against one.

Function-level checks run the real pieces (distributed.setup and wrap, the sharded Batches,
train.train_step, evaluate.evaluate) in two processes started with torch.multiprocessing; the script-level
ones run the training scripts under `torchrun --standalone --nproc_per_node 2`, exactly as a user would.

The one-step test fixes the noise: training noise (reparameterization, dequantization, flips) is drawn
per rank on purpose (distributed.seed_rank), so two processes cannot draw the very numbers one process
draws for the same examples. It uses statically binarized MNIST (no preprocessing noise) and a
reparameterization noise that is a fixed function of the example, so an example gets the same noise on
whichever rank it lands; everything else is the code the scripts run.
"""
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import data_utils
import datasets
import distributed
import evaluate
import static_flow_conv_vae
import static_flow_vae
import train
import vae
from conftest import make_data_root, subprocess_env
from devices import CUDA_ONLY
from scripts import ROOT, read_log, run_script

TORCHRUN = shutil.which('torchrun', path=os.path.dirname(sys.executable)) or shutil.which('torchrun')
ENV = subprocess_env()
CONV_FLAGS = ['--base_dim', '2', '--scale', '1', '--latent_dim', '3', '--flow', 'planar', '--length', '2',
        '--batch_size', '8', '--iw_samples', '3', '--sample_size', '4', '--log_every', '2', '--sample_every', '2', '--eval_every', '2',
        '--ckpt_every', '2', '--device', 'cpu']


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    """This file's own data: 40 training and 30 test images, so that the test set splits unevenly over ranks."""
    return make_data_root(tmp_path_factory.mktemp('data'), ('mnist', 'svhn'), n_train=40, n_test=30)


# ---- two processes with torch.multiprocessing ----------------------------------------------------

def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def one_thread():
    """The reference computations run with the ranks' thread count, so float sums are ordered alike."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def spawn(fn, *args, world=2, timeout=120):
    """Run fn(rank, world, *args) in `world` processes joined in a Gloo group; fails on an error or a hang."""
    ctx = mp.start_processes(_join_group, (fn, world, free_port(), args), nprocs=world, join=False)
    deadline = time.monotonic() + timeout
    while not ctx.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ctx.processes:
                p.kill()
            raise AssertionError(f'{fn.__name__}: the ranks did not finish within {timeout} s (a deadlock?)')


def _join_group(rank, fn, world, port, args):
    """What torchrun gives a worker: its environment; then the code under test joins the group itself."""
    os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        fn(rank, world, *args)
    finally:
        distributed.cleanup()


# ---- sharded batches -----------------------------------------------------------------------------

@pytest.mark.parametrize('world', [2, 4])
def test_ranks_shards_make_up_the_single_process_batch_and_resume_at_any_world_size(world):
    n, batch = 22, 8   # 2 batches per epoch, 6 images dropped
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1)
    single = data_utils.Batches(images, torch.arange(n), batch, 'cpu', seed=3)
    ranks = [data_utils.Batches(images, torch.arange(n), batch, 'cpu', seed=3, rank=r, world_size=world)
             for r in range(world)]
    for step in range(5):   # two and a half epochs
        whole = next(single)[1]
        parts = [next(b)[1] for b in ranks]
        assert all(len(p) == batch // world for p in parts)
        assert torch.equal(torch.cat(parts), whole), step
    # a distributed state resumes in one process, and a single-process one in a rank
    resumed = data_utils.Batches(images, torch.arange(n), batch, 'cpu', seed=99)
    resumed.load_state_dict(ranks[-1].state_dict())
    rank1 = data_utils.Batches(images, torch.arange(n), batch, 'cpu', seed=99, rank=1, world_size=world)
    rank1.load_state_dict(single.state_dict())
    for _ in range(3):
        whole = next(single)[1]
        assert torch.equal(next(resumed)[1], whole)
        assert torch.equal(next(rank1)[1], whole[batch // world:2 * batch // world])
    with pytest.raises(ValueError, match='multiple of world_size 3'):
        data_utils.Batches(images, torch.arange(n), batch, 'cpu', seed=0, rank=0, world_size=3)


# ---- one optimizer step ----------------------------------------------------------------------------

NOISE = torch.randn(28 * 28, 2, generator=torch.Generator().manual_seed(0))
STEPS, BATCH = 5, 16   # 40 images: 2 batches per epoch, so the steps cross two epochs
TRAINING = dict(dataset='mnist', latent_dim=2, length=2, lr=1e-2, momentum=0.9, decay=0.999, objective='elbo',
                warmup=3, clip_grad=0.0, precision='fp32')
MLP_STEPS = {   # static_flow_vae.py's model, static and amortized flows
    'static planar': (static_flow_vae.build_model, dict(hidden_dim=16, layer=1, gate=0, flow='planar', amortized=False)),
    'amortized nice': (static_flow_vae.build_model, dict(hidden_dim=16, layer=1, gate=0, flow='nice', amortized=True)),
}
CONV = dict(base_dim=4, scale=1, res_blocks=1, bottleneck=0, weight_norm=1, flow='planar')
CONV_STEPS = {   # the conv VAE's batch norm: global statistics with --sync_bn, each rank's own without
    'sync_bn': (static_flow_conv_vae.build_model, dict(CONV, sync_bn=1)),
    'plain batch norm': (static_flow_conv_vae.build_model, dict(CONV, sync_bn=0)),
}


def fixed_noise_forward(self, x, eps=None):
    """FlowVAE.forward with eps a fixed function of the example: the same on any rank, in any batch."""
    return ORIGINAL_FORWARD(self, x, torch.cos(x.flatten(1) @ NOISE.to(x.device)))


ORIGINAL_FORWARD = vae.FlowVAE.forward


def train_steps(data_root, configs, rank=0, world=1, device='cpu'):
    """STEPS of train.train_step through distributed.wrap on this rank's slices; per config: the loss,
    whether it was applied, the gradients of every step, and the model's state at the end."""
    vae.FlowVAE.forward = fixed_noise_forward
    try:
        images, labels = datasets.load_split('mnist', data_root, train=True, log=lambda *_: None)
        images = data_utils.static_binarize(images, 0)
        pre = data_utils.Preprocessor('mnist', binarize='static')
        results = {}
        for name, (build_model, config) in configs.items():
            args = SimpleNamespace(**TRAINING, **config)
            torch.manual_seed(0)
            model = build_model(args, (1, 28, 28)).to(device)
            # eps 1e-3, not 1e-8: Adam moves a weight whose gradient is near eps by about lr whatever the gradient's
            # last bits, which differ with the summation order; a larger eps keeps the final states comparable
            optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(args.momentum, args.decay), eps=1e-3)
            params = list(model.parameters())
            net = distributed.wrap(model)
            batches = data_utils.Batches(images, labels, BATCH, device, seed=0, rank=rank, world_size=world)
            steps = []
            for it in range(1, STEPS + 1):
                x, log_det_pre = pre(next(batches)[0])
                loss, applied = train.train_step(model, optimizer, params, x, log_det_pre, args, it, net)
                steps.append((float(loss), applied, [p.grad.cpu() for p in params]))
            results[name] = steps, {k: v.cpu() for k, v in model.state_dict().items()}
        return results
    finally:
        vae.FlowVAE.forward = ORIGINAL_FORWARD


def assert_same_steps(single, ranks, name):
    """The ranks' losses, gradients (every step) and final state are one process's, to float rounding."""
    steps, state = single[name]
    dist_steps, dist_state = ranks[name]
    for it, ((loss, applied, grads), (d_loss, d_applied, d_grads)) in enumerate(zip(steps, dist_steps), 1):
        assert applied and d_applied
        assert d_loss == pytest.approx(loss, rel=1e-6), (name, it)
        for g, d in zip(grads, d_grads):   # relative to the tensor's largest entry
            torch.testing.assert_close(d, g, rtol=1e-4, atol=1e-5 * float(g.abs().max()), msg=f'{name}, step {it}')
    for key, value in state.items():
        torch.testing.assert_close(dist_state[key], value, rtol=1e-5, atol=1e-6, msg=f'{name} {key}')


def _train_steps_worker(rank, world, data_root, out):
    distributed.setup(torch.device('cpu'))
    torch.save(train_steps(data_root, MLP_STEPS, rank, world), os.path.join(out, f'rank{rank}.pt'))


def test_optimizer_steps_with_two_processes_equal_one_process_on_the_global_batch(data_root, tmp_path):
    """Global batch 16: each rank's loss is the mean over its 8 examples and DDP averages the gradients,
    which must be the gradient of the 16-example mean that one process computes (step after step)."""
    spawn(_train_steps_worker, data_root, str(tmp_path))
    with one_thread():
        single = train_steps(data_root, MLP_STEPS)
    for rank in range(2):
        ranks = torch.load(tmp_path / f'rank{rank}.pt', weights_only=True)
        for name in MLP_STEPS:
            assert_same_steps(single, ranks, name)


def _sync_bn_worker(rank, world, data_root, out):
    dist.init_process_group('gloo')   # two ranks on one GPU: NCCL refuses that, Gloo takes CUDA tensors
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.save(train_steps(data_root, CONV_STEPS, rank, world, 'cuda'), os.path.join(out, f'rank{rank}.pt'))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: torch's SyncBatchNorm has no CPU kernel")
# (benchmarks/gpu_check.sh selects it by name: -k 'cuda or sync_bn_steps')
def test_sync_bn_steps_with_two_processes_equal_one_process_on_the_global_batch(data_root, tmp_path):
    """The conv VAE: with --sync_bn the batch-norm statistics are the global batch's, so two processes on
    one GPU take one process's steps (gradients and running statistics); without it they do not."""
    spawn(_sync_bn_worker, data_root, str(tmp_path))
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    single = train_steps(data_root, CONV_STEPS, device='cuda')
    for rank in range(2):
        ranks = torch.load(tmp_path / f'rank{rank}.pt', weights_only=True)
        assert_same_steps(single, ranks, 'sync_bn')
        with pytest.raises(AssertionError):
            assert_same_steps(single, ranks, 'plain batch norm')


def _nccl_steps_worker(rank, world, data_root, out):
    distributed.setup(torch.device('cuda'))   # NCCL, the GPU of LOCAL_RANK
    assert dist.get_backend() == 'nccl'
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    torch.save(train_steps(data_root, MLP_STEPS, rank, world, 'cuda'), os.path.join(out, f'rank{rank}.pt'))


@pytest.mark.parametrize('device', CUDA_ONLY)
def test_ddp_over_nccl_at_world_size_1_steps_as_one_process(device, data_root, tmp_path):
    """DistributedDataParallel over NCCL with one rank: its steps (the loss and the non-finite flag
    all-reduced together, the gradients by DDP) are those of the plain process, to float rounding."""
    spawn(_nccl_steps_worker, data_root, str(tmp_path), world=1)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    single = train_steps(data_root, MLP_STEPS, device=device)
    ranks = torch.load(tmp_path / 'rank0.pt', weights_only=True)
    for name in MLP_STEPS:
        assert_same_steps(single, ranks, name)


# ---- evaluation -----------------------------------------------------------------------------------

def eval_model(data_root):
    """The conv VAE (batch norm) on SVHN-shaped data after two training steps, and its test set."""
    args = SimpleNamespace(dataset='svhn', latent_dim=2, base_dim=2, scale=1, res_blocks=1, bottleneck=0,
                           weight_norm=1, flow='radial', length=2)
    torch.manual_seed(0)
    model = static_flow_conv_vae.build_model(args, (3, 32, 32))
    pre = data_utils.Preprocessor('svhn')
    images, _ = datasets.load_split('svhn', data_root, train=True, log=lambda *_: None)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for start in (0, 16):   # moves the batch-norm running statistics away from their initial values
        x, log_det_pre = pre(images[start:start + 16])
        optimizer.zero_grad()
        (vae.training_loss(model(x), model.has_flow) - log_det_pre).mean().backward()
        optimizer.step()
    test = datasets.load_split('svhn', data_root, train=False, log=lambda *_: None)
    return model, pre, test


def evaluate_small_batches(model, pre, test):
    # 30 test images in ELBO batches of 8 and IW batches of 6: the ranks get unequal shares
    return evaluate.evaluate(model, pre, test[0], iw_samples=3, batch_size=8, iw_batch=6)


def _evaluate_worker(rank, world, data_root, out):
    distributed.setup(torch.device('cpu'))
    model, pre, test = eval_model(data_root)
    if rank:   # the other ranks' batch-norm statistics differ from rank 0's, as after a DDP step
        for buffer in model.buffers():
            if buffer.is_floating_point():
                buffer.add_(1.0)
    torch.save(evaluate_small_batches(model, pre, test), os.path.join(out, f'rank{rank}.pt'))


def test_distributed_evaluation_equals_single_process_evaluation(data_root, tmp_path):
    """Each rank evaluates its share of the test batches (dequantization and reparameterization noise
    seeded per batch) with rank 0's batch-norm statistics; the all-reduced sums give one process's numbers."""
    spawn(_evaluate_worker, data_root, str(tmp_path))
    with one_thread():
        model, pre, test = eval_model(data_root)
        single = evaluate_small_batches(model, pre, test)
    assert set(single) == {'test_elbo', 'test_log_px_iw', 'iw_samples', 'test_bpd_elbo', 'test_bpd_log_px_iw'}
    for rank in range(2):
        metrics = torch.load(tmp_path / f'rank{rank}.pt', weights_only=True)
        assert metrics.keys() == single.keys()
        for key, value in single.items():
            assert metrics[key] == pytest.approx(value, rel=1e-6), (key, rank)


# ---- the scripts under torchrun -----------------------------------------------------------------

def torchrun(script, argv, nproc=2, timeout=180):
    proc = subprocess.run([TORCHRUN, '--standalone', '--nproc_per_node', str(nproc), script, *argv], cwd=ROOT,
                          env=ENV, capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


def test_a_torchrun_run_writes_once_and_its_checkpoint_resumes_in_one_process_and_back(data_root, tmp_path):
    script = 'static_flow_conv_vae.py'
    out = str(tmp_path / 'run')
    code, stdout, stderr = torchrun(script, [*CONV_FLAGS, '--dataset', 'svhn', '--max_iter', '4', '--data_dir', data_root,
                                             '--out_dir', out])
    assert code == 0, stderr[-3000:]
    assert stdout.count('test set (30 images), iteration 4') == 1, stdout   # the final table, once
    assert '[rank1]' not in stderr, stderr[-3000:]
    prefix, records = read_log(out)
    assert [(r['iter'], sorted(r)) for r in records] == [     # each record once: rank 1 wrote nothing
        (2, ['bpd', 'iter', 'its_per_s', 'loss', 'skipped']), (2, ['iter', 'test_bpd_elbo', 'test_elbo']),
        (4, ['bpd', 'iter', 'its_per_s', 'loss', 'skipped']), (4, ['iter', 'test_bpd_elbo', 'test_elbo']),
        (4, ['final', 'iter', 'iw_samples', 'skipped', 'test_bpd_elbo', 'test_bpd_log_px_iw', 'test_elbo',
             'test_log_px_iw'])]
    assert sorted(os.listdir(os.path.join(out, 'samples'))) == [f'{prefix}_2.png', f'{prefix}_4.png']
    ckpt_path = os.path.join(out, 'checkpoints', f'{prefix}.pt')
    assert os.listdir(os.path.join(out, 'checkpoints')) == [f'{prefix}.pt']
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt['iter'] == 4 and not any(k.startswith('module.') for k in ckpt['model'])

    # one process evaluates the distributed run's checkpoint to the same numbers
    assert run_script(script, ['--resume', ckpt_path, '--eval_only', '--iw_samples', '3', '--data_dir', data_root,
                               '--out_dir', str(tmp_path / 'eval')]) == 0
    final = read_log(str(tmp_path / 'eval'))[1][-1]
    for key in ('test_elbo', 'test_log_px_iw'):
        assert final[key] == pytest.approx(records[-1][key], rel=1e-6), key

    # ... and continues it; torchrun then continues the single process's checkpoint
    assert run_script(script, ['--resume', ckpt_path, '--max_iter', '6', '--data_dir', data_root]) == 0
    assert torch.load(ckpt_path, weights_only=True)['iter'] == 6
    code, stdout, stderr = torchrun(script, ['--resume', ckpt_path, '--max_iter', '8', '--data_dir', data_root])
    assert code == 0, stderr[-3000:]
    assert stdout.count('iteration 8') == 1
    _, records = read_log(out)
    assert [r['iter'] for r in records if 'loss' in r] == [2, 4, 6, 8]
    assert records[-1]['final'] and records[-1]['iter'] == 8
    assert torch.load(ckpt_path, weights_only=True)['iter'] == 8


@pytest.mark.parametrize('device', CUDA_ONLY)
def test_a_torchrun_run_over_nccl_at_world_size_1_trains_as_one_process(device, data_root, tmp_path):
    """static_flow_vae.py under torchrun with one CUDA rank (NCCL, DDP, the per-step all-reduce of the loss
    and the non-finite flag) ends at the parameters of the plain CUDA run, to rtol 1e-5 and atol 1e-6."""
    flags = ['--layer', '1', '--hidden_dim', '8', '--latent_dim', '3', '--flow', 'planar', '--length', '2',
             '--batch_size', '8', '--iw_samples', '2', '--sample_size', '4', '--max_iter', '6', '--log_every', '2',
             '--data_dir', data_root, '--device', device]
    outs = {how: str(tmp_path / how) for how in ('torchrun', 'plain')}
    code, _, stderr = torchrun('static_flow_vae.py', [*flags, '--out_dir', outs['torchrun']], nproc=1)
    assert code == 0, stderr[-3000:]
    assert run_script('static_flow_vae.py', [*flags, '--out_dir', outs['plain']]) == 0
    a, b = (torch.load(os.path.join(out, 'checkpoints', os.listdir(os.path.join(out, 'checkpoints'))[0]),
                       weights_only=True) for out in outs.values())
    assert a['iter'] == b['iter'] == 6 and a['skipped'] == b['skipped'] == 0
    for key, value in b['model'].items():
        torch.testing.assert_close(a['model'][key], value, rtol=1e-5, atol=1e-6, msg=key)


def test_two_nodes_meet_through_the_c10d_rendezvous(data_root, tmp_path):
    """The multi-node command of docs/scaling.md, two torchrun launchers on this machine standing in for two nodes."""
    out, port = str(tmp_path / 'run'), free_port()
    argv = [*CONV_FLAGS, '--dataset', 'svhn', '--max_iter', '2', '--data_dir', data_root, '--out_dir', out]
    nodes = [subprocess.Popen([TORCHRUN, '--nnodes', '2', '--nproc_per_node', '1', '--rdzv_backend', 'c10d',
                               '--rdzv_id', 'test', '--rdzv_endpoint', f'127.0.0.1:{port}',
                               'static_flow_conv_vae.py', *argv], cwd=ROOT, env=ENV, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    results = [node.communicate(timeout=180) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], [err[-2000:] for _, err in results]
    assert sum(stdout.count('test set (30 images), iteration 2') for stdout, _ in results) == 1
    _, records = read_log(out)
    assert [r['iter'] for r in records if r.get('final')] == [2]


def _signal_worker(rank, world, data_root, out):
    """Rank 1 alone gets SIGTERM in its third training step; rank 0 never does."""
    if rank == 1:
        original, calls = data_utils.Batches.__next__, [0]

        def next_batch(self):
            calls[0] += 1
            if calls[0] == 3:
                os.kill(os.getpid(), signal.SIGTERM)
            return original(self)
        data_utils.Batches.__next__ = next_batch
    code = run_script('static_flow_vae.py', ['--layer', '1', '--hidden_dim', '8', '--latent_dim', '3',
                                             '--batch_size', '8', '--max_iter', '50', '--sample_every', '100',
                                             '--iw_samples', '2', '--device', 'cpu', '--data_dir', data_root,
                                             '--out_dir', out])
    with open(os.path.join(out, f'code{rank}'), 'w') as f:
        f.write(str(code))


def test_a_signal_on_one_rank_stops_every_rank_at_the_same_iteration(data_root, tmp_path, capfd):
    out = str(tmp_path)
    spawn(_signal_worker, data_root, out, timeout=90)
    assert [open(os.path.join(out, f'code{r}')).read() for r in range(2)] == [str(128 + signal.SIGTERM)] * 2
    _, records = read_log(out)
    assert records[-1] == {'iter': 3, 'interrupted': 'SIGTERM'}
    ckpt = torch.load(os.path.join(out, 'checkpoints', os.listdir(os.path.join(out, 'checkpoints'))[0]),
                      weights_only=True)
    assert ckpt['iter'] == 3
    assert capfd.readouterr().err.count('stopped by SIGTERM at iteration 3') == 1


# ---- refused flags ---------------------------------------------------------------------------------

@pytest.mark.parametrize('script,flags,expected', [
    ('static_flow_vae.py', ['--batch_size', '8'], '--batch_size 8 is not divisible by the world size 3: '
                                                   'use a multiple of 3'),
    ('static_flow_conv_vae.py', ['--batch_size', '9', '--sync_bn'], '--sync_bn needs CUDA'),
])
def test_refused_before_joining_the_group(script, flags, expected, monkeypatch, tmp_path, capsys):
    """torchrun's environment for rank 0 of 3; the refusal comes before any rendezvous or data."""
    if 'sync_bn' in flags and torch.cuda.is_available():
        pytest.skip('this machine has CUDA')
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('WORLD_SIZE', '3')
    monkeypatch.setenv('LOCAL_RANK', '0')
    code = run_script(script, [*flags, '--device', 'cpu', '--data_dir', str(tmp_path / 'data'),
                               '--out_dir', str(tmp_path / 'out')])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and err.count('\n') == 1 and expected in err, err
    assert not os.path.exists(tmp_path / 'data') and not os.path.exists(tmp_path / 'out')


def test_sync_bn_is_plain_batch_norm_in_one_process(data_root, tmp_path):
    """--sync_bn converts the conv VAE's batch norm; without a process group it changes nothing, and the
    checkpoints of the two are interchangeable."""
    outs = {flag: str(tmp_path / f'sync{flag}') for flag in ('0', '1')}
    for flag, out in outs.items():
        assert run_script('static_flow_conv_vae.py', [*CONV_FLAGS, '--max_iter', '2', '--sync_bn', flag,
                                                      '--data_dir', data_root, '--out_dir', out]) == 0
    ckpts = [torch.load(os.path.join(out, 'checkpoints', os.listdir(os.path.join(out, 'checkpoints'))[0]),
                        weights_only=True) for out in outs.values()]
    assert ckpts[0]['model'].keys() == ckpts[1]['model'].keys()
    for key, value in ckpts[0]['model'].items():
        torch.testing.assert_close(ckpts[1]['model'][key], value, rtol=0, atol=0, msg=key)
    args = SimpleNamespace(dataset='mnist', latent_dim=2, base_dim=2, scale=1, res_blocks=1, bottleneck=0,
                           weight_norm=1, flow='none', length=0, sync_bn=1)
    model = static_flow_conv_vae.build_model(args, (1, 28, 28))
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
    assert not any(type(m) is torch.nn.BatchNorm2d for m in model.modules())
