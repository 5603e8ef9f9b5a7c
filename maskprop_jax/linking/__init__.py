"""Linking clip-level tracks into video-level tracks (MaskProp, Sec. 3.3): NumPy and scipy only, no jax.

linker.py matches and merges the tracks (TrackLinker, its LinkSettings), frames.py turns a finished frame's soft
masks (on the mask grid, or on boxes: BoxMask) into the video-size RLE, iou.py is the package's one soft-IoU,
bench.py times it on long videos.
"""

from maskprop_jax.linking.frames import BoxMask
from maskprop_jax.linking.linker import ClipTrack, LinkSettings, TrackLinker, VideoTrack, link_clip_tracks

__all__ = ["BoxMask", "ClipTrack", "LinkSettings", "TrackLinker", "VideoTrack", "link_clip_tracks"]
