"""The trained models committed under results/ (results/SECTION/RUN/model.pt): each re-evaluates, on the real
MNIST test set, to the test ELBO its run's summary reports."""
import glob
import json
import os

import pytest
import torch

from scripts import ROOT, read_log, run_script

MODELS = sorted(glob.glob(os.path.join(ROOT, 'results', '*', '*', 'model.pt')))


def test_models_are_committed():
    assert MODELS, 'no results/SECTION/RUN/model.pt'


@pytest.mark.parametrize('path', MODELS, ids=lambda path: os.path.relpath(os.path.dirname(path), ROOT))
def test_model_re_evaluates_to_its_summary(path, mnist_root, tmp_path):
    with open(os.path.join(os.path.dirname(path), 'summary.json')) as f:
        summary = json.load(f)
    script = torch.load(path, weights_only=True)['script']
    assert script == summary['script']
    argv = ['--resume', path, '--eval_only', '--iw_samples', '0', '--exact', '0', '--device', 'cpu',
            '--data_dir', mnist_root, '--out_dir', str(tmp_path)]
    assert run_script(script, argv) == 0
    final = read_log(str(tmp_path))[1][-1]
    assert final['iter'] == summary.get('best_iter', summary['iter'])
    assert final['test_elbo'] == pytest.approx(summary['test_elbo'], abs=1e-3)
