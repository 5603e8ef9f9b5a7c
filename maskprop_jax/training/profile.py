"""Where a jitted program's time goes: milliseconds per call per model part, from a profiler trace.

    rows = profile_breakdown(jitted, args, steps=3, group=model_parts)
    print(format_table(rows))

`profile_breakdown` compiles the function for its arguments, runs it under `jax.profiler.trace`, reads the trace's
per-HLO-instruction events (jax.profiler.ProfileData over the xplane.pb the trace writes) and maps each
instruction to what produced it through the compiled HLO text (training/hlo_text.py): the JAX name stack in its
`op_name` metadata (named scopes; `transpose(...)` marks the backward pass) and the Python stack of its
`stack_frame_id` (file, function, line from the caller inward). A `group` function turns that into a part's name.

Wall time, not busy time: XLA:CPU runs independent instructions of one program on several threads at once, so
the durations of its events add up to more than the call took. Each instant of the trace is split evenly among
the instructions running at that instant (the innermost one of a thread: a while loop owns only the time between
its body's instructions), so the parts add up to the time some instruction was running; what is left of the
measured call (dispatch, argument handling, waiting between instructions) is the "(not in any HLO op)" row. The
rows therefore sum to the measured time per call. A part's share is not what removing it saves: an instruction
that runs beside others on another core takes a share of time the step spends anyway. On the main job's 2-core
step, the stem max-pool's backward (select_and_scatter and its pad, 5% of the rows; 3.5x faster rewritten, bit for
bit) and the padded copies of the tap weight gradients (3%) were both removed, and the step did not change (939 vs
954 ms median, 24 alternated steps each in one process, 2026-12-07): A/B the whole step before keeping a change.

Groupings: an int d (the first d named scopes, else the innermost own-code frame's module.function), any
callable of an `Op`, or `model_parts`, the parts of this repository's models (backbone, fpn, rpn, roi_heads.box,
roi_heads.mask, propagation.*, optimizer), read from the Python frames so that no model file needs named scopes.
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import os
import re
import tempfile
import time
from typing import Callable, Sequence

import jax

from maskprop_jax.training.hlo_text import Frame, Op, parse_hlo

UNATTRIBUTED = "(not in any HLO op)"


@dataclasses.dataclass(frozen=True)
class Row:
  part: str
  ms: float  # per call
  share: float  # of the measured time per call


# ---------------------------------------------------------------------------------------------------------------
# The trace: per-instruction events -> wall time per instruction


@dataclasses.dataclass(frozen=True)
class _Event:
  thread: tuple[str, str]  # (plane, line)
  start: int  # ns
  end: int
  op: str  # HLO instruction name


def _read_events(log_dir: str, module: str) -> list[_Event]:
  """The per-HLO-instruction events of `module` in the trace under log_dir. Device planes when they have any
  (GPU / TPU), else the host's (XLA:CPU runs the instructions on host threads)."""
  paths = sorted(glob.glob(os.path.join(log_dir, "**", "*.xplane.pb"), recursive=True))
  if not paths:
    raise RuntimeError(f"the profiler wrote no *.xplane.pb under {log_dir}")
  device, host = [], []
  for path in paths:
    for plane in jax.profiler.ProfileData.from_file(path).planes:
      target = device if plane.name.startswith("/device:") else host
      for line in plane.lines:
        for event in line.events:
          stats = dict(event.stats)
          op = stats.get("hlo_op")
          if op is None or event.duration_ns <= 0 or (module and stats.get("hlo_module", module) != module):
            continue
          start = int(event.start_ns)
          target.append(_Event((plane.name, line.name), start, start + int(event.duration_ns), str(op)))
  if not (device or host):
    raise RuntimeError(f"the trace under {log_dir} has no per-instruction events of module {module!r}")
  return device or host


def _innermost_segments(events: Sequence[_Event]) -> list[tuple[int, int, str]]:
  """(start, end, op) pieces of one thread's events during which `op` is the innermost running one."""
  points = sorted([(e.start, 1, -(e.end - e.start), i) for i, e in enumerate(events)] +
                  [(e.end, 0, 0, i) for i, e in enumerate(events)])  # at a tie, ends before starts
  segments, stack, last = [], [], None
  for time_ns, is_start, _, index in points:
    if stack and last is not None and time_ns > last:
      segments.append((last, time_ns, events[stack[-1]].op))
    if is_start:
      stack.append(index)
    elif index in stack:
      stack.remove(index)
    last = time_ns
  return segments


def wall_time_per_op(events: Sequence[_Event]) -> dict[str, float]:
  """Nanoseconds of wall time per instruction: each instant split evenly among the threads' innermost events."""
  by_thread: dict[tuple[str, str], list[_Event]] = collections.defaultdict(list)
  for event in events:
    by_thread[event.thread].append(event)
  points = []
  for thread_events in by_thread.values():
    for start, end, op in _innermost_segments(thread_events):
      points += [(start, 1, op), (end, -1, op)]
  points.sort(key=lambda p: (p[0], p[1]))
  active: collections.Counter = collections.Counter()
  totals: dict[str, float] = collections.defaultdict(float)
  last = None
  for time_ns, delta, op in points:
    running = sum(active.values())
    if running and time_ns > last:
      for name, count in active.items():
        totals[name] += (time_ns - last) * count / running
    active[op] += delta
    if not active[op]:
      del active[op]
    last = time_ns
  return dict(totals)


# ---------------------------------------------------------------------------------------------------------------
# Groupings: Op -> part


def _own_code(frame: Frame) -> bool:
  """A frame of the program being profiled rather than of an installed library or Python itself."""
  return not re.search(r"[/\\](site|dist)-packages[/\\]|[/\\]lib[/\\]python3[.\d]*[/\\]", frame.file)


def by_scope(depth: int) -> Callable[[Op], str]:
  """The first `depth` named scopes ("a.b"); without scopes, the innermost own-code frame's "module.function"."""

  def group(op: Op) -> str:
    if op.scopes:
      return ".".join(op.scopes[:depth])
    for frame in reversed(op.frames):
      if _own_code(frame):
        return f"{os.path.splitext(os.path.basename(frame.file))[0]}.{frame.function}"
    return "(no scope or source)"

  return group


# (path ending, function name pattern or None for any, part), tried from the innermost frame outward: the first
# frame matched names the part. Shared helpers (box_ops, roi_align, nms, ...) match nothing, so their caller does.
MODEL_RULES: tuple[tuple[str, str | None, str], ...] = (
    ("kernels/projected.py", None, "propagation.deform_conv"),
    ("kernels/xla_impl.py", None, "propagation.deform_conv"),
    ("kernels/deform_conv.py", None, "propagation.deform_conv"),
    ("model/propagation.py", r"OffsetBlock\..*", "propagation.offsets"),
    ("model/motion.py", None, "propagation.motion"),
    ("model/propagation.py", r"PropagationHead\.warp", "propagation.deform_conv"),
    ("model/propagation.py", r"PropagationHead\.foreground_logits", "propagation.foreground"),
    ("model/propagation.py", r"PropagationHead\.(instance_logits|__call__)|depth_to_space", "propagation.head"),
    ("model/propagation.py", r"mask_probabilities|soft_iou_loss", "propagation.loss"),
    ("model/propagation.py", r"downsample_masks", "propagation.masks"),
    ("model/maskprop.py", r"MaskProp\.(instance_masks|feature_grid_masks)", "propagation.masks"),
    ("model/mask_head.py", None, "roi_heads.mask"),
    ("model/box_head.py", None, "roi_heads.box"),
    ("model/roi_targets.py", r"maskrcnn_loss|project_masks_on_boxes", "roi_heads.mask"),
    ("model/roi_targets.py", r"fastrcnn_loss|smooth_l1", "roi_heads.box"),
    ("model/roi_targets.py", None, "roi_heads.sample"),
    ("model/roi_heads.py", r".*mask.*", "roi_heads.mask"),
    ("model/roi_heads.py", r".*(box|postprocess).*", "roi_heads.box"),
    ("model/roi_heads.py", None, "roi_heads.sample"),
    ("model/mask_rcnn.py", r".*box_mask_probs", "roi_heads.mask"),
    ("model/rpn.py", None, "rpn"),
    ("model/anchors.py", None, "rpn"),
    ("model/fpn.py", None, "fpn"),
    ("model/resnet.py", None, "backbone"),
    ("model/mask_rcnn.py", r"MaskRCNN\.(normalize|features)", "backbone"),
    ("model/mask_rcnn.py", None, "detector (other)"),
    ("model/maskprop.py", None, "maskprop (other)"),
    ("training/optimizer.py", None, "optimizer"),
    ("training/state.py", r"train_step", "optimizer"),
    ("model/bench.py", r".*train_step", "optimizer"),  # what the bench's step does outside the model
)


def model_parts(op: Op) -> str:
  """This repository's model parts (MODEL_RULES), else by_scope(1)."""
  for frame in reversed(op.frames):
    path = frame.file.replace("\\", "/")
    for ending, function, part in MODEL_RULES:
      if path.endswith(ending) and (function is None or re.fullmatch(function, frame.function)):
        return part
  return by_scope(1)(op)


# ---------------------------------------------------------------------------------------------------------------
# The profile


def _direction(op: Op) -> str:
  return {True: " bwd", False: " fwd", None: ""}[op.backward]


def profile_breakdown(fn: Callable, args: Sequence, *, steps: int = 3, group: int | Callable[[Op], str] = 2,
                      directions: bool = True, next_args: Callable[[tuple, object], Sequence] | None = None,
                      log_dir: str | None = None) -> list[Row]:
  """Milliseconds per call of `fn(*args)` per part, largest first, the unattributed time last; they sum to the
  mean measured time of a call.

  fn: a jitted function (anything with .lower(*args)); a plain function is jitted here. It is compiled once for
    args, run once untraced (warm-up), then `steps` times under jax.profiler.trace, each to completion.
  group: an int d (by_scope(d)), or a function of an Op returning the part's name (e.g. model_parts).
  directions: append " fwd" / " bwd" to each part where the op_name tells (jvp / transpose).
  next_args: (args, output) -> the next call's args, for functions that donate their inputs (a train step
    donates its state: `lambda args, out: (out[0], *args[1:])`); by default every call gets `args`.
  log_dir: where the trace goes (kept); by default a temporary folder, removed afterwards.
  """
  group_fn = by_scope(group) if isinstance(group, int) else group
  jitted = fn if hasattr(fn, "lower") else jax.jit(fn)
  compiled = jitted.lower(*args).compile()
  module, ops = parse_hlo(compiled.as_text())
  args = tuple(args)

  def call(current):
    out = jax.block_until_ready(compiled(*current))
    return out, (tuple(next_args(current, out)) if next_args is not None else current)

  _, args = call(args)
  with tempfile.TemporaryDirectory() as scratch:
    directory = log_dir or scratch
    seconds = []
    with jax.profiler.trace(directory, create_perfetto_trace=True):
      for _ in range(steps):
        start = time.perf_counter()
        _, args = call(args)
        seconds.append(time.perf_counter() - start)
    per_op = wall_time_per_op(_read_events(directory, module))
  step_ms = 1e3 * sum(seconds) / steps
  parts: dict[str, float] = collections.defaultdict(float)
  for name, ns in per_op.items():
    op = ops.get(name)
    part = "(instruction not in the HLO text)" if op is None else group_fn(op) + (_direction(op) if directions else "")
    parts[part] += ns * 1e-6 / steps
  rows = [Row(part, ms, ms / step_ms) for part, ms in sorted(parts.items(), key=lambda kv: -kv[1])]
  rest = step_ms - sum(row.ms for row in rows)
  return rows + [Row(UNATTRIBUTED, rest, rest / step_ms)]


def format_table(rows: Sequence[Row], title: str = "part") -> str:
  """The rows as a text table with a total line (the measured time per call)."""
  width = max([len(title), len("total (measured per call)")] + [len(row.part) for row in rows])
  lines = [f"{title:<{width}s} {'ms/call':>9s} {'share':>7s}"]
  lines += [f"{row.part:<{width}s} {row.ms:9.1f} {100 * row.share:6.1f}%" for row in rows]
  total = sum(row.ms for row in rows)
  lines.append(f"{'total (measured per call)':<{width}s} {total:9.1f} {100.0:6.1f}%")
  return "\n".join(lines)
