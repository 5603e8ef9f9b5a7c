"""torchvision Mask R-CNN state dicts (.pth) -> our parameters.

Our modules carry torchvision's attribute names, so the state-dict key of every parameter is its path in our
model joined with dots, with flax's `kernel` read as torch's `weight`. What changes is the layout:
  conv            (O, I, kh, kw) -> (kh, kw, I, O)
  conv transpose  (I, O, kh, kw) -> (kh, kw, I, O), spatially flipped (flax's transpose is not torch's)
  linear          (O, I)         -> (I, O); a linear layer that reads flattened RoI features gets its input
                                    columns reordered from torch's (C, H, W) flattening to our NHWC (H, W, C)
  batch norm      unchanged; `num_batches_tracked` (BatchNorm2d) is ignored, FrozenBatchNorm2d has none.
A checkpoint whose keys or shapes do not match the model raises InputError listing every difference.
"""

from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import numpy as np
from flax import nnx, traverse_util

from maskprop_jax.errors import InputError

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


def torch_key(path: Path) -> str:
  """Our parameter path -> torchvision's state-dict key."""
  *module, leaf = (str(p) for p in path)
  return ".".join([*module, "weight" if leaf == "kernel" else leaf])


def conv_transpose_paths(model: nnx.Module) -> set[Path]:
  """Module paths of every nnx.ConvTranspose in `model` (their kernels need flipping)."""
  return {tuple(path) for path, node in nnx.iter_graph(model) if isinstance(node, nnx.ConvTranspose)}


def _to_flax_layout(value: np.ndarray, path: Path, transposed: set[Path], hwc_flatten: Mapping[Path, Sequence[int]]):
  module_path, leaf = path[:-1], path[-1]
  if leaf != "kernel":
    return value
  if value.ndim == 4 and module_path in transposed:
    return value.transpose(2, 3, 0, 1)[::-1, ::-1]
  if value.ndim == 4:
    return value.transpose(2, 3, 1, 0)
  if value.ndim == 2 and module_path in hwc_flatten:
    c, h, w = hwc_flatten[module_path]
    out_features = value.shape[0]
    if value.shape[1] != c * h * w:
      return value.T  # the shape check below reports it
    return value.reshape(out_features, c, h, w).transpose(2, 3, 1, 0).reshape(h * w * c, out_features)
  if value.ndim == 2:
    return value.T
  return value


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
) -> dict:
  """Maps a torchvision-named state dict onto `model`'s state; returns the nested pure dict for `nnx.update`.

  Args:
    state_dict: torchvision key -> array.
    model: the target module (may be abstract, from nnx.eval_shape); its state gives the expected shapes.
    source: the checkpoint's name for error messages.
    prefix: key prefix of `model` inside the state dict (e.g. "backbone" to convert only the backbone).
    hwc_flatten: module path -> (C, H, W) for linear layers that read flattened NHWC RoI features.
  """
  hwc_flatten = hwc_flatten or {}
  transposed = conv_transpose_paths(model)
  expected = traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model)))
  key_prefix = f"{prefix}." if prefix else ""
  wanted = {key_prefix + torch_key(path): path for path in expected}

  missing = sorted(k for k in wanted if k not in state_dict)
  unexpected = sorted(
    k for k in state_dict
    if k not in wanted and k.startswith(key_prefix) and not k.endswith(IGNORED_SUFFIXES)
  )
  mismatched, flat = [], {}
  for key, path in wanted.items():
    if key not in state_dict:
      continue
    value = _to_flax_layout(np.asarray(state_dict[key], np.float32), path, transposed, hwc_flatten)
    want_shape = tuple(expected[path].shape)
    if tuple(value.shape) != want_shape:
      mismatched.append(f"{key} {tuple(state_dict[key].shape)} (expected {want_shape} in our layout)")
      continue
    flat[path] = np.ascontiguousarray(value)
  problems = [
    _listing(title, items)
    for title, items in (("missing keys", missing), ("unexpected keys", unexpected), ("shape mismatches", mismatched))
    if items
  ]
  if problems:
    raise InputError(f"{source}: the checkpoint does not match the model: " + "; ".join(problems))
  return traverse_util.unflatten_dict(flat)
