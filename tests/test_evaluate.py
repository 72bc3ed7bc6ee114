"""evaluate.py against answers known without it: bits/dim of a model whose density is known in closed form,
and the test ELBO of a run trained with the seed objective recomputed from its checkpoint."""
import argparse
import math
import os

import pytest
import torch
import torch.nn.functional as F

import data_utils
import datasets
import evaluate
import static_flow_vae
from flows import build_flow
from scripts import read_log, run_script
from vae import FlowVAE


class UniformOnTheCube(FlowVAE):
    """p(s | z) is the logit transform's pushforward of y uniform on [0, 1)^D, whatever z: the density of
    the dequantized image y is 1, log p(y) = 0, and 8-bit data costs exactly 8 bits/dim.

    With y' = alpha + (1 - 2 alpha) y and s = logit(y'), dy/ds = sigmoid(s) sigmoid(-s) / (1 - 2 alpha), so
    log p(s) = sum_i log sigmoid(s_i) + log sigmoid(-s_i) - log(1 - 2 alpha): computed here from s alone,
    not by data_utils.
    """

    def __init__(self, image_shape, alpha):
        super().__init__(build_flow('none', 2, 0), 'gaussian', image_shape)
        self.alpha = alpha

    def encode(self, x):
        zeros = x.new_zeros(x.shape[0], 2)
        return zeros, zeros, None

    def decode(self, z):
        return z.new_zeros(z.shape[0], *self.image_shape)

    def log_likelihood(self, x, decoded):
        s = x.double()
        log_ds = F.logsigmoid(s) + F.logsigmoid(-s) - math.log(1 - 2 * self.alpha)
        return log_ds.flatten(1).sum(1).to(x.dtype).expand(decoded.shape[:-3])


@pytest.mark.parametrize('dataset', ['svhn', 'cifar10'])
def test_a_model_uniform_on_the_dequantized_cube_scores_8_bits_per_dim(dataset):
    """The preprocessing's log-det turns the density of s into that of y: without it (or with its sign
    flipped) these numbers move by about 2.4 bits/dim."""
    torch.manual_seed(0)
    images = torch.randint(0, 256, (40, 3, 8, 8), dtype=torch.uint8)
    images[:4] = 0                                    # the extreme grey levels too
    images[4:8] = 255
    pre = data_utils.Preprocessor(dataset)
    model = UniformOnTheCube((3, 8, 8), pre.alpha)
    metrics = evaluate.evaluate(model, pre, images, iw_samples=3, batch_size=16, iw_batch=16)
    assert metrics['test_elbo'] == pytest.approx(0, abs=2e-3)          # nats, log p(y) summed over 192 dims
    assert metrics['test_log_px_iw'] == pytest.approx(0, abs=2e-3)
    assert metrics['test_bpd_elbo'] == pytest.approx(8, abs=1e-5)
    assert metrics['test_bpd_log_px_iw'] == pytest.approx(8, abs=1e-5)


def test_bits_per_dim_at_known_densities():
    """log p(y) = 0 on [0, 1)^D is 8 bits/dim; each nat per dimension less is 1/log 2 bits more."""
    assert evaluate.bits_per_dim(0.0, 3072) == pytest.approx(8)
    assert evaluate.bits_per_dim(-3072 * math.log(2), 3072) == pytest.approx(9)
    assert evaluate.bits_per_dim(784 * math.log(256), 784) == pytest.approx(0, abs=1e-12)


def test_a_run_with_the_seed_objective_reports_the_true_elbo_of_its_checkpoint(data_root, tmp_path):
    """--objective seed changes the training loss only: the logged test ELBO is the flow ELBO, log p(x|z_K) +
    log p(z_K) - log q0(z0|x) + log_det, recomputed here by hand from the checkpoint with evaluation's noise."""
    out = str(tmp_path)
    assert run_script('static_flow_vae.py', [
        '--max_iter', '6', '--batch_size', '8', '--latent_dim', '3', '--layer', '1', '--hidden_dim', '16',
        '--flow', 'planar', '--length', '4', '--objective', 'seed', '--iw_samples', '0', '--sample_every', '6',
        '--log_every', '6', '--eval_every', '6', '--data_dir', data_root, '--out_dir', out, '--device', 'cpu']) == 0
    prefix, records = read_log(out)
    ckpt = torch.load(os.path.join(out, 'checkpoints', f'{prefix}.pt'), weights_only=True)
    model = static_flow_vae.build_model(argparse.Namespace(**ckpt['config']), (1, 28, 28))
    model.load_state_dict(ckpt['model'])
    model.eval()
    images, _ = datasets.load_split('mnist', data_root, train=False)
    images = data_utils.static_binarize(images, data_utils.TEST_BINARIZATION_SEED)
    pre = data_utils.Preprocessor('mnist')
    assert len(images) <= evaluate.EVAL_BATCH                        # one batch, the noise of its start index 0
    with torch.no_grad(), evaluate.eval_rng(images.device):
        evaluate.seed_batch(0, 0)
        t = model(pre(images, train=False)[0])
    true_elbo = (t.log_px + t.log_pz - t.log_q0 + t.log_det).mean().item()
    seed_objective = (t.log_px - t.kl0 + t.log_det).mean().item()
    assert abs(true_elbo - seed_objective) > 0.05                     # the two differ by more than the tolerance
    assert records[-1]['final'] and records[-1]['test_elbo'] == pytest.approx(true_elbo, abs=1e-3)
