"""torchvision.ops.misc.Conv2dNormActivation in Flax NNX: conv, optional batch norm, ReLU.

It is an `nnx.List` so that parameter paths are the same integer paths as torchvision's state dict
(`0` the conv, `1` the batch norm), which keeps checkpoint conversion one to one.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from maskprop_jax.model.conv_lowering import conv_as_matmul, conv_general_dilated

# torchvision initialises detection-head convs with kaiming_normal_(mode="fan_out", nonlinearity="relu"):
# an untruncated normal, unlike jax.nn.initializers.he_normal.
conv_kernel_init = nnx.initializers.variance_scaling(2.0, "fan_out", "normal")


def batch_norm(num_features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  """nn.BatchNorm2d's defaults: momentum 0.1 (0.9 decay here), eps 1e-5, exact two-pass variance."""
  return nnx.BatchNorm(num_features, momentum=0.9, epsilon=1e-5, use_fast_variance=False, rngs=rngs)


def apply_conv(conv: nnx.Conv, x: jax.Array, as_matmul: bool = False) -> jax.Array:
  """conv(x), or (as_matmul) the same stride-1 "same" convolution and bias as im2col + one matmul."""
  if not as_matmul:
    return conv(x)
  dilation = conv.kernel_dilation  # as given to nnx.Conv: an int here
  bias = None if conv.bias is None else conv.bias[...]
  x, kernel, bias = conv.promote_dtype((x, conv.kernel[...], bias), dtype=conv.dtype)  # as conv(x) would
  y = conv_as_matmul(x, kernel, dilation if isinstance(dilation, int) else dilation[0])
  return y if bias is None else y + bias


class Conv2dNormActivation(nnx.List):
  """A `kernel_size` conv (bias only without norm), optional BatchNorm, ReLU. NHWC in and out."""

  def __init__(
      self,
      in_channels: int,
      out_channels: int,
      kernel_size: int = 3,
      dilation: int = 1,
      use_norm: bool = False,
      *,
      rngs: nnx.Rngs,
  ):
    padding = (kernel_size - 1) // 2 * dilation
    conv = nnx.Conv(
        in_channels, out_channels, (kernel_size, kernel_size), padding=((padding, padding), (padding, padding)),
        kernel_dilation=dilation, use_bias=not use_norm, kernel_init=conv_kernel_init,
        bias_init=nnx.initializers.zeros, conv_general_dilated=conv_general_dilated, rngs=rngs)
    super().__init__([conv, batch_norm(out_channels, rngs)] if use_norm else [conv])

  def __call__(self, x: jax.Array, valid: jax.Array | None = None, *, as_matmul: bool = False) -> jax.Array:
    """x: [N, H, W, C_in] -> [N, H, W, C_out].

    valid: optional [N] bool; in training mode only these rows contribute to the batch statistics (padded RoIs
    must not, or the statistics would differ from torchvision's, which never sees the padding).
    as_matmul: compute the convolution as im2col + one matmul (see conv_as_matmul).
    """
    y = apply_conv(self[0], x, as_matmul)
    if len(self) == 1:
      return jax.nn.relu(y)
    norm = self[1]
    if valid is None or norm.use_running_average:
      return jax.nn.relu(norm(y))
    # A batch of padding only (e.g. no positive RoI for the mask head) has no statistics: 0/0 would put NaN in
    # the outputs and, through them, in the gradients. Normalise it with the padding's own statistics (its
    # outputs are masked out downstream) and leave the running averages as they were.
    any_valid = jnp.any(valid)
    rows = jnp.where(any_valid, valid, True)
    old_mean, old_var = norm.mean[...], norm.var[...]
    y = norm(y, mask=jnp.broadcast_to(rows[:, None, None, None], y.shape))
    norm.mean[...] = jnp.where(any_valid, norm.mean[...], old_mean)
    norm.var[...] = jnp.where(any_valid, norm.var[...], old_var)
    return jax.nn.relu(y)
