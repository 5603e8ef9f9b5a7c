"""RoI heads: sampling and losses by hand, and parity with torchvision's RoIHeads (training and inference)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskprop_jax.model import mask_head, roi_heads, roi_targets
from maskprop_jax.model.config import mask_rcnn_config

CHANNELS, NUM_CLASSES = 8, 5
INPUT_HW = (128, 160)  # padded network input; FPN strides 4..32
IMAGE_HW = np.array([[120, 150], [128, 160]], np.int32)  # images before padding


@nnx.jit(static_argnames="input_hw")
def _losses(model, features, proposals, proposal_valid, gt_boxes, gt_labels, gt_masks, gt_valid, image_hw, input_hw,
            key, sampled_index=None, sampled_valid=None):
  return model.losses(features, proposals, proposal_valid, gt_boxes, gt_labels, gt_masks, gt_valid, image_hw,
                      input_hw, key, sampled_index, sampled_valid)


@nnx.jit(static_argnames="input_hw")
def _detect(model, features, proposals, proposal_valid, image_hw, input_hw):
  return model.detect(features, proposals, proposal_valid, image_hw, input_hw)


def _config(variant):
  cfg = mask_rcnn_config(variant).roi_heads
  cfg.box_fc_dim = 32
  cfg.mask_layers = (CHANNELS, CHANNELS)
  if cfg.box_head == "conv_fc":
    cfg.box_conv_layers = (CHANNELS, CHANNELS)
  return cfg


def _scene(seed=0):
  """Features, proposals (ragged: 40 and 25) and targets (3 and 2 instances) for two images."""
  rng = np.random.default_rng(seed)
  features = [rng.normal(size=(2, INPUT_HW[0] // s, INPUT_HW[1] // s, CHANNELS)).astype(np.float32)
              for s in (4, 8, 16, 32)]
  gt_boxes = np.zeros((2, 3, 4), np.float32)
  gt_labels = np.zeros((2, 3), np.int32)
  gt_masks = np.zeros((2, 3, *INPUT_HW), np.uint8)
  counts = (3, 2)
  for b, count in enumerate(counts):
    h, w = IMAGE_HW[b]
    for g in range(count):
      x0, y0 = rng.uniform(0, w - 40), rng.uniform(0, h - 40)
      x1, y1 = x0 + rng.uniform(20, 40), y0 + rng.uniform(20, 40)
      gt_boxes[b, g] = [x0, y0, x1, y1]
      gt_labels[b, g] = rng.integers(1, NUM_CLASSES)
      yy, xx = np.mgrid[:h, :w]
      ellipse = ((xx - (x0 + x1) / 2) / ((x1 - x0) / 2)) ** 2 + ((yy - (y0 + y1) / 2) / ((y1 - y0) / 2)) ** 2 < 1
      gt_masks[b, g, :h, :w] = ellipse
    gt_masks[b, 0, h - 6:h, w - 30:w] = 1  # touches the image's bottom-right edge
  proposals = np.zeros((2, 40, 4), np.float32)
  for b, count in enumerate((40, 25)):
    h, w = IMAGE_HW[b]
    # Jittered copies of the gt boxes (positives) and random boxes (mostly negatives), clipped to the image.
    base = gt_boxes[b, rng.integers(0, counts[b], count)]
    jitter = rng.normal(scale=6.0, size=(count, 4))
    corners = rng.uniform(0, [w, h, w, h], size=(count, 4))
    random_boxes = np.concatenate([np.minimum(corners[:, :2], corners[:, 2:]),
                                   np.maximum(corners[:, :2], corners[:, 2:])], 1)
    boxes = np.where(rng.uniform(size=(count, 1)) < 0.5, base + jitter, random_boxes)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 2)
    proposals[b, :count] = np.clip(boxes, 0, [w, h, w, h])
  proposal_valid = np.arange(40)[None] < np.array([[40], [25]])
  return features, proposals, proposal_valid, gt_boxes, gt_labels, gt_masks, np.arange(3)[None] < np.array([[3], [2]])


def test_sample_rois_counts_and_targets_by_hand():
  proposals = jnp.array([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 9.0], [20.0, 20.0, 30.0, 30.0],
                          [50.0, 50.0, 60.0, 60.0]]])
  gt_boxes = jnp.array([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 0.0]]])
  sample = roi_targets.sample_rois(
      proposals, jnp.array([[True, True, True, False]]), gt_boxes, jnp.array([[3, 0]]), jnp.array([[True, False]]),
      jax.random.key(0), batch_size_per_image=3, positive_fraction=0.5)
  # Candidates: 4 proposals + 2 gt slots; positives: proposals 0, 1 and the appended gt (index 4); negative:
  # proposal 2; proposal 3 and gt slot 5 are padding. At most int(3 * 0.5) = 1 positive, so 1 + 1 are drawn.
  assert sample.valid.tolist() == [[True, True, False]]
  first, second = sample.index[0, :2].tolist()
  assert first < second and 2 in (first, second) and {first, second} - {2} <= {0, 1, 4}
  assert sorted(sample.labels[0, :2].tolist()) == [0, 3]

  # With room for every candidate, all valid ones are taken, in index order, with their targets.
  sample = roi_targets.sample_rois(
      proposals, jnp.array([[True, True, True, False]]), gt_boxes, jnp.array([[3, 0]]), jnp.array([[True, False]]),
      jax.random.key(0), batch_size_per_image=6, positive_fraction=1.0)
  assert sample.index[0, :4].tolist() == [0, 1, 2, 4] and sample.valid.sum() == 4
  assert sample.labels[0].tolist() == [3, 3, 0, 3, 0, 0]
  # Proposal 1 (height 9) regresses onto the gt (height 10): dy = 10 * 0.5 / 9, dh = 5 * log(10 / 9).
  np.testing.assert_allclose(sample.regression_targets[0, 1], [0, 10 * 0.5 / 9, 0, 5 * np.log(10 / 9)], rtol=1e-5)
  np.testing.assert_allclose(sample.regression_targets[0, 2], 0.0)  # background: no target


def test_losses_are_finite_and_differentiable_with_random_sampling():
  cfg = _config("maskrcnn_resnet50_fpn")
  model = roi_heads.RoIHeads(cfg, NUM_CLASSES, CHANNELS, rngs=nnx.Rngs(0))
  features, proposals, proposal_valid, gt_boxes, gt_labels, gt_masks, gt_valid = _scene()

  def total(model):
    losses, sample = model.losses([jnp.asarray(f) for f in features], jnp.asarray(proposals),
                                  jnp.asarray(proposal_valid), jnp.asarray(gt_boxes), jnp.asarray(gt_labels),
                                  jnp.asarray(gt_masks), jnp.asarray(gt_valid), jnp.asarray(IMAGE_HW), INPUT_HW,
                                  jax.random.key(1))
    return sum(losses.values()), (losses, sample)

  grads, (losses, sample) = nnx.jit(nnx.grad(total, has_aux=True))(model)
  # 43 and 27 valid candidates, all sampled (fewer than 512).
  assert sample.valid.sum(1).tolist() == [43, 27]
  assert all(np.isfinite(float(v)) and float(v) > 0 for v in losses.values())
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


def _relative_error(new, old):
  """max |new - old| / max |old| of one array (0 where both are 0)."""
  new, old = np.asarray(new, np.float64), np.asarray(old, np.float64)
  return float(np.max(np.abs(new - old)) / max(np.max(np.abs(old)), 1e-30))


@pytest.mark.parametrize("variant", ["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"])
def test_bucketed_mask_loss_and_gradients_equal_the_computation_on_every_slot(variant, monkeypatch):
  """The mask loss on the smallest bucket of positive slots (im2col convs on the CPU, conv5_mask as an einsum)
  against the computation before either: every one of the 128 slots, conv5_mask as lax.conv_transpose."""
  features, proposals, proposal_valid, gt_boxes, gt_labels, gt_masks, gt_valid = _scene()
  inputs = ([jnp.asarray(f) for f in features], jnp.asarray(proposals), jnp.asarray(proposal_valid),
            jnp.asarray(gt_boxes), jnp.asarray(gt_labels), jnp.asarray(gt_masks), jnp.asarray(gt_valid),
            jnp.asarray(IMAGE_HW))

  def run(buckets):
    cfg = _config(variant)
    cfg.mask_loss_buckets = buckets
    model = roi_heads.RoIHeads(cfg, NUM_CLASSES, CHANNELS, rngs=nnx.Rngs(0))
    model.train()

    def total(model, features):
      losses, sample = model.losses(features, *inputs[1:], INPUT_HW, jax.random.key(1))
      return sum(losses.values()), (losses, sample)

    (_, (losses, sample)), grads = nnx.jit(nnx.value_and_grad(total, argnums=(0, 1), has_aux=True))(
        model, inputs[0])
    return losses, sample, grads, nnx.state(model, nnx.BatchStat)

  new_losses, sample, new_grads, new_stats = run(True)
  with monkeypatch.context() as patch:  # the computation as it was: lax.conv_transpose
    patch.setattr(mask_head.BlockConvTranspose, "__call__", nnx.ConvTranspose.__call__)
    old_losses, _, old_grads, old_stats = run(False)
  positives = int(np.max(np.sum(np.asarray(sample.labels > 0) & np.asarray(sample.valid), 1)))
  assert 8 < positives <= 64  # a bucket of 16..64 of the 128 slots ran
  for name in old_losses:
    np.testing.assert_allclose(new_losses[name], old_losses[name], rtol=1e-5)
  errors = jax.tree.map(_relative_error, new_grads, old_grads)
  assert max(jax.tree.leaves(errors)) < 1e-4, errors
  for new, old in zip(jax.tree.leaves(new_stats), jax.tree.leaves(old_stats)):
    np.testing.assert_allclose(new, old, rtol=1e-5, atol=1e-6)


torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")
from torchvision.models.detection import faster_rcnn, mask_rcnn  # noqa: E402
from torchvision.models.detection import roi_heads as tv_roi_heads  # noqa: E402
from torch_head_params import copy_torch_params, randomize_batch_norm_stats  # noqa: E402


def _torch_heads(variant):
  torch.manual_seed(0)
  pool = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
  mask_pool = torchvision.ops.MultiScaleRoIAlign(["0", "1", "2", "3"], 14, 2)
  if variant == "maskrcnn_resnet50_fpn":
    box_head = faster_rcnn.TwoMLPHead(CHANNELS * 49, 32)
    mask_head = mask_rcnn.MaskRCNNHeads(CHANNELS, [CHANNELS, CHANNELS], 1)
  else:
    box_head = faster_rcnn.FastRCNNConvFCHead((CHANNELS, 7, 7), [CHANNELS, CHANNELS], [32], torch.nn.BatchNorm2d)
    mask_head = mask_rcnn.MaskRCNNHeads(CHANNELS, [CHANNELS, CHANNELS], 1, norm_layer=torch.nn.BatchNorm2d)
  heads = tv_roi_heads.RoIHeads(
      pool, box_head, faster_rcnn.FastRCNNPredictor(32, NUM_CLASSES), 0.5, 0.5, 512, 0.25, None, 0.05, 0.5, 100,
      mask_roi_pool=mask_pool, mask_head=mask_head,
      mask_predictor=mask_rcnn.MaskRCNNPredictor(CHANNELS, CHANNELS, NUM_CLASSES))
  randomize_batch_norm_stats(heads)
  with torch.no_grad():  # spread the class scores so that several classes pass the score threshold
    heads.box_predictor.cls_score.weight.mul_(8.0)
  model = roi_heads.RoIHeads(_config(variant), NUM_CLASSES, CHANNELS, rngs=nnx.Rngs(0))
  copy_torch_params(model, heads, (CHANNELS, 7, 7))
  return heads, model


def _torch_inputs(features, proposals, proposal_valid):
  feats = {str(i): torch.from_numpy(f).permute(0, 3, 1, 2) for i, f in enumerate(features)}
  props = [torch.from_numpy(p[v]) for p, v in zip(proposals, proposal_valid)]
  return feats, props, [tuple(int(v) for v in hw) for hw in IMAGE_HW]


@pytest.mark.parametrize("variant", ["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"])
def test_training_losses_match_torchvision_with_its_sampled_rois(variant):
  heads, model = _torch_heads(variant)
  features, proposals, proposal_valid, gt_boxes, gt_labels, gt_masks, gt_valid = _scene(seed=1)
  feats, props, image_shapes = _torch_inputs(features, proposals, proposal_valid)
  # torchvision's targets: unpadded lists, masks at the image size (before the batch's padding).
  targets = [dict(boxes=torch.from_numpy(gt_boxes[b][gt_valid[b]]),
                  labels=torch.from_numpy(gt_labels[b][gt_valid[b]]).long(),
                  masks=torch.from_numpy(gt_masks[b][gt_valid[b]][:, :IMAGE_HW[b, 0], :IMAGE_HW[b, 1]]))
             for b in range(2)]
  recorded = []
  subsample = heads.subsample
  heads.subsample = lambda labels: recorded.append(subsample(labels)) or recorded[-1]
  heads.train()
  torch.manual_seed(3)
  _, expected = heads(feats, props, image_shapes, targets)

  # torchvision indexes [its proposals; its gt]; ours are [P padded proposals; G padded gt].
  num_proposals = proposal_valid.sum(1)
  sampled = [np.where(i.numpy() < n, i.numpy(), proposals.shape[1] + i.numpy() - n)
             for i, n in zip(recorded[0], num_proposals)]
  slots = max(len(s) for s in sampled)
  sampled_index = np.zeros((2, slots), np.int32)
  sampled_valid = np.zeros((2, slots), bool)
  for b, s in enumerate(sampled):
    sampled_index[b, :len(s)], sampled_valid[b, :len(s)] = s, True

  model.train()
  losses, _ = _losses(model, [jnp.asarray(f) for f in features], jnp.asarray(proposals), jnp.asarray(proposal_valid),
                           jnp.asarray(gt_boxes), jnp.asarray(gt_labels), jnp.asarray(gt_masks), jnp.asarray(gt_valid),
                           jnp.asarray(IMAGE_HW), INPUT_HW, None, jnp.asarray(sampled_index),
                           jnp.asarray(sampled_valid))
  for name in ("loss_classifier", "loss_box_reg", "loss_mask"):
    np.testing.assert_allclose(losses[name], expected[name].item(), rtol=1e-4, atol=1e-6, err_msg=name)


@pytest.mark.parametrize("variant", ["maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2"])
def test_detections_match_torchvision(variant):
  heads, model = _torch_heads(variant)
  features, proposals, proposal_valid, *_ = _scene(seed=2)
  feats, props, image_shapes = _torch_inputs(features, proposals, proposal_valid)
  heads.eval()
  with torch.no_grad():
    expected, _ = heads(feats, props, image_shapes)
  model.eval()
  detections = _detect(model, [jnp.asarray(f) for f in features], jnp.asarray(proposals), jnp.asarray(proposal_valid),
                            jnp.asarray(IMAGE_HW), INPUT_HW)
  for b, reference in enumerate(expected):
    count = len(reference["scores"])
    assert count > 5 and int(detections.valid[b].sum()) == count
    np.testing.assert_allclose(detections.boxes[b, :count], reference["boxes"].numpy(), atol=1e-4)
    np.testing.assert_allclose(detections.scores[b, :count], reference["scores"].numpy(), atol=1e-5)
    np.testing.assert_array_equal(detections.labels[b, :count], reference["labels"].numpy())
    np.testing.assert_allclose(detections.masks[b, :count], reference["masks"][:, 0].numpy(), atol=1e-5)
