"""experiments/gap_spread.py: each 2-D test image's gap exact − ELBO, and how it spreads."""
import glob
import math
import os
import sys

import pytest
import torch

from flows import build_flow
from scripts import read_log, run_script
from test_elbo_terms import FLAGS
from test_vae import LinearVAE, linear_gaussian, perturbed_flow

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'experiments'))
import gap_spread  # noqa: E402
import posterior2d  # noqa: E402
from data_utils import mnist_test_set  # noqa: E402
from trained import trained_model  # noqa: E402


def test_each_images_gap_is_its_kl_to_the_posterior_linear_gaussian(float64):
    """q0 = N(m(x), D) and a random Householder flow, a rotation, give q_K = N(H m(x), H D Hᵀ); in a
    linear-Gaussian model p(z|x) = N(mu(x), S), so every image's exact − ELBO is a closed-form Gaussian KL."""
    W, b, x, exact = linear_gaussian(seed=0, sigma=0.5, w_scale=1.0)
    latent, sigma = W.shape[1], 0.5
    S = torch.linalg.inv(torch.eye(latent) + W.T @ W / sigma ** 2)
    flow = perturbed_flow('householder', latent, scale=0.5)
    D = torch.tensor([0.5, 2.0]) * torch.diagonal(S)
    model = LinearVAE(W, b, 'gaussian', flow, enc_A=S @ W.T / sigma ** 2, enc_c=-(S @ W.T @ b) / sigma ** 2 + 0.2,
                      enc_log_var=D.log())
    with torch.no_grad():
        model.log_scale.fill_(math.log(sigma))
        H = flow(torch.eye(latent))[0].T                        # z_K = H z0
        q0_mean = model.encode(x)[0]
    q_k = torch.distributions.MultivariateNormal(q0_mean @ H.T, H @ torch.diag(D) @ H.T)
    posterior = torch.distributions.MultivariateNormal(((x.flatten(1) - b) @ W @ S.T) / sigma ** 2, S)
    kl = torch.distributions.kl_divergence(q_k, posterior)
    assert kl.min() > 0.1 and kl.max() - kl.min() > 0.1     # a gap that differs from image to image

    identity = lambda images, train: (images, torch.zeros(len(images)))   # noqa: E731
    log_px, elbos, errors = gap_spread.per_image(model, identity, x, samples=20_000)
    torch.testing.assert_close(log_px, exact, atol=1e-3, rtol=0)   # the quadrature
    assert ((log_px - elbos - kl).abs() < 4 * errors + 1e-3).all()


def test_spread_of_known_gaps():
    s = gap_spread.spread(torch.arange(1.0, 101.0))
    assert s['mean'] == pytest.approx(50.5) and s['q50'] == pytest.approx(50.5) and s['max'] == 100
    assert s['q10'] == pytest.approx(10.9) and s['q90'] == pytest.approx(90.1) and s['q99'] == pytest.approx(99.01)
    assert s['top1'] == pytest.approx(100 / 5050) and s['top10'] == pytest.approx(sum(range(91, 101)) / 5050)


def test_main_on_a_trained_2d_run(data_root, tmp_path, capsys, monkeypatch):
    """The per-image values average to the run's own final evaluation: its exact log p(x) to float precision,
    its one-draw ELBO up to that draw's noise."""
    out = str(tmp_path)
    flags = [*FLAGS, '--latent_dim', '2', '--flow', 'planar', '--data_dir', data_root, '--out_dir', out]
    assert run_script('static_flow_vae.py', flags) == 0
    final = read_log(out)[1][-1]
    (checkpoint,) = glob.glob(os.path.join(out, 'checkpoints', '*.pt'))
    model, _, _ = trained_model(checkpoint)
    images, pre = mnist_test_set(data_root)
    log_px, elbos, errors = gap_spread.per_image(model, pre, images, samples=400)
    assert log_px.mean().item() == pytest.approx(final['test_log_px_exact'], abs=1e-4)
    one_draw_std = (errors.pow(2) * 400).sum().sqrt().item() / len(images)
    assert abs(elbos.mean().item() - final['test_elbo']) < 4 * one_draw_std + 1e-3

    monkeypatch.setattr(sys, 'argv', ['gap_spread.py', checkpoint, '--samples', '50', '--data_dir', data_root])
    gap_spread.main()
    row = capsys.readouterr().out.strip().splitlines()[-1].split('|')
    assert row[2].strip() == 'static planar'
    mean, *quantiles, largest = (float(v) for v in row[3:9])
    assert quantiles == sorted(quantiles) and quantiles[-1] <= largest
    assert mean == pytest.approx((log_px - elbos).mean().item(), abs=0.5)
    torch.manual_seed(0)   # main's draws: the model is built, then the images' ELBOs drawn, after this seed
    model = trained_model(checkpoint)[0]
    _, errors = gap_spread.elbo_per_image(model, posterior2d.preprocess(pre, images)[0], samples=50)
    assert float(row[11]) == pytest.approx(errors.mean().item(), abs=0.005)   # the MC error column

    gaps = torch.arange(len(images), dtype=torch.float64).roll(5)   # the largest at 4, 3, 2, 1, 0, then 31
    figure = tmp_path / 'worst.png'
    indices = gap_spread.worst_posteriors(model, pre, images, gaps, str(figure), data_root, 'worst', n=100,
                                          window=40, samples=2000, elbo_samples=100)
    assert indices == [4, 3, 2, 1, 0, len(images) - 1] and figure.stat().st_size > 0
    rows = (tmp_path / 'worst.txt').read_text().splitlines()[4:]   # the figure's table, its rows in that order
    assert [int(row.split(' | ')[0].strip('| ')) for row in rows] == indices


def test_the_mc_error_is_the_standard_error_of_each_images_mean_elbo(float64):
    """Without a flow, a linear-Gaussian model's one-draw ELBO is a quadratic in eps ~ N(0, I): with
    z = m + s ⊙ eps and r = x − b − W m it is c + aᵀ eps + epsᵀ B eps, a = s ⊙ Wᵀ r / σ², B = −S Wᵀ W S / (2σ²),
    S = diag(s), whose variance is |a|² + 2 tr(B²). The error reported per image is sqrt(that / S draws)."""
    W, b, x, _ = linear_gaussian(seed=3, sigma=0.5, w_scale=1.0)
    sigma, std = 0.5, torch.tensor([0.2, 0.5])
    model = LinearVAE(W, b, 'gaussian', build_flow('none', 2, 0), enc_A=torch.randn(2, W.shape[0]),
                      enc_log_var=2 * std.log())
    with torch.no_grad():
        model.log_scale.fill_(math.log(sigma))
    mean = model.encode(x)[0]
    a = std * ((x.flatten(1) - b - mean @ W.T) @ W) / sigma ** 2              # (N, 2)
    B = -torch.diag(std) @ W.T @ W @ torch.diag(std) / (2 * sigma ** 2)
    one_draw_std = (a.pow(2).sum(1) + 2 * torch.trace(B @ B)).sqrt()          # (N,)
    assert one_draw_std.max() > 1.5 * one_draw_std.min()                      # it differs from image to image
    torch.manual_seed(0)
    samples = 40_000
    _, errors = gap_spread.elbo_per_image(model, x, samples=samples, batch_size=3)
    # the sample std of 40,000 draws: within 1% of the true one for seeds 0 to 9
    torch.testing.assert_close(errors, one_draw_std / samples ** 0.5, rtol=0.03, atol=0)
