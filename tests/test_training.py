"""The three scripts end to end on tiny synthetic data: outputs, metrics, resume."""
import math
import os

import pytest
import torch
from PIL import Image

from scripts import read_log, run_script
from synthetic_data import write_dataset

TINY = ['--max_iter', '6', '--batch_size', '8', '--latent_dim', '2', '--length', '2', '--log_every', '2',
        '--sample_every', '3', '--ckpt_every', '3', '--iw_samples', '4', '--sample_size', '4']
SCRIPT_FLAGS = {
    'static_flow_vae.py': ['--layer', '1', '--hidden_dim', '16'],
    'dynamic_flow_vae.py': ['--layer', '1', '--hidden_dim', '16'],
    'static_flow_conv_vae.py': ['--base_dim', '4', '--scale', '1'],
}
ALL_KINDS = ['none', 'planar', 'radial', 'householder', 'nice']


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp('data')
    for name in ('mnist', 'fashion-mnist', 'svhn', 'cifar10'):
        write_dataset(name, str(root))
    return str(root)


def grid_size(n, side, nrow):
    """torchvision's make_grid with padding 2: (width, height)."""
    rows = -(-n // nrow)
    return nrow * (side + 2) + 2, rows * (side + 2) + 2


@pytest.mark.parametrize('script', list(SCRIPT_FLAGS))
@pytest.mark.parametrize('kind', ALL_KINDS)
def test_script_writes_every_output(script, kind, data_root, tmp_path):
    out = str(tmp_path)
    code = run_script(script, [*TINY, *SCRIPT_FLAGS[script], '--flow', kind, '--data_dir', data_root,
                               '--out_dir', out, '--device', 'cpu'])
    assert code == 0
    prefix, records = read_log(out)
    final = records[-1]
    assert final['final'] and final['iter'] == 6 and final['iw_samples'] == 4
    assert all(torch.isfinite(torch.tensor(final[k])) for k in ('test_elbo', 'test_log_px_iw'))
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
    for name in ('latent', 'curves'):
        with Image.open(os.path.join(out, 'plots', f'{prefix}_{name}.png')) as img:
            assert img.size[0] > 300 and img.size[1] > 200
    ckpt = torch.load(os.path.join(out, 'checkpoints', f'{prefix}.pt'), weights_only=True)
    assert ckpt['iter'] == 6 and ckpt['script'] == script and ckpt['config']['flow'] == kind


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
    # bits/dim is the nats figure of the dequantized data converted: (-log p + D log 256) / (D log 2)
    expected = (-final['test_elbo'] + dims * torch.log(torch.tensor(256.))) / (dims * torch.log(torch.tensor(2.)))
    assert final['test_bpd_elbo'] == pytest.approx(float(expected), rel=1e-6)
    assert 0 < final['test_bpd_log_px_iw'] < 100
    side = 28 if dataset == 'fashion-mnist' else 32
    with Image.open(os.path.join(out, 'samples', f'{prefix}_6.png')) as img:
        assert img.size == grid_size(4, side, 2)


@pytest.mark.parametrize('script,kind', [('static_flow_vae.py', 'planar'), ('dynamic_flow_vae.py', 'nice'),
                                         ('static_flow_conv_vae.py', 'radial')])
def test_resume_continues_exactly(script, kind, data_root, tmp_path):
    """N iterations, then --resume for N more, gives the parameters of 2N in one go."""
    flags = [*SCRIPT_FLAGS[script], '--flow', kind, '--data_dir', data_root, '--device', 'cpu',
             '--batch_size', '8', '--latent_dim', '2', '--length', '2', '--iw_samples', '2',
             '--sample_every', '4', '--ckpt_every', '4', '--log_every', '2', '--warmup', '5']
    straight, split = str(tmp_path / 'straight'), str(tmp_path / 'split')
    assert run_script(script, [*flags, '--max_iter', '8', '--out_dir', straight]) == 0
    assert run_script(script, [*flags, '--max_iter', '4', '--out_dir', split]) == 0
    (ckpt,) = os.listdir(os.path.join(split, 'checkpoints'))
    resume = os.path.join(split, 'checkpoints', ckpt)
    assert run_script(script, ['--resume', resume, '--max_iter', '8', '--data_dir', data_root,
                               '--out_dir', split, '--iw_samples', '2']) == 0

    a = torch.load(os.path.join(straight, 'checkpoints', ckpt), weights_only=True)
    b = torch.load(resume, weights_only=True)
    assert a['iter'] == b['iter'] == 8
    for key, value in a['model'].items():
        torch.testing.assert_close(b['model'][key], value, rtol=0, atol=0, msg=key)


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


def test_compile_trains_the_same_model(data_root, tmp_path):
    """--compile 1 (torch.compile of the training forward) gives the parameters of the eager run."""
    flags = [*TINY, *SCRIPT_FLAGS['static_flow_vae.py'], '--flow', 'planar', '--data_dir', data_root,
             '--device', 'cpu']
    eager, compiled = str(tmp_path / 'eager'), str(tmp_path / 'compiled')
    assert run_script('static_flow_vae.py', [*flags, '--out_dir', eager]) == 0
    assert run_script('static_flow_vae.py', [*flags, '--out_dir', compiled, '--compile', '1']) == 0
    (ckpt,) = os.listdir(os.path.join(eager, 'checkpoints'))
    a = torch.load(os.path.join(eager, 'checkpoints', ckpt), weights_only=True)
    b = torch.load(os.path.join(compiled, 'checkpoints', ckpt), weights_only=True)
    assert b['config']['compile'] == 1
    for key, value in a['model'].items():
        torch.testing.assert_close(b['model'][key], value, rtol=1e-4, atol=1e-5, msg=key)


@pytest.mark.parametrize('script', list(SCRIPT_FLAGS))
def test_precision_bf16_trains_close_to_fp32_and_resumes_in_fp32(script, data_root, tmp_path):
    """--precision bf16 (the training forward under autocast) ends near the fp32 run from the same start;
    its test numbers are float32 ones, and the run resumes with --precision fp32."""
    flags = [*TINY, *SCRIPT_FLAGS[script], '--flow', 'planar', '--data_dir', data_root, '--device', 'cpu']
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
