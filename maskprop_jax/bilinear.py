"""Bilinear resizing as torch's upsample_bilinear2d (align_corners=False) does it, in NumPy.

One definition serves the network's input resizing (model/transform.py, in jnp) and linking's upsampling of soft
masks to the video's size (linking/frames.py, in NumPy): a frame and the masks drawn on it are resized by the
same rule.
"""

from __future__ import annotations

import numpy as np


def bilinear_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """For each output position: the two input positions it reads (i0 <= i1, both non-decreasing along the
  output; int64 [out_size]) and the weight of the second (float32 [out_size]).

  torch's CPU kernel works in float32 and its compiler fuses `scale * (dst + 0.5) - 0.5` into one FMA (a single
  rounding): computing that in float64 and rounding once reproduces its weights bit for bit. Then
  src = max(src, 0), i0 = min(floor(src), in - 1), i1 = min(i0 + 1, in - 1), weights (1 - frac, frac).
  """
  scale = np.float64(np.float32(in_size) / np.float32(out_size))
  dst = np.arange(out_size, dtype=np.float64)
  src = np.maximum((scale * (dst + 0.5) - 0.5).astype(np.float32), np.float32(0.0))
  i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  frac = np.clip(src - i0.astype(np.float32), np.float32(0.0), np.float32(1.0)).astype(np.float32)
  return i0, i1, frac


def bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:  # [out_size, in_size] float32
  """Rows of interpolation weights: `ry @ image @ rx.T` resizes an [h, w] image as torch does."""
  i0, i1, frac = bilinear_taps(in_size, out_size)
  weights = np.zeros((out_size, in_size), np.float32)
  rows = np.arange(out_size)
  np.add.at(weights, (rows, i0), np.float32(1.0) - frac)
  np.add.at(weights, (rows, i1), frac)
  return weights
