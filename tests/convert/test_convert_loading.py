"""Starting MaskProp's detector from converted Mask R-CNN weights: architecture constants, then weights."""

import jax
import ml_collections
import numpy as np
from flax import nnx

from maskprop_jax.convert import loading, params_io
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
  config = loading.with_detector_architecture(config, str(tmp_path))
  assert config.detector.backbone.bn_eps == 0.0
  assert config.detector.num_classes == 3
  model = nnx.jit(lambda rngs: maskprop.MaskProp(config, rngs=rngs))(nnx.Rngs(2))
  loaded = loading.load_detector_params(model, str(tmp_path))

  got, want = model.detector, source
  for module in (lambda m: m.backbone.body.conv1, lambda m: m.rpn.head.cls_logits):
    np.testing.assert_array_equal(module(got).kernel.get_value(), module(want).kernel.get_value())
  # The class-specific predictors differ in shape and keep their fresh initialisation.
  assert got.roi_heads.box_predictor.cls_score.kernel.get_value().shape[-1] == 3
  total = len(jax.tree.leaves(nnx.state(model.detector)))
  assert 0 < loaded < total
