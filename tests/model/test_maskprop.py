"""MaskProp model: initialising its detector from converted Mask R-CNN weights."""

import jax
import ml_collections
import numpy as np
import pytest
from flax import nnx

from maskprop_jax.convert import params_io
from maskprop_jax.model import mask_rcnn, maskprop
from maskprop_jax.model.config import tiny_mask_rcnn_config


def maskprop_config(detector):
  return ml_collections.ConfigDict(dict(
      detector=detector, init_from="",
      propagation=dict(level=1, offset_width=8, num_deform_layers=1, kernel_size=3, head_width=8, head_depth=1,
                       use_foreground=True, upsample=1, impl="xla", loss_weight=1.0)))


def test_detector_weights_load_except_the_class_specific_layers(tmp_path):
  coco = tiny_mask_rcnn_config(num_classes=5)
  coco.backbone.bn_eps = 0.0  # as torchvision's COCO v1 weights
  source = mask_rcnn.build_mask_rcnn(coco, nnx.Rngs(1))
  params_io.save_params(tmp_path, nnx.to_pure_dict(nnx.state(source)), coco, category_ids=list(range(5)),
                        class_names=[str(i) for i in range(5)])

  config = maskprop_config(tiny_mask_rcnn_config(num_classes=3))  # fine-tuning to other classes
  maskprop.detector_config_from(str(tmp_path), config)
  assert config.detector.backbone.bn_eps == 0.0
  assert config.detector.num_classes == 3
  model = nnx.jit(lambda rngs: maskprop.MaskProp(config, rngs=rngs))(nnx.Rngs(2))
  loaded = maskprop.load_detector_params(model, str(tmp_path))

  got, want = model.detector, source
  for module in (lambda m: m.backbone.body.conv1, lambda m: m.rpn.head.cls_logits):
    np.testing.assert_array_equal(module(got).kernel.get_value(), module(want).kernel.get_value())
  # The class-specific predictors differ in shape and keep their fresh initialisation.
  assert got.roi_heads.box_predictor.cls_score.kernel.get_value().shape[-1] == 3
  total = len(jax.tree.leaves(nnx.state(model.detector)))
  assert 0 < loaded < total


def test_upsample_must_divide_the_feature_stride():
  config = maskprop_config(tiny_mask_rcnn_config(num_classes=3))  # level 1: stride 8
  for upsample in (0, 3):
    config.propagation.upsample = upsample
    with pytest.raises(ValueError, match="positive divisor of the stride 8"):
      maskprop.MaskProp(config, rngs=nnx.Rngs(0))


@pytest.mark.parametrize("on_references", [False, True])
def test_reference_frames_train_the_detector_only_when_asked(on_references):
  import tiny_config

  config = tiny_config.get_config().model
  config.detector_on_reference_frames = on_references
  model = nnx.jit(lambda rngs: maskprop.MaskProp(config, rngs=rngs))(nnx.Rngs(0))
  # One clip of 2 frames: the only object is absent from the center frame and present in the reference frame.
  frames = np.zeros((1, 2, 64, 96, 3), np.uint8)
  frames[0, 1, 20:40, 30:60] = (200, 60, 60)
  masks = np.zeros((1, 2, 4, 64, 96), np.uint8)
  masks[0, 1, 0, 20:40, 30:60] = 1
  boxes = np.zeros((1, 2, 4, 4), np.float32)
  boxes[0, 1, 0] = (30, 20, 60, 40)
  present = np.zeros((1, 2, 4), bool)
  present[0, 1, 0] = True
  batch = dict(frames=frames, image_hw=np.asarray([[64, 96]], np.int32), boxes=boxes, masks=masks,
               present=present, classes=np.asarray([[2, 0, 0, 0]], np.int32), crowd=np.zeros((1, 4), bool))
  _, losses = nnx.jit(maskprop.compute_losses)(model, batch, jax.random.key(0))
  # A positive RoI exists (the ground-truth box is always among the proposals) only where the object is seen.
  assert (float(losses["loss_mask"]) > 0) == on_references
  assert (float(losses["loss_box_reg"]) > 0) == on_references
  assert np.isfinite(float(losses["loss_propagation"]))
