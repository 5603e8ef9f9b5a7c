"""Box heads and predictor against torchvision's, with copied weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskprop_jax.model import box_head


def test_shapes_and_parameter_paths():
  head = box_head.FastRCNNConvFCHead((4, 7, 7), [8, 8], [16], rngs=nnx.Rngs(0))
  paths = {tuple(p) for p, _ in nnx.to_flat_state(nnx.state(head, nnx.Param))}
  assert (0, 0, "kernel") in paths and (1, 1, "scale") in paths and (3, "kernel") in paths
  assert (0, 0, "bias") not in paths  # conv before BN has no bias, as in torchvision
  head.eval()
  out = head(jnp.ones((3, 7, 7, 4)))
  assert out.shape == (3, 16)
  logits, deltas = box_head.FastRCNNPredictor(16, 5, rngs=nnx.Rngs(1))(out)
  assert logits.shape == (3, 5) and deltas.shape == (3, 20)


torch = pytest.importorskip("torch")
faster_rcnn = pytest.importorskip("torchvision.models.detection.faster_rcnn")
from torch_head_params import copy_torch_params, randomize_batch_norm_stats  # noqa: E402

CHW = (4, 7, 7)


def _features(num=6, seed=0):
  x = np.random.default_rng(seed).normal(size=(num, 7, 7, CHW[0])).astype(np.float32)
  return x, torch.from_numpy(x).permute(0, 3, 1, 2)


def test_two_mlp_head_and_predictor_match_torchvision():
  torch.manual_seed(0)
  reference_head = faster_rcnn.TwoMLPHead(4 * 7 * 7, 16)
  reference_predictor = faster_rcnn.FastRCNNPredictor(16, 5)
  head = box_head.TwoMLPHead(4 * 7 * 7, 16, rngs=nnx.Rngs(0))
  predictor = box_head.FastRCNNPredictor(16, 5, rngs=nnx.Rngs(0))
  copy_torch_params(head, reference_head, CHW)
  copy_torch_params(predictor, reference_predictor)
  x, x_torch = _features()
  logits, deltas = predictor(head(jnp.asarray(x)))
  expected_logits, expected_deltas = reference_predictor(reference_head(x_torch))
  np.testing.assert_allclose(logits, expected_logits.detach().numpy(), atol=1e-5)
  np.testing.assert_allclose(deltas, expected_deltas.detach().numpy(), atol=1e-5)


@pytest.mark.parametrize("training", [False, True])
def test_conv_fc_head_matches_torchvision(training):
  torch.manual_seed(1)
  reference = faster_rcnn.FastRCNNConvFCHead(CHW, [8, 8], [16], norm_layer=torch.nn.BatchNorm2d)
  randomize_batch_norm_stats(reference)
  head = box_head.FastRCNNConvFCHead(CHW, [8, 8], [16], rngs=nnx.Rngs(0))
  copy_torch_params(head, reference, (8, 7, 7))  # the Linear sees the last conv block's 8 channels
  x, x_torch = _features()
  # Two padding rows with garbage values: in training they must not touch the batch statistics.
  padded = np.concatenate([x, np.full((2, 7, 7, CHW[0]), 50.0, np.float32)])
  valid = jnp.arange(len(padded)) < len(x)
  reference.train(training)
  head.train() if training else head.eval()
  out = head(jnp.asarray(padded), valid)[: len(x)]
  np.testing.assert_allclose(out, reference(x_torch).detach().numpy(), atol=1e-4, rtol=1e-4)
  if training:  # running statistics moved the same way as torch's (torch's unbiased variance aside)
    np.testing.assert_allclose(head[0][1].mean[...], reference[0][1].running_mean.numpy(), atol=1e-5)
