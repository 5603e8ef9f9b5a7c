"""FPN: nearest upsampling, the P6 level, and parity with torchvision's BackboneWithFPN (v1 and v2 norms)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskprop_jax.convert.params_io import merge_pure_dict
from maskprop_jax.convert.torchvision import state_dict_to_params
from maskprop_jax.model.fpn import BackboneWithFPN, FeaturePyramidNetwork, resize_nearest
from maskprop_jax.model.resnet import ResNetSpec


def test_resize_nearest_matches_torch_rule():
  x = jnp.arange(3.0).reshape(1, 1, 3, 1)
  # out 7 from in 3: floor(d * 3 / 7) = 0 0 0 1 1 2 2
  np.testing.assert_array_equal(resize_nearest(x, (1, 7))[0, 0, :, 0], [0, 0, 0, 1, 1, 2, 2])


def test_pyramid_shapes_and_max_pool_level():
  fpn = FeaturePyramidNetwork((4, 8), 6, rngs=nnx.Rngs(0))
  c2, c3 = jnp.ones((2, 8, 10, 4)), jnp.ones((2, 4, 5, 8))
  p2, p3, p6 = fpn([c2, c3])
  assert p2.shape == (2, 8, 10, 6) and p3.shape == (2, 4, 5, 6) and p6.shape == (2, 2, 3, 6)
  np.testing.assert_array_equal(p6, p3[:, ::2, ::2])


def test_norm_variant_has_no_conv_bias():
  fpn = nnx.eval_shape(lambda: FeaturePyramidNetwork((4,), 6, with_norm=True, rngs=nnx.Rngs(0)))
  assert fpn.inner_blocks[0][0].bias is None and fpn.inner_blocks[0][1].weight.shape == (6,)


@jax.jit
def _forward(model, images):
  return model(images)


@pytest.mark.parametrize("fpn_norm", [False, True])
def test_matches_torchvision_backbone_with_fpn(fpn_norm):
  torch = pytest.importorskip("torch")
  from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
  from torchvision.models.resnet import Bottleneck as TorchBottleneck, ResNet as TorchResNet

  torch.manual_seed(1)
  body = TorchResNet(TorchBottleneck, [1, 1, 1, 1])
  net = _resnet_fpn_extractor(body, 5, norm_layer=torch.nn.BatchNorm2d if fpn_norm else None).eval()
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 1.5)
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
  state = {k: v.numpy() for k, v in net.state_dict().items()}
  spec = ResNetSpec(stage_blocks=(1, 1, 1, 1))
  abstract = nnx.eval_shape(lambda: BackboneWithFPN(spec, fpn_norm=fpn_norm, rngs=nnx.Rngs(0)))
  model = merge_pure_dict(abstract, state_dict_to_params(state, abstract, source="test"))

  # 80 x 112 is not a multiple of 32: the top-down path has to upsample 3 -> 5 and 2 -> 3 like torch.
  images = np.random.default_rng(0).standard_normal((1, 3, 80, 112)).astype(np.float32)
  with torch.no_grad():
    expected = [v.numpy().transpose(0, 2, 3, 1) for v in net(torch.from_numpy(images)).values()]
  got = _forward(model, jnp.asarray(images.transpose(0, 2, 3, 1)))
  assert len(got) == len(expected) == 5
  for e, g in zip(expected, got):
    assert e.shape == g.shape
    np.testing.assert_allclose(g, e, rtol=0, atol=1e-4 * np.abs(e).max())
