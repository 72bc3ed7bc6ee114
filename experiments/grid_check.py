"""How far a 2-D MNIST model's exact log p(x) moves when its grid is refined.

    python experiments/grid_check.py CKPT [CKPT ...] [--finer 2] [--wider 1.5] [--dense N] [--grid N] [--limit L]

The final evaluation's log p(x) is a midpoint rule on a 640 x 640 grid over [-8, 8]² (--grid, --limit) whose
tiles far below each image's peak are skipped (posterior2d.log_px_grid). For the 10,000 binarized MNIST test
images it is compared with a grid of `finer` times smaller cells over a window `wider` times wider
(posterior2d.refinement_check); with --dense N, the first N images also with that finer grid summed in full, no
tile skipped. A narrow posterior (a well-trained model's) is what a coarse grid misses: the table gives the
change of the mean, the largest change of one image and how many images change by more than 0.1 and 1 nat, in
nats, reference − grid; and why those over 1 nat change, each grid summed in full for them: the cell width where
both adaptive sums are their full sums (to 0.01 nat), else a first pass (the grid's, the reference's) that
stepped over a mode. Last, the images whose q_K is centred where the evaluation grid's adaptive sum looks
no further (posterior2d.skipped_centres), and by how much their log p(x) rises when their grid is summed in
full: by nothing if q_K missed their posterior, by the mass of the mode if the first pass stepped over one (the
largest rise, and the rise of the test set's mean).
"""
import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import datasets  # noqa: E402
import posterior2d  # noqa: E402
from data_utils import mnist_test_set  # noqa: E402
from trained import flow_label, trained_2d_model  # noqa: E402


def check(model, x, grid, limit, finer, wider, dense):
    """{'finer', 'window', 'mean_log_px', 'mean_diff', 'mean_abs_diff', 'max_abs_diff', 'off_0.1', 'off_1' (how
    many images change by more than 0.1 and 1 nat; of the latter 'cell_width', 'grid_pass' and 'reference_pass':
    how many keep their adaptive sums on both grids, and how many do not on the grid and on the reference, summed
    in full), 'skipped' (how many images' q_K centres the grid's sum leaves
    out), 'skipped_missed' (the largest rise of their log p(x) summed in full) and 'skipped_mean_rise' (the rise
    of the mean over all N images)} of the refinement of x's
    log p(x) on a grid x grid over ±limit and, with dense > 0, 'dense_mean_diff' and 'dense_max_abs_diff' for its
    first `dense` images with the finer grid summed in full."""
    out = posterior2d.refinement_check(model, x, n=grid, limit=limit, finer=finer, wider=wider)
    off = (out['reference'] - out['value']).abs()
    row = {'finer': round(grid * finer * wider), 'window': limit * wider, 'mean_log_px': out['value'].mean().item(),
           'off_0.1': (off > 0.1).sum().item(), 'off_1': (off > 1).sum().item(),
           'skipped': 0, 'skipped_missed': 0.0, 'skipped_mean_rise': 0.0,
           **{key: out[key] for key in ('mean_diff', 'mean_abs_diff', 'max_abs_diff')}}
    row.update(cell_width=0, grid_pass=0, reference_pass=0)
    changed = off > 1
    if changed.any():
        grid_pass = posterior2d.log_px_grid(model, x[changed], grid, limit, adaptive=False) - out['value'][changed]
        reference_pass = (posterior2d.log_px_grid(model, x[changed], row['finer'], row['window'], adaptive=False)
                          - out['reference'][changed])
        grid_pass, reference_pass = grid_pass > 0.01, reference_pass > 0.01
        row.update(cell_width=(~(grid_pass | reference_pass)).sum().item(), grid_pass=grid_pass.sum().item(),
                   reference_pass=reference_pass.sum().item())
    skipped = posterior2d.skipped_centres(model, x, n=grid, limit=limit)
    if skipped.any():
        missed = posterior2d.log_px_grid(model, x[skipped], grid, limit, adaptive=False) - out['value'][skipped]
        row.update(skipped=skipped.sum().item(), skipped_missed=missed.max().item(),
                   skipped_mean_rise=missed.sum().item() / x.shape[0])
    if dense:
        full = posterior2d.refinement_check(model, x[:dense], n=grid, limit=limit, finer=finer, wider=wider,
                                            dense_reference=True)
        row.update({f'dense_{key}': full[key] for key in ('mean_diff', 'max_abs_diff')})
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('checkpoints', nargs='+', metavar='CKPT', help='2-D MNIST checkpoints of the MLP scripts')
    parser.add_argument('--grid', type=int, default=posterior2d.GRID,
                        help='cells per axis (default: the evaluation\'s)')
    parser.add_argument('--limit', type=float, default=posterior2d.LIMIT,
                        help='the window\'s half-width (default: the evaluation\'s)')
    parser.add_argument('--finer', type=float, default=2.0, help='cells this many times smaller (default 2)')
    parser.add_argument('--wider', type=float, default=1.5, help='a window this many times wider (default 1.5)')
    parser.add_argument('--dense', type=int, default=0, help='also the first N images, the finer grid in full')
    parser.add_argument('--data_dir', default=datasets.default_data_dir(), help='where MNIST is')
    opts = parser.parse_args()
    images, pre = mnist_test_set(opts.data_dir)
    print(f'{len(images)} MNIST test images; reference − grid in nats per image\n\n'
          '| checkpoint | flow | grid | reference grid | log p(x) | mean change | mean abs change | largest '
          '| images > 0.1, > 1 nat | > 1 nat: cell width, first pass of grid, of reference '
          '| q_K centres skipped: images, largest rise in full, rise of the mean |'
          f'{f" dense, first {opts.dense}: mean, largest |" if opts.dense else ""}\n'
          f'|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|{"---:|" if opts.dense else ""}')
    for path in opts.checkpoints:
        model, args, _ = trained_2d_model(path)
        x, log_det_pre = posterior2d.preprocess(pre, images)
        with torch.no_grad():
            r = check(model, x, opts.grid, opts.limit, opts.finer, opts.wider, opts.dense)
        dense = f' {r["dense_mean_diff"]:+.5f}, {r["dense_max_abs_diff"]:.5f} |' if opts.dense else ''
        print(f'| {path} | {flow_label(model, args)} | {opts.grid}² on ±{opts.limit:g} '
              f'| {r["finer"]}² on ±{r["window"]:g} | {r["mean_log_px"] + log_det_pre.double().mean().item():.3f} '
              f'| {r["mean_diff"]:+.5f} | {r["mean_abs_diff"]:.5f} | {r["max_abs_diff"]:.5f} '
              f'| {r["off_0.1"]}, {r["off_1"]} | {r["cell_width"]}, {r["grid_pass"]}, {r["reference_pass"]} '
              f'| {r["skipped"]}, {r["skipped_missed"]:.5f}, '
              f'{r["skipped_mean_rise"]:.5f} |{dense}')


if __name__ == '__main__':
    main()
