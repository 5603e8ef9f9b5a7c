"""The one argument check (kernels/geometry.py): every entry point that runs on CPU gives the same message.

Every call below fails the check before any compilation, so the whole file runs in a few seconds.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Callable

import jax.numpy as jnp
import numpy as np
import pytest

from maskprop_jax.kernels import deform_conv2d, masked_deform_conv2d
from maskprop_jax.kernels import pallas_contract, pallas_gpu, pallas_tpu, reference, xla_impl
from maskprop_jax.kernels.geometry import ConvGeometry
from pallas_problems import PROBLEMS, Problem, make_inputs

# x [1, 5, 6, 4], 3x3 kernel, padding 1, two offset groups: offsets [1, 5, 6, 2, 9, 2], mask [1, 5, 6, 2, 9].
CONV = dict(stride=1, padding=1, dilation=1, offset_groups=2)
GOOD = dict(
    x=np.ones((1, 5, 6, 4), np.float32),
    offsets=np.zeros((1, 5, 6, 2, 9, 2), np.float32),
    weight=np.ones((3, 3, 4, 3), np.float32),
    mask=np.ones((1, 5, 6, 2, 9), np.float32),
    instance_masks=np.ones((1, 2, 5, 6), np.float32),
    bias=np.zeros((3,), np.float32),
)
OUT_GRAD = np.zeros((1,), np.float32)  # never read: every call below fails the check first


@dataclasses.dataclass(frozen=True)
class Entry:
  """One public or impl-level function, in its plain and masked forms; a(rrays) and c(onv) keyword dicts."""
  name: str
  plain: Callable
  masked: Callable
  takes_bias: bool = False
  checks_dtypes: bool = True  # False: the NumPy reference casts every input to float64 before the check


def _public(impl: str, interpret: bool = False) -> Entry:
  kwargs = dict(impl=impl, interpret=interpret)
  return Entry(
      f"kernels.deform_conv2d(impl={impl!r}{', interpret=True' if interpret else ''})",
      lambda a, c: deform_conv2d(a["x"], a["offsets"], a["weight"], a["mask"], bias=a["bias"], **kwargs, **c),
      lambda a, c: masked_deform_conv2d(a["x"], a["instance_masks"], a["offsets"], a["weight"], a["mask"],
                                        bias=a["bias"], **kwargs, **c),
      takes_bias=True)


def _pallas(module) -> Entry:
  return Entry(
      f"{module.__name__}(interpret=True)",
      lambda a, c: module.deform_conv2d_fwd(a["x"], a["offsets"], a["mask"], a["weight"], **c, interpret=True),
      lambda a, c: module.masked_deform_conv2d_fwd(a["x"], a["instance_masks"], a["offsets"], a["mask"],
                                                   a["weight"], **c, interpret=True))


ENTRIES = (
    _public("xla"),
    _public("pallas_gpu", interpret=True),
    _public("pallas_tpu", interpret=True),
    Entry("xla_impl.deform_conv2d_fwd",
          lambda a, c: xla_impl.deform_conv2d_fwd(a["x"], a["offsets"], a["mask"], a["weight"], **c),
          lambda a, c: xla_impl.deform_conv2d_fwd(a["x"], a["offsets"], a["mask"], a["weight"],
                                                  instance_masks=a["instance_masks"], **c)),
    Entry("xla_impl.deform_conv2d_bwd",
          lambda a, c: xla_impl.deform_conv2d_bwd(a["x"], a["offsets"], a["mask"], a["weight"], OUT_GRAD, **c),
          lambda a, c: xla_impl.deform_conv2d_bwd(a["x"], a["offsets"], a["mask"], a["weight"], OUT_GRAD,
                                                  instance_masks=a["instance_masks"], **c)),
    _pallas(pallas_gpu),
    _pallas(pallas_tpu),
    Entry("pallas_contract.reference_forward",
          lambda a, c: pallas_contract.reference_forward(a["x"], a["offsets"], a["mask"], a["weight"], **c),
          lambda a, c: pallas_contract.reference_masked_forward(a["x"], a["instance_masks"], a["offsets"],
                                                                a["mask"], a["weight"], **c)),
    Entry("reference.deform_conv2d",
          lambda a, c: reference.deform_conv2d(a["x"], a["offsets"], a["weight"], a["mask"], a["bias"], **c),
          lambda a, c: reference.masked_deform_conv2d(a["x"], a["instance_masks"], a["offsets"], a["weight"],
                                                      a["mask"], a["bias"], **c),
          takes_bias=True, checks_dtypes=False),
    Entry("reference.deform_conv2d_grads",
          lambda a, c: reference.deform_conv2d_grads(a["x"], a["offsets"], a["weight"], OUT_GRAD, a["mask"], **c),
          lambda a, c: reference.masked_deform_conv2d_grads(a["x"], a["instance_masks"], a["offsets"],
                                                            a["weight"], OUT_GRAD, a["mask"], **c),
          checks_dtypes=False),
)


@dataclasses.dataclass(frozen=True)
class Case:
  """One bad argument: what changes, the forms it applies to, and the text the message must contain."""
  name: str
  change: dict
  message: str  # regex
  forms: tuple[str, ...] = ("plain", "masked")


CASES = (
    Case("x_rank", dict(x=np.ones((5, 6, 4), np.float32)), r"`x` has shape \(5, 6, 4\), expected \(N, H, W, C\)"),
    Case("x_dtype", dict(x=np.ones((1, 5, 6, 4), np.int32)), r"`x` has dtype int32, expected a floating-point"),
    Case("x_too_small", dict(x=np.ones((1, 1, 1, 4), np.float32), padding=0),
         r"`x` has shape \(1, 1, 1, 4\), expected room for a 3x3 kernel .* leaves no output position"),
    Case("weight_rank", dict(weight=np.ones((3, 3, 4), np.float32)),
         r"`weight` has shape \(3, 3, 4\), expected \(kh, kw, C=4, O\)"),
    Case("weight_channels", dict(weight=np.ones((3, 3, 2, 3), np.float32)),
         r"`weight` has shape \(3, 3, 2, 3\), expected \(kh, kw, C=4, O\)"),
    Case("offsets_last_dim", dict(offsets=np.zeros((1, 5, 6, 2, 9, 1), np.float32)),
         r"`offsets` has shape \(1, 5, 6, 2, 9, 1\), expected \(1, 5, 6, 2, 9, 2\)"),
    Case("offsets_output_size", dict(offsets=np.zeros((1, 4, 6, 2, 9, 2), np.float32)),
         r"`offsets` has shape \(1, 4, 6, 2, 9, 2\), expected \(1, 5, 6, 2, 9, 2\)"),
    Case("offsets_groups", dict(offsets=np.zeros((1, 5, 6, 1, 9, 2), np.float32)),
         r"`offsets` has shape \(1, 5, 6, 1, 9, 2\), expected \(1, 5, 6, 2, 9, 2\)"),
    Case("mask", dict(mask=np.ones((1, 5, 6, 2, 8), np.float32)),
         r"`mask` has shape \(1, 5, 6, 2, 8\), expected \(1, 5, 6, 2, 9\)"),
    Case("bias", dict(bias=np.zeros((4,), np.float32)), r"`bias` has shape \(4,\), expected \(3,\)"),
    Case("instance_masks_hw", dict(instance_masks=np.ones((1, 2, 6, 5), np.float32)),
         r"`instance_masks` has shape \(1, 2, 6, 5\), expected \(N=1, I, H=5, W=6\)", forms=("masked",)),
    Case("instance_masks_rank", dict(instance_masks=np.ones((1, 5, 6), np.float32)),
         r"`instance_masks` has shape \(1, 5, 6\), expected \(N=1, I, H=5, W=6\)", forms=("masked",)),
    Case("instance_masks_empty", dict(instance_masks=np.ones((1, 0, 5, 6), np.float32)),
         r"`instance_masks` has shape \(1, 0, 5, 6\), expected \(N=1, I, H=5, W=6\) with I >= 1",
         forms=("masked",)),
    Case("stride", dict(stride=0), r"`stride` must be an int or a pair of ints, each >= 1; got 0"),
    Case("padding", dict(padding=-1), r"`padding` must be an int or a pair of ints, each >= 0; got -1"),
    Case("dilation", dict(dilation=(1, 2, 3)), r"`dilation` must be an int or a pair of ints, each >= 1"),
    Case("offset_groups", dict(offset_groups=3),
         r"`offset_groups` must be >= 1 and divide the 4 channels of `x`, got offset_groups=3"),
)


def _calls():
  """(case, entry, form) for every entry that takes the changed argument; nothing is collected only to skip."""
  for case in CASES:
    for entry in ENTRIES:
      if "bias" in case.change and not entry.takes_bias:
        continue
      if case.name == "x_dtype" and not entry.checks_dtypes:
        continue
      for form in case.forms:
        yield pytest.param(case, entry, form, id=f"{case.name}-{entry.name}-{form}")


@pytest.mark.parametrize("case, entry, form", list(_calls()))
def test_every_entry_gives_the_one_message(case, entry, form):
  change = dict(case.change)
  conv = {k: change.pop(k, v) for k, v in CONV.items()}
  arrays = dict(GOOD, **change)
  if form == "plain":
    arrays["instance_masks"] = None
  if not entry.takes_bias:
    arrays["bias"] = None
  # The one check, called directly: its message (less the caller's name) is what every entry must raise.
  with pytest.raises(ValueError) as expected:
    ConvGeometry.from_arguments("check", **arrays, **conv)
  expected_text = str(expected.value).removeprefix("check: ")
  assert re.search(case.message, expected_text), expected_text

  call = entry.plain if form == "plain" else entry.masked
  with pytest.raises(ValueError) as raised:
    call(arrays, conv)
  op, _, text = str(raised.value).partition(": ")
  assert text == expected_text, f"{entry.name} ({op}) says {text!r}"


def test_pallas_entries_need_weight_in_the_dtype_of_x():
  """The Pallas kernels multiply weight tiles with x's tiles uncast; the XLA impl casts weight itself."""
  arrays = dict(GOOD, weight=GOOD["weight"].astype(jnp.bfloat16), instance_masks=None, bias=None)
  pallas_entries = [e for e in ENTRIES if e.name.startswith(("maskprop_jax.kernels.pallas", "pallas_contract"))]
  assert len(pallas_entries) == 3
  for entry in pallas_entries:
    with pytest.raises(ValueError, match=r"`weight` has dtype bfloat16, expected the dtype of `x` \(float32\)"):
      entry.plain(arrays, CONV)


def test_a_good_call_returns_the_geometry():
  geometry = ConvGeometry.from_arguments("check", **GOOD, **CONV)
  assert geometry == ConvGeometry(batch=1, height=5, width=6, channels=4, out_channels=3, kernel_h=3,
                                  kernel_w=3, out_h=5, out_w=6, offset_groups=2, num_instances=2, stride=(1, 1),
                                  padding=(1, 1), dilation=(1, 1))
  assert (geometry.taps, geometry.group_channels, geometry.out_hw) == (9, 2, (5, 6))
  hash(geometry)  # a jit static argument of the Pallas wrappers and of the custom VJP


# The two tests below checked pallas_contract.check_arguments, which this module replaced; assertions unchanged
# but for the dtype message, now the one every entry shares ("floating-point dtype").
@pytest.mark.parametrize("argument, change, message", [
    ("offsets", lambda a: a[..., :1], "`offsets` has shape"),
    ("mask", lambda a: jnp.ones((1, 3, 3, 2, 9)), "`mask` has shape"),
    ("weight", lambda a: a[:, :, :2], "`weight` has shape"),
    ("instance_masks", lambda a: jnp.ones((1, 2, 5, 5)), "`instance_masks` has shape"),
    ("x", lambda a: a.astype(jnp.int32), "floating-point dtype"),
])
def test_bad_arguments_name_the_argument(argument, change, message):
  problem = Problem("errors", (1, 7, 7, 4, 4), with_mask=True)
  inputs = make_inputs(problem, num_instances=2)
  inputs[argument] = change(inputs[argument])
  with pytest.raises(ValueError, match=message):
    ConvGeometry.from_arguments("check", **inputs, **problem.conv_kwargs, weight_dtype_of_x=True)


def test_bad_conv_parameters_are_rejected():
  inputs = make_inputs(PROBLEMS[0])
  arrays = dict(x=inputs["x"], offsets=inputs["offsets"], weight=inputs["weight"])
  with pytest.raises(ValueError, match="offset_groups=3"):
    ConvGeometry.from_arguments("check", **arrays, stride=1, padding=1, dilation=1, offset_groups=3)
  with pytest.raises(ValueError, match="`stride` must be an int or a pair"):
    ConvGeometry.from_arguments("check", **arrays, stride=(1, 1, 1), padding=1, dilation=1, offset_groups=1)
  with pytest.raises(ValueError, match="leaves no output position"):
    ConvGeometry.from_arguments("check", **dict(arrays, x=inputs["x"][:, :1, :1]), stride=1, padding=0,
                                dilation=1, offset_groups=1)


def test_warps_offsets_carry_r_fields_per_frame():
  """R warps of each frame (the masked form only): offsets and mask with N*R images, out_batch N*R."""
  warped = dict(GOOD, offsets=jnp.concatenate([GOOD["offsets"]] * 3), mask=jnp.concatenate([GOOD["mask"]] * 3))
  geometry = ConvGeometry.from_arguments("check", **warped, **CONV, warps=3)
  assert (geometry.batch, geometry.warps, geometry.out_batch) == (1, 3, 3)
  with pytest.raises(ValueError, match=r"`offsets` has shape \(3, .*\(N\*R, R=2 warps per frame, Ho"):
    ConvGeometry.from_arguments("check", **warped, **CONV, warps=2)
  with pytest.raises(ValueError, match=r"`offsets` has shape \(3, .*\(N, Ho"):
    ConvGeometry.from_arguments("check", **warped, **CONV)
  with pytest.raises(ValueError, match="`warps` must be an int >= 1, and 1 without instance masks"):
    ConvGeometry.from_arguments("check", **dict(warped, instance_masks=None), **CONV, warps=3)
  with pytest.raises(ValueError, match="`warps` must be"):
    ConvGeometry.from_arguments("check", **GOOD, **CONV, warps=0)
