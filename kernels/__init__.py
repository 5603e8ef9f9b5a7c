"""Deformable convolution (sampling + GEMM) kernels: XLA, Pallas GPU, Pallas TPU."""
