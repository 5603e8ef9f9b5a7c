"""torchvision Mask R-CNN state dicts (.pth) -> our parameters.

Our modules carry torchvision's attribute names, so the state-dict key of every parameter is its path in our
model joined with dots, with flax's `kernel` read as torch's `weight`. What changes is the layout:
  conv            (O, I, kh, kw) -> (kh, kw, I, O)
  conv transpose  (I, O, kh, kw) -> (kh, kw, O, I) for flax's transpose_kernel=True, else flipped (kh, kw, I, O)
  linear          (O, I)         -> (I, O); a linear layer that reads flattened RoI features gets its input
                                    columns reordered from torch's (C, H, W) flattening to our NHWC (H, W, C)
  batch norm      unchanged (nnx.BatchNorm's scale/mean/var are torch's weight/running_mean/running_var);
                  `num_batches_tracked` (BatchNorm2d) is ignored, FrozenBatchNorm2d has none.
Keys of older torchvision releases (the COCO v1 checkpoint's among them) are upgraded first.
A checkpoint whose keys or shapes do not match the model raises InputError listing every difference.
"""

from __future__ import annotations

import os
import re
from typing import Any, Mapping, Sequence

import ml_collections
import numpy as np
from flax import nnx, traverse_util

from maskprop_jax.convert.coco_categories import torchvision_labels
from maskprop_jax.errors import InputError
from maskprop_jax.model.config import mask_rcnn_config
from maskprop_jax.model.mask_rcnn import abstract_mask_rcnn, box_head_flatten_inputs
from maskprop_jax.model.resnet import STAGE_BLOCKS

Path = tuple[Any, ...]
IGNORED_SUFFIXES = (".num_batches_tracked",)
MAX_LISTED = 40  # differences listed per category in an error message


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Reads a torchvision .pth: a state dict, or a training checkpoint holding one under "model"."""
  try:
    import torch  # noqa: PLC0415 -- only the converter needs torch, and only to unpickle .pth files
  except ImportError as e:
    raise InputError(f"{path}: reading a .pth checkpoint needs PyTorch (pip install torch)") from e
  if not os.path.isfile(path):
    raise InputError(f"{path}: no such checkpoint file")
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for corrupt / foreign files
    raise InputError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from e
  if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
    obj = obj["model"]
  if not isinstance(obj, Mapping) or not all(hasattr(v, "shape") for v in obj.values()):
    raise InputError(f"{path}: expected a state dict of tensors, got {type(obj).__name__}")
  return {k: v.detach().cpu().numpy() for k, v in obj.items()}


# nnx.BatchNorm names its variables differently from torch's BatchNorm2d; our FrozenBatchNorm uses torch's names.
BATCH_NORM_LEAVES = {"scale": "weight", "mean": "running_mean", "var": "running_var"}


def torch_key(path: Path, batch_norms: set[Path] = frozenset()) -> str:
  """Our parameter path -> torchvision's state-dict key."""
  module, leaf = tuple(path[:-1]), str(path[-1])
  if module in batch_norms:
    leaf = BATCH_NORM_LEAVES.get(leaf, leaf)
  elif leaf == "kernel":
    leaf = "weight"
  return ".".join([*(str(p) for p in module), leaf])


def upgrade_legacy_keys(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Renames keys of older torchvision releases, as their modules' _load_from_state_dict do.

  torchvision's own COCO v1 checkpoint predates Conv2dNormActivation: it has `rpn.head.conv.weight`,
  `backbone.fpn.inner_blocks.0.weight` and `roi_heads.mask_head.mask_fcn1.weight`.
  """
  patterns = (
    (re.compile(r"^(rpn\.head\.conv)\.(weight|bias)$"), r"\1.0.0.\2"),
    (re.compile(r"^(backbone\.fpn\.(?:inner|layer)_blocks\.\d+)\.(weight|bias)$"), r"\1.0.\2"),
  )
  mask_fcn = re.compile(r"^(roi_heads\.mask_head)\.mask_fcn(\d+)\.(weight|bias)$")
  upgraded = {}
  for key, value in state_dict.items():
    for pattern, replacement in patterns:
      key = pattern.sub(replacement, key)
    match = mask_fcn.match(key)
    if match:
      key = f"{match[1]}.{int(match[2]) - 1}.0.{match[3]}"
    upgraded[key] = value
  return upgraded


def _module_paths(model: nnx.Module, kind: type) -> set[Path]:
  return {tuple(path) for path, node in nnx.iter_graph(model) if isinstance(node, kind)}


def _to_flax_layout(value: np.ndarray, path: Path, transposed: Mapping[Path, bool],
                    hwc_flatten: Mapping[Path, Sequence[int]]):
  module_path, leaf = tuple(path[:-1]), path[-1]
  if leaf != "kernel":
    return value
  if value.ndim == 4 and module_path in transposed:
    # torch ConvTranspose2d weight is (in, out, kh, kw). flax with transpose_kernel=True stores (kh, kw, out, in)
    # and flips it itself; without, the kernel is applied as stored, so it needs the flip here.
    if transposed[module_path]:
      return value.transpose(2, 3, 1, 0)
    return value.transpose(2, 3, 0, 1)[::-1, ::-1]
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 2 and module_path in hwc_flatten:
    c, h, w = hwc_flatten[module_path]
    out_features = value.shape[0]
    if value.shape[1] != c * h * w:
      return value.T  # the shape check reports it
    return value.reshape(out_features, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, out_features)
  if value.ndim == 2:
    return value.T
  return value


def _torch_shape(shape: tuple[int, ...], path: Path, transposed: Mapping[Path, bool]) -> tuple[int, ...]:
  """The torch-layout shape of one of our kernels (inverse of _to_flax_layout), for error messages."""
  if path[-1] != "kernel" or len(shape) not in (2, 4):
    return shape
  if len(shape) == 2:
    return shape[::-1]
  kh, kw, a, b = shape
  if transposed.get(tuple(path[:-1])) is False:  # flipped (kh, kw, I, O) <- (I, O, kh, kw)
    return (a, b, kh, kw)
  return (b, a, kh, kw)  # conv (kh, kw, I, O) <- (O, I, kh, kw); transpose_kernel (kh, kw, O, I) <- (I, O, kh, kw)


def _listing(title: str, items: Sequence[str]) -> str:
  shown = ", ".join(items[:MAX_LISTED])
  more = f" (and {len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else ""
  return f"{title} ({len(items)}): {shown}{more}"


def state_dict_to_params(
  state_dict: Mapping[str, np.ndarray],
  model: nnx.Module,
  *,
  source: str,
  prefix: str = "",
  hwc_flatten: Mapping[Path, Sequence[int]] | None = None,
  original_names: Mapping[str, str] | None = None,
) -> dict:
  """Maps a torchvision-named state dict onto `model`'s state; returns the nested pure dict for `nnx.update`.

  Args:
    state_dict: torchvision key -> array.
    model: the target module (may be abstract, from nnx.eval_shape); its state gives the expected shapes.
    source: the checkpoint's name for error messages.
    prefix: key prefix of `model` inside the state dict (e.g. "backbone" to convert only the backbone).
    hwc_flatten: module path -> (C, H, W) for linear layers that read flattened NHWC RoI features.
    original_names: torchvision key -> the name in the user's file (detectron2's), for error messages.
  """
  hwc_flatten = hwc_flatten or {}
  original_names = original_names or {}
  state_dict = upgrade_legacy_keys(state_dict)
  transposed = {
    tuple(path): bool(node.transpose_kernel)
    for path, node in nnx.iter_graph(model) if isinstance(node, nnx.ConvTranspose)
  }
  batch_norms = _module_paths(model, nnx.BatchNorm)
  expected = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model)))
  key_prefix = f"{prefix}." if prefix else ""
  wanted = {key_prefix + torch_key(path, batch_norms): path for path in expected}

  missing = sorted(k for k in wanted if k not in state_dict)
  unexpected = sorted(
    original_names.get(k, k) for k in state_dict
    if k not in wanted and k.startswith(key_prefix) and not k.endswith(IGNORED_SUFFIXES)
  )
  mismatched, flat = [], {}
  for key, path in wanted.items():
    if key not in state_dict:
      continue
    value = _to_flax_layout(np.asarray(state_dict[key], np.float32), path, transposed, hwc_flatten)
    want_shape = tuple(expected[path].shape)
    if tuple(value.shape) != want_shape:
      torch_shape = _torch_shape(want_shape, path, transposed)
      mismatched.append(f"{original_names.get(key, key)} {tuple(state_dict[key].shape)} (expected {torch_shape})")
      continue
    flat[path] = np.ascontiguousarray(value)
  problems = [
    _listing(title, items)
    for title, items in (("missing keys (torchvision names)" if original_names else "missing keys", missing),
                         ("unexpected keys", unexpected), ("shape mismatches", mismatched))
    if items
  ]
  if problems:
    raise InputError(f"{source}: the checkpoint does not match the model: " + "; ".join(problems))
  return traverse_util.unflatten_dict(flat)


def config_for_state_dict(
  state_dict: Mapping[str, np.ndarray], source: str, bn_eps: float | None = None
) -> ml_collections.ConfigDict:
  """maskrcnn_resnet50_fpn or _v2, told apart by the v2 RPN's second conv; classes from the box predictor.

  Frozen-BN epsilon: torchvision's COCO v1 weights run with eps 0.0 (its builder overwrites it); they are stored
  as FrozenBatchNorm2d buffers, i.e. without `num_batches_tracked`. Randomly initialised models (BatchNorm2d)
  use 1e-5. `bn_eps` overrides the guess (e.g. a v1 model fine-tuned from an ImageNet backbone used 1e-5).
  """
  state_dict = upgrade_legacy_keys(state_dict)
  if "backbone.body.conv1.weight" not in state_dict:
    raise InputError(f"{source}: not a torchvision Mask R-CNN state dict (no backbone.body.conv1.weight)")
  is_v2 = "rpn.head.conv.1.0.weight" in state_dict
  cfg = mask_rcnn_config("maskrcnn_resnet50_fpn_v2" if is_v2 else "maskrcnn_resnet50_fpn")
  cfg.backbone.update(_resnet_layout(state_dict, source))
  cls_score = state_dict.get("roi_heads.box_predictor.cls_score.weight")
  if cls_score is not None:
    cfg.num_classes = int(cls_score.shape[0])
  if bn_eps is None:
    frozen = not any(k.startswith("backbone.body.") and k.endswith(IGNORED_SUFFIXES) for k in state_dict)
    bn_eps = 0.0 if frozen and not is_v2 else 1e-5
  cfg.backbone.bn_eps = float(bn_eps)
  return cfg


def _resnet_layout(state_dict: Mapping[str, np.ndarray], source: str) -> dict[str, Any]:
  """Depth (or blocks per stage) and ResNeXt groups of the backbone, read off the keys and conv2's shape.

  torchvision's builders only make ResNet-50 Mask R-CNNs, but its MaskRCNN class takes any ResNet body.
  """
  blocks = []
  for stage in range(1, 5):
    pattern = re.compile(rf"^backbone\.body\.layer{stage}\.(\d+)\.")
    indices = {int(m[1]) for key in state_dict if (m := pattern.match(key))}
    if not indices:
      raise InputError(f"{source}: no backbone.body.layer{stage} weights in the checkpoint")
    blocks.append(max(indices) + 1)
  blocks = tuple(blocks)
  depths = {v: k for k, v in STAGE_BLOCKS.items()}
  width, in_per_group = state_dict["backbone.body.layer1.0.conv2.weight"].shape[:2]
  groups = width // in_per_group
  layout = dict(groups=groups, width_per_group=width // groups)
  if blocks in depths:
    return layout | dict(depth=depths[blocks], stage_blocks=None)
  return layout | dict(stage_blocks=blocks)


def convert_checkpoint(path: str | os.PathLike, bn_eps: float | None = None):
  """A torchvision .pth -> (config, pure parameter dict, category ids, class names)."""
  source = os.fspath(path)
  state_dict = upgrade_legacy_keys(load_state_dict(path))
  cfg = config_for_state_dict(state_dict, source, bn_eps)
  model = abstract_mask_rcnn(cfg)
  params = state_dict_to_params(state_dict, model, source=source, hwc_flatten=box_head_flatten_inputs(cfg))
  if cfg.num_classes == 91:
    category_ids, class_names = torchvision_labels()
  else:  # a fine-tuned model: its labels are whatever the user trained with
    category_ids, class_names = list(range(cfg.num_classes)), [f"class_{i}" for i in range(cfg.num_classes)]
  return cfg, params, category_ids, class_names
