"""Writing clips: H.264 mp4 through PyAV, and raw float frames as ``.npy``.

These write the file they are given; callers that publish outputs write to the part file of a
:class:`svdtrt.fs.OutputFile`, so a clip appears complete or not at all.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """float [F, H, W, 3] in [0, 1] -> uint8, rounded to nearest."""
    return np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)


def write_mp4(frames: np.ndarray, path: str | os.PathLike, fps: int = 7, crf: int = 17) -> None:
    """Encode ``frames`` (float32 [F, H, W, 3] in [0, 1]) as H.264 (yuv420p) at ``fps`` frames/s.

    yuv420p needs even sizes, so an odd height or width is padded by one edge pixel.
    """
    import av

    path = Path(path)
    pixels = to_uint8(frames)
    pad = ((0, 0), (0, pixels.shape[1] % 2), (0, pixels.shape[2] % 2), (0, 0))
    pixels = np.pad(pixels, pad, mode="edge")
    with av.open(str(path), mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height = pixels.shape[2], pixels.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in pixels:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def read_mp4(path: str | os.PathLike) -> np.ndarray:
    """Decode an mp4 to uint8 [F, H, W, 3] (for tests and inspection)."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def save_frames(frames: np.ndarray, path: str | os.PathLike) -> None:
    """Save float32 [F, H, W, 3] frames in [0, 1] as ``.npy`` (no pickle)."""
    with open(path, "wb") as f:
        np.save(f, np.asarray(frames, dtype=np.float32), allow_pickle=False)
