"""Small random datasets written in the real on-disk formats, for tests that must not touch the network."""
import os
import pickle

import numpy as np
import scipy.io

from datasets import write_idx

IDX_FOLDERS = {'mnist': 'MNIST', 'fashion-mnist': 'FashionMNIST'}


def random_split(n, shape, seed):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8), rng.integers(0, 10, size=n, dtype=np.uint8)


def write_dataset(name, root, n_train=64, n_test=32, seed=0):
    """Write `name` under `root` in torchvision's layout; returns {'train': (x, y), 'test': (x, y)},
    images (N, C, H, W) uint8 and labels (N,) as written."""
    shape = (1, 28, 28) if name in IDX_FOLDERS else (3, 32, 32)
    splits = {'train': random_split(n_train, shape, seed), 'test': random_split(n_test, shape, seed + 1)}
    if name in IDX_FOLDERS:
        raw = os.path.join(root, IDX_FOLDERS[name], 'raw')
        os.makedirs(raw, exist_ok=True)
        for split, prefix in (('train', 'train'), ('test', 't10k')):
            x, y = splits[split]
            write_idx(os.path.join(raw, f'{prefix}-images-idx3-ubyte'), x[:, 0])
            write_idx(os.path.join(raw, f'{prefix}-labels-idx1-ubyte'), y)
    elif name == 'cifar10':
        folder = os.path.join(root, 'cifar-10-batches-py')
        os.makedirs(folder, exist_ok=True)
        x, y = splits['train']
        for i, part in enumerate(np.array_split(np.arange(n_train), 5), start=1):
            write_pickle(os.path.join(folder, f'data_batch_{i}'),
                         {'data': x[part].reshape(len(part), -1), 'labels': y[part].tolist()})
        x, y = splits['test']
        write_pickle(os.path.join(folder, 'test_batch'), {'data': x.reshape(len(x), -1), 'labels': y.tolist()})
        write_pickle(os.path.join(folder, 'batches.meta'), {'label_names': [f'class{i}' for i in range(10)]})
    elif name == 'svhn':
        os.makedirs(root, exist_ok=True)
        for split in ('train', 'test'):
            x, y = splits[split]
            # SVHN's .mat: X (32, 32, 3, N), y (N, 1) with 10 standing for the digit 0
            scipy.io.savemat(os.path.join(root, f'{split}_32x32.mat'),
                             {'X': x.transpose(2, 3, 1, 0), 'y': np.where(y == 0, 10, y)[:, None]})
    else:
        raise ValueError(name)
    return splits


def write_pickle(path, obj):
    with open(path, 'wb') as f:
        pickle.dump(obj, f, protocol=2)
