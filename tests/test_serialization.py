"""minigrad.save / minigrad.load: round trips, no pickle, atomic writes, corrupt files."""
import os
from collections import OrderedDict

import numpy as np
import pytest

import minigrad
from minigrad import nn, serialization


def _nested():
    return {
        "model": OrderedDict([("conv.weight", minigrad.Tensor(np.arange(6, dtype=np.float32).reshape(2, 3))),
                              ("bn.num_batches_tracked", minigrad.Tensor(np.array(7, dtype=np.int64)))]),
        "optimizer": {"state": {0: {"step": 3, "exp_avg": minigrad.Tensor(np.ones(2))}},
                      "param_groups": [{"lr": 0.1, "betas": (0.9, 0.999), "params": [0, 1]}]},
        "array": np.array([[1.5, -2.0]], dtype=np.float64),
        "int8": np.array([1, -2], dtype=np.int8),
        "epoch": 12, "best": 0.75, "nan": float("nan"), "name": "fcn8s", "none": None, "flag": True,
        "np_scalar": np.float32(2.5), "history": [1, [2.0, "x"], (3, 4)],
    }


def test_round_trip_keeps_types_values_and_order(tmp_path):
    path = tmp_path / "ckpt.npz"
    minigrad.save(_nested(), path)
    back = minigrad.load(path)

    weight = back["model"]["conv.weight"]
    assert isinstance(weight, minigrad.Tensor) and weight.dtype == np.float32 and weight.device == "cpu"
    np.testing.assert_array_equal(weight.numpy(), np.arange(6).reshape(2, 3))
    assert list(back["model"]) == ["conv.weight", "bn.num_batches_tracked"]
    assert back["model"]["bn.num_batches_tracked"].dtype == np.int64
    assert back["model"]["bn.num_batches_tracked"].item() == 7
    assert list(back["optimizer"]["state"]) == [0]  # int keys stay ints
    assert back["optimizer"]["state"][0]["step"] == 3
    assert back["optimizer"]["param_groups"][0]["betas"] == (0.9, 0.999)
    assert isinstance(back["array"], np.ndarray) and back["array"].dtype == np.float64
    np.testing.assert_array_equal(back["array"], [[1.5, -2.0]])
    assert back["int8"].dtype == np.int8
    assert (back["epoch"], back["best"], back["name"], back["none"], back["flag"]) == (12, 0.75, "fcn8s", None, True)
    assert np.isnan(back["nan"])
    assert back["np_scalar"] == np.float32(2.5) and back["np_scalar"].dtype == np.float32
    assert back["history"] == [1, [2.0, "x"], (3, 4)]


def test_file_is_plain_npz_without_pickle(tmp_path):
    path = tmp_path / "ckpt.npz"
    minigrad.save(_nested(), path)
    with np.load(path, allow_pickle=False) as npz:
        assert "__structure__" in npz.files
        assert all(npz[name].dtype != object for name in npz.files)


def test_written_exactly_at_path_without_temp_leftovers(tmp_path):
    path = tmp_path / "model.ckpt"
    minigrad.save({"x": 1}, str(path))
    assert sorted(os.listdir(tmp_path)) == ["model.ckpt"]
    assert minigrad.load(str(path)) == {"x": 1}


@pytest.mark.skipif(os.name != "posix", reason="POSIX permission bits")
@pytest.mark.parametrize("umask", [0o022, 0o027, 0o002])
def test_written_with_the_mode_of_any_new_file(tmp_path, umask):
    """0666 minus the umask at write time, like open(): not the 0600 of a mkstemp temp file."""
    from segnets.checkpoint import save_checkpoint
    previous = os.umask(umask)
    try:
        minigrad.save({"x": 1}, tmp_path / "state.npz")
        save_checkpoint(tmp_path / "checkpoint.npz", {"epoch": 1}, {"w": np.ones(2)})
        (tmp_path / "plain").write_text("")
    finally:
        os.umask(previous)
    for name in ("state.npz", "checkpoint.npz", "plain"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_module_state_dict_round_trip(tmp_path):
    minigrad.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm2d(4))
    model[1].running_mean.data[:] = [1, 2, 3, 4]
    minigrad.save(model.state_dict(), tmp_path / "m.npz")
    minigrad.manual_seed(1)
    other = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm2d(4))
    other.load_state_dict(minigrad.load(tmp_path / "m.npz"))
    for (name, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items()):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=name)


def test_failing_write_leaves_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    minigrad.save({"version": 1, "w": np.ones(3)}, path)

    def crash(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(serialization.np, "savez", crash)
    with pytest.raises(OSError, match="disk full"):
        minigrad.save({"version": 2, "w": np.zeros(3)}, path)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]  # the temp file was removed
    assert minigrad.load(path)["version"] == 1


def test_crash_before_rename_leaves_old_file_intact(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    minigrad.save({"version": 1}, path)
    monkeypatch.setattr(serialization.os, "replace", lambda *a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        minigrad.save({"version": 2}, path)
    monkeypatch.undo()
    assert minigrad.load(path) == {"version": 1}
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty", "flip"])
def test_corrupt_file_raises_error_naming_path(tmp_path, damage):
    path = tmp_path / "ckpt.npz"
    minigrad.save({"w": np.arange(1000, dtype=np.float32)}, path)
    data = path.read_bytes()
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = b"not a checkpoint at all"
    elif damage == "empty":
        data = b""
    else:  # flip bytes inside the array data: the zip CRC check catches it
        middle = len(data) // 2
        data = data[:middle] + bytes(b ^ 0xFF for b in data[middle:middle + 16]) + data[middle + 16:]
    path.write_bytes(data)
    with pytest.raises(RuntimeError, match="ckpt.npz.*truncated or corrupt"):
        minigrad.load(path)


def test_file_of_another_format_version_is_rejected(tmp_path):
    path = tmp_path / "ckpt.npz"
    structure = '{"format": "minigrad-npz-2", "root": {"array": "a0"}}'
    np.savez(path, a0=np.ones(2), __structure__=np.array(structure))
    with pytest.raises(RuntimeError, match="ckpt.npz.*unknown format 'minigrad-npz-2'"):
        minigrad.load(path)


def test_segnets_checkpoint_of_another_version_is_refused(tmp_path):
    from segnets import checkpoint
    path = tmp_path / "checkpoint.npz"
    meta = {"model": {"name": "fcn8s"}, "classes": ["a"], "mean": [0.0], "std": [1.0], "ignore_index": 255}
    checkpoint.save_checkpoint(path, meta, {"w": np.ones(2)})
    assert checkpoint.load_checkpoint(path)["meta"]["version"] == checkpoint.VERSION
    payload = minigrad.load(path)
    payload["meta"] = payload["meta"].replace(f'"version": {checkpoint.VERSION}', f'"version": {checkpoint.VERSION + 1}')
    minigrad.save(payload, path)
    with pytest.raises(checkpoint.CheckpointError, match=f"version {checkpoint.VERSION + 1}, this code reads"):
        checkpoint.load_checkpoint(path)


def test_npz_without_structure_is_rejected(tmp_path):
    path = tmp_path / "plain.npz"
    np.savez(path, x=np.ones(2))
    with pytest.raises(RuntimeError, match="plain.npz"):
        minigrad.load(path)


def test_missing_file_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        minigrad.load(tmp_path / "nope.npz")


def test_unsupported_type_names_where_it_is(tmp_path):
    with pytest.raises(TypeError, match=r"obj\['model'\]\['bad'\] of type object"):
        minigrad.save({"model": {"bad": object()}}, tmp_path / "x.npz")
    with pytest.raises(TypeError, match="dtype object"):
        minigrad.save({"bad": np.array([None])}, tmp_path / "x.npz")
    assert not os.listdir(tmp_path)


@pytest.mark.gpu
def test_gpu_tensors_save_to_host_and_load_on_either_device(tmp_path):
    if not minigrad.gpu_available():
        pytest.skip("needs CuPy and a GPU")
    path = tmp_path / "g.npz"
    minigrad.save({"w": minigrad.Tensor(np.arange(4.0), device="gpu")}, path)
    assert minigrad.load(path)["w"].device == "cpu"
    on_gpu = minigrad.load(path, device="gpu")["w"]
    assert on_gpu.device == "gpu"
    np.testing.assert_array_equal(on_gpu.numpy(), np.arange(4.0))
