"""Times linking of clip tracks on long videos: `python -m maskprop_jax.linking.bench`.

Builds clip tracks as a perfect propagation would give them (10 objects moving on smooth paths, clips centred at
every frame, T=6) at a few mask resolutions, and prints the time to link them into video tracks: with masks on the
mask grid only, and with a 28x28 box mask on every frame of every clip track as well (what a propagation refiner
and Mask R-CNN's center masks give; linking pastes them at the video's resolution, frames.Binarizer.compose).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from maskprop_jax import linking


BOX_MASK_SIZE = 28


def make_clips(num_frames, num_objects, half_window, mask_hw, seed=0, video_hw=None):
  """Clip tracks of soft discs on the mask grid; with video_hw, each frame of each also as a BoxMask (the disc on
  28x28 cells over its box, in the video's pixels)."""
  rng = np.random.default_rng(seed)
  h, w = mask_hw
  yy, xx = np.mgrid[:h, :w].astype(np.float32)
  start_y, start_x = rng.uniform(0.2, 0.8, num_objects) * h, rng.uniform(0.2, 0.8, num_objects) * w
  speed, radius = rng.uniform(0.02, 0.1, num_objects), rng.uniform(0.05, 0.15, num_objects) * min(h, w)

  def centre(obj, frame):
    return (start_y[obj] + 0.2 * h * np.sin(speed[obj] * frame), start_x[obj] + 0.2 * w * np.cos(speed[obj] * frame))

  def soft_disc(obj, frame):
    cy, cx = centre(obj, frame)
    dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    return np.clip(radius[obj] + 0.5 - dist, 0.0, 1.0).astype(np.float32)  # soft rim one pixel wide

  def box_mask(obj, frame):
    cy, cx = centre(obj, frame)
    reach = radius[obj] + 1.0
    cells = (np.arange(BOX_MASK_SIZE) + 0.5) / BOX_MASK_SIZE * 2 * reach - reach  # cell centres about the centre
    dist = np.sqrt(cells[:, None] ** 2 + cells[None, :] ** 2)
    scale_y, scale_x = video_hw[0] / h, video_hw[1] / w
    box = np.array([(cx - reach) * scale_x, (cy - reach) * scale_y, (cx + reach) * scale_x, (cy + reach) * scale_y],
                   np.float32)
    return linking.BoxMask(np.clip(radius[obj] + 0.5 - dist, 0.0, 1.0).astype(np.float32), box, aligned=True)

  masks = np.stack([np.stack([soft_disc(o, f) for f in range(num_frames)]) for o in range(num_objects)])
  boxes = [[box_mask(o, f) for f in range(num_frames)] for o in range(num_objects)] if video_hw else None
  probs = np.eye(num_objects, dtype=np.float32)
  clips = []
  for center in range(num_frames):
    start, stop = max(0, center - half_window), min(num_frames, center + half_window + 1)
    clips.append([linking.ClipTrack(start, masks[o, start:stop], probs[o], center,
                                    {f: boxes[o][f] for f in range(start, stop)} if boxes else {})
                  for o in rng.permutation(num_objects)])
  return clips


def main():
  parser = argparse.ArgumentParser(prog="python -m maskprop_jax.linking.bench", description=__doc__.split("\n")[0])
  parser.add_argument("--frames", type=int, default=1000, help="frames of the video (default: %(default)s)")
  parser.add_argument("--objects", type=int, default=10, help="objects, one track each (default: %(default)s)")
  parser.add_argument("--half-window", type=int, default=6,
                      help="T: a clip spans 2T+1 frames (default: %(default)s)")
  args = parser.parse_args()
  print(f"linking {args.frames} frames, {args.objects} tracks, T={args.half_window}, clips at every frame")
  print(f"{'mask h x w':>12} {'video h x w':>12} {'box masks':>9} {'seconds':>8} {'frames/s':>9} {'tracks':>6}")
  # (mask resolution the model predicts at, video resolution the results are written at)
  for mask_hw, video_hw in [((32, 48), (128, 192)), ((45, 80), (360, 640)), ((90, 160), (360, 640)),
                            ((90, 160), (720, 1280))]:
    for with_boxes in (False, True):
      clips = make_clips(args.frames, args.objects, args.half_window, mask_hw,
                         video_hw=video_hw if with_boxes else None)
      t0 = time.perf_counter()
      tracks = linking.link_clip_tracks(clips, args.frames, video_hw, num_classes=args.objects)
      seconds = time.perf_counter() - t0
      print(f"{'%dx%d' % mask_hw:>12} {'%dx%d' % video_hw:>12} {'yes' if with_boxes else 'no':>9} {seconds:8.2f} "
            f"{args.frames / seconds:9.0f} {len(tracks):6d}")


if __name__ == "__main__":
  main()
