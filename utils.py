"""What every part of flow-vae leans on: one-line errors, atomic files, checkpoints, the device, output folders,
progress bars.

It imports nothing of the project's but distributed.py, so any module may import it.
"""
import argparse
import json
import math
import os
import sys
import tempfile
import warnings

import torch
from tqdm import tqdm

import distributed

OUTPUT_DIRS = ('samples', 'reconstructions', 'plots', 'checkpoints', 'logs')
_UMASK = os.umask(0o022)
os.umask(_UMASK)


class UsageError(Exception):
    """Bad input: printed as one line, exit code 2."""


class Diverged(Exception):
    """Too many consecutive non-finite steps: printed as one line, exit code 3."""


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (no usage block)."""

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message} (see --help)\n')


def atomic_write(path, write):
    """write(f) into a temporary file in path's folder, fsync, then os.replace it onto path.

    A process killed at any moment leaves the old file or the new one, never half of one. The file gets the
    mode open() would give it. Errors propagate, after the temporary file is removed.
    """
    fd, tmp = tempfile.mkstemp(prefix=f'.{os.path.basename(path)}.', suffix='.part',
                               dir=os.path.dirname(os.path.abspath(path)))
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)   # mkstemp makes 0600
        with os.fdopen(fd, 'wb') as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def save_checkpoint(state, path):
    """Write `state` atomically (atomic_write). Returns False, and keeps the previous checkpoint, when the write
    fails (e.g. on a full disk): the run goes on, and says so on stderr."""
    try:
        atomic_write(path, lambda f: torch.save(state, f))
    except OSError as e:
        print(f'warning: could not save checkpoint {path} ({e.strerror}); kept the previous one', file=sys.stderr)
        return False
    return True


def load_checkpoint(path, script, source='--resume'):
    """Load with weights_only=True (nothing in the file can run code) and check it is ours, made by `script`
    (any of the scripts if None); `source` names where the path came from, for the error message."""
    if not os.path.isfile(path):
        raise UsageError(f'checkpoint {path} does not exist: check the {source} path')
    try:
        with warnings.catch_warnings():   # torch warns about the pickle protocol of foreign files: one line only
            warnings.simplefilter('ignore')
            ckpt = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # torch raises several types for truncated, corrupt or unsafe files
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        if 'GLOBAL' in str(e) or 'Unsupported global' in str(e):   # it would import something (os.system, ...)
            reason = 'it holds objects other than tensors and plain data, refused for safety'
        elif 'weights_only' in str(e):   # not a pickle of tensors and plain data: damaged, or not a checkpoint
            detail = [line for line in str(e).splitlines() if line.strip().startswith('Unsupported')]
            reason = f'not a file of tensors and plain data ({detail[0].strip() if detail else "unreadable"})'
        raise UsageError(f'cannot load checkpoint {path}: {reason}') from None
    needed = ('script', 'config', 'iter', 'model')   # a model file (model_file) has no optimizer state
    if not isinstance(ckpt, dict) or any(k not in ckpt for k in needed):
        raise UsageError(f'{path} is not a flow-vae checkpoint (it lacks {needed}): pass a file from checkpoints/')
    if script is not None and ckpt['script'] != script:
        raise UsageError(f'{path} was made by {ckpt["script"]}, not {script}: resume it with that script')
    return ckpt


def model_file(ckpt):
    """A checkpoint cut to what evaluating or sampling its model needs: the script, its flags (without the
    machine's data_dir, out_dir and resume), the iteration and the weights; no optimizer, data order or RNG.
    `--eval_only --resume` reads it; training cannot continue from it."""
    config = {key: value for key, value in ckpt['config'].items() if key not in ('data_dir', 'out_dir', 'resume')}
    return {'script': ckpt['script'], 'config': config, 'iter': ckpt['iter'], 'model': ckpt['model']}


def pick_device(name):
    """The device of --device; under torchrun `auto` skips MPS, which has no process-group backend."""
    if name == 'auto':
        if torch.cuda.is_available():
            return torch.device('cuda')
        mps = torch.backends.mps.is_available() and not distributed.requested()
        return torch.device('mps' if mps else 'cpu')
    available = {'cpu': True, 'cuda': torch.cuda.is_available(), 'mps': torch.backends.mps.is_available()}
    if not available[name]:
        raise UsageError(f'--device {name} is not available on this machine: use --device auto or cpu')
    return torch.device(name)


def device_name(device):
    """The device in words: the GPU's name, or the CPU's model."""
    if device.type == 'cuda':
        return torch.cuda.get_device_name(device)
    if device.type == 'cpu' and os.path.exists('/proc/cpuinfo'):
        with open('/proc/cpuinfo') as f:
            names = [line.split(':', 1)[1].strip() for line in f if line.startswith('model name')]
        return f'{names[0]} ({os.cpu_count()} cores)' if names else 'cpu'
    return device.type


def prepare_out_dirs(out_dir, create=True):
    """Create the output folders and prove they are writable, before training starts (create=False: only
    their paths, for the ranks of a distributed run that write nothing)."""
    paths = {}
    for sub in OUTPUT_DIRS:
        path = os.path.join(out_dir, sub)
        if not create:
            paths[sub] = path
            continue
        try:
            os.makedirs(path, exist_ok=True)
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as e:
            raise UsageError(f'cannot write to {path} ({e.strerror}): choose a writable --out_dir') from None
        paths[sub] = path
    return paths


def write_json(path, obj):
    with open(path, 'w') as f:
        json.dump(obj, f, indent=1)
        f.write('\n')


def log_json(path, record):
    with open(path, 'a') as f:
        f.write(json.dumps(record) + '\n')


def truncate_log(path, it):
    """Keep the records of iterations before `it` of the JSONL log at `path`, and those of iteration `it` but its
    final evaluations, rewritten atomically (atomic_write) when any goes: a run resumed from its checkpoint of
    iteration `it` writes the later ones again, and evaluates at its end once. A line cut short (by a kill while it
    was written) goes too; the other lines are kept byte for byte. No file: nothing."""
    if not os.path.exists(path):
        return
    with open(path, 'rb') as f:
        lines = f.readlines()
    kept = [line for line in lines if _log_position(line) <= (it, False)]
    if len(kept) < len(lines):
        atomic_write(path, lambda f: f.writelines(kept))


def _log_position(line):
    """(iter, final) of one log line, ordered as the run writes them; infinite for a line that is not whole JSON."""
    try:
        record = json.loads(line)
    except ValueError:
        return math.inf, True
    return record['iter'], bool(record.get('final'))


def progress(iterable=None, **kw):
    """A tqdm bar over `iterable` (keyword arguments: tqdm's), on rank 0 only and only when stderr is a terminal
    (tqdm's disable=None), so logs and pipes get none."""
    return tqdm(iterable, disable=None if distributed.is_main() else True, dynamic_ncols=True, **kw)
