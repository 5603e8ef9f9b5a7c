"""Finishing a frame of a video track: its soft mask upsampled to the video's size, thresholded, RLE-encoded.

The upsampling is the network's own bilinear rule (maskprop_jax.bilinear), computed only on the rows and columns
where the result can reach the threshold, and the RLE is built from that patch alone (rle.encode_patch): the
cost follows the object's size, not the frame's.
"""

from __future__ import annotations

import numpy as np
from maskprop_jax import rle
from maskprop_jax.bilinear import bilinear_matrix, bilinear_taps


class _Axis:
  """One axis of the upsampling: its weights, and which outputs draw on a range of inputs (and vice versa)."""

  def __init__(self, size_in: int, size_out: int):
    self.weights = bilinear_matrix(size_in, size_out)  # [out, in]
    self.low, self.high, _ = bilinear_taps(size_in, size_out)

  def outputs_reading(self, first: int, last: int) -> tuple[int, int]:
    """The outputs [start, stop) whose inputs meet inputs first..last (a superset where a weight is 0)."""
    return int(np.searchsorted(self.high, first, "left")), int(np.searchsorted(self.low, last, "right"))

  def inputs_of(self, start: int, stop: int) -> tuple[int, int]:
    """The inputs [start, stop) that outputs start..stop-1 draw on."""
    return int(self.low[start]), int(self.high[stop - 1]) + 1


class Binarizer:
  """Upsamples a soft mask to the video's size, thresholds and RLE-encodes it, only where the result can be 1.

  A bilinear output is a convex combination of input pixels, so it can reach the threshold only where one of the
  input pixels it draws on does: outside the rows and columns that draw on the input's above-threshold box, the
  result is 0 without computing it. Objects are small next to a frame, so this is most of the work saved.
  """

  def __init__(self, mask_hw: tuple[int, int], video_hw: tuple[int, int], threshold: float):
    self.video_hw = video_hw
    self.threshold = threshold
    self.rows = _Axis(mask_hw[0], video_hw[0])
    self.cols = _Axis(mask_hw[1], video_hw[1])

  def __call__(self, soft: np.ndarray) -> dict | None:
    """soft: [h, w] -> compressed RLE (str counts) of the [H, W] binary mask, or None when nothing is set."""
    return self.from_pixels(soft, *np.nonzero(soft >= self.threshold))

  def from_pixels(self, soft: np.ndarray, rows_in: np.ndarray, cols_in: np.ndarray) -> dict | None:
    """The same, given the pixels of `soft` that reach the threshold (np.nonzero of it)."""
    if rows_in.size == 0:
      return None
    r0, r1 = self.rows.outputs_reading(rows_in.min(), rows_in.max())
    c0, c1 = self.cols.outputs_reading(cols_in.min(), cols_in.max())
    sr0, sr1 = self.rows.inputs_of(r0, r1)
    sc0, sc1 = self.cols.inputs_of(c0, c1)
    patch = self.rows.weights[r0:r1, sr0:sr1] @ soft[sr0:sr1, sc0:sc1] @ self.cols.weights[c0:c1, sc0:sc1].T
    return rle.encode_patch(patch >= self.threshold, r0, c0, self.video_hw)
