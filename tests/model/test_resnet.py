"""ResNet body: frozen batch norm arithmetic, stride placement, and parity with torchvision's ResNet."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskprop_jax.convert.params_io import merge_pure_dict
from maskprop_jax.convert.torchvision import state_dict_to_params
from maskprop_jax.model.resnet import Bottleneck, FrozenBatchNorm, ResNet, ResNetSpec, max_pool_3x3_s2

TINY = ResNetSpec(stage_blocks=(1, 1, 1, 1))


def test_frozen_batch_norm_folds_statistics():
  bn = FrozenBatchNorm(2, eps=0.5)
  bn.weight[...] = jnp.array([2.0, 1.0])
  bn.bias[...] = jnp.array([1.0, 0.0])
  bn.running_mean[...] = jnp.array([1.0, -1.0])
  bn.running_var[...] = jnp.array([3.5, 0.5])
  x = jnp.array([[3.0, 1.0]])
  # (x - mean) / sqrt(var + eps) * w + b = (2 / 2) * 2 + 1, (2 / 1) * 1 + 0
  np.testing.assert_allclose(bn(x), [[3.0, 2.0]], rtol=1e-6)


def test_frozen_batch_norm_variables_are_not_trained_unless_asked():
  assert not nnx.state(FrozenBatchNorm(4), nnx.Param)
  assert set(nnx.state(FrozenBatchNorm(4, trainable_affine=True), nnx.Param).keys()) == {"weight", "bias"}


def test_max_pool_pads_with_minus_infinity():
  x = -jnp.ones((1, 3, 3, 1))
  np.testing.assert_array_equal(max_pool_3x3_s2(x), -np.ones((1, 2, 2, 1)))


@pytest.mark.parametrize("stride_in_1x1, strides", [(False, (1, 2)), (True, (2, 1))])
def test_stride_in_1x1_moves_the_stride(stride_in_1x1, strides):
  spec = ResNetSpec(stride_in_1x1=stride_in_1x1)
  block = nnx.eval_shape(lambda: Bottleneck(256, 128, 2, spec, rngs=nnx.Rngs(0)))
  assert (block.conv1.strides, block.conv2.strides) == strides
  assert block.downsample[0].strides == 2


def test_resnext_grouped_width():
  spec = ResNetSpec(depth=101, groups=32, width_per_group=8)
  block = nnx.eval_shape(lambda: Bottleneck(64, 64, 1, spec, rngs=nnx.Rngs(0)))
  assert block.conv2.kernel.shape == (3, 3, 256 // 32, 256)  # width = 64 * 8 / 64 * 32 = 256


def test_base_width_scales_the_stem_and_every_stage():
  spec = ResNetSpec(stage_blocks=(1, 1, 1, 1), base_width=16)
  assert spec.out_channels == (64, 128, 256, 512)  # 4 * 16 * 2**i
  model = ResNet(spec, rngs=nnx.Rngs(0))
  assert model.conv1.kernel.shape == (7, 7, 3, 16)
  block = model.layer3[0]
  # planes 16 * 4 = 64, width 64 * 64 / 64 = 64; input = layer2's output 4 * 32 = 128
  assert (block.conv1.kernel.shape, block.conv3.kernel.shape) == ((1, 1, 128, 64), (1, 1, 64, 256))
  features = jax.eval_shape(lambda x: model(x), jax.ShapeDtypeStruct((2, 64, 96, 3), jnp.float32))
  assert [f.shape for f in features] == [(2, 16, 24, 64), (2, 8, 12, 128), (2, 4, 6, 256), (2, 2, 3, 512)]


def test_default_base_width_is_torchvisions():
  assert ResNetSpec().out_channels == (256, 512, 1024, 2048)
  with pytest.raises(ValueError, match="base_width"):
    ResNetSpec(base_width=0)


def test_rejects_unknown_depth():
  with pytest.raises(ValueError, match="depth"):
    ResNetSpec(depth=34)


@jax.jit
def _forward(model, images):
  return model(images)


@pytest.mark.parametrize("groups, width, stride_in_1x1", [(1, 64, False), (4, 4, False), (1, 64, True)])
def test_matches_torchvision_resnet(groups, width, stride_in_1x1):
  torch = pytest.importorskip("torch")
  from torchvision.models.resnet import Bottleneck as TorchBottleneck, ResNet as TorchResNet

  torch.manual_seed(0)
  net = TorchResNet(TorchBottleneck, [1, 1, 1, 1], groups=groups, width_per_group=width).eval()
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.BatchNorm2d):
        m.running_mean.uniform_(-0.2, 0.2)
        m.running_var.uniform_(0.5, 1.5)
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.2, 0.2)
  if stride_in_1x1:  # torchvision has no such option: move the strides the way MSRA models place them
    for layer in (net.layer2, net.layer3, net.layer4):
      layer[0].conv1.stride, layer[0].conv2.stride = (2, 2), (1, 1)
  state = {k: v.numpy() for k, v in net.state_dict().items() if not k.startswith("fc.")}
  spec = ResNetSpec(groups=groups, width_per_group=width, stride_in_1x1=stride_in_1x1, stage_blocks=(1, 1, 1, 1))
  abstract = nnx.eval_shape(lambda: ResNet(spec, rngs=nnx.Rngs(0)))
  model = merge_pure_dict(abstract, state_dict_to_params(state, abstract, source="test"))

  images = np.random.default_rng(0).standard_normal((1, 3, 64, 96)).astype(np.float32)
  with torch.no_grad():
    x = torch.from_numpy(images)
    x = net.maxpool(net.relu(net.bn1(net.conv1(x))))
    expected = []
    for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
      x = layer(x)
      expected.append(x.numpy().transpose(0, 2, 3, 1))
  got = _forward(model, jnp.asarray(images.transpose(0, 2, 3, 1)))
  for e, g in zip(expected, got):
    assert e.shape == g.shape
    np.testing.assert_allclose(g, e, rtol=0, atol=1e-4 * np.abs(e).max())
