"""Tests for data_utils: the preprocessing numerics (binarization, dequantization, flips, the logit and its
log-det) and Batches."""
import io
import math

import pytest
import torch
import torch.nn.functional as F

import data_utils as du
from conftest import assert_finite


# ---------------------------------------------------------------------------------------------------- preprocessing

@pytest.mark.parametrize('batch', [1, 3])
@pytest.mark.parametrize('shape', [(1, 2, 2), (3, 2, 3), (1, 4, 4)])
@pytest.mark.parametrize('alpha', [0.05, 1e-6, 1e-9])
def test_logit_log_det_matches_autograd(shape, alpha, batch):
    """The Jacobian of the whole batch is block-diagonal (no example depends on another), and each example's
    log-det is that of its own block."""
    y = torch.rand(batch, *shape, dtype=torch.float64)
    s, log_det = du.logit_transform(y, alpha)
    assert_finite(log_det, (batch,))
    jac = torch.autograd.functional.jacobian(lambda v: du.logit_transform(v.view(y.shape), alpha)[0].flatten(),
                                             y.flatten())
    d = y[0].numel()
    blocks = jac.view(batch, d, batch, d)
    for i in range(batch):
        for j in range(batch):
            if i != j:
                assert (blocks[i, :, j] == 0).all()
        _, logabsdet = torch.linalg.slogdet(blocks[i, :, i])
        torch.testing.assert_close(log_det[i], logabsdet)


def test_logit_inverse_and_extremes():
    x = torch.tensor([0, 1, 128, 254, 255], dtype=torch.uint8).repeat(4, 3, 2, 1)  # (4, 3, 2, 5)
    y = du.dequantize(x)
    s, log_det = du.logit_transform(y)
    assert_finite(s, x.shape)
    assert_finite(log_det, (4,))
    torch.testing.assert_close(du.logit_inverse(s), y, atol=1e-6, rtol=0)
    for edge in (torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)):  # the extreme values dequantize can reach
        s, log_det = du.logit_transform(edge)
        assert_finite(s, edge.shape)
        assert_finite(log_det, (2,))


def test_dequantize_interval(monkeypatch):
    x = torch.arange(256, dtype=torch.uint8).repeat(64, 1).view(64, 1, 16, 16)
    y = du.dequantize(x)
    assert y.dtype == torch.float32
    k = x.double()
    assert (y.double() >= k / 256).all() and (y.double() < (k + 1) / 256).all()
    assert y.double().mul(256).sub(k).std() > 0.2  # the noise spans the interval, roughly U[0, 1)
    # the extreme noise values: y = k/256 exactly, and the largest y stays below (k + 1) / 256
    monkeypatch.setattr(du, 'random_bits', lambda shape, nbits, device: torch.zeros(shape, dtype=torch.int32))
    assert torch.equal(du.dequantize(x).double(), k / 256)
    monkeypatch.setattr(du, 'random_bits', lambda shape, nbits, device: torch.full(shape, 2 ** 16 - 1))
    assert (du.dequantize(x).double() < (k + 1) / 256).all()


@pytest.mark.parametrize('nbits', [16, 32])
def test_random_bits_uniform_and_seeded(nbits):
    torch.manual_seed(1)
    v = du.random_bits((1000, 7), nbits, 'cpu')
    assert v.shape == (1000, 7) and v.min() >= 0 and v.max() < 2 ** nbits
    bit_means = torch.stack([(v >> b) & 1 for b in range(nbits)]).flatten(1).double().mean(1)
    assert ((bit_means - 0.5).abs() < 0.03).all()  # every bit fair
    torch.manual_seed(1)
    assert torch.equal(du.random_bits((1000, 7), nbits, 'cpu'), v)  # the global generator drives it


def test_dynamic_binarization_mean():
    torch.manual_seed(0)
    x = torch.tensor([0, 51, 128, 255], dtype=torch.uint8).view(1, 1, 1, 4).expand(4000, 1, 1, 4)
    pre = du.Preprocessor('mnist')
    b, log_det = pre(x)
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(b.mean(0).flatten(), x[0].flatten().float() / 255, atol=0.03, rtol=0)
    assert (log_det == 0).all() and log_det.shape == (4000,)
    assert not torch.equal(pre(x)[0], b)  # a fresh draw each call


@pytest.mark.parametrize('binarize', ['static', 'none'])
def test_static_and_none_are_scaled_pixels(binarize):
    x = du.static_binarize(torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8), seed=3)
    out, log_det = du.Preprocessor('mnist', binarize=binarize)(x, train=True)
    torch.testing.assert_close(out, x.float() / 255)
    assert (log_det == 0).all()


def test_static_binarize_deterministic():
    x = torch.randint(0, 256, (200, 1, 28, 28), dtype=torch.uint8)
    a, b = du.static_binarize(x, seed=1), du.static_binarize(x, seed=1)
    assert a.dtype == torch.uint8 and torch.equal(a, b)
    assert set(a.unique().tolist()) <= {0, 255}
    assert not torch.equal(a, du.static_binarize(x, seed=2))
    assert abs(a.float().mean() - x.float().mean()) < 2  # E[binarized] = x


def test_flip():
    x = torch.arange(2 * 3 * 2 * 4).view(2, 3, 2, 4).float()
    assert torch.equal(du.random_hflip(x, p=1.0), torch.flip(x, dims=[3]))
    assert torch.equal(du.random_hflip(x, p=0.0), x)
    x = torch.randn(500, 1, 2, 3)
    out = du.random_hflip(x, p=0.5)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert (flipped | kept).all() and 150 < flipped.sum() < 350


def test_preprocessor_8bit():
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    pre = du.Preprocessor('svhn')
    assert not pre.flip and du.Preprocessor('cifar10').flip and not du.Preprocessor('cifar10', flip=False).flip
    s, log_det = pre(x)
    assert_finite(s, x.shape)
    assert_finite(log_det, (6,))
    # log|ds/dy| = sum log(1 - 2 alpha) - log y' - log(1 - y') with y' = sigmoid(s), from s in float64
    s64 = s.double().flatten(1)
    expected = (math.log(1 - 2 * pre.alpha) - F.logsigmoid(s64) - F.logsigmoid(-s64)).sum(1)
    torch.testing.assert_close(log_det.double(), expected, rtol=1e-5, atol=0)
    img = pre.to_image(s)
    assert img.min() >= 0 and img.max() <= 1
    assert (img * 256 - x.float()).abs().max() < 1.0 + 1e-3  # back to the dequantized pixel


def test_preprocessor_flips_only_in_training():
    x = torch.randint(0, 256, (64, 3, 4, 4), dtype=torch.uint8)
    pre = du.Preprocessor('cifar10')
    torch.manual_seed(0)
    s_eval, _ = pre(x, train=False)
    torch.manual_seed(0)
    s_train, _ = pre(x, train=True)
    floor_eval = (pre.to_image(s_eval) * 256).floor()
    floor_train = (pre.to_image(s_train) * 256).floor()
    assert torch.allclose(floor_eval, x.float(), atol=1)  # identity up to rounding in the inverse
    assert not torch.allclose(floor_train, x.float(), atol=1)  # some images flipped


# ---------------------------------------------------------------------------------------------------- Batches

@pytest.mark.parametrize('n,bs', [(12, 3), (10, 3)])
def test_batches_cover_each_index_once_per_epoch(n, bs):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    it = du.Batches(images, torch.arange(n), bs, 'cpu', seed=0)
    assert len(it) == n // bs
    orders = []
    for _ in range(3):
        idx = torch.cat([next(it)[1] for _ in range(n // bs)])
        assert len(set(idx.tolist())) == len(idx) == (n // bs) * bs  # no repeats, last partial batch dropped
        orders.append(idx.tolist())
    assert orders[0] != orders[1]
    x, y = next(it)
    assert x.dtype == torch.uint8 and x.shape == (bs, 1, 2, 2) and torch.equal(x[:, 0, 0, 0].long(), y)


@pytest.mark.parametrize('k', [0, 2, 4, 7])  # before the first batch, mid-epoch, at an epoch end, later
def test_batches_resume_exactly(k):
    n, bs = 13, 3
    images = torch.randint(0, 256, (n, 1, 2, 2), dtype=torch.uint8)
    a = du.Batches(images, torch.arange(n), bs, 'cpu', seed=5)
    for _ in range(k):
        next(a)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = du.Batches(images, torch.arange(n), bs, 'cpu', seed=999)
    b.load_state_dict(torch.load(buf, weights_only=True))
    for _ in range(10):
        (xa, ya), (xb, yb) = next(a), next(b)
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
