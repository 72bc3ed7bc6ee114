"""The flow VAE shared by the three scripts: densities, the flow ELBO, and the estimators.

A script subclasses `FlowVAE` and supplies `encode` and `decode`; everything that turns those into
numbers (the ELBO of Rezende & Mohamed 2015, eq. 15, and the importance-weighted log-likelihood of
Burda et al. 2015) lives here once.
"""
import math
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from flows import full_precision

LOG_2PI = math.log(2 * math.pi)
LIKELIHOODS = ('bernoulli', 'gaussian')
OBJECTIVES = ('elbo', 'seed')


def log_normal_diag(z, mean, log_var):
    """log N(z; mean, diag(exp(log_var))), summed over the last dim: (B, D) -> (B,)."""
    return -0.5 * (LOG_2PI + log_var + (z - mean) ** 2 * torch.exp(-log_var)).sum(-1)


def log_standard_normal(z):
    """log N(z; 0, I): (B, D) -> (B,)."""
    return -0.5 * (LOG_2PI + z ** 2).sum(-1)


def kl_standard_normal(mean, log_var):
    """KL(N(mean, diag(exp(log_var))) || N(0, I)) in closed form: (B, D) -> (B,)."""
    return 0.5 * (mean ** 2 + log_var.exp() - 1 - log_var).sum(-1)


def bernoulli_log_likelihood(logits, x):
    """sum_i log Bernoulli(x_i; sigmoid(logits_i)); logits (..., C, H, W) broadcast against x -> (...)."""
    logits, x = torch.broadcast_tensors(logits, x)
    return -F.binary_cross_entropy_with_logits(logits, x, reduction='none').flatten(-3).sum(-1)


def gaussian_log_likelihood(mean, log_scale, x):
    """sum_i log N(x_i; mean_i, exp(log_scale_i)^2), full normalizing constant included -> (...)."""
    z = (x - mean) * torch.exp(-log_scale)
    return -(0.5 * LOG_2PI + log_scale + 0.5 * z ** 2).flatten(-3).sum(-1)


def sample_q0(mean, log_var, eps=None):
    """z0 = mean + exp(log_var / 2) * eps with eps ~ N(0, I) unless given: the reparameterization trick, (..., D)."""
    if eps is None:
        eps = torch.randn_like(mean)
    return mean + torch.exp(0.5 * log_var) * eps


class ElboTerms(NamedTuple):
    """Per-example terms (each (B,)) of one draw z0 ~ q0(z0|x), z_K = f(z0)."""
    log_px: torch.Tensor   # log p(x | z_K)
    log_pz: torch.Tensor   # log p(z_K), standard normal prior
    log_q0: torch.Tensor   # log q0(z0 | x), diagonal Gaussian from the encoder
    log_det: torch.Tensor  # sum_k log|det dz_k/dz_{k-1}|
    kl0: torch.Tensor      # KL(q0(z0|x) || p(z0)) in closed form (used for `none` and the seed objective)


class FlowVAE(nn.Module):
    """x -> q0(z0|x) = N(mean, diag(var)) -> flow f -> z_K -> p(x|z_K).

    Subclasses define `encode(x) -> (mean, log_var, context)`, each (B, ·), and
    `decode(z) -> (B, C, H, W)`: Bernoulli logits, or the Gaussian mean for `likelihood='gaussian'`,
    whose per-dimension log-scale is a learned parameter of this class.
    """

    def __init__(self, flow, likelihood, image_shape):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f'likelihood must be one of {LIKELIHOODS}, got {likelihood!r}')
        self.flow = flow
        self.likelihood = likelihood
        self.image_shape = tuple(image_shape)
        if likelihood == 'gaussian':
            self.log_scale = nn.Parameter(torch.zeros(self.image_shape))

    iw_rows = 16384  # decoder rows per chunk in `iw_log_likelihood`; conv models set fewer

    def encode(self, x):
        raise NotImplementedError

    def decode(self, z):
        raise NotImplementedError

    def penalty(self):
        """A regularizer added to the training loss (not to the ELBO); none by default."""
        return 0.0

    @property
    def has_flow(self):
        return self.flow.kind != 'none' and self.flow.length > 0

    def log_likelihood(self, x, decoded):
        """log p(x | z) for decoder output `decoded` (..., C, H, W) broadcast against x -> (...)."""
        if self.likelihood == 'bernoulli':
            return bernoulli_log_likelihood(decoded, x)
        return gaussian_log_likelihood(decoded, self.log_scale, x)

    def mean_image(self, decoded):
        """The decoder's mean, in the space the model sees the data in."""
        return torch.sigmoid(decoded) if self.likelihood == 'bernoulli' else decoded

    def forward(self, x, eps=None):
        """ElboTerms for x (B, C, H, W) with z0 = mean + std * eps, eps ~ N(0, I) unless given.

        Under torch.autocast (training with --precision bf16) only the networks run in low precision: the
        encoder, the decoder and an amortized flow's context layers. Their outputs are cast back to x's
        dtype, in which z0, the flow's arithmetic (flows.py) and every term are computed.
        """
        mean, log_var, context = (None if t is None else t.to(x.dtype) for t in self.encode(x))
        return self.terms(x, mean, log_var, context, eps)

    def terms(self, x, mean, log_var, context, eps=None):
        """ElboTerms for x (B, C, H, W) under q0 = N(mean, diag(exp(log_var))), (B, D) each, and the flow's
        `context` (what the flow takes: see flows.FlowSequence), with z0 = mean + std * eps, eps ~ N(0, I)
        unless given. eps (S, B, D) draws S z0 per example: each term is then (S, B), kl0 still (B,)."""
        with full_precision(x):
            z0 = sample_q0(mean, log_var, eps)                        # (B, D) or (S, B, D)
        z_k, log_det = self.flow(z0, context)
        decoded = self.decode(z_k.flatten(0, -2)).to(x.dtype).unflatten(0, z_k.shape[:-1])   # (..., B, C, H, W)
        with full_precision(x):
            return ElboTerms(
                log_px=self.log_likelihood(x, decoded),
                log_pz=log_standard_normal(z_k),
                log_q0=log_normal_diag(z0, mean, log_var),
                log_det=log_det,
                kl0=kl_standard_normal(mean, log_var),
            )

    def latents(self, x):
        """(z0, z_K), each (B, D), for one draw from q0: what the latent plots show."""
        mean, log_var, context = self.encode(x)
        z0 = sample_q0(mean, log_var)
        return z0, self.flow(z0, context)[0]


def elbo(terms, has_flow):
    """The flow ELBO, per example: log p(x|z_K) + log p(z_K) - log q0(z0|x) + sum log|det| (eq. 15).

    With no flow the Monte Carlo KL is replaced by its closed form (same expectation, less noise).
    """
    return terms.log_px - kl_term(terms, has_flow, 'elbo')


def kl_term(terms, has_flow, objective):
    """The part of -ELBO that KL warm-up scales, per example.

    'elbo': log q0(z0|x) - log p(z_K) - sum log|det|, the correct flow objective.
    'seed': KL(q0 || p) at z0 minus sum log|det|, the original repo's formulation, which evaluates
            the prior at z0 instead of z_K; kept only to reproduce its figures. It is not a bound.
    """
    if objective == 'seed':
        return terms.kl0 - terms.log_det
    if not has_flow:
        return terms.kl0
    return terms.log_q0 - terms.log_pz - terms.log_det


def training_loss(terms, has_flow, objective='elbo', beta=1.0):
    """Per-example loss -(log p(x|z_K) - beta * KL term), beta the warm-up weight in [0, 1]."""
    return -(terms.log_px - beta * kl_term(terms, has_flow, objective))


@torch.no_grad()
def iw_log_likelihood(model, x, n_samples):
    """Importance-weighted estimate of log p(x) (Burda et al. 2015, eq. 8), per example (B,).

    log p(x) ~ logsumexp_k [log p(x|z_K^k) + log p(z_K^k) - log q0(z0^k|x) + log_det^k] - log K,
    the K proposals drawn from q_K (the flow pushed forward). Samples are decoded in chunks of at
    most `model.iw_rows` (B*k) rows, so memory stays bounded for any K.
    """
    mean, log_var, context = model.encode(x)                           # (B, D), (B, D), (B, C) or None
    batch, dim = mean.shape
    chunk = max(1, model.iw_rows // batch)
    log_w = []
    for start in range(0, n_samples, chunk):
        k = min(chunk, n_samples - start)
        eps = torch.randn(k, batch, dim, device=x.device, dtype=mean.dtype)
        # (k, B, D); an amortized flow computes each example's parameters once for its k samples
        z_k, log_det = model.flow(sample_q0(mean, log_var, eps), context)
        decoded = model.decode(z_k.reshape(k * batch, dim)).view(k, batch, *x.shape[1:])   # (k, B, C, H, W)
        log_px = model.log_likelihood(x, decoded)                       # (k, B)
        log_q0 = -0.5 * (LOG_2PI + log_var + eps ** 2).sum(-1)          # (k, B)
        log_w.append(log_px + log_standard_normal(z_k) - log_q0 + log_det)
    return torch.logsumexp(torch.cat(log_w), dim=0) - math.log(n_samples)
