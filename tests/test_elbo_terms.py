"""experiments/elbo_terms.py and trained.py: the test ELBO of a trained checkpoint split into its terms."""
import glob
import math
import os
import sys

import pytest
import torch

from scripts import read_log, run_script

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'experiments'))
import elbo_terms  # noqa: E402
from data_utils import mnist_test_set  # noqa: E402
from trained import trained_model  # noqa: E402

FLAGS = ['--max_iter', '4', '--batch_size', '8', '--latent_dim', '3', '--length', '2', '--layer', '1',
         '--hidden_dim', '16', '--iw_samples', '0', '--sample_every', '4', '--ckpt_every', '4']


@pytest.mark.parametrize('script, flow', [('static_flow_vae.py', 'none'), ('dynamic_flow_vae.py', 'planar')])
def test_terms_add_up_to_the_runs_reported_test_elbo(script, flow, data_root, tmp_path):
    out = str(tmp_path)
    assert run_script(script, [*FLAGS, '--flow', flow, '--data_dir', data_root, '--out_dir', out]) == 0
    reported = read_log(out)[1][-1]['test_elbo']
    (checkpoint,) = glob.glob(os.path.join(out, 'checkpoints', '*.pt'))
    model, args, state = trained_model(checkpoint)
    assert (args.flow, args.amortized, state['iter']) == (flow, script == 'dynamic_flow_vae.py', 4)

    images, pre = mnist_test_set(data_root)
    terms = elbo_terms.elbo_terms(model, pre, images)
    assert terms['elbo'] == pytest.approx(reported, abs=1e-4)
    assert terms['reconstruction'] - terms['kl'] == pytest.approx(terms['elbo'], abs=1e-4)
    assert terms['kl'] > 0 and 0 <= terms['active_units'] <= 3
    mean, log_var, _ = model.encode(pre(images, train=False)[0])
    assert terms['q0_entropy'] == pytest.approx(elbo_terms.gaussian_entropy(log_var).mean().item(), abs=1e-4)
    assert (terms['log_det'] == 0) == (flow == 'none')


def test_active_units_count_the_columns_whose_variance_exceeds_the_threshold():
    gen = torch.Generator().manual_seed(0)
    std = torch.tensor([1.0, 0.2, 0.05, 0.0])   # variances 1, 0.04, 0.0025, 0: two above 0.01
    means = torch.randn(20000, 4, generator=gen) * std + 3
    assert elbo_terms.active_units(means) == 2
    assert elbo_terms.active_units(means, threshold=0.001) == 3


def test_gaussian_entropy_is_torchs_for_a_diagonal_gaussian():
    log_var = torch.tensor([[0.0, -2.0, 3.0], [1.5, 0.5, -7.0]])
    expected = torch.distributions.Normal(torch.zeros(2, 3), (0.5 * log_var).exp()).entropy().sum(-1)
    assert torch.allclose(elbo_terms.gaussian_entropy(log_var), expected)
    assert elbo_terms.gaussian_entropy(torch.zeros(1, 40)).item() == pytest.approx(20 * (1 + math.log(2 * math.pi)))


def test_a_missing_checkpoint_is_one_error_line(tmp_path):
    with pytest.raises(SystemExit, match=r'^error: checkpoint .*missing\.pt does not exist: check the checkpoint path$'):
        trained_model(str(tmp_path / 'missing.pt'))
