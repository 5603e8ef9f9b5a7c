"""conv_lowering: lax's forward pass and input gradient bit for bit, its weight gradient up to rounding."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from maskprop_jax.model import conv_lowering, maskprop
from maskprop_jax.model.config import tiny_mask_rcnn_config
from maskprop_jax.model.conv_lowering import conv_as_matmul, conv_general_dilated

NHWC = ("NHWC", "HWIO", "NHWC")

# (input [N, H, W, C], kernel [kh, kw, C, O], strides, padding, weight gradient by taps?)
CASES = [
    ((2, 12, 18, 16), (1, 1, 16, 24), (1, 1), ((0, 0), (0, 0)), True),  # a bottleneck's 1x1
    ((2, 12, 18, 16), (1, 1, 16, 24), (2, 2), ((0, 0), (0, 0)), True),  # a strided shortcut
    ((2, 13, 19, 8), (3, 3, 8, 12), (2, 2), ((1, 1), (1, 1)), True),  # a strided 3x3, odd sizes
    ((2, 12, 18, 3), (7, 7, 3, 8), (2, 2), ((3, 3), (3, 3)), False),  # the stem: 3 channels, lax's
    ((2, 12, 18, 16), (3, 3, 16, 16), (1, 1), ((1, 1), (1, 1)), False),  # stride 1, kxk: lax's
    ((2, 12, 18, 16), (1, 1, 16, 24), (1, 1), "SAME", True),  # nnx.Conv's default padding
]


def _inputs(x_shape, w_shape):
  kx, kw, ky = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, x_shape)
  w = jax.random.normal(kw, w_shape) / np.sqrt(np.prod(w_shape[:3]))
  return x, w


def _conv(impl, strides, padding):
  return lambda x, w: impl(x, w, strides, padding, dimension_numbers=NHWC)


@pytest.mark.parametrize("x_shape, w_shape, strides, padding, taps", CASES)
def test_forward_and_input_gradient_are_laxs_and_the_weight_gradient_agrees(x_shape, w_shape, strides, padding,
                                                                            taps):
  x, w = _inputs(x_shape, w_shape)
  ours, theirs = _conv(conv_general_dilated, strides, padding), _conv(jax.lax.conv_general_dilated, strides, padding)
  y, vjp = jax.vjp(jax.jit(ours), x, w)
  y_ref, vjp_ref = jax.vjp(jax.jit(theirs), x, w)
  np.testing.assert_array_equal(y, y_ref)
  dy = jax.random.normal(jax.random.key(1), y.shape)
  (dx, dw), (dx_ref, dw_ref) = vjp(dy), vjp_ref(dy)
  np.testing.assert_array_equal(dx, dx_ref)
  scale = float(jnp.max(jnp.abs(dw_ref)))
  np.testing.assert_allclose(dw, dw_ref, rtol=0, atol=1e-5 * scale)
  # Which weight gradient ran: the per-tap one is dots only, lax's a transposed convolution.
  gradient_text = str(jax.make_jaxpr(jax.grad(lambda w: jnp.sum(ours(x, w) * dy)))(w))
  assert ("dot_general" in gradient_text) == taps
  assert conv_lowering.uses_taps(w_shape, strides) == taps


def test_taps_weight_gradient_sums_each_taps_products():
  # A hand check of the tap geometry: stride 2, pad 1, so tap (i, j) of output (y, x) saw padded input
  # (i + 2y, j + 2x).
  x, w = _inputs((1, 5, 5, 2), (3, 3, 2, 1))
  dy = jax.random.normal(jax.random.key(2), (1, 3, 3, 1))
  padded = np.pad(np.asarray(x), ((0, 0), (1, 1), (1, 1), (0, 0)))
  expected = np.zeros((3, 3, 2, 1), np.float64)
  for i in range(3):
    for j in range(3):
      for y in range(3):
        for xx in range(3):
          expected[i, j, :, 0] += padded[0, i + 2 * y, j + 2 * xx] * float(dy[0, y, xx, 0])
  got = conv_lowering.taps_weight_gradient(x, dy, (3, 3), (2, 2), ((1, 1), (1, 1)))
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_grouped_dilated_and_bfloat16_convolutions_are_laxs_unchanged():
  x, _ = _inputs((1, 8, 8, 8), (1, 1, 1, 1))
  calls = [
      (jax.random.normal(jax.random.key(3), (3, 3, 4, 8)), dict(feature_group_count=2)),
      (jax.random.normal(jax.random.key(3), (3, 3, 8, 8)), dict(rhs_dilation=(2, 2))),
  ]
  for w, kwargs in calls:
    ours = lambda w: jnp.sum(conv_general_dilated(x, w, (2, 2), ((1, 1), (1, 1)), dimension_numbers=NHWC, **kwargs))
    assert "dot_general" not in str(jax.make_jaxpr(jax.grad(ours))(w))
  w16 = jax.random.normal(jax.random.key(4), (1, 1, 8, 8), jnp.bfloat16)
  ours = lambda w: jnp.sum(conv_general_dilated(x.astype(jnp.bfloat16), w, (1, 1), "SAME", dimension_numbers=NHWC))
  assert "dot_general" not in str(jax.make_jaxpr(jax.grad(ours))(w16))


def test_every_conv_of_the_models_takes_the_lowering():
  detector = tiny_mask_rcnn_config(num_classes=3)
  detector.roi_heads.mask_refine_layers = (8,)
  config = ml_collections.ConfigDict(dict(
      detector=detector, init_from="",
      propagation=dict(level=1, offset_width=8, num_deform_layers=1, kernel_size=3, head_width=8, head_depth=1,
                       use_foreground=True, upsample=1, impl="xla", loss_weight=1.0, refine_layers=(8,))))
  model = maskprop.MaskProp(config, rngs=nnx.Rngs(0))
  convs = [module for _, module in nnx.iter_graph(model) if isinstance(module, nnx.Conv)]
  assert len(convs) > 20
  assert all(conv.conv_general_dilated is conv_general_dilated for conv in convs)


def test_conv_as_matmul_is_the_same_convolution():
  x, w = _inputs((2, 7, 9, 4), (3, 3, 4, 5))
  expected = jax.lax.conv_general_dilated(x, w, (1, 1), ((2, 2), (2, 2)), rhs_dilation=(2, 2),
                                          dimension_numbers=NHWC)
  np.testing.assert_allclose(conv_as_matmul(x, w, dilation=2), expected, rtol=1e-5, atol=1e-5)
