"""deform_conv2d (impl="xla") against the NumPy reference, torchvision, a plain convolution and finite differences."""

import functools

import jax
from jax import test_util as jax_test_util
import jax.numpy as jnp
import numpy as np
import pytest

from maskprop_jax.kernels import deform_conv2d, resolve_impl
from maskprop_jax.kernels import geometry
from maskprop_jax.kernels import reference
from maskprop_jax.kernels import xla_impl

BATCH, HEIGHT, WIDTH, CHANNELS, OUT_CHANNELS = 2, 7, 8, 4, 3
MAX_RELATIVE_ERROR = 1e-4

# Together these cover stride 1/2, padding 0/1, dilation 1/2, offset groups 1/2, mask and bias on/off and a
# non-square kernel; each costs one compilation of forward + backward.
CONFIGS = {
    "s1_p1_d1_g1_mask_bias": dict(stride=1, padding=1, dilation=1, offset_groups=1, kernel=(3, 3), mask=True,
                                  bias=True),
    "s2_p0_d1_g2": dict(stride=2, padding=0, dilation=1, offset_groups=2, kernel=(3, 3), mask=False,
                        bias=False),
    "s1_p1_d2_g2_mask": dict(stride=1, padding=1, dilation=2, offset_groups=2, kernel=(3, 3), mask=True,
                             bias=False),
    "s2_p1_d2_g1_k2x3_mask": dict(stride=2, padding=1, dilation=2, offset_groups=1, kernel=(2, 3), mask=True,
                                  bias=True),
}


def _conv_kwargs(config):
  return {k: config[k] for k in ("stride", "padding", "dilation", "offset_groups")}


def _make_inputs(config, seed=0, offsets=None, dtype=np.float32):
  """Random inputs; about one offset in ten is pushed far enough to leave the image."""
  rng = np.random.default_rng(seed)
  kh, kw = config["kernel"]
  out_hw = geometry.output_size((HEIGHT, WIDTH), (kh, kw), (config["stride"],) * 2, (config["padding"],) * 2,
                                (config["dilation"],) * 2)
  groups = config["offset_groups"]
  offsets_shape = (BATCH,) + out_hw + (groups, kh * kw, 2)
  if offsets is None:
    offsets = rng.normal(0.0, 1.5, offsets_shape)
    far = rng.random(offsets_shape) < 0.1
    offsets = np.where(far, rng.choice([-1, 1], offsets_shape) * rng.uniform(4, 10, offsets_shape), offsets)
  inputs = dict(
      x=rng.normal(size=(BATCH, HEIGHT, WIDTH, CHANNELS)),
      offsets=np.broadcast_to(offsets, offsets_shape),
      weight=rng.normal(size=(kh, kw, CHANNELS, OUT_CHANNELS)),
      mask=rng.uniform(0.0, 1.0, offsets_shape[:-1]) if config["mask"] else None,
      bias=rng.normal(size=(OUT_CHANNELS,)) if config["bias"] else None,
      out_grad=rng.normal(size=(BATCH,) + out_hw + (OUT_CHANNELS,)),
  )
  return {k: None if v is None else np.asarray(v, dtype) for k, v in inputs.items()}


@functools.partial(jax.jit, static_argnames="conv")
def _value_and_grads(x, offsets, weight, mask, bias, out_grad, conv):
  """deform_conv2d and the gradients of sum(out * out_grad); conv is a tuple of keyword items."""

  def f(x, offsets, weight, mask, bias):
    return deform_conv2d(x, offsets, weight, mask, bias=bias, impl="xla", **dict(conv))

  out, vjp = jax.vjp(f, x, offsets, weight, mask, bias)
  return out, dict(zip(("x", "offsets", "weight", "mask", "bias"), vjp(out_grad)))


def _run(inputs, config):
  names = ("x", "offsets", "weight", "mask", "bias", "out_grad")
  return _value_and_grads(*(inputs[n] for n in names), conv=tuple(sorted(_conv_kwargs(config).items())))


def _relative_error(actual, expected):
  expected = np.asarray(expected, np.float64)
  return float(np.max(np.abs(np.asarray(actual, np.float64) - expected)) / max(np.max(np.abs(expected)), 1e-12))


def _reference(inputs, config):
  kwargs = _conv_kwargs(config)
  out = reference.deform_conv2d(inputs["x"], inputs["offsets"], inputs["weight"], inputs["mask"],
                                inputs["bias"], **kwargs)
  grads = reference.deform_conv2d_grads(inputs["x"], inputs["offsets"], inputs["weight"], inputs["out_grad"],
                                        inputs["mask"], **kwargs)
  return out, grads


def _torchvision(inputs, config):
  """torchvision's output and gradients, converted to our layout."""
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  arrays = reference.to_torchvision_layout(inputs["x"], inputs["offsets"], inputs["weight"], inputs["mask"])
  names = ["x", "offsets", "weight"] + (["mask"] if inputs["mask"] is not None else [])
  tensors = {n: torch.tensor(a, requires_grad=True) for n, a in zip(names, arrays)}
  if inputs["bias"] is not None:
    tensors["bias"] = torch.tensor(inputs["bias"], requires_grad=True)
  out = torchvision.ops.deform_conv2d(tensors["x"], tensors["offsets"], tensors["weight"], tensors.get("bias"),
                                      stride=config["stride"], padding=config["padding"],
                                      dilation=config["dilation"], mask=tensors.get("mask"))
  out_grad = torch.tensor(inputs["out_grad"].transpose(0, 3, 1, 2).copy())
  (out * out_grad).sum().backward()
  grads = {n: reference.from_torchvision_layout(n, t.grad.numpy(), np.shape(inputs[n]))
           for n, t in tensors.items() if n != "bias"}
  if "bias" in tensors:
    grads["bias"] = tensors["bias"].grad.numpy()
  return reference.from_torchvision_layout("out", out.detach().numpy(), None), grads


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def case(request):
  """(config, inputs, our output, our gradients) for each config, computed once for every test below."""
  config = CONFIGS[request.param]
  inputs = _make_inputs(config)
  out, grads = _run(inputs, config)
  return config, inputs, out, {k: v for k, v in grads.items() if v is not None}


def test_matches_numpy_reference(case):
  config, inputs, out, grads = case
  ref_out, ref_grads = _reference(inputs, config)
  assert _relative_error(out, ref_out) <= MAX_RELATIVE_ERROR
  expected_names = {"x", "offsets", "weight"} | {n for n in ("mask", "bias") if inputs[n] is not None}
  assert set(grads) == expected_names
  for name, grad in grads.items():
    assert _relative_error(grad, ref_grads[name]) <= MAX_RELATIVE_ERROR, name


def test_matches_torchvision(case):
  config, inputs, out, grads = case
  tv_out, tv_grads = _torchvision(inputs, config)
  assert _relative_error(out, tv_out) <= MAX_RELATIVE_ERROR
  for name, grad in grads.items():
    assert _relative_error(grad, tv_grads[name]) <= MAX_RELATIVE_ERROR, name


@pytest.mark.parametrize("step", [1.0, 0.5], ids=["integer", "half_integer"])
def test_integer_and_half_integer_offsets(step):
  """Samples exactly on pixels and pixel edges, including -1, H - 1 and H: gradients from the right."""
  config = CONFIGS["s1_p1_d1_g1_mask_bias"]
  rng = np.random.default_rng(1)
  offsets = step * rng.integers(-4, 5, (BATCH, HEIGHT, WIDTH, 1, 9, 2))
  inputs = _make_inputs(config, seed=1, offsets=offsets)
  out, grads = _run(inputs, config)
  ref_out, ref_grads = _reference(inputs, config)
  assert _relative_error(out, ref_out) <= MAX_RELATIVE_ERROR
  for name in ("x", "offsets", "weight", "mask"):
    assert _relative_error(grads[name], ref_grads[name]) <= MAX_RELATIVE_ERROR, name
  tv_out, tv_grads = _torchvision(inputs, config)
  assert _relative_error(out, tv_out) <= MAX_RELATIVE_ERROR
  for name in ("x", "offsets", "weight", "mask"):
    assert _relative_error(grads[name], tv_grads[name]) <= MAX_RELATIVE_ERROR, name


@pytest.mark.parametrize("name", ["s1_p1_d1_g1_mask_bias", "s2_p0_d1_g2", "s1_p1_d2_g2_mask"])
def test_zero_offsets_equal_plain_convolution(name):
  config = dict(CONFIGS[name], mask=False, bias=False)
  inputs = _make_inputs(config, offsets=np.zeros(2))
  out, _ = _run(inputs, config)
  p = config["padding"]
  expected = jax.lax.conv_general_dilated(
      inputs["x"], inputs["weight"], (config["stride"],) * 2, [(p, p), (p, p)],
      rhs_dilation=(config["dilation"],) * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST)
  assert _relative_error(out, expected) <= MAX_RELATIVE_ERROR


def test_check_grads_against_finite_differences():
  """Offsets keep every sample strictly inside a pixel cell, where the sampling is smooth."""
  rng = np.random.default_rng(2)
  x = rng.normal(size=(1, 5, 6, 4)).astype(np.float32)
  weight = rng.normal(size=(3, 3, 4, 2)).astype(np.float32)
  offsets = (rng.integers(-2, 3, (1, 5, 6, 2, 9, 2)) + rng.uniform(0.2, 0.8, (1, 5, 6, 2, 9, 2)))
  mask = rng.uniform(0.2, 1.0, (1, 5, 6, 2, 9)).astype(np.float32)
  f = jax.jit(lambda *a: deform_conv2d(*a, dilation=2, padding=2, offset_groups=2, impl="xla"))
  jax_test_util.check_grads(f, (x, offsets.astype(np.float32), weight, mask), order=1, modes=("rev",),
                            eps=1e-2, atol=2e-2, rtol=2e-2)


def test_bfloat16_inputs_close_to_float32():
  config = CONFIGS["s1_p1_d1_g1_mask_bias"]
  inputs = _make_inputs(config)
  out32, grads32 = _run(inputs, config)
  inputs16 = {k: None if v is None else jnp.asarray(v, jnp.bfloat16) for k, v in inputs.items()}
  out16, grads16 = _run(inputs16, config)
  assert out16.dtype == jnp.bfloat16 and grads16["offsets"].dtype == jnp.bfloat16
  assert _relative_error(out16, out32) <= 3e-2
  for name in ("x", "weight", "mask"):
    assert _relative_error(grads16[name], grads32[name]) <= 3e-2, name


def test_chunked_rows_equal_single_chunk():
  """A chunk budget of 5 output rows (not a divisor of the row count) gives the same results."""
  config = CONFIGS["s1_p1_d2_g2_mask"]
  inputs = _make_inputs(config, seed=3)
  conv = dict(stride=(1, 1), padding=(1, 1), dilation=(2, 2), offset_groups=2)
  args = (inputs["x"], inputs["offsets"], inputs["mask"], inputs["weight"])
  budget = 5 * 9 * CHANNELS

  def forward_and_backward(*a, **kw):
    out = xla_impl.deform_conv2d_fwd(*a, **kw, **conv)
    return (out,) + xla_impl.deform_conv2d_bwd(*a, inputs["out_grad"], **kw, **conv)[:4]

  chunked = jax.jit(functools.partial(forward_and_backward, chunk_elements=budget))(*args)
  whole = jax.jit(forward_and_backward)(*args)
  for a, b in zip(chunked, whole):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("change, message", [
    (dict(offsets=np.zeros((2, 7, 8, 1, 9, 1), np.float32)), "`offsets` has shape"),
    (dict(mask=np.zeros((2, 7, 8, 1, 8), np.float32)), "`mask` has shape"),
    (dict(weight=np.zeros((3, 3, 5, 3), np.float32)), "input channels"),
    (dict(bias=np.zeros((4,), np.float32)), "`bias` has shape"),
    (dict(x=np.zeros((7, 8, 4), np.float32)), r"`x` has shape \(7, 8, 4\), expected \(N, H, W, C\)"),
    (dict(x=np.zeros((2, 7, 8, 4), np.int32)), "floating-point"),
    (dict(stride=0), "`stride` must be"),
    (dict(offset_groups=3), "offset_groups=3"),
    (dict(impl="triton"), "impl must be one of"),
])
def test_bad_arguments_raise_readable_errors(change, message):
  args = dict(x=np.zeros((2, 7, 8, 4), np.float32), offsets=np.zeros((2, 7, 8, 1, 9, 2), np.float32),
              weight=np.zeros((3, 3, 4, 3), np.float32), mask=None, bias=None)
  args.update(change)
  with pytest.raises(ValueError, match=message):
    deform_conv2d(**args)


def test_impl_resolution_on_cpu():
  if jax.default_backend() != "cpu":
    pytest.skip("checks the CPU dispatch")
  assert resolve_impl("auto") == "xla"
  assert resolve_impl("pallas", interpret=True) == "pallas_gpu"
  assert resolve_impl("pallas_tpu", interpret=True) == "pallas_tpu"
  with pytest.raises(ValueError, match="interpret=True"):
    resolve_impl("pallas")
