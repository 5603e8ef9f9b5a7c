"""Test helper: copy a torchvision head's weights into the matching NNX module (paths are the state-dict keys)."""

import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

_BATCH_NORM_NAMES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def _layout(module: torch.nn.Module, name: str, value: np.ndarray, chw: tuple[int, int, int] | None) -> np.ndarray:
  if isinstance(module, torch.nn.ConvTranspose2d) and name == "weight":
    return value.transpose(2, 3, 1, 0)  # (in, out, kh, kw) -> (kh, kw, out, in)
  if isinstance(module, torch.nn.Conv2d) and name == "weight":
    return value.transpose(2, 3, 1, 0)  # (out, in, kh, kw) -> (kh, kw, in, out)
  if isinstance(module, torch.nn.Linear) and name == "weight":
    if chw is not None and value.shape[1] == chw[0] * chw[1] * chw[2]:
      # torchvision flattens RoI features as (C, H, W); ours are NHWC, flattened as (H, W, C).
      value = value.reshape(value.shape[0], *chw).transpose(0, 2, 3, 1).reshape(value.shape[0], -1)
    return value.T
  return value


def copy_torch_params(target: nnx.Module, source: torch.nn.Module, chw: tuple[int, int, int] | None = None):
  """Copies every parameter and buffer of `source` into `target` (num_batches_tracked skipped)."""
  modules = dict(source.named_modules())
  for key, tensor in source.state_dict().items():
    owner, _, name = key.rpartition(".")
    if name == "num_batches_tracked":
      continue
    module = modules[owner]
    if isinstance(module, torch.nn.BatchNorm2d):
      name = _BATCH_NORM_NAMES[name]
    elif name == "weight":
      name = "kernel"
    node = target
    for part in owner.split(".") if owner else []:
      node = node[int(part)] if part.isdigit() else getattr(node, part)
    variable = getattr(node, name)
    value = _layout(module, key.rpartition(".")[2], tensor.detach().numpy(), chw)
    assert variable.shape == value.shape, (key, variable.shape, value.shape)
    variable[...] = jnp.asarray(value)


def randomize_batch_norm_stats(module: torch.nn.Module, seed: int = 0):
  """Random running statistics and affine parameters, so that eval-mode BN is not the identity."""
  generator = torch.Generator().manual_seed(seed)
  for m in module.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      with torch.no_grad():
        m.running_mean.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
        m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
        m.weight.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
        m.bias.copy_(torch.randn(m.num_features, generator=generator) * 0.1)
