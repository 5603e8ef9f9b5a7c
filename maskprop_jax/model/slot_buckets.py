"""Run a function of padded slots on the smallest power-of-two prefix of slots that holds every valid one.

Static shapes pad a batch's positive RoIs to a fixed number of slots (128 per image for Mask R-CNN's mask loss),
but a batch usually has a handful: computing the mask head on every slot costs most of a training step. Here the
slots come in buckets (8, 12, 16, 24, 32, ... up to all of them: powers of two and 1.5 times them, so that at most
a third of a bucket is padding once past 8); a `lax.switch` picks, at run time, the smallest bucket
that holds the batch's valid slots, and the function runs on that prefix. Each branch has its own static shapes,
so this works under `jax.jit` on every platform, and it is exact whenever padded slots add nothing to the result
(masked out of the sums and of batch-norm statistics), which is what the callers guarantee.

Each branch is wrapped in `jax.checkpoint`: without it, the gradient of a switch keeps the residuals of every
branch, zero-filled for the branches not taken, which costs as much as computing on every slot.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def bucket_sizes(num_slots: int, smallest: int = 8) -> tuple[int, ...]:
  """Powers of two from `smallest` and 1.5 times each, below num_slots, then num_slots itself:
  128 -> (8, 12, 16, 24, 32, 48, 64, 96, 128)."""
  sizes, size = [], smallest
  while size < num_slots:
    sizes += [s for s in (size, size * 3 // 2) if s < num_slots]
    size *= 2
  return (*sizes, num_slots)


def bucket_index(num_valid: jax.Array, sizes: tuple[int, ...]) -> jax.Array:
  """Index into `sizes` of the smallest bucket with at least num_valid slots (the last one if none)."""
  return jnp.searchsorted(jnp.asarray(sizes[:-1]), num_valid, side="left").astype(jnp.int32)


def on_smallest_bucket(fn: Callable[..., Any], num_valid: jax.Array, slotted: Any, *operands: Any,
                       sizes: tuple[int, ...]) -> Any:
  """fn(slotted cut to the smallest bucket holding num_valid slots, *operands).

  Args:
    fn: a pure function whose output shapes do not depend on the number of slots.
    num_valid: int scalar, the largest number of valid slots of any row; valid slots come first in every row.
    slotted: a pytree of arrays [B, Q, ...] whose axis 1 is the slot axis.
    operands: the other arguments of fn, passed whole.
    sizes: the buckets, ascending, the last equal to Q (see bucket_sizes).
  """
  if len(sizes) == 1:
    return fn(slotted, *operands)

  def branch(size: int) -> Callable[..., Any]:
    @jax.checkpoint
    def run(slotted, *operands):
      return fn(jax.tree.map(lambda a: a[:, :size], slotted), *operands)
    return run

  return jax.lax.switch(bucket_index(num_valid, sizes), [branch(size) for size in sizes], slotted, *operands)
