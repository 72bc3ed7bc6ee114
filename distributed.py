"""Data-parallel training with torch.distributed: what `torchrun` sets up, in one place.

Under `torchrun --nproc_per_node N script.py ...` every process (rank) finds RANK, WORLD_SIZE and
LOCAL_RANK in its environment; `setup` then joins the process group (NCCL on CUDA, one GPU per
process picked by LOCAL_RANK; Gloo on the CPU) and `wrap` puts the model in DistributedDataParallel,
which averages the gradients over the ranks during backward. Without those variables every function
here is a no-op for a single process, so the scripts run the same code either way.

What the loop in train.py does with them: --batch_size is the global batch, each rank taking its slice
(data_utils.Batches); the logged loss and the non-finite-step check are all-reduced, so every rank
applies or skips the same steps; test-set evaluation is split over the ranks and its sums all-reduced;
only rank 0 (`is_main`) writes files or prints progress.
"""
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

_device = torch.device('cpu')   # where collective tensors live: the rank's GPU under NCCL, else the CPU


def requested():
    """True when started by torchrun (or anything else that sets RANK and WORLD_SIZE)."""
    return 'RANK' in os.environ and 'WORLD_SIZE' in os.environ


def active():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if active() else int(os.environ.get('RANK', 0)) if requested() else 0


def world_size():
    return dist.get_world_size() if active() else int(os.environ.get('WORLD_SIZE', 1)) if requested() else 1


def is_main():
    """Rank 0: the one process that writes samples, plots, logs and checkpoints."""
    return rank() == 0


def setup(device):
    """Join the process group when torchrun started us; returns the device this rank computes on.

    On CUDA each process takes the GPU numbered by LOCAL_RANK and the backend is NCCL; on the CPU it is Gloo.
    """
    global _device
    if not requested() or active():
        return device
    if device.type == 'cuda':
        local_rank, count = int(os.environ.get('LOCAL_RANK', 0)), torch.cuda.device_count()
        if local_rank >= count:
            raise ValueError(f'LOCAL_RANK {local_rank} but this node has {count} CUDA device(s): '
                             f'use --nproc_per_node {count} or fewer')
        device = torch.device('cuda', local_rank)
        torch.cuda.set_device(device)
    elif device.type != 'cpu':
        raise ValueError(f'--device {device.type} cannot run under torchrun (no process-group backend for it): '
                         'use --device cpu or cuda')
    if device.type == 'cuda':
        dist.init_process_group('nccl', device_id=device)
    else:
        dist.init_process_group('gloo')
    _device = device
    return device


def cleanup():
    global _device
    if active():
        dist.destroy_process_group()
    _device = torch.device('cpu')


def wrap(model):
    """The module that runs the training forward: DistributedDataParallel around `model` when distributed
    (its backward all-reduces the gradients), else `model` itself. Keep using `model` for everything else."""
    if not active():
        return model
    return DistributedDataParallel(model, device_ids=[_device] if _device.type == 'cuda' else None)


def mean(tensor):
    """The mean of a tensor over the ranks (a new tensor; the tensor itself in a single process)."""
    if not active():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total / world_size()


def sum_floats(values):
    """Python floats summed over the ranks, in float64."""
    if not active():
        return list(values)
    total = torch.tensor(values, dtype=torch.float64, device=_device)
    dist.all_reduce(total)
    return total.tolist()


def max_int(value):
    """The largest of an int over the ranks (e.g. a signal number that only some ranks received)."""
    if not active():
        return value
    top = torch.tensor(value, dtype=torch.int64, device=_device)
    dist.all_reduce(top, op=dist.ReduceOp.MAX)
    return int(top)


def shard(seq):
    """This rank's contiguous share of a sequence (a range of batch starts): all of it in a single process."""
    r, w = rank(), world_size()
    return seq[len(seq) * r // w:len(seq) * (r + 1) // w]


def broadcast_buffers(model):
    """Give every rank rank 0's buffers (batch-norm running statistics), which is what rank 0 checkpoints.

    DDP does this at the start of each training forward; after the last step each rank has updated its own
    copy with its own slice of the batch, so evaluation calls this first.
    """
    if active():
        for buffer in model.buffers():
            dist.broadcast(buffer, 0)


def broadcast_state(model):
    """Give every rank rank 0's parameters and buffers (e.g. after rank 0 alone loaded a checkpoint)."""
    if active():
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, 0)


def seed_rank(seed, it):
    """Give ranks > 0 their own random stream for the training noise (binarization, dequantization, flips,
    reparameterization), seeded from (seed, rank, iteration); rank 0 keeps the stream it has, so a single
    process is unchanged. Without this every rank would draw the same noise for different examples.

    A resumed distributed run continues rank 0's stream exactly (it is in the checkpoint) and reseeds the
    others from the iteration it resumes at, so it is not bit-for-bit the uninterrupted run; a
    single-process run still is. (Python's hash of a tuple of ints is not salted: the same in every run.)
    """
    if rank() > 0:
        torch.manual_seed(hash((seed, rank(), it)) & (2 ** 63 - 1))
