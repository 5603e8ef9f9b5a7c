"""Mask R-CNN detector and MaskProp propagation branch as Flax NNX modules."""
