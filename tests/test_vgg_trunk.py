"""tools/vgg_trunk.py: an FCN-8s trunk onto DeepLab-LargeFOV / SegNet through --init-weights."""
import numpy as np
import pytest

from segnets import build_model
from segnets.checkpoint import CheckpointError
from segnets.run import load_initial_weights
from tools.vgg_trunk import main, trunk_state


def test_fcn8s_trunk_loads_onto_largefov_and_segnet(tmp_path, capsys):
    fcn = build_model("fcn8s", 6, width=2, pad100=False, fc_kernel=1)
    full = tmp_path / "fcn8s.npz"
    np.savez(full, **{k: v.numpy() for k, v in fcn.state_dict().items()})
    lfov = build_model("deeplabv1_largefov", 6, width=2, fc6_dilation=2)
    with pytest.raises(CheckpointError, match="fc6"):  # FCN's 1x1 fc6 is not LargeFOV's 3x3 atrous one
        load_initial_weights(lfov, full)
    trunk = tmp_path / "trunk.npz"
    main([str(full), str(trunk)])
    assert "26 tensors (13 of" in capsys.readouterr().out  # 13 convs x (weight, bias); fc6/fc7/scores dropped
    fc6_before = lfov.fc6.weight.numpy().copy()
    missing = load_initial_weights(lfov, trunk)
    assert sorted(missing) == sorted(f"fc{i}.{p}" for i in (6, 7, 8) for p in ("weight", "bias"))
    np.testing.assert_array_equal(lfov.conv5_3.weight.numpy(), fcn.conv5_3.weight.numpy())
    np.testing.assert_array_equal(lfov.conv1_1.bias.numpy(), fcn.conv1_1.bias.numpy())
    np.testing.assert_array_equal(lfov.fc6.weight.numpy(), fc6_before)
    segnet = build_model("segnet", 6, width=2)
    missing = load_initial_weights(segnet, trunk)
    np.testing.assert_array_equal(segnet.conv4_2.weight.numpy(), fcn.conv4_2.weight.numpy())
    assert "bn4_2.weight" in missing and "conv4_2_D.weight" in missing and "conv4_2.weight" not in missing


def test_trunk_state_keeps_only_the_13_convs():
    state = {"conv1_1.weight": np.ones(1), "conv5_3.bias": np.ones(1), "conv5_3_D.weight": np.ones(1),
             "bn1_1.weight": np.ones(1), "fc6.weight": np.ones(1), "conv6_1.weight": np.ones(1)}
    assert sorted(trunk_state(state)) == ["conv1_1.weight", "conv5_3.bias"]


def test_bad_files_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "missing.npz"), str(tmp_path / "out.npz")])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err
    np.savez(tmp_path / "heads.npz", **{"fc6.weight": np.ones((2, 2, 1, 1), np.float32)})
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "heads.npz"), str(tmp_path / "out.npz")])
    assert e.value.code == 2 and "no VGG16 convs" in capsys.readouterr().err
    assert not (tmp_path / "out.npz").exists()
