"""Where each location of a reference frame came from in the center frame: a local correlation and its soft-argmax.

MaskProp's offset block (model/propagation.py) reads the feature difference f_t - f_{t+d} through three 3x3
convolutions, so it sees about +-3 cells around each location: an object that moved farther between the two frames
is out of its sight, the deformable convolution samples empty features there, and the gradient of its bilinear
sampling cannot point at an object that far either. On the synthetic tuning split of seed 303 the main job's
propagated masks keep IoU 0.86 for objects that moved under a cell, 0.78 at 2-4 cells, 0.62 at 4-8 and 0.39 beyond 8
(`python -m maskprop_jax.inference.propagation_eval`, session 16's model), and 29% of the (track, frame) pairs of a
7-frame clip moved 4 cells or more.

The motion prior gives every location a displacement to start from, as optical-flow networks do with a correlation
layer (FlowNet, PWC-Net):
  - once per frame (`embed`): the features are average-pooled `stride` x `stride` coarser, projected by a 1x1
    convolution to `width` channels and L2-normalised;
  - per (center, reference) pair (`displacements`): each coarse location i of the reference frame scores every
    location j of the center frame within `radius` coarse cells by cosine similarity times a learned temperature;
    the softmax-weighted mean of j - i, in the features' cells, bilinearly upsampled to their grid, is where the
    location's content was in the center frame.
`PropagationHead` adds it to every tap's offset, so the zero-initialised offset convolutions start from it and only
correct it. The expectation is differentiable: the propagation loss trains the projection, the temperature and,
through them, the features.

All pairs of coarse locations are scored by one batched matmul ([M, h*w, c] x [M, c, h*w]) and the window is a mask
on it: at the synthetic config's test size 26 x 39 coarse cells, a million scores a pair, far cheaper on a CPU than
(2r+1)^2 shifted products, and exact at the frame's border (a location out of the frame is no candidate).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskprop_jax.model import precision
from maskprop_jax.model.conv_lowering import conv_general_dilated

INITIAL_TEMPERATURE = 10.0  # cosine similarities in [-1, 1] become logits in [-10, 10]: a clear match dominates


def window_mask(height: int, width: int, radius: int) -> np.ndarray:
  """[h*w, h*w] bool: location j (column) is within `radius` cells of location i (row), in rows and in columns."""
  ys, xs = np.divmod(np.arange(height * width), width)
  return (np.abs(ys[:, None] - ys[None]) <= radius) & (np.abs(xs[:, None] - xs[None]) <= radius)


class MotionPrior(nnx.Module):
  """A correlation and soft-argmax motion estimate from a reference frame back to its center frame."""

  def __init__(self, channels: int, *, radius: int, width: int = 16, stride: int = 2, rngs: nnx.Rngs):
    if radius < 1 or stride < 1:
      raise ValueError(f"motion radius and stride must be positive, got radius={radius}, stride={stride}")
    self.radius, self.stride = radius, stride
    self.project = nnx.Conv(channels, width, (1, 1), kernel_init=nnx.initializers.he_normal(),
                            conv_general_dilated=conv_general_dilated, rngs=rngs)
    self.log_temperature = nnx.Param(jnp.asarray(math.log(INITIAL_TEMPERATURE), jnp.float32))

  def embed(self, features: jax.Array) -> jax.Array:
    """[N, H, W, C] features -> [N, H/s, W/s, width] unit-length embeddings (float32), s = `stride`."""
    n, height, width, channels = features.shape
    s = self.stride
    if height % s or width % s:
      raise ValueError(f"feature grid {(height, width)} is not a multiple of the motion stride {s}")
    pooled = features.reshape(n, height // s, s, width // s, s, channels).mean(axis=(2, 4))
    embedded = precision.to_float32(self.project(pooled))
    return embedded * jax.lax.rsqrt(jnp.sum(embedded * embedded, axis=-1, keepdims=True) + 1e-12)

  def displacements(self, center: jax.Array, reference: jax.Array) -> jax.Array:
    """Embeddings of M (center, reference) pairs [M, h, w, c] each -> [M, s*h, s*w, 2]: for every location of the
    reference frame's feature grid, the (dy, dx) in feature cells to where its content was in the center frame."""
    m, height, width, channels = reference.shape
    cells = height * width
    scores = jnp.einsum("mic,mjc->mij", reference.reshape(m, cells, channels), center.reshape(m, cells, channels),
                        precision=jax.lax.Precision.HIGHEST)  # [M, h*w (reference), h*w (center)]
    scores = scores * jnp.exp(self.log_temperature[...])
    inside = jnp.asarray(window_mask(height, width, self.radius))
    weights = jax.nn.softmax(jnp.where(inside, scores, -jnp.inf), axis=-1)  # every row has itself: finite
    ys, xs = np.divmod(np.arange(cells, dtype=np.float32), width)
    positions = jnp.asarray(np.stack([ys, xs], axis=-1))  # [h*w, 2]
    coarse = jnp.einsum("mij,jk->mik", weights, positions, precision=jax.lax.Precision.HIGHEST) - positions
    coarse = coarse.reshape(m, height, width, 2) * self.stride  # in the features' cells
    fine_hw = (height * self.stride, width * self.stride)
    return jax.image.resize(coarse, (m, *fine_hw, 2), "linear") if self.stride > 1 else coarse
