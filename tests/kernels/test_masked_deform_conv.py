"""masked_deform_conv2d equals I separate deform_conv2d calls on M_i * x, forward and every gradient."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskprop_jax.kernels import deform_conv2d, masked_deform_conv2d
from maskprop_jax.kernels import geometry
from maskprop_jax.kernels import reference
from maskprop_jax.kernels import xla_impl

BATCH, HEIGHT, WIDTH, CHANNELS, OUT_CHANNELS, INSTANCES = 2, 6, 7, 4, 3, 3
MAX_RELATIVE_ERROR = 1e-4
NAMES = ("x", "instance_masks", "offsets", "weight", "mask")

CONFIGS = {
    "s1_p1_d1_g1_mask": dict(stride=1, padding=1, dilation=1, offset_groups=1, mask=True),
    "s2_p0_d2_g2": dict(stride=2, padding=0, dilation=2, offset_groups=2, mask=False),
}


def _make_inputs(config, seed=0):
  """Soft instance masks, one of them empty; offsets partly leave the image."""
  rng = np.random.default_rng(seed)
  out_hw = geometry.output_size((HEIGHT, WIDTH), (3, 3), (config["stride"],) * 2, (config["padding"],) * 2,
                                (config["dilation"],) * 2)
  offsets_shape = (BATCH,) + out_hw + (config["offset_groups"], 9, 2)
  instance_masks = rng.uniform(0.0, 1.0, (BATCH, INSTANCES, HEIGHT, WIDTH))
  instance_masks[:, 1] = 0.0
  inputs = dict(
      x=rng.normal(size=(BATCH, HEIGHT, WIDTH, CHANNELS)),
      instance_masks=instance_masks,
      offsets=rng.normal(0.0, 2.0, offsets_shape),
      weight=rng.normal(size=(3, 3, CHANNELS, OUT_CHANNELS)),
      mask=rng.uniform(0.0, 1.0, offsets_shape[:-1]) if config["mask"] else None,
      out_grad=rng.normal(size=(BATCH, INSTANCES) + out_hw + (OUT_CHANNELS,)),
  )
  return {k: None if v is None else np.asarray(v, np.float32) for k, v in inputs.items()}


def _separate_calls(x, instance_masks, offsets, weight, mask, **conv):
  """The definition: one deform_conv2d per instance on the masked features."""
  outs = [deform_conv2d(x * instance_masks[:, i, :, :, None], offsets, weight, mask, impl="xla", **conv)
          for i in range(instance_masks.shape[1])]
  return jnp.stack(outs, axis=1)


def _masked_call(x, instance_masks, offsets, weight, mask, **conv):
  return masked_deform_conv2d(x, instance_masks, offsets, weight, mask, impl="xla", **conv)


@functools.partial(jax.jit, static_argnames=("fn", "conv"))
def _value_and_grads(x, instance_masks, offsets, weight, mask, out_grad, fn, conv):
  f = functools.partial(fn, **dict(conv))
  out, vjp = jax.vjp(f, x, instance_masks, offsets, weight, mask)
  return out, dict(zip(NAMES, vjp(out_grad)))


def _run(fn, inputs, config):
  conv = tuple(sorted((k, config[k]) for k in ("stride", "padding", "dilation", "offset_groups")))
  args = [inputs[n] for n in NAMES + ("out_grad",)]
  out, grads = _value_and_grads(*args, fn=fn, conv=conv)
  return out, {k: v for k, v in grads.items() if v is not None}


def _relative_error(actual, expected):
  expected = np.asarray(expected, np.float64)
  return float(np.max(np.abs(np.asarray(actual, np.float64) - expected)) / max(np.max(np.abs(expected)), 1e-12))


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request):
  config = CONFIGS[request.param]
  inputs = _make_inputs(config)
  return config, inputs, _run(_masked_call, inputs, config)


def test_equals_separate_deform_conv_calls(case):
  config, inputs, (out, grads) = case
  expected_out, expected_grads = _run(_separate_calls, inputs, config)
  assert out.shape == expected_out.shape == inputs["out_grad"].shape
  assert _relative_error(out, expected_out) <= MAX_RELATIVE_ERROR
  assert set(grads) == set(expected_grads) == {n for n in NAMES if inputs[n] is not None}
  for name, grad in grads.items():
    assert _relative_error(grad, expected_grads[name]) <= MAX_RELATIVE_ERROR, name


def test_matches_numpy_reference(case):
  config, inputs, (out, grads) = case
  conv = {k: config[k] for k in ("stride", "padding", "dilation", "offset_groups")}
  args = (inputs["x"], inputs["instance_masks"], inputs["offsets"], inputs["weight"])
  assert _relative_error(out, reference.masked_deform_conv2d(*args, inputs["mask"], **conv)) <= MAX_RELATIVE_ERROR
  ref_grads = reference.masked_deform_conv2d_grads(*args, inputs["out_grad"], inputs["mask"], **conv)
  for name, grad in grads.items():
    assert _relative_error(grad, ref_grads[name]) <= MAX_RELATIVE_ERROR, name


def test_empty_instance_gives_zero_output(case):
  _, _, (out, _) = case
  assert np.all(np.asarray(out)[:, 1] == 0.0)


def test_chunked_rows_equal_single_chunk():
  config = CONFIGS["s1_p1_d1_g1_mask"]
  inputs = _make_inputs(config, seed=1)
  conv = dict(stride=(1, 1), padding=(1, 1), dilation=(1, 1), offset_groups=1)
  args = (inputs["x"], inputs["offsets"], inputs["mask"], inputs["weight"])
  budget = 5 * 9 * CHANNELS * INSTANCES  # 5 output rows per chunk: 84 rows leave the last chunk padded

  def forward_and_backward(*a, **kw):
    out = xla_impl.deform_conv2d_fwd(*a, instance_masks=inputs["instance_masks"], **kw, **conv)
    grads = xla_impl.deform_conv2d_bwd(*a, inputs["out_grad"], instance_masks=inputs["instance_masks"], **kw,
                                       **conv)
    return (out,) + grads

  chunked = jax.jit(functools.partial(forward_and_backward, chunk_elements=budget))(*args)
  whole = jax.jit(forward_and_backward)(*args)
  for a, b in zip(chunked, whole):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_bad_instance_masks_shape_raises():
  x = np.zeros((2, 6, 7, 4), np.float32)
  offsets = np.zeros((2, 6, 7, 1, 9, 2), np.float32)
  weight = np.zeros((3, 3, 4, 3), np.float32)
  with pytest.raises(ValueError, match=r"`instance_masks` has shape \(2, 3, 7, 6\)"):
    masked_deform_conv2d(x, np.zeros((2, 3, 7, 6), np.float32), offsets, weight)
