"""Clip-consistent geometric augmentation: one scale and one flip for every frame and mask of a clip.

The propagation branch learns how instances move between frames, so all frames of a clip must share the same
geometry: a per-frame jitter would look like motion. A `ClipGeometry` is sampled once per clip and applied to each
frame (bilinear) and each mask (nearest neighbour) of it; the result is flipped inside the resized area and padded
with zeros at the bottom and right to the fixed training size.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class ClipGeometry:
  """How a clip's frames of size `source_hw` map onto the padded canvas of size `padded_hw`."""

  source_hw: tuple[int, int]
  resized_hw: tuple[int, int]
  padded_hw: tuple[int, int]
  flip: bool


def resized_size(source_hw: tuple[int, int], min_side: int, padded_hw: tuple[int, int]) -> tuple[int, int]:
  """Keeps the aspect ratio: the short side becomes `min_side` unless the image would overflow the canvas."""
  h, w = source_hw
  scale = min(min_side / min(h, w), padded_hw[0] / h, padded_hw[1] / w)
  return (
      int(np.clip(round(h * scale), 1, padded_hw[0])),
      int(np.clip(round(w * scale), 1, padded_hw[1])),
  )


def sample_geometry(
    rng: np.random.Generator,
    source_hw: tuple[int, int],
    padded_hw: tuple[int, int],
    scale_range: tuple[int, int],
    flip: bool,
) -> ClipGeometry:
  """Short side uniform in `scale_range` (pixels, inclusive); a coin flip when `flip` is on."""
  lo, hi = scale_range
  if not 0 < lo <= hi:
    raise ValueError(f"scale_range must be 0 < low <= high pixels, got {scale_range}")
  min_side = int(rng.integers(lo, hi + 1))
  flipped = bool(rng.integers(2)) if flip else False
  return ClipGeometry(tuple(source_hw), resized_size(source_hw, min_side, padded_hw), tuple(padded_hw), flipped)


def nearest_indices(source_size: int, target_size: int) -> np.ndarray:
  """Source pixel holding each target pixel's centre, int64 [target].

  Integer arithmetic, floor((i + 1/2) * source / target): floating point would put centres that fall exactly on
  a pixel border on either side depending on rounding.
  """
  return (2 * np.arange(target_size, dtype=np.int64) + 1) * source_size // (2 * target_size)


def _pad(resized: np.ndarray, padded_hw: tuple[int, int]) -> np.ndarray:
  out = np.zeros(padded_hw + resized.shape[2:], dtype=resized.dtype)
  out[: resized.shape[0], : resized.shape[1]] = resized
  return out


def decode_resized(encoded: bytes, geometry: ClipGeometry) -> np.ndarray:
  """Decodes an encoded frame straight to its resized size, RGB uint8 [rh, rw, 3] (before flip and padding).

  JPEG decoding at a reduced DCT scale (PIL's draft mode) makes shrinking a 720p frame several times cheaper
  than decoding it in full first. Raises OSError/ValueError for undecodable bytes and ValueError when the frame
  is not the size the annotations give.
  """
  with Image.open(io.BytesIO(encoded)) as image:
    if (image.height, image.width) != geometry.source_hw:
      raise ValueError(f"frame is {image.height}x{image.width}, the annotations say {geometry.source_hw}")
    target_w, target_h = geometry.resized_hw[1], geometry.resized_hw[0]
    if image.format == "JPEG":
      image.draft("RGB", (target_w, target_h))
    image = image.convert("RGB")
    if image.size != (target_w, target_h):
      image = image.resize((target_w, target_h), Image.Resampling.BILINEAR)
    return np.asarray(image, dtype=np.uint8)


def apply_to_image(resized: np.ndarray, geometry: ClipGeometry) -> np.ndarray:
  """Resized frame [rh, rw, 3] -> flipped and padded frame [H, W, 3]."""
  if geometry.flip:
    resized = resized[:, ::-1]
  return _pad(resized, geometry.padded_hw)


def apply_to_masks(masks: np.ndarray, geometry: ClipGeometry) -> np.ndarray:
  """Source-size masks [N, h, w] -> resized (nearest), flipped and padded masks uint8 [N, H, W]."""
  if masks.shape[1:] != geometry.source_hw:
    raise ValueError(f"masks are {masks.shape[1:]}, expected {geometry.source_hw}")
  rows = nearest_indices(geometry.source_hw[0], geometry.resized_hw[0])
  cols = nearest_indices(geometry.source_hw[1], geometry.resized_hw[1])
  if geometry.flip:
    cols = cols[::-1]
  resized = masks[:, rows][:, :, cols].astype(np.uint8)  # two 1-D takes: cheaper than one 2-D fancy index
  out = np.zeros((masks.shape[0],) + tuple(geometry.padded_hw), np.uint8)
  out[:, :resized.shape[1], :resized.shape[2]] = resized
  return out


def mask_boxes(masks: np.ndarray) -> np.ndarray:
  """Tight boxes of masks [..., H, W]: (x0, y0, x1, y1) in pixels with exclusive x1, y1, float32 [..., 4]; zeros
  for an empty mask."""
  rows, cols = masks.any(axis=-1), masks.any(axis=-2)  # [..., H], [..., W]
  height, width = rows.shape[-1], cols.shape[-1]
  y0, x0 = rows.argmax(axis=-1), cols.argmax(axis=-1)  # the first True
  y1, x1 = height - rows[..., ::-1].argmax(axis=-1), width - cols[..., ::-1].argmax(axis=-1)  # past the last
  boxes = np.stack([x0, y0, x1, y1], axis=-1).astype(np.float32)
  return np.where(rows.any(axis=-1)[..., None], boxes, np.float32(0))
