"""Mask R-CNN configurations: torchvision's maskrcnn_resnet50_fpn (v1, v2) and detectron2's model-zoo FPN models.

`mask_rcnn_config(variant)` returns an ml_collections ConfigDict whose defaults are exactly the hyper-parameters
of the model the weights came from, so a converted checkpoint behaves like its original. Every field can be
overridden (e.g. `cfg.min_size = 320` for a fast test, `cfg.num_classes = 41` for fine-tuning).
"""

from __future__ import annotations

import ml_collections

from maskprop_jax.model.resnet import ResNetSpec
from maskprop_jax.model.transform import TORCHVISION_MEAN, TORCHVISION_STD, InputFormat

# detectron2's caffe2-style (MSRA) backbones take BGR 0..255 pixels minus the mean, with unit std; its ResNeXt
# backbones (FAIR, torch-style) also divide by the std.
DETECTRON2_MEAN_BGR = (103.530, 116.280, 123.675)
DETECTRON2_MSRA_STD = (1.0, 1.0, 1.0)
DETECTRON2_TORCH_STD_BGR = (57.375, 57.120, 58.395)

VARIANTS = (
  "maskrcnn_resnet50_fpn",
  "maskrcnn_resnet50_fpn_v2",
  "detectron2_R_50_FPN",
  "detectron2_R_101_FPN",
  "detectron2_X_101_32x8d_FPN",
)


def _torchvision_v1() -> ml_collections.ConfigDict:
  cfg = ml_collections.ConfigDict()
  cfg.variant = "maskrcnn_resnet50_fpn"
  cfg.num_classes = 91  # including background (index 0); torchvision's COCO labels are the COCO category ids

  cfg.backbone = ml_collections.ConfigDict(dict(
    depth=50, groups=1, width_per_group=64, stride_in_1x1=False, stage_blocks=None, base_width=64,
    # torchvision's COCO_V1 weights overwrite the frozen-BN eps with 0.0; randomly initialised models use 1e-5.
    bn_eps=1e-5,
    fpn_channels=256, fpn_norm=False,
  ))
  cfg.input = ml_collections.ConfigDict(dict(
    mean=TORCHVISION_MEAN, std=TORCHVISION_STD, scale=1.0, channel_order="RGB",
    min_size=800, max_size=1333, size_divisible=32,
  ))
  cfg.anchors = ml_collections.ConfigDict(dict(
    sizes=((32,), (64,), (128,), (256,), (512,)),
    aspect_ratios=((0.5, 1.0, 2.0),) * 5,
    round_base_anchors=True,  # torchvision rounds the base anchors to integers; detectron2 does not
  ))
  cfg.rpn = ml_collections.ConfigDict(dict(
    conv_depth=1,
    pre_nms_top_n_train=2000, pre_nms_top_n_test=1000,
    post_nms_top_n_train=2000, post_nms_top_n_test=1000,
    nms_thresh=0.7, fg_iou_thresh=0.7, bg_iou_thresh=0.3,
    batch_size_per_image=256, positive_fraction=0.5, score_thresh=0.0, min_size=1e-3,
  ))
  cfg.roi_heads = ml_collections.ConfigDict(dict(
    box_head="two_mlp",  # "two_mlp" (fc6, fc7) or "conv_fc" (v2: 4 conv+BN, 1 fc)
    box_conv_layers=(), box_fc_dim=1024, box_norm=False,
    box_output_size=7, box_sampling_ratio=2,
    mask_output_size=14, mask_sampling_ratio=2, mask_layers=(256, 256, 256, 256), mask_norm=False,
    mask_loss_buckets=True,  # the mask loss on the smallest bucket of slots holding the positives (exact)
    # Widths of the image-guided mask refiner's 3x3 convs (model/mask_refiner.py); () = none, torchvision's branch.
    mask_refine_layers=(),
    aligned=False,
    level_rule="torchvision",  # FPN level of a RoI: torchvision's LevelMapper or detectron2's (eps in the log)
    score_thresh=0.05, nms_thresh=0.5, detections_per_img=100,
    fg_iou_thresh=0.5, bg_iou_thresh=0.5, batch_size_per_image=512, positive_fraction=0.25,
    bbox_reg_weights=(10.0, 10.0, 5.0, 5.0),
  ))
  # torchvision freezes conv1 and layer1 of a pretrained backbone (trainable_backbone_layers=3).
  cfg.trainable_backbone_layers = 3
  return cfg


def _torchvision_v2() -> ml_collections.ConfigDict:
  cfg = _torchvision_v1()
  cfg.variant = "maskrcnn_resnet50_fpn_v2"
  cfg.backbone.fpn_norm = True
  cfg.rpn.conv_depth = 2
  cfg.roi_heads.box_head = "conv_fc"
  cfg.roi_heads.box_conv_layers = (256, 256, 256, 256)
  cfg.roi_heads.box_norm = True
  cfg.roi_heads.mask_norm = True
  return cfg


def _detectron2(depth: int, groups: int, width_per_group: int) -> ml_collections.ConfigDict:
  """detectron2's mask_rcnn_{R_50,R_101,X_101_32x8d}_FPN_3x: same architecture, different conventions."""
  cfg = _torchvision_v1()
  is_msra = groups == 1
  cfg.variant = f"detectron2_{'R' if is_msra else 'X'}_{depth}{'' if is_msra else '_32x8d'}_FPN"
  cfg.num_classes = 81  # background + the 80 COCO categories in id order (the converter moves background first)
  cfg.backbone.update(dict(depth=depth, groups=groups, width_per_group=width_per_group, stride_in_1x1=is_msra))
  cfg.input.update(dict(
    mean=DETECTRON2_MEAN_BGR, std=DETECTRON2_MSRA_STD if is_msra else DETECTRON2_TORCH_STD_BGR,
    scale=255.0, channel_order="BGR",
  ))
  cfg.anchors.round_base_anchors = False
  cfg.rpn.update(dict(post_nms_top_n_train=1000, min_size=0.0))
  cfg.roi_heads.update(dict(aligned=True, box_sampling_ratio=0, mask_sampling_ratio=0, level_rule="detectron2"))
  cfg.trainable_backbone_layers = 4  # detectron2 freezes only the stem (FREEZE_AT=2)
  return cfg


def mask_rcnn_config(variant: str = "maskrcnn_resnet50_fpn") -> ml_collections.ConfigDict:
  """The configuration of one of `VARIANTS`."""
  builders = {
    "maskrcnn_resnet50_fpn": _torchvision_v1,
    "maskrcnn_resnet50_fpn_v2": _torchvision_v2,
    "detectron2_R_50_FPN": lambda: _detectron2(50, 1, 64),
    "detectron2_R_101_FPN": lambda: _detectron2(101, 1, 64),
    "detectron2_X_101_32x8d_FPN": lambda: _detectron2(101, 32, 8),
  }
  if variant not in builders:
    raise ValueError(f"unknown Mask R-CNN variant {variant!r}; choose one of {', '.join(VARIANTS)}")
  return builders[variant]()


def tiny_mask_rcnn_config(num_classes: int = 5) -> ml_collections.ConfigDict:
  """A v1 Mask R-CNN small enough for CPU tests: one block per ResNet stage, narrow FPN and heads, small images."""
  cfg = mask_rcnn_config("maskrcnn_resnet50_fpn")
  cfg.variant = "tiny"
  cfg.num_classes = num_classes
  cfg.backbone.update(dict(stage_blocks=(1, 1, 1, 1), fpn_channels=32))
  cfg.input.update(dict(min_size=64, max_size=96))
  cfg.rpn.update(dict(pre_nms_top_n_train=200, pre_nms_top_n_test=100, post_nms_top_n_train=100,
                      post_nms_top_n_test=50, batch_size_per_image=64))
  cfg.roi_heads.update(dict(box_fc_dim=64, mask_layers=(32, 32), batch_size_per_image=64, detections_per_img=10))
  cfg.trainable_backbone_layers = 5
  return cfg


def resnet_spec(cfg: ml_collections.ConfigDict) -> ResNetSpec:
  b = cfg.backbone
  return ResNetSpec(depth=b.depth, groups=b.groups, width_per_group=b.width_per_group,
                    stride_in_1x1=b.stride_in_1x1, bn_eps=b.bn_eps,
                    stage_blocks=None if b.stage_blocks is None else tuple(b.stage_blocks),
                    base_width=b.get("base_width", 64))  # run configs saved before base_width existed lack it


def input_format(cfg: ml_collections.ConfigDict) -> InputFormat:
  i = cfg.input
  return InputFormat(mean=tuple(i.mean), std=tuple(i.std), scale=float(i.scale), channel_order=i.channel_order)
