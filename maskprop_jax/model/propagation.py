"""MaskProp's mask propagation branch (Bertasius & Torresani, CVPR 2020, Sec. 3.2).

For every instance i detected in the center frame t and every reference frame t+d of the clip:
  f_t^i    = M_t^i * f_t                              instance-specific features (mask at feature resolution)
  o_{t,d}  = offsets(residual_block(f_t - f_{t+d}))   deformable offsets, shared by all instances of the frame
  g^i      = DCN(f_t^i; o_{t,d})                      features of instance i warped toward frame t+d
  logits^i = head(g^i + f_{t+d})                      the instance's mask in frame t+d
optionally gated by an instance-agnostic foreground map of frame t+d: p^i = sigmoid(logits^i) * sigmoid(fg).

With `upsample` u > 1 the last 1x1 convs predict u*u logits per feature cell, rearranged into a u-times finer
grid (sub-pixel convolution): the features stay at the FPN level's stride s, the masks come out at stride s/u.
Small objects need it: on the synthetic valid set, masks held on a stride-4 grid cap video AP at 0.66 even when
every mask is exact (0.91 at stride 2, 1.0 at stride 1).

The first deformable layer reads f_t once for all instances and all reference frames (`masked_deform_conv2d`
with R warps of one frame: with impl "auto" it projects f_t by the weights once, then gathers per instance);
later layers, if any, warp each instance's features with their own offsets. Shapes are static: I instance slots
with a validity mask.

With `motion_radius` r > 0 a motion prior (model/motion.py) adds to every tap's offset where each location's
content was in the center frame, found by correlating the two frames within r coarse cells: the offset block sees
only +-3 cells, and objects move farther than that within a clip. With `motion_align` too, the offset block reads
the difference after that displacement (PWC-Net's warping before refinement): its first convolution of the center
frame, conv'(f_t), is sampled at x + prior(x) before conv'(f_{t+d}) is subtracted, so the block compares the two
frames where the prior says they match and its +-3 cells correct the prior instead of guessing past it.

Work that depends on one frame alone is done once per frame (`frame_terms`), not once per clip containing the
frame: the foreground logits, and the offset block's first convolution, which is linear and comes before any
non-linearity, so conv(f_t - f_{t+d}) = conv'(f_t) - conv'(f_{t+d}) + b with conv' the convolution without its
bias b. Training, where each reference frame meets one center frame, convolves the difference directly.

The mask head is `head_depth` 3x3 convolutions of `head_width` channels, then the 1x1 logits convolution; the
paper's head is the 1x1 convolution alone (head_depth 0), which is linear, so it folds into the deformable
convolution's weights (`instance_logits`): what is gathered per instance and reference frame is then u*u logit
channels, not the C channels of g^i.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from maskprop_jax import kernels
from maskprop_jax.model import motion, precision
from maskprop_jax.model.conv_lowering import conv_general_dilated


def depth_to_space(x: jax.Array, factor: int) -> jax.Array:
  """[..., H, W, u*u] -> [..., H*u, W*u]: channel (a, b) of cell (y, x) becomes pixel (y*u + a, x*u + b)."""
  *lead, height, width, channels = x.shape
  if channels != factor * factor:
    raise ValueError(f"depth_to_space by {factor} needs {factor * factor} channels, got {channels}")
  x = x.reshape(*lead, height, width, factor, factor)
  x = jnp.moveaxis(x, -2, -3)  # [..., H, u, W, u]
  return x.reshape(*lead, height * factor, width * factor)


def _conv(in_channels: int, out_channels: int, kernel_size: int, *, rngs: nnx.Rngs, zero: bool = False):
  pad = kernel_size // 2
  return nnx.Conv(in_channels, out_channels, (kernel_size, kernel_size), padding=((pad, pad), (pad, pad)),
                  kernel_init=nnx.initializers.zeros_init() if zero else nnx.initializers.he_normal(),
                  conv_general_dilated=conv_general_dilated, rngs=rngs)


def warp_by(x: jax.Array, shift: jax.Array) -> jax.Array:
  """x [M, H, W, D] read at every location p + shift(p), shift [M, H, W, 2] (dy, dx): bilinear, zero outside the
  frame. A deformable 1x1 convolution with the identity weight: the project's one bilinear sampler. XLA's form on
  every backend: a handful of channels, one tap, no gain from a fused kernel."""
  identity = jnp.eye(x.shape[-1], dtype=x.dtype)[None, None]  # [1, 1, D, D]
  return kernels.deform_conv2d(x, shift[:, :, :, None, None, :].astype(jnp.float32), identity, stride=1, padding=0,
                               dilation=1, offset_groups=1, impl="xla")


def _shifted(offsets: list[jax.Array], shift: jax.Array | None) -> list[jax.Array]:
  """Each deformable layer's offsets [M, H, W, 1, K, 2] plus the prior's displacement [M, H, W, 2] at every tap."""
  return offsets if shift is None else [layer + shift[:, :, :, None, None, :] for layer in offsets]


class FrameTerms(NamedTuple):
  """What propagation needs of one frame alone, computed once per frame (`PropagationHead.frame_terms`)."""

  features: jax.Array  # [N, H, W, C] f, the propagation level's features
  offset_term: jax.Array  # [N, H, W, offset_width] conv'(f): the offset block's first conv without its bias
  foreground: jax.Array | None  # [N, uH, uW] foreground logits, None without the gate
  motion: jax.Array | None = None  # [N, H/s, W/s, c] the motion prior's embeddings, None without the prior


class OffsetBlock(nnx.Module):
  """Residual block on the feature difference f_t - f_{t+d}, then one offset conv per deformable layer."""

  def __init__(self, channels: int, width: int, num_layers: int, kernel_size: int, *, rngs: nnx.Rngs):
    self.conv1 = _conv(channels, width, 3, rngs=rngs)
    self.conv2 = _conv(width, width, 3, rngs=rngs)
    self.kernel_size = kernel_size
    # Zero-initialised offset convs start every deformable layer as a plain convolution (as DCN does).
    self.offset_convs = nnx.List([_conv(width, 2 * kernel_size * kernel_size, 3, rngs=rngs, zero=True)
                                  for _ in range(num_layers)])

  def __call__(self, difference: jax.Array) -> list[jax.Array]:  # [N, H, W, C] -> L x [N, H, W, 1, K, 2]
    return self._from_first_conv(self.conv1(difference))

  def frame_term(self, features: jax.Array) -> jax.Array:
    """conv'(f), the first conv without its bias b: conv(f_t - f_{t+d}) = conv'(f_t) - conv'(f_{t+d}) + b."""
    return self.conv1(features) - self.conv1.bias[...]

  def from_frame_terms(self, center: jax.Array, references: jax.Array,
                       shift: jax.Array | None = None) -> list[jax.Array]:
    """Offsets toward each reference frame from cached frame terms: center [N, H, W, D], references
    [N*R, H, W, D] (R per center frame) -> L x [N*R, H, W, 1, K, 2]. With `shift` [N*R, H, W, 2] (dy, dx in
    cells), the center's term is read at x + shift(x): the difference after warping the center frame."""
    center = jnp.repeat(center, references.shape[0] // center.shape[0], axis=0)
    if shift is not None:
      center = warp_by(center, shift)
    return self._from_first_conv(center - references + self.conv1.bias[...])

  def _from_first_conv(self, first: jax.Array) -> list[jax.Array]:
    h = jax.nn.relu(first)
    h = jax.nn.relu(h + self.conv2(h))
    n, height, width, _ = h.shape
    taps = self.kernel_size * self.kernel_size
    # Offsets are pixels: float32, whatever the compute dtype (bfloat16 keeps 8 bits of them).
    return [precision.to_float32(conv(h)).reshape(n, height, width, 1, taps, 2) for conv in self.offset_convs]


class PropagationHead(nnx.Module):
  """Propagates center-frame instance masks to reference frames; see the module docstring."""

  def __init__(self, channels: int = 256, *, offset_width: int = 128, num_deform_layers: int = 1,
               kernel_size: int = 3, head_width: int = 128, head_depth: int = 0, use_foreground: bool = True,
               upsample: int = 1, impl: str = "auto", motion_radius: int = 0, motion_width: int = 16,
               motion_stride: int = 2, motion_align: bool = False, rngs: nnx.Rngs):
    if upsample < 1:
      raise ValueError(f"upsample must be a positive integer, got {upsample}")
    self.impl = impl
    self.upsample = upsample
    self.kernel_size = kernel_size
    self.offsets = OffsetBlock(channels, offset_width, num_deform_layers, kernel_size, rngs=rngs)
    init = nnx.initializers.he_normal()
    self.deform_weights = nnx.List([
        nnx.Param(init(rngs.params(), (kernel_size, kernel_size, channels, channels)))
        for _ in range(num_deform_layers)])
    self.deform_biases = nnx.List([nnx.Param(jnp.zeros((channels,))) for _ in range(num_deform_layers)])
    widths = [channels] + [head_width] * head_depth
    self.mask_convs = nnx.List([_conv(a, b, 3, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])])
    outputs = upsample * upsample
    self.mask_logits = _conv(widths[-1], outputs, 1, rngs=rngs)
    # Empty when the foreground gate is off (an attribute's kind, data or static, is fixed at construction).
    self.foreground = nnx.List(
        [_conv(channels, head_width, 3, rngs=rngs), _conv(head_width, outputs, 1, rngs=rngs)] if use_foreground else [])
    self.motion = nnx.List([motion.MotionPrior(channels, radius=motion_radius, width=motion_width,
                                               stride=motion_stride, rngs=rngs)] if motion_radius else [])
    if motion_align and not motion_radius:
      raise ValueError("motion_align warps by the motion prior: it needs motion_radius > 0")
    self.motion_align = motion_align

  def frame_terms(self, features: jax.Array) -> FrameTerms:
    """The per-frame terms of frames [N, H, W, C]: computed once per frame, whatever the clips it is in."""
    return FrameTerms(features, self.offsets.frame_term(features), self.foreground_logits(features),
                      self._motion_embedding(features))

  def _motion_embedding(self, features: jax.Array) -> jax.Array | None:
    """The motion prior's per-frame embeddings of frames [N, H, W, C]; None without the prior."""
    return self.motion[0].embed(features) if len(self.motion) else None

  def _motion_shift(self, center_embedding: jax.Array | None,
                    reference_embedding: jax.Array | None) -> jax.Array | None:
    """The prior's displacement [M, H, W, 2] toward M reference frames (R consecutive ones per center frame)."""
    if not len(self.motion):
      return None
    repeats = reference_embedding.shape[0] // center_embedding.shape[0]
    return self.motion[0].displacements(jnp.repeat(center_embedding, repeats, axis=0), reference_embedding)

  def _offsets(self, center_term: jax.Array, reference_term: jax.Array, center_embedding: jax.Array | None,
               reference_embedding: jax.Array | None) -> list[jax.Array]:
    """Each deformable layer's offsets [M, H, W, 1, K, 2] toward M reference frames from the frames' offset terms
    (conv'(f)) and motion embeddings: the offset block's, plus the prior's displacement at every tap."""
    shift = self._motion_shift(center_embedding, reference_embedding)
    offsets = self.offsets.from_frame_terms(center_term, reference_term, shift if self.motion_align else None)
    return _shifted(offsets, shift)

  def foreground_logits(self, features: jax.Array) -> jax.Array | None:
    """Instance-agnostic foreground logits [N, uH, uW] of frames [N, H, W, C]; None without the gate."""
    if not len(self.foreground):
      return None
    logits = self.foreground[1](jax.nn.relu(self.foreground[0](features)))
    return depth_to_space(precision.to_float32(logits), self.upsample)

  def warp(self, center: jax.Array, instance_masks: jax.Array, offsets: list[jax.Array]) -> jax.Array:
    """g^i: instance features of the center frame warped toward each reference frame.

    center: [N, H, W, C] f_t; instance_masks: [N, I, H, W] soft masks at feature resolution; offsets: one
    [N*R, H, W, 1, K, 2] per deformable layer, toward R reference frames per center frame.
    Returns [N*R, I, H, W, C].
    """
    num_instances, height, width = instance_masks.shape[1:]
    pad = self.kernel_size // 2
    conv_args = dict(stride=1, padding=pad, dilation=1, offset_groups=1, impl=self.impl)
    warped = kernels.masked_deform_conv2d(center, instance_masks, offsets[0], self.deform_weights[0][...],
                                          **conv_args)  # [N*R, I, H, W, C]
    warped = warped + self.deform_biases[0][...].astype(warped.dtype)
    images = warped.shape[0]
    for layer in range(1, len(offsets)):
      flat = jax.nn.relu(warped).reshape(images * num_instances, height, width, -1)
      layer_offsets = jnp.repeat(offsets[layer], num_instances, axis=0)
      flat = kernels.deform_conv2d(flat, layer_offsets, self.deform_weights[layer][...], **conv_args)
      bias = self.deform_biases[layer][...].astype(flat.dtype)
      warped = flat.reshape(images, num_instances, height, width, -1) + bias
    return warped

  @property
  def linear_head(self) -> bool:
    """The paper's head (the 1x1 logits conv right after a single deformable layer) is linear in g^i."""
    return not len(self.mask_convs) and len(self.deform_weights) == 1

  def instance_logits(self, center: jax.Array, instance_masks: jax.Array, offsets: list[jax.Array],
                      references: jax.Array) -> jax.Array:
    """logits^i = head(g^i + f_{t+d}): center [N, H, W, C], instance_masks [N, I, H, W], offsets toward M = N*R
    reference frames [M, H, W, C] -> [M, I, uH, uW].

    With the linear head the 1x1 conv V folds into the deformable weights, exactly: V(DCN_W(M_i f_t) + b + f_ref)
    = DCN_{W V}(M_i f_t) + V(b + f_ref). The projection then has u*u channels instead of C, and so has the
    gather per instance, reference frame, tap and corner: no C-channel g^i is ever formed.
    """
    images, u = references.shape[0], self.upsample
    num_instances, height, width = instance_masks.shape[1:]
    if self.linear_head:
      head = self.mask_logits.kernel[...][0, 0]  # [C, u*u]
      weight = jnp.einsum("hwco,ou->hwcu", self.deform_weights[0][...], head,
                          precision=jax.lax.Precision.HIGHEST)  # [kh, kw, C, u*u]
      pad = self.kernel_size // 2
      cells = kernels.masked_deform_conv2d(center, instance_masks, offsets[0], weight, stride=1, padding=pad,
                                           dilation=1, offset_groups=1, impl=self.impl)  # [M, I, H, W, u*u]
      cells = cells + self.mask_logits(references + self.deform_biases[0][...].astype(references.dtype))[:, None]
    else:
      h = self.warp(center, instance_masks, offsets) + references[:, None]  # [M, I, H, W, C]
      h = h.reshape(images * num_instances, height, width, -1)
      for conv in self.mask_convs:
        h = jax.nn.relu(conv(h))
      cells = self.mask_logits(h)
    cells = precision.to_float32(cells)  # sigmoid, the soft IoU and linking in float32
    return depth_to_space(cells, u).reshape(images, num_instances, height * u, width * u)

  def __call__(self, center: jax.Array, instance_masks: jax.Array,
               references: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """Mask logits of every instance in each reference frame, and the foreground logits of those frames.

    center: [N, H, W, C]; instance_masks: [N, I, H, W] at feature resolution; references: [N*R, H, W, C], R
    per center frame (consecutive). Returns (logits [N*R, I, uH, uW], foreground logits [N*R, uH, uW] or None),
    u = `upsample`. The offset block convolves each difference f_t - f_{t+d} (training's form).
    """
    center_embedding, reference_embedding = self._motion_embedding(center), self._motion_embedding(references)
    if self.motion_align:  # the warp reads the center frame's own term: the per-frame form
      offsets = self._offsets(self.offsets.frame_term(center), self.offsets.frame_term(references),
                              center_embedding, reference_embedding)
    else:
      repeats = references.shape[0] // center.shape[0]
      offsets = self.offsets(jnp.repeat(center, repeats, axis=0) - references)
      offsets = _shifted(offsets, self._motion_shift(center_embedding, reference_embedding))
    logits = self.instance_logits(center, instance_masks, offsets, references)
    return logits, self.foreground_logits(references)

  def from_frame_terms(self, center: FrameTerms, instance_masks: jax.Array,
                       references: FrameTerms) -> tuple[jax.Array, jax.Array | None]:
    """As __call__, from per-frame terms computed once per frame (inference): equal up to rounding."""
    offsets = self._offsets(center.offset_term, references.offset_term, center.motion, references.motion)
    logits = self.instance_logits(center.features, instance_masks, offsets, references.features)
    return logits, references.foreground


def mask_probabilities(logits: jax.Array, fg_logits: jax.Array | None) -> jax.Array:
  """p^i = sigmoid(logits^i) [* sigmoid(fg)]: [N, I, H, W] (fg: [N, H, W] or None)."""
  probs = jax.nn.sigmoid(logits)
  if fg_logits is not None:
    probs = probs * jax.nn.sigmoid(fg_logits)[:, None]
  return probs


def soft_iou_loss(probs: jax.Array, targets: jax.Array, valid: jax.Array, smooth: float = 1.0) -> jax.Array:
  """Mean over valid instances of 1 - sIoU, sIoU(A, B) = (sum(AB) + s) / (sum(A + B - AB) + s).

  probs, targets: [..., H, W] in [0, 1]; valid: [...]. The smoothing term s makes an empty prediction of an
  absent instance (empty target) a perfect one instead of 0/0, and keeps the gradient finite there.
  """
  inter = jnp.sum(probs * targets, axis=(-2, -1))
  union = jnp.sum(probs + targets - probs * targets, axis=(-2, -1))
  siou = (inter + smooth) / (union + smooth)
  valid = valid.astype(probs.dtype)
  return jnp.sum((1.0 - siou) * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def downsample_masks(masks: jax.Array, stride: int) -> jax.Array:
  """Area-average pooling of image-resolution masks [..., H, W] to feature resolution [..., H/s, W/s]."""
  *lead, height, width = masks.shape
  if height % stride or width % stride:
    raise ValueError(f"mask size {(height, width)} is not a multiple of the feature stride {stride}")
  pooled = masks.astype(jnp.float32).reshape(*lead, height // stride, stride, width // stride, stride)
  return pooled.mean(axis=(-3, -1))
