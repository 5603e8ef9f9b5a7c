"""MaskProp R50-FPN on OVIS (occluded video instance segmentation), fine-tuned from COCO on 8 GPUs.

Data: the official download in data/ovis (annotations_train.json + train/, annotations_valid.json + valid/);
25 categories. OVIS videos are long and crowded, with heavy occlusion: more track slots per clip (20) and a
lower linking threshold, so that a track that was hidden for a while can still join its video-level track.

    python -m maskprop_jax.convert torchvision --checkpoint maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth --out weights/r50
    python train.py --config configs/ovis.py --workdir runs/ovis_r50
    python eval.py --config configs/ovis.py --workdir runs/ovis_r50    # results/valid.zip for the server

Schedule: configs/ytvis.py's (16 clips per step, 40k steps). Expected runtime: about 3.5 hours on 8 A100-class
GPUs plus about 40 minutes of evaluation (OVIS's valid videos are long); an estimate, not measured: no GPU was
available to this project.
"""

from configs import ytvis


def get_config():
  config = ytvis.get_config()
  data = config.data
  data.name = "ovis"
  data.root = "data/ovis"
  data.annotations = {"train": "annotations_train.json", "valid": "annotations_valid.json"}
  data.images = {"train": "train", "valid": "valid"}
  data.max_instances = 20
  config.model.detector.num_classes = 26  # 25 categories + background
  config.inference.match_threshold = 0.2
  config.model.detector.roi_heads.detections_per_img = 20  # OVIS videos are crowded: up to 20 clip tracks a clip
  return config
