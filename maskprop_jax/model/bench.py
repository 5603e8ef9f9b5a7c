"""Benchmark: per-image inference and training-step time of our Mask R-CNN next to torchvision's, as ratios.

    python -m maskprop_jax.model.bench [--variant maskrcnn_resnet50_fpn] [--min-size 320] [--max-size 512]
                                       [--height 240 --width 320] [--iters 3] [--skip-torch]

Both models get the same weights (torchvision's random initialisation, converted), the same image and, for the
training step, the same ground truth; both freeze batch-norm statistics and train every other parameter with
SGD. Times are medians over `--iters` runs after one warm-up run (our compile time is reported on its own).
torch and torchvision are needed for the comparison; `--skip-torch` times ours alone.
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


def _median_seconds(fn: Callable[[], object], iters: int) -> tuple[float, float]:
  """(time of the first call, median time of the next `iters` calls)."""
  start = time.perf_counter()
  fn()
  first = time.perf_counter() - start
  times = []
  for _ in range(iters):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return first, statistics.median(times)


def _ground_truth(images: jax.Array, boxes: np.ndarray, masks: np.ndarray, labels: np.ndarray, scale: float):
  """The scene's gt scaled to the network input (nearest-neighbour masks), padded to the input frame."""
  height, width = images.shape[1:3]
  resized = np.zeros((1, len(labels), height, width), np.float32)
  ys = np.minimum((np.arange(height) / scale).astype(int), masks.shape[1] - 1)
  xs = np.minimum((np.arange(width) / scale).astype(int), masks.shape[2] - 1)
  resized[0] = masks[:, ys][:, :, xs]
  return GroundTruth(jnp.asarray(boxes * scale)[None], jnp.asarray(labels, jnp.int32)[None], jnp.asarray(resized),
                     jnp.ones((1, len(labels)), bool))


def time_ours(model: MaskRCNN, cfg, image, boxes, masks, labels, iters: int) -> dict[str, float]:
  images, image_hw = preprocess_batch(cfg, [image])
  infer = jax.jit(lambda m, x, hw: m(x, hw))
  compile_infer, infer_s = _median_seconds(lambda: jax.block_until_ready(infer(model, images, image_hw)), iters)

  scale = float(image_hw[0, 0]) / image.shape[0]
  gt = _ground_truth(images, boxes, masks, labels, scale)
  # Kept in eval mode: every batch norm uses its frozen statistics, as torch's below. A pure jitted step over
  # split state, the update in the same executable, as training/state.py's: nnx.jit would flatten the module
  # graph on every call (0.2-0.25 s of an R50 step).
  graphdef, params, rest = nnx.split(model, trainable_filter(cfg), ...)
  tx = optax.sgd(1e-3, momentum=0.9)

  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def train_step(params, opt_state, rest, key):
    def total(params):
      return sum(nnx.merge(graphdef, params, rest).losses(images, image_hw, gt, key).values())
    loss, grads = jax.value_and_grad(total)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  carry = [params, tx.init(params)]

  def step():
    carry[0], carry[1], loss = train_step(carry[0], carry[1], rest, jax.random.key(0))
    jax.block_until_ready(loss)

  compile_train, train_s = _median_seconds(step, iters)
  return dict(infer_s=infer_s, train_s=train_s, infer_first_s=compile_infer, train_first_s=compile_train)


def time_torch(torch_model, image, boxes, masks, labels, iters: int) -> dict[str, float]:
  import torch  # noqa: PLC0415

  tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255
  torch_model.eval()

  def infer():
    with torch.no_grad():
      torch_model([tensor])

  _, infer_s = _median_seconds(infer, iters)
  torch_model.train()
  for module in torch_model.modules():  # frozen statistics, as ours
    if isinstance(module, torch.nn.BatchNorm2d):
      module.eval()
  optimizer = torch.optim.SGD(torch_model.parameters(), lr=1e-3, momentum=0.9)
  target = dict(boxes=torch.from_numpy(boxes), labels=torch.from_numpy(labels), masks=torch.from_numpy(masks))

  def train_step():
    optimizer.zero_grad()
    loss = sum(torch_model([tensor], [target]).values())
    loss.backward()
    optimizer.step()

  _, train_s = _median_seconds(train_step, iters)
  torch_model.eval()
  return dict(infer_s=infer_s, train_s=train_s)


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
  args = parser.parse_args(argv)

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

  ours = time_ours(model, cfg, image, boxes, masks, labels, args.iters)
  images, _ = preprocess_batch(cfg, [image])
  print(f"{args.variant}, one {args.height}x{args.width} image -> network input {images.shape[1]}x{images.shape[2]}, "
        f"{jax.devices()[0].platform}, median of {args.iters}")
  print(f"{'':24s}{'ours (s)':>12s}{'torch (s)':>12s}{'ours/torch':>12s}")
  theirs = time_torch(torch_model, image, boxes, masks, labels, args.iters) if torch_model is not None else {}
  for name, key in (("inference per image", "infer_s"), ("training step", "train_s")):
    if theirs:
      print(f"{name:24s}{ours[key]:12.3f}{theirs[key]:12.3f}{ours[key] / theirs[key]:12.2f}")
    else:
      print(f"{name:24s}{ours[key]:12.3f}{'-':>12s}{'-':>12s}")
  print(f"first call incl. compile: inference {ours['infer_first_s']:.1f} s, training {ours['train_first_s']:.1f} s")


if __name__ == "__main__":
  main()
