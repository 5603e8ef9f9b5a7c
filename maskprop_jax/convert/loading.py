"""Starting MaskProp's detector from converted Mask R-CNN weights (`python -m maskprop_jax.convert ...`).

Two steps, in this order: `with_detector_architecture` takes the converted checkpoint's architecture constants
into a model config (before the model is built, and before the config is recorded with a run, so that every
program that rebuilds the run builds the same network); `load_detector_params` then copies the weights in.
"""

from __future__ import annotations

import ml_collections
import numpy as np
from flax import nnx

from maskprop_jax.convert import params_io
from maskprop_jax.model import mask_rcnn


def with_detector_architecture(model_config: ml_collections.ConfigDict,
                               params_dir: str) -> ml_collections.ConfigDict:
  """A copy of config.model with the converted checkpoint's architecture constants (e.g. the frozen batch norms'
  epsilon, 0.0 for torchvision's COCO v1 weights); the run's class count and input size are kept."""
  model_config = ml_collections.ConfigDict(model_config.to_dict())
  source = params_io.read_metadata(params_dir)["config"]
  model_config.detector.backbone.update(source.backbone.to_dict())
  model_config.detector.anchors.update(source.anchors.to_dict())
  return model_config


def load_detector_params(model: nnx.Module, params_dir: str) -> int:
  """Loads converted Mask R-CNN weights into `model.detector` (a MaskProp's, or a MaskRCNN's own detector).

  Layers whose shapes differ (the class-specific predictors when the class count changes) keep their
  initialisation, as fine-tuning from COCO does. Returns how many arrays were loaded.
  """
  loaded, _ = params_io.load_params(params_dir, mask_rcnn.abstract_mask_rcnn)
  target = dict(nnx.to_flat_state(nnx.state(model.detector)))
  replaced = 0
  for path, value in nnx.to_flat_state(nnx.state(loaded)):
    current = target.get(path)
    if current is not None and np.shape(current.get_value()) == np.shape(value.get_value()):
      current.set_value(value.get_value())
      replaced += 1
  if replaced == 0:
    raise ValueError(f"{params_dir}: no parameter of the converted detector fits this model's detector")
  nnx.update(model.detector, nnx.from_flat_state(target))
  return replaced
