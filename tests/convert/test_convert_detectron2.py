"""detectron2 model-zoo .pkl -> parameter directory, on synthetic checkpoints with detectron2's key layout.

The layout below is written from detectron2's modeling code (ResNet BasicStem / BottleneckBlock with `.norm`
inside each conv, FPN fpn_lateral{2..5} / fpn_output{2..5}, StandardRPNHead, FastRCNNConvFCHead fc1/fc2,
FastRCNNOutputLayers with background last, MaskRCNNConvUpsampleHead mask_fcn{1..4} / deconv / predictor).
"""

import pickle

import numpy as np
import pytest

from maskprop_jax.convert import detectron2, params_io
from maskprop_jax.convert.__main__ import main
from maskprop_jax.errors import InputError
from maskprop_jax.model.mask_rcnn import abstract_mask_rcnn


def detectron2_layout(res_blocks=(3, 4, 6, 3), groups=1, width_per_group=64, num_classes=80):
  """name -> shape of a detectron2 Mask R-CNN FPN checkpoint."""
  shapes = {}

  def conv(name, out_c, in_c, k, norm=True, bias=False):
    shapes[f"{name}.weight"] = (out_c, in_c, k, k)
    if bias:
      shapes[f"{name}.bias"] = (out_c,)
    if norm:
      for stat in ("weight", "bias", "running_mean", "running_var"):
        shapes[f"{name}.norm.{stat}"] = (out_c,)

  conv("backbone.bottom_up.stem.conv1", 64, 3, 7)
  in_c, width = 64, groups * width_per_group
  for stage, blocks in enumerate(res_blocks):
    out_c = 256 * 2**stage
    for b in range(blocks):
      prefix = f"backbone.bottom_up.res{stage + 2}.{b}"
      if b == 0:
        conv(f"{prefix}.shortcut", out_c, in_c, 1)
      conv(f"{prefix}.conv1", width, in_c, 1)
      conv(f"{prefix}.conv2", width, width // groups, 3)
      conv(f"{prefix}.conv3", out_c, width, 1)
      in_c = out_c
    width *= 2
  for level, c in zip(range(2, 6), (256, 512, 1024, 2048)):
    conv(f"backbone.fpn_lateral{level}", 256, c, 1, norm=False, bias=True)
    conv(f"backbone.fpn_output{level}", 256, 256, 3, norm=False, bias=True)
  conv("proposal_generator.rpn_head.conv", 256, 256, 3, norm=False, bias=True)
  conv("proposal_generator.rpn_head.objectness_logits", 3, 256, 1, norm=False, bias=True)
  conv("proposal_generator.rpn_head.anchor_deltas", 12, 256, 1, norm=False, bias=True)
  shapes.update({
    "roi_heads.box_head.fc1.weight": (1024, 256 * 7 * 7), "roi_heads.box_head.fc1.bias": (1024,),
    "roi_heads.box_head.fc2.weight": (1024, 1024), "roi_heads.box_head.fc2.bias": (1024,),
    "roi_heads.box_predictor.cls_score.weight": (num_classes + 1, 1024),
    "roi_heads.box_predictor.cls_score.bias": (num_classes + 1,),
    "roi_heads.box_predictor.bbox_pred.weight": (num_classes * 4, 1024),
    "roi_heads.box_predictor.bbox_pred.bias": (num_classes * 4,),
    "roi_heads.mask_head.deconv.weight": (256, 256, 2, 2), "roi_heads.mask_head.deconv.bias": (256,),
  })
  for k in range(1, 5):
    conv(f"roi_heads.mask_head.mask_fcn{k}", 256, 256, 3, norm=False, bias=True)
  conv("roi_heads.mask_head.predictor", num_classes, 256, 1, norm=False, bias=True)
  return shapes


@pytest.fixture(scope="module")
def r50_pkl(tmp_path_factory):
  # Zeros everywhere (cheap), random values where the class reordering and layouts are checked.
  rng = np.random.default_rng(0)
  checked = ("cls_score", "bbox_pred", "fc1.weight", "predictor", "deconv.weight")
  weights = {name: (rng.standard_normal(shape) if any(c in name for c in checked) else np.zeros(shape)).astype(
    np.float32) for name, shape in detectron2_layout().items()}
  weights["pixel_mean"] = np.array([[[103.53]], [[116.28]], [[123.675]]], np.float32)
  path = tmp_path_factory.mktemp("d2") / "model_final.pkl"
  with open(path, "wb") as f:
    pickle.dump({"model": weights, "__author__": "Detectron2 Model Zoo"}, f)
  return str(path), weights


def test_variants_are_read_off_the_shapes():
  def shapes_only(**kw):
    layout = detectron2_layout(**kw)
    return {k: np.zeros(v, np.float32) for k, v in layout.items() if "res2.0.conv2" in k or ".res4." in k}

  assert detectron2.config_for_state_dict(shapes_only(), "x").variant == "detectron2_R_50_FPN"
  r101 = detectron2.config_for_state_dict(shapes_only(res_blocks=(3, 4, 23, 3)), "x")
  assert r101.variant == "detectron2_R_101_FPN" and r101.backbone.stride_in_1x1
  x101 = detectron2.config_for_state_dict(shapes_only(res_blocks=(3, 4, 23, 3), groups=32, width_per_group=8), "x")
  assert x101.variant == "detectron2_X_101_32x8d_FPN" and not x101.backbone.stride_in_1x1
  assert (x101.backbone.groups, x101.backbone.width_per_group) == (32, 8) and x101.input.std[0] == 57.375
  with pytest.raises(InputError, match="unsupported detectron2 backbone"):
    detectron2.config_for_state_dict(shapes_only(res_blocks=(3, 4, 36, 3)), "x")


def test_r50_converts_with_background_first(r50_pkl, tmp_path):
  path, weights = r50_pkl
  main(["detectron2", "--checkpoint", path, "--out", str(tmp_path / "out")])
  model, metadata = params_io.load_params(tmp_path / "out", abstract_mask_rcnn)
  cfg = metadata["config"]
  assert cfg.variant == "detectron2_R_50_FPN" and cfg.num_classes == 81 and cfg.input.channel_order == "BGR"
  assert cfg.roi_heads.aligned and cfg.backbone.stride_in_1x1 and not cfg.anchors.round_base_anchors
  assert metadata["category_ids"][:3] == [0, 1, 2] and metadata["category_ids"][80] == 90
  assert metadata["class_names"][80] == "toothbrush"

  predictor = model.roi_heads.box_predictor
  cls = weights["roi_heads.box_predictor.cls_score.weight"]
  np.testing.assert_array_equal(predictor.cls_score.kernel[...][:, 0], cls[80])  # background: last -> first
  np.testing.assert_array_equal(predictor.cls_score.kernel[...][:, 1], cls[0])
  bbox = np.asarray(predictor.bbox_pred.kernel[...])  # [1024, 81 * 4]
  assert not bbox[:, :4].any()
  np.testing.assert_array_equal(bbox[:, 4:8], weights["roi_heads.box_predictor.bbox_pred.weight"][:4].T)
  logits = np.asarray(model.roi_heads.mask_predictor.mask_fcn_logits.kernel[...])  # [1, 1, 256, 81]
  assert not logits[..., 0].any()
  np.testing.assert_array_equal(logits[0, 0, :, 5], weights["roi_heads.mask_head.predictor.weight"][4, :, 0, 0])
  fc1 = weights["roi_heads.box_head.fc1.weight"]
  ours = np.asarray(model.roi_heads.box_head.fc6.kernel[...]).reshape(7, 7, 256, 1024)
  np.testing.assert_array_equal(ours[6, 1, 200], fc1[:, 200 * 49 + 6 * 7 + 1])


def test_missing_and_misshapen_weights_are_listed(r50_pkl, tmp_path):
  _, weights = r50_pkl
  broken = dict(weights)
  del broken["backbone.bottom_up.res3.1.conv2.norm.running_var"]
  broken["roi_heads.box_head.fc2.weight"] = np.zeros((512, 1024), np.float32)
  path = tmp_path / "broken.pkl"
  with open(path, "wb") as f:
    pickle.dump({"model": broken}, f)
  with pytest.raises(InputError) as error:
    detectron2.convert_checkpoint(path)
  message = str(error.value)
  assert "missing keys (torchvision names) (1): backbone.body.layer2.1.bn2.running_var" in message
  assert "roi_heads.box_head.fc2.weight (512, 1024) (expected (1024, 1024))" in message


def test_pickles_that_run_code_are_refused(tmp_path):
  path = tmp_path / "evil.pkl"
  with open(path, "wb") as f:
    pickle.dump({"model": {"x": print}}, f)
  with pytest.raises(InputError, match="refusing to load builtins.print"):
    detectron2.load_pkl(path)
