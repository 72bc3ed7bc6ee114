"""Data-parallel training speed of the conv VAE on this machine's CPU: world size 1 and 2, one thread per process.

    python benchmarks/bench_ddp.py [--iters 100] [--batch_size 64] [--base_dim 8] [--data_dir ./data]

Every configuration runs the scripts' training step (train.train_step through distributed.wrap, on the
rank's slice of data_utils.Batches, binarized MNIST) in processes started with torch.multiprocessing,
one thread each, joined in a Gloo group on 127.0.0.1 as torchrun would join them. 'W=1, no DDP' is one
process without a process group, as without torchrun: the baseline. Real MNIST when it is under
--data_dir (nothing is fetched), random images of its shape otherwise.

Throughput is examples/s = its/s x global batch. Scaling efficiency = throughput at W processes /
(W x throughput of the baseline): 1.0 means W processes are W times as fast as one. At the same global
batch (--batch_size keeps its meaning under torchrun) each process computes batch/W examples a step,
so W=2 is bounded by one process's speed on half the batch, which is measured too.
"""
import argparse
import os
import socket
import sys
import time
from types import SimpleNamespace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import data_utils  # noqa: E402
import datasets  # noqa: E402
import distributed  # noqa: E402
import static_flow_conv_vae  # noqa: E402
import train  # noqa: E402

WARMUP = 10


def config(args):
    return SimpleNamespace(dataset='mnist', latent_dim=32, base_dim=args.base_dim, scale=2, res_blocks=1,
                           bottleneck=0, weight_norm=1, flow='planar', length=8, lr=1e-3, momentum=0.9,
                           decay=0.999, objective='elbo', warmup=0, clip_grad=0.0, precision='fp32')


def load_images(data_dir):
    """Real MNIST's training images if they are under data_dir, else random ones of the same shape."""
    paths = [os.path.join(data_dir, 'MNIST', 'raw', f) for f in ('train-images-idx3-ubyte', 'train-labels-idx1-ubyte')]
    if all(os.path.isfile(p) for p in paths):
        return datasets.load_split('mnist', data_dir, train=True, log=lambda *_: None), 'MNIST'
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (60000, 1, 28, 28), dtype=torch.uint8, generator=g)
    return (images, torch.zeros(60000, dtype=torch.int64)), 'random images of MNIST\'s shape (MNIST not found)'


def worker(rank, world, port, ddp, batch_size, iters, args, results):
    """Time `iters` training steps after WARMUP; rank 0 puts its its/s on `results`."""
    torch.set_num_threads(1)
    if ddp:
        os.environ.update(MASTER_ADDR='127.0.0.1', MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                          LOCAL_RANK=str(rank))
        distributed.setup(torch.device('cpu'))
    (images, labels), _ = load_images(args.data_dir)
    cfg = config(args)
    torch.manual_seed(0)
    model = static_flow_conv_vae.build_model(cfg, (1, 28, 28))
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(cfg.momentum, cfg.decay))
    params, net = list(model.parameters()), distributed.wrap(model)
    batches = data_utils.Batches(images, labels, batch_size, 'cpu', seed=0, rank=rank, world_size=world)
    pre = data_utils.Preprocessor('mnist')
    for it in range(1, WARMUP + iters + 1):
        if it == WARMUP + 1:
            if ddp:
                dist.barrier()
            start = time.perf_counter()
        x, log_det_pre = pre(next(batches)[0])
        train.train_step(model, optimizer, params, x, log_det_pre, cfg, it, net)
    if rank == 0:
        results.put(iters / (time.perf_counter() - start))
    distributed.cleanup()


def its_per_s(world, ddp, batch_size, args):
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    results = mp.get_context('spawn').SimpleQueue()
    mp.start_processes(worker, (world, port, ddp, batch_size, args.iters, args, results), nprocs=world)
    return results.get()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--iters', type=int, default=100, help='timed iterations per configuration (after 10 warm-up)')
    p.add_argument('--batch_size', type=int, default=64, help='global batch')
    p.add_argument('--base_dim', type=int, default=8, help="the conv VAE's --base_dim")
    p.add_argument('--data_dir', default=datasets.default_data_dir())
    args = p.parse_args()
    os.environ['OMP_NUM_THREADS'] = '1'   # inherited by the spawned processes
    cfg = config(args)
    _, data = load_images(args.data_dir)
    b = args.batch_size
    print(f'torch {torch.__version__}, {os.cpu_count()} CPUs, Gloo; conv VAE (--base_dim {cfg.base_dim} '
          f'--scale {cfg.scale} --latent_dim {cfg.latent_dim} --flow {cfg.flow} --length {cfg.length}) '
          f'on {data}; 1 thread per process, {args.iters} timed iterations each')
    rows = [('W=1, no DDP (baseline)', 1, False, b), ('W=1, no DDP, one rank\'s share of W=2', 1, False, b // 2),
            ('W=1, DDP', 1, True, b), ('W=2, DDP', 2, True, b), ('W=2, DDP, batch per process kept', 2, True, 2 * b)]
    print(f'\n{"configuration":<36}{"global batch":>13}{"its/s":>8}{"examples/s":>12}{"efficiency":>12}')
    base = None
    for name, world, ddp, batch in rows:
        rate = its_per_s(world, ddp, batch, args)
        throughput = rate * batch
        base = base or throughput
        print(f'{name:<36}{batch:>13}{rate:>8.2f}{throughput:>12.0f}{throughput / (world * base):>12.2f}', flush=True)
    print('\nefficiency = examples/s / (W x examples/s of the baseline); 1.00 is perfect scaling. W=2 at the same\n'
          'global batch can at best reach the share row (each process computes half the batch), less the all-reduce.')


if __name__ == '__main__':
    main()
