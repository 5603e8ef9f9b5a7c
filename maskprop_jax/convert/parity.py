"""End-to-end parity of converted torchvision Mask R-CNN weights (needs torch and torchvision).

    python -m maskprop_jax.convert.parity [--variant maskrcnn_resnet50_fpn|maskrcnn_resnet50_fpn_v2|both]
                                          [--min-size 320] [--max-size 512] [--seed 0] [--tiny]

Builds a seeded, randomly initialised torchvision model (random batch-norm statistics, box classifier scaled so
that class scores spread out), saves it as .pth, converts it with the converter's own code path, loads the
parameter directory and runs both models on the same image. Prints one row per check:
  FPN levels (max |diff| / max |ref|), top-100 RPN proposals (IoU with our box of the same rank, exact score
  ties in either order),
  detections (for each of torch's top detections, ours with the same label and best box IoU: the worst IoU and
  their median, score difference, mask IoU), and, in training mode with torch's proposals and sampled anchors /
  RoIs injected, every loss. `--tiny` uses a one-block-per-stage ResNet (what the tests run); the default is the real ResNet-50.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from maskprop_jax.convert import params_io, torchvision as tv_convert
from maskprop_jax.model import box_ops
from maskprop_jax.model.mask_rcnn import GroundTruth, abstract_mask_rcnn, postprocess, preprocess_batch
from maskprop_jax.model.rpn import AnchorSample, Proposals

TOP_PROPOSALS = 100
TOP_DETECTIONS = 20


def random_torchvision_model(variant: str, seed: int, min_size: int, max_size: int, tiny: bool = False,
                             cls_scale: float = 30.0):
  """A seeded torchvision Mask R-CNN with random weights and batch-norm statistics, in eval mode."""
  import torch  # noqa: PLC0415 -- parity needs torch, the library does not
  from torchvision.models.detection import backbone_utils, faster_rcnn, mask_rcnn  # noqa: PLC0415
  from torchvision.models import resnet  # noqa: PLC0415

  torch.manual_seed(seed)
  v2 = variant == "maskrcnn_resnet50_fpn_v2"
  kwargs = dict(num_classes=91, min_size=min_size, max_size=max_size)
  if not tiny:
    builder = mask_rcnn.maskrcnn_resnet50_fpn_v2 if v2 else mask_rcnn.maskrcnn_resnet50_fpn
    model = builder(weights=None, weights_backbone=None, **kwargs)
  else:
    body = resnet.ResNet(resnet.Bottleneck, [1, 1, 1, 1])
    backbone = backbone_utils._resnet_fpn_extractor(body, 5, norm_layer=torch.nn.BatchNorm2d if v2 else None)
    if v2:
      anchors = faster_rcnn._default_anchorgen()
      kwargs.update(
        rpn_anchor_generator=anchors,
        rpn_head=faster_rcnn.RPNHead(256, anchors.num_anchors_per_location()[0], conv_depth=2),
        box_head=faster_rcnn.FastRCNNConvFCHead((256, 7, 7), [256] * 4, [1024], norm_layer=torch.nn.BatchNorm2d),
        mask_head=mask_rcnn.MaskRCNNHeads(256, [256] * 4, 1, norm_layer=torch.nn.BatchNorm2d),
      )
    model = mask_rcnn.MaskRCNN(backbone, **kwargs)
  generator = torch.Generator().manual_seed(seed)

  def uniform(t, low, high):
    t.copy_(torch.rand(t.shape, generator=generator) * (high - low) + low)

  with torch.no_grad():
    for module in model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        uniform(module.running_mean, -0.1, 0.1)
        uniform(module.running_var, 0.5, 1.5)
        uniform(module.weight, 0.5, 1.0)
        uniform(module.bias, -0.1, 0.1)
    # Initial logits are ~0: every class score ~1/91 (below the 0.05 threshold) and every objectness ~0.5, where
    # rounding alone reorders near-ties. Scale both up so that scores spread out.
    model.roi_heads.box_predictor.cls_score.weight.mul_(cls_scale)
    model.rpn.head.cls_logits.weight.mul_(cls_scale)
  return model.eval()


def synthetic_scene(seed: int, hw: tuple[int, int] = (240, 320)):
  """An RGB uint8 image with a few filled rectangles, and their boxes / masks / labels as ground truth."""
  rng = np.random.default_rng(seed)
  h, w = hw
  image = (rng.random((h, w, 3)) * 60).astype(np.uint8)
  boxes, masks, labels = [], [], []
  for label in (1, 18, 3):
    x0, y0 = rng.integers(0, w // 2), rng.integers(0, h // 2)
    x1, y1 = x0 + rng.integers(w // 6, w // 2), y0 + rng.integers(h // 6, h // 2)
    mask = np.zeros((h, w), np.uint8)
    mask[y0:y1, x0:x1] = 1
    image[mask > 0] = rng.integers(80, 255, 3)
    boxes.append([x0, y0, x1, y1])
    masks.append(mask)
    labels.append(label)
  return image, np.asarray(boxes, np.float32), np.stack(masks), np.asarray(labels, np.int64)


def convert_via_checkpoint(torch_model, workdir: str):
  """Saves the torch model's state dict as .pth, converts and saves it, loads it back: the user's path."""
  import torch  # noqa: PLC0415

  pth = os.path.join(workdir, "model.pth")
  torch.save(torch_model.state_dict(), pth)
  cfg, params, ids, names = tv_convert.convert_checkpoint(pth)
  out_dir = os.path.join(workdir, "params")
  params_io.save_params(out_dir, params, cfg, category_ids=ids, class_names=names, source=pth)
  model, metadata = params_io.load_params(out_dir, abstract_mask_rcnn)
  return model, metadata["config"]


def _torch_inference(model, image: np.ndarray) -> dict[str, Any]:
  import torch  # noqa: PLC0415

  tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255
  with torch.no_grad():
    images, _ = model.transform([tensor])
    features = model.backbone(images.tensors)
    proposals, _ = model.rpn(images, features)
    detections, _ = model.roi_heads(features, proposals, images.image_sizes)
    detections = model.transform.postprocess(detections, images.image_sizes, [image.shape[:2]])[0]
  return dict(
    features=[f.numpy().transpose(0, 2, 3, 1) for f in features.values()],
    proposals=proposals[0].numpy(),
    boxes=detections["boxes"].numpy(), scores=detections["scores"].numpy(),
    labels=detections["labels"].numpy(), masks=detections["masks"][:, 0].numpy(),
  )


@jax.jit
def _jax_forward(model, images, image_hw):
  features, proposals = model.proposals(images, image_hw)
  detections = model.roi_heads.detect(features[:4], proposals.boxes, proposals.valid, image_hw, images.shape[1:3])
  return features, proposals, detections


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  return np.asarray(box_ops.box_iou(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32)))


def compare_inference(torch_model, model, cfg, image: np.ndarray) -> dict[str, float]:
  """Runs both models on `image`; returns the worst-case agreement numbers (see the module docstring)."""
  ref = _torch_inference(torch_model, image)
  images, image_hw = preprocess_batch(cfg, [image])
  with jax.default_matmul_precision("highest"):
    features, proposals, detections = _jax_forward(model, images, image_hw)
  original_hw = jnp.asarray([image.shape[:2]], jnp.int32)
  results = jax.device_get(postprocess(detections, image_hw, original_hw, image.shape[:2]))

  out = {}
  for level, (r, g) in enumerate(zip(ref["features"], features)):
    g = np.asarray(g)[:, : r.shape[1], : r.shape[2]]
    out[f"fpn_level{level}_rel_err"] = float(np.abs(g - r).max() / np.abs(r).max())
  top = min(TOP_PROPOSALS, len(ref["proposals"]))
  ours = np.asarray(proposals.boxes[0])[np.asarray(proposals.valid[0])][:top]
  out["rpn_top_count_ref"], out["rpn_top_count_ours"] = float(top), float(len(ours))
  if len(ours) == top:
    ious = _iou(ref["proposals"][:top], ours)
    # Rank by rank, except that boxes with exactly equal scores (identical features, e.g. in flat image regions)
    # may come in either order: a torch box may match any of ours in its tie group.
    scores = np.asarray(proposals.scores[0])[:top]
    same_score = scores[:, None] == scores[None, :]
    out["rpn_top100_min_iou"] = float(np.where(same_score, ious, 0.0).max(axis=1).min())

  valid = results.valid[0]
  boxes, scores = results.boxes[0][valid], results.scores[0][valid]
  labels, masks = results.labels[0][valid], results.masks[0][valid] >= 0.5
  count = min(TOP_DETECTIONS, len(ref["scores"]))
  out["detections_ref"], out["detections_ours"] = float(len(ref["scores"])), float(len(scores))
  worst = dict(box_iou=1.0, score_diff=0.0, mask_iou=1.0, label_mismatch=0.0)
  box_ious = []  # each top reference detection's best same-label match among ours
  ious = _iou(ref["boxes"][:count], boxes) if len(boxes) else np.zeros((count, 0))
  for i in range(count):
    same_label = labels == ref["labels"][i]
    if not same_label.any():
      worst["label_mismatch"] += 1
      worst["box_iou"] = 0.0
      box_ious.append(0.0)
      continue
    j = int(np.argmax(np.where(same_label, ious[i], -1.0)))
    ref_mask = ref["masks"][i] >= 0.5
    union = np.logical_or(ref_mask, masks[j]).sum()
    mask_iou = np.logical_and(ref_mask, masks[j]).sum() / union if union else 1.0
    worst["box_iou"] = min(worst["box_iou"], float(ious[i, j]))
    box_ious.append(float(ious[i, j]))
    worst["score_diff"] = max(worst["score_diff"], float(abs(scores[j] - ref["scores"][i])))
    worst["mask_iou"] = min(worst["mask_iou"], float(mask_iou))
  out.update({f"top{count}_det_{k}": v for k, v in worst.items()})
  out[f"top{count}_det_box_iou_median"] = float(np.median(box_ious)) if box_ious else 1.0
  return out


def _torch_training(model, image, boxes, masks, labels) -> dict[str, Any]:
  """torch's losses with its own random choices, which are recorded for injection into ours."""
  import torch  # noqa: PLC0415

  record: dict[str, Any] = {}

  def recording(sampler, name):
    def call(matched):
      pos, neg = sampler(matched)
      record[name] = (torch.stack(pos).bool().numpy(), torch.stack(neg).bool().numpy())
      return pos, neg
    return call

  model.train()
  for module in model.modules():  # batch statistics stay frozen on both sides (see MaskRCNN's docstring)
    if isinstance(module, torch.nn.BatchNorm2d):
      module.eval()
  rpn_sampler, roi_sampler = model.rpn.fg_bg_sampler, model.roi_heads.fg_bg_sampler
  model.rpn.fg_bg_sampler = recording(rpn_sampler, "anchors")
  model.roi_heads.fg_bg_sampler = recording(roi_sampler, "rois")
  hooks = [
    model.transform.register_forward_hook(lambda m, i, o: record.update(transformed=o)),
    model.rpn.register_forward_hook(lambda m, i, o: record.update(proposals=o[0][0].detach().numpy())),
  ]
  try:
    target = dict(boxes=torch.from_numpy(boxes), labels=torch.from_numpy(labels), masks=torch.from_numpy(masks))
    tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    losses = model([tensor], [target])
  finally:
    for hook in hooks:
      hook.remove()
    model.rpn.fg_bg_sampler, model.roi_heads.fg_bg_sampler = rpn_sampler, roi_sampler
    model.eval()
  record["losses"] = {k: float(v.detach()) for k, v in losses.items()}
  return record


@jax.jit
def _jax_losses(model, images, image_hw, gt, proposals, anchor_sample, roi_sample):
  return model.losses(images, image_hw, gt, None, proposals=proposals, anchor_sample=anchor_sample,
                      roi_sample=roi_sample)


def compare_training(torch_model, model, cfg, image, boxes, masks, labels) -> dict[str, float]:
  """Training losses of both models with torch's proposals and samples: |ours - torch's| per loss."""
  record = _torch_training(torch_model, image, boxes, masks, labels)
  batch, targets = record["transformed"]
  padded = batch.tensors.numpy().transpose(0, 2, 3, 1)  # [1, Hp, Wp, 3], torch's exact network input
  image_hw = jnp.asarray(batch.image_sizes, jnp.int32)
  t = targets[0]
  gt_masks = np.zeros((1, len(labels), *padded.shape[1:3]), np.float32)
  resized = t["masks"].numpy()
  gt_masks[0, :, : resized.shape[1], : resized.shape[2]] = resized
  gt = GroundTruth(jnp.asarray(t["boxes"].numpy())[None], jnp.asarray(t["labels"].numpy(), jnp.int32)[None],
                   jnp.asarray(gt_masks), jnp.ones((1, len(labels)), bool))
  proposals = record["proposals"]
  proposals = Proposals(jnp.asarray(proposals)[None], jnp.zeros((1, len(proposals))),
                        jnp.zeros((1, len(proposals))), jnp.ones((1, len(proposals)), bool))
  pos, neg = record["rois"]
  chosen = pos | neg  # [1, P + G]; torchvision takes the chosen candidates in ascending order
  index = np.nonzero(chosen[0])[0].astype(np.int32)[None]
  roi_sample = (jnp.asarray(index), jnp.ones(index.shape, bool))
  anchor_sample = AnchorSample(*(jnp.asarray(m) for m in record["anchors"]))
  with jax.default_matmul_precision("highest"):
    ours = _jax_losses(model, jnp.asarray(padded), image_hw, gt, proposals, anchor_sample, roi_sample)
  return {f"{k}_abs_diff": abs(float(ours[k]) - v) for k, v in record["losses"].items()} | {
    f"{k}_torch": v for k, v in record["losses"].items()}


def run(variant: str, seed: int, min_size: int, max_size: int, tiny: bool) -> dict[str, float]:
  torch_model = random_torchvision_model(variant, seed, min_size, max_size, tiny)
  image, boxes, masks, labels = synthetic_scene(seed)
  with tempfile.TemporaryDirectory() as workdir:
    model, cfg = convert_via_checkpoint(torch_model, workdir)
  cfg.input.min_size, cfg.input.max_size = min_size, max_size
  results = compare_inference(torch_model, model, cfg, image)
  results.update(compare_training(torch_model, model, cfg, image, boxes, masks, labels))
  return results


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog="python -m maskprop_jax.convert.parity", description=__doc__.split("\n\n")[0])
  parser.add_argument("--variant", default="both",
                      choices=("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2", "both"),
                      help="torchvision model(s) to compare (default: %(default)s)")
  parser.add_argument("--seed", type=int, default=0,
                      help="seed of the random weights and image (default: %(default)s)")
  parser.add_argument("--min-size", type=int, default=320,
                      help="the models' input short side in pixels (default: %(default)s)")
  parser.add_argument("--max-size", type=int, default=512,
                      help="the models' input long side limit in pixels (default: %(default)s)")
  parser.add_argument("--tiny", action="store_true",
                      help="one bottleneck block per stage instead of ResNet-50 (default: ResNet-50)")
  args = parser.parse_args(argv)
  variants = ("maskrcnn_resnet50_fpn", "maskrcnn_resnet50_fpn_v2") if args.variant == "both" else (args.variant,)
  for variant in variants:
    results = run(variant, args.seed, args.min_size, args.max_size, args.tiny)
    print(f"== {variant} (seed {args.seed}, min_size {args.min_size}, {'tiny' if args.tiny else 'ResNet-50'})")
    for key, value in results.items():
      print(f"  {key:36s} {value:.6g}")


if __name__ == "__main__":
  main()
