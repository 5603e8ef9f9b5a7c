"""MaskProp model: its configuration checks."""

import ml_collections
import pytest
from flax import nnx

from maskprop_jax.model import maskprop
from maskprop_jax.model.config import tiny_mask_rcnn_config


def maskprop_config(detector):
  return ml_collections.ConfigDict(dict(
      detector=detector, init_from="",
      propagation=dict(level=1, offset_width=8, num_deform_layers=1, kernel_size=3, head_width=8, head_depth=1,
                       use_foreground=True, upsample=1, impl="xla", loss_weight=1.0)))


def test_upsample_must_divide_the_feature_stride():
  config = maskprop_config(tiny_mask_rcnn_config(num_classes=3))  # level 1: stride 8
  for upsample in (0, 3):
    config.propagation.upsample = upsample
    with pytest.raises(ValueError, match="positive divisor of the stride 8"):
      maskprop.MaskProp(config, rngs=nnx.Rngs(0))
