"""Mixed precision: convolutions and matmuls in the config's compute dtype, everything that decides in float32.

Parameters and optimizer state stay float32. `set_compute_dtype` makes every convolution, transposed convolution
and dense layer of a model compute in `model.compute_dtype` (flax casts its inputs and its float32 kernel to that
dtype; XLA accumulates bfloat16 products in float32 on GPUs and TPUs). The few places where a rounded value
would decide something take float32 back explicitly, each where it is made:
  - the normalised input is cast once, by the backbone's first convolution (the mask refiners pool it in float32);
  - frozen batch norm computes its scale and shift from float32 statistics (resnet.FrozenBatchNorm2d);
  - RoIAlign and the deformable sampling accumulate their bilinear taps in float32 (roi_align.py, kernels/);
  - head outputs are float32 (`to_float32`): RPN objectness and deltas, box-head logits and deltas, mask logits,
    the propagation branch's offsets (pixels: bfloat16 keeps 8 bits of them) and mask and foreground logits,
    so that softmax, sigmoid, box decoding, NMS, the losses and the soft IoU are float32.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
  """The jnp dtype of a config's `model.compute_dtype`."""
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"model.compute_dtype must be one of {sorted(COMPUTE_DTYPES)}, got {name!r}")
  return COMPUTE_DTYPES[name]


def set_compute_dtype(module: nnx.Module, dtype) -> None:
  """Every nnx.Conv, nnx.ConvTranspose and nnx.Linear inside `module` computes in `dtype` from now on (its
  parameters keep theirs)."""
  for _, node in nnx.iter_graph(module):
    if isinstance(node, (nnx.Conv, nnx.ConvTranspose, nnx.Linear)):
      node.dtype = dtype


def to_float32(*arrays: jax.Array | None):
  """The arrays (or one) in float32; None stays None."""
  out = tuple(None if a is None else a.astype(jnp.float32) for a in arrays)
  return out[0] if len(out) == 1 else out
