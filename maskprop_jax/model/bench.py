"""Benchmark: per-image inference and training-step time of our Mask R-CNN next to torchvision's, as ratios.

    python -m maskprop_jax.model.bench [--variant maskrcnn_resnet50_fpn] [--min-size 320] [--max-size 512]
                                       [--height 240 --width 320] [--iters 3] [--skip-torch]

Both models get the same weights (torchvision's random initialisation, converted), the same image and, for the
training step, the same ground truth; both freeze batch-norm statistics and train every other parameter with
SGD. Times are medians over `--iters` runs after one warm-up run, ours and torch's taking turns (our compile
time is reported on its own).
torch and torchvision are needed for the comparison; `--skip-torch` times ours alone.

    python -m maskprop_jax.model.bench --profile [--iters 3]

instead prints where our training step's time goes, milliseconds per step per part (backbone, fpn, rpn,
roi_heads.box, roi_heads.mask, roi_heads.sample, optimizer), forward and backward apart, from a profiler trace
of --iters steps (training/profile.py).
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from maskprop_jax.model.mask_rcnn import GroundTruth, MaskRCNN, preprocess_batch, trainable_filter


def _interleaved_seconds(fns: dict[str, Callable[[], object]], iters: int) -> dict[str, tuple[float, float]]:
  """name -> (time of its first call, median of its next `iters` calls). After one call of each, the functions
  take turns, so that whatever else the machine does falls on all of them alike."""
  first, times = {}, {name: [] for name in fns}
  for name, fn in fns.items():
    start = time.perf_counter()
    fn()
    first[name] = time.perf_counter() - start
  for _ in range(iters):
    for name, fn in fns.items():
      start = time.perf_counter()
      fn()
      times[name].append(time.perf_counter() - start)
  return {name: (first[name], statistics.median(times[name])) for name in fns}


def _ground_truth(images: jax.Array, boxes: np.ndarray, masks: np.ndarray, labels: np.ndarray, scale: float):
  """The scene's gt scaled to the network input (nearest-neighbour masks), padded to the input frame."""
  height, width = images.shape[1:3]
  resized = np.zeros((1, len(labels), height, width), np.float32)
  ys = np.minimum((np.arange(height) / scale).astype(int), masks.shape[1] - 1)
  xs = np.minimum((np.arange(width) / scale).astype(int), masks.shape[2] - 1)
  resized[0] = masks[:, ys][:, :, xs]
  return GroundTruth(jnp.asarray(boxes * scale)[None], jnp.asarray(labels, jnp.int32)[None], jnp.asarray(resized),
                     jnp.ones((1, len(labels)), bool))


def our_train_step(model: MaskRCNN, cfg, image, boxes, masks, labels) -> tuple[Callable, tuple]:
  """(our jitted training step, its first arguments); the step returns (params, opt_state, loss) and donates
  the first two arguments: call it with the ones it returned."""
  images, image_hw = preprocess_batch(cfg, [image])
  scale = float(image_hw[0, 0]) / image.shape[0]
  gt = _ground_truth(images, boxes, masks, labels, scale)
  # Kept in eval mode: every batch norm uses its frozen statistics, as torch's below. A pure jitted step over
  # split state, the update in the same executable, as training/state.py's: nnx.jit would flatten the module
  # graph on every call (0.2-0.25 s of an R50 step).
  graphdef, params, rest = nnx.split(model, trainable_filter(cfg), ...)
  params = jax.tree.map(jnp.copy, params)  # the step donates and changes them; inference keeps the model's own
  tx = optax.sgd(1e-3, momentum=0.9)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, rest, key):
    def total(params):
      return sum(nnx.merge(graphdef, params, rest).losses(images, image_hw, gt, key).values())
    loss, grads = jax.value_and_grad(total)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  return train_step, (params, tx.init(params), rest, jax.random.key(0))


def our_functions(model: MaskRCNN, cfg, image, boxes, masks, labels) -> dict[str, Callable[[], object]]:
  """Our inference on the image and our training step on it, each a function that runs to completion."""
  images, image_hw = preprocess_batch(cfg, [image])
  infer = jax.jit(lambda m, x, hw: m(x, hw))
  train_step, args = our_train_step(model, cfg, image, boxes, masks, labels)
  carry = list(args)

  def step():
    carry[0], carry[1], loss = train_step(*carry)
    jax.block_until_ready(loss)

  return dict(infer=lambda: jax.block_until_ready(infer(model, images, image_hw)), train=step)


def torch_functions(torch_model, image, boxes, masks, labels) -> dict[str, Callable[[], object]]:
  """torchvision's inference and training step on the same image and ground truth; the step trains a copy, so
  that inference keeps the initial weights (and detections), as ours does."""
  import copy  # noqa: PLC0415

  import torch  # noqa: PLC0415

  trained = copy.deepcopy(torch_model)
  tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255
  optimizer = torch.optim.SGD(trained.parameters(), lr=1e-3, momentum=0.9)
  target = dict(boxes=torch.from_numpy(boxes), labels=torch.from_numpy(labels), masks=torch.from_numpy(masks))
  torch_model.eval()

  def infer():
    with torch.no_grad():
      torch_model([tensor])

  trained.train()
  for module in trained.modules():  # frozen statistics, as ours
    if isinstance(module, torch.nn.BatchNorm2d):
      module.eval()

  def train_step():
    optimizer.zero_grad()
    loss = sum(trained([tensor], [target]).values())
    loss.backward()
    optimizer.step()

  return dict(infer=infer, train=train_step)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m maskprop_jax.model.bench", description=__doc__.split("\n\n")[0])
  parser.add_argument("--variant", default="maskrcnn_resnet50_fpn",
                      choices=("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"),
                      help="Mask R-CNN variant (default: %(default)s)")
  parser.add_argument("--min-size", type=int, default=320,
                      help="the models' input short side in pixels (default: %(default)s)")
  parser.add_argument("--max-size", type=int, default=512,
                      help="the models' input long side limit in pixels (default: %(default)s)")
  parser.add_argument("--height", type=int, default=240, help="test image height (default: %(default)s)")
  parser.add_argument("--width", type=int, default=320, help="test image width (default: %(default)s)")
  parser.add_argument("--iters", type=int, default=3, help="timed runs; the median is reported (default: %(default)s)")
  parser.add_argument("--skip-torch", action="store_true",
                      help="time ours alone, without torch (default: compare with torchvision)")
  parser.add_argument("--profile", action="store_true",
                      help="print our training step's milliseconds per model part instead (implies --skip-torch)")
  args = parser.parse_args(argv)
  args.skip_torch = args.skip_torch or args.profile

  from maskprop_jax.convert import parity  # noqa: PLC0415 -- the torch-side helpers live with the parity check

  image, boxes, masks, labels = parity.synthetic_scene(0, (args.height, args.width))
  torch_model = None
  if args.skip_torch:
    from maskprop_jax.model.config import mask_rcnn_config  # noqa: PLC0415
    from maskprop_jax.model.mask_rcnn import build_mask_rcnn  # noqa: PLC0415

    cfg = mask_rcnn_config(args.variant)
    model = build_mask_rcnn(cfg)
  else:
    torch_model = parity.random_torchvision_model(args.variant, 0, args.min_size, args.max_size)
    with tempfile.TemporaryDirectory() as workdir:
      model, cfg = parity.convert_via_checkpoint(torch_model, workdir)
  cfg.input.min_size, cfg.input.max_size = args.min_size, args.max_size
  cfg.trainable_backbone_layers = 5  # torchvision trains every layer of a randomly initialised model

  if args.profile:
    from maskprop_jax.training import profile  # noqa: PLC0415

    step, step_args = our_train_step(model, cfg, image, boxes, masks, labels)
    rows = profile.profile_breakdown(step, step_args, steps=args.iters, group=profile.model_parts,
                                     next_args=lambda previous, out: (out[0], out[1], *previous[2:]))
    print(f"{args.variant}, one {args.height}x{args.width} image, {jax.devices()[0].platform}, "
          f"mean of {args.iters} traced training steps")
    print(profile.format_table(rows, title="part of a training step"))
    return
  functions = {("ours", k): f for k, f in our_functions(model, cfg, image, boxes, masks, labels).items()}
  if torch_model is not None:
    functions.update({("torch", k): f for k, f in torch_functions(torch_model, image, boxes, masks, labels).items()})
  seconds = _interleaved_seconds(functions, args.iters)
  images, _ = preprocess_batch(cfg, [image])
  print(f"{args.variant}, one {args.height}x{args.width} image -> network input {images.shape[1]}x{images.shape[2]}, "
        f"{jax.devices()[0].platform}, median of {args.iters} (ours and torch's calls in turn)")
  print(f"{'':24s}{'ours (s)':>12s}{'torch (s)':>12s}{'ours/torch':>12s}")
  for name, key in (("inference per image", "infer"), ("training step", "train")):
    ours = seconds["ours", key][1]
    if torch_model is not None:
      theirs = seconds["torch", key][1]
      print(f"{name:24s}{ours:12.3f}{theirs:12.3f}{ours / theirs:12.2f}")
    else:
      print(f"{name:24s}{ours:12.3f}{'-':>12s}{'-':>12s}")
  print(f"first call incl. compile: inference {seconds['ours', 'infer'][0]:.1f} s, "
        f"training {seconds['ours', 'train'][0]:.1f} s")


if __name__ == "__main__":
  main()
