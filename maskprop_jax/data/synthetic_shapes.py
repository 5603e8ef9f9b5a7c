"""Appearance of the synthetic data set: the shape categories (outline, colour, texture) and the backgrounds.

Every category differs from the others in outline, colour AND texture, so a model can learn the class from any
of them. Shapes and textures are defined in the object's own frame: (u, v) are pixel offsets from the object
centre, rotated with the object and divided by its radius, so every outline fits in the unit disc and the
texture moves, turns and scales with the object.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

ObjectFunction = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (u, v) [h, w] each -> bool [h, w]


def _disc(u, v):
  return u * u + v * v <= 1.0


def _square(u, v):
  return np.maximum(np.abs(u), np.abs(v)) <= 0.7  # corners at radius 0.7 * sqrt(2) < 1


def _triangle(u, v):
  # Equilateral, vertices on the unit circle: inside all three half-planes whose edges lie at distance 1/2.
  edge_normals = [(0.0, 1.0), (np.sqrt(3) / 2, -0.5), (-np.sqrt(3) / 2, -0.5)]
  inside = np.ones(u.shape, bool)
  for nx, ny in edge_normals:
    inside &= u * nx + v * ny <= 0.5
  return inside


def _star(u, v):
  angle = np.arctan2(v, u)
  rho = np.sqrt(u * u + v * v)
  return rho <= 0.45 + 0.55 * np.abs(np.cos(2.5 * angle)) ** 2  # five points, sharpened by the square


def _ring(u, v):
  rho2 = u * u + v * v
  return (rho2 <= 1.0) & (rho2 >= 0.5 ** 2)


def _cross(u, v):
  au, av = np.abs(u), np.abs(v)
  return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))


def _stripes(u, v):
  return np.sin(2 * np.pi * 2.5 * u) > 0


def _checker(u, v):
  return (np.floor(u * 2.5) + np.floor(v * 2.5)) % 2 == 0


def _dots(u, v):
  du, dv = (u * 3.0) % 1.0 - 0.5, (v * 3.0) % 1.0 - 0.5
  return du * du + dv * dv < 0.09


def _diagonal_stripes(u, v):
  return np.sin(2 * np.pi * 2.0 * (u + v)) > 0


def _spokes(u, v):
  return np.sin(8 * np.arctan2(v, u)) > 0


def _grid(u, v):
  return ((u * 3.0) % 1.0 < 0.3) | ((v * 3.0) % 1.0 < 0.3)


@dataclasses.dataclass(frozen=True)
class ShapeCategory:
  name: str
  outline: ObjectFunction
  texture: ObjectFunction  # True -> base colour, False -> second colour
  colour: tuple[int, int, int]
  second_colour: tuple[int, int, int]
  solid_core: float  # radius of the largest centred disc inside the outline (0 if the outline has a hole)


# Category id i + 1 is CATEGORIES[i]; their order is part of the data set format, so only append.
CATEGORIES: tuple[ShapeCategory, ...] = (
    ShapeCategory("disc", _disc, _stripes, (220, 40, 40), (110, 10, 20), solid_core=1.0),
    ShapeCategory("square", _square, _checker, (40, 90, 230), (200, 215, 255), solid_core=0.7),
    ShapeCategory("triangle", _triangle, _dots, (40, 185, 60), (10, 70, 20), solid_core=0.5),
    ShapeCategory("star", _star, _diagonal_stripes, (245, 205, 30), (140, 90, 0), solid_core=0.45),
    ShapeCategory("ring", _ring, _spokes, (200, 50, 200), (255, 190, 255), solid_core=0.0),
    ShapeCategory("cross", _cross, _grid, (250, 130, 20), (60, 30, 0), solid_core=0.3),
)
SUPERCATEGORY = "shape"


def object_coordinates(ys: np.ndarray, xs: np.ndarray, centre: tuple[float, float], radius: float,
                       angle: float) -> tuple[np.ndarray, np.ndarray]:
  """Pixel centres (ys [h, 1], xs [1, w]) -> the object's rotated unit coordinates (u, v), [h, w] each."""
  dy, dx = ys + 0.5 - centre[1], xs + 0.5 - centre[0]
  cos, sin = np.cos(angle), np.sin(angle)
  return (cos * dx + sin * dy) / radius, (-sin * dx + cos * dy) / radius


def paint_colours(category: ShapeCategory, u: np.ndarray, v: np.ndarray, brightness: float) -> np.ndarray:
  """The object's textured colours, float32 [h, w, 3] in 0..255."""
  pattern = category.texture(u, v)[..., None]  # [h, w, 1]
  colours = np.where(pattern, np.float32(category.colour), np.float32(category.second_colour))
  return np.clip(colours * brightness, 0, 255).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, height: int, width: int, cells: int) -> np.ndarray:
  """Value noise: a coarse random grid upsampled bilinearly, float32 [height, width] in 0..1."""
  grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
  gy = np.linspace(0, cells, height, dtype=np.float32)
  gx = np.linspace(0, cells, width, dtype=np.float32)
  y0, x0 = np.minimum(gy.astype(int), cells - 1), np.minimum(gx.astype(int), cells - 1)
  fy, fx = (gy - y0)[:, None], (gx - x0)[None, :]
  top = grid[y0][:, x0] * (1 - fx) + grid[y0][:, x0 + 1] * fx
  bottom = grid[y0 + 1][:, x0] * (1 - fx) + grid[y0 + 1][:, x0 + 1] * fx
  return top * (1 - fy) + bottom * fy


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
  """A random colour pulled towards grey, so the saturated object colours stay the most salient."""
  grey = rng.uniform(40, 210)
  return (grey + (rng.uniform(0, 255, 3) - grey) * rng.uniform(0.2, 0.6)).astype(np.float32)


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """A textured background canvas, float32 [height, width, 3] in 0..255: noise, gradient or pattern."""
  low, high = _muted_colour(rng), _muted_colour(rng)
  kind = rng.integers(3)
  if kind == 0:
    weight = _smooth_noise(rng, height, width, cells=int(rng.integers(3, 10)))
  elif kind == 1:
    angle = rng.uniform(0, 2 * np.pi)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    ramp = np.cos(angle) * xs / width + np.sin(angle) * ys / height
    weight = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
  else:
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 24)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    along = (np.cos(angle) * xs + np.sin(angle) * ys) / period
    across = (-np.sin(angle) * xs + np.cos(angle) * ys) / period
    weight = 0.5 + 0.35 * np.sin(2 * np.pi * along) * np.sin(2 * np.pi * across * rng.uniform(0, 1.5))
  weight = weight[..., None]  # [H, W, 1]
  canvas = low * (1 - weight) + high * weight
  grain = rng.normal(0, rng.uniform(2, 10), (height, width, 1)).astype(np.float32)  # film-grain-like detail
  return np.clip(canvas + grain, 0, 255).astype(np.float32)
