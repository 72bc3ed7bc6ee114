"""The ELBO and the importance-weighted estimator against cases whose answer is known."""
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from conftest import perturb
from flows import build_flow
from vae import (ElboTerms, FlowVAE, elbo, iw_log_likelihood, kl_standard_normal, log_normal_diag,
                 log_standard_normal, training_loss)

pytestmark = pytest.mark.usefixtures('float64')


class LinearVAE(FlowVAE):
    """Decoder mean W z + b reshaped to (1, 1, P); encoder (mean, log_var) linear in x (or fixed)."""

    def __init__(self, W, b, likelihood, flow, enc_A=None, enc_c=None, enc_log_var=None):
        super().__init__(flow, likelihood, (1, 1, W.shape[0]))
        self.W, self.b = W, b
        latent = W.shape[1]
        self.enc_A = torch.zeros(latent, W.shape[0]) if enc_A is None else enc_A
        self.enc_c = torch.zeros(latent) if enc_c is None else enc_c
        self.enc_log_var = torch.zeros(latent) if enc_log_var is None else enc_log_var

    def encode(self, x):
        x = x.flatten(1)
        mean = x @ self.enc_A.T + self.enc_c
        return mean, self.enc_log_var.expand_as(mean), None

    def decode(self, z):
        return (z @ self.W.T + self.b).view(-1, *self.image_shape)


def perturbed_flow(kind, dim, scale=0.3, seed=0, length=2, context_dim=None):
    return perturb(build_flow(kind, dim, length, context_dim), scale, seed)


def linear_gaussian(seed, latent=2, pixels=5, sigma=1.0, w_scale=0.4, n=8):
    """x = W z + b + sigma eps, z ~ N(0, I): returns W, b, x (n, 1, 1, P) and the exact log p(x)."""
    torch.manual_seed(seed)
    W, b = w_scale * torch.randn(pixels, latent), torch.randn(pixels)
    marginal = torch.distributions.MultivariateNormal(b, W @ W.T + sigma ** 2 * torch.eye(pixels))
    x = marginal.sample((n,))
    return W, b, x.view(n, 1, 1, pixels), marginal.log_prob(x)


class DropLogDet(nn.Module):
    """A flow with its log-determinant thrown away: what a broken estimator would use."""

    def __init__(self, flow):
        super().__init__()
        self.inner, self.kind, self.length = flow, flow.kind, flow.length

    def forward(self, z, context=None):
        z_k, log_det = self.inner(z, context)
        return z_k, torch.zeros_like(log_det)


def test_iw_and_elbo_match_exact_linear_gaussian_without_flow():
    """q0 with the exact posterior mean and twice its variances: the ELBO gap is KL(q0 || p(z|x))."""
    W, b, x, exact = linear_gaussian(seed=0, sigma=0.5, w_scale=1.0)
    latent, sigma = W.shape[1], 0.5
    S = torch.linalg.inv(torch.eye(latent) + W.T @ W / sigma ** 2)     # posterior covariance
    q_var = 2 * torch.diagonal(S)
    model = LinearVAE(W, b, 'gaussian', build_flow('none', latent, 0), enc_A=S @ W.T / sigma ** 2,
                      enc_c=-(S @ W.T @ b) / sigma ** 2, enc_log_var=q_var.log())
    with torch.no_grad():
        model.log_scale.fill_(math.log(sigma))
    model.iw_rows = 4096   # K = 5000 samples in chunks

    torch.testing.assert_close(iw_log_likelihood(model, x, 5000), exact, atol=0.05, rtol=0)
    draws = 20000
    elbos = elbo(model(x.repeat(draws, 1, 1, 1)), model.has_flow).detach().view(draws, len(x))
    mean_elbo, stderr = elbos.mean(0), elbos.std(0) / math.sqrt(draws)
    gap = 0.5 * (torch.trace(torch.linalg.inv(S) * q_var) - latent + torch.logdet(S) - q_var.log().sum())
    assert gap > 0.1
    torch.testing.assert_close(mean_elbo, exact - gap, atol=float(4 * stderr.max()) + 1e-3, rtol=0)


@pytest.mark.parametrize('kind,scale', [('planar', 0.3), ('radial', 0.3), ('householder', 0.5), ('nice', 0.15)])
def test_iw_with_a_flow_matches_exact_linear_gaussian(kind, scale):
    """q0 = N(0, I) pushed through a random flow: the weights need the flow's log-det to be right."""
    W, b, x, exact = linear_gaussian(seed=0)
    flow = perturbed_flow(kind, W.shape[1], scale=scale)
    model = LinearVAE(W, b, 'gaussian', flow)
    torch.testing.assert_close(iw_log_likelihood(model, x, 5000), exact, atol=0.05, rtol=0)
    mean_elbo = elbo(model(x.repeat(5000, 1, 1, 1)), model.has_flow).detach().view(5000, len(x)).mean(0)
    assert (mean_elbo < exact).all()
    if kind != 'householder':  # volume-preserving: nothing to drop
        model.flow = DropLogDet(flow)
        assert (iw_log_likelihood(model, x, 5000) - exact).abs().max() > 0.2


class AmortizedLinearVAE(LinearVAE):
    """LinearVAE whose q_K is the exact posterior through a flow whose parameters depend on x.

    Decoder columns orthogonal with equal norms make the posterior N(mu(x), s I) isotropic. The encoder
    emits a context c(x) = C x and q0 = N(f_c^{-1}(mu(x)), s I); an amortized Householder flow f_c (a
    product of reflections: linear, orthogonal) then maps q0 to exactly N(mu(x), s I). Every importance
    weight is then p(x) itself: the estimate is exact for any K and any draw, if each sample goes through
    its own example's flow.
    """

    def __init__(self, W, b, sigma, flow, C):
        super().__init__(W, b, 'gaussian', flow)
        with torch.no_grad():
            self.log_scale.fill_(math.log(sigma))
        self.C, self.sigma = C, sigma
        self.s = 1 / (1 + (W.T @ W)[0, 0] / sigma ** 2)        # posterior variance, the same in each direction

    def posterior_mean(self, x):
        return self.s * (x.flatten(1) - self.b) @ self.W / self.sigma ** 2

    def encode(self, x):
        context = x.flatten(1) @ self.C.T
        mean = self.flow.inverse(self.posterior_mean(x), context)[0]
        return mean, torch.full_like(mean, math.log(self.s)), context


def test_iw_and_elbo_are_exact_when_an_amortized_flow_gives_the_exact_posterior():
    """Eight examples, each with its own flow: a sample pushed through another example's flow (a mix-up of
    the context's tiling over the K samples) has a weight other than p(x), and the estimate moves."""
    latent, pixels, sigma = 2, 5, 0.7
    W, b, x, exact = linear_gaussian(seed=5, latent=latent, pixels=pixels, sigma=sigma)
    q, _ = torch.linalg.qr(torch.randn(pixels, latent))
    W = 1.5 * q                                                    # W^T W = 2.25 I: isotropic posterior
    marginal = torch.distributions.MultivariateNormal(b, W @ W.T + sigma ** 2 * torch.eye(pixels))
    exact = marginal.log_prob(x.flatten(1))
    flow = perturbed_flow('householder', latent, scale=1.0, length=2, context_dim=3)
    model = AmortizedLinearVAE(W, b, sigma, flow, C=torch.randn(3, pixels))
    model.iw_rows = 16                                             # 2 samples of the 8 examples per chunk

    mu = model.posterior_mean(x)
    mean, _, context = model.encode(x)
    torch.testing.assert_close(flow(mean, context)[0], mu)
    others = flow(mean, context.roll(1, 0))[0]                     # each q0 through its neighbour's flow
    assert ((others - mu).norm(dim=1) > 0.1).all()

    for k in (1, 5, 64):
        torch.testing.assert_close(iw_log_likelihood(model, x, k), exact, atol=1e-9, rtol=0)
    torch.testing.assert_close(elbo(model(x), model.has_flow), exact, atol=1e-9, rtol=0)


def test_iw_matches_quadrature_bernoulli():
    """A Bernoulli decoder on a 2-D latent: log p(x) by quadrature on a 401 x 401 grid."""
    torch.manual_seed(1)
    latent, pixels = 2, 6
    W, b = 1.5 * torch.randn(pixels, latent), torch.randn(pixels)
    model = LinearVAE(W, b, 'bernoulli', build_flow('none', latent, 0))  # q0 = the prior
    x = torch.bernoulli(torch.full((4, pixels), 0.5))
    grid = torch.linspace(-8, 8, 401)
    step = grid[1] - grid[0]
    z = torch.cartesian_prod(grid, grid)                                 # (G, 2)
    logits = z @ W.T + b                                                  # (G, P)
    log_px_z = -nn.functional.binary_cross_entropy_with_logits(
        logits[:, None].expand(-1, 4, -1), x[None].expand(len(z), -1, -1), reduction='none').sum(-1)
    exact = torch.logsumexp(log_px_z + log_standard_normal(z)[:, None], 0) + 2 * step.log()

    estimate = iw_log_likelihood(model, x.view(4, 1, 1, pixels), 5000)
    torch.testing.assert_close(estimate, exact, atol=0.1, rtol=0)


@pytest.mark.parametrize('kind', ['planar', 'radial', 'householder', 'nice'])
def test_elbo_equals_hand_computation(kind):
    """With eps fixed, the model's ELBO is log p(x|z_K) + log p(z_K) - log q0(z0|x) + log_det."""
    torch.manual_seed(2)
    latent, pixels = 4, 7
    model = LinearVAE(torch.randn(pixels, latent), torch.randn(pixels), 'gaussian',
                      perturbed_flow(kind, latent), enc_A=torch.randn(latent, pixels),
                      enc_log_var=torch.randn(latent))
    x = torch.randn(3, 1, 1, pixels)
    eps = torch.randn(3, latent)

    mean, log_var, _ = model.encode(x)
    z0 = mean + (0.5 * log_var).exp() * eps
    z_k, log_det = model.flow(z0)
    var = log_var.exp()
    log_q0 = (-0.5 * math.log(2 * math.pi) - 0.5 * log_var - (z0 - mean) ** 2 / (2 * var)).sum(-1)
    log_pz = (-0.5 * math.log(2 * math.pi) - 0.5 * z_k ** 2).sum(-1)
    x_mean = z_k @ model.W.T + model.b
    log_px = (-0.5 * math.log(2 * math.pi) - model.log_scale.flatten()
              - 0.5 * (x.flatten(1) - x_mean) ** 2 / (2 * model.log_scale.flatten()).exp()).sum(-1)
    by_hand = log_px + log_pz - log_q0 + log_det

    terms = model(x, eps)
    torch.testing.assert_close(elbo(terms, model.has_flow), by_hand)
    torch.testing.assert_close(training_loss(terms, True, 'elbo', beta=1.0), -by_hand)
    # beta scales exactly the terms other than log p(x|z_K)
    torch.testing.assert_close(training_loss(terms, True, 'elbo', beta=0.25),
                               -(log_px + 0.25 * (log_pz - log_q0 + log_det)))


@pytest.mark.parametrize('kind', ['none', 'planar'])
def test_terms_of_several_draws_per_example(kind):
    """terms with eps (S, B, D) is forward on x repeated S times with eps (S * B, D), term by term (S, B); kl0 is
    the same for each draw, so it stays (B,)."""
    torch.manual_seed(5)
    latent, pixels, draws = 3, 6, 4
    model = LinearVAE(torch.randn(pixels, latent), torch.randn(pixels), 'bernoulli',
                      perturbed_flow(kind, latent, length=0 if kind == 'none' else 2),
                      enc_A=torch.randn(latent, pixels), enc_log_var=torch.randn(latent))
    x = torch.bernoulli(torch.full((3, 1, 1, pixels), 0.5))
    eps = torch.randn(draws, 3, latent)
    terms = model.terms(x, *model.encode(x), eps)
    repeated = model(x.repeat(draws, 1, 1, 1), eps.reshape(-1, latent))
    for name, several, one in zip(ElboTerms._fields, terms, repeated):
        torch.testing.assert_close(several, one.view(draws, 3)[0] if name == 'kl0' else one.view(draws, 3), msg=name)
    assert terms.kl0.shape == (3,)


def test_densities_against_torch_distributions():
    torch.manual_seed(3)
    z, mean, log_var = torch.randn(5, 3), torch.randn(5, 3), torch.randn(5, 3)
    normal = torch.distributions.Normal(mean, (0.5 * log_var).exp())
    torch.testing.assert_close(log_normal_diag(z, mean, log_var), normal.log_prob(z).sum(-1))
    torch.testing.assert_close(log_standard_normal(z), torch.distributions.Normal(0., 1.).log_prob(z).sum(-1))
    prior = torch.distributions.Normal(torch.zeros(3), torch.ones(3))
    torch.testing.assert_close(kl_standard_normal(mean, log_var),
                               torch.distributions.kl_divergence(normal, prior).sum(-1))


def test_seed_objective_differs_with_a_flow_and_not_without():
    torch.manual_seed(4)
    latent, pixels = 3, 6
    args = (torch.randn(pixels, latent), torch.randn(pixels), 'bernoulli')
    x = torch.bernoulli(torch.full((4, 1, 1, pixels), 0.5))
    eps = torch.randn(4, latent)

    planar = LinearVAE(*args, perturbed_flow('planar', latent, scale=1.0), enc_A=torch.randn(latent, pixels))
    terms = planar(x, eps)
    assert not torch.allclose(training_loss(terms, True, 'seed'), training_loss(terms, True, 'elbo'))
    # the seed objective is KL(q0 || p) at z0 minus the log-det
    torch.testing.assert_close(training_loss(terms, True, 'seed'), -terms.log_px + terms.kl0 - terms.log_det)

    none = LinearVAE(*args, build_flow('none', latent, 0), enc_A=torch.randn(latent, pixels))
    terms = none(x, eps)
    assert not none.has_flow
    torch.testing.assert_close(training_loss(terms, False, 'seed'), training_loss(terms, False, 'elbo'))


@pytest.mark.parametrize('amortized', [False, True])
def test_under_bf16_autocast_only_the_networks_run_in_bfloat16(amortized, monkeypatch):
    """--precision bf16 runs the training forward under torch.autocast(bfloat16): the decoder's output and an
    amortized flow's context layer are bfloat16, the flow's arithmetic runs on float32 with autocast off, and
    every term comes out float32 and close to the float32 model's (same eps)."""
    import static_flow_vae   # a real MLP encoder and decoder, in float32 (this module's default is float64)
    args = SimpleNamespace(dataset='mnist', latent_dim=2, hidden_dim=32, layer=1, gate=0, flow='planar',
                           length=4, amortized=amortized)
    torch.manual_seed(0)
    model = static_flow_vae.build_model(args, (1, 28, 28)).float()
    x = torch.rand(16, 1, 28, 28, dtype=torch.float32).round()
    eps = torch.randn(16, 2, dtype=torch.float32)
    seen, decode, step = {}, model.decode, model.flow.steps[0]
    transform, params = step.transform, step.params

    def spy_decode(z):
        seen['decoded'] = decode(z).dtype
        return decode(z)

    def spy_transform(z, theta):
        seen['flow'] = (z.dtype, theta.dtype, torch.is_autocast_enabled('cpu'))
        return transform(z, theta)

    def spy_params(z, context):
        if amortized:
            seen['context layer'] = step.to_theta(context).dtype
        return params(z, context)

    monkeypatch.setattr(model, 'decode', spy_decode)
    monkeypatch.setattr(step, 'transform', spy_transform)
    monkeypatch.setattr(step, 'params', spy_params)
    exact = model(x, eps)
    layer = {'context layer': torch.float32} if amortized else {}
    assert seen == {'decoded': torch.float32, 'flow': (torch.float32, torch.float32, False), **layer}
    with torch.autocast('cpu', dtype=torch.bfloat16):
        low = model(x, eps)
    layer = {'context layer': torch.bfloat16} if amortized else {}
    assert seen == {'decoded': torch.bfloat16, 'flow': (torch.float32, torch.float32, False), **layer}
    for name, a, b in zip(ElboTerms._fields, exact, low):
        assert b.dtype == torch.float32, name
        torch.testing.assert_close(b, a, rtol=0.02, atol=0.05, msg=name)
    assert not torch.equal(low.log_px, exact.log_px)   # the decoder did run in bfloat16
