"""Single-image demo: JSON of detections with RLE masks, overlay PNG, and clear errors for bad input."""

import json

import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image
from pycocotools import mask as mask_api

from maskprop_jax.convert import params_io
from maskprop_jax.demo.cli import main
from maskprop_jax.model.config import tiny_mask_rcnn_config
from maskprop_jax.model.mask_rcnn import build_mask_rcnn


@pytest.fixture(scope="module")
def params_dir(tmp_path_factory):
  cfg = tiny_mask_rcnn_config(num_classes=3)
  model = build_mask_rcnn(cfg, nnx.Rngs(jax.random.key(0, impl="rbg")))  # rbg: compiles faster than threefry
  out = tmp_path_factory.mktemp("params")
  params_io.save_params(out, nnx.to_pure_dict(nnx.state(model)), cfg, category_ids=[0, 7, 9],
                        class_names=["__background__", "cat", "dog"])
  return str(out)


def test_image_detections_json_and_overlay(params_dir, tmp_path):
  image = np.zeros((45, 60, 3), np.uint8)
  image[5:30, 10:40] = (250, 200, 10)
  Image.fromarray(image).save(tmp_path / "in.png")
  # A random 3-class model scores ~1/3 per class: a zero threshold keeps every detection.
  main(["--params", params_dir, "--image", str(tmp_path / "in.png"), "--json", str(tmp_path / "out.json"),
        "--score-thresh", "0", "--out", str(tmp_path / "overlay.png")])
  record = json.loads((tmp_path / "out.json").read_text())
  assert (record["height"], record["width"]) == (45, 60)
  assert 0 < len(record["detections"]) <= 10
  scores = [d["score"] for d in record["detections"]]
  assert scores == sorted(scores, reverse=True)
  for det in record["detections"]:
    assert det["category_id"] in (7, 9) and det["category_name"] in ("cat", "dog")
    x0, y0, x1, y1 = det["bbox"]
    assert 0 <= x0 <= x1 <= 60 and 0 <= y0 <= y1 <= 45
    assert mask_api.decode(det["segmentation"]).shape == (45, 60)
  assert np.asarray(Image.open(tmp_path / "overlay.png")).shape == (45, 60, 3)


def test_score_thresh_leaves_out_weaker_detections(params_dir, tmp_path, capsys):
  image = np.zeros((45, 60, 3), np.uint8)
  image[5:30, 10:40] = (250, 200, 10)
  Image.fromarray(image).save(tmp_path / "in.png")

  def detections(thresh, name):
    main(["--params", params_dir, "--image", str(tmp_path / "in.png"), "--json", str(tmp_path / name),
          "--score-thresh", str(thresh), "--out", str(tmp_path / "overlay.png")])
    return json.loads((tmp_path / name).read_text())["detections"]

  every = detections(0, "all.json")
  scores = sorted(d["score"] for d in every)
  assert scores[0] < scores[-1], "the test needs detections on both sides of the threshold"
  thresh = (scores[0] + scores[-1]) / 2
  kept = detections(thresh, "kept.json")
  assert kept and kept == [d for d in every if d["score"] >= thresh]
  out = capsys.readouterr().out
  assert f"{len(kept)} detections with score >= {thresh:g} -> {tmp_path / 'kept.json'} and " in out


def test_unreadable_image_exits_with_one_line(params_dir, tmp_path, capsys):
  (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 truncated")
  with pytest.raises(SystemExit) as exit_info:
    main(["--params", params_dir, "--image", str(tmp_path / "bad.jpg"), "--json", str(tmp_path / "out.json")])
  assert exit_info.value.code == 2
  err = capsys.readouterr().err
  assert "bad.jpg: not a readable image" in err and "Traceback" not in err
  assert not (tmp_path / "out.json").exists()
