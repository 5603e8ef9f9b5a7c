"""The default configuration: MaskProp R50-FPN on YouTube-VIS 2019 with the paper's clip length.

configs/*.py start from it (configs/default.py is this function) and override what they need; any field can also
be set on the command line, e.g.
`python train.py --config configs/ytvis.py --workdir runs/ytvis --config.train.global_batch_size=16`.
It lives in the package, not in configs/, because programs need it where configs/ is not at hand (a wheel
install): the demo's clip settings and propagation head for converted weights come from here.
"""

import ml_collections

from maskprop_jax.model.config import mask_rcnn_config


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = ml_collections.ConfigDict(dict(
      name="ytvis2019",
      root="data/ytvis2019",
      annotations={"train": "train.json", "valid": "valid.json"},
      images={"train": "train/JPEGImages", "valid": "valid/JPEGImages"},
      tfds_dir="data/tfds",
      train_split="train",
      val_split="valid",
      image_hw=(384, 640),  # padded training canvas; frames are resized to scale_range (min side) within it
      scale_range=(288, 384),
      flip=True,
      max_instances=10,
      num_ref_frames=2,  # K reference frames per training clip
      max_ref_offset=6,  # drawn within +-T of the center frame (T = 6 in the paper)
      worker_count=4,
      synthetic=ml_collections.ConfigDict(dict(
          train_videos=0, val_videos=0, seed=0, height=128, width=192, min_frames=8, max_frames=40)),
  ))

  config.model = ml_collections.ConfigDict()
  config.model.detector = mask_rcnn_config("maskrcnn_resnet50_fpn")
  config.model.detector.num_classes = 41  # YouTube-VIS 2019: 40 categories + background
  config.model.detector.input.min_size = 360
  config.model.detector.input.max_size = 640
  # Converted COCO weights (python -m maskprop_jax.convert ...); the class-specific layers are re-initialised.
  config.model.init_from = ""
  config.model.propagation = ml_collections.ConfigDict(dict(
      level=1,  # FPN level the masks are propagated on: 0 = P2 (stride 4), 1 = P3 (stride 8)
      # The mask head: head_depth 3x3 convs of head_width channels before the 1x1 logits conv; the paper's is the
      # 1x1 conv alone (0). Two 3x3 convs of 128 channels would cost more than the rest of propagation.
      offset_width=128, num_deform_layers=1, kernel_size=3, head_width=128, head_depth=0, use_foreground=True,
      # Masks come out `upsample` times finer than the level's features (sub-pixel convolution): stride 4 here.
      upsample=2, impl="auto", loss_weight=1.0,
      # Widths of the 3x3 convs that refine each propagated mask on its frame's pixels (model/propagation_refiner.py,
      # the paper's high-resolution refinement in our form); () = none.
      refine_layers=(),
      # A motion prior for the offsets (model/motion.py): each location's displacement back to the center frame,
      # by correlating the frames' features pooled motion_stride x coarser within motion_radius coarse cells,
      # projected to motion_width channels; 0 = none, the paper's offset block alone. motion_align: the offset
      # block reads the frames' difference after the prior's displacement instead of at the same location.
      motion_radius=0, motion_width=16, motion_stride=2, motion_align=False))
  # "bfloat16": activations, convolutions and matmuls in bfloat16, the rest float32 (model/precision.py); for GPUs
  # and TPUs.
  config.model.compute_dtype = "float32"

  config.train = ml_collections.ConfigDict(dict(
      global_batch_size=16, num_steps=60_000, log_every=50, checkpoint_every=2_000, keep_checkpoints=3,
      eval_every=0, profile_steps=0,
      # With per_device_batch_size > 0 the global batch grows with the devices, and lr and steps scale linearly
      # from reference_batch_size (training/parallel.scale_to_devices).
      per_device_batch_size=0, reference_batch_size=0))

  config.optimizer = ml_collections.ConfigDict(dict(
      name="sgd", lr=0.02, momentum=0.9, weight_decay=1e-4, warmup_steps=1_000, warmup_factor=0.001,
      schedule="step", decay_steps=(40_000, 53_000), gamma=0.1, clip_grad_norm=0.0,
      # torchvision's pretrained detectors keep the stem and the first stage frozen.
      frozen_patterns=(r"^detector/backbone/body/(conv1|bn1|layer1)/",)))

  # The evaluation at the end of training also draws the tracks of the first N validation videos as GIFs.
  config.evaluation = ml_collections.ConfigDict(dict(num_overlays=0))

  config.inference = ml_collections.ConfigDict(dict(
      half_window=6,  # T: a clip spans 2T+1 frames
      clip_stride=1,  # a clip centred at every s-th frame
      score_thresh=0.3, match_threshold=0.3, mask_threshold=0.5, duplicate_iou=0.5,
      # Detections scoring from extend_score_thresh up to score_thresh may lengthen a video track they match by mean
      # soft IoU >= extend_match_threshold, never start one (ByteTrack's second association; >= score_thresh: off).
      extend_score_thresh=1.0, extend_match_threshold=0.5,
      # A clip's mask on a frame d frames from its center weighs exp(-|d| / temporal_decay) in the video track's
      # mean; 0 weighs them all the same, as the paper does.
      temporal_decay=0.0,
      # A video track's score: the mean class probability of its clips (the paper's), times its masks' mean
      # confidence with mask_scoring, times n / (n + clip_prior) for n clips with clip_prior > 0 (linking/linker.py).
      mask_scoring=False, clip_prior=0.0,
      # An object hidden for up to reid_max_gap frames keeps its track when it reappears within reid_distance
      # object sizes of where its motion leads, with the same class (0: off, as in the paper).
      reid_max_gap=0, reid_distance=2.0,
      # Masks drawn on boxes (Mask R-CNN's on a clip's center frame, a propagation refiner's windows) reach the
      # results at the video's resolution, pasted from their M x M cells as torchvision pastes a detection
      # (linking/frames.py); False: every mask through the mask grid (stride model.propagation's), as before.
      full_resolution_masks=True,
      # A pixel that several video tracks' masks of a frame set stays only in the track whose mean probability
      # there is highest (the ground truth's masks are the visible parts: disjoint); False: masks may overlap.
      disjoint_masks=False))
  return config
