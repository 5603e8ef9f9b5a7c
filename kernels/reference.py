"""Plain NumPy deformable convolution and its gradients, written sample by sample from torchvision's rules.

This is the slow, obvious version the fast implementations are tested against: loops over output pixels,
taps and offset groups, vectorised only over channels, float64 throughout. Layout as kernels.deform_conv
(NHWC, weight [kh, kw, C, O], offsets [N, Ho, Wo, G, K, 2] in (dy, dx)), arguments checked by the same
kernels.geometry.ConvGeometry.from_arguments as every impl. Keep inputs tiny.

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

from maskprop_jax.kernels.geometry import ConvGeometry


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


def _float64(*arrays):
  """NumPy float64 copies (None stays None): this module computes in float64 whatever it is given."""
  return tuple(None if a is None else np.asarray(a, np.float64) for a in arrays)


def _position(geo: ConvGeometry, offsets, n: int, i: int, j: int, g: int, k: int) -> tuple[float, float]:
  """Sample position (y, x) of tap k, offset group g, output (i, j) of image n."""
  a, b = divmod(k, geo.kernel_w)
  dy, dx = offsets[n, i, j, g, k]
  y = i * geo.stride[0] - geo.padding[0] + a * geo.dilation[0] + dy
  x = j * geo.stride[1] - geo.padding[1] + b * geo.dilation[1] + dx
  return float(y), float(x)


def _samples(geo: ConvGeometry):
  """Every (n, i, j, g, k): image, output row and column, offset group, tap."""
  for n in range(geo.batch):
    for i in range(geo.out_h):
      for j in range(geo.out_w):
        for g in range(geo.offset_groups):
          for k in range(geo.taps):
            yield n, i, j, g, k


def _group_channels(geo: ConvGeometry, g: int) -> slice:
  return slice(g * geo.group_channels, (g + 1) * geo.group_channels)


def deform_conv2d(x, offsets, weight, mask=None, bias=None, *, stride=1, padding=1, dilation=1,
                  offset_groups: int = 1):
  """Forward: returns [N, Ho, Wo, O] float64."""
  x, offsets, weight, mask, bias = _float64(x, offsets, weight, mask, bias)
  geo = ConvGeometry.from_arguments("reference.deform_conv2d", x=x, offsets=offsets, weight=weight, mask=mask,
                                    bias=bias, stride=stride, padding=padding, dilation=dilation,
                                    offset_groups=offset_groups)
  columns = np.zeros(offsets.shape[:3] + (geo.taps, geo.channels))  # [N, Ho, Wo, K, C]
  for n, i, j, g, k in _samples(geo):
    scale = 1.0 if mask is None else float(mask[n, i, j, g, k])
    y, xx = _position(geo, offsets, n, i, j, g, k)
    ch = _group_channels(geo, g)
    columns[n, i, j, k, ch] = scale * bilinear_sample(x[n, :, :, ch], y, xx)
  out = np.einsum("nijkc,kco->nijo", columns, weight.reshape(geo.taps, geo.channels, -1))
  if bias is not None:
    out = out + bias
  return out


def deform_conv2d_grads(x, offsets, weight, out_grad, mask=None, *, stride=1, padding=1, dilation=1,
                        offset_groups: int = 1):
  """Gradients of sum(out * out_grad): dict with x, offsets, weight, bias and (given a mask) mask."""
  x, offsets, weight, out_grad, mask = _float64(x, offsets, weight, out_grad, mask)
  geo = ConvGeometry.from_arguments("reference.deform_conv2d_grads", x=x, offsets=offsets, weight=weight,
                                    mask=mask, stride=stride, padding=padding, dilation=dilation,
                                    offset_groups=offset_groups)
  weight_kco = weight.reshape(geo.taps, geo.channels, -1)
  d_columns = np.einsum("nijo,kco->nijkc", out_grad, weight_kco)
  columns = np.zeros_like(d_columns)
  grads = {"x": np.zeros_like(x), "offsets": np.zeros_like(offsets)}
  if mask is not None:
    grads["mask"] = np.zeros(mask.shape)
  for n, i, j, g, k in _samples(geo):
    scale = 1.0 if mask is None else float(mask[n, i, j, g, k])
    y, xx = _position(geo, offsets, n, i, j, g, k)
    ch = _group_channels(geo, g)
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


def masked_deform_conv2d(x, instance_masks, offsets, weight, mask=None, bias=None, *, stride=1, padding=1,
                         dilation=1, offset_groups: int = 1):
  """DCN(M_i * x) for every instance mask M_i [N, I, H, W]: returns [N, I, Ho, Wo, O]."""
  conv = dict(stride=stride, padding=padding, dilation=dilation, offset_groups=offset_groups)
  x, instance_masks, offsets, weight, mask, bias = _float64(x, instance_masks, offsets, weight, mask, bias)
  ConvGeometry.from_arguments("reference.masked_deform_conv2d", x=x, offsets=offsets, weight=weight, mask=mask,
                              instance_masks=instance_masks, bias=bias, **conv)
  outs = [deform_conv2d(x * instance_masks[:, i, :, :, None], offsets, weight, mask, bias, **conv)
          for i in range(instance_masks.shape[1])]
  return np.stack(outs, axis=1)


def masked_deform_conv2d_grads(x, instance_masks, offsets, weight, out_grad, mask=None, *, stride=1, padding=1,
                               dilation=1, offset_groups: int = 1):
  """Gradients of sum(masked_deform_conv2d(...) * out_grad), adding up the per-instance convolutions."""
  conv = dict(stride=stride, padding=padding, dilation=dilation, offset_groups=offset_groups)
  x, instance_masks, offsets, weight, out_grad, mask = _float64(x, instance_masks, offsets, weight, out_grad,
                                                                mask)
  ConvGeometry.from_arguments("reference.masked_deform_conv2d_grads", x=x, offsets=offsets, weight=weight,
                              mask=mask, instance_masks=instance_masks, **conv)
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
