"""experiments/grid_check.py: how far a 2-D model's exact log p(x) moves on a finer, wider grid."""
import glob
import os
import sys

import pytest

from scripts import run_script
from test_elbo_terms import FLAGS

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
    dense = posterior2d.log_px_grid(model, x[:4], n=250, limit=5.0, adaptive=False) - coarse[:4]
    dense_mean, dense_max = (float(v) for v in cells[9].split(','))
    assert dense_mean == pytest.approx(dense.mean().item(), abs=1e-5)
    assert dense_max == pytest.approx(dense.abs().max().item(), abs=1e-5)

