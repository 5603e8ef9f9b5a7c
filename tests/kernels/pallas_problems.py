"""Small random deformable-convolution problems shared by the Pallas kernel tests (interpret mode is slow)."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from maskprop_jax.kernels import geometry


@dataclasses.dataclass(frozen=True)
class Problem:
  """One test configuration: shapes, conv parameters and how far offsets reach."""
  name: str
  shape: tuple[int, int, int, int, int]  # N, H, W, C, O
  stride: int | tuple[int, int] = 1
  padding: int | tuple[int, int] = 1
  dilation: int | tuple[int, int] = 1
  offset_groups: int = 1
  with_mask: bool = False
  offset_scale: float = 1.0  # standard deviation of the offsets, in pixels
  offset_rounding: float = 0.0  # round offsets to multiples of this (0: leave them continuous)
  kernel_hw: tuple[int, int] = (3, 3)

  @property
  def conv_kwargs(self) -> dict:
    return dict(stride=self.stride, padding=self.padding, dilation=self.dilation,
                offset_groups=self.offset_groups)


# Every case is small enough for interpret mode; together they cover stride 1/2, padding 0/1, dilation 1/2,
# offset groups 1/2, with and without mask, offsets leaving the image, integer and half-integer offsets,
# rectangular (h, w) parameters and output sizes that leave ragged tiles.
PROBLEMS = (
    Problem("plain", (1, 7, 7, 4, 4)),
    Problem("stride2_pad0_mask", (1, 9, 8, 4, 5), stride=2, padding=0, with_mask=True, offset_scale=1.5),
    Problem("dilation2_groups2_mask", (1, 9, 9, 4, 3), dilation=2, offset_groups=2, with_mask=True,
            offset_scale=2.0),
    Problem("offsets_leave_image", (2, 6, 7, 4, 4), offset_groups=2, offset_scale=5.0),
    Problem("half_integer_offsets", (1, 6, 6, 4, 4), with_mask=True, offset_scale=1.5, offset_rounding=0.5),
    Problem("rectangular", (1, 8, 9, 4, 4), stride=(2, 1), padding=(0, 1), dilation=(1, 2),
            kernel_hw=(3, 2), offset_scale=1.0),
)


def output_hw(problem: Problem) -> tuple[int, int]:
  pair = lambda name, value: geometry.as_pair("output_hw", name, value, 0)
  return geometry.output_size(problem.shape[1:3], problem.kernel_hw, pair("stride", problem.stride),
                              pair("padding", problem.padding), pair("dilation", problem.dilation))


def make_inputs(problem: Problem, *, seed: int = 0, dtype=jnp.float32, num_instances: int = 0) -> dict:
  """x, offsets, mask, weight (and instance_masks when num_instances > 0) for one problem."""
  rng = np.random.default_rng(seed)
  n, h, w, c, o = problem.shape
  ho, wo = output_hw(problem)
  taps = problem.kernel_hw[0] * problem.kernel_hw[1]
  offsets = rng.normal(0.0, problem.offset_scale, (n, ho, wo, problem.offset_groups, taps, 2))
  if problem.offset_rounding:
    offsets = np.round(offsets / problem.offset_rounding) * problem.offset_rounding
  inputs = dict(
      x=jnp.asarray(rng.normal(size=(n, h, w, c)), dtype),
      offsets=jnp.asarray(offsets, dtype),
      mask=(jnp.asarray(rng.uniform(0.0, 1.0, (n, ho, wo, problem.offset_groups, taps)), dtype)
            if problem.with_mask else None),
      weight=jnp.asarray(rng.normal(size=(*problem.kernel_hw, c, o)) / np.sqrt(taps * c), dtype),
  )
  if num_instances:
    inputs["instance_masks"] = jnp.asarray(rng.uniform(0.0, 1.0, (n, num_instances, h, w)), dtype)
  return inputs


def relative_error(actual: jax.Array, expected: jax.Array) -> float:
  """Largest absolute difference relative to the largest expected magnitude."""
  expected = np.asarray(expected, np.float64)
  return float(np.max(np.abs(np.asarray(actual, np.float64) - expected)) / max(np.max(np.abs(expected)), 1e-12))
