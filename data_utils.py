"""Preprocessing and batching, on whole batches on any device: binarization for MNIST (Bernoulli
likelihood), dequantize -> flip -> logit for the 8-bit datasets, each a small function with a per-example
log-det; `Preprocessor` chains them for a dataset and `Batches` draws the minibatches.

The files themselves (fetching, checking, reading a split) are datasets.py's job; `python data_utils.py
fetch NAME` still runs its command line.
"""
import math

import torch

import datasets
from datasets import check_name, is_binary

TEST_BINARIZATION_SEED = 0   # the binarized MNIST test set is drawn once, the same for every run
VAL_BINARIZATION_SEED = 1    # and so is the validation set (the last --val_size training images)


# ---------------------------------------------------------------------------------------------------- preprocessing

def static_binarize(images_uint8, seed):
    """One fixed Bernoulli(x/255) draw per pixel -> uint8 in {0, 255}; the same for a seed on any device."""
    g = torch.Generator().manual_seed(seed)
    x = images_uint8.cpu()
    u = torch.rand(x.shape, generator=g)
    return ((u < x.float() / 255).to(torch.uint8) * 255).to(images_uint8.device)


def random_bits(shape, nbits, device):
    """Uniform integers in [0, 2**nbits) (nbits 16 or 32; int32 / int64) from the device's global generator.
    One 64-bit draw is split into 64/nbits of them: the CPU generator makes ~3x as many random bits per
    second this way as with torch.rand, which is the cost that dominates preprocessing on the CPU."""
    if torch.device(device).type not in ('cpu', 'cuda'):
        return torch.randint(0, 1 << nbits, shape, device=device, dtype=torch.int64)
    n, per = math.prod(shape), 64 // nbits
    words = torch.empty((n + per - 1) // per, dtype=torch.int64, device=device).random_(-2 ** 63, None)
    parts = words.view(torch.int16 if nbits == 16 else torch.int32)[:n].view(shape)
    return parts.to(torch.int32 if nbits == 16 else torch.int64).bitwise_and_((1 << nbits) - 1)


def dynamic_binarize(x_uint8):
    """A fresh Bernoulli(x/255) draw per pixel -> float in {0, 1}: P(v·255 < x·2^32) for v uniform on 32 bits,
    i.e. p = x/255 to within 2^-32."""
    v = random_bits(x_uint8.shape, 32, x_uint8.device)  # int64 in [0, 2^32)
    return (v.mul_(255) < x_uint8.long() << 32).float()


def dequantize(x_uint8):
    """y = (x + u) / 256 with u uniform on the grid {0, 1, ..., 2^16 - 1} / 2^16: float32 in [k/256, (k+1)/256)
    for pixel value k. y = (k·2^16 + v) / 2^24 is exact in float32 (a 24-bit integer), so y never rounds up to
    (k+1)/256, unlike (k + torch.rand()) / 256; float32 keeps only 16 fractional bits of x + u for x >= 128
    anyway, so a finer u would add nothing there."""
    v = random_bits(x_uint8.shape, 16, x_uint8.device)  # int32 in [0, 2^16)
    return v.add_(x_uint8.int() << 16).float().mul_(2 ** -24)


def random_hflip(x, p=0.5):
    """Flip each image (B, C, H, W) left-right with probability p."""
    b = x.shape[0]
    flip = (torch.rand(b, device=x.device) < p).long()  # (B,)
    both = torch.cat((x, x.flip(-1)))  # (2B, C, H, W); index_select is ~3x faster than torch.where on the CPU
    return both.index_select(0, torch.arange(b, device=x.device) + b * flip)


def logit_transform(y, alpha=0.05):
    """y' = α + (1 − 2α) y, s = log y' − log(1 − y') (RealNVP, arXiv:1605.08803, sec. 4.1).
    log|ds/dy| = log(1 − 2α) − log y' − log(1 − y'), summed per example -> log_det (B,)."""
    yp = y.mul(1 - 2 * alpha).add_(alpha)
    s = torch.logit(yp)
    z = (1 - yp).mul_(yp).flatten(1)  # y'(1 − y') in [α(1 − α), 1/4], (B, D)
    d = z.shape[1]
    if d % 4 == 0 and (alpha * (1 - alpha)) ** 4 > 1e-30:
        # Σ log z as Σ log of products of 4 factors (a quarter of the logs); z^4 stays far from underflow
        z = z[:, :d // 2] * z[:, d // 2:]  # (B, D/2)
        z = z[:, :d // 4] * z[:, d // 4:]  # (B, D/4)
    log_det = d * math.log(1 - 2 * alpha) - torch.log(z).sum(1)  # (B,)
    return s, log_det


def logit_inverse(s, alpha=0.05):
    return (torch.sigmoid(s) - alpha) / (1 - 2 * alpha)


class Preprocessor:
    """uint8 batch -> (model input x (B, C, H, W), log_det (B,) of the preprocessing).
    mnist: 'dynamic' draws Bernoulli(x/255) on every call (train and eval); 'static' (data pre-binarized
    with static_binarize) and 'none' give x/255; log_det is zero. 8-bit datasets: dequantize -> flip (train
    only, if enabled; done on the uint8 input, which is equivalent) -> logit. log_det is the logit's, i.e.
    densities are w.r.t. y in [0, 1]^D: for bits/dim of the 8-bit data add D·log(256) to the negative
    log-likelihood. `binarize` is ignored for 8-bit data."""

    BINARIZE = ('dynamic', 'static', 'none')

    def __init__(self, name, binarize='dynamic', flip=None):
        check_name(name)
        if binarize not in self.BINARIZE:
            raise ValueError(f"binarize must be one of {', '.join(self.BINARIZE)}, got {binarize!r}")
        self.name = name
        self.binary = is_binary(name)
        self.binarize = binarize
        self.flip = (name == 'cifar10') if flip is None else bool(flip)
        self.alpha = 0.05

    def __call__(self, x_uint8, train=True):
        if self.binary:
            x = dynamic_binarize(x_uint8) if self.binarize == 'dynamic' else x_uint8.float() / 255
            return x, x.new_zeros(x.shape[0])
        if train and self.flip:
            # on the uint8 input, before dequantize: the same distribution (the noise is iid per pixel), 4x fewer bytes
            x_uint8 = random_hflip(x_uint8)
        return logit_transform(dequantize(x_uint8), self.alpha)

    def to_image(self, x):
        """Model-space x -> float image in [0, 1] for display."""
        if self.binary:
            return x.clamp(0, 1)
        return logit_inverse(x, self.alpha).clamp(0, 1)


# ---------------------------------------------------------------------------------------------------- batches

class Batches:
    """Endless in-memory minibatches on `device`: a new random permutation each epoch (torch.Generator on the
    CPU, seeded), the last partial batch dropped. state_dict() resumes the exact order.

    Data-parallel (world_size > 1): batch_size is the global batch. Every rank draws the same permutation and
    returns its contiguous slice `rank` (batch_size // world_size examples) of each global batch, so the
    ranks' slices of a step are together the single-process batch and every example is seen once per epoch.
    The state is the same on every rank and the same as a single process's: it resumes at any world size."""

    def __init__(self, images, labels, batch_size, device, seed, rank=0, world_size=1):
        if len(images) != len(labels):
            raise ValueError(f'{len(images)} images but {len(labels)} labels')
        if not 0 < batch_size <= len(images):
            raise ValueError(f'batch_size {batch_size} must be in 1..{len(images)} (the number of images)')
        if batch_size % world_size or not 0 <= rank < world_size:
            raise ValueError(f'batch_size {batch_size} must be a multiple of world_size {world_size}, '
                             f'rank {rank} in 0..{world_size - 1}')
        local = batch_size // world_size
        self.shard = slice(rank * local, (rank + 1) * local)  # this rank's part of each global batch
        self.images = images.to(device)  # uint8, moved once
        self.labels = labels.to(device)
        self.batch_size = batch_size
        self.device = self.images.device
        self.generator = torch.Generator().manual_seed(seed)
        self.perm = torch.empty(0, dtype=torch.int64)  # current epoch's order (CPU); empty before the first
        self.pos = 0  # index into perm of the next batch
        self.epoch = 0  # epochs started
        self._perm_dev = None

    def __len__(self):
        return len(self.images) // self.batch_size  # batches per epoch

    def __iter__(self):
        return self

    def __next__(self):
        if self.pos + self.batch_size > len(self.perm):
            self.perm = torch.randperm(len(self.images), generator=self.generator)
            self.pos = 0
            self.epoch += 1
            self._perm_dev = None
        if self._perm_dev is None:
            self._perm_dev = self.perm.to(self.device)
        idx = self._perm_dev[self.pos:self.pos + self.batch_size][self.shard]
        self.pos += self.batch_size
        # index_select, not images[idx]: ~15x faster on the CPU
        return self.images.index_select(0, idx), self.labels.index_select(0, idx)

    def state_dict(self):
        return {'generator': self.generator.get_state(), 'perm': self.perm.clone(), 'pos': self.pos,
                'epoch': self.epoch, 'batch_size': self.batch_size, 'n': len(self.images)}

    def load_state_dict(self, d):
        if (d['n'], d['batch_size']) != (len(self.images), self.batch_size):
            raise ValueError(f"state is for {d['n']} images in batches of {d['batch_size']}, "
                             f'not {len(self.images)} in batches of {self.batch_size}')
        self.generator.set_state(d['generator'])
        self.perm = d['perm'].clone().to(torch.int64).cpu()
        self.pos, self.epoch = int(d['pos']), int(d['epoch'])
        self._perm_dev = None


def mnist_test_set(data_dir=None, n=None):
    """The first n (default all) MNIST test images, the real ones under data_dir (else n random ones), binarized
    once as train.setup does, and the preprocessor the final evaluation uses."""
    if data_dir:
        images = datasets.load_split('mnist', data_dir, train=False, log=lambda *_: None)[0][:n]
    else:
        images = torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8)
    return static_binarize(images, TEST_BINARIZATION_SEED), Preprocessor('mnist')


if __name__ == '__main__':
    datasets.main()
