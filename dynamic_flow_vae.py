"""VAE with amortized (dynamic) normalizing flows; MLP encoder and decoder.

The flow's parameters are computed per example from the encoder's last hidden layer, the
`context` (Rezende & Mohamed 2015, sec. 4.2); the model is static_flow_vae.py's MLP otherwise.

    python dynamic_flow_vae.py --latent_dim 2 --flow planar --length 16
"""
import config
import train
from static_flow_vae import add_mlp_flags, build_model, check_mlp_args, mlp_arch

if __name__ == '__main__':
    parser = add_mlp_flags(config.base_parser(__doc__, latent_dim=20, max_iter=10000))
    parser.set_defaults(amortized=True)
    train.main(parser, 'dynamic_flow_vae.py', build_model, mlp_arch, check_mlp_args)
