"""Deformable convolution (sampling + GEMM) kernels: XLA, Pallas GPU, Pallas TPU.

Import as maskprop_jax.kernels. Every impl checks its arguments with kernels.geometry.ConvGeometry.
"""

from .deform_conv import IMPLS, deform_conv2d, masked_deform_conv2d, resolve_impl

__all__ = ["IMPLS", "deform_conv2d", "masked_deform_conv2d", "resolve_impl"]
