"""The 2-D final evaluation's cost: exact log p(x) by quadrature beside the IW estimate, in one run.

    python benchmarks/bench_eval.py [--checkpoint CKPT] [--iw_samples 1000] [--repeats 3] [--threads 2]
    python benchmarks/bench_eval.py --model conv --base_dim 8 --images 1000 --iw_samples 0 --threads 1

On the 10,000 binarized MNIST test images (the first --images of them), as train.finish evaluates them:
posterior2d.exact_log_px (the default 640 x 640 grid over [-8, 8]², adaptive) and evaluate.evaluate with K
importance samples (--iw_samples 0: not timed), alternated `--repeats` times; min / median / max seconds of each.
The model is the static 2-D VAE of the original defaults, the MLP of static_flow_vae.py or with --model conv the
network of static_flow_conv_vae.py (--base_dim channels, 2 scales), from --checkpoint if given (its weights
decide how many grid tiles the adaptive quadrature sums in full), else freshly initialized. The log p(x) values
are printed too.
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import datasets  # noqa: E402
import posterior2d  # noqa: E402
import static_flow_conv_vae  # noqa: E402
import static_flow_vae  # noqa: E402
from bench_train import config  # noqa: E402
from data_utils import mnist_test_set  # noqa: E402
from evaluate import evaluate  # noqa: E402
from utils import load_checkpoint  # noqa: E402

MODELS = {'mlp': ('static_flow_vae.py', static_flow_vae.build_model),
          'conv': ('static_flow_conv_vae.py', static_flow_conv_vae.build_model)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--model', default='mlp', choices=tuple(MODELS), help='the network and its script')
    parser.add_argument('--base_dim', type=int, default=8, help='--model conv: channels at full resolution')
    parser.add_argument('--checkpoint', help="a --latent_dim 2 checkpoint of --model's script (default: untrained)")
    parser.add_argument('--images', type=int, default=10000, help='the first N test images')
    parser.add_argument('--iw_samples', type=int, default=1000)
    parser.add_argument('--repeats', type=int, default=3)
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--data_dir', default=datasets.default_data_dir())
    opts = parser.parse_args()
    torch.set_num_threads(opts.threads)

    script, build_model = MODELS[opts.model]
    args = config(latent_dim=2, base_dim=opts.base_dim)
    if opts.checkpoint:
        state = load_checkpoint(opts.checkpoint, script, source='--checkpoint')
        args = config(**{k: v for k, v in state['config'].items() if k in vars(args)})
    torch.manual_seed(0)
    model = build_model(args, datasets.image_shape('mnist'))
    if opts.checkpoint:
        model.load_state_dict(state['model'])
    model.eval()
    images, pre = mnist_test_set(opts.data_dir, opts.images)

    jobs = {'exact (grid)': lambda: posterior2d.exact_log_px(model, pre, images).mean().item()}
    if opts.iw_samples:
        jobs[f'IW, K = {opts.iw_samples}'] = \
            lambda: evaluate(model, pre, images, iw_samples=opts.iw_samples)['test_log_px_iw']
    seconds, values = {name: [] for name in jobs}, {}
    for _ in range(opts.repeats):
        for name, job in jobs.items():   # alternated, so both see the same machine load
            start = time.perf_counter()
            values[name] = job()
            seconds[name].append(time.perf_counter() - start)

    print(f'{images.shape[0]} MNIST test images, {opts.threads} threads, {opts.repeats} repeats, {script}, '
          f'{"checkpoint " + opts.checkpoint if opts.checkpoint else "untrained model"}')
    print('| evaluation | log p(x) | min s | median s | max s |\n|---|---:|---:|---:|---:|')
    for name, times in seconds.items():
        print(f'| {name} | {values[name]:.3f} | {min(times):.1f} | {statistics.median(times):.1f} | {max(times):.1f} |')


if __name__ == '__main__':
    main()
