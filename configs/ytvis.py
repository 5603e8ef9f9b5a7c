"""MaskProp R50-FPN on YouTube-VIS 2019, fine-tuned from torchvision's COCO Mask R-CNN on one host of 8 GPUs.

Data: the official download in data/ytvis2019 (train.json + train/JPEGImages, valid.json + valid/JPEGImages);
its TFDS records are prepared into data/tfds on first use. Weights: convert torchvision's COCO checkpoint first.

    python -m maskprop_jax.convert torchvision --checkpoint maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth --out weights/r50
    python train.py --config configs/ytvis.py --workdir runs/ytvis_r50
    python eval.py --config configs/ytvis.py --workdir runs/ytvis_r50    # results/valid.zip for the server

Clips as in the paper: training pairs the center frame with 2 reference frames within +-6 frames (T = 6), and
inference links clips of 2T+1 = 13 frames centred at every frame. Schedule: 16 clips per step (2 per GPU) for
40k steps, about 10 epochs of YouTube-VIS 2019's ~61k annotated training frames; SGD at 0.02 (the detectron2
rate for 16 images), decayed x0.1 at 30k and 36k steps, 1k warmup steps.

Expected runtime: about 3 hours on 8 A100-class GPUs plus about 20 minutes of evaluation. This is an estimate
(each step runs the backbone on 48 frames of 384x640, about the pixels of detectron2's R50-FPN step of 16 COCO
images, 0.26 s on 8 V100s), not a measurement: no GPU was available to this project.

Speed against a per-frame detector, on any YouTube-VIS-format folder of 360x640 frames (here a synthetic one, so
the class count is set to its 6 categories + background: only the class-specific output layers shrink); random
weights, as runs/bench holds no checkpoint:

    python -m maskprop_jax.data.synthetic --out /tmp/s360 --train-videos 0 --val-videos 2 --seed 0 \
        --height 360 --width 640 --min-frames 12 --max-frames 12
    python eval.py --config configs/ytvis.py --workdir runs/bench --benchmark --config.model.init_from= \
        --config.model.detector.num_classes=7 --config.model.detector.roi_heads.score_thresh=0 \
        --config.inference.score_thresh=0 --config.model.compute_dtype=float32 \
        --images /tmp/s360/valid/JPEGImages --annotations /tmp/s360/valid.json

(Random weights score no class above the thresholds: at 0, both detectors keep their 10 best detections of a frame
as a trained model would, and MaskProp propagates and links all of them. float32: the CPU has no fast bfloat16,
and torchvision runs float32.) Measured on a 2-core CPU, one run each:
MaskProp 1.11 frames/s, 0.82x torchvision's 1.36; ms per frame: backbone 355, detection 332, propagation 172,
linking 34. With the propagation refiner and masks pasted at the video's resolution (this config since
2026-12-06; the same session, one run each): 0.77 frames/s, 0.80x torchvision's 0.96 (ms per frame: backbone 469,
detection 419, propagation 247, linking 160), against 0.90 frames/s, 0.93x torchvision's 0.97 with
--config.model.propagation.refine_layers='()' (propagation 172, linking 39). Linking pays for the video-size pastes
mostly because random weights link nothing: about 95 video tracks live on each frame instead of a trained model's
few. Before propagation was reordered (x projected by the deformable weights once per clip, the paper's
1x1 head folded into them, per-frame terms cached, no propagation to a clip's center or padding frames) it was
0.13 frames/s, 0.10x torchvision, propagation 7,112 ms per frame.
"""

from configs import default
from maskprop_jax.model.config import mask_rcnn_config


def get_config():
  config = default.get_config()
  config.model.init_from = "weights/r50"
  # Activations, convolutions and matmuls in bfloat16 (float32 parameters, optimizer state, accumulation, batch-norm
  # statistics, box decoding, softmax and losses: model/precision.py): half the memory and bandwidth on GPUs and
  # TPUs. tests/model/test_precision.py bounds what it changes on the CPU; no GPU has run it yet.
  config.model.compute_dtype = "bfloat16"
  # At most D detections of a clip's center frame become its clip tracks (those above inference.score_thresh,
  # propagated to all 2T+1 frames): YouTube-VIS videos hold a few objects, 10 covers them.
  config.model.detector.roi_heads.detections_per_img = 10
  # The paper's high-resolution refinement, in our form (model/propagation_refiner.py): each propagated mask is
  # refined on a 28x28 window of its frame's pixels and P3 features, and linking pastes the window at the
  # video's resolution (inference.full_resolution_masks, as Mask R-CNN's center masks). Ground truth written this
  # way keeps video AP 0.996 on 720x1280 synthetic videos, against 0.908 through the stride-4 mask grid
  # (`python -m maskprop_jax.inference.resolution_cap`, 24 videos of --seed 404).
  config.model.propagation.refine_layers = (32, 32)
  config.data.worker_count = 8  # input processes per host: ~6 frames/clip decoded and augmented on the CPU
  config.train.update(dict(global_batch_size=16, num_steps=40_000, log_every=50, checkpoint_every=2_000,
                           keep_checkpoints=3))
  config.optimizer.update(dict(name="sgd", lr=0.02, momentum=0.9, weight_decay=1e-4, warmup_steps=1_000,
                               warmup_factor=0.001, schedule="step", decay_steps=(30_000, 36_000), gamma=0.1))
  return config


def with_detector(config, variant: str):
  """config with another Mask R-CNN variant (R101, X101 weights) that keeps this config's classes, input size and
  detections per frame."""
  detector = mask_rcnn_config(variant)
  current = config.model.detector
  detector.num_classes = current.num_classes
  detector.input.update(dict(min_size=current.input.min_size, max_size=current.input.max_size))
  detector.roi_heads.detections_per_img = current.roi_heads.detections_per_img
  config.model.detector = detector
  return config
