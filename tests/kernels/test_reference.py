"""The NumPy reference itself: boundary rules, finite differences, a plain convolution and torchvision."""

import numpy as np
import pytest

from maskprop_jax.kernels import reference


def test_bilinear_sample_boundaries():
  image = np.arange(12, dtype=np.float64).reshape(3, 4, 1) + 1.0  # H=3, W=4, values 1..12
  assert reference.bilinear_sample(image, -1.0, 1.0)[0] == 0.0  # y <= -1: whole sample is zero
  assert reference.bilinear_sample(image, 1.0, 4.0)[0] == 0.0  # x >= W
  assert reference.bilinear_sample(image, 2.0, 3.0)[0] == 12.0  # last pixel exactly
  assert reference.bilinear_sample(image, -0.5, 0.0)[0] == pytest.approx(0.5)  # half of pixel (0, 0)
  assert reference.bilinear_sample(image, 2.5, 1.0)[0] == pytest.approx(0.5 * 10.0)  # below the last row
  assert reference.bilinear_sample(image, 0.5, 0.5)[0] == pytest.approx((1 + 2 + 5 + 6) / 4)


def _random_problem(rng, offsets):
  return dict(x=rng.normal(size=(1, 4, 5, 2)), offsets=offsets, weight=rng.normal(size=(3, 3, 2, 2)),
              mask=rng.uniform(0.2, 1.0, offsets.shape[:-1]))


def test_gradients_match_central_differences():
  """Samples strictly inside pixel cells, where the output is a polynomial in every input."""
  rng = np.random.default_rng(0)
  offsets = rng.integers(-2, 3, (1, 4, 5, 2, 9, 2)) + rng.uniform(0.2, 0.8, (1, 4, 5, 2, 9, 2))
  problem = dict(_random_problem(rng, offsets), x=rng.normal(size=(1, 4, 5, 4)),
                 weight=rng.normal(size=(3, 3, 4, 2)))
  conv = dict(stride=1, padding=1, dilation=1, offset_groups=2)
  out_grad = rng.normal(size=(1, 4, 5, 2))
  grads = reference.deform_conv2d_grads(problem["x"], problem["offsets"], problem["weight"], out_grad,
                                        problem["mask"], **conv)

  def loss(p):
    return np.sum(reference.deform_conv2d(p["x"], p["offsets"], p["weight"], p["mask"], **conv) * out_grad)

  eps = 1e-5
  for name in ("x", "offsets", "weight", "mask"):
    direction = rng.normal(size=problem[name].shape)
    plus = dict(problem, **{name: problem[name] + eps * direction})
    minus = dict(problem, **{name: problem[name] - eps * direction})
    numeric = (loss(plus) - loss(minus)) / (2 * eps)
    assert np.sum(grads[name] * direction) == pytest.approx(numeric, rel=1e-6, abs=1e-8), name


def test_offset_gradient_at_integer_positions_is_from_the_right():
  rng = np.random.default_rng(1)
  offsets = rng.integers(-3, 4, (1, 4, 5, 1, 9, 2)).astype(np.float64)
  problem = _random_problem(rng, offsets)
  out_grad = rng.normal(size=(1, 4, 5, 2))
  grads = reference.deform_conv2d_grads(problem["x"], offsets, problem["weight"], out_grad, problem["mask"])

  def loss(o):
    return np.sum(reference.deform_conv2d(problem["x"], o, problem["weight"], problem["mask"]) * out_grad)

  eps = 1e-6
  for index in [(0, 1, 2, 0, 4, 0), (0, 0, 0, 0, 0, 1), (0, 3, 4, 0, 8, 0), (0, 2, 1, 0, 3, 1)]:
    step = np.zeros_like(offsets)
    step[index] = eps
    assert grads["offsets"][index] == pytest.approx((loss(offsets + step) - loss(offsets)) / eps,
                                                    rel=1e-4, abs=1e-4), index


def test_zero_offsets_equal_direct_convolution():
  rng = np.random.default_rng(2)
  x, weight = rng.normal(size=(1, 5, 6, 3)), rng.normal(size=(3, 3, 3, 2))
  out = reference.deform_conv2d(x, np.zeros((1, 3, 3, 1, 9, 2)), weight, stride=2, padding=1, dilation=1)
  padded = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  for i in range(3):
    for j in range(3):
      patch = padded[0, 2 * i:2 * i + 3, 2 * j:2 * j + 3]  # [3, 3, C]
      np.testing.assert_allclose(out[0, i, j], np.einsum("abc,abco->o", patch, weight), rtol=1e-12)


def test_matches_torchvision_including_offsets_that_leave_the_image():
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  rng = np.random.default_rng(3)
  offsets = rng.choice([-6.0, -1.0, -0.5, 0.0, 0.25, 1.0, 2.5, 7.0], size=(1, 4, 5, 1, 9, 2))
  problem = _random_problem(rng, offsets)
  out_grad = rng.normal(size=(1, 4, 5, 2))
  tensors = [torch.tensor(a, requires_grad=True) for a in reference.to_torchvision_layout(
      problem["x"], offsets, problem["weight"], problem["mask"])]
  out = torchvision.ops.deform_conv2d(tensors[0], tensors[1], tensors[2], padding=1, mask=tensors[3])
  (out * torch.tensor(out_grad.transpose(0, 3, 1, 2).copy())).sum().backward()
  np.testing.assert_allclose(
      reference.from_torchvision_layout("out", out.detach().numpy(), None),
      reference.deform_conv2d(problem["x"], offsets, problem["weight"], problem["mask"]), rtol=1e-10,
      atol=1e-12)
  grads = reference.deform_conv2d_grads(problem["x"], offsets, problem["weight"], out_grad, problem["mask"])
  for name, tensor in zip(("x", "offsets", "weight", "mask"), tensors):
    np.testing.assert_allclose(reference.from_torchvision_layout(name, tensor.grad.numpy(), offsets.shape
                                                                 if name == "offsets" else problem[name].shape),
                               grads[name], rtol=1e-10, atol=1e-12, err_msg=name)
