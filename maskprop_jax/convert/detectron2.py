"""detectron2 model-zoo Mask R-CNN FPN checkpoints (.pkl: R50, R101, X101-32x8d) -> torchvision key names.

detectron2 builds the same network as torchvision's maskrcnn_resnet50_fpn with other names and conventions:
  backbone.bottom_up.stem.conv1(.norm)             -> backbone.body.conv1 / bn1
  backbone.bottom_up.res{2..5}.{b}.conv{k}(.norm)  -> backbone.body.layer{1..4}.{b}.conv{k} / bn{k}
  ....shortcut(.norm)                              -> ....downsample.0 / .1
  backbone.fpn_lateral{2..5} / fpn_output{2..5}    -> backbone.fpn.inner_blocks.{0..3}.0 / layer_blocks.{0..3}.0
  proposal_generator.rpn_head.conv / objectness_logits / anchor_deltas -> rpn.head.conv.0.0 / cls_logits / bbox_pred
  roi_heads.box_head.fc1 / fc2                     -> roi_heads.box_head.fc6 / fc7
  roi_heads.box_predictor.cls_score                -> same, background moved from the last row to the first
  roi_heads.box_predictor.bbox_pred (80 classes)   -> same, with zero deltas for background in front
  roi_heads.mask_head.mask_fcn{1..4}               -> roi_heads.mask_head.{0..3}.0
  roi_heads.mask_head.deconv / predictor (80)      -> roi_heads.mask_predictor.conv5_mask / mask_fcn_logits (+bg)
The rest (BGR 0..255 input, stride in the 1x1 conv for MSRA backbones, RoIAlignV2 with aligned=True and adaptive
sampling, unrounded anchors) is configuration: `config_for_state_dict` picks the matching variant.
"""

from __future__ import annotations

import os
import pickle
import re
from typing import Mapping

import ml_collections
import numpy as np

from maskprop_jax.convert.coco_categories import contiguous_labels
from maskprop_jax.convert.torchvision import state_dict_to_params
from maskprop_jax.errors import InputError
from maskprop_jax.model.config import mask_rcnn_config
from maskprop_jax.model.mask_rcnn import abstract_mask_rcnn, box_head_flatten_inputs

_RENAMES = (
  (r"^backbone\.bottom_up\.stem\.conv1\.norm\.", "backbone.body.bn1."),
  (r"^backbone\.bottom_up\.stem\.conv1\.", "backbone.body.conv1."),
  (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.norm\.", lambda m: f"{_layer(m)}.downsample.1."),
  (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.shortcut\.", lambda m: f"{_layer(m)}.downsample.0."),
  (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.norm\.", lambda m: f"{_layer(m)}.bn{m[3]}."),
  (r"^backbone\.bottom_up\.res(\d)\.(\d+)\.conv(\d)\.", lambda m: f"{_layer(m)}.conv{m[3]}."),
  (r"^backbone\.fpn_lateral(\d)\.", lambda m: f"backbone.fpn.inner_blocks.{int(m[1]) - 2}.0."),
  (r"^backbone\.fpn_output(\d)\.", lambda m: f"backbone.fpn.layer_blocks.{int(m[1]) - 2}.0."),
  (r"^proposal_generator\.rpn_head\.conv\.", "rpn.head.conv.0.0."),
  (r"^proposal_generator\.rpn_head\.objectness_logits\.", "rpn.head.cls_logits."),
  (r"^proposal_generator\.rpn_head\.anchor_deltas\.", "rpn.head.bbox_pred."),
  (r"^roi_heads\.box_head\.fc1\.", "roi_heads.box_head.fc6."),
  (r"^roi_heads\.box_head\.fc2\.", "roi_heads.box_head.fc7."),
  (r"^roi_heads\.mask_head\.mask_fcn(\d)\.", lambda m: f"roi_heads.mask_head.{int(m[1]) - 1}.0."),
  (r"^roi_heads\.mask_head\.deconv\.", "roi_heads.mask_predictor.conv5_mask."),
  (r"^roi_heads\.mask_head\.predictor\.", "roi_heads.mask_predictor.mask_fcn_logits."),
)
_RENAMES = tuple((re.compile(pattern), replacement) for pattern, replacement in _RENAMES)
# Stored beside the weights by detectron2; read into the config instead of the parameters.
_INPUT_STATISTICS = ("pixel_mean", "pixel_std")


def _layer(match: re.Match) -> str:
  return f"backbone.body.layer{int(match[1]) - 1}.{match[2]}"


class _ArraysOnlyUnpickler(pickle.Unpickler):
  """Unpickles dicts of NumPy arrays and nothing else: a .pkl must not be able to run code."""

  ALLOWED = {
    ("collections", "OrderedDict"),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
  }

  def find_class(self, module, name):
    if (module, name) not in self.ALLOWED:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
    return super().find_class(module, name)


def load_pkl(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """The weights of a detectron2 .pkl: {"model": {name: array}, ...} or a bare {name: array}."""
  if not os.path.isfile(path):
    raise InputError(f"{path}: no such checkpoint file")
  try:
    with open(path, "rb") as f:
      obj = _ArraysOnlyUnpickler(f, encoding="latin1").load()
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
    raise InputError(f"{path}: not a detectron2 .pkl of NumPy arrays ({e})") from e
  if isinstance(obj, Mapping) and isinstance(obj.get("model"), Mapping):
    obj = obj["model"]
  if not isinstance(obj, Mapping) or not obj:
    raise InputError(f"{path}: expected a dict of weights, got {type(obj).__name__}")
  weights = {}
  for name, value in obj.items():
    if not isinstance(value, np.ndarray):
      raise InputError(f"{path}: weight {name!r} is a {type(value).__name__}, not an array")
    weights[str(name)] = value
  return weights


def _rename(name: str) -> str:
  for pattern, replacement in _RENAMES:
    if pattern.match(name):
      return pattern.sub(replacement, name, count=1)
  return name  # unknown names surface as "unexpected keys" in the converter's error


def _background_first(name: str, value: np.ndarray) -> np.ndarray:
  """detectron2 puts background last in cls_score and has no background row in class-specific outputs."""
  if name.startswith("roi_heads.box_predictor.cls_score."):
    return np.concatenate([value[-1:], value[:-1]], axis=0)
  if name.startswith("roi_heads.box_predictor.bbox_pred."):
    return np.concatenate([np.zeros_like(value[:4]), value], axis=0)
  if name.startswith("roi_heads.mask_predictor.mask_fcn_logits."):
    return np.concatenate([np.zeros_like(value[:1]), value], axis=0)
  return value


def to_torchvision_names(weights: Mapping[str, np.ndarray]) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """detectron2 names and class order -> torchvision's (input statistics dropped), and new name -> old name."""
  out, original_names = {}, {}
  for name, value in weights.items():
    if name in _INPUT_STATISTICS:
      continue
    new_name = _rename(name)
    out[new_name] = _background_first(new_name, np.asarray(value, np.float32))
    original_names[new_name] = name
  return out, original_names


def config_for_state_dict(weights: Mapping[str, np.ndarray], source: str) -> ml_collections.ConfigDict:
  """The variant of a detectron2 checkpoint, read off its shapes: depth from res4's blocks, groups from res2."""
  res4_blocks = {int(m[1]) for name in weights if (m := re.match(r"backbone\.bottom_up\.res4\.(\d+)\.", name))}
  conv2 = weights.get("backbone.bottom_up.res2.0.conv2.weight")
  if not res4_blocks or conv2 is None:
    raise InputError(f"{source}: not a detectron2 ResNet-FPN checkpoint (no backbone.bottom_up.res2/res4 weights)")
  depth = {6: 50, 23: 101}.get(len(res4_blocks))
  groups = conv2.shape[0] // conv2.shape[1]
  variants = {(50, 1): "detectron2_R_50_FPN", (101, 1): "detectron2_R_101_FPN", (101, 32): "detectron2_X_101_32x8d_FPN"}
  if (depth, groups) not in variants:
    raise InputError(
      f"{source}: unsupported detectron2 backbone ({len(res4_blocks)} res4 blocks, {groups} groups); "
      "supported: R50-FPN, R101-FPN, X101-32x8d-FPN"
    )
  cfg = mask_rcnn_config(variants[depth, groups])
  cls_score = weights.get("roi_heads.box_predictor.cls_score.weight")
  if cls_score is not None:
    cfg.num_classes = int(cls_score.shape[0])
  for stat in _INPUT_STATISTICS:
    if stat in weights:
      value = np.asarray(weights[stat], np.float64).reshape(-1)
      if value.shape != (3,):
        raise InputError(f"{source}: {stat} has shape {weights[stat].shape}, expected 3 values")
      cfg.input[stat.removeprefix("pixel_")] = tuple(float(v) for v in value)
  return cfg



def convert_checkpoint(path: str | os.PathLike):
  """A detectron2 .pkl -> (config, pure parameter dict, category ids, class names)."""
  source = os.fspath(path)
  weights = load_pkl(path)
  cfg = config_for_state_dict(weights, source)
  model = abstract_mask_rcnn(cfg)
  renamed, original_names = to_torchvision_names(weights)
  params = state_dict_to_params(renamed, model, source=source, hwc_flatten=box_head_flatten_inputs(cfg),
                                original_names=original_names)
  if cfg.num_classes == 81:
    category_ids, class_names = contiguous_labels()
  else:
    category_ids, class_names = list(range(cfg.num_classes)), [f"class_{i}" for i in range(cfg.num_classes)]
  return cfg, params, category_ids, class_names
