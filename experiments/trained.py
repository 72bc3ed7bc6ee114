"""A trained MLP model from an MNIST checkpoint of static_flow_vae.py or dynamic_flow_vae.py, for the experiments
that analyse one (planar_stability.py --saturation, elbo_terms.py, gap_spread.py, gap_split.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import config  # noqa: E402
import datasets  # noqa: E402
import static_flow_vae  # noqa: E402
from utils import UsageError, load_checkpoint  # noqa: E402

MLP_SCRIPTS = ('static_flow_vae.py', 'dynamic_flow_vae.py')


def trained_model(checkpoint):
    """(model in eval mode, its flags, the checkpoint) of an MNIST MLP checkpoint; a file that is missing,
    unreadable, of the conv script or of another dataset ends the program with one `error:` line."""
    try:
        state = load_checkpoint(checkpoint, script=None, source='checkpoint')
        if state['script'] not in MLP_SCRIPTS:
            raise UsageError(f'{checkpoint} was made by {state["script"]}; this reads checkpoints of '
                             f'{" or ".join(MLP_SCRIPTS)}')
        parser = static_flow_vae.add_mlp_flags(config.base_parser('', latent_dim=2, max_iter=1))
        parser.set_defaults(amortized=False)   # as the scripts set it; the checkpoint's value replaces it
        args = parser.parse_args([])
        config.merge_config(args, state, (), checkpoint)
        if args.dataset != 'mnist':
            raise UsageError(f'{checkpoint} is a --dataset {args.dataset} checkpoint; this reads MNIST ones')
    except UsageError as e:
        raise SystemExit(f'error: {e}') from None
    model = static_flow_vae.build_model(args, datasets.image_shape('mnist'))
    model.load_state_dict(state['model'])
    return model.eval(), args, state


def flow_label(model, args):
    """'none', or the flow's mode and kind as the tables name it: 'amortized planar', 'static nice', ..."""
    return f'{"amortized" if args.amortized else "static"} {args.flow}' if model.has_flow else 'none'


def trained_2d_model(checkpoint):
    """trained_model of a checkpoint with a 2-D latent space, whose exact log p(x) quadrature gives; any other
    ends the program with one `error:` line."""
    model, args, state = trained_model(checkpoint)
    if args.latent_dim != 2:
        raise SystemExit(f'error: {checkpoint} has --latent_dim {args.latent_dim}; exact log p(x) by quadrature '
                         'needs a 2-D checkpoint (--latent_dim 2)')
    return model, args, state
