"""The three scripts end to end on tiny synthetic data: outputs, metrics, resume, the validation split and
early stopping."""
import argparse
import inspect
import json
import math
import os
import shutil
import signal

import pytest
import torch
from PIL import Image
from torch.optim.optimizer import register_optimizer_step_pre_hook

import data_utils
import datasets
import evaluate
import posterior2d
import static_flow_vae
import train
from devices import CUDA, DEVICES
from scripts import read_log, run_script

TINY = ['--max_iter', '6', '--batch_size', '8', '--latent_dim', '3', '--length', '2', '--log_every', '2',
        '--sample_every', '3', '--eval_every', '3', '--ckpt_every', '3', '--iw_samples', '4', '--sample_size', '4']
SCRIPT_FLAGS = {
    'static_flow_vae.py': ['--layer', '1', '--hidden_dim', '16'],
    'dynamic_flow_vae.py': ['--layer', '1', '--hidden_dim', '16'],
    'static_flow_conv_vae.py': ['--base_dim', '4', '--scale', '1'],
}
ALL_KINDS = ['none', 'planar', 'radial', 'householder', 'nice']


def grid_size(n, side, nrow):
    """torchvision's make_grid with padding 2: (width, height)."""
    rows = -(-n // nrow)
    return nrow * (side + 2) + 2, rows * (side + 2) + 2


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('script', list(SCRIPT_FLAGS))
@pytest.mark.parametrize('kind', ALL_KINDS)
def test_script_writes_every_output(script, kind, device, data_root, tmp_path):
    out = str(tmp_path)
    code = run_script(script, [*TINY, *SCRIPT_FLAGS[script], '--flow', kind, '--data_dir', data_root,
                               '--out_dir', out, '--device', device])
    assert code == 0
    prefix, records = read_log(out)
    final = records[-1]
    assert final['final'] and final['iter'] == 6 and final['iw_samples'] == 4
    assert all(torch.isfinite(torch.tensor(final[k])) for k in ('test_elbo', 'test_log_px_iw'))
    # binary images: log p(x) < 0, and the IW estimate (K = 4) is not below the ELBO beyond noise
    assert final['test_elbo'] < 0 and final['test_log_px_iw'] < 0
    assert final['test_log_px_iw'] >= final['test_elbo'] - 0.5
    assert [r['iter'] for r in records if 'loss' in r] == [2, 4, 6]
    assert [r['iter'] for r in records if 'test_elbo' in r and not r.get('final')] == [3, 6]
    assert ('_amortized' in prefix) == (script == 'dynamic_flow_vae.py')
    if kind != 'none':
        assert f'__{kind}_len2' in prefix

    for it in (3, 6):
        with Image.open(os.path.join(out, 'samples', f'{prefix}_{it}.png')) as img:
            assert img.size == grid_size(4, 28, 2)
        with Image.open(os.path.join(out, 'reconstructions', f'{prefix}_{it}.png')) as img:
            assert img.size == grid_size(64, 28, 16)  # 32 test images beside their reconstructions
    with Image.open(os.path.join(out, 'plots', f'{prefix}_curves.png')) as img:
        assert img.size[0] > 300 and img.size[1] > 200
    assert not os.path.exists(os.path.join(out, 'plots', f'{prefix}_posterior.png'))   # not a 2-D run
    assert 'test_log_px_exact' not in final
    ckpt = torch.load(os.path.join(out, 'checkpoints', f'{prefix}.pt'), weights_only=True)
    assert ckpt['iter'] == 6 and ckpt['script'] == script and ckpt['config']['flow'] == kind
    assert ckpt['config']['device'] == device and (len(ckpt['rng']['cuda']) > 0) == torch.cuda.is_available()


@pytest.mark.parametrize('script,kind', [('static_flow_vae.py', 'householder'), ('dynamic_flow_vae.py', 'planar'),
                                         ('static_flow_conv_vae.py', 'nice')])
def test_a_2d_run_reports_the_exact_log_likelihood_and_draws_the_posterior(script, kind, data_root, tmp_path):
    """With --latent_dim 2 the final record has log p(x) by quadrature and the gaps of the ELBO and the IW
    estimate to it (both bounds below it, up to IW's noise), and plots/ has the latent and posterior figures."""
    out = str(tmp_path)
    flags = [*TINY, *SCRIPT_FLAGS[script], '--latent_dim', '2', '--flow', kind, '--data_dir', data_root,
             '--out_dir', out]
    assert run_script(script, flags) == 0
    prefix, records = read_log(out)
    final = records[-1]
    assert final['test_gap_elbo'] == pytest.approx(final['test_log_px_exact'] - final['test_elbo'])
    assert final['test_gap_iw'] == pytest.approx(final['test_log_px_exact'] - final['test_log_px_iw'])
    assert final['test_gap_elbo'] > 0 and final['test_gap_iw'] > -0.5
    for name in ('latent', 'posterior'):
        with Image.open(os.path.join(out, 'plots', f'{prefix}_{name}.png')) as img:
            assert img.size[0] > 300 and img.size[1] > 200


@pytest.mark.parametrize('dataset', ['fashion-mnist', 'svhn', 'cifar10'])
@pytest.mark.parametrize('script', ['static_flow_vae.py', 'static_flow_conv_vae.py'])
def test_8bit_datasets_report_bits_per_dim(script, dataset, data_root, tmp_path):
    out = str(tmp_path)
    code = run_script(script, [*TINY, *SCRIPT_FLAGS[script], '--flow', 'planar', '--dataset', dataset,
                               '--data_dir', data_root, '--out_dir', out, '--device', 'cpu'])
    assert code == 0
    prefix, records = read_log(out)
    final = records[-1]
    dims = 28 * 28 if dataset == 'fashion-mnist' else 3 * 32 * 32
    # the synthetic pixels are independent and uniform on 0..255: 8 bits/dim is their entropy, which no model
    # beats; 6 iterations come within a few tenths of it (without the logit's log-det: 2.4 bits/dim off)
    for key in ('elbo', 'log_px_iw'):
        assert 8 < final[f'test_bpd_{key}'] < 8.5, key
        assert final[f'test_bpd_{key}'] == pytest.approx(evaluate.bits_per_dim(final[f'test_{key}'], dims), rel=1e-9)
    side = 28 if dataset == 'fashion-mnist' else 32
    with Image.open(os.path.join(out, 'samples', f'{prefix}_6.png')) as img:
        assert img.size == grid_size(4, side, 2)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('script,kind', [('static_flow_vae.py', 'planar'), ('dynamic_flow_vae.py', 'nice'),
                                         ('static_flow_conv_vae.py', 'radial')])
def test_resume_continues_exactly(script, kind, device, data_root, tmp_path):
    """N iterations, then --resume for N more, gives the parameters of 2N in one go: bit for bit on the CPU;
    on CUDA (where the checkpoint's CUDA RNG state gives the resumed run its noise) to float rounding,
    rtol 1e-5 and atol 1e-6, as cuDNN and CUDA's reductions need not be bitwise repeatable."""
    tol = dict(rtol=0, atol=0) if device == 'cpu' else dict(rtol=1e-5, atol=1e-6)
    flags = [*SCRIPT_FLAGS[script], '--flow', kind, '--data_dir', data_root, '--device', device,
             '--batch_size', '8', '--latent_dim', '3', '--length', '2', '--iw_samples', '2',
             '--sample_every', '4', '--ckpt_every', '4', '--log_every', '2', '--warmup', '5',
             '--val_size', '16', '--eval_every', '1', '--patience', '100']
    straight, split = str(tmp_path / 'straight'), str(tmp_path / 'split')
    assert run_script(script, [*flags, '--max_iter', '8', '--out_dir', straight]) == 0
    assert run_script(script, [*flags, '--max_iter', '4', '--out_dir', split]) == 0
    prefix, _ = read_log(split)
    resume = os.path.join(split, 'checkpoints', f'{prefix}.pt')
    assert run_script(script, ['--resume', resume, '--max_iter', '8', '--data_dir', data_root,
                               '--out_dir', split, '--iw_samples', '2']) == 0

    for name in (f'{prefix}_best.pt', f'{prefix}.pt'):   # the best and the last model, and the early-stopping state
        a = torch.load(os.path.join(straight, 'checkpoints', name), weights_only=True)
        b = torch.load(os.path.join(split, 'checkpoints', name), weights_only=True)
        assert a['iter'] == b['iter'] and a['best'] == b['best'] and a['stopped_early'] == b['stopped_early']
        for key, value in a['model'].items():
            torch.testing.assert_close(b['model'][key], value, **tol, msg=f'{name}: {key}')
    assert a['iter'] == 8
    final_a, final_b = read_log(straight)[1][-1], read_log(split)[1][-1]   # best iteration included
    if device == 'cpu':
        assert final_a == final_b
    else:
        assert final_a.keys() == final_b.keys() and final_a['best_iter'] == final_b['best_iter']
        for key, value in final_a.items():
            assert final_b[key] == pytest.approx(value, rel=1e-5), key


def test_a_resumed_run_drops_the_log_records_after_its_checkpoint(data_root, tmp_path):
    """A run that went on past the checkpoint it is resumed from (iteration 4; it went to 8, and a kill left
    half a line) keeps its log up to iteration 4 but its final evaluation, byte for byte, and then logs as the
    first time: every record once, in order."""
    out = str(tmp_path / 'run')
    flags = [*TINY, *SCRIPT_FLAGS['static_flow_vae.py'], '--flow', 'planar', '--data_dir', data_root]
    assert run_script('static_flow_vae.py', [*flags, '--max_iter', '4', '--out_dir', out]) == 0
    prefix, _ = read_log(out)
    resume, log = os.path.join(out, 'checkpoints', f'{prefix}.pt'), os.path.join(out, 'logs', f'{prefix}.jsonl')
    at_4 = shutil.copyfile(resume, tmp_path / 'at_4.pt')
    with open(log, 'rb') as f:
        lines = f.readlines()
    assert b'"final": true' in lines[-1]
    head = b''.join(lines[:-1])
    assert run_script('static_flow_vae.py', ['--resume', resume, '--max_iter', '8']) == 0
    _, first = read_log(out)
    with open(log, 'a') as f:
        f.write('{"iter": 9, "lo')
    assert run_script('static_flow_vae.py', ['--resume', str(at_4), '--max_iter', '8', '--out_dir', out]) == 0
    _, again = read_log(out)
    with open(log, 'rb') as f:
        assert f.read().startswith(head)

    def without_speed(records):   # it/s is the one field that differs between the two resumed runs
        return [{key: value for key, value in r.items() if key != 'its_per_s'} for r in records]
    assert without_speed(again) == without_speed(first)
    assert [r['iter'] for r in again if 'loss' in r] == [2, 4, 6, 8]
    assert [r['iter'] for r in again if r.get('final')] == [8]


def test_a_finished_run_resumed_keeps_its_log_and_summary_and_one_killed_before_its_summary_finishes(
        data_root, tmp_path, capsys):
    """Resuming a run that finished (here after an --eval_only pass added its IW estimate) changes no file and
    says how to evaluate it again; a run killed after its last checkpoint but before its summary was written
    is evaluated on resume."""
    out = str(tmp_path / 'run')
    flags = [*TINY, *SCRIPT_FLAGS['static_flow_vae.py'], '--flow', 'planar', '--data_dir', data_root]
    assert run_script('static_flow_vae.py', [*flags, '--iw_samples', '0', '--out_dir', out]) == 0
    prefix, _ = read_log(out)
    resume = os.path.join(out, 'checkpoints', f'{prefix}.pt')
    assert run_script('static_flow_vae.py', ['--resume', resume, '--eval_only', '--iw_samples', '4']) == 0
    files = [os.path.join(out, 'logs', f'{prefix}{suffix}') for suffix in ('.jsonl', '_summary.json')]

    def contents():
        return [open(path, 'rb').read() for path in files]
    before = contents()
    capsys.readouterr()
    assert run_script('static_flow_vae.py', ['--resume', resume]) == 0
    assert contents() == before
    assert json.loads(before[1])['iw_samples'] == 4
    assert 'finished at iteration 6' in capsys.readouterr().err

    os.remove(files[1])   # killed during the final evaluation
    assert run_script('static_flow_vae.py', ['--resume', resume]) == 0
    summary = json.load(open(files[1]))
    assert summary['iter'] == 6 and summary['final']
    assert [r['iter'] for r in read_log(out)[1] if r.get('final')] == [6]


def test_eval_only_reproduces_the_final_metrics(data_root, tmp_path):
    out = str(tmp_path)
    flags = [*TINY, *SCRIPT_FLAGS['static_flow_vae.py'], '--flow', 'householder', '--data_dir', data_root,
             '--out_dir', out]
    assert run_script('static_flow_vae.py', flags) == 0
    prefix, first = read_log(out)
    resume = os.path.join(out, 'checkpoints', f'{prefix}.pt')
    assert run_script('static_flow_vae.py', ['--resume', resume, '--eval_only', '--iw_samples', '4',
                                             '--data_dir', data_root, '--out_dir', out]) == 0
    _, records = read_log(out)
    for key in ('test_elbo', 'test_log_px_iw'):
        assert records[-1][key] == pytest.approx(first[-1][key], abs=1e-9)


def test_iw_samples_0_skips_the_estimate_and_eval_only_adds_it(data_root, tmp_path):
    """Train with --iw_samples 0 (no IW pass), then --eval_only --iw_samples K gives the estimate."""
    out = str(tmp_path)
    flags = [*TINY, *SCRIPT_FLAGS['static_flow_vae.py'], '--flow', 'planar', '--data_dir', data_root,
             '--out_dir', out]
    assert run_script('static_flow_vae.py', [*flags, '--iw_samples', '0']) == 0
    prefix, records = read_log(out)
    assert records[-1]['final'] and 'test_log_px_iw' not in records[-1]
    resume = os.path.join(out, 'checkpoints', f'{prefix}.pt')
    assert run_script('static_flow_vae.py', ['--resume', resume, '--eval_only', '--iw_samples', '4']) == 0
    _, records = read_log(out)
    assert records[-1]['iw_samples'] == 4
    assert math.isfinite(records[-1]['test_log_px_iw'])


def test_exact_0_skips_the_quadrature_of_a_2d_run_and_eval_only_adds_it(data_root, tmp_path, monkeypatch):
    """A 2-D run with --exact 0 never calls the quadrature: no exact log p(x), gaps or posterior figure in its log,
    summary and plots; --eval_only --exact 1 on its checkpoint then reports them."""
    calls = []
    monkeypatch.setattr(posterior2d, 'exact_log_px', lambda *a, **k: calls.append('exact_log_px'))
    monkeypatch.setattr(posterior2d, 'posterior_figure', lambda *a, **k: calls.append('posterior_figure'))
    out = str(tmp_path)
    flags = [*TINY, *SCRIPT_FLAGS['static_flow_vae.py'], '--latent_dim', '2', '--flow', 'planar', '--exact', '0',
             '--data_dir', data_root, '--out_dir', out]
    assert run_script('static_flow_vae.py', flags) == 0
    assert calls == []
    prefix, records = read_log(out)
    with open(os.path.join(out, 'logs', f'{prefix}_summary.json')) as f:
        summary = json.load(f)
    for final in (records[-1], summary):
        assert final['final'] and 'test_log_px_iw' in final
        assert not {'test_log_px_exact', 'test_gap_elbo', 'test_gap_iw'} & final.keys()
    assert os.path.exists(os.path.join(out, 'plots', f'{prefix}_latent.png'))
    monkeypatch.undo()
    resume = os.path.join(out, 'checkpoints', f'{prefix}.pt')
    assert run_script('static_flow_vae.py', ['--resume', resume, '--eval_only', '--exact', '1']) == 0
    _, records = read_log(out)
    assert records[-1]['test_gap_elbo'] == pytest.approx(records[-1]['test_log_px_exact'] - records[-1]['test_elbo'])


@pytest.mark.parametrize('device,mode', [('cpu', 1), pytest.param('cuda', 1, marks=CUDA.marks),
                                         pytest.param('cuda', 2, marks=CUDA.marks)],
                         ids=['cpu-compile1', 'cuda-compile1', 'cuda-compile2'])
def test_compile_trains_the_same_model(device, mode, data_root, tmp_path):
    """--compile 1 (torch.compile of the training forward) and, on CUDA, --compile 2 (its forward and
    backward replayed as CUDA graphs) give the parameters of the eager run, to rtol 1e-4 and atol 1e-5:
    the same noise (eps from torch's generator), other float rounding of the fused kernels."""
    torch._dynamo.reset()   # a fresh compilation: the cache limit of one process is not this test's
    flags = [*TINY, *SCRIPT_FLAGS['static_flow_vae.py'], '--flow', 'planar', '--data_dir', data_root,
             '--device', device]
    eager, compiled = str(tmp_path / 'eager'), str(tmp_path / 'compiled')
    assert run_script('static_flow_vae.py', [*flags, '--out_dir', eager]) == 0
    assert run_script('static_flow_vae.py', [*flags, '--out_dir', compiled, '--compile', str(mode)]) == 0
    (ckpt,) = os.listdir(os.path.join(eager, 'checkpoints'))
    a = torch.load(os.path.join(eager, 'checkpoints', ckpt), weights_only=True)
    b = torch.load(os.path.join(compiled, 'checkpoints', ckpt), weights_only=True)
    assert b['config']['compile'] == mode and b['skipped'] == 0
    for key, value in a['model'].items():
        torch.testing.assert_close(b['model'][key], value, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize('device', DEVICES)
@pytest.mark.parametrize('script', list(SCRIPT_FLAGS))
def test_precision_bf16_trains_close_to_fp32_and_resumes_in_fp32(script, device, data_root, tmp_path):
    """--precision bf16 (the training forward under autocast) ends near the fp32 run from the same start;
    its test numbers are float32 ones, and the run resumes with --precision fp32."""
    flags = [*TINY, *SCRIPT_FLAGS[script], '--flow', 'planar', '--data_dir', data_root, '--device', device]
    fp32, bf16 = str(tmp_path / 'fp32'), str(tmp_path / 'bf16')
    assert run_script(script, [*flags, '--out_dir', fp32]) == 0
    assert run_script(script, [*flags, '--out_dir', bf16, '--precision', 'bf16']) == 0
    prefix, exact = read_log(fp32)
    _, low = read_log(bf16)
    assert low[-1]['test_elbo'] != exact[-1]['test_elbo']
    assert low[-1]['test_elbo'] == pytest.approx(exact[-1]['test_elbo'], rel=0.01)
    resume = os.path.join(bf16, 'checkpoints', f'{prefix}.pt')
    assert torch.load(resume, weights_only=True)['config']['precision'] == 'bf16'
    assert run_script(script, ['--resume', resume, '--max_iter', '8', '--precision', 'fp32']) == 0
    _, resumed = read_log(bf16)
    assert resumed[-1]['final'] and resumed[-1]['iter'] == 8


# ---- the validation split, the best model and early stopping -----------------------------------------

VAL = [*TINY, *SCRIPT_FLAGS['static_flow_vae.py'], '--flow', 'planar', '--val_size', '16']


def spy_on_evaluate(monkeypatch, val_elbos=None):
    """Record (split, images) of every evaluate call; with val_elbos, the validation ELBOs are those values."""
    calls, real, values = [], train.evaluate, iter(val_elbos or [])

    def evaluate(model, pre, images, iw_samples=0, split='test', **kw):
        calls.append((split, images.clone()))
        metrics = real(model, pre, images, iw_samples, split, **kw)
        if split == 'val' and val_elbos is not None:
            metrics['val_elbo'] = next(values)
        return metrics
    monkeypatch.setattr(train, 'evaluate', evaluate)
    return calls


def test_the_validation_split_is_the_last_images_and_the_test_set_waits_for_the_end(data_root, tmp_path,
                                                                                   monkeypatch):
    """--val_size N holds out the last N training images, the same for every seed; training never sees them,
    the periodic evaluation uses them alone, and the test set is evaluated only after training."""
    images, _ = datasets.load_split('mnist', data_root, train=True)
    real_batches, trained_on = data_utils.Batches, []

    def batches(images, *args, **kwargs):
        trained_on.append(images)
        return real_batches(images, *args, **kwargs)
    monkeypatch.setattr(data_utils, 'Batches', batches)
    seen = {}
    for seed in (0, 1):
        calls = spy_on_evaluate(monkeypatch)
        out = str(tmp_path / f'seed{seed}')
        assert run_script('static_flow_vae.py', [*VAL, '--seed', str(seed), '--data_dir', data_root,
                                                 '--out_dir', out]) == 0
        # iterations 3 and 6 on the validation set; then the test set twice: the last and the best model
        assert [split for split, _ in calls] == ['val', 'val', 'test', 'test']
        assert torch.equal(trained_on[-1], images[:-16])
        seen[seed] = calls[0][1]
        # the last 16 images, binarized once with a fixed seed: 0 where the grey level is 0, 255 where it is 255
        assert seen[seed].shape == images[-16:].shape and set(seen[seed].unique().tolist()) <= {0, 255}
        assert (seen[seed][images[-16:] == 0] == 0).all() and (seen[seed][images[-16:] == 255] == 255).all()
    assert torch.equal(seen[0], seen[1])


def test_patience_counts_the_evaluations_since_the_last_improvement(data_root, tmp_path, monkeypatch):
    """Validation ELBOs -10, -11, -5, -6, -7: the 3rd improves after a worse one, so with --patience 2 the run
    stops after the 5th (two evaluations after the 3rd), not the 4th; a resumed run that stopped early stays
    stopped."""
    calls = spy_on_evaluate(monkeypatch, val_elbos=[-10.0, -11.0, -5.0, -6.0, -7.0, -1.0])
    out = str(tmp_path)
    assert run_script('static_flow_vae.py', [*VAL, '--max_iter', '20', '--eval_every', '1', '--patience', '2',
                                             '--data_dir', data_root, '--out_dir', out]) == 0
    prefix, records = read_log(out)
    final = records[-1]
    assert [r['iter'] for r in records if 'val_elbo' in r] == [1, 2, 3, 4, 5]
    assert [split for split, _ in calls] == ['val'] * 5 + ['test'] * 2
    assert final['iter'] == 5 and final['best_iter'] == 3 and final['best_val_elbo'] == -5.0
    assert final['stopped_early'] is True
    best = torch.load(os.path.join(out, 'checkpoints', f'{prefix}_best.pt'), weights_only=True)
    last = torch.load(os.path.join(out, 'checkpoints', f'{prefix}.pt'), weights_only=True)
    assert best['iter'] == 3 and last['iter'] == 5 and last['stopped_early']
    monkeypatch.undo()   # a resumed run that stopped early stays stopped: it evaluates, it does not train
    assert run_script('static_flow_vae.py', ['--resume', os.path.join(out, 'checkpoints', f'{prefix}.pt'),
                                             '--max_iter', '30']) == 0
    assert read_log(out)[1][-1]['iter'] == 5


def checkpoint_test_elbo(path, data_root):
    """The test ELBO of an MNIST checkpoint of static_flow_vae.py, computed here: the model rebuilt from its
    config and weights, evaluated on the test images binarized as train.setup does."""
    ckpt = torch.load(path, weights_only=True)
    model = static_flow_vae.build_model(argparse.Namespace(**ckpt['config']), datasets.image_shape('mnist'))
    model.load_state_dict(ckpt['model'])
    images, pre = data_utils.mnist_test_set(data_root)
    return evaluate.evaluate(model, pre, images)['test_elbo']


def test_the_final_numbers_are_the_best_checkpoints(data_root, tmp_path, monkeypatch):
    """Validation ELBOs that peak at the 2nd of 3 evaluations (iterations 2, 4, 6): the final test_elbo is that
    of checkpoints/<prefix>_best.pt (iteration 4) evaluated on its own, and last_test_elbo that of the last
    iterate, checkpoints/<prefix>.pt; the two differ."""
    spy_on_evaluate(monkeypatch, val_elbos=[-10.0, -5.0, -7.0])
    out = str(tmp_path)
    assert run_script('static_flow_vae.py', [*VAL, '--eval_every', '2', '--data_dir', data_root,
                                             '--out_dir', out]) == 0
    prefix, records = read_log(out)
    final = records[-1]
    assert final['iter'] == 6 and final['best_iter'] == 4 and final['stopped_early'] is False
    monkeypatch.undo()
    best = os.path.join(out, 'checkpoints', f'{prefix}_best.pt')
    last = os.path.join(out, 'checkpoints', f'{prefix}.pt')
    assert torch.load(best, weights_only=True)['iter'] == 4 and torch.load(last, weights_only=True)['iter'] == 6
    assert final['test_elbo'] == pytest.approx(checkpoint_test_elbo(best, data_root), abs=1e-9)
    assert final['last_test_elbo'] == pytest.approx(checkpoint_test_elbo(last, data_root), abs=1e-9)
    assert abs(final['test_elbo'] - final['last_test_elbo']) > 1e-3


def test_a_run_resumed_into_a_new_out_dir_evaluates_its_best_checkpoint(data_root, tmp_path, monkeypatch):
    """The best model (iteration 2) is in the first folder; resumed into a second one, no better model comes
    after it, and the run ends with that best model's test numbers."""
    first, second = str(tmp_path / 'first'), str(tmp_path / 'second')
    flags = [*VAL, '--eval_every', '1', '--data_dir', data_root]
    spy_on_evaluate(monkeypatch, val_elbos=[-5.0, -1.0])
    assert run_script('static_flow_vae.py', [*flags, '--max_iter', '2', '--out_dir', first]) == 0
    prefix, records = read_log(first)
    monkeypatch.undo()
    spy_on_evaluate(monkeypatch, val_elbos=[-3.0, -2.0])
    assert run_script('static_flow_vae.py', ['--resume', os.path.join(first, 'checkpoints', f'{prefix}.pt'),
                                             '--max_iter', '4', '--out_dir', second]) == 0
    final = read_log(second)[1][-1]
    assert final['iter'] == 4 and final['best_iter'] == 2 and final['test_elbo'] == records[-1]['test_elbo']
    best = torch.load(os.path.join(second, 'checkpoints', f'{prefix}_best.pt'), weights_only=True)
    assert best['iter'] == 2


def test_a_validation_set_as_large_as_the_training_split_is_refused(data_root, tmp_path, capsys):
    assert run_script('static_flow_vae.py', [*VAL[:-2], '--val_size', '64', '--data_dir', data_root,
                                             '--out_dir', str(tmp_path)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert '--val_size 64' in line and '64' in line


def test_cosine_schedule_sets_the_learning_rate_of_every_step():
    args = argparse.Namespace(lr=1e-3, lr_schedule='cosine', max_iter=10)
    assert train.learning_rate(1, args) == pytest.approx(1e-3)
    assert train.learning_rate(6, args) == pytest.approx(0.5e-3)
    assert train.learning_rate(11, args) == pytest.approx(0.0, abs=1e-15)
    lrs = [train.learning_rate(it, args) for it in range(1, 11)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    assert train.learning_rate(7, argparse.Namespace(lr=1e-3, lr_schedule='none', max_iter=10)) == 1e-3


def test_a_cosine_run_ends_at_the_scheduled_learning_rate(data_root, tmp_path):
    out = str(tmp_path)
    assert run_script('static_flow_vae.py', [*VAL, '--lr_schedule', 'cosine', '--data_dir', data_root,
                                             '--out_dir', out]) == 0
    prefix, _ = read_log(out)
    ckpt = torch.load(os.path.join(out, 'checkpoints', f'{prefix}.pt'), weights_only=True)
    expected = train.learning_rate(6, argparse.Namespace(lr=1e-3, lr_schedule='cosine', max_iter=6))
    assert ckpt['optimizer']['param_groups'][0]['lr'] == pytest.approx(expected) and expected < 1e-4


def run_recording_lrs(argv, stop_at=None):
    """(exit code, the learning rate of each optimizer step as Adam applies it) of static_flow_vae.py argv; with
    `stop_at`, step number `stop_at` sends the process SIGINT."""
    lrs = []

    def hook(optimizer, args, kwargs):
        (lr,) = {group['lr'] for group in optimizer.param_groups}
        lrs.append(lr)
        if len(lrs) == stop_at:
            signal.raise_signal(signal.SIGINT)
    handle = register_optimizer_step_pre_hook(hook)
    try:
        return run_script('static_flow_vae.py', argv), lrs
    finally:
        handle.remove()


def without_timing(records):
    """The log's records without its_per_s, and without the record of an interruption."""
    return [{k: v for k, v in r.items() if k != 'its_per_s'} for r in records if 'interrupted' not in r]


def test_every_step_takes_the_scheduled_learning_rate_also_across_a_resume(data_root, tmp_path):
    """--lr_schedule cosine over 8 steps: step k steps with learning_rate(k), in one run and in a run stopped by
    SIGINT after step 3 and resumed, which ends bit for bit as the straight one (parameters, Adam's state, every
    logged number)."""
    flags = [*TINY, *SCRIPT_FLAGS['static_flow_vae.py'], '--flow', 'planar', '--max_iter', '8', '--lr', '0.01',
             '--lr_schedule', 'cosine', '--log_every', '1', '--eval_every', '4', '--ckpt_every', '4',
             '--data_dir', data_root]
    scheduled = [train.learning_rate(k, argparse.Namespace(lr=0.01, lr_schedule='cosine', max_iter=8))
                 for k in range(1, 9)]
    straight, split = str(tmp_path / 'straight'), str(tmp_path / 'split')
    assert run_recording_lrs([*flags, '--out_dir', straight]) == (0, scheduled)
    code, first = run_recording_lrs([*flags, '--out_dir', split], stop_at=3)
    assert code == 128 + signal.SIGINT and first == scheduled[:3]
    prefix, _ = read_log(split)
    assert run_recording_lrs(['--resume', os.path.join(split, 'checkpoints', f'{prefix}.pt')]) == (0, scheduled[3:])

    a, b = (without_timing(read_log(out)[1]) for out in (straight, split))
    assert len(a) == 8 + 2 + 1 and b == a   # 8 losses, 2 evaluations, the final numbers
    last = [torch.load(os.path.join(out, 'checkpoints', f'{prefix}.pt'), weights_only=True)
            for out in (straight, split)]
    for key, value in last[0]['model'].items():
        assert torch.equal(last[1]['model'][key], value), key
    for key, value in last[0]['optimizer']['state'].items():
        for name, tensor in value.items():
            assert torch.equal(last[1]['optimizer']['state'][key][name], tensor), (key, name)


def test_a_cosine_run_refuses_a_new_max_iter_on_resume(data_root, tmp_path, capsys):
    """The cosine schedule is a function of --max_iter: a resumed run keeps it, or the learning rate would jump."""
    out = str(tmp_path)
    flags = [*TINY, *SCRIPT_FLAGS['static_flow_vae.py'], '--flow', 'planar', '--lr_schedule', 'cosine',
             '--data_dir', data_root, '--out_dir', out]
    assert run_script('static_flow_vae.py', flags) == 0
    prefix, _ = read_log(out)
    resume = os.path.join(out, 'checkpoints', f'{prefix}.pt')
    capsys.readouterr()
    assert run_script('static_flow_vae.py', ['--resume', resume, '--max_iter', '9']) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert '--max_iter 9' in line and 'cosine' in line and 'keep --max_iter 6' in line
    assert torch.load(resume, weights_only=True)['iter'] == 6
    assert run_script('static_flow_vae.py', ['--resume', resume, '--max_iter', '6']) == 0   # the same: accepted


def test_warmup_weighs_the_kl_terms_of_each_step_by_beta_rising_to_1(data_root, tmp_path, monkeypatch):
    """--warmup 4: the training loss of steps 1 to 6 weighs the KL terms by 1/4, 1/2, 3/4, then 1."""
    assert [train.warmup_beta(it, 4) for it in range(1, 8)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0]
    assert train.warmup_beta(1, 0) == 1.0   # --warmup 0: no warm-up
    betas, real = [], train.training_loss

    def training_loss(*args, **kwargs):
        betas.append(inspect.signature(real).bind(*args, **kwargs).arguments.get('beta', 1.0))
        return real(*args, **kwargs)
    monkeypatch.setattr(train, 'training_loss', training_loss)
    assert run_script('static_flow_vae.py', [*TINY, *SCRIPT_FLAGS['static_flow_vae.py'], '--flow', 'planar',
                                             '--warmup', '4', '--data_dir', data_root, '--out_dir', str(tmp_path)]) == 0
    assert betas == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]


def subnormal_survives():
    """Whether 1e-39, a subnormal float32, multiplied by 1 is still 1e-39 on this thread (0 where they are flushed)."""
    return (torch.full((1,), 1e-39) * 1.0).item() != 0


def test_a_cpu_run_flushes_subnormal_floats_to_zero_while_it_trains(data_root, tmp_path, monkeypatch):
    seen, real = [], train.train_step

    def train_step(*args, **kwargs):
        seen.append(subnormal_survives())
        return real(*args, **kwargs)
    monkeypatch.setattr(train, 'train_step', train_step)
    assert subnormal_survives()
    assert run_script('static_flow_vae.py', [*TINY, *SCRIPT_FLAGS['static_flow_vae.py'], '--device', 'cpu',
                                             '--data_dir', data_root, '--out_dir', str(tmp_path)]) == 0
    assert seen == [False] * 6
