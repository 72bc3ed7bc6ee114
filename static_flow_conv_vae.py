"""Convolutional VAE with a static normalizing flow on the latent code.

Encoder and decoder are stacks of pre-activation residual blocks (He et al. 2016), one stack per
scale, with weight normalization (Salimans & Kingma 2016) and an L2 penalty on its scales.

    python static_flow_conv_vae.py --dataset fashion-mnist --flow planar --length 16
    torchrun --standalone --nproc_per_node 4 static_flow_conv_vae.py --dataset cifar10 --sync_bn

Under torchrun each process normalizes with the statistics of its own slice of the batch unless
--sync_bn (SyncBatchNorm, CUDA only) computes them over the global batch.
"""
import math

import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import weight_norm

import config
import datasets
import distributed
import train
import utils
from flows import build_flow
from vae import FlowVAE

WEIGHT_NORM_PENALTY = 5e-5   # L2 penalty on the weight-norm scales g
MAX_SCALE = {28: 2, 32: 3}   # downsampling stages an image side allows (28 -> 14 -> 7; 32 -> 16 -> 8 -> 4)


class ResBlock(nn.Module):
    """x + F(x), F = (BN, ReLU, conv 3x3) x 2, or the bottleneck (BN, ReLU, conv) with 1x1, 3x3, 1x1."""

    def __init__(self, channels, bottleneck):
        super().__init__()
        if bottleneck:
            mid = max(1, channels // 4)
            shapes = [(channels, mid, 1), (mid, mid, 3), (mid, channels, 1)]
        else:
            shapes = [(channels, channels, 3), (channels, channels, 3)]
        layers = []
        for c_in, c_out, k in shapes:
            layers += [nn.BatchNorm2d(c_in), nn.ReLU(), nn.Conv2d(c_in, c_out, k, padding=k // 2)]
        self.residual = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.residual(x)


class ConvFlowVAE(FlowVAE):
    """x (B, C, H, W) -> [res blocks, stride-2 conv] x scale -> (mean, log_var); the decoder mirrors it."""

    iw_rows = 1024

    def __init__(self, image_shape, likelihood, latent_dim, base_dim, scale, res_blocks, bottleneck,
                 use_weight_norm, flow, length, **flow_options):
        super().__init__(build_flow(flow, latent_dim, length, **flow_options), likelihood, image_shape)
        channels, side = image_shape[0], image_shape[1]
        top = base_dim * 2 ** scale                                          # channels at the smallest scale
        self.top_shape = (top, side // 2 ** scale, side // 2 ** scale)

        enc = [nn.Conv2d(channels, base_dim, 3, padding=1)]
        for s in range(scale):
            width = base_dim * 2 ** s
            enc += [ResBlock(width, bottleneck) for _ in range(res_blocks)]
            enc += [nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)]          # halves the side
        dec = []
        for s in reversed(range(scale)):
            width = base_dim * 2 ** s
            dec += [nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1)]  # doubles it
            dec += [ResBlock(width, bottleneck) for _ in range(res_blocks)]
        self.encoder = nn.Sequential(*enc, nn.BatchNorm2d(top), nn.ReLU(), nn.Flatten())
        self.to_q0 = nn.Linear(math.prod(self.top_shape), 2 * latent_dim)
        self.from_z = nn.Linear(latent_dim, math.prod(self.top_shape))
        self.decoder = nn.Sequential(*dec, nn.BatchNorm2d(base_dim), nn.ReLU(),
                                     nn.Conv2d(base_dim, channels, 3, padding=1))
        self.scales = []                                                    # weight-norm g's, penalized
        if use_weight_norm:
            layers = [m for part in (self.encoder, self.to_q0, self.from_z, self.decoder) for m in part.modules()]
            for module in layers:
                if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
                    weight_norm(module)
                    self.scales.append(module.parametrizations.weight.original0)

    def encode(self, x):
        mean, log_var = self.to_q0(self.encoder(x)).chunk(2, dim=-1)       # (B, D) each
        return mean, log_var, None

    def decode(self, z):
        return self.decoder(self.from_z(z).view(-1, *self.top_shape))      # (B, C, H, W)

    def penalty(self):
        """WEIGHT_NORM_PENALTY * sum of squared weight-norm scales (0 without weight norm)."""
        return WEIGHT_NORM_PENALTY * sum(g.pow(2).sum() for g in self.scales)


def check_conv_args(args, image_shape):
    side = image_shape[1]
    if args.scale is None:
        args.scale = MAX_SCALE[side]
    if not 1 <= args.scale <= MAX_SCALE[side]:
        raise utils.UsageError(f'--scale {args.scale} does not fit {side}x{side} images of {args.dataset}: '
                               f'use 1 to {MAX_SCALE[side]}')
    if args.base_dim < 1 or args.res_blocks < 0:
        raise utils.UsageError('--base_dim must be >= 1 and --res_blocks >= 0')
    if args.sync_bn and distributed.requested() and not (args.device in ('auto', 'cuda') and torch.cuda.is_available()):
        raise utils.UsageError('--sync_bn needs CUDA GPUs (torch has no SyncBatchNorm on the CPU): '
                               'use --sync_bn 0 on the CPU, where each process normalizes its own slice')


def conv_arch(args):
    return (f'bd{args.base_dim}_sc{args.scale}_rb{args.res_blocks}_bn{args.bottleneck}'
            f'_wn{args.weight_norm}_lt{args.latent_dim}')


def build_model(args, image_shape):
    model = ConvFlowVAE(image_shape, datasets.likelihood(args.dataset), args.latent_dim, args.base_dim, args.scale,
                        args.res_blocks, args.bottleneck, args.weight_norm, args.flow, args.length,
                        **config.flow_options(args))
    if getattr(args, 'sync_bn', 0):   # the same parameters and state_dict keys: checkpoints load either way
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


if __name__ == '__main__':
    parser = config.base_parser(__doc__, latent_dim=32, max_iter=20000)
    model = parser.groups['model']
    model.add_argument('--base_dim', type=int, default=32, help='channels at full resolution (doubled per scale)')
    model.add_argument('--scale', type=int, default=None,
                        help='downsampling stages: at most (and by default) 2 for 28x28 images, 3 for 32x32')
    model.add_argument('--res_blocks', type=int, default=1, help='residual blocks per scale')
    model.add_argument('--bottleneck', type=int, default=0, choices=(0, 1), help='1: 1x1-3x3-1x1 blocks')
    model.add_argument('--weight_norm', type=int, default=1, choices=(0, 1), help='weight-normalize every layer')
    model.add_argument('--sync_bn', type=int, nargs='?', const=1, default=0, choices=(0, 1),
                        help='1 (or the bare flag): under torchrun, batch-norm statistics over the global batch '
                             '(SyncBatchNorm, CUDA only); no effect in a single process')
    train.main(parser, 'static_flow_conv_vae.py', build_model, conv_arch, check_conv_args)
