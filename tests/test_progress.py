"""The progress bars of the long evaluations (IW, the exact quadrature and the posterior figure, gap_spread.py,
elbo_terms.py): drawn on a terminal, absent when stderr is not one (a log file, a pipe, pytest's capture)."""
import io
import os
import sys

import pytest
import torch

import data_utils
import evaluate
import posterior2d
from test_posterior2d import tiny_mnist_model

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'experiments'))
import elbo_terms  # noqa: E402
import gap_spread  # noqa: E402


class Terminal(io.StringIO):
    def isatty(self):
        return True


def images(n=6):
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


PRE = data_utils.Preprocessor('mnist')


def exact(model):   # two bars: the first pass and the tiles
    return posterior2d.exact_log_px(model, PRE, images(), n=40, limit=4.0)


JOBS = {   # the bar's description: the evaluation, on a tiny 2-D model and 6 images
    'IW, K=2': lambda model: evaluate.evaluate(model, PRE, images(), iw_samples=2, iw_batch=2),
    'exact log p(x), first pass': exact,
    'exact log p(x)': exact,
    'posterior figure': lambda model: posterior2d.posterior_panels(model, PRE(images(2), train=False)[0], n=40,
                                                                   window=20, samples=100, elbo_samples=10),
    'log p(x, z) on the grid': lambda model: posterior2d.log_joint(model, PRE(images(2), train=False)[0],
                                                                   posterior2d.grid_points(40, 4.0)[0]),
    'ELBO, 2 draws': lambda model: gap_spread.elbo_per_image(model, PRE(images(), train=False)[0], 2, batch_size=2),
    'ELBO terms': lambda model: elbo_terms.elbo_terms(model, PRE, images(), batch_size=2)}


@pytest.mark.parametrize('desc', list(JOBS))
def test_a_bar_on_a_terminal_and_none_elsewhere(desc, capsys, monkeypatch):
    model = tiny_mnist_model(2, 'planar')
    JOBS[desc](model)
    assert capsys.readouterr().err == ''   # stderr captured: not a terminal
    terminal = Terminal()
    monkeypatch.setattr(sys, 'stderr', terminal)
    JOBS[desc](model)
    assert f'{desc}: ' in terminal.getvalue()   # tqdm writes 'desc: 50%|...'
