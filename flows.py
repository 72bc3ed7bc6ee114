"""Normalizing flows for the VAE posterior: planar, radial, Householder, NICE.

Every step maps z (B, D) to (z', log_det) with log_det (B,) = log|det dz'/dz|, given an optional
`context` (B, C). A static step holds its parameters as nn.Parameters and ignores any context it is
given (the VAE passes its encoder context either way); an amortized step (`context_dim` set) computes
them per example from the context with a linear layer and raises ValueError without a (B, C) context.
`build_flow(kind, dim, length, context_dim=None)` chains `length` steps.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-12    # floor on ‖w‖², ‖v‖² (a zero vector would divide by zero)
TINY = 1e-30   # floor on a determinant before its log, so log_det stays finite


def check_context(context, context_dim, batch):
    """Raise ValueError unless `context` fits a flow with `context_dim` (None: static, no context needed)."""
    if context_dim is None:
        return
    if context is None:
        raise ValueError(f'an amortized flow needs a context of shape ({batch}, {context_dim}), got None')
    if context.shape != (batch, context_dim):
        raise ValueError(f'context must have shape ({batch}, {context_dim}), got {tuple(context.shape)}')


class FlowStep(nn.Module):
    """Holds a step's parameters: P free values, or a linear map from the context (B, C) to (B, P)."""

    def __init__(self, dim, context_dim, init):
        super().__init__()
        if dim < 1:
            raise ValueError(f'flow dim must be >= 1, got dim={dim}')
        self.dim, self.context_dim = dim, context_dim
        if context_dim is None:
            self.theta = nn.Parameter(init)                              # (P,)
        else:
            self.to_theta = nn.Linear(context_dim, init.numel())
            with torch.no_grad():                                        # start near the static init
                self.to_theta.weight.mul_(0.01)
                self.to_theta.bias.copy_(init)

    def params(self, z, context):
        """(P,) static or (B, P) amortized."""
        check_context(context, self.context_dim, z.shape[0])
        return self.theta if self.context_dim is None else self.to_theta(context)

    def inverse(self, z, context=None):
        raise NotImplementedError(f'{type(self).__name__} has no closed-form inverse; only forward() exists '
                                  f'(householder and nice flows can be inverted)')


class PlanarFlow(FlowStep):
    """z' = z + û tanh(wᵀz + b) on z (B, D) (Rezende & Mohamed 2015, arXiv:1505.05770, eq. 10).

    û = u + (m(wᵀu) − wᵀu) w/‖w‖², m(a) = −1 + softplus(a), so wᵀû ≥ −1 and the map is invertible
    (appendix A.1); log|det| = log|1 + ûᵀψ(z)|, ψ(z) = tanh'(wᵀz + b) w (eq. 11-12).
    Parameters u, w (D,) and b, or (B, ·) each when amortized.
    """

    def __init__(self, dim, context_dim=None):
        super().__init__(dim, context_dim, 0.1 * torch.randn(2 * dim + 1))

    def forward(self, z, context=None):
        theta = self.params(z, context)
        u, w, b = theta[..., :self.dim], theta[..., self.dim:2 * self.dim], theta[..., -1]
        wu = (w * u).sum(-1, keepdim=True)                                 # (1,) or (B, 1)
        ww = (w * w).sum(-1, keepdim=True)
        ww_safe = ww.clamp_min(EPS)
        m_wu = F.softplus(wu)                                              # m(wᵀu) + 1 > 0
        u_hat = u + (m_wu - 1 - wu) * w / ww_safe
        # 1 + wᵀû without cancellation: q = 1 exactly unless ‖w‖² < EPS, then 1 + wᵀû ≈ 1 + wᵀu ≈ 1
        q = ww / ww_safe
        one_plus_wu_hat = (q * m_wu + (1 - q) * (1 + wu)).squeeze(-1)      # () or (B,)
        h = torch.tanh((z * w).sum(-1) + b)                                # (B,)
        # 1 + ûᵀψ = 1 + (1 − h²) wᵀû = h² + (1 − h²)(1 + wᵀû): a sum of two terms >= 0
        det = one_plus_wu_hat + h * h * (1 - one_plus_wu_hat)
        return z + u_hat * h.unsqueeze(-1), torch.log(det.clamp_min(TINY))


class RadialFlow(FlowStep):
    """z' = z + β h(α, r)(z − z0), r = ‖z − z0‖, h = 1/(α + r) (Rezende & Mohamed 2015, eq. 14).

    α = softplus(α̂) > 0 and β = −α + softplus(β̂) ≥ −α keep it invertible;
    log|det| = (d − 1) log(1 + βh) + log(1 + βh + βh'r), h' = −1/(α + r)². With s = softplus(β̂) = α + β,
    1 + βh = (s + r)/(α + r) and 1 + βh + βh'r = (r(r + 2α) + αs)/(α + r)², sums of terms >= 0, so
    log_det is computed without cancellation for any β̂. Parameters z0 (D,), α̂, β̂, or (B, ·) amortized.
    """

    def __init__(self, dim, context_dim=None):
        super().__init__(dim, context_dim, 0.1 * torch.randn(dim + 2))

    def forward(self, z, context=None):
        theta = self.params(z, context)
        z0, alpha_hat, beta_hat = theta[..., :self.dim], theta[..., -2], theta[..., -1]
        alpha = F.softplus(alpha_hat)                                      # () or (B,)
        s = F.softplus(beta_hat)                                           # α + β >= 0
        diff = z - z0                                                      # (B, D)
        r = torch.linalg.vector_norm(diff, dim=-1)                         # (B,); its gradient at 0 is 0
        alpha_r = alpha + r
        log_det = ((self.dim - 1) * torch.log((s + r).clamp_min(TINY))
                   + torch.log((r * (r + 2 * alpha) + alpha * s).clamp_min(TINY))
                   - (self.dim + 1) * torch.log(alpha_r))
        return z + ((s - alpha) / alpha_r).unsqueeze(-1) * diff, log_det


class HouseholderFlow(FlowStep):
    """z' = z − 2 v (vᵀz)/‖v‖², a reflection (Tomczak & Welling 2016, arXiv:1611.09630, eq. 6).

    z (B, D), v (D,) or (B, D) amortized. Volume-preserving (log|det| = 0) and its own inverse;
    O(BD): the D x D matrix is never formed.
    """

    def __init__(self, dim, context_dim=None):
        super().__init__(dim, context_dim, torch.randn(dim))

    def forward(self, z, context=None):
        v = self.params(z, context)
        scaled_v = v * (2 / (v * v).sum(-1, keepdim=True).clamp_min(EPS))   # 2 v/‖v‖²
        z = z - (z * v).sum(-1, keepdim=True) * scaled_v
        return z, z.new_zeros(z.shape[0])

    def inverse(self, z, context=None):
        return self(z, context)


class NiceFlow(nn.Module):
    """Additive coupling (Dinh et al. 2014, arXiv:1410.8516, eq. 5): z'_b = z_b + m(z_a), z'_a = z_a.

    z (B, D) is split into z[:, :D//2] and z[:, D//2:]; `parity` 0 keeps the first and updates the
    second, 1 the other way round. m is an MLP (two hidden layers of `hidden_dim`, ReLU), fed
    [z_a, context] when amortized. Volume-preserving: log|det| = 0. m's last layer starts at zero.
    """

    def __init__(self, dim, context_dim=None, hidden_dim=64, parity=0):
        super().__init__()
        if dim < 2:
            raise ValueError(f'a NICE coupling needs dim >= 2 to split z in two halves, got dim={dim}')
        if parity not in (0, 1):
            raise ValueError(f'parity must be 0 or 1, got parity={parity}')
        self.dim, self.context_dim, self.parity = dim, context_dim, parity
        self.half = dim // 2
        n_kept = self.half if parity == 0 else dim - self.half
        self.shift = nn.Sequential(
            nn.Linear(n_kept + (context_dim or 0), hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, hidden_dim), nn.ReLU(),
            nn.Linear(hidden_dim, dim - n_kept))
        nn.init.zeros_(self.shift[-1].weight)                              # start at the identity
        nn.init.zeros_(self.shift[-1].bias)

    def _couple(self, z, context, sign):
        check_context(context, self.context_dim, z.shape[0])
        first, second = z[:, :self.half], z[:, self.half:]
        kept = first if self.parity == 0 else second
        shift = self.shift(kept if self.context_dim is None else torch.cat([kept, context], dim=-1))
        if sign < 0:
            shift = -shift
        z = torch.cat([first, second + shift] if self.parity == 0 else [first + shift, second], dim=-1)
        return z, z.new_zeros(z.shape[0])

    def forward(self, z, context=None):
        return self._couple(z, context, 1)

    def inverse(self, z, context=None):
        return self._couple(z, context, -1)


class NiceScaling(FlowStep):
    """The last step of a NICE flow: z' = z ⊙ exp(s), log|det| = Σ s (Dinh et al. 2014, arXiv:1410.8516, sec. 3.3).

    s (D,) static, or Linear(context) (B, D) amortized; starts at 0.
    """

    def __init__(self, dim, context_dim=None):
        super().__init__(dim, context_dim, torch.zeros(dim))

    def forward(self, z, context=None):
        s = self.params(z, context)
        return z * torch.exp(s), s.sum(-1).expand(z.shape[0])

    def inverse(self, z, context=None):
        s = self.params(z, context)
        return z * torch.exp(-s), -s.sum(-1).expand(z.shape[0])


class FlowSequence(nn.Module):
    """f = f_K ∘ … ∘ f_1 on z (B, D); log_det (B,) sums the steps' log-determinants. No steps: the identity.

    `inverse` exists when every step has one (Householder, NICE).
    """

    def __init__(self, steps, kind, dim, context_dim=None):
        super().__init__()
        self.steps = nn.ModuleList(steps)
        self.kind, self.dim, self.length = kind, dim, len(steps)
        self.context_dim, self.amortized = context_dim, context_dim is not None and len(steps) > 0

    def forward(self, z, context=None):
        log_det = z.new_zeros(z.shape[0])
        for step in self.steps:
            z, step_log_det = step(z, context)
            log_det = log_det + step_log_det
        return z, log_det

    def inverse(self, z, context=None):
        log_det = z.new_zeros(z.shape[0])
        for step in reversed(self.steps):
            z, step_log_det = step.inverse(z, context)
            log_det = log_det + step_log_det
        return z, log_det


FLOWS = {'planar': PlanarFlow, 'radial': RadialFlow, 'householder': HouseholderFlow, 'nice': NiceFlow}
FLOW_KINDS = ('none',) + tuple(FLOWS)


def build_flow(kind, dim, length, context_dim=None, hidden_dim=64):
    """`length` steps of flow `kind` on z (B, dim); amortized when `context_dim` is given.

    A NICE flow of length L is L − 1 coupling layers, alternating halves, then a NiceScaling step.
    'none' or length 0 gives the identity (log_det 0, `amortized` False: it needs no context).
    """
    if kind not in FLOW_KINDS:
        raise ValueError(f'unknown flow kind {kind!r}: choose from {", ".join(FLOW_KINDS)}')
    if length < 0:
        raise ValueError(f'flow length must be >= 0, got length={length}')
    if dim < 1:
        raise ValueError(f'flow dim must be >= 1, got dim={dim}')
    if kind == 'nice' and dim < 2:
        raise ValueError(f'a NICE flow needs dim >= 2 to split z in two halves, got dim={dim}')
    if context_dim is not None and context_dim < 1:
        raise ValueError(f'context_dim must be None (static) or >= 1, got context_dim={context_dim}')
    if kind == 'none' or length == 0:
        return FlowSequence([], 'none', dim, context_dim)
    if kind == 'nice':
        steps = [NiceFlow(dim, context_dim, hidden_dim, parity=k % 2) for k in range(length - 1)]
        steps.append(NiceScaling(dim, context_dim))
    else:
        steps = [FLOWS[kind](dim, context_dim) for _ in range(length)]
    return FlowSequence(steps, kind, dim, context_dim)
