"""The multi-process half of tests/test_distributed.py: ``mpiexec -n 2 python tests/distributed_worker.py CASE OUT``.

Every case builds the same tiny float64 net and data on every rank (seeded), trains
it with DistributedDataParallel on this rank's share of each global batch, and rank 0
writes the results to OUT (an .npz) for the test to compare with one process.
``reference(...)`` is the one-process run the tests compare with (batch = all ranks' batches).
"""
import sys

import numpy as np

import minigrad
import minigrad.functional as F
import minigrad.nn as nn

STEPS, LOCAL_BATCH, WORLD = 4, 3, 2


class Net(nn.Module):
    def __init__(self, batch_norm):
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4) if batch_norm else nn.Identity()
        self.conv2 = nn.Conv2d(4, 3, 1)
        self.unused = nn.Linear(2, 2)  # never in the graph: must keep grad None

    def forward(self, x):
        return self.conv2(F.relu(self.bn(self.conv1(x))))


def make_net(batch_norm):
    minigrad.manual_seed(0)
    return Net(batch_norm).double()


def make_data(steps=STEPS, global_batch=LOCAL_BATCH * WORLD):
    rng = np.random.default_rng(1)
    images = rng.standard_normal((steps, global_batch, 2, 5, 5))
    masks = rng.integers(0, 3, size=(steps, global_batch, 5, 5))
    return images, masks


def train(model, params, images, masks, rank=0, world=1, device="cpu"):
    """SGD with momentum; this rank takes every world-th image of each global batch (as DistributedSampler)."""
    optimizer = minigrad.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-3)
    for step in range(len(images)):
        x = minigrad.tensor(images[step][rank::world], device=device)
        y = minigrad.tensor(masks[step][rank::world], device=device)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()


def reference(batch_norm):
    """One process, the global batch: parameters and buffers by name."""
    net = make_net(batch_norm)
    images, masks = make_data()
    net.train()
    train(net, net.parameters(), images, masks)
    return {k: v.numpy() for k, v in net.state_dict().items()}


def _reduced(dist, tensor, op):
    work = dist.all_reduce(tensor, op, async_op=True)
    work.wait()
    return tensor.numpy()


def run_case(case, path):
    import minigrad.distributed as dist
    from minigrad.nn.parallel import DistributedDataParallel
    if case == "gpu-nccl":
        dist.init_process_group("nccl")  # GPU = local rank % GPUs
    else:
        if case == "gpu-mpi":  # every process on GPU 0: gradients staged through host memory
            minigrad.backend.cupy().cuda.Device(0).use()
        dist.init_process_group("mpi")
    rank, world = dist.get_rank(), dist.get_world_size()
    results = {}
    if case.startswith("gpu-"):
        images, masks = make_data()
        net = nn.SyncBatchNorm.convert_sync_batchnorm(make_net(True)).to("gpu")
        model = DistributedDataParallel(net, bucket_cap_mb=1e-4)  # several buckets
        train(model, model.parameters(), images, masks, rank, world, device="gpu")
        for key, value in net.state_dict().items():
            results[f"sync_bn/{key}"] = value.numpy()
    elif case == "equal":
        # the collectives themselves, on values each rank knows the others' of
        for op in ("sum", "mean", "max"):  # in place: a fresh tensor each
            results[f"op/{op}"] = _reduced(dist, minigrad.tensor(np.array([1.0, -2.0, 3.0]) * (rank + 1)), op)
        results["op/int_mean"] = _reduced(dist, minigrad.tensor(np.array([3, 4]) + rank), "mean")
        strided = np.arange(6.0).reshape(2, 3) * (rank + 1)
        view = strided.T  # not contiguous: reduced through a copy, written back
        dist.all_reduce(view)
        results["op/strided"] = strided
        box = [f"from rank {rank}"]
        dist.broadcast_object_list(box, src=1)
        results["op/object"] = np.array(box[0])
        dist.barrier()
        images, masks = make_data()
        for name, batch_norm, cap in (("plain", False, 25), ("sync_bn", True, 25), ("local_bn", True, 25),
                                      ("tiny_buckets", False, 1e-6), ("one_bucket", True, 1000)):
            net = make_net(batch_norm)
            if batch_norm and name != "local_bn":
                net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
            if rank == 1:  # DDP must overwrite rank 1's parameters with rank 0's
                for p in net.parameters():
                    p.data += 1
            model = DistributedDataParallel(net, bucket_cap_mb=cap)
            results[f"{name}/buckets"] = np.array(model.bucket_sizes())
            train(model, model.parameters(), images, masks, rank, world)
            for key, value in net.state_dict().items():
                results[f"{name}/{key}"] = value.numpy()
            results[f"{name}/unused_grad_is_none"] = np.array(net.unused.weight.grad is None)
        # no_sync: two half-batches accumulated locally, one all-reduce, equals one step on the whole batch
        net = make_net(False)
        model = DistributedDataParallel(net)
        optimizer = minigrad.optim.SGD(model.parameters(), lr=0.1)
        x, y = images[0][rank::world], masks[0][rank::world]
        optimizer.zero_grad()
        with model.no_sync():
            (F.cross_entropy(model(minigrad.tensor(x[:1])), minigrad.tensor(y[:1])) / 3).backward()
        synced_after_no_sync = net.conv2.bias.grad.numpy().copy()
        (F.cross_entropy(model(minigrad.tensor(x[1:])), minigrad.tensor(y[1:])) * 2 / 3).backward()
        optimizer.step()
        for key, value in net.state_dict().items():
            results[f"no_sync/{key}"] = value.numpy()
        gathered = [minigrad.tensor(np.zeros_like(synced_after_no_sync)) for _ in range(world)]
        dist.all_gather(gathered, minigrad.tensor(synced_after_no_sync))
        results["no_sync/ranks_differed_inside"] = np.array(not np.allclose(gathered[0].numpy(), gathered[1].numpy()))
        # a parameter only rank 0 uses: both ranks get half of rank 0's gradient
        net = make_net(False)
        model = DistributedDataParallel(net)
        out = model(minigrad.tensor(images[0][rank::world])).sum()
        if rank == 0:
            out = out + (net.unused(minigrad.tensor(np.ones((1, 2)))) ** 2).sum()
        out.backward()
        results["partly_used/grad"] = net.unused.bias.grad.numpy()
        # a backward that raises after some buckets started: the next backward averages as usual
        net = make_net(False)
        model = DistributedDataParallel(net, bucket_cap_mb=1e-6)
        armed = [True]

        def boom(_):
            if armed.pop() if armed else False:
                raise RuntimeError("boom")
        net.conv1.weight.register_post_accumulate_grad_hook(boom)  # reached last: the others have started
        x, y = minigrad.tensor(images[0][rank::world]), minigrad.tensor(masks[0][rank::world])
        try:
            F.cross_entropy(model(x), y).backward()
        except RuntimeError:
            pass
        model.zero_grad()
        F.cross_entropy(model(x), y).backward()
        results["recovered/grad"] = net.conv1.weight.grad.numpy()
    elif case == "uneven":
        # 7 images over 2 ranks, padded by repetition: both ranks take 4, in batches of 3 and 1
        from segnets.data.loader import DataLoader
        from segnets.data.shapes import ShapesDataset
        dataset = ShapesDataset("train", num_train=7, image_size=16, seed=0)
        loader = DataLoader(dataset, batch_size=3, shuffle=True, seed=3, num_replicas=world, rank=rank)
        net = make_net(False)
        model = DistributedDataParallel(net.float())
        steps = 0
        for epoch in range(2):
            for images, masks in loader:
                F.cross_entropy(model(minigrad.tensor(images[:, :2, :5, :5])),
                                minigrad.tensor(masks[:, :5, :5] % 3)).backward()
                steps += 1
        results["uneven/steps"] = np.array(steps)
    elif case == "raise":
        if rank == 1:
            raise RuntimeError("deliberate failure on rank 1")
        dist.barrier()  # rank 0 would wait here for ever without the abort
    if rank == 0:
        np.savez(path, **results)


if __name__ == "__main__":
    run_case(sys.argv[1], sys.argv[2])
