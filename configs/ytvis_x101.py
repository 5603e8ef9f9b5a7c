"""MaskProp X101-32x8d-FPN on YouTube-VIS 2019, fine-tuned from detectron2's COCO Mask R-CNN X101 (3x) on 8 GPUs.

Everything but the detector is configs/ytvis.py (data, clips, schedule). Weights: detectron2's model zoo
mask_rcnn_X_101_32x8d_FPN_3x checkpoint (model_final_2d9806.pkl), converted first:

    python -m maskprop_jax.convert detectron2 --checkpoint model_final_2d9806.pkl --out weights/x101
    python train.py --config configs/ytvis_x101.py --workdir runs/ytvis_x101
    python eval.py --config configs/ytvis_x101.py --workdir runs/ytvis_x101

The paper's strongest model pairs this backbone with STSN features (46.6 AP); this config is MaskProp on the plain
X101 backbone. Its memory per GPU (2 clips of 3 frames) was not measured: if it does not fit, halve
train.global_batch_size and optimizer.lr together and double the step counts. Expected runtime: about 7 hours on 8
A100-class GPUs plus about 40 minutes of evaluation (an estimate: X101-32x8d costs about 2.4x R50 in detectron2's
model zoo step times; not measured, no GPU was available to this project).
"""

from configs import ytvis


def get_config():
  config = ytvis.with_detector(ytvis.get_config(), "detectron2_X_101_32x8d_FPN")
  config.model.init_from = "weights/x101"
  return config
