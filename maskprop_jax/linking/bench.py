"""Times linking of clip tracks on long videos: `python -m maskprop_jax.linking.bench`.

Builds clip tracks as a perfect propagation would give them (10 objects moving on smooth paths, clips centred at
every frame, T=6) at a few mask resolutions, and prints the time to link them into video tracks.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from maskprop_jax import linking


def make_clips(num_frames, num_objects, half_window, mask_hw, seed=0):
  rng = np.random.default_rng(seed)
  h, w = mask_hw
  yy, xx = np.mgrid[:h, :w].astype(np.float32)
  start_y, start_x = rng.uniform(0.2, 0.8, num_objects) * h, rng.uniform(0.2, 0.8, num_objects) * w
  speed, radius = rng.uniform(0.02, 0.1, num_objects), rng.uniform(0.05, 0.15, num_objects) * min(h, w)

  def soft_disc(obj, frame):
    cy = start_y[obj] + 0.2 * h * np.sin(speed[obj] * frame)
    cx = start_x[obj] + 0.2 * w * np.cos(speed[obj] * frame)
    dist = np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
    return np.clip(radius[obj] + 0.5 - dist, 0.0, 1.0).astype(np.float32)  # soft rim one pixel wide

  masks = np.stack([np.stack([soft_disc(o, f) for f in range(num_frames)]) for o in range(num_objects)])
  probs = np.eye(num_objects, dtype=np.float32)
  clips = []
  for center in range(num_frames):
    start, stop = max(0, center - half_window), min(num_frames, center + half_window + 1)
    clips.append([linking.ClipTrack(start, masks[o, start:stop], probs[o], center)
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
  print(f"{'mask h x w':>12} {'video h x w':>12} {'seconds':>8} {'frames/s':>9} {'tracks':>6}")
  # (mask resolution the model predicts at, video resolution the results are written at)
  for mask_hw, video_hw in [((32, 48), (128, 192)), ((45, 80), (360, 640)), ((90, 160), (360, 640))]:
    clips = make_clips(args.frames, args.objects, args.half_window, mask_hw)
    t0 = time.perf_counter()
    tracks = linking.link_clip_tracks(clips, args.frames, video_hw, num_classes=args.objects)
    seconds = time.perf_counter() - t0
    print(f"{'%dx%d' % mask_hw:>12} {'%dx%d' % video_hw:>12} {seconds:8.2f} {args.frames / seconds:9.0f} "
          f"{len(tracks):6d}")


if __name__ == "__main__":
  main()
