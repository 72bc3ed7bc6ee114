"""Every flow's log-determinant against autograd, every inverse by a round trip, and the guards."""
import copy
import math

import pytest
import torch
from torch.autograd.functional import jacobian

from conftest import assert_finite, perturb
from devices import CUDA_ONLY
from flows import (FLOWS, FlowSequence, HouseholderFlow, HouseholderSylvesterFlow, IAFStep, NiceFlow, NiceScaling,
                   OrthogonalSylvesterFlow, PlanarFlow, RadialFlow, SylvesterFlow, TriangularSylvesterFlow,
                   build_flow, orthonormal_factor, relu)

KINDS = list(FLOWS)
NEW_KINDS = ['sylvester-orthogonal', 'sylvester-householder', 'sylvester-triangular', 'iaf']
SYLVESTER_KINDS = NEW_KINDS[:3]
CONTEXT_DIM = 6
# IAF's MADE sums >= 64 hidden units into each s: noise of 0.5 on every weight drives σ = sigmoid(s) to
# ~1e-25, where its triangular Jacobian is so ill-conditioned that autograd's LU-based log-det is wrong
PERTURB_SCALE = {'iaf': 0.2}

pytestmark = pytest.mark.usefixtures('float64')


def inputs(dim, amortized, batch=4, scale=1.0, seed=1):
    gen = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(batch, dim, generator=gen)
    context = torch.randn(batch, CONTEXT_DIM, generator=gen) if amortized else None
    return z, context


def autograd_log_det(flow, z, context):
    """log|det J| of each example's Jacobian, by autograd (float64)."""
    out = []
    for i in range(z.shape[0]):
        ctx = None if context is None else context[i:i + 1]
        J = jacobian(lambda x: flow(x[None], ctx)[0][0], z[i])
        out.append(torch.linalg.slogdet(J).logabsdet)
    return torch.stack(out)


def dims_for(kind):
    return [2, 3, 5, 40] if kind == 'nice' else [1, 2, 5, 40] if kind in NEW_KINDS else [2, 5, 40]


def scales_for(kind):
    """Perturbation scales tested: the new kinds also at their initialization (0)."""
    scale = PERTURB_SCALE.get(kind, 0.5)
    return [0.0, scale] if kind in NEW_KINDS else [scale]


CASES = [(kind, dim, amortized, scale) for kind in KINDS for dim in dims_for(kind) for amortized in (False, True)
         for scale in scales_for(kind)]


@pytest.mark.parametrize('kind,dim,amortized,scale', CASES)
def test_log_det_matches_autograd(kind, dim, amortized, scale):
    flow = perturb(build_flow(kind, dim, 3, CONTEXT_DIM if amortized else None), scale=scale)
    z, context = inputs(dim, amortized)
    z_k, log_det = flow(z, context)
    assert_finite(z_k, (4, dim))
    assert_finite(log_det, (4,))
    torch.testing.assert_close(log_det, autograd_log_det(flow, z, context), atol=1e-6, rtol=0)
    if kind in ('planar', 'radial'):
        assert log_det.abs().max() > 1e-3  # a non-trivial map was tested


@pytest.mark.parametrize('device', CUDA_ONLY)
@pytest.mark.parametrize('amortized', [False, True])
@pytest.mark.parametrize('kind', KINDS)
def test_log_det_matches_autograd_on_cuda(kind, amortized, device):
    """test_log_det_matches_autograd at dimension 5 with the flow and its inputs on the GPU, in float64."""
    flow = perturb(build_flow(kind, 5, 3, CONTEXT_DIM if amortized else None), scale=PERTURB_SCALE.get(kind, 0.5))
    flow = flow.to(device)
    z, context = (None if t is None else t.to(device) for t in inputs(5, amortized))
    z_k, log_det = flow(z, context)
    assert z_k.device.type == log_det.device.type == 'cuda' and log_det.dtype == torch.float64
    assert_finite(log_det, (4,))
    torch.testing.assert_close(log_det, autograd_log_det(flow, z, context), atol=1e-6, rtol=0)


STEPS = [PlanarFlow, RadialFlow, HouseholderFlow, NiceFlow, NiceScaling, OrthogonalSylvesterFlow,
         HouseholderSylvesterFlow, TriangularSylvesterFlow]


@pytest.mark.parametrize('step_class', STEPS)
@pytest.mark.parametrize('amortized', [False, True])
def test_each_step_log_det_matches_autograd(step_class, amortized):
    step = perturb(step_class(5, CONTEXT_DIM if amortized else None))
    z, context = inputs(5, amortized)
    z_k, log_det = step(z, context)
    assert_finite(log_det, (4,))
    torch.testing.assert_close(log_det, autograd_log_det(step, z, context), atol=1e-6, rtol=0)


@pytest.mark.parametrize('kind,dim', [(kind, dim) for kind in ('householder', 'nice', 'iaf') for dim in (2, 3, 40)]
                         + [('iaf', 1)])
@pytest.mark.parametrize('amortized', [False, True])
def test_inverse_round_trips(kind, dim, amortized):
    # IAF: a random MADE's inverse of a N(0, I) draw grows x, hence its hidden units, hence 1/σ, without
    # bound at larger scales (to inf in float64 at scale 0.1 and D = 40); test_iaf_forward_then_inverse
    # covers larger ones
    flow = perturb(build_flow(kind, dim, 5, CONTEXT_DIM if amortized else None), scale=0.05 if kind == 'iaf' else 0.5)
    z, context = inputs(dim, amortized)
    z_k, log_det = flow(z, context)
    z_back, log_det_inv = flow.inverse(z_k, context)
    # float64; the random coupling nets shift by O(100), so allow their rounding
    torch.testing.assert_close(z_back, z, atol=1e-5, rtol=0)
    torch.testing.assert_close(log_det_inv, -log_det)
    z_inv, log_det_inv = flow.inverse(z, context)
    z_fwd, log_det_fwd = flow(z_inv, context)
    torch.testing.assert_close(z_fwd, z, atol=1e-5, rtol=0)
    torch.testing.assert_close(log_det_fwd, -log_det_inv)
    assert not torch.allclose(z_k, z)  # the flow did something


@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('amortized', [False, True])
def test_samples_share_their_examples_context(kind, amortized):
    """z (S, B, D) with a context (B, C) is the same map as z (S*B, D) with the context repeated per sample:
    sample s of example b uses example b's parameters (and inverts with them)."""
    samples, batch, dim = 3, 4, 5
    flow = perturb(build_flow(kind, dim, 3, CONTEXT_DIM if amortized else None), scale=PERTURB_SCALE.get(kind, 0.5))
    z = torch.randn(samples, batch, dim)
    context = torch.randn(batch, CONTEXT_DIM) if amortized else None
    repeated = None if context is None else context.repeat(samples, 1)
    z_k, log_det = flow(z, context)
    assert z_k.shape == z.shape and log_det.shape == (samples, batch)
    z_flat, log_det_flat = flow(z.reshape(-1, dim), repeated)
    torch.testing.assert_close(z_k.reshape(-1, dim), z_flat)
    torch.testing.assert_close(log_det.reshape(-1), log_det_flat)
    if kind in ('householder', 'nice', 'iaf'):
        z_back, log_det_inv = flow.inverse(z_k, context)
        torch.testing.assert_close(z_back, z, atol=1e-6, rtol=0)
        torch.testing.assert_close(log_det_inv, -log_det)
    if amortized:   # examples differ: a context paired with the wrong example's samples gives another map
        assert not torch.allclose(flow(z, context.roll(1, 0))[0], z_k)


@pytest.mark.parametrize('kind', ['planar', 'radial'] + SYLVESTER_KINDS)
def test_no_closed_form_inverse_says_so(kind):
    flow = build_flow(kind, 3, 2)
    with pytest.raises(NotImplementedError, match='no closed-form inverse'):
        flow.inverse(torch.randn(2, 3))


def set_params(step, theta):
    """Give a step the parameters theta (P,): its free parameters, or every context's (amortized)."""
    with torch.no_grad():
        if step.context_dim is None:
            step.theta.copy_(theta)
        else:
            step.to_theta.weight.zero_()
            step.to_theta.bias.copy_(theta)


@pytest.mark.parametrize('amortized', [False, True])
def test_planar_stays_invertible_when_wu_is_very_negative(amortized):
    dim = 4
    step = PlanarFlow(dim, CONTEXT_DIM if amortized else None)
    w = torch.tensor([1.0, 0.5, -0.3, 0.2])
    u = -50 * w / w.dot(w)                                            # w^T u = -50
    theta = torch.cat([u, w, torch.tensor([0.3])])
    set_params(step, theta)
    z, context = inputs(dim, amortized, batch=64, scale=3.0)
    _, log_det = step(z, context)
    assert torch.isfinite(log_det).all()
    dets = torch.stack([torch.linalg.det(jacobian(lambda x: step(x[None], None if context is None
                                                                 else context[i:i + 1])[0][0], z[i]))
                        for i in range(len(z))])
    assert (dets > 0).all()
    # along a line in the w direction the projection w^T f(z) is strictly increasing: injective
    t = torch.linspace(-10, 10, 2001)
    line = t[:, None] * w / w.norm()
    ctx = None if context is None else context[:1].expand(len(t), -1)
    projection = step(line, ctx)[0] @ w
    assert (projection.diff() > 0).all()


@pytest.mark.parametrize('beta_hat', [-1e3, -50.0, 50.0, 1e3])
@pytest.mark.parametrize('amortized', [False, True])
def test_radial_with_extreme_beta_is_finite_and_orientation_preserving(beta_hat, amortized):
    dim = 3
    step = perturb(RadialFlow(dim, CONTEXT_DIM if amortized else None), scale=0.2)
    with torch.no_grad():
        if amortized:
            step.to_theta.weight[-1].zero_()
            step.to_theta.bias[-1] = beta_hat
        else:
            step.theta[-1] = beta_hat
    z, context = inputs(dim, amortized, batch=16, scale=3.0)
    z_k, log_det = step(z, context)
    assert_finite(z_k, (16, dim))
    assert_finite(log_det, (16,))
    for i in range(4):
        J = jacobian(lambda x: step(x[None], None if context is None else context[i:i + 1])[0][0], z[i])
        assert torch.linalg.det(J) > 0
    torch.testing.assert_close(log_det[:4], autograd_log_det(step, z[:4], None if context is None else context[:4]),
                               atol=1e-6, rtol=0)


@pytest.mark.parametrize('beta_hat', [-1e3, -50.0])
def test_radial_log_det_float32_near_its_centre(beta_hat):
    """β = −α contracts z0's neighbourhood: 1 + βh = r/(α + r) must not round to 0 in float32."""
    dim = 3
    step = RadialFlow(dim).float()
    with torch.no_grad():
        step.theta.copy_(torch.tensor([0.0, 0.0, 0.0, 0.5, beta_hat]))   # z0 = 0: z − z0 is exact
    direction = torch.nn.functional.normalize(torch.randn(5, dim), dim=-1)
    z = (torch.logspace(-9, -1, 5)[:, None] * direction).float()       # r = 1e-9 .. 0.1
    log_det = step(z)[1]
    assert_finite(log_det, (5,))
    expected = copy.deepcopy(step).double()(z.double())[1]
    torch.testing.assert_close(log_det.double(), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('kind', KINDS)
@pytest.mark.parametrize('amortized', [False, True])
def test_gradients_finite_with_large_parameters_and_inputs(kind, amortized, dtype):
    flow = perturb(build_flow(kind, 5, 4, CONTEXT_DIM if amortized else None)).to(dtype)
    with torch.no_grad():
        for p in flow.parameters():
            p.mul_(10)
    z, context = inputs(5, amortized, scale=10.0)
    z = z.to(dtype).requires_grad_(True)
    context = None if context is None else context.to(dtype)
    z_k, log_det = flow(z, context)
    assert_finite(z_k, (4, 5))
    assert_finite(log_det, (4,))
    (log_det.sum() + z_k.sum()).backward()
    assert torch.isfinite(z.grad).all()
    for name, p in flow.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


@pytest.mark.parametrize('amortized', [False, True])
def test_householder_preserves_norms(amortized):
    flow = perturb(build_flow('householder', 7, 4, CONTEXT_DIM if amortized else None))
    z, context = inputs(7, amortized)
    z_k, log_det = flow(z, context)
    torch.testing.assert_close(z_k.norm(dim=-1), z.norm(dim=-1))
    assert (log_det == 0).all()


@pytest.mark.parametrize('dim', [2, 5])
@pytest.mark.parametrize('amortized', [False, True])
def test_nice_couplings_preserve_volume(dim, amortized):
    couplings = FlowSequence([perturb(NiceFlow(dim, CONTEXT_DIM if amortized else None, parity=k % 2), seed=k)
                              for k in range(3)], 'nice', dim)
    z, context = inputs(dim, amortized)
    torch.testing.assert_close(autograd_log_det(couplings, z, context), torch.zeros(4), atol=1e-10, rtol=0)


@pytest.mark.parametrize('compiled', [False, True], ids=['eager', 'compiled'])
@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
def test_relu_is_max_x_0_bit_for_bit_with_its_gradient_off_0(dtype, compiled):
    """NICE's and IAF's networks use flows.relu: the same numbers as F.relu, forward and backward (but at 0),
    eager and compiled (where it is written another way)."""
    x = torch.cat([torch.randn(1000, dtype=dtype) * 10.0 ** torch.randint(-30, 30, (1000,)),
                   torch.tensor([0.0, -0.0, 1e-45, -1e-45, 1e37, -1e37], dtype=dtype)])
    fn = torch.compile(relu) if compiled else relu
    assert torch.equal(fn(x), torch.nn.functional.relu(x))
    x = x[x != 0].requires_grad_()
    weights = torch.randn_like(x)
    grad, = torch.autograd.grad((fn(x) * weights).sum(), x)
    expected, = torch.autograd.grad((torch.nn.functional.relu(x) * weights).sum(), x)
    assert torch.equal(grad, expected)


@pytest.mark.parametrize('dim', [2, 3, 5])
def test_nice_updates_every_dimension(dim):
    flow = perturb(build_flow('nice', dim, 3))
    for step in flow.steps:
        if isinstance(step, NiceScaling):
            with torch.no_grad():
                step.theta.zero_()                                    # isolate the couplings
    z, _ = inputs(dim, False)
    assert ((flow(z)[0] - z).abs() > 1e-6).all(dim=0).all()


def test_none_and_length_zero_are_the_identity():
    z = torch.randn(3, 4)
    for flow in (build_flow('none', 4, 8), build_flow('planar', 4, 0), build_flow('none', 4, 8, CONTEXT_DIM)):
        z_k, log_det = flow(z, torch.randn(3, CONTEXT_DIM))
        assert torch.equal(z_k, z) and torch.equal(log_det, torch.zeros(3))
        assert flow.kind == 'none' and flow.length == 0


@pytest.mark.parametrize('kind', KINDS)
def test_composite_log_det_is_the_sum_of_its_steps(kind):
    flow = perturb(build_flow(kind, 4, 3, CONTEXT_DIM))
    z, context = inputs(4, True)
    total, step_sum = flow(z, context)[1], torch.zeros(4)
    for step in flow.steps:
        z, log_det = step(z, context)
        step_sum = step_sum + log_det
    torch.testing.assert_close(total, step_sum)


@pytest.mark.parametrize('kind', KINDS)
def test_a_context_per_step(kind):
    """A list of one context per step gives step k its own; the same context K times is the shared one, in both
    directions where there is an inverse; a list of another length is refused."""
    flow = perturb(build_flow(kind, 4, 3, CONTEXT_DIM), scale=PERTURB_SCALE.get(kind, 0.5))
    z, context = inputs(4, True)
    contexts = [torch.randn(4, CONTEXT_DIM) for _ in range(3)]
    step_by_step, step_sum = z, torch.zeros(4)
    for step, step_context in zip(flow.steps, contexts):
        step_by_step, log_det = step(step_by_step, step_context)
        step_sum = step_sum + log_det
    torch.testing.assert_close(flow(z, contexts), (step_by_step, step_sum))
    torch.testing.assert_close(flow(z, [context] * 3), flow(z, context))
    if kind in ('householder', 'nice', 'iaf'):
        torch.testing.assert_close(flow.inverse(step_by_step, contexts)[0], z, atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match='shorter'):
        flow(z, contexts[:2])


@pytest.mark.parametrize('kind', KINDS)
def test_a_step_sees_its_context_only_through_its_context_weight(kind):
    """A context moved along the kernel of context_weight (P, C) leaves each step's map unchanged; one moved by
    W⁺ δ (P <= C: W has full row rank) changes it."""
    context_dim = 80   # more than any step's P (64 for NICE's couplings and IAF)
    flow = perturb(build_flow(kind, 4, 2, context_dim), scale=PERTURB_SCALE.get(kind, 0.5))
    z, context = torch.randn(5, 4), torch.randn(5, context_dim)
    for step in flow.steps:
        weight = step.context_weight()
        assert weight.shape[1] == context_dim and torch.linalg.matrix_rank(weight) == weight.shape[0]
        inverse = torch.linalg.pinv(weight)
        kernel = torch.randn(5, context_dim) @ (torch.eye(context_dim) - inverse @ weight).T
        torch.testing.assert_close(step(z, context + kernel), step(z, context))
        moved = step(z, context + torch.randn(5, weight.shape[0]) @ inverse.T)[0]
        assert (moved - step(z, context)[0]).abs().max() > 1e-3


def test_nice_length_is_couplings_plus_scaling():
    flow = build_flow('nice', 6, 4)
    assert [type(s) for s in flow.steps] == [NiceFlow] * 3 + [NiceScaling]
    assert [s.parity for s in flow.steps[:3]] == [0, 1, 0]


def test_static_and_amortized_parameters():
    static, amortized = build_flow('planar', 3, 2), build_flow('planar', 3, 2, CONTEXT_DIM)
    assert not static.amortized and amortized.amortized
    # amortized: different contexts give different maps of the same z
    z = torch.randn(1, 3).expand(2, 3)
    z_k, _ = perturb(amortized)(z, torch.randn(2, CONTEXT_DIM))
    assert not torch.allclose(z_k[0], z_k[1])


@pytest.mark.parametrize('call,message', [
    (lambda: build_flow('glow', 2, 1), r"unknown flow kind 'glow': choose from none, planar, radial, householder, nice"),
    (lambda: build_flow('planar', 2, -1), r'length must be >= 0, got length=-1'),
    (lambda: build_flow('planar', 0, 1), r'dim must be >= 1, got dim=0'),
    (lambda: build_flow('nice', 1, 2), r'NICE flow needs dim >= 2.*got dim=1'),
    (lambda: build_flow('planar', 2, 1, 0), r'context_dim must be None \(static\) or >= 1'),
    (lambda: build_flow('sylvester-orthogonal', 3, 1, sylvester_m=4), r'needs 1 <= M <= D, got M=4, D=3'),
    (lambda: build_flow('sylvester-orthogonal', 3, 1, CONTEXT_DIM, sylvester_m=0), r'got M=0, D=3'),
    (lambda: build_flow('sylvester-householder', 3, 1, householders=0), r'>= 1 Householder reflections, got 0'),
    (lambda: build_flow('iaf', 0, 1), r'dim must be >= 1, got dim=0'),
])
def test_bad_arguments_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize('kind', KINDS)
def test_amortized_flow_checks_its_context(kind):
    flow = build_flow(kind, 4, 2, CONTEXT_DIM)
    z = torch.randn(3, 4)
    with pytest.raises(ValueError, match=r'needs a context of shape \(3, 6\), got None'):
        flow(z)
    with pytest.raises(ValueError, match=r'context must have shape \(3, 6\), got \(3, 5\)'):
        flow(z, torch.randn(3, 5))
    with pytest.raises(ValueError, match=r'context must have shape \(3, 6\), got \(2, 6\)'):
        flow(z, torch.randn(2, 6))


def test_planar_log_det_float32_where_the_map_nearly_folds():
    """wᵀu = −50: det = h² + (1 − h²) softplus(wᵀu), tiny where h = tanh(wᵀz + b) ≈ 0; float32 must keep it."""
    step = PlanarFlow(3).float()
    w = torch.tensor([1.0, 0.0, 0.0])                                  # wᵀz = z_1 exactly in float32
    with torch.no_grad():
        step.theta.copy_(torch.cat([-50 * w + torch.tensor([0.0, 0.3, 0.2]), w, torch.zeros(1)]))
    z = torch.randn(5, 3).float()
    z[:, 0] = torch.logspace(-6, 0, 5)                                 # wᵀz + b = 1e-6 .. 1
    log_det = step(z)[1]
    assert_finite(log_det, (5,))
    expected = copy.deepcopy(step).double()(z.double())[1]
    torch.testing.assert_close(log_det.double(), expected, rtol=1e-5, atol=1e-5)


def test_static_flow_ignores_a_context():
    flow = perturb(build_flow('planar', 3, 2))
    z = torch.randn(4, 3)
    assert torch.equal(flow(z, torch.randn(4, CONTEXT_DIM))[0], flow(z)[0])


@pytest.mark.parametrize('call,message', [
    (lambda: NiceFlow(1), r'NICE coupling needs dim >= 2.*got dim=1'),
    (lambda: NiceFlow(4, parity=2), r'parity must be 0 or 1, got parity=2'),
    (lambda: PlanarFlow(0), r'dim must be >= 1, got dim=0'),
    (lambda: HouseholderFlow(0, CONTEXT_DIM), r'dim must be >= 1, got dim=0'),
    (lambda: OrthogonalSylvesterFlow(2, m=3), r'needs 1 <= M <= D, got M=3, D=2'),
    (lambda: HouseholderSylvesterFlow(2, CONTEXT_DIM, householders=-1), r'got -1'),
])
def test_bad_step_arguments_raise_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.parametrize('wu', [-5.0, -1.0, 0.0, 2.0])
def test_planar_constraint_gives_the_det_of_m(wu):
    """Where w^T z + b = 0, tanh' = 1 and det = 1 + w^T û = 1 + m(w^T u) = softplus(w^T u + log(e - 1))."""
    dim = 3
    step = PlanarFlow(dim)
    w = torch.tensor([0.6, -0.8, 0.5])
    u = wu * w / w.dot(w) + torch.tensor([0.8, 0.6, 0.0])             # w^T u = wu, plus an orthogonal part
    b = torch.tensor([0.4])
    with torch.no_grad():
        step.theta.copy_(torch.cat([u, w, b]))
    z = torch.randn(5, dim)
    z = z - ((z @ w + b) / w.dot(w))[:, None] * w                     # project onto w^T z + b = 0
    _, log_det = step(z)
    expected = torch.nn.functional.softplus(torch.tensor(wu) + math.log(math.e - 1)).log()
    torch.testing.assert_close(log_det, expected.expand(5))
    if wu == 0:
        assert float(expected) == pytest.approx(0.0, abs=1e-7)      # m(0) = 0: det 1


@pytest.mark.parametrize('amortized', [False, True])
@pytest.mark.parametrize('w_norm', [1e-2, 1e-4, 1e-6])
def test_planar_u_hat_stays_bounded_as_w_vanishes(w_norm, amortized):
    """With w -> 0 (so w^T u -> 0 too) the invertibility correction of û stays O(‖u‖): the map moves z by at
    most about ‖u‖, and the gradient stays bounded. The paper's m(a) = -1 + softplus(a) gives ‖û‖ ≈ 0.31/‖w‖."""
    dim = 3
    step = PlanarFlow(dim, CONTEXT_DIM if amortized else None)
    u = torch.tensor([0.5, -0.4, 0.3])
    w = w_norm * torch.tensor([0.6, 0.8, 0.0])
    theta = torch.cat([u, w, torch.tensor([1.0])])                   # tanh(w^T z + b) ≈ tanh(1)
    set_params(step, theta)
    z, context = inputs(dim, amortized, batch=8, scale=1.0)
    z_k, _ = step(z, context)
    shift = (z_k - z).norm(dim=-1)                                    # = ‖û‖ |tanh(w^T z + b)|
    assert (shift < 1.5 * u.norm()).all(), shift


def sylvester_basis(step, z, context):
    """The Q (D, M), or (B, D, M) amortized, that a Sylvester step uses on z: its `lift` of the identity's
    columns (sylvester-householder never forms Q)."""
    q = step.params(z, context).split(step.sizes, dim=-1)[-1]
    eye = torch.eye(step.m, dtype=z.dtype)
    if q.dim() == 1:
        return step.lift(eye, step.basis(q)).mT                          # (M, D) -> (D, M)
    columns = step.lift(eye[:, None, :].expand(step.m, len(z), step.m), step.basis(q))   # (M, B, D)
    return columns.permute(1, 2, 0)


@pytest.mark.parametrize('make,columns', [
    (lambda dim, ctx: OrthogonalSylvesterFlow(dim, ctx), lambda dim: dim),
    (lambda dim, ctx: OrthogonalSylvesterFlow(dim, ctx, m=1), lambda dim: 1),
    (lambda dim, ctx: OrthogonalSylvesterFlow(dim, ctx, m=max(1, dim // 2)), lambda dim: max(1, dim // 2)),
    (lambda dim, ctx: HouseholderSylvesterFlow(dim, ctx, householders=1), lambda dim: dim),
    (lambda dim, ctx: HouseholderSylvesterFlow(dim, ctx), lambda dim: dim),
])
@pytest.mark.parametrize('dim', [1, 2, 7])
@pytest.mark.parametrize('amortized', [False, True])
def test_sylvester_q_is_orthonormal_and_log_det_matches_autograd(make, columns, dim, amortized):
    step = perturb(make(dim, CONTEXT_DIM if amortized else None))
    z, context = inputs(dim, amortized, batch=3)
    Q = sylvester_basis(step, z, context)
    m = columns(dim)
    assert Q.shape == ((3, dim, m) if amortized else (dim, m))
    torch.testing.assert_close(Q.mT @ Q, torch.eye(m).expand_as(Q.mT @ Q), atol=1e-10, rtol=0)
    if amortized and dim > 1:
        assert not torch.allclose(Q[0], Q[1])   # one Q per example
    torch.testing.assert_close(step(z, context)[1], autograd_log_det(step, z, context), atol=1e-8, rtol=0)


@pytest.mark.parametrize('reverse', [False, True])
def test_triangular_sylvester_basis_is_identity_or_reversal(reverse):
    step = perturb(TriangularSylvesterFlow(4, reverse=reverse))
    z, _ = inputs(4, False)
    assert step.project(z, None).tolist() == (z.flip(-1) if reverse else z).tolist()
    assert [s.reverse for s in build_flow('sylvester-triangular', 4, 3).steps] == [False, True, False]


def set_sylvester_diagonals(step, amortized, r_diag, r_tilde_diag):
    """Pin the raw (pre-tanh) diagonals of R and R̃ (M,) each, whatever the context."""
    tri = step.sizes[0]
    where = step.diagonal
    with torch.no_grad():
        for offset, values in ((0, r_diag), (tri, r_tilde_diag)):
            if amortized:
                step.to_theta.weight[offset + where] = 0
                step.to_theta.bias[offset + where] = values
            else:
                step.theta[offset + where] = values


@pytest.mark.parametrize('kind', SYLVESTER_KINDS)
@pytest.mark.parametrize('amortized', [False, True])
@pytest.mark.parametrize('raw', [30.0, 3.0, None])
def test_sylvester_stays_invertible_with_adversarial_diagonals(kind, amortized, raw):
    """R_ii R̃_ii = tanh(±raw) tanh(∓raw) reaches −1 (exactly, in float64, at raw = 30); det J stays > 0."""
    dim = 4
    for seed in range(3):
        step = perturb(build_flow(kind, dim, 1, CONTEXT_DIM if amortized else None).steps[0], scale=2.0, seed=seed)
        if raw is not None:
            signs = torch.tensor([1.0, -1.0, 1.0, -1.0])
            set_sylvester_diagonals(step, amortized, raw * signs, -raw * signs)
        z, context = inputs(dim, amortized, batch=8, scale=3.0, seed=seed)
        z_k, log_det = step(z, context)
        assert_finite(log_det, (8,))
        for i in range(8):
            J = jacobian(lambda x: step(x[None], None if context is None else context[i:i + 1])[0][0], z[i])
            assert torch.linalg.det(J) > 0
        torch.testing.assert_close(log_det, autograd_log_det(step, z, context), atol=1e-6, rtol=0)


def test_sylvester_log_det_is_the_papers_where_h_is_zero():
    """Where R̃ Qᵀz + b = 0, h' = 1 and log|det| = Σ log(1 + R_ii R̃_ii) (van den Berg et al. 2018)."""
    step = perturb(TriangularSylvesterFlow(3))
    with torch.no_grad():
        step.theta[-3:] = 0                                            # b = 0 (the flow has no Q parameters)
    r, r_tilde, _, _ = step.theta.split(step.sizes)
    diag = torch.diagonal(step.upper(r)) * torch.diagonal(step.upper(r_tilde))
    assert diag.min() < 0 < diag.max()
    _, log_det = step(torch.zeros(2, 3))
    torch.testing.assert_close(log_det, torch.log1p(diag).sum().expand(2))


@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('amortized', [False, True])
def test_iaf_jacobian_is_triangular_in_the_steps_order(reverse, amortized):
    dim = 5
    step = perturb(IAFStep(dim, CONTEXT_DIM if amortized else None, reverse=reverse), scale=0.2)
    z, context = inputs(dim, amortized, batch=3)
    order = torch.arange(dim).flip(0) if reverse else torch.arange(dim)
    m, s = step.made(z, step.context_shift(z, context))
    for i in range(3):
        J = jacobian(lambda x: step(x[None], None if context is None else context[i:i + 1])[0][0], z[i])
        J = J[order][:, order]                                         # rows, columns in the step's order
        assert (torch.triu(J, diagonal=1) == 0).all()
        assert (torch.tril(J, diagonal=-1).abs() > 1e-6).sum() >= dim  # and not diagonal
        torch.testing.assert_close(J.diagonal(), torch.sigmoid(s[i][order]))


def test_iaf_orders_alternate_and_one_dimension_is_constant():
    assert [s.reverse for s in build_flow('iaf', 3, 3).steps] == [False, True, False]
    step = perturb(IAFStep(1), scale=0.2)
    m, s = step.made(torch.linspace(-3, 3, 7)[:, None], None)
    assert torch.equal(m, m[:1].expand_as(m)) and torch.equal(s, s[:1].expand_as(s))


def test_iaf_starts_near_the_identity_scaled():
    """Forget-gate bias: a new step is z' = sigmoid(2) z, log|det| = D log sigmoid(2)."""
    step = IAFStep(3)
    z = torch.randn(4, 3)
    z_k, log_det = step(z)
    torch.testing.assert_close(z_k, torch.sigmoid(torch.tensor(2.0)) * z)
    torch.testing.assert_close(log_det, 3 * torch.nn.functional.logsigmoid(torch.tensor(2.0)).expand(4))


def test_orthonormal_factor_is_the_qr_factor_whose_r_has_a_positive_diagonal():
    """Q of W = QR (B, D, M) in float64: orthonormal columns, R = QᵀW upper triangular with R_ii > 0, and so the
    factor of -W is -Q (the sign fixed by W, not by LAPACK)."""
    W = torch.randn(6, 7, 4, dtype=torch.float64)
    Q = orthonormal_factor(W)
    R = Q.mT @ W
    torch.testing.assert_close(Q.mT @ Q, torch.eye(4, dtype=torch.float64).expand(6, 4, 4))
    torch.testing.assert_close(R, R.triu())
    assert (R.diagonal(dim1=-2, dim2=-1) > 0).all()
    torch.testing.assert_close(orthonormal_factor(-W), -Q)


def test_new_flows_give_their_options_to_their_steps():
    assert [s.m for s in build_flow('sylvester-orthogonal', 5, 2, sylvester_m=3).steps] == [3, 3]
    assert build_flow('sylvester-orthogonal', 5, 1).steps[0].m == 5
    assert build_flow('sylvester-householder', 5, 1, householders=3).steps[0].householders == 3
    assert build_flow('iaf', 5, 1, hidden_dim=17).steps[0].hidden.weight.shape == (17, 5)
    assert build_flow('iaf', 40, 1).steps[0].hidden.weight.shape == (160, 40)
    assert all(isinstance(s, SylvesterFlow) for kind in SYLVESTER_KINDS for s in build_flow(kind, 3, 2).steps)


@pytest.mark.parametrize('dim', [1, 5, 40])
@pytest.mark.parametrize('amortized', [False, True])
def test_iaf_forward_then_inverse(dim, amortized):
    flow = perturb(build_flow('iaf', dim, 4, CONTEXT_DIM if amortized else None), scale=PERTURB_SCALE['iaf'])
    z, context = inputs(dim, amortized)
    z_k, log_det = flow(z, context)
    z_back, log_det_inv = flow.inverse(z_k, context)
    torch.testing.assert_close(z_back, z, atol=1e-8, rtol=0)
    torch.testing.assert_close(log_det_inv, -log_det)
    assert log_det.std() > 1e-3 if dim > 1 or amortized else log_det.abs().min() > 1e-3


@pytest.mark.parametrize('dim', [2, 5])
@pytest.mark.parametrize('reverse', [False, True])
@pytest.mark.parametrize('amortized', [False, True])
def test_iaf_made_connects_exactly_the_earlier_variables(dim, reverse, amortized):
    """m_i and s_i depend on z_j for every j before i in the step's order and on no other: the union over
    parameter draws and points of the non-zero entries of d(m, s)/dz is the strictly lower triangle in that
    order, for m and for s alike, and a masked-out entry is exactly 0 in every draw."""
    order = torch.arange(dim).flip(0) if reverse else torch.arange(dim)
    earlier = torch.tril(torch.ones(dim, dim, dtype=torch.bool), diagonal=-1)   # rows, columns in the order
    reached = torch.zeros(2, dim, dim, dtype=torch.bool)
    for seed in range(4):
        step = perturb(IAFStep(dim, CONTEXT_DIM if amortized else None, reverse=reverse), scale=0.5, seed=seed)
        z, context = inputs(dim, amortized, batch=3, seed=seed)
        for i in range(3):
            shift = step.context_shift(z[i:i + 1], None if context is None else context[i:i + 1])
            J = torch.stack(jacobian(lambda x: step.made(x[None], shift), z[i]))[:, 0]   # (m or s, D, D)
            J = J[:, order][:, :, order]
            assert (J[:, ~earlier] == 0).all()
            reached |= J != 0
    assert torch.equal(reached, earlier.expand(2, dim, dim))
