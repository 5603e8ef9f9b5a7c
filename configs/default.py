"""Defaults shared by every config: `maskprop_jax.default_config.get_config()` (MaskProp R50-FPN on YouTube-VIS
2019, the paper's clip length). The package holds them so that programs run from an installed wheel have them too;
configs/*.py import this module and override what they need."""

from maskprop_jax.default_config import get_config

__all__ = ["get_config"]
