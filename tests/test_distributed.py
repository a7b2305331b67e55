"""minigrad.distributed, DistributedDataParallel, SyncBatchNorm and the sharded loader.

The multi-process tests launch ``mpiexec -n 2`` (tests/distributed_worker.py) and
compare with one process run here on the 2x batch; they skip, saying why, where
mpi4py or an ``mpiexec`` is missing (``pip install -e ".[test]"`` brings both).
"""
import functools
import importlib.util
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import minigrad
import minigrad.functional as F
from minigrad.nn.sync_batchnorm import sync_batch_norm
from minigrad.tensor import queue_callback

sys.path.insert(0, str(Path(__file__).parent))
import distributed_worker as worker  # noqa: E402

HERE = Path(__file__).parent
ROOT = HERE.parent


@functools.lru_cache(maxsize=None)
def mpiexec_command():
    """[mpiexec, flags...] for 2 processes, or None: next to this Python first (the mpich wheel), then PATH."""
    if importlib.util.find_spec("mpi4py") is None:
        return None
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        return None
    version = subprocess.run([found, "--version"], capture_output=True, text=True, timeout=30).stdout
    command = [found, "-n", "2"]
    if "Open MPI" in version or "OpenRTE" in version:  # refuses root and more ranks than cores without these
        command += ["--oversubscribe"] + (["--allow-run-as-root"] if os.geteuid() == 0 else [])
    return command


def needs_mpi():
    if importlib.util.find_spec("mpi4py") is None:
        pytest.skip("mpi4py is not installed (pip install -e \".[mpi]\")")
    if mpiexec_command() is None:
        pytest.skip("no mpiexec next to this Python or on PATH (pip install mpich)")


def launch(args, timeout=120, cwd=ROOT):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run(mpiexec_command() + [sys.executable] + list(args), capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=env)


@pytest.fixture(scope="module")
def equal_results(tmp_path_factory):
    needs_mpi()
    out = tmp_path_factory.mktemp("dist") / "equal.npz"
    result = launch([str(HERE / "distributed_worker.py"), "equal", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    return dict(np.load(out))


def _assert_same_state(results, name, reference):
    for key, value in reference.items():
        got = results[f"{name}/{key}"]
        scale = max(float(np.max(np.abs(value))), 1e-30)
        assert float(np.max(np.abs(got - value))) / scale <= 1e-10, f"{name}: {key} differs"


def test_collectives_over_two_ranks(equal_results):
    np.testing.assert_array_equal(equal_results["op/sum"], [3.0, -6.0, 9.0])
    np.testing.assert_array_equal(equal_results["op/mean"], [1.5, -3.0, 4.5])
    np.testing.assert_array_equal(equal_results["op/max"], [2.0, -2.0, 6.0])
    np.testing.assert_array_equal(equal_results["op/int_mean"], [3, 4])  # (3 + 4) // 2, (4 + 5) // 2
    np.testing.assert_array_equal(equal_results["op/strided"], np.arange(6.0).reshape(2, 3) * 3)
    assert str(equal_results["op/object"]) == "from rank 1"


@pytest.mark.parametrize("name, batch_norm", [("plain", False), ("sync_bn", True),
                                              ("tiny_buckets", False), ("one_bucket", True)])
def test_two_processes_train_like_one_with_twice_the_batch(equal_results, name, batch_norm):
    reference = worker.reference(batch_norm)
    assert any(k.endswith("running_var") for k in reference) == batch_norm  # running stats compared too
    _assert_same_state(equal_results, name, reference)
    assert bool(equal_results[f"{name}/unused_grad_is_none"])


def test_bucket_caps_give_one_bucket_per_parameter_or_one_for_all(equal_results):
    assert list(equal_results["tiny_buckets/buckets"]) == [1] * 6
    assert list(equal_results["one_bucket/buckets"]) == [8]


def test_local_batch_norm_would_not_match(equal_results):
    """The control: without SyncBatchNorm each rank normalises by its own half, which trains differently."""
    reference = worker.reference(True)
    gaps = [np.max(np.abs(equal_results[f"local_bn/{k}"] - v)) for k, v in reference.items()]
    assert max(gaps) > 1e-4


def test_no_sync_accumulates_locally_then_averages_everything(equal_results):
    assert bool(equal_results["no_sync/ranks_differed_inside"])
    net = worker.make_net(False)
    images, masks = worker.make_data()
    optimizer = minigrad.optim.SGD(net.parameters(), lr=0.1)
    F.cross_entropy(net(minigrad.tensor(images[0])), minigrad.tensor(masks[0])).backward()
    optimizer.step()
    reference = {k: v.numpy() for k, v in net.state_dict().items()}
    _assert_same_state(equal_results, "no_sync", reference)


def test_a_parameter_used_on_one_rank_gets_the_average(equal_results):
    """Rank 0 adds sum((W @ 1 + b)^2) with W, b = the seeded Linear; rank 1 adds nothing: b.grad = 2 (W @ 1 + b) / 2."""
    net = worker.make_net(False)
    expected = (net.unused.weight.numpy().sum(axis=1) + net.unused.bias.numpy())
    np.testing.assert_allclose(equal_results["partly_used/grad"], expected, rtol=1e-12)


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["gpu-mpi", "gpu-nccl"])
def test_gpu_two_processes_train_like_one_cpu_process_with_twice_the_batch(tmp_path, case):
    """gpu-mpi: two processes on one GPU, host-staged MPI; gpu-nccl: one GPU per process (needs two)."""
    needs_mpi()
    if not minigrad.gpu_available():
        pytest.skip("needs CuPy and an NVIDIA GPU (pip install -e .[gpu])")
    if case == "gpu-nccl" and minigrad.backend.cupy().cuda.runtime.getDeviceCount() < 2:
        pytest.skip("NCCL needs one GPU per process: this machine has one")
    out = tmp_path / "gpu.npz"
    result = launch([str(HERE / "distributed_worker.py"), case, str(out)], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    _assert_same_state(dict(np.load(out)), "sync_bn", worker.reference(True))


def test_uneven_data_finishes_with_the_same_number_of_steps_on_every_rank(tmp_path):
    needs_mpi()
    out = tmp_path / "uneven.npz"
    result = launch([str(HERE / "distributed_worker.py"), "uneven", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    assert int(np.load(out)["uneven/steps"]) == 2 * 2  # 7 images -> 4 per rank -> batches of 3 and 1, 2 epochs


def test_a_raising_rank_stops_every_rank_with_a_nonzero_exit(tmp_path):
    needs_mpi()
    start = time.monotonic()
    result = launch([str(HERE / "distributed_worker.py"), "raise", str(tmp_path / "x.npz")], timeout=60)
    assert result.returncode != 0
    assert time.monotonic() - start < 30
    assert result.stderr.count("RuntimeError: deliberate failure on rank 1") == 1
    assert "error on rank 1 of 2" in result.stderr


# ---------------------------------------------------------------------------- one process
def test_sync_batch_norm_with_one_rank_is_batch_norm_forward_and_backward():
    rng = np.random.default_rng(0)
    x = minigrad.tensor(rng.standard_normal((3, 2, 4, 5)), requires_grad=True)
    w = minigrad.tensor(rng.standard_normal(2) + 1, requires_grad=True)
    b = minigrad.tensor(rng.standard_normal(2), requires_grad=True)
    g = rng.standard_normal((3, 2, 4, 5))
    outs, grads, stats = [], [], []
    for op in ("sync", "plain"):
        for t in (x, w, b):
            t.grad = None
        rm, rv = minigrad.tensor(np.zeros(2)), minigrad.tensor(np.ones(2))
        if op == "sync":
            y = sync_batch_norm(x, rm, rv, w, b, 0.1, 1e-5, lambda a: None)
        else:
            y = F.batch_norm(x, rm, rv, w, b, training=True, momentum=0.1, eps=1e-5)
        y.backward(g)
        outs.append(y.numpy())
        grads.append([t.grad.numpy() for t in (x, w, b)])
        stats.append((rm.numpy(), rv.numpy()))
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-12, atol=1e-12)
    for a, c in zip(grads[0], grads[1]):
        np.testing.assert_allclose(a, c, rtol=1e-10, atol=1e-12)
    for a, c in zip(stats[0], stats[1]):
        np.testing.assert_allclose(a, c, rtol=1e-12)


def test_sync_batch_norm_over_simulated_ranks_with_unequal_batches_is_batch_norm_of_all():
    """Ranks of 1 and 3 samples, simulated: the all-reduce sums what both ranks contribute, in turn."""
    rng = np.random.default_rng(1)
    data, upstream = rng.standard_normal((4, 3, 2, 2)), rng.standard_normal((4, 3, 2, 2))
    w, b = rng.standard_normal(3) + 1, rng.standard_normal(3)
    whole = minigrad.tensor(data, requires_grad=True)
    F.batch_norm(whole, None, None, minigrad.tensor(w), minigrad.tensor(b), training=True).backward(upstream)

    parts = [minigrad.tensor(data[:1], requires_grad=True), minigrad.tensor(data[1:], requires_grad=True)]
    axes = (0, 2, 3)
    mean = data.mean(axis=axes).reshape(1, 3, 1, 1)
    global_sums = [np.concatenate([data.sum(axis=axes), [data.size // 3]]),  # what the all-reduces return
                   ((data - mean) ** 2).sum(axis=axes),
                   np.concatenate([upstream.sum(axis=axes), (upstream * (data - mean)).sum(axis=axes)])]

    def reducer_for(i):
        calls = iter(global_sums)

        def reduce(a):
            a[...] = next(calls)
        return reduce

    def forward_and_collect(i, reduce):
        return sync_batch_norm(parts[i], None, None, minigrad.tensor(w), minigrad.tensor(b), 0.1, 1e-5, reduce)

    outputs = []
    for i, sl in enumerate((slice(0, 1), slice(1, 4))):
        y = forward_and_collect(i, reducer_for(i))
        y.backward(upstream[sl])
        outputs.append(y.numpy())
    expected = F.batch_norm(minigrad.tensor(data), None, None, minigrad.tensor(w), minigrad.tensor(b),
                            training=True).numpy()
    np.testing.assert_allclose(np.concatenate(outputs), expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.concatenate([p.grad.numpy() for p in parts]), whole.grad.numpy(),
                               rtol=1e-10, atol=1e-12)


def test_convert_sync_batchnorm_shares_parameters_and_buffers():
    net = worker.make_net(True)
    bn = net.bn
    converted = minigrad.nn.SyncBatchNorm.convert_sync_batchnorm(net)
    assert converted is net and isinstance(net.bn, minigrad.nn.SyncBatchNorm)
    assert net.bn.weight is bn.weight and net.bn.running_mean is bn.running_mean
    assert list(net.state_dict()) == list(worker.make_net(True).state_dict())
    root = minigrad.nn.SyncBatchNorm.convert_sync_batchnorm(minigrad.nn.BatchNorm2d(3))
    assert isinstance(root, minigrad.nn.SyncBatchNorm)


def test_post_accumulate_grad_hook_fires_once_per_backward_after_summing_paths():
    x = minigrad.tensor([1.0, 2.0], requires_grad=True)
    seen, ended = [], []

    def hook(t):
        seen.append(t.grad.numpy().copy())
        queue_callback(lambda: ended.append(len(seen)))
    handle = x.register_post_accumulate_grad_hook(hook)
    (x * x + x * 3).sum().backward()  # two paths into x: one call with 2x + 3
    np.testing.assert_array_equal(seen[0], [5.0, 7.0])
    assert len(seen) == 1 and ended == [1]
    handle.remove()
    (x * 2).sum().backward()
    assert len(seen) == 1


def test_sharded_loader_batches_together_are_the_one_process_batches():
    from segnets.data.loader import DataLoader
    from segnets.data.shapes import ShapesDataset
    dataset = ShapesDataset("train", image_size=16, num_train=10, seed=0)
    whole = DataLoader(dataset, batch_size=4, shuffle=True, seed=5, drop_last=True)
    shards = [DataLoader(dataset, batch_size=2, shuffle=True, seed=5, drop_last=True, num_replicas=2, rank=r)
              for r in range(2)]
    assert len(whole) == len(shards[0]) == len(shards[1]) == 2
    for (images, masks), a, b in zip(whole, *shards):
        np.testing.assert_array_equal(np.sort(images.reshape(4, -1), axis=0),
                                      np.sort(np.concatenate([a[0], b[0]]).reshape(4, -1), axis=0))
    padded = [list(DataLoader(dataset, batch_size=3, num_replicas=3, rank=r)) for r in range(3)]
    assert [len(p) for p in padded] == [2, 2, 2]  # 10 -> 12 by repeating the first two
    counted = [list(DataLoader(dataset, batch_size=3, num_replicas=3, rank=r, pad=False)) for r in range(3)]
    assert sum(len(b[0]) for c in counted for b in c) == 10


def test_distributed_without_init_says_what_to_call():
    import minigrad.distributed as dist
    assert not dist.is_initialized()
    with pytest.raises(RuntimeError, match="init_process_group"):
        dist.get_rank()
    with pytest.raises(ValueError, match="backend"):
        dist.init_process_group("gloo")


# ---------------------------------------------------------------------------- the training command
TINY = ["--net", "unet", "--width", "4", "--crop-size", "32", "--optimizer", "sgd", "--lr", "0.05",
        "--lr-schedule", "constant", "--model-opt", "batch_norm=false", "--data-opt", "image_size=32",
        "--data-opt", "num_train=8", "--data-opt", "num_val=5", "--device", "cpu"]


def read_metrics(folder):
    import json
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def assert_same_metrics(got, expected):
    """float32 training: the gradient averaged over 2 ranks rounds differently from the 2x batch's (1e-7)."""
    assert [r["epoch"] for r in got] == [r["epoch"] for r in expected]
    for a, b in zip(got, expected):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        for key in ("pixel_acc", "mean_acc", "miou"):
            assert a["val"][key] == pytest.approx(b["val"][key], abs=1e-4)


def train_cli(args, processes, timeout=180):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = ([] if processes == 1 else mpiexec_command()) + [sys.executable, "-m", "segnets.train"] + args
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def test_train_cli_on_two_processes_equals_one_with_twice_the_batch_and_resumes_on_one_or_two(tmp_path):
    needs_mpi()
    runs = {name: tmp_path / name for name in ("one", "two", "three", "resumed2", "resumed1")}
    for name, epochs, batch, processes in (("one", 3, 4, 1), ("two", 2, 2, 2), ("three", 3, 2, 2)):
        result = train_cli(TINY + ["--epochs", str(epochs), "--batch-size", str(batch), "--output-dir",
                                   str(runs[name])], processes)
        assert result.returncode == 0, result.stderr[-3000:]
    two = runs["two"]
    # every output once: one summary line per epoch (rank 1 prints nothing), one log line per epoch
    assert result.stdout.count("epoch 1/3 ") == 1 and result.stdout.count("epoch 3/3 ") == 1
    assert {"checkpoint_best.npz", "checkpoint_last.npz", "config.json", "metrics.jsonl",
            "predictions"} <= {p.name for p in two.iterdir()}
    assert not [p for p in two.rglob("*") if p.name.startswith(".") or p.suffix == ".tmp"]  # no leftovers
    assert sorted(p.name for p in (two / "predictions").iterdir()) == ["epoch_001.png", "epoch_002.png"]
    import json
    config = json.loads((two / "config.json").read_text())
    assert (config["world_size"], config["global_batch_size"], config["batch_size"]) == (2, 4, 2)
    assert_same_metrics(read_metrics(runs["three"]), read_metrics(runs["one"]))
    assert read_metrics(two)[1]["val"] == read_metrics(runs["three"])[1]["val"]  # same seed, same world: same run

    # on 2 processes again: bit for bit the uninterrupted 2-process run
    result = train_cli(["--resume", str(two / "checkpoint_last.npz"), "--epochs", "3", "--output-dir",
                        str(runs["resumed2"])], 2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "re-sharded" not in result.stdout
    for got, expected in zip(read_metrics(runs["resumed2"]), read_metrics(runs["three"])):
        assert (got["train_loss"], got["val"]) == (expected["train_loss"], expected["val"])

    # on 1 process: the weights and optimizer carry on, the data is re-sharded (global batch 2), and it says so
    single = runs["resumed1"]
    result = train_cli(["--resume", str(two / "checkpoint_last.npz"), "--epochs", "3", "--output-dir",
                        str(single)], 1)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resuming a run of 2 process(es) on 1" in result.stdout and "re-sharded" in result.stdout
    assert [r["epoch"] for r in read_metrics(single)] == [1, 2, 3]
    assert json.loads((single / "config.json").read_text())["world_size"] == 1


def test_train_cli_without_mpi4py_says_what_to_install(tmp_path):
    fake = tmp_path / "fake" / "mpi4py"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text("raise ImportError('no MPI here')\n")
    env = dict(os.environ, PYTHONPATH=f"{fake.parent}{os.pathsep}{ROOT}", PMI_SIZE="2", PMI_RANK="0")
    result = subprocess.run([sys.executable, "-m", "segnets.train"] + TINY + ["--output-dir", str(tmp_path / "o")],
                            capture_output=True, text=True, timeout=60, cwd=ROOT, env=env)
    assert result.returncode == 2
    assert "error: this launch of 2 processes needs mpi4py" in result.stderr
    assert 'pip install -e ".[mpi]"' in result.stderr and "Traceback" not in result.stderr


def test_a_backward_that_raises_runs_none_of_its_queued_callbacks():
    from minigrad.tensor import _end_callbacks
    x = minigrad.tensor([1.0, 2.0], requires_grad=True)
    ran = []

    def fail(t):
        queue_callback(lambda: ran.append(1))
        raise RuntimeError("hook failed")
    x.register_post_accumulate_grad_hook(fail)
    with pytest.raises(RuntimeError, match="hook failed"):
        (x * 2).sum().backward()
    assert not _end_callbacks and not ran


def test_ddp_averages_again_after_a_backward_that_raised_half_way(equal_results):
    net = worker.make_net(False)
    images, masks = worker.make_data()
    F.cross_entropy(net(minigrad.tensor(images[0])), minigrad.tensor(masks[0])).backward()
    np.testing.assert_allclose(equal_results["recovered/grad"], net.conv1.weight.grad.numpy(), rtol=1e-12, atol=1e-15)


def test_train_cli_refuses_distributed_none_under_a_multi_process_launch(tmp_path, monkeypatch, capsys):
    from segnets import train as train_mod
    monkeypatch.setenv("PMI_SIZE", "2")
    assert train_mod.main(TINY + ["--distributed", "none", "--output-dir", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "error: --distributed none, but the launcher started 2 processes" in err
    assert not (tmp_path / "o").exists()
