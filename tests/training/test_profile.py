"""training/profile.py: op_name and stack-frame parsing, wall-time attribution, and a real trace of a tiny program."""

import jax
import jax.numpy as jnp
import pytest

from maskprop_jax.training import hlo_text, profile


def _two_parts(x, w):
  with jax.named_scope("first"):
    y = jnp.tanh(x @ w)
  with jax.named_scope("second"):
    z = jnp.sin(y) @ w.T
  return jnp.sum(z)


def test_breakdown_names_both_scopes_and_sums_to_the_measured_time():
  step = jax.jit(jax.value_and_grad(_two_parts, argnums=1))
  x, w = jnp.ones((256, 256)), jnp.full((256, 256), 0.01)
  rows = profile.profile_breakdown(step, (x, w), steps=3, group=1)
  parts = {row.part: row for row in rows}
  for name in ("first fwd", "first bwd", "second fwd", "second bwd"):
    assert name in parts, [row.part for row in rows]
    assert parts[name].ms > 0
  assert rows[-1].part == profile.UNATTRIBUTED
  total = sum(row.ms for row in rows)
  assert sum(row.share for row in rows) == pytest.approx(1.0)
  assert rows[0].ms / rows[0].share == pytest.approx(total)  # shares are of the measured time per call
  # The scoped parts hold nearly all the time that some instruction was running.
  in_ops = total - parts[profile.UNATTRIBUTED].ms
  assert sum(parts[name].ms for name in ("first fwd", "first bwd", "second fwd", "second bwd")) > 0.8 * in_ops
  table = profile.format_table(rows)
  assert "first fwd" in table and "total (measured per call)" in table


def test_next_args_threads_donated_state():
  step = jax.jit(lambda state, x: (state + x, jnp.sum(state)), donate_argnums=(0,))
  rows = profile.profile_breakdown(step, (jnp.zeros((64, 64)), jnp.ones((64, 64))), steps=2,
                                   next_args=lambda args, out: (out[0], args[1]))
  assert sum(row.ms for row in rows) > 0


@pytest.mark.parametrize("op_name, scopes, backward", [
    ("jit(step)/transpose(jvp(backbone/layer1))/conv_general_dilated", ("backbone", "layer1"), True),
    ("jit(step)/jvp(rpn)/jit(_where)/select_n", ("rpn",), False),
    ("jit(step)/jvp()/while/body/closed_call/dot_general", (), False),
    ("jit(step)/opt/mul", ("opt",), None),
    ("jit(step)/jvp(vmap(heads))/jit(relu)/max", ("heads",), False),
    ("", (), None),
])
def test_parse_op_name(op_name, scopes, backward):
  assert hlo_text.parse_op_name(op_name) == (scopes, backward)


def _inner(x):
  return jnp.sin(x)


def _middle(x):
  return _inner(x) * 2.0


def test_stack_frames_run_from_the_caller_inward():
  text = jax.jit(lambda x: _middle(x) + 1.0).lower(jnp.ones(8)).compile().as_text()
  _, ops = profile.parse_hlo(text)
  chains = [[f.function for f in op.frames] for op in ops.values() if op.op_name.endswith("/sin")]
  assert chains, "no instruction carries the sine's metadata"
  functions = chains[0]
  assert functions.index("_middle") < functions.index("_inner") == len(functions) - 1


def test_wall_time_splits_concurrent_instructions_and_gives_nested_ones_their_own_time():
  event = profile._Event
  events = [event(("p", "a"), 0, 10, "outer"), event(("p", "a"), 2, 4, "inner"),  # inner nested in outer
            event(("p", "b"), 5, 15, "other")]  # runs beside outer on another thread for 5 ns
  totals = profile.wall_time_per_op(events)
  assert totals == pytest.approx({"outer": 2 + 1 + 2.5, "inner": 2.0, "other": 2.5 + 5})
  assert sum(totals.values()) == pytest.approx(15.0)  # the union of the busy time


def test_model_parts_reads_the_innermost_matching_frame():
  def op(*files_functions, op_name="jit(step)/jvp()/add"):
    frames = tuple(hlo_text.Frame(f"/repo/maskprop_jax/{f}", fn, 1) for f, fn in files_functions)
    return hlo_text.Op("x", "add", op_name, (), True, frames)

  assert profile.model_parts(op(("model/maskprop.py", "compute_losses"), ("model/fpn.py", "BackboneWithFPN.__call__"),
                                ("model/resnet.py", "ResNet.__call__"))) == "backbone"
  assert profile.model_parts(op(("model/roi_heads.py", "RoIHeads.mask_loss"), ("model/roi_align.py", "roi_align"))
                             ) == "roi_heads.mask"
  assert profile.model_parts(op(("model/propagation.py", "PropagationHead.__call__"),
                                ("model/propagation.py", "OffsetBlock.__call__"))) == "propagation.offsets"
  assert profile.model_parts(op(("training/state.py", "train_step"))) == "optimizer"
