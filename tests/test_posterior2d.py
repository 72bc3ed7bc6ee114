"""Exact log p(x) by quadrature on a 2-D latent grid, and the posterior figure."""
import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.integrate
import torch

import data_utils
import plotting
import posterior2d
import static_flow_conv_vae
import static_flow_vae
from flows import build_flow
from test_vae import LinearVAE, linear_gaussian, perturbed_flow
from vae import elbo, iw_log_likelihood


def linear_gaussian_model(flow=None):
    """A 2-D linear-Gaussian VAE with a narrow posterior (std ~ 0.1) and its closed-form log p(x)."""
    sigma = 0.3
    W, b, x, exact = linear_gaussian(seed=0, latent=2, pixels=5, sigma=sigma, w_scale=1.5, n=16)
    model = LinearVAE(W, b, 'gaussian', flow or build_flow('none', 2, 0))
    with torch.no_grad():
        model.log_scale.fill_(math.log(sigma))
    return model, x, exact


def bernoulli_toy(n_images=4, seed=1):
    """The Bernoulli decoder of test_vae's quadrature test: logits W z + b, 6 pixels."""
    torch.manual_seed(seed)
    W, b = 1.5 * torch.randn(6, 2), torch.randn(6)
    x = torch.bernoulli(torch.full((n_images, 1, 1, 6), 0.5))
    return W, b, x


def test_quadrature_matches_closed_form_linear_gaussian(float64):
    model, x, exact = linear_gaussian_model()
    value = posterior2d.log_px_grid(model, x, n=300, limit=6.0)
    torch.testing.assert_close(value, exact, atol=1e-3, rtol=0)
    # the float64 products give the same (the Gaussian default is float64 already)
    torch.testing.assert_close(posterior2d.log_px_grid(model, x, n=300, grid_chunk=1000, image_chunk=5), value)


def test_quadrature_matches_dblquad_bernoulli(float64):
    """The float32 products of the Bernoulli default against scipy's adaptive integral of p(x|z) p(z)."""
    W, b, x = bernoulli_toy()
    model = LinearVAE(W, b, 'bernoulli', build_flow('none', 2, 0))
    value = posterior2d.log_px_grid(model, x, n=400, limit=8.0)
    Wn, bn = W.numpy(), b.numpy()
    for i, xi in enumerate(x.flatten(1).numpy()):
        def joint(z2, z1):
            logits = Wn @ np.array([z1, z2]) + bn
            log_lik = float(xi @ logits - np.logaddexp(0, logits).sum())
            return math.exp(log_lik - 0.5 * (z1 * z1 + z2 * z2)) / (2 * math.pi)
        integral, _ = scipy.integrate.dblquad(joint, -8, 8, -8, 8, epsabs=1e-13, epsrel=1e-10)
        assert abs(value[i].item() - math.log(integral)) < 1e-3


def test_iw_approaches_exact_from_below(float64):
    """Averaged over images, the IW estimate rises with K towards the exact value and stays below it."""
    torch.manual_seed(5)
    W, b = torch.randn(8, 2), torch.randn(8)
    x = torch.bernoulli(torch.full((200, 1, 1, 8), 0.5))
    model = LinearVAE(W, b, 'bernoulli', perturbed_flow('planar', 2, scale=0.5), enc_A=0.3 * torch.randn(2, 8))
    exact = posterior2d.log_px_grid(model, x, n=300, limit=7.0).mean().item()
    torch.manual_seed(6)
    gaps = [exact - iw_log_likelihood(model, x, k).mean().item() for k in (1, 10, 100, 1000)]
    assert gaps[0] > 0.3                                     # q_K is a poor posterior: a real gap to close
    assert all(a > b > 0 for a, b in zip(gaps, gaps[1:]))   # decreasing, and positive at every K
    assert gaps[-1] < 0.1 * gaps[0]


def test_the_flow_does_not_enter(float64):
    """Only the decoder and the prior define log p(x): new flow parameters leave it bitwise unchanged."""
    args = SimpleNamespace(dataset='mnist', latent_dim=2, hidden_dim=16, layer=1, gate=0, flow='planar',
                           length=4, amortized=False)
    torch.manual_seed(0)
    model = static_flow_vae.build_model(args, (1, 28, 28)).float()
    x = torch.rand(20, 1, 28, 28).round().float()
    before = posterior2d.log_px_grid(model, x, n=60)
    torch.manual_seed(1)
    elbo_before = elbo(model(x), model.has_flow)
    with torch.no_grad():
        for p in model.flow.parameters():
            p.add_(torch.randn_like(p))
    torch.manual_seed(1)
    assert not torch.equal(elbo(model(x), model.has_flow), elbo_before)   # the change is one the ELBO sees
    assert torch.equal(posterior2d.log_px_grid(model, x, n=60), before)


def test_refinement_check_measures_the_grid_error(float64):
    """The check's reference (finer, wider grid) is accurate, so its difference is the coarse grid's error."""
    model, x, exact = linear_gaussian_model()
    coarse = posterior2d.refinement_check(model, x, n=40, limit=4.0)   # cells 0.2 wide, posterior std ~0.1
    true_error = (exact - coarse['value']).abs()
    assert coarse['max_abs_diff'] > 0.05
    torch.testing.assert_close(coarse['reference'], exact, atol=1e-3, rtol=0)
    assert abs(coarse['mean_abs_diff'] - true_error.mean().item()) < 1e-3
    fine = posterior2d.refinement_check(model, x, n=300, limit=6.0)
    assert fine['max_abs_diff'] < 1e-4
    narrow = posterior2d.refinement_check(model, x, n=150, limit=3.0)       # fine cells, some mass outside
    assert narrow['max_abs_diff'] > 0.01 and narrow['mean_diff'] > 0
    torch.testing.assert_close(narrow['reference'], exact, atol=1e-3, rtol=0)   # the wider grid holds it


def test_refinement_checks_first_pass_is_finer(float64, monkeypatch):
    """The reference grid's first pass samples points `finer` times closer than the checked grid's, at any
    window, so the reference cannot step over a mode the grid found."""
    model, x, _ = linear_gaussian_model()
    calls, log_px_grid = [], posterior2d.log_px_grid

    def recording(model, x, n, limit, **kw):
        calls.append((2 * limit / n) * max(1, n // kw.get('coarse', posterior2d.COARSE)))   # first-pass spacing
        return log_px_grid(model, x, n, limit, **kw)
    monkeypatch.setattr(posterior2d, 'log_px_grid', recording)
    for finer, wider, coarse in ((1, 1.5, 40), (2, 1.5, 40), (2, 1, 25)):
        calls.clear()
        posterior2d.refinement_check(model, x, n=200, limit=4.0, finer=finer, wider=wider, coarse=coarse)
        assert calls[1] == pytest.approx(calls[0] / finer)


def test_exact_log_px_adds_the_preprocessing_log_det():
    """8-bit data: the density of y in [0, 1)^D, the same dequantization noise on every call."""
    images = torch.randint(0, 256, (7, 1, 2, 3), dtype=torch.uint8)
    pre = data_utils.Preprocessor('fashion-mnist')
    torch.manual_seed(0)
    model = LinearVAE(0.5 * torch.randn(6, 2), torch.randn(6), 'gaussian', build_flow('none', 2, 0))
    rng = torch.get_rng_state()
    value = posterior2d.exact_log_px(model, pre, images, n=100, batch_size=3)
    assert torch.equal(torch.get_rng_state(), rng)
    x, log_det_pre = posterior2d.preprocess(pre, images, batch_size=3)
    assert (log_det_pre.abs() > 1).all()
    torch.testing.assert_close(value, posterior2d.log_px_grid(model, x, n=100) + log_det_pre.double())
    torch.testing.assert_close(posterior2d.exact_log_px(model, pre, images, n=100, batch_size=3), value)


def test_gaps_fields():
    metrics = {'test_elbo': -100.0, 'test_log_px_iw': -98.5}
    assert posterior2d.gaps(metrics, -98.0) == {'test_log_px_exact': -98.0, 'test_gap_elbo': 2.0,
                                                'test_gap_iw': 0.5}
    fields = posterior2d.gaps({'test_elbo': -3000.0}, -2900.0, binary=False, dims=784)
    assert set(fields) == {'test_log_px_exact', 'test_gap_elbo', 'test_bpd_log_px_exact'}
    assert fields['test_bpd_log_px_exact'] == pytest.approx((2900 + 784 * math.log(256)) / (784 * math.log(2)))


def test_pick_images_takes_different_classes():
    labels = torch.tensor([3, 3, 1, 0, 7, 1, 9, 2, 5, 4, 8])
    chosen = posterior2d.pick_images(labels)
    assert chosen == posterior2d.pick_images(labels) and len(chosen) == 6
    assert len(set(labels[chosen].tolist())) == 6
    assert posterior2d.pick_images(torch.tensor([1, 1, 2])) == [0, 1, 2]


def tiny_mnist_model(latent_dim, flow):
    args = SimpleNamespace(dataset='mnist', latent_dim=latent_dim, hidden_dim=16, layer=1, gate=0, flow=flow,
                           length=2, amortized=False)
    torch.manual_seed(0)
    return static_flow_vae.build_model(args, (1, 28, 28))


def test_posterior_window_holds_a_distant_q_k():
    """The row's window covers the central 99.9% of q_K's samples as well as p(z|x), so a q_K that missed the
    posterior is still drawn."""
    z, _ = posterior2d.grid_points(100, 4.0, dtype=torch.float64)
    posterior = torch.exp(-0.5 * (z / 0.1).pow(2).sum(-1))                 # p(z|x) at the origin
    torch.manual_seed(0)
    qk_samples = torch.tensor([3.0, -2.0]) + 0.05 * torch.randn(10_000, 2)  # q_K far from it
    box = posterior2d._window(posterior2d._bulk(posterior, z), posterior2d._central(qk_samples))
    assert box[0] < -0.3 and box[1] > 3.1 and box[2] < -2.1 and box[3] > 0.3
    assert box[1] - box[0] < 5 and box[3] - box[2] < 5   # and is no wider than the two need
    assert posterior2d._holds(box, qk_samples[:100]) and not posterior2d._holds(box, torch.tensor([[5.0, 0.0]]))


class Shift(torch.nn.Module):
    """A flow that moves every z by `shift`, log-det 0."""
    kind, length = 'shift', 1

    def __init__(self, shift):
        super().__init__()
        self.shift = shift

    def forward(self, z, context=None):
        return z + self.shift, z.new_zeros(z.shape[0])

    def inverse(self, z, context=None):
        return z - self.shift, z.new_zeros(z.shape[0])


def test_a_distant_q0_gets_a_wider_panel(tmp_path):
    """q0 at (20, -10), carried onto the posterior near the origin: p(z|x) and q_K keep a window of their own
    size, and q0's panel a wider one that holds q0 and that window."""
    W, b, x = bernoulli_toy(n_images=2)
    model = LinearVAE(W, b, 'bernoulli', Shift(torch.tensor([-20.0, 10.0])), enc_c=torch.tensor([20.0, -10.0]),
                      enc_log_var=torch.full((2,), -2.0))
    rows = posterior2d.posterior_panels(model, x, n=100, limit=6.0, window=100, samples=5000, elbo_samples=10)
    for row in rows:
        (x0, x1, y0, y1), (u0, u1, v0, v1) = row['box'], row['q0_box']
        assert x1 - x0 < 10 and x1 < 15 and y0 > -5                     # q0 left out
        assert u0 <= x0 and u1 > 21.1 and v0 < -11.1 and v1 >= y1     # q0 and the other window in
        assert row['q0'].sum().item() * (u1 - u0) * (v1 - v0) / 99 ** 2 == pytest.approx(1, abs=0.01)
        assert row['q0_posterior'].shape == row['q0'].shape and torch.isfinite(row['q0_posterior']).all()
    plotting.plot_posteriors(x.view(2, 1, 2, 3), [0, 1], rows, tmp_path / 'posterior.png', 'shift')
    assert (tmp_path / 'posterior.png').stat().st_size > 10_000
    model.flow.shift = torch.zeros(2)   # q_K = q0: one window for the three panels
    model.enc_c = torch.zeros(2)
    for row in posterior2d.posterior_panels(model, x, n=100, limit=6.0, window=100, samples=5000, elbo_samples=10):
        assert row['q0_box'] == row['box'] and torch.equal(row['q0_posterior'], row['posterior'])


@pytest.mark.parametrize('n', [300, 20])   # grid cells 0.04 and 0.6 wide, against a posterior sd of about 0.1
def test_moments_and_distances_match_the_closed_form_linear_gaussian(n, float64):
    """Linear-Gaussian decoder: p(z|x) = N(S Wᵀ(x − b)/σ², S), S = (I + WᵀW/σ²)⁻¹. q0 = N(c, diag(v)) and the
    flow a shift by s, so q_K = N(c + s, diag(v)): every moment and every entry of the table is known, also
    where the posterior is narrower than the quadrature's cells."""
    model, x, _ = linear_gaussian_model()
    c, log_var, shift = torch.tensor([0.4, -0.3]), torch.log(torch.tensor([0.04, 0.01])), torch.tensor([0.2, 0.5])
    model.enc_c, model.enc_log_var, model.flow = c, log_var, Shift(shift)
    x = x[:3]
    sigma = 0.3
    S = torch.linalg.inv(torch.eye(2) + model.W.T @ model.W / sigma ** 2).double()
    means = (x.flatten(1) - model.b).double() @ model.W.double() / sigma ** 2 @ S      # (3, 2); S is symmetric
    rows = posterior2d.posterior_panels(model, x, n=n, limit=6.0, window=60, samples=200_000, elbo_samples=10)
    for row, mean in zip(rows, means):
        posterior, q0, qk = (row['moments'][name] for name in ('posterior', 'q0', 'qk'))
        torch.testing.assert_close(posterior[0], mean, atol=1e-4, rtol=0)
        torch.testing.assert_close(posterior[1], S, atol=1e-4, rtol=0)
        torch.testing.assert_close(q0[0], c.double(), atol=1e-12, rtol=0)
        torch.testing.assert_close(q0[1], torch.diag(log_var.exp()).double(), atol=1e-12, rtol=0)
        torch.testing.assert_close(qk[0], (c + shift).double(), atol=2e-3, rtol=0)             # 200,000 draws
        torch.testing.assert_close(qk[1], torch.diag(log_var.exp()).double(), atol=1e-3, rtol=0)
    table = posterior2d.distance_table([7, 8, 9], [1, 2, 3], rows).splitlines()
    assert len(table) == 5 and table[0].startswith('| test image | label |')
    for line, row, mean in zip(table[2:], rows, means):
        cells = [float(v) for v in line.strip('| ').split(' | ')]
        widest = torch.linalg.eigvalsh(S)[-1].sqrt()
        expected = [row['log_px'], row['elbo'], row['log_px'] - row['elbo'], widest, (c - mean).norm(), 0.2,
                    (c + shift - mean).norm(), 0.2]
        assert cells[2:] == pytest.approx([float(v) for v in expected], abs=6e-3)   # printed to 2 or 3 places


@pytest.mark.parametrize('flow', ['householder', 'planar'])   # the exact q_K density, and a histogram
def test_posterior_figure(tmp_path, flow):
    images = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8)
    labels = torch.arange(12) % 10
    pre = data_utils.Preprocessor('mnist')
    path = tmp_path / 'posterior.png'
    assert posterior2d.posterior_figure(tiny_mnist_model(2, flow), pre, images, labels, path, 'tiny',
                                        n=80, window=40, samples=20_000, elbo_samples=100)
    with open(path, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    assert path.stat().st_size > 20_000
    title, _, table, _, *rows = (tmp_path / 'posterior.txt').read_text().splitlines()   # and its table beside it
    assert title == 'tiny' and table.startswith('| test image |') and len(rows) == 6
    assert [row.split(' | ')[:2] for row in rows] == [[f'| {i}', str(i)] for i in range(6)]   # index, label


def test_posterior_figure_draws_samples_where_the_iaf_inverse_overflows(tmp_path):
    """A perturbed 2-D IAF whose exact inverse overflows on part of the window (its density there nan):
    each row shows q_K's samples instead, as for a flow without an inverse."""
    W, b, x = bernoulli_toy(n_images=2)
    model = LinearVAE(W, b, 'bernoulli', perturbed_flow('iaf', 2, scale=1.5))
    rows = posterior2d.posterior_panels(model, x, n=80, window=50, samples=2000, elbo_samples=100)
    for row in rows:
        z0, log_det = model.flow.inverse(posterior2d._window_grid(row['box'], 50)[0].float())
        assert not (torch.isfinite(z0).all() and torch.isfinite(log_det).all())
        assert row['qk'] is None and torch.isfinite(row['qk_samples']).all()
    plotting.plot_posteriors(x.view(2, 1, 2, 3), [0, 1], rows, tmp_path / 'posterior.png', 'iaf')


def test_posterior_figure_skips_other_latent_sizes(tmp_path):
    images = torch.randint(0, 256, (12, 1, 28, 28), dtype=torch.uint8)
    path = tmp_path / 'posterior.png'
    assert posterior2d.posterior_figure(tiny_mnist_model(3, 'planar'), data_utils.Preprocessor('mnist'), images,
                                        torch.arange(12) % 10, path, 'tiny') is False
    assert not path.exists()
    with pytest.raises(ValueError, match='2-D latent'):
        posterior2d.exact_log_px(tiny_mnist_model(3, 'planar'), data_utils.Preprocessor('mnist'), images)
    with pytest.raises(ValueError, match='2-D latent space, got latent_dim=3'):
        posterior2d.log_px_grid(tiny_mnist_model(3, 'planar'), torch.rand(4, 1, 28, 28))


def test_latent_dim_leaves_batch_norm_and_the_mode_as_they_were():
    args = SimpleNamespace(dataset='mnist', latent_dim=2, base_dim=2, scale=1, res_blocks=1, bottleneck=0,
                           weight_norm=1, flow='none', length=0)
    model = static_flow_conv_vae.build_model(args, (1, 28, 28)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    assert posterior2d.latent_dim(model, torch.rand(4, 1, 28, 28)) == 2
    assert model.training
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0, msg=key)


@pytest.mark.parametrize('likelihood', ['bernoulli', 'gaussian'])
def test_adaptive_sum_equals_the_full_sum(float64, likelihood):
    """Leaving out the tiles far below each image's peak changes nothing at the precision that matters."""
    torch.manual_seed(2)
    W, b = 3.0 * torch.randn(30, 2), torch.randn(30)
    model = LinearVAE(W, b, likelihood, build_flow('none', 2, 0))
    z = torch.randn(50, 2)
    x = (z @ W.T + b + 0.3 * torch.randn(50, 30)).view(50, 1, 1, 30)
    if likelihood == 'bernoulli':
        x = torch.bernoulli(torch.sigmoid(x))
    full = posterior2d.log_px_grid(model, x, n=200, adaptive=False)
    adaptive = posterior2d.log_px_grid(model, x, n=200, coarse=40, grid_chunk=700, image_chunk=7)
    torch.testing.assert_close(adaptive, full, atol=1e-5, rtol=0)   # float32 products summed in another order
    # the tiles are worth keeping: with a threshold of 0 nats only the peak tiles (and neighbours) are summed
    assert (posterior2d.log_px_grid(model, x, n=200, coarse=40, threshold=0.0) - full).abs().max() > 1e-3


def test_skipped_centres_says_whether_q_k_is_where_the_sum_looks(float64):
    """With the encoder's mean on each posterior's mode nothing is flagged; moved off it, or out of the window,
    every image is; a flow that carries the moved mean back onto the mode clears it (the centre is z_K's)."""
    model, x, _ = linear_gaussian_model()
    W, sigma2 = model.W, math.exp(2 * model.log_scale.flatten()[0].item())
    cov = torch.linalg.inv(torch.eye(2) + W.T @ W / sigma2)               # the posterior's covariance
    model.enc_A, model.enc_c = cov @ W.T / sigma2, -(cov @ W.T / sigma2) @ model.b   # its mean, linear in x
    model.enc_log_var = cov.diagonal().log()
    assert not posterior2d.skipped_centres(model, x, n=200, limit=6.0).any()
    model.enc_c = model.enc_c + torch.tensor([4.0, -3.0])                   # 30-40 posterior widths away
    assert posterior2d.skipped_centres(model, x, n=200, limit=6.0).all()
    model.flow = Shift(torch.tensor([-4.0, 3.0]))
    assert not posterior2d.skipped_centres(model, x, n=200, limit=6.0).any()
    model.flow = Shift(torch.tensor([10.0, 0.0]))                            # beyond the window's edge
    assert posterior2d.skipped_centres(model, x, n=200, limit=6.0).all()


class KinkedVAE(LinearVAE):
    """Decoder mean (ψ(z1), z2) with ψ(z1) = −z1 for z1 < 0 and 30 z1 above: x1 = t > 0 has a posterior of two
    modes, a broad one at z1 = −t and a 30 times narrower, higher one at z1 = t/30 (for t = 3, 75% of the mass)."""

    def decode(self, z):
        kinked = torch.where(z[:, 0] < 0, -z[:, 0], 30 * z[:, 0])
        return torch.stack([kinked, z[:, 1]], 1).view(-1, 1, 1, 2)


def test_a_narrow_mode_between_the_first_pass_points_is_missed_and_flagged(float64):
    """The narrow mode (std 0.005, a quarter of a cell) lies halfway between two first-pass points, 50 nats below its
    peak there: its tiles are left out and log p(x) falls short of the full sum; an encoder centred on it is
    flagged, one centred on the broad mode is not."""
    model = KinkedVAE(torch.eye(2), torch.zeros(2), 'gaussian', build_flow('none', 2, 0))
    with torch.no_grad():
        model.log_scale.copy_(torch.tensor([0.15, 1.0]).log().view(1, 1, 2))
    x = torch.tensor([3.0, 0.0]).view(1, 1, 1, 2)
    grid = dict(n=400, limit=4.0, coarse=80)                # cells 0.02 wide, first-pass points 0.1 apart
    full = posterior2d.log_px_grid(model, x, adaptive=False, **grid)
    assert full.item() - posterior2d.log_px_grid(model, x, **grid).item() > 0.5
    model.enc_c = torch.tensor([0.1, 0.0])
    assert posterior2d.skipped_centres(model, x, **grid).all()
    model.enc_c = torch.tensor([-3.0, 0.0])
    assert not posterior2d.skipped_centres(model, x, **grid).any()
    # a first pass on every point finds the narrow mode: the adaptive sum is the full one
    torch.testing.assert_close(posterior2d.log_px_grid(model, x, n=400, limit=4.0, coarse=400), full)


@pytest.mark.parametrize('flow,scale', [('nice', 0.5), ('iaf', 0.2)])   # NICE's scaling and IAF: log|det| ≠ 0
def test_the_figures_q_k_is_a_density_on_its_window(float64, flow, scale):
    """The q_K(z|x) the figure contours, summed over its window x window grid times the cell area, is the
    mass of q_K inside the window, which q_K's own samples put above 0.99: the inverse's log-det enters
    with its sign."""
    W, b, x = bernoulli_toy(n_images=3)
    model = LinearVAE(W, b, 'bernoulli', perturbed_flow(flow, 2, scale=scale),
                      enc_A=0.5 * torch.randn(2, 6), enc_log_var=torch.tensor([-1.0, 0.5]))
    with torch.no_grad():
        assert model.flow(torch.randn(100, 2))[1].abs().min() > 0.3
    rows = posterior2d.posterior_panels(model, x, n=100, limit=6.0, window=200, samples=20_000, elbo_samples=10)
    mean, log_var, _ = model.encode(x)
    for i, row in enumerate(rows):
        x0, x1, y0, y1 = row['box']
        mass = row['qk'].sum().item() * (x1 - x0) * (y1 - y0) / 199 ** 2   # linspace: 199 cells per side
        with torch.no_grad():
            z = model.flow(mean[i] + torch.exp(0.5 * log_var[i]) * torch.randn(100_000, 2))[0]
        inside = ((z[:, 0] > x0) & (z[:, 0] < x1) & (z[:, 1] > y0) & (z[:, 1] < y1)).double().mean().item()
        assert inside > 0.99
        assert mass == pytest.approx(inside, abs=0.005)
