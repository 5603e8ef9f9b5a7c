"""MaskProp R101-FPN on YouTube-VIS 2019, fine-tuned from detectron2's COCO Mask R-CNN R101-FPN (3x) on 8 GPUs.

Everything but the detector is configs/ytvis.py (data, clips, schedule). Weights: detectron2's model zoo
mask_rcnn_R_101_FPN_3x checkpoint (model_final_a3ec72.pkl), converted first:

    python -m maskprop_jax.convert detectron2 --checkpoint model_final_a3ec72.pkl --out weights/r101
    python train.py --config configs/ytvis_r101.py --workdir runs/ytvis_r101
    python eval.py --config configs/ytvis_r101.py --workdir runs/ytvis_r101

detectron2's conventions come with its variant: BGR input in 0..255, stride on the 1x1 convs, aligned RoIAlign, and
masks trained on aligned targets and pasted as detectron2 pastes them (model/paste_masks.py).
Expected runtime: about 4 hours on 8 A100-class GPUs plus about 25 minutes of evaluation (an estimate: R101's
backbone costs about 1.4x R50's; not measured, no GPU was available to this project).
"""

from configs import ytvis


def get_config():
  config = ytvis.with_detector(ytvis.get_config(), "detectron2_R_101_FPN")
  config.model.init_from = "weights/r101"
  return config
