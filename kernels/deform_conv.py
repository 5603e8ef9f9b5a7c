"""Public deformable convolution: argument check, implementation dispatch and the custom VJP.

`deform_conv2d` is torchvision.ops.deform_conv2d in NHWC; `masked_deform_conv2d` applies it to M_i * x for I
instance masks of one frame with shared offsets, reading x once. Arguments are checked by
kernels.geometry.ConvGeometry.from_arguments (the one check every impl shares). The forward runs the chosen
implementation (pure XLA, or the Pallas kernel of kernels.pallas_gpu / kernels.pallas_tpu); the backward is
the XLA one in kernels.xla_impl. The projected impls (kernels.projected: project x by the weight once per frame,
then gather per instance, no per-instance GEMM) are "xla_projected" and the Pallas kernels of the same form,
"pallas_gpu_projected" / "pallas_tpu_projected"; their backward is kernels.projected's. "auto" picks them for
the masked form; plain deform_conv2d runs them (when asked) with one all-ones instance mask.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

# Plain imports of both Pallas modules on every platform: they need only jax.experimental.pallas and the
# Triton / Mosaic bindings of jaxlib, which jaxlib ships for every platform and which `import jax` itself
# already loads (jax._src.lib imports jaxlib.gpu_triton and jaxlib.mosaic unconditionally), so if jax
# imports, so do they. Importing a kernel module runs no kernel and needs no GPU or TPU.
from maskprop_jax.kernels import (pallas_gpu, pallas_gpu_projected, pallas_tpu, pallas_tpu_projected, projected,
                                  xla_impl)
from maskprop_jax.kernels.geometry import ConvGeometry, IntOrPair, warps_of

IMPLS = ("auto", "xla", "xla_projected", "pallas", "pallas_gpu", "pallas_tpu", "pallas_projected",
         "pallas_gpu_projected", "pallas_tpu_projected")
# The projected forms (project x by the weight once per frame, then gather per instance) and their forwards; the
# backward of all three is kernels.projected's XLA one.
_PROJECTED_FORWARDS = {"xla_projected": None,
                       "pallas_gpu_projected": pallas_gpu_projected.masked_deform_conv2d_fwd,
                       "pallas_tpu_projected": pallas_tpu_projected.masked_deform_conv2d_fwd}


@dataclasses.dataclass(frozen=True)
class _Config:
  """The non-differentiable arguments of the custom VJP (hashable)."""

  geometry: ConvGeometry
  impl: str  # resolved: "xla", "pallas_gpu", "pallas_tpu" or one of _PROJECTED_FORWARDS
  interpret: bool


def resolve_impl(impl: str, interpret: bool = False, *, masked: bool = False) -> str:
  """Maps "auto", "pallas" and "pallas_projected" to a concrete implementation for the default backend.

  masked: for masked_deform_conv2d, whose "auto" is a projected form (the projection paid once per frame, not
  once per instance: several times faster at MaskProp's sizes): "xla_projected" on a CPU, the projected Pallas
  kernel on a GPU or TPU. Plain deform_conv2d's "auto" is "xla" on a CPU, the Pallas kernel elsewhere.
  """
  if impl not in IMPLS:
    raise ValueError(f"deform_conv2d: impl must be one of {IMPLS}, got {impl!r}")
  backend = jax.default_backend()
  if impl == "auto":
    if backend == "cpu":
      return "xla_projected" if masked else "xla"
    impl = "pallas_projected" if masked else "pallas"
  if impl in ("pallas", "pallas_projected"):
    impl = impl.replace("pallas", "pallas_tpu" if backend == "tpu" else "pallas_gpu")
  if impl not in ("xla", "xla_projected") and backend == "cpu" and not interpret:
    raise ValueError(f"deform_conv2d: impl={impl!r} needs a GPU or TPU backend (this one is {backend!r}); "
                     "pass interpret=True to run the Pallas kernel in interpret mode on CPU")
  return impl


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _deform_conv(config: _Config, x, offsets, mask, weight, instance_masks):
  """The chosen impl's forward: [N, Ho, Wo, O], or [N, I, Ho, Wo, O] given instance_masks."""
  conv = config.geometry.conv_kwargs()
  if config.impl == "xla":
    return xla_impl.deform_conv2d_fwd(x, offsets, mask, weight, instance_masks=instance_masks, **conv)
  if config.impl == "pallas_gpu":
    if instance_masks is None:
      return pallas_gpu.deform_conv2d_fwd(x, offsets, mask, weight, **conv, interpret=config.interpret)
    return pallas_gpu.masked_deform_conv2d_fwd(x, instance_masks, offsets, mask, weight, **conv,
                                               interpret=config.interpret)
  if config.impl == "pallas_tpu":
    if instance_masks is None:
      return pallas_tpu.deform_conv2d_fwd(x, offsets, mask, weight, **conv, interpret=config.interpret)
    return pallas_tpu.masked_deform_conv2d_fwd(x, instance_masks, offsets, mask, weight, **conv,
                                               interpret=config.interpret)
  raise AssertionError(f"unresolved impl {config.impl!r}")  # projected impls never get here (_forward)


def _deform_conv_fwd(config: _Config, x, offsets, mask, weight, instance_masks):
  out = _deform_conv(config, x, offsets, mask, weight, instance_masks)
  return out, (x, offsets, mask, weight, instance_masks)


def _deform_conv_bwd(config: _Config, residuals, out_grad):
  x, offsets, mask, weight, instance_masks = residuals
  # Cotangents in the primal order (x, offsets, mask, weight, instance_masks), None for absent inputs.
  return xla_impl.deform_conv2d_bwd(x, offsets, mask, weight, out_grad, instance_masks=instance_masks,
                                    **config.geometry.conv_kwargs())


_deform_conv.defvjp(_deform_conv_fwd, _deform_conv_bwd)


def _forward(config: _Config, x, offsets, mask, weight, instance_masks):
  """_deform_conv, or kernels.projected's custom VJP (with the chosen forward) for the projected impls."""
  if config.impl not in _PROJECTED_FORWARDS:
    warps = config.geometry.warps
    if warps > 1:  # the sample-then-GEMM impls read one frame per output image: repeat the frames
      x, instance_masks = jnp.repeat(x, warps, axis=0), jnp.repeat(instance_masks, warps, axis=0)
      config = dataclasses.replace(config, geometry=dataclasses.replace(config.geometry,
                                                                        batch=config.geometry.out_batch, warps=1))
    return _deform_conv(config, x, offsets, mask, weight, instance_masks)
  conv = config.geometry.conv_kwargs()
  forward = _PROJECTED_FORWARDS[config.impl]
  if forward is not None:
    forward = functools.partial(forward, warps=config.geometry.warps, interpret=config.interpret)
  if instance_masks is not None:
    return projected.masked_deform_conv2d(x, instance_masks, offsets, weight, mask, **conv, forward=forward)
  ones = jnp.ones((x.shape[0], 1) + x.shape[1:3], x.dtype)  # [N, 1, H, W]: DCN(1 * x)
  return projected.masked_deform_conv2d(x, ones, offsets, weight, mask, **conv, forward=forward)[:, 0]


def _prepare(op, x, offsets, weight, mask, bias, instance_masks, stride, padding, dilation, offset_groups,
             impl, interpret) -> _Config:
  """Resolves impl and checks every argument (kernels.geometry, shared with the impls)."""
  impl = resolve_impl(impl, interpret, masked=instance_masks is not None)
  geometry = ConvGeometry.from_arguments(op, x=x, offsets=offsets, weight=weight, mask=mask,
                                         instance_masks=instance_masks, bias=bias, stride=stride,
                                         padding=padding, dilation=dilation, offset_groups=offset_groups,
                                         warps=warps_of(x, offsets, instance_masks))
  return _Config(geometry, impl, bool(interpret))


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
      (Pallas on GPU / TPU, XLA on CPU). The backward is XLA's for every impl. The projected impls
      ("xla_projected", "pallas_projected", "pallas_gpu_projected", "pallas_tpu_projected"; chosen by "auto"
      for masked_deform_conv2d only) run with one all-ones instance mask: exact.
    interpret: run a Pallas kernel in interpret mode (lets the Pallas impls run on CPU, for tests).

  Returns:
    [N, Ho, Wo, O] in x's dtype (fp32 accumulation for bf16 inputs).
  """
  config = _prepare("deform_conv2d", x, offsets, weight, mask, bias, None, stride, padding, dilation,
                    offset_groups, impl, interpret)
  out = _forward(config, x, offsets, mask, weight, None)
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
    offsets: [N*R, Ho, Wo, offset_groups, kh * kw, 2]: R >= 1 offset fields per frame (R warps of one frame,
      MaskProp's center frame toward each reference frame); output image b warps frame b // R.
    weight, mask, bias, stride, padding, dilation, offset_groups, impl, interpret: as deform_conv2d (mask
      [N*R, ...]); the projected impls, "auto"'s choice here, compute x @ W once per frame for all instances and
      warps, then gather it per instance (kernels.projected; exact, its own backward); "xla" and "pallas" keep
      the sample-then-GEMM form (the reference the projected ones are tested against).

  Returns:
    [N*R, I, Ho, Wo, O] in x's dtype.
  """
  config = _prepare("masked_deform_conv2d", x, offsets, weight, mask, bias, instance_masks, stride, padding,
                    dilation, offset_groups, impl, interpret)
  out = _forward(config, x, offsets, mask, weight, instance_masks)
  return out if bias is None else out + bias.astype(out.dtype)
