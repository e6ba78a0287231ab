"""Input images: reading a user's file, and the built-in real photographs."""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from pathlib import Path

import numpy as np
import PIL.Image

from ..errors import InputError, first_line
from ..publishing import NotARegularFile, path_kind, read_file

#: Most pixels an input image may have: 2**26 (67.1 million, "64 megapixels"; a 64 MP camera's
#: 9248x6936 photo fits). The checked header size is refused before any pixel is decoded, because
#: the pipeline turns the whole image into float32 (12 bytes per pixel) several times over before
#: resizing it (diffusers' VideoProcessor and the CLIP path's anti-aliased resize): about 3 GiB at
#: this limit. SVD needs at most 1024x576; scale larger photographs down first. PIL's own
#: decompression-bomb limit (``PIL.Image.MAX_IMAGE_PIXELS``, 89.5 million pixels, an error above
#: twice that) is higher, and is mapped to the same error.
MAX_IMAGE_PIXELS = 2**26

#: Fewest pixels per side: diffusers' anti-aliased resize to CLIP's 224x224 blurs with at least a
#: 3-tap kernel, reflect-padded by 1 pixel, which needs 2 pixels on each side (diffusers'
#: own pipeline fails on a 1-pixel side too).
MIN_IMAGE_SIDE = 2

#: File suffixes read as images from a folder (case-insensitive: ``batch --images``, ``calibrate
#: --images``): what PIL decodes and photographs come in.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def check_image_size(image: PIL.Image.Image, name: str = "the image") -> None:
    """Raise :class:`InputError` unless ``image`` (opened; it need not be decoded) has at most
    :data:`MAX_IMAGE_PIXELS` pixels and at least :data:`MIN_IMAGE_SIDE` pixels per side."""
    w, h = image.size
    if w * h > MAX_IMAGE_PIXELS:
        raise InputError(f"{name} is {w}x{h} = {w * h / 1e6:.1f} million pixels, more than svdtrt reads "
                         f"({MAX_IMAGE_PIXELS / 1e6:.1f} million); scale it down first (SVD uses at most 1024x576)")
    if min(w, h) < MIN_IMAGE_SIDE:
        raise InputError(f"{name} is {w}x{h} pixels; give an image at least {MIN_IMAGE_SIDE}x{MIN_IMAGE_SIDE} "
                         "(ideally the clip's size, e.g. 1024x576)")


def load_image(path: str | os.PathLike) -> PIL.Image.Image:
    """Read an image file as RGB (grayscale, palette and RGBA images are converted).

    The size in the file's header is checked (:func:`check_image_size`) before the pixels are
    decoded, so a decompression bomb (a small file of a huge image) costs nothing.

    Raises:
        InputError: the file is missing, unreadable, not an image, or of a size
            :func:`check_image_size` refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image '{path}' is {path_kind(path)}; give the path of a PNG or JPEG file")
    return _decode(path, str(path))


def decode_image(data: bytes, name: str) -> PIL.Image.Image:
    """Decode an image received as bytes (an upload named ``name``) as RGB, with the checks and
    one-line messages of :func:`load_image`.

    Raises:
        InputError: not an image, or of a size :func:`check_image_size` refuses.
    """
    return _decode(io.BytesIO(data), name)


def _decode(source, name: str) -> PIL.Image.Image:
    """``source`` (a path or a binary file object) as an RGB image; ``name`` is what messages call it."""
    try:
        with warnings.catch_warnings():
            # PIL warns (and goes on decoding) above its own limit: an error here, never a decode
            warnings.simplefilter("error", PIL.Image.DecompressionBombWarning)
            with PIL.Image.open(source) as image:
                check_image_size(image, f"image '{name}'")
                image.load()
                # Palette and gray-with-alpha images go through RGBA: PIL's direct conversion to RGB
                # mishandles palette transparency.
                if image.mode in ("P", "PA", "LA"):
                    return image.convert("RGBA").convert("RGB")
                return image.convert("RGB")
    except (PIL.Image.DecompressionBombError, PIL.Image.DecompressionBombWarning) as e:
        raise InputError(f"image '{name}' is too large to read ({first_line(e).split(',')[0]}); "
                         f"svdtrt reads at most {MAX_IMAGE_PIXELS / 1e6:.1f} million pixels, so scale it "
                         "down first") from None
    except PermissionError:
        raise InputError(f"image '{name}' cannot be read (permission denied)") from None
    except (PIL.UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise InputError(f"'{name}' is not a readable image ({type(e).__name__}); give a PNG or JPEG file") from None


#: The largest image list ``batch``/``tune`` read, 16 MiB (about 200,000 paths).
MAX_LIST_BYTES = 16 * 2**20


def list_images(source: Path) -> list[Path]:
    """The images of ``source`` (``batch --images``, ``tune --images``): a folder's image files (by
    :data:`IMAGE_SUFFIXES`, sorted by name, hidden files left out), or a text file listing one path
    per line (relative paths from the list's folder; blank lines and ``#`` comments skipped).

    Raises:
        InputError: ``source`` is missing, not a folder or regular file (a FIFO, a device), larger
            than :data:`MAX_LIST_BYTES`, or lists no image.
    """
    source = Path(source)
    if source.is_dir():
        images = sorted(p for p in source.iterdir()
                        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file())
        if not images:
            raise InputError(f"folder '{source}' has no image files ({', '.join(IMAGE_SUFFIXES)})")
        return images
    if not source.is_file():
        raise InputError(f"'{source}' is {path_kind(source)}; give a folder of images or a text file listing one "
                         "image per line")
    try:
        lines = read_file(source, MAX_LIST_BYTES).decode().splitlines()
    except (OSError, UnicodeDecodeError, NotARegularFile) as e:
        why = e if isinstance(e, NotARegularFile) else type(e).__name__
        raise InputError(f"cannot read the image list '{source}' ({why}); give a text file with one image path "
                         "per line") from None
    images = [source.parent / line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    if not images:
        raise InputError(f"the image list '{source}' names no image")
    return images


#: Real photographs shipped by scikit-image (``skimage.data``), used by the demo and calibration.
SAMPLE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket", "camera")


def sample_image(name: str = "astronaut") -> PIL.Image.Image:
    """A real photograph from scikit-image's sample data, as RGB.

    Raises:
        InputError: ``name`` is not in :data:`SAMPLE_IMAGES`.
    """
    from skimage import data

    if name not in SAMPLE_IMAGES:
        raise InputError(f"unknown sample image '{name}': choose from {', '.join(SAMPLE_IMAGES)}")
    return PIL.Image.fromarray(getattr(data, name)()).convert("RGB")


def image_sha256(image: PIL.Image.Image) -> str:
    """sha256 of an image's decoded RGB pixels and size (independent of the file format)."""
    h = hashlib.sha256(f"{image.width}x{image.height}:".encode())
    h.update(np.asarray(image.convert("RGB"), dtype=np.uint8).tobytes())
    return h.hexdigest()
