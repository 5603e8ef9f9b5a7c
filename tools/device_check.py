"""The accelerator paths, proven in one command on a lent GPU (about 8 minutes on one H100 or H200):

    python tools/device_check.py [--out DIR] [--quick]

On a machine with jax (CUDA), flax, optax, orbax and torch/torchvision installed and this checkout; the project
itself need not be installed (the checkout goes on sys.path). Four steps, each in its own process with its own
time limit, so that one failing step still leaves the others' figures:
  1. kernels: deform_conv2d and masked_deform_conv2d with impl "pallas" (the Triton kernels, compiled) against
     impl "xla", and deform_conv2d against torchvision's CUDA deform_conv2d, in float32 and bfloat16: the largest
     difference of the outputs and of every gradient, relative to the reference's largest value;
  2. `python kernels/bench.py --json --shapes auto --dtype float32|bfloat16`: forward and forward + backward times
     per impl with roofline fractions;
  3. configs/ytvis.py's inference benchmark (eval.py --benchmark, random weights, 2 synthetic 360x640 videos of 12
     frames, as its docstring) in float32 and bfloat16: MaskProp's frames/s against torchvision's Mask R-CNN;
  4. one timed training step of configs/ytvis.py at batch 2 in its bfloat16 (training/bench.py, random weights,
     synthetic 360x640 clips in place of YouTube-VIS): milliseconds per step and the memory XLA gives the step.
Each step's output goes to DIR (default /tmp/device_check; $OUT on the device tool's machines); the last thing
printed is one table of every figure, also written as DIR/device_check.json. --quick runs one kernel shape and
one timed step per benchmark (a dry run of the script itself; on a CPU the Pallas rows are skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KERNEL_SHAPE = (2, 48, 64, 128, 128)  # N, H, W, C, O: a P3 level of a 384x512 frame, 128 channels


def _kernel_check(dtype_name: str, quick: bool) -> list[dict]:
  """Step 1, run in a child process: rows of (check, dtype, output / gradient, relative max difference)."""
  import jax  # noqa: PLC0415 (the parent process stays free of jax: each step gets the whole GPU)
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from maskprop_jax.kernels import deform_conv2d, masked_deform_conv2d, reference  # noqa: PLC0415

  dtype = jnp.dtype(dtype_name)
  on_gpu = jax.default_backend() == "gpu"
  n, h, w, c, o = (1, 12, 16, 16, 16) if quick else KERNEL_SHAPE
  rng = np.random.default_rng(0)
  x = rng.standard_normal((n, h, w, c)).astype(np.float32)
  offsets = (2.0 * rng.standard_normal((n, h, w, 1, 9, 2))).astype(np.float32)
  weight = (rng.standard_normal((3, 3, c, o)) / np.sqrt(9 * c)).astype(np.float32)
  out_grad = rng.standard_normal((n, h, w, o)).astype(np.float32)
  masks = (rng.random((n, 3, h, w)) < 0.5).astype(np.float32)
  rows = []

  def relative(a, b):
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))

  def value_and_grads(impl):
    def loss(x, offsets, weight):
      out = deform_conv2d(x.astype(dtype), offsets, weight.astype(dtype), padding=1, impl=impl)
      return jnp.sum(out.astype(jnp.float32) * out_grad), out
    (_, out), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(x, offsets, weight)
    return out, dict(zip(("x", "offsets", "weight"), grads))

  xla_out, xla_grads = value_and_grads("xla")
  if on_gpu:
    pallas_out, pallas_grads = value_and_grads("pallas")
    rows.append(dict(check="pallas vs xla", dtype=dtype_name, what="output", rel_max_diff=relative(pallas_out,
                                                                                                     xla_out)))
    rows += [dict(check="pallas vs xla", dtype=dtype_name, what=f"grad {k}",
                  rel_max_diff=relative(pallas_grads[k], xla_grads[k])) for k in xla_grads]
    masked = {impl: masked_deform_conv2d(jnp.asarray(x, dtype), jnp.asarray(masks), offsets,
                                         jnp.asarray(weight, dtype), padding=1, impl=impl)
              for impl in ("xla", "pallas")}
    rows.append(dict(check="masked pallas vs xla", dtype=dtype_name, what="output",
                     rel_max_diff=relative(masked["pallas"], masked["xla"])))
  try:
    import torch  # noqa: PLC0415
    import torchvision  # noqa: PLC0415
  except ImportError:
    return rows
  device = "cuda" if torch.cuda.is_available() else "cpu"
  arrays = reference.to_torchvision_layout(x, offsets, weight, None)
  tensors = [torch.tensor(a, device=device, requires_grad=True) for a in arrays]
  out = torchvision.ops.deform_conv2d(*tensors, padding=1)
  (out * torch.tensor(out_grad.transpose(0, 3, 1, 2).copy(), device=device)).sum().backward()
  torch_out = reference.from_torchvision_layout("out", out.detach().cpu().numpy(), None)
  ours = {"xla": (xla_out, xla_grads)}
  if on_gpu:
    ours["pallas"] = (pallas_out, pallas_grads)
  for impl, (impl_out, impl_grads) in ours.items():
    rows.append(dict(check=f"{impl} vs torchvision {device}", dtype=dtype_name, what="output",
                     rel_max_diff=relative(impl_out, torch_out)))
    for name, tensor in zip(("x", "offsets", "weight"), tensors):
      theirs = reference.from_torchvision_layout(name, tensor.grad.cpu().numpy(), impl_grads[name].shape)
      rows.append(dict(check=f"{impl} vs torchvision {device}", dtype=dtype_name, what=f"grad {name}",
                       rel_max_diff=relative(impl_grads[name], theirs)))
  return rows


def _run(name: str, command: list[str], out_dir: Path, timeout: int, env: dict) -> tuple[str, str | None]:
  """Runs one step; returns (its stdout, an error line or None), its whole output kept in out_dir/name.log."""
  start = time.perf_counter()
  try:
    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    output, error = done.stdout, None if done.returncode == 0 else f"exit {done.returncode}"
    log = done.stdout + done.stderr
  except subprocess.TimeoutExpired as e:
    output = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
    error, log = f"over its {timeout} s", output
  (out_dir / f"{name}.log").write_text(log)
  print(f"device_check: {name}: {time.perf_counter() - start:.0f} s{'' if error is None else ', FAILED: ' + error}",
        flush=True)
  return output, error


def _last_json(text: str):
  """The last JSON object printed in text (eval.py and bench.py print one)."""
  start = text.rfind("\n{")
  start = 0 if start < 0 and text.startswith("{") else start
  return json.loads(text[start:]) if start >= 0 else None


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python tools/device_check.py", description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/device_check"), help="where the logs go")
  parser.add_argument("--quick", action="store_true", help="one small shape and one timed step per benchmark")
  parser.add_argument("--kernel-rows", help=argparse.SUPPRESS)  # the child process of step 1
  args = parser.parse_args(argv)
  if args.kernel_rows:
    print(json.dumps(_kernel_check(args.kernel_rows, args.quick)))
    return
  out_dir = Path(args.out)
  out_dir.mkdir(parents=True, exist_ok=True)
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
  quick = ["--quick"] if args.quick else []
  report: dict = {"errors": {}}

  for dtype in ("float32", "bfloat16"):  # 1. kernel agreement
    output, error = _run(f"kernels_{dtype}", [sys.executable, __file__, "--kernel-rows", dtype, *quick], out_dir,
                         240, env)
    report["kernel_agreement_" + dtype] = json.loads(output.strip().splitlines()[-1]) if error is None else []
    if error:
      report["errors"][f"kernels_{dtype}"] = error

  for dtype in ("float32", "bfloat16"):  # 2. kernel speed
    bench = [sys.executable, "kernels/bench.py", "--json", "--shapes", "auto", "--dtype", dtype,
             "--repeats", "1" if args.quick else "5"] + (["--match", "synthetic"] if args.quick else [])
    output, error = _run(f"kernel_bench_{dtype}", bench, out_dir, 300, env)
    report["kernel_bench_" + dtype] = _last_json(output) if error is None else None
    if error:
      report["errors"][f"kernel_bench_{dtype}"] = error

  data = out_dir / "s360"  # 3 and 4: synthetic 360x640 videos in YouTube-VIS format
  _run("data", [sys.executable, "-m", "maskprop_jax.data.synthetic", "--out", str(data), "--train-videos", "4",
                "--val-videos", "1" if args.quick else "2", "--seed", "0", "--height", "360", "--width", "640",
                "--min-frames", "12", "--max-frames", "12"], out_dir, 120, env)
  random_weights = ["--config.model.init_from=", "--config.model.detector.num_classes=7"]
  for dtype in ("float32", "bfloat16"):  # 3. inference against torchvision
    output, error = _run(f"inference_{dtype}", [
        sys.executable, "eval.py", "--config", "configs/ytvis.py", "--workdir", str(out_dir / f"bench_{dtype}"),
        "--benchmark", *random_weights, "--config.model.detector.roi_heads.score_thresh=0",
        "--config.inference.score_thresh=0", f"--config.model.compute_dtype={dtype}",
        "--images", str(data / "valid" / "JPEGImages"), "--annotations", str(data / "valid.json")],
        out_dir, 300, env)
    report["inference_" + dtype] = _last_json(output) if error is None else None
    if error:
      report["errors"][f"inference_{dtype}"] = error

  output, error = _run("training_step", [  # 4. a training step of configs/ytvis.py at batch 2
      sys.executable, "-m", "maskprop_jax.training.bench", "--config", "configs/ytvis.py",
      "--steps", "1" if args.quick else "5", *random_weights, "--config.train.global_batch_size=2",
      "--config.data.name=synthetic", f"--config.data.root={data}", "--config.data.worker_count=0",
      f"--config.data.tfds_dir={out_dir / 'tfds'}"], out_dir, 420, env)
  report["training_step"] = output.strip().splitlines()[-2:] if error is None else None
  if error:
    report["errors"]["training_step"] = error

  (out_dir / "device_check.json").write_text(json.dumps(report, indent=2))
  print(format_report(report))


def format_report(report: dict) -> str:
  """One table of every figure."""
  lines = ["| step | what | figure |", "|---|---|---|"]
  for dtype in ("float32", "bfloat16"):
    for row in report.get(f"kernel_agreement_{dtype}") or []:
      lines.append(f"| kernels {dtype} | {row['check']}, {row['what']} | rel. max diff {row['rel_max_diff']:.2e} |")
    bench = report.get(f"kernel_bench_{dtype}") or {}
    for row in bench.get("results", []):
      versus = (f", {row['speedup_fwd_vs_torchvision']:.2f}x / {row['speedup_fwd_bwd_vs_torchvision']:.2f}x "
                "torchvision's speed" if "speedup_fwd_vs_torchvision" in row else "")
      lines.append(f"| kernel bench {dtype} | {row['shape']}, {row['impl']} | fwd {row['fwd_ms']:.3g} ms "
                   f"({row['fwd_roofline_fraction']:.0%} of roofline), fwd+bwd {row['fwd_bwd_ms']:.3g} ms "
                   f"({row['fwd_bwd_roofline_fraction']:.0%}){versus} |")
  for dtype in ("float32", "bfloat16"):
    result = report.get(f"inference_{dtype}") or {}
    if result:
      lines.append(f"| inference {dtype} | MaskProp frames/s, torchvision's, ratio | "
                   f"{result.get('frames_per_second', float('nan')):.3g}, "
                   f"{result.get('torchvision_maskrcnn_frames_per_second', float('nan')):.3g}, "
                   f"{result.get('frames_per_second_ratio_to_torchvision', float('nan')):.3g}x |")
  if report.get("training_step"):  # training/bench.py's row: devices, batch, compile s, median, p10, p90 ms, ...
    devices, batch, compile_s, median, p10, p90, clips, memory = report["training_step"][-1].split()
    lines.append(f"| training step (ytvis, bfloat16) | batch {batch} on {devices} device(s) | median {median} ms "
                 f"(p10 {p10}, p90 {p90}), {clips} clips/s, compile {compile_s} s, {memory} MiB per device |")
  for step, error in report["errors"].items():
    lines.append(f"| {step} | FAILED | {error} (see its .log) |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
