"""Public deformable convolution: argument checks, implementation dispatch and the custom VJP.

`deform_conv2d` is torchvision.ops.deform_conv2d in NHWC; `masked_deform_conv2d` applies it to M_i * x for I
instance masks of one frame with shared offsets, reading x once. The forward runs the chosen implementation
(pure XLA, or a Pallas kernel from kernels.pallas_gpu / kernels.pallas_tpu, imported only when asked for so
the XLA path works without them); the backward is always the XLA one in kernels.xla_impl.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
from typing import Sequence

import jax
import jax.numpy as jnp

from . import xla_impl

IMPLS = ("auto", "xla", "pallas", "pallas_gpu", "pallas_tpu")

IntOrPair = int | Sequence[int]


@dataclasses.dataclass(frozen=True)
class _Config:
  """The non-differentiable arguments of the custom VJP (hashable)."""

  stride: tuple[int, int]
  padding: tuple[int, int]
  dilation: tuple[int, int]
  offset_groups: int
  impl: str  # resolved: "xla", "pallas_gpu" or "pallas_tpu"
  interpret: bool

  def conv_kwargs(self) -> dict:
    return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                offset_groups=self.offset_groups)


def _pair(name: str, value: IntOrPair, minimum: int, op: str) -> tuple[int, int]:
  pair = (value, value) if isinstance(value, int) else tuple(value)
  if len(pair) != 2 or not all(isinstance(v, int) and v >= minimum for v in pair):
    raise ValueError(f"{op}: {name} must be an int >= {minimum} or a pair of them, got {value!r}")
  return pair  # type: ignore[return-value]


def resolve_impl(impl: str, interpret: bool = False) -> str:
  """Maps "auto" / "pallas" to a concrete implementation for the default backend."""
  if impl not in IMPLS:
    raise ValueError(f"deform_conv2d: impl must be one of {IMPLS}, got {impl!r}")
  backend = jax.default_backend()
  if impl == "auto":
    return {"gpu": "pallas_gpu", "cuda": "pallas_gpu", "rocm": "pallas_gpu", "tpu": "pallas_tpu"}.get(
        backend, "xla")
  if impl == "pallas":
    impl = "pallas_tpu" if backend == "tpu" else "pallas_gpu"
  if impl != "xla" and backend == "cpu" and not interpret:
    raise ValueError(f"deform_conv2d: impl={impl!r} needs a GPU or TPU backend (this one is {backend!r}); "
                     "pass interpret=True to run the Pallas kernel in interpret mode on CPU")
  return impl


def _check_shapes(op: str, x, offsets, weight, mask, bias, instance_masks, config: _Config):
  """Raises ValueError naming the argument whose shape does not fit x and weight."""
  for name, a in (("x", x), ("offsets", offsets), ("weight", weight), ("mask", mask), ("bias", bias),
                  ("instance_masks", instance_masks)):
    if a is not None and not jnp.issubdtype(a.dtype, jnp.floating):
      raise ValueError(f"{op}: {name} must be a floating-point array, got dtype {a.dtype}")
  if x.ndim != 4:
    raise ValueError(f"{op}: x must be [N, H, W, C], got shape {x.shape}")
  if weight.ndim != 4:
    raise ValueError(f"{op}: weight must be [kh, kw, C, O], got shape {weight.shape}")
  batch, height, width, channels = x.shape
  kh, kw, weight_channels, _ = weight.shape
  groups = config.offset_groups
  if weight_channels != channels:
    raise ValueError(f"{op}: weight {weight.shape} expects {weight_channels} input channels but x {x.shape} "
                     f"has {channels} (grouped convolution is not supported)")
  if groups < 1 or channels % groups:
    raise ValueError(f"{op}: offset_groups={groups} must be >= 1 and divide the {channels} channels of x")
  out_h, out_w = xla_impl.output_size((height, width), (kh, kw), config.stride, config.padding,
                                      config.dilation)
  if out_h < 1 or out_w < 1:
    raise ValueError(f"{op}: x {x.shape} is too small for a {kh}x{kw} kernel with stride {config.stride}, "
                     f"padding {config.padding} and dilation {config.dilation} (output {out_h}x{out_w})")
  where = (f"x {x.shape} with a {kh}x{kw} kernel, stride {config.stride}, padding {config.padding}, "
           f"dilation {config.dilation} and offset_groups {groups}")
  expected_offsets = (batch, out_h, out_w, groups, kh * kw, 2)
  if offsets.shape != expected_offsets:
    raise ValueError(f"{op}: offsets has shape {offsets.shape} but {where} needs {expected_offsets} "
                     "(N, Ho, Wo, offset_groups, kh * kw, (dy, dx))")
  if mask is not None and mask.shape != expected_offsets[:-1]:
    raise ValueError(f"{op}: mask has shape {mask.shape} but {where} needs {expected_offsets[:-1]}")
  if bias is not None and bias.shape != (weight.shape[-1],):
    raise ValueError(f"{op}: bias has shape {bias.shape} but weight {weight.shape} needs "
                     f"({weight.shape[-1]},)")
  if instance_masks is not None and (instance_masks.ndim != 4
                                     or instance_masks.shape[:1] + instance_masks.shape[2:]
                                     != (batch, height, width)):
    raise ValueError(f"{op}: instance_masks has shape {instance_masks.shape} but x {x.shape} needs "
                     f"({batch}, I, {height}, {width})")


def _pallas_forward(config: _Config, x, offsets, mask, weight, instance_masks):
  module = importlib.import_module(f"{__package__}.{config.impl}")
  kwargs = dict(config.conv_kwargs(), interpret=config.interpret)
  if instance_masks is None:
    return module.deform_conv2d_fwd(x, offsets, mask, weight, **kwargs)
  return module.masked_deform_conv2d_fwd(x, instance_masks, offsets, mask, weight, **kwargs)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _deform_conv(config: _Config, x, offsets, mask, weight, instance_masks):
  if config.impl == "xla":
    return xla_impl.deform_conv2d_fwd(x, offsets, mask, weight, instance_masks=instance_masks,
                                      **config.conv_kwargs())
  return _pallas_forward(config, x, offsets, mask, weight, instance_masks)


def _deform_conv_fwd(config: _Config, x, offsets, mask, weight, instance_masks):
  out = _deform_conv(config, x, offsets, mask, weight, instance_masks)
  return out, (x, offsets, mask, weight, instance_masks)


def _deform_conv_bwd(config: _Config, residuals, out_grad):
  x, offsets, mask, weight, instance_masks = residuals
  # Cotangents in the primal order (x, offsets, mask, weight, instance_masks), None for absent inputs.
  return xla_impl.deform_conv2d_bwd(x, offsets, mask, weight, out_grad, instance_masks=instance_masks,
                                    **config.conv_kwargs())


_deform_conv.defvjp(_deform_conv_fwd, _deform_conv_bwd)


def _prepare(op, x, offsets, weight, mask, bias, instance_masks, stride, padding, dilation, offset_groups,
             impl, interpret) -> _Config:
  """Normalises the static arguments and checks every shape against x and weight."""
  config = _Config(_pair("stride", stride, 1, op), _pair("padding", padding, 0, op),
                   _pair("dilation", dilation, 1, op), int(offset_groups), resolve_impl(impl, interpret),
                   bool(interpret))
  _check_shapes(op, x, offsets, weight, mask, bias, instance_masks, config)
  return config


def deform_conv2d(x: jax.Array, offsets: jax.Array, weight: jax.Array, mask: jax.Array | None = None, *,
                  bias: jax.Array | None = None, stride: IntOrPair = 1, padding: IntOrPair = 1,
                  dilation: IntOrPair = 1, offset_groups: int = 1, impl: str = "auto",
                  interpret: bool = False) -> jax.Array:
  """Deformable convolution v1 / v2 (modulated when mask is given), torchvision's sampling rule, NHWC.

  Args:
    x: [N, H, W, C] input features.
    offsets: [N, Ho, Wo, offset_groups, kh * kw, 2] sampling offsets in (dy, dx) order.
    weight: [kh, kw, C, O] (HWIO, as jax.lax.conv_general_dilated).
    mask: [N, Ho, Wo, offset_groups, kh * kw] modulation scalars, or None for plain DCN.
    bias: [O] or None.
    stride, padding, dilation: ints or (h, w) pairs.
    offset_groups: channels are split into this many groups, each with its own offsets.
    impl: "xla", "pallas" (GPU or TPU kernel for the default backend), "pallas_gpu", "pallas_tpu", or "auto"
      (Pallas on GPU / TPU, XLA on CPU). The backward is XLA's for every impl.
    interpret: run a Pallas kernel in interpret mode (lets the Pallas impls run on CPU, for tests).

  Returns:
    [N, Ho, Wo, O] in x's dtype (fp32 accumulation for bf16 inputs).
  """
  config = _prepare("deform_conv2d", x, offsets, weight, mask, bias, None, stride, padding, dilation,
                    offset_groups, impl, interpret)
  out = _deform_conv(config, x, offsets, mask, weight, None)
  return out if bias is None else out + bias.astype(out.dtype)


def masked_deform_conv2d(x: jax.Array, instance_masks: jax.Array, offsets: jax.Array, weight: jax.Array,
                         mask: jax.Array | None = None, *, bias: jax.Array | None = None,
                         stride: IntOrPair = 1, padding: IntOrPair = 1, dilation: IntOrPair = 1,
                         offset_groups: int = 1, impl: str = "auto", interpret: bool = False) -> jax.Array:
  """deform_conv2d(instance_masks[:, i, :, :, None] * x, ...) for every instance i, with shared offsets.

  Exact, not an approximation: each bilinear corner of x is scaled by the instance mask's value at that same
  corner. x is gathered once for all I instances.

  Args:
    x: [N, H, W, C] frame features.
    instance_masks: [N, I, H, W] per-instance masks (soft values allowed).
    offsets, weight, mask, bias, stride, padding, dilation, offset_groups, impl, interpret: as deform_conv2d.

  Returns:
    [N, I, Ho, Wo, O] in x's dtype.
  """
  config = _prepare("masked_deform_conv2d", x, offsets, weight, mask, bias, instance_masks, stride, padding,
                    dilation, offset_groups, impl, interpret)
  out = _deform_conv(config, x, offsets, mask, weight, instance_masks)
  return out if bias is None else out + bias.astype(out.dtype)
