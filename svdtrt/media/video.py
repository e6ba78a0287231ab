"""Writing clips through PyAV in the format their file name says (H.264 ``.mp4``, VP9 ``.webm``,
``.gif``), and raw float frames as ``.npy``.

These write the file they are given; callers that publish outputs write to the part file of a
:class:`svdtrt.publishing.OutputFile`, so a clip appears complete or not at all.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..publishing import FileKind

#: Clip formats by file extension: (PyAV container, codec, pixel format, codec options).
#: yuv420p is what players expect of H.264 and VP9; GIF takes 8-bit colour (rgb8: 3-3-2 bits).
#: VP9 with ``b:v 0`` is constant-quality mode, at ``crf`` 30 (FFmpeg's VP9 guide's suggestion for
#: 1080p and below, https://trac.ffmpeg.org/wiki/Encode/VP9 as cited by PyAV's examples).
CLIP_FORMATS: dict[str, tuple[str, str, str, dict[str, str]]] = {
    ".mp4": ("mp4", "libx264", "yuv420p", {"crf": "17"}),
    ".webm": ("webm", "libvpx-vp9", "yuv420p", {"crf": "30", "b:v": "0"}),
    ".gif": ("gif", "gif", "rgb8", {}),
}

#: The one file format of ``--save-frames``.
FRAMES_SUFFIX = ".npy"

#: A clip, as ``--force`` recognises one it may replace: an ISO media file (``ftyp`` box at byte
#: 4: ISO/IEC 14496-12), a WebM/Matroska file (the EBML magic 1A 45 DF A3) or a GIF (GIF87a/GIF89a).
CLIP_FILE = FileKind.starting_with("a clip", (4, b"ftyp"), (0, b"\x1a\x45\xdf\xa3"), (0, b"GIF87a"),
                                   (0, b"GIF89a"))
#: Saved frames: a NumPy ``.npy`` file (its magic string, NumPy's format spec ``numpy.lib.format``).
FRAMES_FILE = FileKind.starting_with("saved frames", (0, b"\x93NUMPY"))


def check_clip_path(path: str | os.PathLike, option: str = "--out") -> str:
    """The clip format that ``path``'s extension names (a key of :data:`CLIP_FORMATS`).

    Raises:
        InputError: any other extension (one line naming the formats).
    """
    suffix = Path(path).suffix.lower()
    if suffix not in CLIP_FORMATS:
        raise InputError(f"{option} '{path}': svdtrt writes clips as {', '.join(CLIP_FORMATS)}; "
                         f"end the file name with one of them")
    return suffix


def check_frames_path(path: str | os.PathLike, option: str = "--save-frames") -> None:
    """Raises InputError unless ``path`` ends in ``.npy`` (frames are saved as a NumPy array only)."""
    if Path(path).suffix.lower() != FRAMES_SUFFIX:
        raise InputError(f"{option} '{path}': frames are saved as a NumPy array; end the file name with "
                         f"{FRAMES_SUFFIX}")


def write_clip(frames: np.ndarray, path: str | os.PathLike, fps: int = 7, suffix: str | None = None,
               options: dict[str, str] | None = None) -> None:
    """Encode ``frames`` (float32 [F, H, W, 3] in [0, 1]) at ``fps`` frames/s in the format of
    ``suffix`` (default: ``path``'s extension; :data:`CLIP_FORMATS`), with ``options`` overriding
    the format's codec options. A publisher's part file has its own name: pass the target's suffix.

    Odd heights or widths are padded by one edge pixel (4:2:0 chroma needs even sizes).

    Raises:
        InputError: an extension not in :data:`CLIP_FORMATS`.
    """
    import av

    suffix = suffix.lower() if suffix else check_clip_path(path)
    if suffix not in CLIP_FORMATS:
        raise InputError(f"no clip format '{suffix}': svdtrt writes clips as {', '.join(CLIP_FORMATS)}")
    container_format, codec, pix_fmt, defaults = CLIP_FORMATS[suffix]
    options = {**defaults, **(options or {})}
    pixels = to_uint8(frames)
    pad = ((0, 0), (0, pixels.shape[1] % 2), (0, pixels.shape[2] % 2), (0, 0))
    pixels = np.pad(pixels, pad, mode="edge")
    with av.open(str(path), mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = pixels.shape[2], pixels.shape[1]
        stream.pix_fmt = pix_fmt
        stream.options = dict(options)
        for frame in pixels:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())


def to_uint8(frames: np.ndarray) -> np.ndarray:
    """float [F, H, W, 3] in [0, 1] -> uint8, rounded to nearest."""
    return np.clip(np.rint(frames * 255.0), 0, 255).astype(np.uint8)


def write_mp4(frames: np.ndarray, path: str | os.PathLike, fps: int = 7, crf: int = 17) -> None:
    """Encode ``frames`` (float32 [F, H, W, 3] in [0, 1]) as H.264 (yuv420p) at ``fps`` frames/s."""
    write_clip(frames, path, fps, ".mp4", {"crf": str(crf)})


def read_mp4(path: str | os.PathLike) -> np.ndarray:
    """Decode an mp4 to uint8 [F, H, W, 3] (for tests and inspection)."""
    import av

    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def save_frames(frames: np.ndarray, path: str | os.PathLike) -> None:
    """Save float32 [F, H, W, 3] frames in [0, 1] as ``.npy`` (no pickle)."""
    with open(path, "wb") as f:
        np.save(f, np.asarray(frames, dtype=np.float32), allow_pickle=False)
