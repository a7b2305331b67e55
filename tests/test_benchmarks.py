"""The benchmark harness runs end to end (--quick, CPU) and writes complete results.

Nothing here is timed: CI only checks that every case still runs, that minigrad
and PyTorch still agree on it, and that the JSON/Markdown outputs have their fields.
"""
import json
import os
import subprocess
import time
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import require_torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(ROOT))


@pytest.fixture(scope="module")
def quick_results(tmp_path_factory):
    """One `--quick` run of both suites in a fresh process, written to a temporary directory."""
    require_torch()
    out = tmp_path_factory.mktemp("bench")
    # one thread each: quick and kind to a shared machine; the harness still reads and matches it
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.run", "--device", "cpu", "--suite", "all", "--quick",
         "--output-dir", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    files = sorted(out.iterdir())
    return done, files


def _load(files, suffix):
    matches = [f for f in files if f.name.endswith(suffix)]
    assert len(matches) == 1, f"expected one *{suffix} file, got {[f.name for f in files]}"
    return matches[0]


@pytest.mark.torch
def test_quick_run_succeeds_and_names_its_files(quick_results):
    done, files = quick_results
    assert done.returncode == 0, f"stdout:\n{done.stdout[-3000:]}\nstderr:\n{done.stderr[-3000:]}"
    assert _load(files, "-quick.json").name.startswith("cpu-")
    assert _load(files, "-quick.md").name.startswith("cpu-")


@pytest.mark.torch
def test_json_has_machine_and_every_field(quick_results):
    _, files = quick_results
    results = json.loads(_load(files, ".json").read_text())
    assert results["device"] == "cpu" and results["quick"] is True and results["errors"] == 0
    assert results["settings"]["env"]["OMP_NUM_THREADS"] == "1"
    machine = results["machine"]
    for key in ("cpu", "cores", "numpy", "numpy_blas", "torch", "torch_blas", "threads"):
        assert machine[key], key
    assert machine["threads"]["threads"] == machine["threads"]["torch_threads"] == 1

    ops = results["ops"]["rows"]
    assert {r["op"] for r in ops} == {"conv2d", "conv_transpose2d", "max_pool2d", "max_unpool2d",
                                      "batch_norm", "cross_entropy"}
    for row in ops:
        assert row["mode"] in ("forward", "forward+backward")
        for key in ("minigrad_ms", "torch_ms", "ratio", "minigrad_gbps", "max_rel_diff", "shapes"):
            assert key in row, (row["case"], key)
        assert row["minigrad_ms"] > 0 and row["torch_ms"] > 0
        if row["op"].startswith("conv"):
            assert row["minigrad_gflops"] > 0 and 0 < row["matmul_gflops"]
            assert row["minigrad_of_matmul"] == pytest.approx(row["minigrad_gflops"] / row["matmul_gflops"])
    # every case is compared against PyTorch: outputs forward, gradients forward+backward
    assert all(row["max_rel_diff"] for row in ops)
    assert all(k.startswith("grad_") for row in ops if row["mode"] != "forward" for k in row["max_rel_diff"])

    models = results["models"]
    assert [r["net"] for r in models["rows"]] == ["fcn32s", "fcn16s", "fcn8s", "deconvnet", "unet"]
    for row in models["rows"]:
        for key in ("minigrad_ms", "torch_ms", "ratio", "minigrad_img_s", "torch_img_s", "loss_rel_diff",
                    "grad_rel_diff", "worst_grad_rel_diff", "float64", "params", "input", "options"):
            assert key in row, (row["net"], key)
        assert set(row["peak_mb"]) == {"minigrad", "torch"}
        assert all(v is not None and v > 0 for v in row["peak_mb"].values()), row["peak_mb"]


@pytest.mark.torch
def test_minigrad_agrees_with_pytorch_in_the_quick_run(quick_results):
    """Same weights, same inputs: float32 results agree to rounding (a loose bound; CI times nothing)."""
    _, files = quick_results
    results = json.loads(_load(files, ".json").read_text())
    worst_op = max(v for row in results["ops"]["rows"] for v in row["max_rel_diff"].values())
    assert worst_op < 1e-3
    for row in results["models"]["rows"]:
        assert row["loss_rel_diff"] < 1e-4, row["net"]
        # float32 gradients through DeconvNet's BatchNorm stack differ by rounding (percents);
        # float64 shows the two nets compute the same function
        assert row["float64"]["loss_rel_diff"] < 1e-12, row["net"]
        assert row["float64"]["grad_rel_diff"] < 1e-8, (row["net"], row["float64"])
        assert row["float64"]["worst_grad_rel_diff"]["value"] < 1e-6, (row["net"], row["float64"])


@pytest.mark.torch
def test_markdown_has_both_tables(quick_results):
    _, files = quick_results
    text = _load(files, ".md").read_text()
    assert "### Ops" in text and "### Models" in text and "Machine:" in text
    assert "| conv2d |" in text and "| unet |" in text and "ERROR" not in text


@pytest.mark.torch
def test_cpu_runs_import_nothing_gpu_specific():
    require_torch()
    code = ("import sys; from benchmarks import run, ops, models, torch_nets; "
            "from benchmarks.common import Context; Context('cpu', quick=True); "
            "loaded = [m for m in sys.modules if m.split('.')[0] in ('cupy', 'cupyx')]; "
            "assert not loaded, loaded")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


# ----------------------------------------------------------------------------- the pieces, by hand
def test_max_rel_diff_is_relative_to_the_reference_scale():
    from benchmarks.common import max_rel_diff

    assert max_rel_diff([1.0, 2.0, -4.0], [1.0, 2.0, -4.0]) == 0.0
    assert max_rel_diff([1.0, 2.5, -4.0], [1.0, 2.0, -4.0]) == pytest.approx(0.5 / 4.0)
    assert max_rel_diff([0.1], [0.0]) == pytest.approx(0.1)  # all-zero reference: absolute difference
    with pytest.raises(ValueError, match="shapes differ"):
        max_rel_diff(np.zeros((2, 3)), np.zeros((3, 2)))


@pytest.mark.torch
def test_thread_count_matches_minigrads():
    torch = require_torch()
    from benchmarks.common import match_threads, minigrad_threads

    n, source = minigrad_threads()
    assert n >= 1 and source
    before = torch.get_num_threads()
    try:
        assert match_threads(torch)["torch_threads"] == n == torch.get_num_threads()
    finally:
        torch.set_num_threads(before)  # other tests choose their own


def test_openblas_thread_count_can_be_set_and_read_back():
    from benchmarks.common import openblas_threads, set_openblas_threads

    before = openblas_threads()
    if before is None:
        pytest.skip("NumPy is not linked to an OpenBLAS we can find (another BLAS)")
    try:
        assert set_openblas_threads(1) and openblas_threads() == 1
    finally:
        set_openblas_threads(before)
    assert openblas_threads() == before


def test_conv_flops_and_gemm_shape_by_hand():
    from benchmarks import ops

    conv = ops._conv(ops.FULL, "t", 64, 128, 3, 10, 1)  # (2, 64, 10, 10) -> (2, 128, 10, 10)
    assert conv.gemm == (128, 64 * 9, 2 * 100)
    forward, both = ops._flops(conv)
    assert forward == 2 * 128 * 64 * 9 * 200 and both == 3 * forward
    first = ops._conv(ops.FULL, "t", 3, 64, 3, 10, 1, input_grad=False)  # no input gradient: 2x
    assert ops._flops(first)[1] == 2 * ops._flops(first)[0]
    up = ops._deconv(ops.FULL, "t", 21, 21, 4, 2, 5, bias=False)
    assert up.gemm == (21 * 16, 21, 2 * 25) and "bias" not in up.shapes


def test_pool_indices_point_into_their_own_window():
    from benchmarks import ops

    idx = ops._pool_indices(np.random.default_rng(0), {"x": (2, 3, 4, 5)})
    rows, cols = np.divmod(idx, 10)  # the unpooled map is 8 x 10
    assert np.array_equal(rows // 2, np.broadcast_to(np.arange(4)[:, None], (2, 3, 4, 5)))
    assert np.array_equal(cols // 2, np.broadcast_to(np.arange(5)[None, :], (2, 3, 4, 5)))


@pytest.mark.torch
def test_torch_twins_keep_the_input_size():
    torch = require_torch()
    from benchmarks import models, torch_nets

    size = models.SIZES["tiny"]
    for net in models.NETS:
        options, side = models.net_config(net, size)
        model = torch_nets.build(net, 21, 3, size.width, **options).eval()
        with torch.no_grad():
            assert model(torch.zeros(2, 3, side, side)).shape == (2, 21, side, side), net


@pytest.mark.torch
def test_fcn_pad100_crops_match_caffe_offsets():
    """FCN-8s with pad100 at 224 gives 224 back, with Caffe's crop offsets 5, 9, 31."""
    torch = require_torch()
    from benchmarks import torch_nets

    model = torch_nets.build("fcn8s", 21, 3, 4, pad100=True, fc_kernel=7).eval()
    assert model._offsets() == (5, 9, 31)
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 21, 224, 224)


def test_readme_has_the_block_run_py_updates():
    from benchmarks.run import README, README_BLOCK

    assert README_BLOCK.search(Path(README).read_text())


def test_profile_step_charges_every_op_and_restores_result(capsys):
    """benchmarks.profile_step on CPU: conv2d leads FCN-8s's table, and the patch is undone afterwards."""
    import minigrad.tensor  # noqa: F401
    from benchmarks import profile_step
    original = sys.modules["minigrad.tensor"]._result
    profile_step.profile("fcn8s", "tiny", "cpu", steps=1)
    text = capsys.readouterr().out
    rows = {line.split()[0]: line.split() for line in text.splitlines()
            if line.startswith("  ") and line.split()[1].isdigit()}
    assert {"conv2d", "conv_transpose2d", "max_pool2d", "cross_entropy", "relu"} <= rows.keys(), text
    assert int(rows["conv2d"][1]) == 18 and float(rows["conv2d"][2]) > 0 and float(rows["conv2d"][3]) > 0
    shares = [float(r[4].rstrip("%")) for r in rows.values()]
    assert abs(sum(shares) - 100) < 0.5
    assert sys.modules["minigrad.tensor"]._result is original
    from minigrad.functional import conv
    assert conv._result is original


def test_result_files_name_the_thread_count_and_never_overwrite_an_earlier_run(tmp_path, monkeypatch):
    from benchmarks import report
    from benchmarks.run import output_stem, parse_args, write
    monkeypatch.setattr(report, "markdown", lambda results: f"table {results['run']}")
    assert output_stem(parse_args(["--device", "cpu", "--threads", "1"]), "2026-11-30") == "cpu-2026-11-30-1thread"
    assert output_stem(parse_args(["--device", "cpu", "--suite", "ops"]), "2026-11-30") == "cpu-2026-11-30-ops"
    first = write({"run": 1}, str(tmp_path), "cpu-x")
    second = write({"run": 2}, str(tmp_path), "cpu-x")
    assert [os.path.basename(p) for p in first] == ["cpu-x.json", "cpu-x.md"]
    assert [os.path.basename(p) for p in second] == ["cpu-x-2.json", "cpu-x-2.md"]
    assert json.loads(Path(first[0]).read_text()) == {"run": 1} and Path(first[1]).read_text() == "table 1"


def test_distributed_results_never_overwrite_an_earlier_run(tmp_path, monkeypatch):
    """benchmarks.distributed names its files as benchmarks.run does: -2, -3, ... after an earlier run's."""
    from benchmarks import distributed
    monkeypatch.setattr(distributed, "HERE", tmp_path)
    (tmp_path / "results").mkdir()
    row = dict(net="unet", size="tiny", params_m=0.1, global_batch=2, buckets=0, step_ms=1.0, images_per_second=2.0,
               allreduce_wait_ms=0.0, allreduce_wait_share=0.0)
    monkeypatch.setattr(distributed, "launch", lambda *a, **k: dict(row))
    args = distributed.argparse.Namespace(nets=["unet"], size="tiny", steps=1, global_batch=2, overlap_bucket_mb=1.0)
    distributed.compare(args)
    distributed.compare(args)
    names = sorted(p.name for p in (tmp_path / "results").iterdir())
    stamp = distributed.time.strftime("%Y-%m-%d")
    assert names == sorted([f"distributed-cpu-{stamp}.json", f"distributed-cpu-{stamp}.md",
                            f"distributed-cpu-{stamp}-2.json", f"distributed-cpu-{stamp}-2.md"])


def test_conv_layers_records_each_conv_of_a_step_and_times_both_libraries(capsys):
    """benchmarks.conv_layers: the recorded calls are the step's conv2d calls (U-Net tiny: 2 per level and
    the 1x1 classifier), and the table has one row per distinct layer plus the total."""
    require_torch()
    from benchmarks import conv_layers
    calls = conv_layers.record_convs("unet", "tiny")
    assert len(calls) == 19 and calls[-1][1][2:] == (1, 1)      # 9 levels x 2 convs + the 1x1 classifier
    conv_layers.main(["--net", "unet", "--size", "tiny", "--threads", "1", "--repeats", "1"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    assert len(rows) == 1 + len(set(calls)) + 1 and rows[-1].startswith("| all |")   # header, layers, total


def test_thread_ceiling_speed_up_is_n_times_one_threads_time_over_n_threads():
    """With a 'kernel' that only sleeps (the GIL released, as the compiled loop releases it), n
    threads take one thread's time for n times the work: the speed-up must come out near n."""
    from benchmarks.thread_ceiling import main, speed_up
    one, many, up = speed_up(3, 0.05, lambda data, seconds: time.sleep(seconds), None)
    assert one >= 0.05 and many >= 0.05
    # above 3 only by the sleeps' jitter (one thread's 52.1 ms against three threads' 52.0 ms gave 3.006)
    assert 2.4 < up < 3.3, (one, many, up)
    assert up == pytest.approx(3 * one / many)
    with pytest.raises(SystemExit) as exit_info:   # argparse's error: exit 2, no traceback
        main(["--threads", "0"])
    assert exit_info.value.code == 2
