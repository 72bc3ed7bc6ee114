"""VAE with a static normalizing flow on the latent code; MLP encoder and decoder.

The flow's parameters are free parameters, the same for every input (dynamic_flow_vae.py makes
them a function of the input). Example, the original repo's experiment:

    python static_flow_vae.py --latent_dim 2 --flow planar --length 16
"""
import math

import torch.nn as nn

import config
import datasets
import train
import utils
from flows import build_flow
from vae import FlowVAE


class GatedLinear(nn.Module):
    """h = (W1 x + b1) * sigmoid(W2 x + b2), one matmul for both halves (Dauphin et al. 2017)."""

    def __init__(self, in_dim, out_dim):
        super().__init__()
        self.linear = nn.Linear(in_dim, 2 * out_dim)

    def forward(self, x):
        value, gate = self.linear(x).chunk(2, dim=-1)
        return value * gate.sigmoid()


def mlp(in_dim, hidden_dim, layers, gate):
    """`layers` hidden layers of `hidden_dim` units, ReLU or gated."""
    blocks = []
    for i in range(layers):
        width = in_dim if i == 0 else hidden_dim
        blocks += [GatedLinear(width, hidden_dim)] if gate else [nn.Linear(width, hidden_dim), nn.ReLU()]
    return nn.Sequential(*blocks)


class MLPFlowVAE(FlowVAE):
    """x (B, C, H, W) -> MLP -> (mean, log_var) of q0 and, when amortized, the flow's context h (B, hidden_dim)."""

    def __init__(self, image_shape, likelihood, latent_dim, hidden_dim, layers, gate, flow, length,
                 amortized=False, **flow_options):
        super().__init__(build_flow(flow, latent_dim, length, hidden_dim if amortized else None, **flow_options),
                         likelihood, image_shape)
        pixels = math.prod(image_shape)
        self.encoder = mlp(pixels, hidden_dim, layers, gate)
        self.to_q0 = nn.Linear(hidden_dim, 2 * latent_dim)
        self.decoder = nn.Sequential(mlp(latent_dim, hidden_dim, layers, gate), nn.Linear(hidden_dim, pixels))
        self.amortized = amortized

    def encode(self, x):
        h = self.encoder(x.flatten(1))                                   # (B, hidden_dim)
        mean, log_var = self.to_q0(h).chunk(2, dim=-1)                   # (B, D) each
        return mean, log_var, h if self.amortized else None

    def decode(self, z):
        return self.decoder(z).view(-1, *self.image_shape)              # (B, C, H, W)


def add_mlp_flags(parser):
    """The MLP's flags, in the model section of base_parser's --help."""
    model = parser.groups['model']
    model.add_argument('--layer', type=int, default=2, help='hidden layers in the encoder and the decoder')
    model.add_argument('--hidden_dim', type=int, default=400, help='units per hidden layer')
    model.add_argument('--gate', type=int, default=0, choices=(0, 1), help='1: gated linear units instead of ReLU')
    return parser


def mlp_arch(args):
    return f'ly{args.layer}_hd{args.hidden_dim}_lt{args.latent_dim}_gt{args.gate}'


def check_mlp_args(args, image_shape):
    if args.layer < 1 or args.hidden_dim < 1:
        raise utils.UsageError(f'--layer {args.layer} and --hidden_dim {args.hidden_dim} must both be >= 1')


def build_model(args, image_shape):
    """The model a run's flags describe (also used to rebuild it from a checkpoint's config)."""
    return MLPFlowVAE(image_shape, datasets.likelihood(args.dataset), args.latent_dim, args.hidden_dim,
                      args.layer, args.gate, args.flow, args.length, amortized=args.amortized,
                      **config.flow_options(args))


if __name__ == '__main__':
    parser = add_mlp_flags(config.base_parser(__doc__, latent_dim=20, max_iter=10000))
    parser.set_defaults(amortized=False)
    train.main(parser, 'static_flow_vae.py', build_model, mlp_arch, check_mlp_args)
