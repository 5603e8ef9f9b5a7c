"""Converts COCO-pretrained Mask R-CNN weights into a maskprop_jax parameter directory.

    python -m maskprop_jax.convert torchvision --checkpoint maskrcnn_resnet50_fpn_coco-bf2d0c1e.pth --out DIR
    python -m maskprop_jax.convert detectron2 --checkpoint model_final_f10217.pkl --out DIR

torchvision: maskrcnn_resnet50_fpn and maskrcnn_resnet50_fpn_v2 state dicts (or training checkpoints holding one
under "model"). detectron2: model-zoo Mask R-CNN FPN .pkl files (R50, R101, X101-32x8d). The variant is read off
the checkpoint; DIR then holds params/ (orbax) and model.json, loadable with
`maskprop_jax.convert.params_io.load_params(DIR, abstract_mask_rcnn)`.
"""

from __future__ import annotations

import argparse
import sys

from maskprop_jax.errors import report_errors


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m maskprop_jax.convert", description=__doc__.split("\n\n")[0])
  parser.add_argument("source", choices=("torchvision", "detectron2"), help="where the checkpoint comes from")
  parser.add_argument("--checkpoint", required=True, help=".pth (torchvision) or .pkl (detectron2) file")
  parser.add_argument("--out", required=True, help="output parameter directory")
  parser.add_argument(
    "--bn-eps", type=float, default=None,
    help="torchvision only: frozen batch-norm epsilon (default: 0.0 for FrozenBatchNorm2d v1 checkpoints, i.e. "
         "torchvision's COCO weights, else 1e-5)")
  return parser.parse_args(argv)


@report_errors
def main(argv: list[str] | None = None) -> None:
  args = parse_args(argv)
  # Imported once the flags are read: they load jax and flax, which `--help` and a flag error do without.
  from maskprop_jax.convert import detectron2, params_io, torchvision  # noqa: PLC0415

  if args.source == "torchvision":
    cfg, params, category_ids, class_names = torchvision.convert_checkpoint(args.checkpoint, args.bn_eps)
  else:
    if args.bn_eps is not None:
      print("--bn-eps applies to torchvision checkpoints only; detectron2 uses 1e-5", file=sys.stderr)
    cfg, params, category_ids, class_names = detectron2.convert_checkpoint(args.checkpoint)
  params_io.save_params(
    args.out, params, cfg, category_ids=category_ids, class_names=class_names, source=args.checkpoint)
  print(f"{cfg.variant} ({cfg.num_classes} classes) from {args.checkpoint} -> {args.out}")


if __name__ == "__main__":
  main()
