"""Mask heads and predictor against torchvision's, with copied weights."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskprop_jax.model import mask_head


def test_shapes_and_parameter_paths():
  head = mask_head.MaskRCNNHeads(4, (8, 8), rngs=nnx.Rngs(0))
  predictor = mask_head.MaskRCNNPredictor(8, 6, 3, rngs=nnx.Rngs(0))
  paths = {tuple(p) for p, _ in nnx.to_flat_state(nnx.state(head, nnx.Param))}
  assert paths == {(0, 0, "kernel"), (0, 0, "bias"), (1, 0, "kernel"), (1, 0, "bias")}
  logits = predictor(head(jnp.ones((2, 14, 14, 4))))
  assert logits.shape == (2, 28, 28, 3)


def test_batch_of_padding_only_keeps_statistics_and_gradients_finite():
  head = mask_head.MaskRCNNHeads(4, (8,), use_norm=True, rngs=nnx.Rngs(0))
  head.train()
  before = np.asarray(head[0][1].mean[...])

  def loss(head, x):
    valid = jnp.zeros(x.shape[0], bool)
    return jnp.sum(jnp.where(valid[:, None, None, None], head(x, valid), 0.0))

  grads = nnx.grad(loss)(head, jnp.ones((3, 14, 14, 4)))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  np.testing.assert_array_equal(head[0][1].mean[...], before)


torch = pytest.importorskip("torch")
mask_rcnn = pytest.importorskip("torchvision.models.detection.mask_rcnn")
from torch_head_params import copy_torch_params, randomize_batch_norm_stats  # noqa: E402


@pytest.mark.parametrize("use_norm,training", [(False, False), (True, False), (True, True)])
def test_mask_head_and_predictor_match_torchvision(use_norm, training):
  torch.manual_seed(2)
  norm_layer = torch.nn.BatchNorm2d if use_norm else None
  reference_head = mask_rcnn.MaskRCNNHeads(4, [8, 8], 1, norm_layer=norm_layer)
  reference_predictor = mask_rcnn.MaskRCNNPredictor(8, 6, 3)
  randomize_batch_norm_stats(reference_head)
  head = mask_head.MaskRCNNHeads(4, (8, 8), use_norm=use_norm, rngs=nnx.Rngs(0))
  predictor = mask_head.MaskRCNNPredictor(8, 6, 3, rngs=nnx.Rngs(0))
  copy_torch_params(head, reference_head)
  copy_torch_params(predictor, reference_predictor)
  reference_head.train(training)
  head.train() if training else head.eval()

  x = np.random.default_rng(0).normal(size=(5, 14, 14, 4)).astype(np.float32)
  padded = np.concatenate([x, np.full((3, 14, 14, 4), -20.0, np.float32)])
  valid = jnp.arange(len(padded)) < len(x)
  out = predictor(head(jnp.asarray(padded), valid))[: len(x)]
  expected = reference_predictor(reference_head(torch.from_numpy(x).permute(0, 3, 1, 2)))
  np.testing.assert_allclose(out, expected.permute(0, 2, 3, 1).detach().numpy(), atol=1e-4, rtol=1e-4)
