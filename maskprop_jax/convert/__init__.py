"""Converters from torchvision / detectron2 Mask R-CNN checkpoints to maskprop_jax parameters."""
