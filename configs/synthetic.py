"""The main job: a small MaskProp trained and evaluated on the built-in synthetic dataset, on a CPU.

    python train.py --config configs/synthetic.py --workdir runs/synthetic

Generates the synthetic set (data/synthetic) and its records (data/tfds) on first use, trains a lean
ResNet-26-like FPN Mask R-CNN with the propagation branch from scratch, evaluates video AP on the valid split and
writes the results, metrics and overlay videos (results/overlays) to the workdir.

Expected runtime: about 15 minutes on 2 CPU cores (1,800 steps at about 0.38-0.45 s, `python -m
maskprop_jax.training.bench --config configs/synthetic.py`): 14 min 44 s from a fresh clone, the data generated in
the run, on an otherwise idle 2-core machine (2026-12-06).

Seeds, and what served what (issue "the main job learns the task"):
  - training videos: data.synthetic.seed 0 (train split);
  - tuning: `python -m maskprop_jax.data.synthetic --out T --train-videos 0 --val-videos 24 --seed 101`; every setting
    below was compared there and only there;
  - reporting: the config's valid split (seed 0, 12 videos) and, never used to choose anything, a split of seed 202
    made the same way as the tuning split (`--seed 202`).
Measured on 2026-12-06 (2-core CPU, jax 0.10.2), one trained model (training is the same as in the commits before;
only the evaluation settings below changed), video AP / AP50 / AP75:
  - valid (seed 0): 0.507 / 0.785 / 0.514 (was 0.459 / 0.729 / 0.468 at test size 176 and duplicate_iou 0.5, and
    0.506 before center-frame masks reached the results at the video's resolution, inference.full_resolution_masks);
  - seed 202 (untuned): 0.448 / 0.676 / 0.471;
  - seed 101 (tuning): 0.665 / 0.896 / 0.664 (was 0.609).
The seeds differ far more than the settings do: the issue's goal of 0.6 on the valid and untuned splits is not met.
`python -m maskprop_jax.evaluation.diagnose` says where the AP goes: with each kind of error fixed in turn
(seed 202 / valid), masks on the frames a track covers +0.246 / +0.308, linking of fragments +0.052 / +0.078,
ranking +0.028 / +0.025, missed tracks +0.018 / +0.009, class 0 / 0 (no class confusion). The masks of small
objects are most of it (per-frame IoU 0.57 under 100 pixels of area, 0.79 at 100-400, 0.91 above 1,600 on seed 101).
On the tuning split, at equal wall time the training scale did not pay: frames trained at short side 192-224 for
1,320 steps (tested at 240) 0.644, at 176-208 for 1,520 steps (tested at 224) 0.649, against 0.665 here; at 1,400
and 1,800 steps the 192-224 model gave 0.671 and 0.683 (a 1.37x step). A mask head of 4 x 64 channels costs about
1.3x, FPN of 64 channels about 1.45x (timed beside a training run); neither was trained, as each would need fewer
steps to stay within 20 minutes. Two reference frames per clip (data.num_ref_frames=2; the paper supervises every
frame of the clip) cost a 1.6x step and 354 MiB of device memory against 237 (3: 2.2x, 473 MiB; `python -m
maskprop_jax.training.bench`): trained at equal wall time (1,100 steps) they gave 0.626 / 0.460 on seeds
101 / 303 against 0.665 / 0.492 here (2026-12-06), so the main job supervises one.
The model underfits: on 24 of its own training videos it scores 0.494, no more than on unseen ones (seed 303: 0.492).
Refining masks on the frame's pixels (2026-12-06, tuning splits seeds 101 / 303, AP; this config 0.665 / 0.492):
Mask R-CNN's masks (detector.roi_heads.mask_refine_layers=(16, 16)) 0.682 / 0.510; with the mask head's own logits
scored too 0.687 / 0.486; with propagated masks refined as well (propagation.refine_layers=(16, 16)) 0.665 / 0.487.
Within what one training seed moves, for a 1.2x step (19 min 39 s from a fresh clone): left off. Nor did lr 4e-3 pay
(training loss 1.27 against 1.22 with the refiner at 2e-3).
detectron2's mask geometry (detector.roi_heads.aligned=True: aligned RoIAlign, aligned mask targets, detectron2's
paste), under which ground truth made into targets and pasted back keeps IoU 0.999 with itself for objects under 100
pixels, against 0.78 torchvision's way (2026-12-06): 0.677 / 0.494 on seeds 101 / 303. The network's masks, not
their grid, are what is lost: per-frame IoU under 100 pixels 0.564 against 0.575 (seed 101). Left off; nor did a
lower score_thresh pay (0.2: 0.660 / 0.463; 0.15: 0.681 / 0.467).
What a training seed moves: with --config.seed=1 (same videos, another initialisation and data order) this config
gives 0.670 / 0.509 on seeds 101 / 303 and 0.495 on valid, against 0.665 / 0.492 / 0.506 with seed 0.
"""

from configs import default
from maskprop_jax.data import synthetic


def get_config():
  config = default.get_config()
  data = config.data
  data.name = "synthetic"
  data.root = "data/synthetic"
  # Frames are 128x192; the network sees them 1.25-1.5x larger (1.625x at test), so small objects gain pixels:
  # testing at 1.25x alone lifted AP75 from 0.36 to 0.48 on a model trained at 0.9-1x.
  data.image_hw = (192, 288)
  data.scale_range = (160, 192)
  # Every object of a frame needs a slot: one left out would be trained as background.
  data.max_instances = synthetic.MAX_INSTANCES
  data.num_ref_frames = 1
  data.max_ref_offset = 6
  data.worker_count = 0
  data.synthetic.update(dict(train_videos=120, val_videos=12, seed=0, height=128, width=192))

  detector = config.model.detector
  detector.num_classes = 7  # 6 shape categories + background
  # Lean: stages of 16..128 channels inside, 64..512 out. torchvision's widths with width_per_group 16 (the same
  # insides, 256..2048 out) make a training step cost 2.7x the FLOPs (31.9 vs 11.9 GFLOP at 160x240), 80% of
  # them in the backbone.
  detector.backbone.update(dict(stage_blocks=(1, 1, 1, 1), base_width=16, width_per_group=64, fpn_channels=32))
  # Tested at 1.625x (short side 208), a little above the training scale: on the tuning split AP 0.609 at 176,
  # 0.657 at 208, 0.633 at 240.
  detector.input.update(dict(min_size=208, max_size=312))
  detector.anchors.sizes = ((16,), (32,), (64,), (128,), (256,))
  detector.rpn.update(dict(pre_nms_top_n_train=600, post_nms_top_n_train=300, pre_nms_top_n_test=300,
                           post_nms_top_n_test=100, batch_size_per_image=128))
  detector.roi_heads.update(dict(box_fc_dim=256, mask_layers=(32, 32), batch_size_per_image=64,
                                 detections_per_img=20))
  # Features at stride 4 (P2), masks at stride 1: the objects are small (median 15x15 pixels). The mask head keeps
  # one 3x3 conv of 16 channels before the 1x1 logits conv: against the paper's 1x1 alone (head_depth 0), same
  # seed and steps, tuning split (seed 101) AP 0.625 vs 0.612, AP75 0.644 vs 0.598 (the valid split had it the
  # other way round, 0.460 vs 0.481, within what a seed moves); it costs little at 16 channels.
  config.model.propagation.update(dict(level=0, upsample=4, offset_width=16, head_width=16, head_depth=1))

  config.train.update(dict(global_batch_size=4, num_steps=1800, log_every=50, checkpoint_every=500))
  config.optimizer.update(dict(name="adamw", lr=2e-3, weight_decay=1e-4, warmup_steps=100, warmup_factor=0.01,
                               schedule="cosine", clip_grad_norm=10.0, frozen_patterns=()))
  config.evaluation.num_overlays = 3  # results/overlays/*.mp4 (.gif where pyav cannot encode H.264)
  # Center-frame detections overlapping a better one by soft mask IoU > 0.3 are dropped (two clip tracks of one
  # object make parallel duplicate video tracks): tuning split 0.657 at 0.5, 0.665 at 0.3, 0.661 at 0.2.
  # Tracks ranked by class probability x mask confidence x n / (n + 1) for n clips: on the earlier 1,800-step model,
  # video AP 0.451 -> 0.481 (AP75 0.441 -> 0.470), the masks and tracks unchanged. Objects hidden for up to 12
  # frames keep their track (the synthetic videos occlude objects for longer than a 7-frame clip): 0.481 -> 0.506.
  config.inference.update(dict(half_window=3, score_thresh=0.3, match_threshold=0.1, duplicate_iou=0.3,
                               temporal_decay=1.0, mask_scoring=True, clip_prior=1.0, reid_max_gap=12,
                               reid_distance=5.0))
  return config
