"""A tiny randomly initialised MaskProp for CPU tests of inference, evaluation, the demo and propagation_eval."""

from pathlib import Path

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from maskprop_jax.training import checkpointing, optimizer, runs
from maskprop_jax.training.state import create_train_state
from maskprop_jax.model import maskprop
from maskprop_jax.model.config import tiny_mask_rcnn_config

REPO_ROOT = Path(__file__).resolve().parents[1]
CANVAS_HW = (32, 64)  # tiny_config's 32x48 frames padded to a multiple of 32


def tiny_config(num_classes: int = 6, half_window: int = 2, frame_hw: tuple[int, int] = (32, 48)
                ) -> ml_collections.ConfigDict:
  """configs/default.py with a narrow ResNet-FPN detector for frames of `frame_hw` (not resized), propagation on
  P3 and clips of 2T+1 frames; data, optimizer and train settings stay the defaults. Tests that share the
  architecture (6 classes: the synthetic set's) share inference.py's compiled programs."""
  config = runs.load_config_file(REPO_ROOT / "configs" / "default.py")
  detector = tiny_mask_rcnn_config(num_classes=num_classes + 1)
  detector.backbone.width_per_group = 8  # ResNet stages of 32..256 channels: fast on a CPU
  detector.input.update(dict(min_size=min(frame_hw), max_size=max(frame_hw)))
  config.model.detector = detector
  config.model.propagation.update(dict(level=1, offset_width=8, head_width=8, head_depth=1, impl="xla"))
  # A random detector scores each class about 1/C: a zero threshold keeps its detections, so clips have tracks.
  config.inference.update(dict(half_window=half_window, clip_stride=1, score_thresh=0.0))
  return config


def _random_value(rng: np.random.Generator, path: tuple, variable: nnx.Variable) -> np.ndarray:
  name = next(p for p in reversed(path) if isinstance(p, str))
  shape = variable.get_value().shape
  if isinstance(variable, nnx.Param) and len(shape) >= 2:  # conv and dense kernels: He-normal
    return (rng.standard_normal(shape) * np.sqrt(2.0 / np.prod(shape[:-1]))).astype(np.float32)
  if name in ("weight", "running_var"):  # batch-norm scale and variance
    return np.ones(shape, np.float32)
  return np.zeros(shape, np.float32)  # biases and batch-norm means


def tiny_model(config: ml_collections.ConfigDict, *, confident_masks: bool = True) -> maskprop.MaskProp:
  """A MaskProp of `config` in inference mode with NumPy-drawn random weights.

  The model's own initialisers compile one XLA program per parameter shape, about 30 s on the test CPU; drawing
  the weights with NumPy takes milliseconds. With `confident_masks`, the mask logits' biases are raised so the
  random model's detections and propagated masks cover their objects (above the mask threshold), which is what
  linking needs to form tracks across clips.
  """
  abstract = nnx.eval_shape(lambda: maskprop.MaskProp(config.model, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  rng = np.random.default_rng(config.seed)
  flat = nnx.to_flat_state(state)
  for path, variable in flat:
    variable.set_value(jax.numpy.asarray(_random_value(rng, path, variable)))
  model = nnx.merge(graphdef, nnx.from_flat_state(flat))
  if confident_masks:
    for bias in (model.detector.roi_heads.mask_predictor.mask_fcn_logits.bias, model.propagation.mask_logits.bias,
                 model.propagation.foreground[1].bias):
      bias[...] += 6.0
  model.eval()
  return model


def save_tiny_run(workdir: Path, config: ml_collections.ConfigDict, model: maskprop.MaskProp) -> None:
  """A train.py-like workdir: config.json and a checkpoint (train state and data iterator) of `model`."""
  tx = optimizer.create_optimizer(config, optimizer.create_learning_rate_fn(config))
  _, state = create_train_state(model, config, tx)
  runs.save_run_config(config, workdir)
  manager = checkpointing.create_manager(workdir, keep=1, save_every=1)
  checkpointing.save(manager, 1, state, iter(grain.MapDataset.range(4).to_iter_dataset()), force=True)
  manager.wait_until_finished()


def clip_batch(seed: int = 0, batch_size: int = 2, num_frames: int = 3, max_instances: int = 3):
  """A training batch of tiny_config's frames as data/pipeline.py makes it: uint8 canvases, box-shaped masks, a padding slot and a crowd."""
  rng = np.random.default_rng(seed)
  height, width = CANVAS_HW
  image_hw = np.asarray([[32, 48], [32, 40]], np.int32)[:batch_size]
  frames = np.zeros((batch_size, num_frames, height, width, 3), np.uint8)
  boxes = np.zeros((batch_size, num_frames, max_instances, 4), np.float32)
  masks = np.zeros((batch_size, num_frames, max_instances, height, width), np.uint8)
  for b in range(batch_size):
    h, w = image_hw[b]
    frames[b, :, :h, :w] = rng.integers(0, 256, (num_frames, h, w, 3))
    for f in range(num_frames):
      for m in range(max_instances):
        x0, y0 = rng.integers(0, w - 12), rng.integers(0, h - 12)
        x1, y1 = x0 + rng.integers(8, 12), y0 + rng.integers(8, 12)
        boxes[b, f, m] = (x0, y0, x1, y1)
        masks[b, f, m, y0:y1, x0:x1] = 1
  present = np.ones((batch_size, num_frames, max_instances), bool)
  present[0, 2, 1] = False  # leaves the clip
  present[1, 0, 0] = False  # enters after the center frame
  classes = rng.integers(1, 7, (batch_size, max_instances)).astype(np.int32)
  classes[1, 2] = 0  # a padding slot
  present[1, :, 2] = False
  masks[1, :, 2] = 0
  boxes[1, :, 2] = 0
  crowd = np.zeros((batch_size, max_instances), bool)
  crowd[0, 2] = True
  return {name: jnp.asarray(value) for name, value in dict(
      frames=frames, image_hw=image_hw, boxes=boxes, masks=masks, present=present, classes=classes,
      crowd=crowd).items()}
