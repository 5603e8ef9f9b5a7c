"""The image transform of torchvision's Mask R-CNN (GeneralizedRCNNTransform), with static shapes.

torchvision normalises each image, resizes it so that its short side is `min_size` unless the long side would
exceed `max_size` (bilinear, align_corners=False, no antialias, output size floor(size * scale)), and pads the
batch with zeros to a multiple of 32. Converted weights only behave like the originals when they see the same
input, so every step here reproduces torchvision's arithmetic; the resize is a separable linear map, written as
two small interpolation matrices so it runs inside `jax.jit` once the output size is known.

Detectron2 checkpoints expect BGR pixels in 0..255 with their own mean/std: `InputFormat` covers both.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from maskprop_jax.bilinear import bilinear_matrix

# torchvision's ImageNet statistics for images in [0, 1].
TORCHVISION_MEAN = (0.485, 0.456, 0.406)
TORCHVISION_STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class InputFormat:
  """How a model wants its pixels: `(pixels * scale - mean) / std`, channels in `channel_order`.

  Images enter as RGB floats in [0, 1] (uint8 / 255, like torchvision's to_tensor). torchvision: scale 1,
  ImageNet mean/std in [0, 1] units. detectron2: scale 255, BGR, mean/std in 0..255 units.
  """

  mean: tuple[float, float, float] = TORCHVISION_MEAN
  std: tuple[float, float, float] = TORCHVISION_STD
  scale: float = 1.0
  channel_order: str = "RGB"

  def __post_init__(self):
    if self.channel_order not in ("RGB", "BGR"):
      raise ValueError(f"channel_order must be RGB or BGR, got {self.channel_order!r}")


def normalize(images: jax.Array, fmt: InputFormat) -> jax.Array:  # [..., H, W, 3] in [0, 1] -> same shape
  x = images.astype(jnp.float32)
  if fmt.channel_order == "BGR":
    x = x[..., ::-1]
  if fmt.scale != 1.0:
    x = x * jnp.float32(fmt.scale)
  mean = jnp.asarray(fmt.mean, jnp.float32)
  std = jnp.asarray(fmt.std, jnp.float32)
  return (x - mean) / std


def resized_hw(hw: tuple[int, int], min_size: int, max_size: int) -> tuple[int, int]:
  """Output size of torchvision's resize: scale = min(min_size / short, max_size / long), floor(size * scale)."""
  h, w = int(hw[0]), int(hw[1])
  if h <= 0 or w <= 0:
    raise ValueError(f"image size must be positive, got {h}x{w}")
  scale = min(min_size / min(h, w), max_size / max(h, w))
  return int(math.floor(h * scale)), int(math.floor(w * scale))


def padded_hw(hw: tuple[int, int], size_divisible: int = 32) -> tuple[int, int]:
  """torchvision's batch_images: each side rounded up to a multiple of `size_divisible`."""
  return tuple(int(math.ceil(s / size_divisible) * size_divisible) for s in hw)


def resize_bilinear(image: jax.Array, out_hw: tuple[int, int]) -> jax.Array:  # [H, W, C] -> [h, w, C]
  """torch.nn.functional.interpolate(mode="bilinear", align_corners=False) to a static size."""
  ay = jnp.asarray(bilinear_matrix(image.shape[0], out_hw[0]))  # [h, H]
  ax = jnp.asarray(bilinear_matrix(image.shape[1], out_hw[1]))  # [w, W]
  hi = jax.lax.Precision.HIGHEST
  rows = jnp.einsum("yh,hwc->ywc", ay, image.astype(jnp.float32), precision=hi)
  return jnp.einsum("xw,ywc->yxc", ax, rows, precision=hi)


def pad_to(image: jax.Array, pad_hw: tuple[int, int]) -> jax.Array:  # [h, w, C] -> [Hp, Wp, C], zeros after
  h, w = image.shape[:2]
  if h > pad_hw[0] or w > pad_hw[1]:
    raise ValueError(f"image of size {h}x{w} does not fit the padded size {pad_hw[0]}x{pad_hw[1]}")
  return jnp.pad(image, ((0, pad_hw[0] - h), (0, pad_hw[1] - w), (0, 0)))


def preprocess_image(
  image: np.ndarray | jax.Array,
  fmt: InputFormat,
  min_size: int,
  max_size: int,
  pad_hw: tuple[int, int] | None = None,
  size_divisible: int = 32,
) -> tuple[jax.Array, tuple[int, int]]:
  """One RGB image (uint8 [H, W, 3], or float in [0, 1]) -> (normalized, resized, padded [Hp, Wp, 3], (h, w)).

  Same order as torchvision: normalise, then resize, then pad with zeros. `pad_hw` fixes the padded size (for
  static shapes across images); by default it is the resized size rounded up to `size_divisible`.
  """
  image = jnp.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected an RGB image [H, W, 3], got shape {tuple(image.shape)}")
  if image.dtype == jnp.uint8:
    image = image.astype(jnp.float32) / jnp.float32(255.0)
  out_hw = resized_hw(image.shape[:2], min_size, max_size)
  resized = resize_bilinear(normalize(image, fmt), out_hw)
  target_hw = padded_hw(out_hw, size_divisible) if pad_hw is None else tuple(pad_hw)
  return pad_to(resized, target_hw), out_hw


def resize_boxes(boxes: jax.Array, from_hw, to_hw, xp=jnp) -> jax.Array:  # [..., 4] -> [..., 4]
  """torchvision's resize_boxes: x scaled by to_w / from_w and y by to_h / from_h, ratios in float32.

  `from_hw` / `to_hw` may be arrays ([..., 2], broadcast against the boxes' leading dims) for use under jit.
  xp=numpy computes the same on the host (the clip loop's boxes, without a jax dispatch per clip).
  """
  from_hw = xp.asarray(from_hw, xp.float32)
  to_hw = xp.asarray(to_hw, xp.float32)
  ratio = to_hw / from_hw  # [..., 2] (h, w)
  ratio_xyxy = xp.stack([ratio[..., 1], ratio[..., 0], ratio[..., 1], ratio[..., 0]], axis=-1)
  if ratio_xyxy.ndim > 1:
    ratio_xyxy = xp.expand_dims(ratio_xyxy, axis=tuple(range(ratio_xyxy.ndim - 1, boxes.ndim - 1)))
  return xp.asarray(boxes, xp.float32) * ratio_xyxy
