"""Input images: reading a user's file, and the built-in real photographs."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import PIL.Image

from .errors import InputError


def load_image(path: str | os.PathLike) -> PIL.Image.Image:
    """Read an image file as RGB (grayscale, palette and RGBA images are converted).

    Raises:
        InputError: the file is missing, unreadable, or not an image.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"image '{path}' not found; give the path of a PNG or JPEG file")
    try:
        with PIL.Image.open(path) as image:
            image.load()
            # Palette and gray-with-alpha images go through RGBA: PIL's direct conversion to RGB
            # mishandles palette transparency.
            return image.convert("RGBA").convert("RGB") if image.mode in ("P", "PA", "LA") else image.convert("RGB")
    except PermissionError:
        raise InputError(f"image '{path}' cannot be read (permission denied)") from None
    except (PIL.UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise InputError(f"'{path}' is not a readable image ({type(e).__name__}); give a PNG or JPEG file") from None


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
