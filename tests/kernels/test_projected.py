"""impl="xla_projected" (kernels/projected.py, x @ W first, then a gather per instance) equals the current XLA
masked form and I separate deform_conv2d calls on M_i * x: the output and every gradient, fp32, 1e-5 relative;
also with R warps per frame (offsets [N*R, ...], frame b // R; MaskProp's center frame toward its references),
and through the Pallas kernels of the same form (interpret mode), whose backward is this module's."""

import functools

import jax
from jax import test_util as jax_test_util
import jax.numpy as jnp
import numpy as np
import pytest

from maskprop_jax.kernels import IMPLS, deform_conv2d, masked_deform_conv2d, resolve_impl
from maskprop_jax.kernels import geometry
from maskprop_jax.kernels import projected

BATCH, HEIGHT, WIDTH, CHANNELS, OUT_CHANNELS, INSTANCES = 2, 6, 7, 4, 3, 3
MAX_RELATIVE_ERROR = 1e-5
NAMES = ("x", "instance_masks", "offsets", "weight", "mask", "bias")

# Stride 1/2, padding 0/1/2, dilation 1/2, offset groups 1/2, modulation mask and bias on/off. chunk_elements:
# None runs the public masked_deform_conv2d(impl="xla_projected") in one chunk; a number calls
# projected.masked_deform_conv2d with that budget. A row costs 4 * 9 * G * (O + I) = 432 elements at G = 2: the
# 4 output rows of s2_p0_d2_g2 go 3 per chunk, the 84 of s1_p2_d2_g2 5 per chunk, each last chunk padded.
CONFIGS = {
    "s1_p1_d1_g1_mask_bias": dict(stride=1, padding=1, dilation=1, offset_groups=1, mask=True, bias=True,
                                  chunk_elements=None),
    "s2_p0_d2_g2": dict(stride=2, padding=0, dilation=2, offset_groups=2, mask=False, bias=False,
                        chunk_elements=3 * 432),
    "s1_p2_d2_g2_mask_bias": dict(stride=1, padding=2, dilation=2, offset_groups=2, mask=True, bias=True,
                                  chunk_elements=5 * 432),
    # 3 warps of each frame: 6 output images of 42 rows go 8 rows per chunk, so chunks straddle images.
    "s1_p1_d1_g1_mask_r3": dict(stride=1, padding=1, dilation=1, offset_groups=1, mask=True, bias=False,
                                chunk_elements=8 * 4 * 9 * (OUT_CHANNELS + INSTANCES), warps=3),
}


def _conv(config):
  return {k: config[k] for k in ("stride", "padding", "dilation", "offset_groups")}


def _make_inputs(config, seed=0, dtype=np.float32):
  """Soft instance masks, one of them empty; about one offset in ten leaves the image."""
  rng = np.random.default_rng(seed)
  out_hw = geometry.output_size((HEIGHT, WIDTH), (3, 3), (config["stride"],) * 2, (config["padding"],) * 2,
                                (config["dilation"],) * 2)
  images = BATCH * config.get("warps", 1)
  offsets_shape = (images,) + out_hw + (config["offset_groups"], 9, 2)
  offsets = rng.normal(0.0, 1.5, offsets_shape)
  far = rng.random(offsets_shape) < 0.1
  offsets = np.where(far, rng.choice([-1, 1], offsets_shape) * rng.uniform(4, 10, offsets_shape), offsets)
  instance_masks = rng.uniform(0.0, 1.0, (BATCH, INSTANCES, HEIGHT, WIDTH))
  instance_masks[:, 1] = 0.0
  inputs = dict(
      x=rng.normal(size=(BATCH, HEIGHT, WIDTH, CHANNELS)),
      instance_masks=instance_masks,
      offsets=offsets,
      weight=rng.normal(size=(3, 3, CHANNELS, OUT_CHANNELS)),
      mask=rng.uniform(0.0, 1.0, offsets_shape[:-1]) if config["mask"] else None,
      bias=rng.normal(size=(OUT_CHANNELS,)) if config["bias"] else None,
      out_grad=rng.normal(size=(images, INSTANCES) + out_hw + (OUT_CHANNELS,)),
  )
  return {k: None if v is None else np.asarray(v, dtype) for k, v in inputs.items()}


def _projected_call(x, instance_masks, offsets, weight, mask, bias, *, chunk_elements, **conv):
  if chunk_elements is None:
    return masked_deform_conv2d(x, instance_masks, offsets, weight, mask, bias=bias, impl="xla_projected", **conv)
  out = projected.masked_deform_conv2d(x, instance_masks, offsets, weight, mask, chunk_elements=chunk_elements,
                                       **conv)
  return out if bias is None else out + bias


def _xla_call(x, instance_masks, offsets, weight, mask, bias, *, chunk_elements, **conv):
  del chunk_elements
  return masked_deform_conv2d(x, instance_masks, offsets, weight, mask, bias=bias, impl="xla", **conv)


def _separate_calls(x, instance_masks, offsets, weight, mask, bias, *, chunk_elements, **conv):
  """The definition: one deform_conv2d per instance on the masked features (frame b // R for output image b)."""
  del chunk_elements
  warps = offsets.shape[0] // x.shape[0]
  x, instance_masks = jnp.repeat(x, warps, axis=0), jnp.repeat(instance_masks, warps, axis=0)
  outs = [deform_conv2d(x * instance_masks[:, i, :, :, None], offsets, weight, mask, bias=bias, impl="xla",
                        **conv) for i in range(instance_masks.shape[1])]
  return jnp.stack(outs, axis=1)


@functools.partial(jax.jit, static_argnames=("fn", "options"))
def _value_and_grads(x, instance_masks, offsets, weight, mask, bias, out_grad, fn, options):
  out, vjp = jax.vjp(functools.partial(fn, **dict(options)), x, instance_masks, offsets, weight, mask, bias)
  return out, dict(zip(NAMES, vjp(out_grad)))


def _run(fn, inputs, config):
  options = tuple(sorted(dict(_conv(config), chunk_elements=config["chunk_elements"]).items()))
  out, grads = _value_and_grads(*(inputs[n] for n in NAMES + ("out_grad",)), fn=fn, options=options)
  return out, {k: v for k, v in grads.items() if v is not None}


def _relative_error(actual, expected):
  expected = np.asarray(expected, np.float64)
  return float(np.max(np.abs(np.asarray(actual, np.float64) - expected)) / max(np.max(np.abs(expected)), 1e-12))


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request):
  config = CONFIGS[request.param]
  inputs = _make_inputs(config)
  return config, inputs, _run(_projected_call, inputs, config)


@pytest.mark.parametrize("expected_fn", [_xla_call, _separate_calls], ids=["xla_masked", "separate_calls"])
def test_equals_current_forms(case, expected_fn):
  config, inputs, (out, grads) = case
  expected_out, expected_grads = _run(expected_fn, inputs, config)
  assert out.shape == expected_out.shape == inputs["out_grad"].shape
  assert out.dtype == jnp.float32
  assert _relative_error(out, expected_out) <= MAX_RELATIVE_ERROR
  assert set(grads) == set(expected_grads) == {n for n in NAMES if inputs[n] is not None}
  for name, grad in grads.items():
    assert grad.shape == inputs[name].shape, name
    assert _relative_error(grad, expected_grads[name]) <= MAX_RELATIVE_ERROR, name


def test_empty_instance_gives_bias_only(case):
  config, inputs, (out, _) = case
  expected = 0.0 if inputs["bias"] is None else inputs["bias"]
  np.testing.assert_array_equal(np.asarray(out)[:, 1], np.broadcast_to(expected, out[:, 1].shape))


def test_bfloat16_inputs_close_to_float32():
  config = CONFIGS["s1_p1_d1_g1_mask_bias"]
  inputs = _make_inputs(config)
  out32, grads32 = _run(_projected_call, inputs, config)  # compiled already for the `case` fixture
  inputs16 = {k: None if v is None else jnp.asarray(v, jnp.bfloat16) for k, v in inputs.items()}
  out16, grads16 = _run(_projected_call, inputs16, config)
  assert out16.dtype == jnp.bfloat16 and all(g.dtype == jnp.bfloat16 for g in grads16.values())
  assert _relative_error(out16, out32) <= 3e-2
  for name in ("x", "instance_masks", "weight", "mask"):  # offsets: differences of corners, noisy in bf16
    assert _relative_error(grads16[name], grads32[name]) <= 3e-2, name


@pytest.mark.parametrize("name", [n for n, c in sorted(CONFIGS.items()) if c["chunk_elements"]])
def test_chunk_budgets_leave_a_padded_last_chunk(name):
  """The chunked configs above really run several chunks, the last one padded (no compilation here)."""
  config = CONFIGS[name]
  inputs = _make_inputs(config)
  geo = geometry.ConvGeometry.from_arguments("test", **{n: inputs[n] for n in NAMES}, **_conv(config),
                                             warps=config.get("warps", 1))
  rows_per_chunk, num_chunks, num_rows = projected._plan(geo, config["chunk_elements"])
  assert num_chunks > 1 and num_chunks * rows_per_chunk > num_rows


def test_check_grads_against_finite_differences():
  """Offsets keep every sample strictly inside a pixel cell, where the sampling is smooth."""
  rng = np.random.default_rng(2)
  x = rng.normal(size=(1, 5, 6, 4)).astype(np.float32)
  instance_masks = rng.uniform(0.2, 1.0, (1, 2, 5, 6)).astype(np.float32)
  weight = rng.normal(size=(3, 3, 4, 2)).astype(np.float32)
  offsets = (rng.integers(-2, 3, (1, 5, 6, 2, 9, 2)) + rng.uniform(0.2, 0.8, (1, 5, 6, 2, 9, 2)))
  mask = rng.uniform(0.2, 1.0, (1, 5, 6, 2, 9)).astype(np.float32)
  f = jax.jit(lambda *a: masked_deform_conv2d(*a, dilation=2, padding=2, offset_groups=2, impl="xla_projected"))
  jax_test_util.check_grads(f, (x, instance_masks, offsets.astype(np.float32), weight, mask), order=1,
                            modes=("rev",), eps=1e-2, atol=2e-2, rtol=2e-2)


def test_plain_deform_conv2d_routes_through_one_instance():
  config = CONFIGS["s1_p1_d1_g1_mask_bias"]
  inputs = _make_inputs(config, seed=4)
  args = (inputs["x"], inputs["offsets"], inputs["weight"], inputs["mask"])
  plain = [jax.jit(lambda *a, impl=impl: deform_conv2d(*a, bias=inputs["bias"], impl=impl))(*args)
           for impl in ("xla_projected", "xla")]
  assert plain[0].shape == (BATCH, HEIGHT, WIDTH, OUT_CHANNELS)
  assert _relative_error(*plain) <= MAX_RELATIVE_ERROR


def test_impl_names_and_what_auto_picks():
  assert {"xla_projected", "pallas_projected", "pallas_gpu_projected", "pallas_tpu_projected"} <= set(IMPLS)
  assert resolve_impl("xla_projected") == "xla_projected"  # no GPU / TPU or interpret mode needed
  assert resolve_impl("pallas_projected", interpret=True) in ("pallas_gpu_projected", "pallas_tpu_projected")
  if jax.default_backend() == "cpu":
    assert resolve_impl("auto") == "xla"  # plain deform_conv2d
    assert resolve_impl("auto", masked=True) == "xla_projected"
    with pytest.raises(ValueError, match="needs a GPU or TPU"):
      resolve_impl("pallas_gpu_projected")


@pytest.mark.parametrize("impl", ["pallas_gpu_projected", "pallas_tpu_projected"])
def test_pallas_projected_impls_through_the_public_function(impl):
  """Forward by the Pallas kernel (interpret mode), backward by kernels.projected: equal to impl="xla"."""
  config = CONFIGS["s1_p1_d1_g1_mask_r3"]
  inputs = _make_inputs(config, seed=5)

  def pallas_call(x, instance_masks, offsets, weight, mask, bias, *, chunk_elements, **conv):
    del chunk_elements
    return masked_deform_conv2d(x, instance_masks, offsets, weight, mask, bias=bias, impl=impl, interpret=True,
                                **conv)

  out, grads = _run(pallas_call, inputs, config)
  expected_out, expected_grads = _run(_xla_call, inputs, config)
  assert out.shape == (BATCH * 3, INSTANCES, HEIGHT, WIDTH, OUT_CHANNELS)
  assert _relative_error(out, expected_out) <= MAX_RELATIVE_ERROR
  for name, grad in grads.items():
    assert _relative_error(grad, expected_grads[name]) <= MAX_RELATIVE_ERROR, name


@pytest.mark.parametrize("fn", [
    lambda a: masked_deform_conv2d(**a, impl="xla_projected"),
    lambda a: projected.masked_deform_conv2d(**a),
    lambda a: projected.masked_deform_conv2d_fwd(**a, mask=None),
], ids=["public", "projected", "projected_fwd"])
def test_bad_argument_gives_the_geometry_message(fn):
  args = dict(x=np.zeros((2, 6, 7, 4), np.float32), instance_masks=np.zeros((2, 3, 6, 7), np.float32),
              offsets=np.zeros((2, 6, 7, 1, 9, 1), np.float32), weight=np.zeros((3, 3, 4, 3), np.float32),
              stride=1, padding=1, dilation=1, offset_groups=1)
  with pytest.raises(ValueError, match=r"`offsets` has shape \(2, 6, 7, 1, 9, 1\), expected \(2, 6, 7, 1, 9, 2\)"):
    fn(args)
