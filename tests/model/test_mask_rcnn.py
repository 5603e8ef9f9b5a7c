"""The assembled Mask R-CNN: inference shapes, a training step that lowers the loss, and end-to-end parity of
converted torchvision weights (tiny ResNet bodies: the full ResNet-50 runs in `python -m
maskprop_jax.convert.parity`)."""

import tempfile

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from maskprop_jax.model.config import tiny_mask_rcnn_config
from maskprop_jax.model.mask_rcnn import (
  GroundTruth, abstract_mask_rcnn, build_mask_rcnn, postprocess, preprocess_batch, trainable_filter)


@pytest.fixture(scope="module")
def tiny():
  cfg = tiny_mask_rcnn_config(num_classes=4)
  # rbg keys: initialisation compiles in half the time of threefry's.
  return cfg, build_mask_rcnn(cfg, nnx.Rngs(jax.random.key(0, impl="rbg")))


def _scene():
  image = np.zeros((48, 64, 3), np.uint8)
  image[8:40, 10:30] = (200, 40, 40)
  image[20:44, 36:60] = (40, 40, 200)
  return image


def test_inference_shapes_and_postprocess(tiny):
  cfg, model = tiny
  images, image_hw = preprocess_batch(cfg, [_scene(), _scene()[:40]])
  assert images.shape == (2, 64, 96, 3)
  np.testing.assert_array_equal(image_hw, [[64, 85], [60, 96]])  # 40x64: the long side caps the scale at 1.5
  detections = jax.jit(lambda m, x, hw: m(x, hw))(model, images, image_hw)
  assert detections.boxes.shape == (2, 10, 4) and detections.masks.shape == (2, 10, 28, 28)
  results = postprocess(detections, image_hw, jnp.asarray([[48, 64], [40, 64]]), (48, 64))
  assert results.masks.shape == (2, 10, 48, 64)
  # Nothing may be pasted below the second image's own 40 rows.
  assert float(jnp.abs(results.masks[1, :, 40:]).max()) == 0.0


def test_trainable_filter_freezes_early_stages():
  cfg = tiny_mask_rcnn_config()
  cfg.trainable_backbone_layers = 3
  model = abstract_mask_rcnn(cfg)
  trained = nnx.state(model, trainable_filter(cfg))
  body = trained["backbone"]["body"]
  assert "conv1" not in body and "layer1" not in body and "layer2" in body
  assert "fc6" in trained["roi_heads"]["box_head"]


def test_training_step_reduces_loss(tiny):
  cfg, model = tiny
  model = nnx.clone(model)
  model.train()
  images, image_hw = preprocess_batch(cfg, [_scene()])
  masks = np.zeros((1, 2, *images.shape[1:3]), np.float32)
  masks[0, 0, 11:53, 13:40] = 1  # the two rectangles at the resized scale (64 / 48)
  masks[0, 1, 27:59, 48:80] = 1
  gt = GroundTruth(jnp.asarray([[[13.0, 11.0, 40.0, 53.0], [48.0, 27.0, 80.0, 59.0]]]),
                   jnp.asarray([[1, 3]], jnp.int32), jnp.asarray(masks), jnp.ones((1, 2), bool))
  optimizer = nnx.Optimizer(model, optax.sgd(0.01, momentum=0.9), wrt=trainable_filter(cfg))
  key = jax.random.key(0)

  @nnx.jit
  def step(model, optimizer):
    def total(model):
      losses = model.losses(images, image_hw, gt, key)
      return sum(losses.values()), losses
    (loss, losses), grads = nnx.value_and_grad(total, argnums=nnx.DiffState(0, trainable_filter(cfg)),
                                               has_aux=True)(model)
    optimizer.update(model, grads)
    return loss, losses

  first, losses = step(model, optimizer)
  assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"}
  for _ in range(4):
    last, _ = step(model, optimizer)
  assert np.isfinite(float(last)) and float(last) < float(first)


@pytest.fixture(scope="module", params=["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"])
def parity(request):
  pytest.importorskip("torch")
  from maskprop_jax.convert import parity as parity_lib

  torch_model = parity_lib.random_torchvision_model(request.param, seed=0, min_size=160, max_size=256, tiny=True)
  image, boxes, masks, labels = parity_lib.synthetic_scene(0, (120, 160))
  with tempfile.TemporaryDirectory() as workdir:
    model, cfg = parity_lib.convert_via_checkpoint(torch_model, workdir)
  cfg.input.min_size, cfg.input.max_size = 160, 256
  inference = parity_lib.compare_inference(torch_model, model, cfg, image)
  training = parity_lib.compare_training(torch_model, model, cfg, image, boxes, masks, labels)
  return inference, training


@pytest.mark.slow
def test_converted_torchvision_inference_agrees(parity):
  inference, _ = parity
  for level in range(5):
    assert inference[f"fpn_level{level}_rel_err"] < 1e-4
  assert inference["rpn_top_count_ours"] == inference["rpn_top_count_ref"] == 100
  assert inference["rpn_top100_min_iou"] >= 0.999
  assert inference["detections_ours"] == inference["detections_ref"] > 20
  assert inference["top20_det_label_mismatch"] == 0
  assert inference["top20_det_box_iou"] >= 0.999
  assert inference["top20_det_score_diff"] <= 1e-4
  assert inference["top20_det_mask_iou"] >= 0.99


@pytest.mark.slow
def test_converted_torchvision_training_losses_agree(parity):
  _, training = parity
  for name in ("loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_mask"):
    assert training[f"{name}_torch"] > 0
    assert training[f"{name}_abs_diff"] <= 1e-4
