"""Normalizing flows for the VAE posterior: planar, radial, Householder, NICE, Sylvester, IAF.

Every step maps z (B, D) to (z', log_det) with log_det (B,) = log|det dz'/dz|, given an optional
`context` (B, C). A static step holds its parameters as nn.Parameters and ignores any context it is
given (the VAE passes its encoder context either way); an amortized step (`context_dim` set) computes
them per example from the context with a linear layer, its context layer, and raises ValueError without a
(B, C) context. A context layer is a network: it runs under the caller's autocast (bfloat16 with
--precision bf16, as the encoder and decoder do) and its output is cast to z's dtype; everything a step
computes from z, and so the log-det, runs in z's dtype with autocast off.
z may also be (S, B, D), S samples per example, with the context still (B, C) and log_det (S, B): an
amortized step then computes each example's parameters once for its S samples (the IW estimate does this).
`build_flow(kind, dim, length, context_dim=None, ...)` chains `length` steps.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

EPS = 1e-12    # floor on ‖w‖², ‖v‖² (a zero vector would divide by zero)
TINY = 1e-30   # floor on a determinant before its log, so log_det stays finite
SOFTPLUS_ONE = math.log(math.e - 1)   # softplus(SOFTPLUS_ONE) = 1
HOUSEHOLDERS = 8   # default reflections per Q of sylvester-householder (the most the Sylvester paper used)
IAF_GATE_BIAS = 2.0   # initial bias of IAF's s, so that σ = sigmoid(s) starts near 1 (0.88)


def full_precision(x):
    """A region with autocast off on x's device: every op runs in the dtype of its inputs."""
    return torch.autocast(x.device.type, enabled=False)


def reflect(x, v):
    """x − 2 v (vᵀx)/‖v‖² for each row of x (…, D); v (…, D) broadcasts against x. O(D) per row."""
    scaled_v = v * (2 / (v * v).sum(-1, keepdim=True).clamp_min(EPS))
    return x - (x * v).sum(-1, keepdim=True) * scaled_v


def vecmat(x, A):
    """xᵀA per example: x (…, B, n), A (n, m) or (B, n, m) -> (…, B, m); a batched A is used by all of an
    example's rows at once (one (S, n) @ (n, m) product per example, not S products of one row)."""
    return x @ A if A.dim() == 2 else torch.einsum('...bn,bnm->...bm', x, A)


def orthonormal_factor(W):
    """Q of W = QR (…, D, M), M <= D, with the signs of Q's columns chosen so that R's diagonal is positive: the
    unique such factor of a full-rank W, and a smooth function of it."""
    Q, R = torch.linalg.qr(W)
    return torch.where(R.diagonal(dim1=-2, dim2=-1).unsqueeze(-2) < 0, -Q, Q)


def relu(x):
    """F.relu, and under torch.compile max(x, 0) written (x + |x|) / 2: the same numbers bit for bit (|x| < 1e38),
    but the compiled backward then keeps x rather than a boolean mask of x > 0, and inductor's CPU code stores
    boolean masks more than 10x slower than floats (docs/speed.md). Its gradient is F.relu's but at x = 0
    exactly, where it is 1/2."""
    if torch.compiler.is_compiling():
        return (x + x.abs()) / 2
    return F.relu(x)


class ReLU(nn.Module):
    """nn.ReLU by `relu`."""

    def forward(self, x):
        return relu(x)


def check_context(context, context_dim, z):
    """Raise ValueError unless `context` fits a flow with `context_dim` (None: static, no context needed) on
    z (B, D) or (S, B, D)."""
    batch = z.shape[-2]
    if context_dim is None:
        return
    if context is None:
        raise ValueError(f'an amortized flow needs a context of shape ({batch}, {context_dim}), got None')
    if context.shape != (batch, context_dim):
        raise ValueError(f'context must have shape ({batch}, {context_dim}), got {tuple(context.shape)}')


class FlowStep(nn.Module):
    """Holds a step's parameters: P free values, or a linear map from the context (B, C) to (B, P).

    `forward` (and `inverse`) take the parameters from `params`, then apply the subclass's `transform`
    (`inverse_transform`) to z with autocast off.
    """

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

    def context_weight(self):
        """Amortized: the context layer's weight (P, C); the step sees its context only through it."""
        return self.to_theta.weight

    def params(self, z, context):
        """(P,) static or (B, P) amortized, in z's dtype (the context layer in the caller's precision)."""
        check_context(context, self.context_dim, z)
        return self.theta if self.context_dim is None else self.to_theta(context).to(z.dtype)

    def forward(self, z, context=None):
        theta = self.params(z, context)
        with full_precision(z):
            return self.transform(z, theta)

    def inverse(self, z, context=None):
        theta = self.params(z, context)
        with full_precision(z):
            return self.inverse_transform(z, theta)

    def transform(self, z, theta):
        """(z', log_det) for z (B, D) and the step's parameters theta (P,) or (B, P)."""
        raise NotImplementedError

    def inverse_transform(self, z, theta):
        raise NotImplementedError(f'{type(self).__name__} has no closed-form inverse; only forward() exists '
                                  f'(householder, nice and iaf flows can be inverted)')


class PlanarFlow(FlowStep):
    """z' = z + û tanh(wᵀz + b) on z (B, D) (Rezende & Mohamed 2015, arXiv:1505.05770, eq. 10).

    û = u + (m(wᵀu) − wᵀu) w/‖w‖² with m(a) > −1, so wᵀû > −1 and the map is invertible (appendix A.1);
    log|det| = log|1 + ûᵀψ(z)|, ψ(z) = tanh'(wᵀz + b) w (eq. 11-12). The paper's m(a) = −1 + softplus(a) has
    m(0) = log 2 − 1, so as ‖w‖ → 0 (and wᵀu → 0) the correction grows as 0.31/‖w‖ along w: measured in an
    amortized 2-D run, ‖û‖ reached 300 and the gradient norm 10^6. Here m(a) = −1 + softplus(a + log(e − 1)),
    with m(0) = 0: the correction is then O(‖u‖) however small w is.
    Parameters u, w (D,) and b, or (B, ·) each when amortized.
    """

    def __init__(self, dim, context_dim=None):
        super().__init__(dim, context_dim, 0.1 * torch.randn(2 * dim + 1))

    def constrained(self, theta):
        """û, w (D,) or (B, D), b and 1 + wᵀû > 0, () or (B,) each, from the step's parameters theta."""
        u, w, b = theta[..., :self.dim], theta[..., self.dim:2 * self.dim], theta[..., -1]
        wu = (w * u).sum(-1, keepdim=True)                                 # (1,) or (B, 1)
        ww = (w * w).sum(-1, keepdim=True)
        ww_safe = ww.clamp_min(EPS)
        m_wu = F.softplus(wu + SOFTPLUS_ONE)                               # m(wᵀu) + 1 > 0, m(0) = 0
        u_hat = u + (m_wu - 1 - wu) * w / ww_safe
        # 1 + wᵀû without cancellation: q = 1 exactly unless ‖w‖² < EPS, then 1 + wᵀû ≈ 1 + wᵀu ≈ 1
        q = ww / ww_safe
        return u_hat, w, b, (q * m_wu + (1 - q) * (1 + wu)).squeeze(-1)

    def transform(self, z, theta):
        u_hat, w, b, one_plus_wu_hat = self.constrained(theta)
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

    def transform(self, z, theta):
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

    def transform(self, z, v):
        z = reflect(z, v)
        return z, z.new_zeros(z.shape[:-1])

    inverse_transform = transform   # a reflection is its own inverse


class NiceFlow(nn.Module):
    """Additive coupling (Dinh et al. 2014, arXiv:1410.8516, eq. 5): z'_b = z_b + m(z_a), z'_a = z_a.

    z (B, D) is split into z[..., :D//2] and z[..., D//2:]; `parity` 0 keeps the first and updates the
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
            nn.Linear(n_kept + (context_dim or 0), hidden_dim), ReLU(),
            nn.Linear(hidden_dim, hidden_dim), ReLU(),
            nn.Linear(hidden_dim, dim - n_kept))
        nn.init.zeros_(self.shift[-1].weight)                              # start at the identity
        nn.init.zeros_(self.shift[-1].bias)

    def context_weight(self):
        """Amortized: the context's columns of m's first layer (hidden_dim, C); the step sees its context only
        through them, as a shift of that layer's pre-activation."""
        return self.shift[0].weight[:, -self.context_dim:]

    def _couple(self, z, context, sign):
        check_context(context, self.context_dim, z)
        first, second = z[..., :self.half], z[..., self.half:]
        kept = first if self.parity == 0 else second
        if self.context_dim is not None:
            kept = torch.cat([kept, context.to(z.dtype).expand(*kept.shape[:-1], -1)], dim=-1)
        shift = sign * self.shift(kept)
        z = torch.cat([first, second + shift] if self.parity == 0 else [first + shift, second], dim=-1)
        return z, z.new_zeros(z.shape[:-1])

    def forward(self, z, context=None):
        with full_precision(z):   # m, fed z_a, is part of the flow's arithmetic: in z's dtype
            return self._couple(z, context, 1)

    def inverse(self, z, context=None):
        with full_precision(z):
            return self._couple(z, context, -1)


class NiceScaling(FlowStep):
    """The last step of a NICE flow: z' = z ⊙ exp(s), log|det| = Σ s (Dinh et al. 2014, arXiv:1410.8516, sec. 3.3).

    s (D,) static, or Linear(context) (B, D) amortized; starts at 0.
    """

    def __init__(self, dim, context_dim=None):
        super().__init__(dim, context_dim, torch.zeros(dim))

    def transform(self, z, s):
        return z * torch.exp(s), s.sum(-1).expand(z.shape[:-1])

    def inverse_transform(self, z, s):
        return self.transform(z, -s)


class SylvesterFlow(FlowStep):
    """z' = z + Q R h(R̃ Qᵀz + b), h = tanh (van den Berg et al. 2018, arXiv:1803.05649, eq. 12–17).

    z (B, D); Q (D, M) has orthonormal columns (a subclass's `basis`), R, R̃ (M, M) upper triangular,
    b (M,); (B, ·) each when amortized. By Sylvester's determinant identity
    log|det| = Σ_i log(1 + R_ii R̃_ii h'((R̃ Qᵀz + b)_i)), O(BDM + BM²) per step.
    Invertibility needs R_ii R̃_ii ≥ −1 (‖h'‖∞ = 1): as in the paper, both diagonals go through tanh,
    so |R_ii R̃_ii| ≤ 1, and each factor is computed as (1 + R_ii R̃_ii)(1 − h²) + h², a sum of
    terms ≥ 0, so that it does not cancel where R_ii R̃_ii ≈ −1 and h ≈ 0.
    Parameters: the upper triangles of R and R̃ (M(M+1)/2 each), b, then `q_init`'s Q parameters.
    """

    def __init__(self, dim, m, context_dim, q_init):
        if not 1 <= m <= dim:
            raise ValueError(f'a Sylvester flow needs 1 <= M <= D, got M={m}, D={dim}')
        tri = m * (m + 1) // 2
        super().__init__(dim, context_dim, torch.cat([0.1 * torch.randn(2 * tri + m), q_init]))
        self.m, self.sizes = m, (tri, tri, m, q_init.numel())
        rows, cols = torch.triu_indices(m, m)                              # the packed entries' places
        self.register_buffer('diagonal', torch.nonzero(rows == cols).squeeze(-1), persistent=False)   # (M,)
        # R's M² entries, row by row, taken from [0, the packed entries, tanh of their diagonal]
        source = torch.zeros(m, m, dtype=torch.long)
        source[rows, cols] = torch.arange(1, tri + 1)
        source.diagonal().copy_(torch.arange(tri + 1, tri + m + 1))
        self.register_buffer('source', source.flatten(), persistent=False)

    def upper(self, entries):
        """(…, M(M+1)/2) -> (…, M, M) upper triangular with tanh on the diagonal, by one gather."""
        diagonal = torch.tanh(entries.index_select(-1, self.diagonal))
        padded = torch.cat([entries.new_zeros(*entries.shape[:-1], 1), entries, diagonal], dim=-1)
        return padded.index_select(-1, self.source).unflatten(-1, (self.m, self.m))

    def basis(self, q):
        """Q (D, M), or (B, D, M) amortized, from its parameters q (P_Q,) or (B, P_Q)."""
        raise NotImplementedError

    def project(self, z, Q):
        """Qᵀz: (B, D) -> (B, M)."""
        return vecmat(z, Q)

    def lift(self, y, Q):
        """Q y: (B, M) -> (B, D)."""
        return vecmat(y, Q.mT)

    def matrices(self, theta):
        """R, R̃ (M, M), b (M,) and Q from the step's parameters theta (P,); (B, ·) each when amortized."""
        r, r_tilde, b, q = theta.split(self.sizes, dim=-1)
        return self.upper(r), self.upper(r_tilde), b, self.basis(q)

    def transform(self, z, theta):
        R, R_tilde, b, Q = self.matrices(theta)
        h = torch.tanh(vecmat(self.project(z, Q), R_tilde.mT) + b)           # (B, M)
        diag = R.diagonal(dim1=-2, dim2=-1) * R_tilde.diagonal(dim1=-2, dim2=-1)   # R_ii R̃_ii in [−1, 1]
        det = (1 + diag) * (1 - h * h) + h * h                               # 1 + R_ii R̃_ii h', >= 0
        return z + self.lift(vecmat(h, R.mT), Q), torch.log(det.clamp_min(TINY)).sum(-1)


class OrthogonalSylvesterFlow(SylvesterFlow):
    """Sylvester flow with Q the orthonormal factor of a free (or amortized) D x M matrix W, M <= D.

    Q = qr(W) with the signs of its columns chosen so that R_qr has a positive diagonal: the QR
    factorization is then unique and Q a smooth function of W (full column rank), orthonormal to
    rounding error, and every Q with orthonormal columns is reached. The paper instead iterates
    Q ← Q(I + ½(I − QᵀQ)) from a scaled W, which converges only when the scaled W's singular values
    lie in (0, √3) and is orthonormal only to its stopping tolerance; QR costs the same O(DM²) per
    matrix and has neither condition. M defaults to D.
    """

    def __init__(self, dim, context_dim=None, m=None):
        m = dim if m is None else m
        super().__init__(dim, m, context_dim, torch.randn(dim * m))

    def basis(self, q):
        return orthonormal_factor(q.unflatten(-1, (self.dim, self.m)))


class HouseholderSylvesterFlow(SylvesterFlow):
    """Sylvester flow with Q = H_H ⋯ H_1 (D x D), H_k = I − 2 v_k v_kᵀ/‖v_k‖², `householders` vectors v_k.

    Q is formed by reflecting the identity, O(HD²) per matrix, when it serves many rows: static, or amortized
    with S samples per example (the IW estimate). In training, with one row per example, the amortized step
    instead applies each example's H reflections to its z, O(HBD), where forming Q would cost O(HBD²).
    """

    def __init__(self, dim, context_dim=None, householders=HOUSEHOLDERS):
        if householders < 1:
            raise ValueError(f'sylvester-householder needs >= 1 Householder reflections, got {householders}')
        super().__init__(dim, dim, context_dim, torch.randn(householders * dim))
        self.householders = householders

    def basis(self, q):
        """Static: Q (D, D). Amortized: the vectors v_1, …, v_H (B, H, D), from which `project` and `lift`
        form each example's Q (many rows per example) or reflect its z (one row)."""
        vs = q.unflatten(-1, (self.householders, self.dim))
        return self.matrix(vs) if vs.dim() == 2 else vs

    def matrix(self, vs):
        """Q = H_H ⋯ H_1: (D, D), or (B, D, D) amortized."""
        rows = torch.eye(self.dim, dtype=vs.dtype, device=vs.device)       # rows of Qᵀ = I H_1 ⋯ H_H
        for v in vs.unbind(-2):
            rows = reflect(rows, v.unsqueeze(-2))
        return rows.mT

    def project(self, z, Q):
        """Qᵀz = H_1 ⋯ H_H z."""
        if Q.dim() == 3 and z.dim() == 2:
            for v in reversed(Q.unbind(-2)):
                z = reflect(z, v)
            return z
        return vecmat(z, Q if Q.dim() == 2 else self.matrix(Q))

    def lift(self, y, Q):
        """Q y = H_H ⋯ H_1 y."""
        if Q.dim() == 3 and y.dim() == 2:
            for v in Q.unbind(-2):
                y = reflect(y, v)
            return y
        return vecmat(y, (Q if Q.dim() == 2 else self.matrix(Q)).mT)


class TriangularSylvesterFlow(SylvesterFlow):
    """Sylvester flow with Q = I (`reverse` False) or the reversal permutation (True); M = D.

    No Q parameters; Qᵀz is z or z reversed, so each step costs O(BD²) for the R products only.
    build_flow alternates `reverse` between steps.
    """

    def __init__(self, dim, context_dim=None, reverse=False):
        super().__init__(dim, dim, context_dim, torch.zeros(0))
        self.reverse = reverse

    def basis(self, q):
        return None

    def project(self, z, Q):
        return z.flip(-1) if self.reverse else z

    lift = project   # the reversal permutation is its own transpose


class MaskedLinear(nn.Linear):
    """nn.Linear whose weight (out, in) is multiplied by a fixed 0/1 mask (Germain et al. 2015)."""

    def __init__(self, mask):
        super().__init__(mask.shape[1], mask.shape[0])
        self.register_buffer('mask', mask.to(self.weight.dtype), persistent=False)

    def forward(self, x):
        return F.linear(x, self.weight * self.mask, self.bias)


class IAFStep(nn.Module):
    """z' = σ ⊙ z + (1 − σ) ⊙ m, σ = sigmoid(s) (Kingma et al. 2016, arXiv:1606.04934, eq. 10–14).

    z (B, D); (m, s) (B, D) each come from a MADE on z (Germain et al. 2015, arXiv:1502.03509) with
    one ReLU hidden layer of `hidden_dim` units (default max(4D, 64)); the context, when amortized,
    is added to that layer's pre-activation through an unmasked linear map. m_i and s_i depend on
    z_j only for j before i in the step's ordering (1..D, or D..1 with `reverse`), so the Jacobian is
    triangular and log|det| = Σ log σ. s's bias starts at IAF_GATE_BIAS and the output weights at 0,
    so a new step is z' ≈ 0.88 z. With D = 1, m and s do not depend on z.
    """

    def __init__(self, dim, context_dim=None, hidden_dim=None, reverse=False):
        super().__init__()
        if dim < 1:
            raise ValueError(f'flow dim must be >= 1, got dim={dim}')
        hidden_dim = max(4 * dim, 64) if hidden_dim is None else hidden_dim
        self.dim, self.context_dim, self.reverse = dim, context_dim, reverse
        order = torch.arange(dim, 0, -1) if reverse else torch.arange(1, dim + 1)   # each variable's place
        self.register_buffer('order', order, persistent=False)
        # hidden degrees cycle over 1..D−1 (all 0 when D = 1); a unit of degree k sees places <= k
        hidden = torch.arange(hidden_dim) % max(dim - 1, 1) + min(dim - 1, 1)
        self.hidden = MaskedLinear(hidden[:, None] >= order[None, :])
        self.out = MaskedLinear((order[:, None] > hidden[None, :]).repeat(2, 1))   # rows: m, then s
        self.context = None if context_dim is None else nn.Linear(context_dim, hidden_dim, bias=False)
        with torch.no_grad():
            self.out.weight.zero_()
            self.out.bias.zero_()
            self.out.bias[dim:] = IAF_GATE_BIAS

    def context_weight(self):
        """Amortized: the context layer's weight (hidden_dim, C); the step sees its context only through it."""
        return self.context.weight

    def context_shift(self, z, context):
        """The context layer's term of the hidden pre-activation, (B, hidden_dim) in z's dtype (the layer
        in the caller's precision); None for a static step."""
        check_context(context, self.context_dim, z)
        return None if self.context is None else self.context(context).to(z.dtype)

    def made(self, z, shift):
        """(m, s), (B, D) each, given the context's term `shift` of the hidden pre-activation (or None)."""
        pre = self.hidden(z)
        if shift is not None:
            pre = pre + shift
        return self.out(relu(pre)).chunk(2, dim=-1)

    def transform(self, z, shift):
        """(z', log_det) for z (B, D), given the context's term `shift` of the hidden pre-activation."""
        m, s = self.made(z, shift)
        return torch.sigmoid(s) * z + torch.sigmoid(-s) * m, F.logsigmoid(s).sum(-1)

    def forward(self, z, context=None):
        shift = self.context_shift(z, context)
        with full_precision(z):
            return self.transform(z, shift)

    def inverse(self, z, context=None):
        """x with forward(x) = z: D passes, pass k solving for the variable of place k, which m and s
        at that place do not depend on; the variables after it stay 0 until their pass."""
        shift = self.context_shift(z, context)
        with full_precision(z):
            x = torch.zeros_like(z)
            for place in range(1, self.dim + 1):
                m, s = self.made(x, shift)
                x = torch.where(self.order == place, (z - torch.sigmoid(-s) * m) * torch.exp(-F.logsigmoid(s)), x)
            return x, -F.logsigmoid(s).sum(-1)


class FlowSequence(nn.Module):
    """f = f_K ∘ … ∘ f_1 on z (B, D); log_det (B,) sums the steps' log-determinants. No steps: the identity.

    `context` is the (B, C) every step gets, or a list of K of them, one per step (an amortized flow's
    parameters then chosen step by step: experiments/gap_split.py optimizes them per image).
    `inverse` exists when every step has one (Householder, NICE, IAF).
    """

    def __init__(self, steps, kind, dim, context_dim=None):
        super().__init__()
        self.steps = nn.ModuleList(steps)
        self.kind, self.dim, self.length = kind, dim, len(steps)
        self.context_dim, self.amortized = context_dim, context_dim is not None and len(steps) > 0

    def step_contexts(self, context):
        """One context per step: the list given, or `context` for each."""
        return context if isinstance(context, list) else [context] * self.length

    def forward(self, z, context=None):
        log_det = z.new_zeros(z.shape[:-1])
        for step, step_context in zip(self.steps, self.step_contexts(context), strict=True):
            z, step_log_det = step(z, step_context)
            log_det = log_det + step_log_det
        return z, log_det

    def inverse(self, z, context=None):
        log_det = z.new_zeros(z.shape[:-1])
        for step, step_context in zip(reversed(self.steps), reversed(self.step_contexts(context)), strict=True):
            z, step_log_det = step.inverse(z, step_context)
            log_det = log_det + step_log_det
        return z, log_det


FLOWS = {'planar': PlanarFlow, 'radial': RadialFlow, 'householder': HouseholderFlow, 'nice': NiceFlow,
         'sylvester-orthogonal': OrthogonalSylvesterFlow, 'sylvester-householder': HouseholderSylvesterFlow,
         'sylvester-triangular': TriangularSylvesterFlow, 'iaf': IAFStep}
FLOW_KINDS = ('none',) + tuple(FLOWS)


def build_flow(kind, dim, length, context_dim=None, hidden_dim=None, sylvester_m=None, householders=HOUSEHOLDERS):
    """`length` steps of flow `kind` on z (B, dim); amortized when `context_dim` is given.

    A NICE flow of length L is L − 1 coupling layers, alternating halves, then a NiceScaling step.
    sylvester-triangular and iaf alternate the variables' order between steps (Q = I / reversal;
    MADE order 1..D / D..1). `hidden_dim`: units per hidden layer of NICE's coupling MLPs (None: 64)
    and IAF's MADE (None: max(4 dim, 64)); `sylvester_m`: M of sylvester-orthogonal (None: dim);
    `householders`: reflections per Q of sylvester-householder. Each is ignored by the other kinds.
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
        steps = [NiceFlow(dim, context_dim, hidden_dim or 64, parity=k % 2) for k in range(length - 1)]
        steps.append(NiceScaling(dim, context_dim))
    elif kind == 'sylvester-orthogonal':
        steps = [OrthogonalSylvesterFlow(dim, context_dim, sylvester_m) for _ in range(length)]
    elif kind == 'sylvester-householder':
        steps = [HouseholderSylvesterFlow(dim, context_dim, householders) for _ in range(length)]
    elif kind == 'sylvester-triangular':
        steps = [TriangularSylvesterFlow(dim, context_dim, reverse=k % 2 == 1) for k in range(length)]
    elif kind == 'iaf':
        steps = [IAFStep(dim, context_dim, hidden_dim, reverse=k % 2 == 1) for k in range(length)]
    else:
        steps = [FLOWS[kind](dim, context_dim) for _ in range(length)]
    return FlowSequence(steps, kind, dim, context_dim)
