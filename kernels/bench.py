"""Times deform_conv2d / masked_deform_conv2d per impl against torchvision, with roofline fractions.

  python kernels/bench.py [--json] [--shapes small|all|auto] [--dtype float32|bfloat16] [--repeats 5] [--match S]

For each shape, every impl that runs here (xla everywhere, and xla_projected for the masked shapes; pallas and
pallas_projected on GPU / TPU) and torchvision's deform_conv2d when installed (CUDA when torch sees a GPU, else
CPU) are timed for the forward and for forward + backward (gradients of every input): median wall time of
--repeats runs after one warm-up run (fewer once a row has spent 30 s), synchronised (block_until_ready /
cuda.synchronize); torchvision on a CPU with as many threads as XLA:CPU. The masked form is compared with
torchvision applied to the I masked copies of x stacked along the batch (I * R copies for R warps of a frame),
which is what it replaces. "xla" and "pallas" are the sample-then-GEMM form, the projected ones project x by the
weight once per frame (kernels/projected.py), what "auto" runs for the masked form. --match picks shapes by name
(e.g. "synthetic": configs/synthetic.py's training step).

Throughput is counted from the GEMM FLOPs (2 * rows * K * C * O forward, three times that forward +
backward) and from the minimum HBM traffic (every input read and every output written once); the roofline
fraction is max(FLOPs / peak FLOP/s, bytes / peak bandwidth) / measured time, with the peak numbers of the
device table below (vendor dense figures), or numbers measured here on a CPU (a large matmul and a copy).
The projected impls do fewer FLOPs than that count (one projection per frame, not one GEMM per instance and
warp): their TFLOP/s and roofline fractions are effective figures, comparable with the other rows' as speed, not
as efficiency.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from maskprop_jax.kernels import deform_conv2d, masked_deform_conv2d, resolve_impl


@dataclasses.dataclass(frozen=True)
class Shape:
  name: str
  batch: int
  height: int
  width: int
  channels: int
  out_channels: int
  instances: int = 0  # > 0: the masked form with this many instance masks
  warps: int = 1  # R offset fields per frame (masked form): MaskProp's center frame toward R reference frames
  big: bool = False


SHAPES = (
    # configs/synthetic.py's training step: 4 clips' center frames (P2, 48x72, 32 channels), 6 instance slots.
    Shape("masked I=6 synthetic 4x48x72 32->32", 4, 48, 72, 32, 32, instances=6),
    Shape("dcn 4x64x64 64->64", 4, 64, 64, 64, 64),
    Shape("dcn 2x48x80 256->256", 2, 48, 80, 256, 256),
    Shape("masked I=10 2x48x80 256->256", 2, 48, 80, 256, 256, instances=10),
    # One clip of configs/ytvis.py at inference: the center frame's 10 instances toward its 12 reference frames.
    Shape("masked I=10 R=12 1x48x80 256->256", 1, 48, 80, 256, 256, instances=10, warps=12),
    Shape("dcn maskprop 28x96x168 256->256", 28, 96, 168, 256, 256, big=True),
    Shape("masked I=10 maskprop 28x96x168 256->256", 28, 96, 168, 256, 256, instances=10, big=True),
)

# Dense peak (TFLOP/s for fp32 without TF32, TFLOP/s for bf16, TB/s HBM), from the vendors' data sheets;
# matched against jax's device_kind. TPU fp32 matmuls run as several bf16 passes: one sixth of bf16 peak.
PEAKS = {
    "H200": (67.0, 989.0, 4.8),
    "H100": (67.0, 989.0, 3.35),
    "A100": (19.5, 312.0, 2.04),
    "TPU v4": (275.0 / 6, 275.0, 1.2),
    "TPU v5 lite": (197.0 / 6, 197.0, 0.82),
    "TPU v5e": (197.0 / 6, 197.0, 0.82),
}


TIME_BUDGET_S = 30.0  # past this much timed work a row stops repeating (CPU rows of the big shapes take minutes)


def _median_time(fn: Callable[[], object], repeats: int) -> float:
  """Median of `repeats` timed runs after a warm-up, or of fewer (at least one) once TIME_BUDGET_S is spent."""
  fn()  # warm-up: compilation, autotuning, allocator growth
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
    if sum(times) > TIME_BUDGET_S:
      break
  return statistics.median(times)


def _best_time(fn: Callable[[], object], repeats: int) -> float:
  fn()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def _measure_cpu_peaks() -> tuple[float, float, float]:
  """(fp32 TFLOP/s, bf16 TFLOP/s, TB/s): best of 10 runs of a 2048^3 matmul and of a 64 MiB scale.

  Best rather than median, since a peak is what the machine can do; on a machine shared with other jobs it
  is still an underestimate, and a fraction above 100% shows by how much.
  """
  a = jnp.ones((2048, 2048), jnp.float32)
  matmul = jax.jit(lambda a: a @ a)
  flops = 2 * 2048**3 / _best_time(lambda: matmul(a).block_until_ready(), 10)
  b = jnp.ones((1 << 24,), jnp.float32)
  scale = jax.jit(lambda b: b * 2.0)
  bandwidth = 2 * b.nbytes / _best_time(lambda: scale(b).block_until_ready(), 10)
  return flops / 1e12, flops / 1e12, bandwidth / 1e12


def device_peaks() -> tuple[str, tuple[float, float, float], str]:
  """(device name, (fp32 TFLOP/s, bf16 TFLOP/s, TB/s), where the numbers come from)."""
  device = jax.devices()[0]
  kind = device.device_kind
  for key, peaks in PEAKS.items():
    if key.lower() in kind.lower():
      return kind, peaks, f"data sheet ({key})"
  if device.platform == "cpu":
    return kind, _measure_cpu_peaks(), "measured here, best of 10: 2048^3 fp32 matmul, 64 MiB scale"
  return kind, (float("nan"),) * 3, "unknown device: no roofline"


def _inputs(shape: Shape, dtype, seed: int = 0):
  rng = np.random.default_rng(seed)
  n, h, w, c, o = shape.batch, shape.height, shape.width, shape.channels, shape.out_channels
  arrays = dict(
      x=rng.normal(size=(n, h, w, c)),
      offsets=rng.normal(0.0, 1.5, (n * shape.warps, h, w, 1, 9, 2)),
      weight=rng.normal(0.0, 0.05, (3, 3, c, o)),
  )
  if shape.instances:
    arrays["instance_masks"] = rng.uniform(size=(n, shape.instances, h, w))
  return {k: jnp.asarray(v, dtype) for k, v in arrays.items()}


def _jax_functions(shape: Shape, impl: str):
  """(forward, forward + backward) jitted; both take the input dict."""
  if shape.instances:
    def forward(a):
      return masked_deform_conv2d(a["x"], a["instance_masks"], a["offsets"], a["weight"], impl=impl)
  else:
    def forward(a):
      return deform_conv2d(a["x"], a["offsets"], a["weight"], impl=impl)

  def loss(a):
    return jnp.sum(forward(a).astype(jnp.float32))

  # value_and_grad, not grad: the loss value keeps the forward alive (grad alone lets XLA drop it, since the
  # backward does not read the output).
  return jax.jit(forward), jax.jit(jax.value_and_grad(loss))


def _time_jax(shape: Shape, impl: str, inputs, repeats: int) -> tuple[float, float]:
  forward, forward_backward = _jax_functions(shape, impl)
  fwd = _median_time(lambda: jax.block_until_ready(forward(inputs)), repeats)
  fwd_bwd = _median_time(lambda: jax.block_until_ready(forward_backward(inputs)), repeats)
  return fwd, fwd_bwd


def _time_torchvision(shape: Shape, inputs, repeats: int) -> tuple[float, float, str] | None:
  """torchvision's forward and forward + backward times, or None when it is not installed / usable."""
  try:
    import torch
    import torchvision
  except ImportError:
    return None
  if inputs["x"].dtype != jnp.float32:  # torchvision's CPU kernel has no bf16; keep it like for like
    return None
  device = "cuda" if torch.cuda.is_available() else "cpu"
  if device == "cpu":  # as many threads as XLA:CPU's pool (one per core this process may use), like for like
    torch.set_num_threads(len(os.sched_getaffinity(0)))

  def tensor(array):
    return torch.tensor(np.asarray(array), device=device, requires_grad=True)

  x = tensor(np.asarray(inputs["x"]).transpose(0, 3, 1, 2))
  n, h, w = shape.batch * shape.warps, shape.height, shape.width
  offsets = tensor(np.asarray(inputs["offsets"]).reshape(n, h, w, 18).transpose(0, 3, 1, 2))
  weight = tensor(np.asarray(inputs["weight"]).transpose(3, 2, 0, 1))
  masks = None
  if shape.instances:
    masks = tensor(np.asarray(inputs["instance_masks"]))

  def forward():
    if masks is None:
      return torchvision.ops.deform_conv2d(x, offsets, weight, padding=1)
    masked = (x[:, None] * masks[:, :, None]).repeat_interleave(shape.warps, dim=0)  # [N * R, I, C, H, W]
    masked = masked.flatten(0, 1)  # [N * R * I, C, H, W]: the masked copies, one per instance and warp
    repeated = offsets.repeat_interleave(shape.instances, dim=0)
    return torchvision.ops.deform_conv2d(masked, repeated, weight, padding=1)

  def synchronized(fn):
    def run():
      fn()
      if device == "cuda":
        torch.cuda.synchronize()
    return run

  def forward_backward():
    forward().sum().backward()

  with torch.no_grad():
    fwd = _median_time(synchronized(forward), repeats)
  fwd_bwd = _median_time(synchronized(forward_backward), repeats)
  return fwd, fwd_bwd, f"torchvision ({device})"


def _work(shape: Shape, itemsize: int) -> tuple[float, float, float, float]:
  """(forward FLOPs, forward + backward FLOPs, forward bytes, forward + backward bytes), minimum counts."""
  instances = max(shape.instances, 1)
  rows = shape.batch * shape.warps * shape.height * shape.width * instances
  gemm = 2.0 * rows * 9 * shape.channels * shape.out_channels
  x = shape.batch * shape.height * shape.width * shape.channels
  offsets = shape.batch * shape.warps * shape.height * shape.width * 18
  masks = shape.batch * shape.instances * shape.height * shape.width
  weight = 9 * shape.channels * shape.out_channels
  out = rows * shape.out_channels
  fwd_bytes = itemsize * (x + offsets + masks + weight + out)
  # Backward: read the inputs and the output gradient again, write a gradient for every input.
  fwd_bwd_bytes = fwd_bytes + itemsize * (2 * (x + offsets + masks + weight) + out)
  return gemm, 3 * gemm, fwd_bytes, fwd_bwd_bytes


def run(shapes, dtype_name: str, repeats: int) -> dict:
  kind, (fp32_peak, bf16_peak, bandwidth), peak_source = device_peaks()
  dtype = jnp.dtype(dtype_name)
  peak_flops = 1e12 * (bf16_peak if dtype == jnp.bfloat16 else fp32_peak)
  on_accelerator = jax.default_backend() != "cpu"
  impls = ["xla"] + ([resolve_impl("pallas")] if on_accelerator else [])
  # The projected impls compute the masked form only.
  projected_impls = ["xla_projected"] + ([resolve_impl("pallas_projected")] if on_accelerator else [])
  rows = []
  for shape in shapes:
    inputs = _inputs(shape, dtype)
    flops_fwd, flops_fb, bytes_fwd, bytes_fb = _work(shape, dtype.itemsize)
    shape_impls = impls + (projected_impls if shape.instances else [])
    timings = {impl: _time_jax(shape, impl, inputs, repeats) for impl in shape_impls}
    baseline = _time_torchvision(shape, inputs, repeats)
    if baseline is not None:
      timings[baseline[2]] = baseline[:2]
    for name, (fwd, fwd_bwd) in timings.items():
      row = dict(shape=shape.name, impl=name, fwd_ms=1e3 * fwd, fwd_bwd_ms=1e3 * fwd_bwd)
      if baseline is not None:
        row["speedup_fwd_vs_torchvision"] = baseline[0] / fwd
        row["speedup_fwd_bwd_vs_torchvision"] = baseline[1] / fwd_bwd
      for label, flops, nbytes, seconds in (("fwd", flops_fwd, bytes_fwd, fwd), ("fwd_bwd", flops_fb, bytes_fb,
                                                                                  fwd_bwd)):
        row[f"{label}_tflops"] = flops / seconds / 1e12
        row[f"{label}_gbps"] = nbytes / seconds / 1e9
        row[f"{label}_roofline_fraction"] = max(flops / peak_flops, nbytes / (1e12 * bandwidth)) / seconds
      rows.append(row)
  return dict(device=kind, backend=jax.default_backend(), dtype=dtype.name,
              peaks=dict(fp32_tflops=fp32_peak, bf16_tflops=bf16_peak, tbps=bandwidth, source=peak_source),
              repeats=repeats, results=rows)


def format_table(report: dict) -> str:
  peaks = report["peaks"]
  lines = [f"device: {report['device']} ({report['backend']}), dtype {report['dtype']}, median of up to "
           f"{report['repeats']} runs; peaks {peaks['fp32_tflops']:.2f} fp32 / {peaks['bf16_tflops']:.2f} bf16 "
           f"TFLOP/s, {1e3 * peaks['tbps']:.1f} GB/s ({peaks['source']})"]
  header = (f"{'shape':40s} {'impl':20s} {'fwd ms':>9s} {'x tv':>6s} {'fwd+bwd ms':>11s} {'x tv':>6s} "
            f"{'fwd TFLOP/s':>11s} {'fwd GB/s':>9s} {'fwd roof':>8s} {'f+b TFLOP/s':>11s} {'f+b roof':>8s}")
  lines += [header, "-" * len(header)]
  for r in report["results"]:
    lines.append(
        f"{r['shape']:40s} {r['impl']:20s} {r['fwd_ms']:9.2f} {r.get('speedup_fwd_vs_torchvision', float('nan')):6.2f} "
        f"{r['fwd_bwd_ms']:11.2f} {r.get('speedup_fwd_bwd_vs_torchvision', float('nan')):6.2f} "
        f"{r['fwd_tflops']:11.3f} {r['fwd_gbps']:9.2f} {r['fwd_roofline_fraction']:8.1%} "
        f"{r['fwd_bwd_tflops']:11.3f} {r['fwd_bwd_roofline_fraction']:8.1%}")
  lines.append("x tv: torchvision's time / this row's time (> 1: faster than torchvision).")
  return "\n".join(lines)


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(prog="python kernels/bench.py", description=__doc__.split("\n\n")[0])
  parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
  parser.add_argument("--shapes", choices=("small", "all", "auto"), default="auto",
                      help="small: skip the MaskProp-size shapes; auto: all on GPU / TPU, small on CPU "
                           "(default: %(default)s)")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                      help="dtype of the inputs and weights (default: %(default)s)")
  parser.add_argument("--repeats", type=int, default=5, help="timed calls per row (default: %(default)s)")
  parser.add_argument("--match", default="", help="only the shapes whose name contains this (default: all)")
  args = parser.parse_args(argv)
  big = args.shapes == "all" or (args.shapes == "auto" and jax.default_backend() != "cpu")
  shapes = [s for s in SHAPES if (big or not s.big) and args.match in s.name]
  report = run(shapes, args.dtype, args.repeats)
  print(json.dumps(report, indent=2) if args.json else format_table(report))


if __name__ == "__main__":
  sys.exit(main())
