"""Anchor boxes of torchvision's AnchorGenerator, computed with NumPy at trace time (their shapes are static).

Each pyramid level has cell anchors centred on the origin, one per (aspect ratio, size) pair with the aspect ratio
the outer loop: width = size / sqrt(ratio), height = size * sqrt(ratio), rounded to integers as torchvision does
(detectron2 does not round: `round_base_anchors=False`). They are shifted to every feature-map location
(y, x) * stride, with stride = padded image size // feature size per axis, and listed level by level in
(y, x, anchor) order -- the order in which the RPN head's NHWC outputs flatten.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

FPN_ANCHOR_SIZES = ((32,), (64,), (128,), (256,), (512,))
FPN_ASPECT_RATIOS = ((0.5, 1.0, 2.0),) * 5


def cell_anchors(sizes: Sequence[float], aspect_ratios: Sequence[float], round_to_int: bool = True) -> np.ndarray:
  """Zero-centred anchors of one level: [len(aspect_ratios) * len(sizes), 4] float32 (float32 math, as torch)."""
  scales = np.asarray(sizes, np.float32)
  ratios = np.asarray(aspect_ratios, np.float32)
  h_ratios = np.sqrt(ratios)
  w_ratios = np.float32(1) / h_ratios
  ws = (w_ratios[:, None] * scales[None, :]).reshape(-1)
  hs = (h_ratios[:, None] * scales[None, :]).reshape(-1)
  base = np.stack([-ws, -hs, ws, hs], axis=1) / np.float32(2)
  return np.round(base) if round_to_int else base  # np.round is half-to-even like torch.round


@dataclasses.dataclass(frozen=True)
class AnchorGenerator:
  """Anchors for a list of feature maps; `sizes[i]` and `aspect_ratios[i]` belong to feature map i."""

  sizes: tuple[tuple[float, ...], ...] = FPN_ANCHOR_SIZES
  aspect_ratios: tuple[tuple[float, ...], ...] = FPN_ASPECT_RATIOS
  round_base_anchors: bool = True

  def __post_init__(self):
    # Configs may hold lists; tuples keep the generator hashable, so that it can be static data of an nnx.Module.
    object.__setattr__(self, "sizes", tuple(tuple(float(s) for s in level) for level in self.sizes))
    object.__setattr__(self, "aspect_ratios", tuple(tuple(float(a) for a in level) for level in self.aspect_ratios))
    if len(self.sizes) != len(self.aspect_ratios):
      raise ValueError(
          f"anchor sizes ({len(self.sizes)} levels) and aspect ratios ({len(self.aspect_ratios)} levels) differ"
      )

  def num_anchors_per_location(self) -> tuple[int, ...]:
    return tuple(len(s) * len(a) for s, a in zip(self.sizes, self.aspect_ratios))

  def __call__(
      self, image_size: tuple[int, int], feature_sizes: Sequence[tuple[int, int]]
  ) -> tuple[np.ndarray, tuple[int, ...]]:
    """Anchors of a padded image of `image_size` (H, W) with feature maps of `feature_sizes` [(h, w), ...].

    Returns:
      anchors [sum_i h_i * w_i * A_i, 4] float32, the same for every image of a batch;
      the number of anchors of each level.
    """
    if len(feature_sizes) != len(self.sizes):
      raise ValueError(f"{len(feature_sizes)} feature maps but anchors are defined for {len(self.sizes)} levels")
    per_level = []
    for (height, width), sizes, ratios in zip(feature_sizes, self.sizes, self.aspect_ratios):
      stride_y, stride_x = image_size[0] // height, image_size[1] // width
      shift_y, shift_x = np.meshgrid(
          np.arange(height, dtype=np.int32) * stride_y, np.arange(width, dtype=np.int32) * stride_x, indexing="ij"
      )
      shifts = np.stack([shift_x, shift_y, shift_x, shift_y], axis=-1).reshape(-1, 1, 4)  # [h * w, 1, 4]
      base = cell_anchors(sizes, ratios, self.round_base_anchors)[None]  # [1, A, 4]
      per_level.append((shifts.astype(np.float32) + base).reshape(-1, 4))
    return np.concatenate(per_level, axis=0), tuple(len(a) for a in per_level)
