"""resolution_cap: ground truth through a config's mask representation, scored; exact where the representation is
the identity, lossy where it is coarse or (torchvision's) misaligned."""

import json

import numpy as np
import pytest

from maskprop_jax import rle
from maskprop_jax.inference import resolution_cap
from tiny_maskprop import tiny_config

HEIGHT, WIDTH = 32, 48


def _shapes(frame: int) -> list[np.ndarray]:
  """Two small objects moving a pixel per frame: a disc (52 pixels) and a triangle (60)."""
  yy, xx = np.mgrid[:HEIGHT, :WIDTH] + 0.5
  disc = (yy - 10.3) ** 2 + (xx - 12.6 - frame) ** 2 <= 4.1 ** 2
  dy = yy - 20.2
  triangle = (dy >= -5) & (dy <= 5) & (np.abs(xx - 33.4 + frame) <= (dy + 5) / 1.6)
  return [disc, triangle]


@pytest.fixture(scope="module")
def annotations():
  frames = [_shapes(f) for f in range(3)]
  return dict(
      videos=[dict(id=1, width=WIDTH, height=HEIGHT, length=3, file_names=[f"v/{f:05d}.jpg" for f in range(3)])],
      categories=[dict(id=1, name="disc"), dict(id=2, name="triangle")],
      annotations=[dict(id=k + 1, video_id=1, category_id=k + 1, iscrowd=0,
                        segmentations=[rle.encode(frames[f][k].astype(np.uint8)) for f in range(3)])
                   for k in range(2)])


def _config(mask_stride: int, aligned: bool):
  config = tiny_config(frame_hw=(HEIGHT, WIDTH))  # frames enter the network at their own size
  config.model.propagation.update(dict(level=0, upsample=4 // mask_stride))  # P2: stride 4 / upsample
  config.model.detector.roi_heads.aligned = aligned
  return config


def test_the_identity_representation_keeps_ground_truth_exactly(annotations):
  report = resolution_cap.measure(_config(mask_stride=1, aligned=True), annotations)
  assert report["grid"]["stats"]["AP"] == pytest.approx(1.0)
  assert report["grid"]["iou_by_size"]["<100"] == 1.0
  # Aligned targets pasted back are the masks again, to within the 28x28 grid.
  assert report["center"]["iou_by_size"]["<100"] > 0.97


def test_coarse_grids_and_torchvision_geometry_lose_small_objects(annotations):
  coarse = resolution_cap.measure(_config(mask_stride=4, aligned=True), annotations)
  torchvision = resolution_cap.measure(_config(mask_stride=1, aligned=False), annotations)
  assert coarse["grid"]["iou_by_size"]["<100"] < 0.95
  assert torchvision["grid"]["iou_by_size"]["<100"] == 1.0  # the grid path has no box
  assert torchvision["center"]["iou_by_size"]["<100"] < 0.9
  assert coarse["grid"]["stats"]["AP75"] <= 1.0 and torchvision["center"]["stats"]["AP"] < 1.0
  assert set(coarse["grid"]["stats"]) >= {"AP", "AP50", "AP75", "AR1", "AR100"}
  assert coarse["grid"]["iou_by_size"]["400-1600"] is None  # no object of that size


def test_refined_windows_pasted_at_the_video_size_keep_what_a_coarse_grid_loses(annotations):
  config = _config(mask_stride=4, aligned=True)
  config.model.propagation.refine_layers = (4,)
  refined = resolution_cap.measure(config, annotations)
  config.inference.full_resolution_masks = False
  through_grid = resolution_cap.measure(config, annotations)
  # Without full-resolution masks every path is the grid's (the center mask pasted, then pooled onto it).
  assert through_grid["propagated"]["iou_by_size"] == through_grid["grid"]["iou_by_size"]
  assert through_grid["linked"]["iou_by_size"]["<100"] < 0.95
  # The refiner's 28x28 windows and Mask R-CNN's boxes are finer than the objects' 52-60 pixels.
  assert refined["grid"]["iou_by_size"] == through_grid["grid"]["iou_by_size"]
  assert refined["propagated"]["iou_by_size"]["<100"] > 0.97
  assert refined["linked"]["iou_by_size"]["<100"] > 0.97 and refined["linked"]["stats"]["AP"] == pytest.approx(1.0)


def test_cli_prints_every_path_and_writes_json(annotations, tmp_path, capsys, monkeypatch):
  path = tmp_path / "valid.json"
  path.write_text(json.dumps(annotations))
  monkeypatch.setattr(resolution_cap, "_load_config", lambda _: _config(mask_stride=1, aligned=True))
  resolution_cap.main(["--config", "unused.py", "--annotations", str(path), "--json", str(tmp_path / "cap.json")])
  printed = capsys.readouterr().out
  assert "| grid | 1.0000 |" in printed and "| center |" in printed and "| linked |" in printed
  assert json.loads((tmp_path / "cap.json").read_text())["grid"]["stats"]["AP"] == pytest.approx(1.0)
