"""The Pallas kernels' plain-jnp reference (kernels/pallas_contract.py); its argument check is in test_geometry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskprop_jax.kernels import pallas_contract
from pallas_problems import PROBLEMS, Problem, make_inputs, relative_error


def test_zero_offsets_equal_a_plain_convolution():
  problem = Problem("zero", (1, 7, 6, 4, 5), stride=2, padding=1, dilation=2)
  inputs = make_inputs(problem)
  offsets = jnp.zeros_like(inputs["offsets"])
  out = pallas_contract.reference_forward(inputs["x"], offsets, None, inputs["weight"], **problem.conv_kwargs)
  conv = jax.lax.conv_general_dilated(inputs["x"], inputs["weight"], window_strides=(2, 2),
                                      padding=((1, 1), (1, 1)), rhs_dilation=(2, 2),
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                      precision=jax.lax.Precision.HIGHEST)
  assert relative_error(out, conv) < 1e-6


@pytest.mark.parametrize("problem", PROBLEMS[1:4], ids=lambda p: p.name)
def test_reference_matches_torchvision(problem):
  torch = pytest.importorskip("torch")
  torchvision = pytest.importorskip("torchvision")
  inputs = make_inputs(problem)
  out = pallas_contract.reference_forward(**inputs, **problem.conv_kwargs)
  n, ho, wo, g, k, _ = inputs["offsets"].shape
  as_torch = lambda a: torch.from_numpy(np.asarray(a, np.float64))
  # torchvision: NCHW input, OIHW weight, offsets [N, G*K*2, Ho, Wo] ordered (group, tap, dy/dx).
  expected = torchvision.ops.deform_conv2d(
      as_torch(jnp.transpose(inputs["x"], (0, 3, 1, 2))),
      as_torch(jnp.transpose(inputs["offsets"], (0, 3, 4, 5, 1, 2)).reshape(n, g * k * 2, ho, wo)),
      as_torch(jnp.transpose(inputs["weight"], (3, 2, 0, 1))),
      stride=problem.stride, padding=problem.padding, dilation=problem.dilation,
      mask=(None if inputs["mask"] is None
            else as_torch(jnp.transpose(inputs["mask"], (0, 3, 4, 1, 2)).reshape(n, g * k, ho, wo))))
  assert relative_error(out, expected.numpy().transpose(0, 2, 3, 1)) < 1e-5


def test_masked_reference_is_one_call_per_instance():
  problem = PROBLEMS[2]
  inputs = make_inputs(problem, num_instances=2)
  instance_masks = inputs.pop("instance_masks")
  out = pallas_contract.reference_masked_forward(inputs["x"], instance_masks, inputs["offsets"], inputs["mask"],
                                                 inputs["weight"], **problem.conv_kwargs)
  second = pallas_contract.reference_forward(**dict(inputs, x=inputs["x"] * instance_masks[:, 1, :, :, None]),
                                             **problem.conv_kwargs)
  assert out.shape == (1, 2, *second.shape[1:])
  np.testing.assert_array_equal(out[:, 1], second)
