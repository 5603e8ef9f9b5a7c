"""The one argument check of deformable convolution, and the geometry every implementation computes with.

Every entry point (kernels.deform_conv2d / masked_deform_conv2d, xla_impl, pallas_gpu, pallas_tpu and both
references) builds its ConvGeometry with `ConvGeometry.from_arguments`, so a wrong argument gives the same
ValueError whichever implementation is called, one of
  <op>: `<argument>` has shape S, expected E       (E spells out the expected shape)
  <op>: `<argument>` has dtype D, expected E
  <op>: `<argument>` must be ..., got V            (stride, padding, dilation, offset_groups)
where <op> names the function the caller called.

Layout (NHWC): x [N, H, W, C], weight [kh, kw, C, O], offsets [N*R, Ho, Wo, G, K, 2] in (dy, dx), mask
[N*R, Ho, Wo, G, K] or None, instance_masks [N, I, H, W] or None, bias [O] or None; K = kh * kw taps and
G offset groups of Cg = C / G channels each. R = `warps` (1 unless asked for): the masked form may warp each
frame of x by R offset fields, output image b reading frame b // R (MaskProp's center frame, warped toward
each reference frame of its clip); the output then has N*R images.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax.numpy as jnp

Pair = tuple[int, int]
IntOrPair = int | Sequence[int]


def as_pair(op: str, name: str, value: IntOrPair, minimum: int) -> Pair:
  """An int or an (h, w) pair of ints, each >= minimum, as a tuple (hashable, so usable as a jit static)."""
  try:
    pair = (value, value) if isinstance(value, int) else tuple(value)
  except TypeError:  # neither an int nor a sequence (a float, None): same message as any other bad value
    pair = ()
  if len(pair) != 2 or not all(isinstance(v, int) and v >= minimum for v in pair):
    raise ValueError(f"{op}: `{name}` must be an int or a pair of ints, each >= {minimum}; got {value!r}")
  return pair  # type: ignore[return-value]


def output_size(in_hw: Pair, kernel_hw: Pair, stride: Pair, padding: Pair, dilation: Pair) -> Pair:
  """Output (height, width): torchvision's integer arithmetic; < 1 when the kernel does not fit."""
  return tuple(  # type: ignore[return-value]
      (in_hw[d] + 2 * padding[d] - dilation[d] * (kernel_hw[d] - 1) - 1) // stride[d] + 1 for d in range(2))


def warps_of(x, offsets, instance_masks) -> int:
  """R, the offset fields per frame of x, as the shapes say: offsets [N*R, ...] with instance masks (the masked
  form), else 1. When the batches do not divide, 1: from_arguments then reports the mismatch."""
  n, images = x.shape[0], offsets.shape[0]
  if instance_masks is None or not n or images % n:
    return 1
  return max(images // n, 1)


def _shape_error(op: str, name: str, array, expected: str) -> ValueError:
  return ValueError(f"{op}: `{name}` has shape {tuple(array.shape)}, expected {expected}")


@dataclasses.dataclass(frozen=True)
class ConvGeometry:
  """Static sizes and conv parameters of one call, checked against each other (hashable: a jit static).

  Build it with `from_arguments`, the validating constructor; the fields are then consistent by construction.
  """

  batch: int
  height: int
  width: int
  channels: int
  out_channels: int
  kernel_h: int
  kernel_w: int
  out_h: int
  out_w: int
  offset_groups: int
  num_instances: int  # I of the masked form; 0 for the plain one
  stride: Pair
  padding: Pair
  dilation: Pair
  warps: int = 1  # R offset fields per frame of x (masked form only)

  @property
  def out_batch(self) -> int:
    """Images of the output (and of offsets and mask): N * R."""
    return self.batch * self.warps

  @property
  def taps(self) -> int:
    return self.kernel_h * self.kernel_w

  @property
  def group_channels(self) -> int:
    return self.channels // self.offset_groups

  @property
  def in_hw(self) -> Pair:
    return self.height, self.width

  @property
  def out_hw(self) -> Pair:
    return self.out_h, self.out_w

  @property
  def kernel_hw(self) -> Pair:
    return self.kernel_h, self.kernel_w

  def conv_kwargs(self) -> dict:
    """stride, padding, dilation (pairs) and offset_groups: the keyword arguments every impl takes."""
    return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                offset_groups=self.offset_groups)

  @classmethod
  def from_arguments(cls, op: str, *, x, offsets, weight, mask=None, instance_masks=None, bias=None,
                     stride: IntOrPair, padding: IntOrPair, dilation: IntOrPair, offset_groups: int,
                     weight_dtype_of_x: bool = False, warps: int = 1) -> "ConvGeometry":
    """Checks every argument against x and weight; raises ValueError naming the first bad one.

    op: the function the caller called, the prefix of every message.
    weight_dtype_of_x: also require weight.dtype == x.dtype. The Pallas kernels need it (they feed weight
      tiles to the MXU / tensor cores next to x's tiles without a cast); the XLA impl casts weight itself.
    warps: R, the offset fields per frame of x (offsets and mask have N*R images); R > 1 needs instance_masks.
    Keyword-only arrays: the impls take them in different orders, and a swapped pair must not pass.
    """
    stride = as_pair(op, "stride", stride, 1)
    padding = as_pair(op, "padding", padding, 0)
    dilation = as_pair(op, "dilation", dilation, 1)
    for name, array in (("x", x), ("offsets", offsets), ("weight", weight), ("mask", mask), ("bias", bias),
                        ("instance_masks", instance_masks)):
      if array is not None and not jnp.issubdtype(array.dtype, jnp.floating):
        raise ValueError(f"{op}: `{name}` has dtype {array.dtype}, expected a floating-point dtype")
    if x.ndim != 4:
      raise _shape_error(op, "x", x, "(N, H, W, C)")
    batch, height, width, channels = x.shape
    if weight.ndim != 4 or weight.shape[2] != channels:
      raise _shape_error(op, "weight", weight, f"(kh, kw, C={channels}, O): C must be the {channels} input "
                         f"channels of `x` {tuple(x.shape)} (grouped convolution is not supported)")
    if weight_dtype_of_x and weight.dtype != x.dtype:
      raise ValueError(f"{op}: `weight` has dtype {weight.dtype}, expected the dtype of `x` ({x.dtype})")
    kh, kw, _, out_channels = weight.shape
    groups = int(offset_groups)
    if groups < 1 or channels % groups:
      raise ValueError(f"{op}: `offset_groups` must be >= 1 and divide the {channels} channels of `x`, "
                       f"got offset_groups={offset_groups}")
    out_h, out_w = output_size((height, width), (kh, kw), stride, padding, dilation)
    if out_h < 1 or out_w < 1:
      raise _shape_error(op, "x", x, f"room for a {kh}x{kw} kernel with stride {stride}, padding {padding} "
                         f"and dilation {dilation}: it leaves no output position (output {out_h}x{out_w})")
    if not isinstance(warps, int) or warps < 1 or (warps > 1 and instance_masks is None):
      raise ValueError(f"{op}: `warps` must be an int >= 1, and 1 without instance masks; got {warps!r}")
    where = (f"`x` {tuple(x.shape)}, a {kh}x{kw} kernel, stride {stride}, padding {padding}, dilation "
             f"{dilation} and offset_groups {groups}")
    images = "N" if warps == 1 else f"N*R, R={warps} warps per frame"
    expected_offsets = (batch * warps, out_h, out_w, groups, kh * kw, 2)
    if tuple(offsets.shape) != expected_offsets:
      raise _shape_error(op, "offsets", offsets,
                         f"{expected_offsets} = ({images}, Ho, Wo, offset_groups, kh*kw, (dy, dx)) for {where}")
    if mask is not None and tuple(mask.shape) != expected_offsets[:-1]:
      raise _shape_error(op, "mask", mask,
                         f"{expected_offsets[:-1]} = ({images}, Ho, Wo, offset_groups, kh*kw) for {where}")
    if bias is not None and tuple(bias.shape) != (out_channels,):
      raise _shape_error(op, "bias", bias, f"({out_channels},) = (O,) for `weight` {tuple(weight.shape)}")
    num_instances = 0
    if instance_masks is not None:
      shape = tuple(instance_masks.shape)
      if len(shape) != 4 or (shape[0], *shape[2:]) != (batch, height, width) or shape[1] < 1:
        raise _shape_error(op, "instance_masks", instance_masks,
                           f"(N={batch}, I, H={height}, W={width}) with I >= 1 for `x` {tuple(x.shape)}")
      num_instances = shape[1]
    return cls(batch, height, width, channels, out_channels, kh, kw, out_h, out_w, groups, num_instances,
               stride, padding, dilation, warps)
