"""MaskProp R50-FPN on YouTube-VIS 2021, fine-tuned from torchvision's COCO Mask R-CNN on 8 GPUs.

Data: the official download in data/ytvis2021 (train/instances.json + train/JPEGImages, valid/instances.json +
valid/JPEGImages); 40 categories, a different list from 2019's, and about 1.5 times as many training frames.

    python -m maskprop_jax.convert torchvision --checkpoint maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth --out weights/r50
    python train.py --config configs/ytvis2021.py --workdir runs/ytvis2021_r50
    python eval.py --config configs/ytvis2021.py --workdir runs/ytvis2021_r50    # results/valid.zip for the server

The 2019 recipe (configs/ytvis.py) stretched to the larger set: 60k steps of 16 clips, decays at 45k and 54k.
Expected runtime: about 4.5 hours on 8 A100-class GPUs plus about 30 minutes of evaluation (an estimate scaled
from configs/ytvis.py's, not measured: no GPU was available to this project).
"""

from configs import ytvis


def get_config():
  config = ytvis.get_config()
  data = config.data
  data.name = "ytvis2021"
  data.root = "data/ytvis2021"
  data.annotations = {"train": "train/instances.json", "valid": "valid/instances.json"}
  data.images = {"train": "train/JPEGImages", "valid": "valid/JPEGImages"}
  config.train.num_steps = 60_000
  config.optimizer.decay_steps = (45_000, 54_000)
  return config
