"""RPN: head, proposal selection and losses; golden values and parity with torchvision's RegionProposalNetwork."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskprop_jax.model import rpn
from maskprop_jax.model.anchors import AnchorGenerator

CHANNELS = 8
SIZES = ((16,), (32,), (64,))
RATIOS = ((0.5, 1.0, 2.0),) * 3
IMAGE_SIZE = (64, 96)  # padded batch
IMAGE_HW = np.array([[60, 90], [64, 70]], np.int32)
FEATURE_SIZES = [(16, 24), (8, 12), (4, 6)]
SETTINGS = dict(
    pre_nms_top_n_train=100, pre_nms_top_n_test=50, post_nms_top_n_train=80, post_nms_top_n_test=40,
    nms_thresh=0.7, fg_iou_thresh=0.7, bg_iou_thresh=0.3, batch_size_per_image=64, positive_fraction=0.5,
)
GT_BOXES = np.array(
    [[[5, 6, 30, 40], [40, 10, 88, 50], [0, 0, 0, 0]], [[10, 10, 20, 22], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32
)
GT_VALID = np.array([[True, True, False], [True, False, False]])


def _features(seed=0):
  rng = np.random.default_rng(seed)
  return [rng.normal(size=(2, h, w, CHANNELS)).astype(np.float32) for h, w in FEATURE_SIZES]


def _build(conv_depth=1, seed=0):
  model = rpn.RegionProposalNetwork(
      CHANNELS, AnchorGenerator(SIZES, RATIOS), conv_depth=conv_depth, rngs=nnx.Rngs(seed), **SETTINGS
  )
  # Larger weights than the default 0.01 spread the logits, so that top-k cuts are far from rounding noise.
  rng = np.random.default_rng(seed + 1)
  for conv in [block[0] for block in model.head.conv] + [model.head.cls_logits, model.head.bbox_pred]:
    scale = 0.05 if conv is model.head.bbox_pred else 0.3
    conv.kernel[...] = jnp.asarray(rng.normal(0, scale, conv.kernel[...].shape), jnp.float32)
    conv.bias[...] = jnp.asarray(rng.normal(0, scale, conv.bias[...].shape), jnp.float32)
  return model


@nnx.jit(static_argnames=("training",))
def _run(model, features, image_hw, gt_boxes, gt_valid, key, sample, training):
  return model(features, image_hw, IMAGE_SIZE, training=training, gt_boxes=gt_boxes, gt_valid=gt_valid, key=key,
               sample=sample)


def test_head_shapes_and_flatten_order():
  model = _build()
  logits, deltas = model.head(_features())
  assert [x.shape for x in logits] == [(2, h, w, 3) for h, w in FEATURE_SIZES]
  assert [x.shape for x in deltas] == [(2, h, w, 12) for h, w in FEATURE_SIZES]
  objectness, flat_deltas = rpn.flatten_levels(logits, deltas)
  assert objectness.shape == (2, 1512) and flat_deltas.shape == (2, 1512, 4)
  # Anchor index 3 * (y * 24 + x) + a of level 0 is location (y, x), anchor a.
  np.testing.assert_array_equal(objectness[:, 3 * (2 * 24 + 5) + 1], logits[0][:, 2, 5, 1])
  np.testing.assert_array_equal(flat_deltas[:, 3 * 24 + 2], deltas[0][:, 1, 0, 8:12])


def test_losses_golden():
  objectness = jnp.array([[0.0, 2.0, -1.0]])
  labels = jnp.array([[1.0, 0.0, -1.0]])
  deltas = jnp.array([[[0.05, 0.5, 0.0, 0.0], [9.0, 9.0, 9.0, 9.0], [9.0, 9.0, 9.0, 9.0]]])
  targets = jnp.zeros((1, 3, 4))
  losses = rpn.rpn_losses(objectness, deltas, labels, targets, jnp.array([[True, False, False]]),
                          jnp.array([[False, True, False]]))
  # smooth-L1(0.05) = 0.5 * 0.05^2 * 9, smooth-L1(0.5) = 0.5 - 1/18; over 2 sampled anchors.
  np.testing.assert_allclose(losses["loss_rpn_box_reg"], (0.01125 + 0.5 - 1 / 18) / 2, rtol=1e-6)
  np.testing.assert_allclose(losses["loss_objectness"], (np.log(2) + 2 + np.log1p(np.exp(-2))) / 2, rtol=1e-6)


def test_assign_targets_background_image_and_padding():
  anchors = jnp.array([[0, 0, 10, 10], [0, 0, 10, 12], [50, 50, 60, 60], [0, 0, 20, 20]], jnp.float32)
  gt = jnp.array([[[0, 0, 10, 11], [0, 0, 0, 0]], [[0, 0, 10, 11], [0, 0, 0, 0]]], jnp.float32)
  labels, targets = rpn.assign_targets(anchors, gt, jnp.array([[True, False], [False, False]]), 0.7, 0.3)
  # IoUs with the gt: 10/11, 10/12 (positives), 0 (background), 110/400 (below 0.3: background).
  np.testing.assert_array_equal(labels, [[1, 1, 0, 0], [0, 0, 0, 0]])
  np.testing.assert_allclose(targets[0, 1], [0, -1 / 24, 0, np.log(11 / 12)], rtol=1e-5, atol=1e-7)
  assert np.all(np.isfinite(targets)) and np.all(targets[:, 2:] == 0)


def test_training_outputs_and_gradients():
  model = _build()
  features = [jnp.asarray(f) for f in _features()]

  @nnx.jit
  @nnx.value_and_grad(has_aux=True)
  def total_loss(model, key):
    proposals, losses = model(features, IMAGE_HW, IMAGE_SIZE, training=True, gt_boxes=GT_BOXES, gt_valid=GT_VALID,
                              key=key)
    return sum(losses.values()), (proposals, losses)

  (_, (proposals, losses)), grads = total_loss(model, jax.random.key(0))
  assert proposals.boxes.shape == (2, 80, 4) and proposals.valid.shape == (2, 80)
  assert np.all(np.asarray(proposals.valid).sum(1) > 10)
  assert all(np.isfinite(float(v)) and float(v) > 0 for v in losses.values())
  norms = [float(jnp.linalg.norm(g)) for g in jax.tree.leaves(grads)]
  assert all(np.isfinite(norms)) and min(norms) > 0


def _torch_conv(conv, torch):
  kernel = torch.from_numpy(np.asarray(conv.kernel[...]).transpose(3, 2, 0, 1).copy())
  return kernel, torch.from_numpy(np.asarray(conv.bias[...]).copy())


def _torchvision_rpn(model, conv_depth, torch):
  rpn_module = pytest.importorskip("torchvision.models.detection.rpn")
  head = rpn_module.RPNHead(CHANNELS, 3, conv_depth=conv_depth)
  with torch.no_grad():
    convs = [(head.conv[i][0], model.head.conv[i][0]) for i in range(conv_depth)]
    for theirs, ours in convs + [(head.cls_logits, model.head.cls_logits), (head.bbox_pred, model.head.bbox_pred)]:
      theirs.weight[...], theirs.bias[...] = _torch_conv(ours, torch)
  settings = {k: v for k, v in SETTINGS.items() if "top_n" not in k}
  return rpn_module.RegionProposalNetwork(
      rpn_module.AnchorGenerator(SIZES, RATIOS), head,
      pre_nms_top_n=dict(training=SETTINGS["pre_nms_top_n_train"], testing=SETTINGS["pre_nms_top_n_test"]),
      post_nms_top_n=dict(training=SETTINGS["post_nms_top_n_train"], testing=SETTINGS["post_nms_top_n_test"]),
      **settings,
  )


@pytest.mark.parametrize("conv_depth", [1, 2])
def test_parity_with_torchvision_rpn(conv_depth):
  torch = pytest.importorskip("torch")
  image_list = pytest.importorskip("torchvision.models.detection.image_list")
  model = _build(conv_depth)
  tv_rpn = _torchvision_rpn(model, conv_depth, torch)
  features = _features()
  images = image_list.ImageList(torch.zeros(2, 3, *IMAGE_SIZE), [tuple(int(v) for v in hw) for hw in IMAGE_HW])
  tv_features = {str(i): torch.from_numpy(f.transpose(0, 3, 1, 2).copy()) for i, f in enumerate(features)}
  features = [jnp.asarray(f) for f in features]

  tv_rpn.eval()
  with torch.no_grad():
    expected, _ = tv_rpn(images, tv_features)
  proposals, _ = _run(model, features, IMAGE_HW, None, None, None, None, False)
  for b in range(2):
    valid = np.asarray(proposals.valid[b])
    assert valid.sum() == len(expected[b])
    np.testing.assert_allclose(proposals.boxes[b][valid], expected[b].numpy(), rtol=1e-5, atol=1e-4)
  if conv_depth > 1:
    return  # the training path does not depend on the head's depth: one compilation of it is enough

  # Training: same proposals and, with torchvision's sampled anchors injected, the same losses.
  tv_rpn.train()
  recorded = []
  draw = tv_rpn.fg_bg_sampler

  def recording_sampler(labels):
    pos, neg = draw(labels)
    recorded.append((torch.stack(pos).bool().numpy(), torch.stack(neg).bool().numpy()))
    return pos, neg

  tv_rpn.fg_bg_sampler = recording_sampler
  targets = [{"boxes": torch.from_numpy(GT_BOXES[b][GT_VALID[b]])} for b in range(2)]
  torch.manual_seed(0)
  with torch.no_grad():
    expected, tv_losses = tv_rpn(images, tv_features, targets)
  sample = rpn.AnchorSample(*recorded[0])
  proposals, losses = _run(model, features, IMAGE_HW, GT_BOXES, GT_VALID, None, sample, True)
  for b in range(2):
    valid = np.asarray(proposals.valid[b])
    np.testing.assert_allclose(proposals.boxes[b][valid], expected[b].numpy(), rtol=1e-5, atol=1e-4)
  for name, value in tv_losses.items():
    np.testing.assert_allclose(losses[name], value.item(), rtol=1e-5, atol=1e-7, err_msg=name)


def test_select_proposals_parity_with_torchvision_filter():
  torch = pytest.importorskip("torch")
  rng = np.random.default_rng(5)
  level_counts = (2400, 900, 300)
  num = sum(level_counts)
  xy = rng.uniform(-30, 330, (2, num, 2))
  proposals = np.concatenate([xy, xy + rng.uniform(0, 90, (2, num, 2))], -1).astype(np.float32)
  proposals[:, ::50, 2] = proposals[:, ::50, 0]  # zero-width boxes are dropped
  # Logits of moderate size: saturated sigmoids would tie, and torchvision orders tied scores arbitrarily here.
  objectness = rng.normal(0, 1, (2, num)).astype(np.float32)
  image_hw = np.array([[300, 320], [256, 300]], np.int32)
  settings = dict(nms_thresh=0.7, score_thresh=0.05, min_size=1e-3)
  # 2200 boxes reach NMS: torchvision takes its per-category (not coordinate-trick) path.
  tv_rpn = _torchvision_rpn(_build(), 1, torch)
  tv_rpn._pre_nms_top_n, tv_rpn._post_nms_top_n = dict(testing=1000), dict(testing=1000)
  tv_rpn.score_thresh = settings["score_thresh"]
  tv_rpn.eval()
  expected_boxes, expected_scores = tv_rpn.filter_proposals(
      torch.from_numpy(proposals), torch.from_numpy(objectness), [tuple(hw) for hw in image_hw.tolist()],
      list(level_counts))
  got = rpn.select_proposals(jnp.asarray(proposals), jnp.asarray(objectness), image_hw, level_counts,
                             pre_nms_top_n=1000, post_nms_top_n=1000, **settings)
  assert got.boxes.shape == (2, 1000, 4)
  for b in range(2):
    valid = np.asarray(got.valid[b])
    assert len(np.unique(expected_scores[b].numpy())) == len(expected_scores[b])
    np.testing.assert_array_equal(got.boxes[b][valid], expected_boxes[b].numpy())
    # XLA's and torch's sigmoid may differ in the last bit.
    np.testing.assert_allclose(got.scores[b][valid], expected_scores[b].numpy(), rtol=2e-7)
    assert not np.any(got.boxes[b][~valid])
