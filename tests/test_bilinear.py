"""The one bilinear rule (torch's align_corners=False), shared by the network's resizing and linking's upsampling."""

import numpy as np

from maskprop_jax.bilinear import bilinear_matrix


def test_bilinear_matrix_uses_half_pixel_centres():
  x = np.arange(4, dtype=np.float32)
  up = bilinear_matrix(4, 8) @ x
  # Output j samples input (j + 0.5) / 2 - 0.5, clamped at the edges.
  np.testing.assert_allclose(up, [0, 0.25, 0.75, 1.25, 1.75, 2.25, 2.75, 3], atol=1e-6)


def test_bilinear_rows_sum_to_one_and_interpolate_halfway():
  m = bilinear_matrix(2, 4)  # src = (d + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25
  np.testing.assert_allclose(m, [[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
  np.testing.assert_allclose(bilinear_matrix(37, 11).sum(axis=1), 1.0, rtol=1e-6)
