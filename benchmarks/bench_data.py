"""Batches/second of our in-memory pipeline (Batches + Preprocessor) against a torch DataLoader baseline.

Run by hand: python benchmarks/bench_data.py [--data_dir D] [--device auto]
MNIST is the real training set from the data root (fetched if needed); the other datasets are synthetic
uint8 arrays of the real shape and size, written once in the real file formats to a temporary folder so
the baseline can read them with torchvision's dataset classes. The baseline is
DataLoader(dataset with transforms.ToTensor(), batch_size, shuffle=True, num_workers=2), its float batches
turned back into uint8 and put through the same Preprocessor; its worker start-up is not timed.
The floor is what no rewrite in torch ops can drop: drawing the batch's random bits (32 per pixel to
binarize, 16 to dequantize) and, for 8-bit data, one torch.logit over the batch; the ceiling is the
ratio to the baseline that a pipeline doing nothing else would reach.
"""
import argparse
import os
import pickle
import sys
import tempfile
import time

import numpy as np
import scipy.io
import torch
from torchvision import datasets as tv_datasets, transforms

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data_utils as du  # noqa: E402
import datasets  # noqa: E402

SIZES = {'mnist': (60000, 10000), 'fashion-mnist': (60000, 10000), 'svhn': (73257, 26032), 'cifar10': (50000, 10000)}


def synthetic_root(name, root, seed=0):
    """Write random uint8 images of the real shape and split sizes in the dataset's real format under root;
    returns the torchvision training set with ToTensor."""
    g = np.random.default_rng(seed)
    for train, n in zip((True, False), SIZES[name]):
        x = g.integers(0, 256, (n, *datasets.image_shape(name)), dtype=np.uint8)  # (N, C, H, W)
        y = g.integers(0, 10, n)
        if name == 'fashion-mnist':
            prefix = 'train' if train else 't10k'
            raw = os.path.join(root, 'FashionMNIST', 'raw')
            datasets.write_idx(os.path.join(raw, f'{prefix}-images-idx3-ubyte'), x[:, 0])
            datasets.write_idx(os.path.join(raw, f'{prefix}-labels-idx1-ubyte'), y)
        elif name == 'cifar10':
            folder = os.path.join(root, 'cifar-10-batches-py')
            os.makedirs(folder, exist_ok=True)
            parts = np.array_split(np.arange(n), 5) if train else [np.arange(n)]
            names = [f'data_batch_{i + 1}' for i in range(5)] if train else ['test_batch']
            for fname, part in zip(names, parts):
                with open(os.path.join(folder, fname), 'wb') as f:
                    pickle.dump({'data': x[part].reshape(len(part), -1), 'labels': y[part].tolist()}, f, protocol=2)
            with open(os.path.join(folder, 'batches.meta'), 'wb') as f:
                pickle.dump({'label_names': [str(k) for k in range(10)]}, f, protocol=2)
        else:
            os.makedirs(root, exist_ok=True)
            mat = {'X': x.transpose(2, 3, 1, 0), 'y': (y + 1).reshape(-1, 1).astype(np.uint8)}  # X (H, W, C, N)
            scipy.io.savemat(os.path.join(root, f'{"train" if train else "test"}_32x32.mat'), mat)
    if name == 'fashion-mnist':
        return tv_datasets.FashionMNIST(root, train=True, transform=transforms.ToTensor())
    if name == 'cifar10':
        return datasets._CIFAR10(root, train=True, transform=transforms.ToTensor())
    return datasets._SVHN(root, split='train', transform=transforms.ToTensor())


def ours(images, labels, pre, batch_size, device, seconds):
    batches = du.Batches(images, labels, batch_size, device, seed=0)
    for _ in range(5):
        pre(next(batches)[0])
    count, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        x, log_det = pre(next(batches)[0])
        count += 1
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return count / (time.perf_counter() - t0)


def floor_ms(name, batch_size, device, repeats=500):
    """Milliseconds per batch of the random bits and (8-bit data) one logit kernel, each alone."""
    shape = (batch_size, *datasets.image_shape(name))
    nbits = 32 if datasets.is_binary(name) else 16
    y = torch.rand(shape, device=device) * 0.9 + 0.05
    parts = [lambda: du.random_bits(shape, nbits, device)]
    if not datasets.is_binary(name):
        parts.append(lambda: torch.logit(y))
    total = 0.0
    for part in parts:
        for _ in range(10):
            part()
        start = time.perf_counter()
        for _ in range(repeats):
            part()
        if device.type == 'cuda':
            torch.cuda.synchronize()
        total += (time.perf_counter() - start) / repeats
    return 1e3 * total


def baseline(dataset, pre, batch_size, device, n_batches):
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=2)
    it = iter(loader)
    for _ in range(5):  # worker start-up and first batches, untimed
        next(it)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        x, y = next(it)
        x = (x * 255).round().to(torch.uint8).to(device)  # ToTensor's [0, 1] floats back to the uint8 pixels
        x, log_det = pre(x)
    if device.type == 'cuda':
        torch.cuda.synchronize()
    return n_batches / (time.perf_counter() - t0)


def main(args):
    device = torch.device(('cuda' if torch.cuda.is_available() else 'cpu') if args.device == 'auto' else args.device)
    print(f'device {device}, torch threads {torch.get_num_threads()}, CPU cores {os.cpu_count()}, '
          f'batch {args.batch_size}')
    rows = []
    with tempfile.TemporaryDirectory(prefix='bench-data-') as tmp:
        for name in datasets.DATASETS:
            if name == 'mnist':
                images, labels = datasets.load_split(name, args.data_dir, True)
                dataset = tv_datasets.MNIST(args.data_dir, train=True, transform=transforms.ToTensor())
                source = 'real'
            else:
                dataset = synthetic_root(name, os.path.join(tmp, name))
                images, labels = datasets.load_split(name, os.path.join(tmp, name), True, log=lambda *a: None)
                source = 'synthetic'
            pre = du.Preprocessor(name)
            fast = ours(images, labels, pre, args.batch_size, device, args.seconds)
            slow = baseline(dataset, pre, args.batch_size, device, args.baseline_batches)
            rows.append((name, source, len(images), fast, slow, floor_ms(name, args.batch_size, device)))
            print(f'  {name}: done', flush=True)
    print('\n| dataset | data | N train | ours (batches/s) | DataLoader, 2 workers (batches/s) | ratio '
          '| ours (ms/batch) | floor (ms/batch) | ceiling |')
    print('|---|---|---:|---:|---:|---:|---:|---:|---:|')
    for name, source, n, fast, slow, floor in rows:
        print(f'| {name} | {source} | {n} | {fast:,.0f} | {slow:,.1f} | {fast / slow:,.0f}x | {1e3 / fast:.3f} '
              f'| {floor:.3f} | {1e3 / slow / floor:,.0f}x |')


if __name__ == '__main__':
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data_dir', default=datasets.default_data_dir(),
                        help='data root for real MNIST, fetched if missing (default: %(default)s)')
    parser.add_argument('--device', default='auto',
                        help='auto (CUDA if available, else CPU), cpu, cuda (default: auto)')
    parser.add_argument('--batch_size', type=int, default=128, help='batch size (default: 128)')
    parser.add_argument('--seconds', type=float, default=3.0, help='timed seconds for our pipeline (default: 3)')
    parser.add_argument('--baseline_batches', type=int, default=100,
                        help='timed batches for the DataLoader baseline (default: 100)')
    main(parser.parse_args())
