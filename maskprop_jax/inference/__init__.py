"""MaskProp inference: the clip loop and video predictor (predictor.py), evaluating a model on a split and writing
its results (evaluate.py), speed figures beside torchvision's per-frame detector (speed.py), and how much the
propagation branch adds over copying masks (propagation_eval.py)."""
