"""Data-parallel scaling on this machine: one process with T threads against T processes of one thread.

    python -m benchmarks.distributed                 # every configuration, results/distributed-cpu-<date>.{json,md}
    mpiexec -n 2 python -m benchmarks.distributed --allreduce   # all_reduce time and bus bandwidth, 1-256 MB
    mpiexec -n 2 python -m benchmarks.distributed --worker --processes 2 --bucket-mb 25   # one configuration

The same global batch (``--global-batch``, default 8) either way: one process takes it
whole, N processes take ``global / N`` each and average gradients with
DistributedDataParallel (SyncBatchNorm for nets with batch norm). Each configuration
runs ``--steps`` timed training steps (SGD momentum, cross-entropy) after two warm-up
steps, in fresh processes, and reports images/s (global batch / median step time) and
the share of the step spent waiting for all-reduces to finish. "Overlap" runs use
small buckets (``--overlap-bucket-mb``), so the first buckets' all-reduces start while
backward is still running; "no overlap" runs use one bucket for every gradient, whose
all-reduce can only start after backward has produced the last one.
"""
import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def worker(args):
    import minigrad
    import minigrad.functional as F
    from segnets import build_model
    from benchmarks.models import SIZES, make_batch, make_labels, net_config

    distributed = args.processes > 1
    rank, world = 0, 1
    if distributed:
        import minigrad.distributed as dist
        dist.init_process_group("mpi")
        rank, world = dist.get_rank(), dist.get_world_size()
    size = SIZES[args.size]
    options, side = net_config(args.net, size)
    minigrad.manual_seed(0)
    model = build_model(args.net, num_classes=21, width=size.width, **options)
    if distributed:
        from minigrad.nn import SyncBatchNorm
        from minigrad.nn.parallel import DistributedDataParallel
        model = SyncBatchNorm.convert_sync_batchnorm(model)
        ddp = DistributedDataParallel(model, bucket_cap_mb=args.bucket_mb)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = minigrad.optim.SGD(params, lr=1e-3, momentum=0.9)
    local = args.global_batch // world
    whole = dataclasses.replace(size, batch=args.global_batch)
    images = minigrad.Tensor(make_batch(whole, side)[rank * local:(rank + 1) * local])
    labels = minigrad.Tensor(make_labels((args.global_batch, side, side))[rank * local:(rank + 1) * local])
    times, waits = [], []
    for step in range(args.steps + 2):
        if distributed:
            dist.barrier()
            ddp.wait_seconds = 0.0
        start = time.perf_counter()
        logits = model(images)
        loss = F.cross_entropy(logits, labels[..., :logits.shape[-2], :logits.shape[-1]], ignore_index=255)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step >= 2:
            times.append(time.perf_counter() - start)
            waits.append(ddp.wait_seconds if distributed else 0.0)
    if distributed:
        buckets = len(ddp.bucket_sizes())
        gathered = np.array([statistics.median(times), statistics.median(waits)])
        dist.all_reduce(gathered, "max")  # the slowest rank sets the pace
        step_s, wait_s = gathered
    else:
        buckets, step_s, wait_s = 0, statistics.median(times), 0.0
    if rank == 0:
        print(json.dumps({"net": args.net, "size": args.size, "processes": world, "threads": args.threads,
                          "global_batch": args.global_batch, "bucket_mb": args.bucket_mb if distributed else None,
                          "buckets": buckets, "params_m": round(sum(p.numel() for p in params) / 1e6, 3),
                          "step_ms": round(step_s * 1e3, 2), "images_per_second": round(args.global_batch / step_s, 2),
                          "allreduce_wait_ms": round(wait_s * 1e3, 3),
                          "allreduce_wait_share": round(wait_s / step_s, 4)}), flush=True)


def allreduce_bandwidth(sizes_mb=(1, 8, 64, 256), repeats=5):
    """Under mpiexec: the median time of minigrad.distributed.all_reduce per size and the ring model's bus
    bandwidth, 2 (N - 1) / N x bytes / time (the figure the scaling model in benchmarks/README.md takes)."""
    import minigrad.distributed as dist
    dist.init_process_group("mpi")
    world = dist.get_world_size()
    for mb in sizes_mb:
        array = np.ones(int(mb * 2**20) // 4, dtype=np.float32)
        times = []
        for _ in range(repeats + 1):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(array)
            times.append(time.perf_counter() - start)
        t = statistics.median(times[1:])
        if dist.get_rank() == 0:
            print(json.dumps({"processes": world, "megabytes": mb, "ms": round(t * 1e3, 3),
                              "bus_gb_per_s": round(2 * (world - 1) / world * array.nbytes / t / 1e9, 2)}), flush=True)


def launch(net, size, processes, threads, bucket_mb, steps, global_batch):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), PYTHONPATH=str(HERE.parent))
    command = [sys.executable, "-m", "benchmarks.distributed", "--worker", "--net", net, "--size", size,
               "--processes", str(processes), "--threads", str(threads), "--bucket-mb", str(bucket_mb),
               "--steps", str(steps), "--global-batch", str(global_batch)]
    if processes > 1:
        from tests.test_distributed import mpiexec_command
        launcher = list(mpiexec_command())  # [mpiexec, -n, 2, Open MPI's flags if that is the MPI]
        launcher[launcher.index("-n") + 1] = str(processes)
        command = launcher + command
    result = subprocess.run(command, capture_output=True, text=True, cwd=HERE.parent, env=env, timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def compare(args):
    rows = []
    for net in args.nets:
        rows.append(launch(net, args.size, 1, 1, 0, args.steps, args.global_batch))
        rows[-1]["config"] = "1 process x 1 thread"
        rows.append(launch(net, args.size, 1, 2, 0, args.steps, args.global_batch))
        rows[-1]["config"] = "1 process x 2 threads"
        rows.append(launch(net, args.size, 2, 1, 1e4, args.steps, args.global_batch))
        rows[-1]["config"] = "2 processes x 1 thread, one bucket (no overlap)"
        rows.append(launch(net, args.size, 2, 1, args.overlap_bucket_mb, args.steps, args.global_batch))
        rows[-1]["config"] = f"2 processes x 1 thread, {args.overlap_bucket_mb} MB buckets (overlap)"
        for row in rows[-4:]:
            print(json.dumps(row), flush=True)
    from .common import unused_stem
    stamp = time.strftime("%Y-%m-%d")
    out = HERE / "results" / unused_stem(HERE / "results", f"distributed-cpu-{stamp}")   # never overwrites
    machine = {"cpus": os.cpu_count(), "load_average_at_end": os.getloadavg(), "python": sys.version.split()[0],
               "command": "python -m benchmarks.distributed " + " ".join(sys.argv[1:])}
    out.with_suffix(".json").write_text(json.dumps({"machine": machine, "rows": rows}, indent=2))
    lines = ["| net | configuration | global batch | buckets | ms/step | img/s | all-reduce wait ms | wait share |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['net']} ({r['size']}, {r['params_m']} M params) | {r['config']} | {r['global_batch']} | "
                     f"{r['buckets'] or '-'} | {r['step_ms']} | {r['images_per_second']} | "
                     f"{r['allreduce_wait_ms']} | {100 * r['allreduce_wait_share']:.1f} % |")
    out.with_suffix(".md").write_text(f"Data-parallel scaling on this machine ({machine['cpus']} cores, load average "
                                      f"{machine['load_average_at_end'][0]:.1f} at the end), `{machine['command']}`\n\n"
                                      + "\n".join(lines) + "\n")
    print(f"wrote {out}.json and .md")


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.distributed", description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help="run one configuration (under mpiexec for several)")
    p.add_argument("--allreduce", action="store_true",
                   help="under mpiexec: all_reduce time and bus bandwidth for 1-256 MB of float32")
    p.add_argument("--net", default="unet")
    p.add_argument("--nets", nargs="+", default=["unet", "fcn8s"])
    p.add_argument("--size", default="small", choices=("tiny", "small", "full"))
    p.add_argument("--processes", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bucket-mb", type=float, default=25)
    p.add_argument("--overlap-bucket-mb", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--global-batch", type=int, default=8)
    args = p.parse_args(argv)
    if args.allreduce:
        allreduce_bandwidth()
    elif args.worker:
        worker(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
