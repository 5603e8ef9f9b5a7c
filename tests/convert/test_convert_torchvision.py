"""torchvision .pth -> parameter directory: layouts, legacy keys, error listings and the CLI."""

import json
import os

import numpy as np
import pytest
from flax import nnx

from maskprop_jax.convert import params_io
from maskprop_jax.convert.__main__ import main
from maskprop_jax.convert.torchvision import config_for_state_dict, upgrade_legacy_keys
from maskprop_jax.errors import InputError
from maskprop_jax.model.mask_rcnn import abstract_mask_rcnn

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
  from maskprop_jax.convert.parity import random_torchvision_model

  model = random_torchvision_model("maskrcnn_resnet50_fpn", seed=3, min_size=64, max_size=96, tiny=True)
  path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
  state = model.state_dict()
  torch.save(state, path)
  return str(path), {k: v.numpy() for k, v in state.items()}


def test_legacy_keys_are_upgraded():
  old = {k: np.zeros(1) for k in ("rpn.head.conv.weight", "backbone.fpn.inner_blocks.2.bias",
                                   "roi_heads.mask_head.mask_fcn4.weight", "backbone.body.conv1.weight")}
  assert set(upgrade_legacy_keys(old)) == {"rpn.head.conv.0.0.weight", "backbone.fpn.inner_blocks.2.0.bias",
                                           "roi_heads.mask_head.3.0.weight", "backbone.body.conv1.weight"}


def test_frozen_bn_checkpoints_get_torchvision_coco_eps(tiny_checkpoint):
  _, state = tiny_checkpoint
  assert config_for_state_dict(state, "x").backbone.bn_eps == 1e-5  # BatchNorm2d: has num_batches_tracked
  frozen = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
  cfg = config_for_state_dict(frozen, "x")
  assert cfg.backbone.bn_eps == 0.0 and cfg.backbone.stage_blocks == (1, 1, 1, 1)
  assert config_for_state_dict(frozen, "x", bn_eps=1e-3).backbone.bn_eps == 1e-3


def test_cli_converts_and_layouts_are_torch_transposed(tiny_checkpoint, tmp_path, capsys):
  path, state = tiny_checkpoint
  main(["torchvision", "--checkpoint", path, "--out", str(tmp_path / "out")])
  assert "maskrcnn_resnet50_fpn (91 classes)" in capsys.readouterr().out
  model, metadata = params_io.load_params(tmp_path / "out", abstract_mask_rcnn)
  assert metadata["class_names"][1] == "person" and metadata["category_ids"][90] == 90
  conv = state["backbone.body.layer2.0.conv2.weight"]
  np.testing.assert_array_equal(model.backbone.body.layer2[0].conv2.kernel[...], conv.transpose(2, 3, 1, 0))
  fc6 = state["roi_heads.box_head.fc6.weight"]  # columns in (C, 7, 7) order -> rows in (7, 7, C) order
  ours = np.asarray(model.roi_heads.box_head.fc6.kernel[...]).reshape(7, 7, 256, -1)
  np.testing.assert_array_equal(ours[2, 5, 7], fc6[:, 7 * 49 + 2 * 7 + 5])
  bn = model.backbone.body.bn1
  np.testing.assert_array_equal(bn.running_var[...], state["backbone.body.bn1.running_var"])
  assert not nnx.state(model, nnx.Param)["backbone"]["body"].get("bn1")


def test_mismatched_checkpoint_lists_every_problem(tiny_checkpoint, tmp_path):
  _, state = tiny_checkpoint
  broken = {k: torch.from_numpy(v) for k, v in state.items() if k != "rpn.head.cls_logits.bias"}
  broken["roi_heads.extra.weight"] = torch.zeros(3)
  broken["backbone.fpn.layer_blocks.0.0.weight"] = torch.zeros(256, 256, 1, 1)
  path = tmp_path / "broken.pth"
  torch.save(broken, path)
  with pytest.raises(InputError) as error:
    main.__wrapped__(["torchvision", "--checkpoint", str(path), "--out", str(tmp_path / "out")])
  message = str(error.value)
  assert str(path) in message
  assert "missing keys (1): rpn.head.cls_logits.bias" in message
  assert "unexpected keys (1): roi_heads.extra.weight" in message
  assert "backbone.fpn.layer_blocks.0.0.weight (256, 256, 1, 1) (expected (256, 256, 3, 3))" in message
  assert not (tmp_path / "out").exists()


def test_cli_reports_unreadable_checkpoint_without_traceback(tmp_path, capsys):
  path = tmp_path / "garbage.pth"
  path.write_bytes(b"not a checkpoint")
  with pytest.raises(SystemExit) as exit_info:
    main(["torchvision", "--checkpoint", str(path), "--out", str(tmp_path / "out")])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert "garbage.pth: not a readable PyTorch checkpoint" in err and "Traceback" not in err


def test_parameter_directory_without_metadata_is_rejected(tmp_path):
  with pytest.raises(InputError, match="no model.json"):
    params_io.load_params(tmp_path, abstract_mask_rcnn)
  (tmp_path / "model.json").write_text(json.dumps({"format": "other"}))
  with pytest.raises(InputError, match="not a maskprop_jax"):
    params_io.read_metadata(tmp_path)
  assert os.path.exists(tmp_path / "model.json")
