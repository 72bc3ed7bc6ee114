"""experiments/grid_check.py: how far a 2-D model's exact log p(x) moves on a finer, wider grid."""
import glob
import math
import os
import sys

import pytest
import torch

from flows import build_flow
from scripts import run_script
from test_elbo_terms import FLAGS
from test_posterior2d import KinkedVAE
from test_vae import LinearVAE

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'experiments'))
import grid_check  # noqa: E402
import posterior2d  # noqa: E402
from data_utils import mnist_test_set  # noqa: E402
from trained import trained_model  # noqa: E402


def test_main_compares_the_runs_grid_with_a_finer_wider_one(data_root, tmp_path, capsys, monkeypatch):
    out = str(tmp_path)
    flags = [*FLAGS, '--latent_dim', '2', '--exact', '0', '--flow', 'nice', '--data_dir', data_root,
             '--out_dir', out]
    assert run_script('dynamic_flow_vae.py', flags) == 0
    (checkpoint,) = glob.glob(os.path.join(out, 'checkpoints', '*.pt'))
    monkeypatch.setattr(sys, 'argv', ['grid_check.py', checkpoint, '--grid', '100', '--limit', '4', '--wider',
                                      '1.25', '--dense', '4', '--data_dir', data_root])
    grid_check.main()
    cells = [c.strip() for c in capsys.readouterr().out.strip().splitlines()[-1].split('|')[1:-1]]
    assert cells[1:4] == ['amortized nice', '100² on ±4', '250² on ±5']
    exact = posterior2d.exact_log_px(*trained_model(checkpoint)[:1], mnist_test_set(data_root)[1],
                                     mnist_test_set(data_root)[0], n=100, limit=4.0)
    assert float(cells[4]) == pytest.approx(exact.mean().item(), abs=1e-3)

    model = trained_model(checkpoint)[0]
    images, pre = mnist_test_set(data_root)
    x = posterior2d.preprocess(pre, images)[0]
    coarse = posterior2d.log_px_grid(model, x, n=100, limit=4.0)
    change = posterior2d.log_px_grid(model, x, n=250, limit=5.0) - coarse
    assert float(cells[5]) == pytest.approx(change.mean().item(), abs=1e-5)
    assert float(cells[7]) == pytest.approx(change.abs().max().item(), abs=1e-5)
    assert cells[8] == f'{(change.abs() > 0.1).sum()}, {(change.abs() > 1).sum()}'
    changed = change.abs() > 1
    if changed.any():
        grid_pass = posterior2d.log_px_grid(model, x[changed], n=100, limit=4.0, adaptive=False) - coarse[changed]
        reference_pass = (posterior2d.log_px_grid(model, x[changed], n=250, limit=5.0, adaptive=False)
                          - posterior2d.log_px_grid(model, x[changed], n=250, limit=5.0))
        grid_pass, reference_pass = grid_pass > 0.01, reference_pass > 0.01
        assert cells[9] == f'{(~(grid_pass | reference_pass)).sum()}, {grid_pass.sum()}, {reference_pass.sum()}'
    else:
        assert cells[9] == '0, 0, 0'
    skipped = posterior2d.skipped_centres(model, x, n=100, limit=4.0)
    count, rise, mean_rise = cells[10].split(',')
    assert int(count) == skipped.sum().item()
    if skipped.any():
        full = posterior2d.log_px_grid(model, x[skipped], n=100, limit=4.0, adaptive=False)
        assert float(rise) == pytest.approx((full - coarse[skipped]).max().item(), abs=1e-5)
        assert float(mean_rise) == pytest.approx((full - coarse[skipped]).sum().item() / len(x), abs=1e-5)
    else:
        assert float(rise) == float(mean_rise) == 0
    dense = posterior2d.log_px_grid(model, x[:4], n=250, limit=5.0, adaptive=False) - coarse[:4]
    dense_mean, dense_max = (float(v) for v in cells[11].split(','))
    assert dense_mean == pytest.approx(dense.mean().item(), abs=1e-5)
    assert dense_max == pytest.approx(dense.abs().max().item(), abs=1e-5)


def test_check_sums_the_images_whose_q_k_centre_it_skipped(float64):
    """An encoder centred on a narrow mode that the first pass (every 8th point of the 1000² grid) steps over: the
    image is counted, and its rise is what the full sum adds, the mode's share of log p(x)."""
    model = KinkedVAE(torch.eye(2), torch.zeros(2), 'gaussian', build_flow('none', 2, 0))
    with torch.no_grad():
        model.log_scale.copy_(torch.tensor([0.15, 1.0]).log().view(1, 1, 2))
    x = torch.tensor([[2.7, 0.0], [2.7, 0.0]]).view(2, 1, 1, 2)   # narrow mode at z1 = 0.09, broad at −2.7
    model.enc_A, model.enc_c = torch.tensor([[0.0, 0.0], [0.0, 0.0]]), torch.tensor([0.09, 0.0])
    row = grid_check.check(model, x, grid=1000, limit=10.0, finer=1, wider=1, dense=0)
    full = posterior2d.log_px_grid(model, x, n=1000, limit=10.0, adaptive=False)
    adaptive = posterior2d.log_px_grid(model, x, n=1000, limit=10.0)
    assert row['skipped'] == 2 and (full - adaptive).min() > 0.5
    assert row['skipped_missed'] == pytest.approx((full - adaptive).max().item(), abs=1e-9)
    assert row['skipped_mean_rise'] == pytest.approx((full - adaptive).mean().item(), abs=1e-9)
    model.enc_c = torch.tensor([-2.7, 0.0])                            # on the broad mode: nothing to flag
    assert grid_check.check(model, x, grid=1000, limit=10.0, finer=1, wider=1, dense=0)['skipped'] == 0


def test_check_tells_the_cell_width_from_a_first_pass_that_stepped_over_a_mode(float64):
    """Why an image's log p(x) changes by more than 1 nat on the reference grid. The kinked decoder's narrow mode
    (std 0.005) at z1 = t/30: for t = 3.3 the 1000² grid's first pass steps over it and the twice finer grid's
    finds it; for t = 4.0 the grid's finds it and that of a 1.5 times wider window, its points elsewhere, steps
    over it. A linear-Gaussian posterior far narrower than the 100² grid's cells, every point in both first
    passes: the cell width alone."""
    model = KinkedVAE(torch.eye(2), torch.zeros(2), 'gaussian', build_flow('none', 2, 0))
    with torch.no_grad():
        model.log_scale.copy_(torch.tensor([0.15, 1.0]).log().view(1, 1, 2))
    causes = ('off_1', 'cell_width', 'grid_pass', 'reference_pass')
    row = grid_check.check(model, torch.tensor([3.3, 0.0]).view(1, 1, 1, 2), 1000, 10.0, finer=2, wider=1, dense=0)
    assert [row[key] for key in causes] == [1, 0, 1, 0]
    row = grid_check.check(model, torch.tensor([4.0, 0.0]).view(1, 1, 1, 2), 1000, 10.0, finer=1, wider=1.5, dense=0)
    assert [row[key] for key in causes] == [1, 0, 0, 1]
    torch.manual_seed(0)
    W, b = 30 * torch.randn(5, 2), torch.randn(5)
    model = LinearVAE(W, b, 'gaussian', build_flow('none', 2, 0))
    with torch.no_grad():
        model.log_scale.fill_(math.log(0.3))
    x = (torch.tensor([[0.3, -0.2], [1.1, 0.5], [-0.7, 0.05]]) @ W.T + b).view(3, 1, 1, 5)
    row = grid_check.check(model, x, grid=100, limit=4.0, finer=4, wider=1, dense=0)
    assert [row[key] for key in causes] == [3, 3, 0, 0]
