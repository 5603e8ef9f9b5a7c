"""Plain NumPy deformable convolution and its gradients, written sample by sample from torchvision's rules.

This is the slow, obvious version the fast implementations are tested against: loops over output pixels,
taps and offset groups, vectorised only over channels, float64 throughout. Layout as kernels.deform_conv
(NHWC, weight [kh, kw, C, O], offsets [N, Ho, Wo, G, K, 2] in (dy, dx)). Keep inputs tiny.

The three rules mirror the three loops of torchvision's CPU kernel, each with its own boundary test:
  * a sample is zero when y <= -1, y >= H, x <= -1 or x >= W; otherwise the bilinear blend of its floor /
    floor + 1 corners, a corner outside the image contributing zero;
  * x's gradient visits the pixels within distance < 1 of the sample, weight (1 - |dy|) (1 - |dx|);
  * the offset gradient differentiates the blend of the floor / floor + 1 corners (each outside corner zero),
    with no whole-sample test: at an integer position that is the derivative from the right.
"""

from __future__ import annotations

import math

import numpy as np


def _pair(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _pixel(image, y: int, x: int):
  """image [H, W, Cg] value at (y, x), zero outside."""
  h, w = image.shape[:2]
  if 0 <= y < h and 0 <= x < w:
    return image[y, x]
  return np.zeros(image.shape[2:])


def bilinear_sample(image, y: float, x: float):
  """image [H, W, Cg] sampled at (y, x) -> [Cg]."""
  h, w = image.shape[:2]
  if y <= -1 or y >= h or x <= -1 or x >= w:
    return np.zeros(image.shape[2:])
  y0, x0 = math.floor(y), math.floor(x)
  ly, lx = y - y0, x - x0
  return ((1 - ly) * (1 - lx) * _pixel(image, y0, x0) + (1 - ly) * lx * _pixel(image, y0, x0 + 1)
          + ly * (1 - lx) * _pixel(image, y0 + 1, x0) + ly * lx * _pixel(image, y0 + 1, x0 + 1))


def _position_gradient(image, y: float, x: float):
  """d sample / d (y, x) of the floor-corner blend -> ([Cg], [Cg])."""
  y0, x0 = math.floor(y), math.floor(x)
  ly, lx = y - y0, x - x0
  v00, v01 = _pixel(image, y0, x0), _pixel(image, y0, x0 + 1)
  v10, v11 = _pixel(image, y0 + 1, x0), _pixel(image, y0 + 1, x0 + 1)
  d_y = lx * (v11 - v01) + (1 - lx) * (v10 - v00)
  d_x = ly * (v11 - v10) + (1 - ly) * (v01 - v00)
  return d_y, d_x


def _scatter_sample(d_image, y: float, x: float, value) -> None:
  """Adds value [Cg] to the pixels of d_image [H, W, Cg] that the sample at (y, x) reads."""
  h, w = d_image.shape[:2]
  for yy in range(int(y) - 1, int(y) + 2):  # int() truncates toward zero, as the C++ kernel's cast
    for xx in range(int(x) - 1, int(x) + 2):
      if 0 <= yy < h and 0 <= xx < w and abs(y - yy) < 1 and abs(x - xx) < 1:
        d_image[yy, xx] += (1 - abs(y - yy)) * (1 - abs(x - xx)) * value


class _Geometry:
  """Static conv parameters and the sample position of every (output pixel, tap)."""

  def __init__(self, x, weight, offsets, stride, padding, dilation, offset_groups):
    self.stride, self.padding, self.dilation = _pair(stride), _pair(padding), _pair(dilation)
    self.kh, self.kw = weight.shape[:2]
    self.groups = offset_groups
    self.group_channels = x.shape[-1] // offset_groups
    self.out_h, self.out_w = offsets.shape[1:3]

  def positions(self, offsets, n: int, i: int, j: int, g: int, k: int) -> tuple[float, float]:
    a, b = divmod(k, self.kw)
    dy, dx = offsets[n, i, j, g, k]
    y = i * self.stride[0] - self.padding[0] + a * self.dilation[0] + dy
    x = j * self.stride[1] - self.padding[1] + b * self.dilation[1] + dx
    return float(y), float(x)

  def loops(self, batch: int):
    for n in range(batch):
      for i in range(self.out_h):
        for j in range(self.out_w):
          for g in range(self.groups):
            for k in range(self.kh * self.kw):
              yield n, i, j, g, k

  def channels(self, g: int) -> slice:
    return slice(g * self.group_channels, (g + 1) * self.group_channels)


def deform_conv2d(x, offsets, weight, mask=None, bias=None, *, stride=1, padding=1, dilation=1,
                  offset_groups: int = 1):
  """Forward: returns [N, Ho, Wo, O] float64."""
  x, offsets, weight = (np.asarray(a, np.float64) for a in (x, offsets, weight))
  geo = _Geometry(x, weight, offsets, stride, padding, dilation, offset_groups)
  columns = np.zeros(offsets.shape[:3] + (geo.kh * geo.kw, x.shape[-1]))  # [N, Ho, Wo, K, C]
  for n, i, j, g, k in geo.loops(x.shape[0]):
    scale = 1.0 if mask is None else float(mask[n, i, j, g, k])
    y, xx = geo.positions(offsets, n, i, j, g, k)
    columns[n, i, j, k, geo.channels(g)] = scale * bilinear_sample(x[n, :, :, geo.channels(g)], y, xx)
  out = np.einsum("nijkc,kco->nijo", columns, weight.reshape(geo.kh * geo.kw, x.shape[-1], -1))
  if bias is not None:
    out = out + np.asarray(bias, np.float64)
  return out


def deform_conv2d_grads(x, offsets, weight, out_grad, mask=None, *, stride=1, padding=1, dilation=1,
                        offset_groups: int = 1):
  """Gradients of sum(out * out_grad): dict with x, offsets, weight, bias and (given a mask) mask."""
  x, offsets, weight, out_grad = (np.asarray(a, np.float64) for a in (x, offsets, weight, out_grad))
  geo = _Geometry(x, weight, offsets, stride, padding, dilation, offset_groups)
  taps, channels = geo.kh * geo.kw, x.shape[-1]
  weight_kco = weight.reshape(taps, channels, -1)
  d_columns = np.einsum("nijo,kco->nijkc", out_grad, weight_kco)
  columns = np.zeros_like(d_columns)
  grads = {"x": np.zeros_like(x), "offsets": np.zeros_like(offsets)}
  if mask is not None:
    grads["mask"] = np.zeros(mask.shape)
  for n, i, j, g, k in geo.loops(x.shape[0]):
    scale = 1.0 if mask is None else float(mask[n, i, j, g, k])
    y, xx = geo.positions(offsets, n, i, j, g, k)
    ch = geo.channels(g)
    image, d_col = x[n, :, :, ch], d_columns[n, i, j, k, ch]
    sample = bilinear_sample(image, y, xx)
    columns[n, i, j, k, ch] = scale * sample
    _scatter_sample(grads["x"][n, :, :, ch], y, xx, scale * d_col)
    d_y, d_x = _position_gradient(image, y, xx)
    grads["offsets"][n, i, j, g, k] = scale * np.array([d_y @ d_col, d_x @ d_col])
    if mask is not None:
      grads["mask"][n, i, j, g, k] = sample @ d_col
  grads["weight"] = np.einsum("nijkc,nijo->kco", columns, out_grad).reshape(weight.shape)
  grads["bias"] = out_grad.sum(axis=(0, 1, 2))
  return grads


def masked_deform_conv2d(x, instance_masks, offsets, weight, mask=None, bias=None, **conv):
  """DCN(M_i * x) for every instance mask M_i [N, I, H, W]: returns [N, I, Ho, Wo, O]."""
  x, instance_masks = np.asarray(x, np.float64), np.asarray(instance_masks, np.float64)
  outs = [deform_conv2d(x * instance_masks[:, i, :, :, None], offsets, weight, mask, bias, **conv)
          for i in range(instance_masks.shape[1])]
  return np.stack(outs, axis=1)


def masked_deform_conv2d_grads(x, instance_masks, offsets, weight, out_grad, mask=None, **conv):
  """Gradients of sum(masked_deform_conv2d(...) * out_grad), adding up the per-instance convolutions."""
  x, instance_masks = np.asarray(x, np.float64), np.asarray(instance_masks, np.float64)
  total = {"x": np.zeros_like(x), "instance_masks": np.zeros_like(instance_masks)}
  for i in range(instance_masks.shape[1]):
    m = instance_masks[:, i, :, :, None]
    grads = deform_conv2d_grads(x * m, offsets, weight, out_grad[:, i], mask, **conv)
    total["x"] += m * grads["x"]
    total["instance_masks"][:, i] = np.sum(x * grads["x"], axis=-1)
    for name in grads.keys() - {"x"}:
      total[name] = total.get(name, 0.0) + grads[name]
  return total


def to_torchvision_layout(x, offsets, weight, mask=None):
  """NHWC arguments -> torchvision.ops.deform_conv2d's NCHW ones (NumPy arrays).

  offsets [N, Ho, Wo, G, K, 2] -> [N, G * K * 2, Ho, Wo] ([g][k][dy, dx] order); weight [kh, kw, C, O] ->
  [O, C, kh, kw]; mask [N, Ho, Wo, G, K] -> [N, G * K, Ho, Wo].
  """
  x, offsets, weight = (np.asarray(a) for a in (x, offsets, weight))
  batch, out_h, out_w = offsets.shape[:3]
  converted = [x.transpose(0, 3, 1, 2), offsets.reshape(batch, out_h, out_w, -1).transpose(0, 3, 1, 2),
               weight.transpose(3, 2, 0, 1)]
  if mask is not None:
    converted.append(np.asarray(mask).reshape(batch, out_h, out_w, -1).transpose(0, 3, 1, 2))
  return [np.ascontiguousarray(a) for a in converted]


def from_torchvision_layout(name: str, value, like_shape):
  """A torchvision-layout tensor (output or gradient) as NumPy in our layout; name is the argument's name."""
  value = np.asarray(value)
  if name in ("x", "out"):
    return value.transpose(0, 2, 3, 1)
  if name == "weight":
    return value.transpose(2, 3, 1, 0)
  if name in ("offsets", "mask"):
    return value.transpose(0, 2, 3, 1).reshape(like_shape)
  raise ValueError(f"from_torchvision_layout: unknown argument name {name!r}")
