"""Deformable convolution (sampling + GEMM) kernels: XLA, Pallas GPU, Pallas TPU, and the projected XLA form
(kernels.projected, impl="xla_projected": GEMM once per frame, then a gather per instance).

Import as maskprop_jax.kernels. Every impl checks its arguments with kernels.geometry.ConvGeometry.
"""

from .deform_conv import IMPLS, deform_conv2d, masked_deform_conv2d, resolve_impl

__all__ = ["IMPLS", "deform_conv2d", "masked_deform_conv2d", "resolve_impl"]
