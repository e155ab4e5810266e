"""2-D image files other than TIFF: PNG and JPEG (Pillow, which matplotlib already needs).

A PNG or JPEG is small and decoded whole: :func:`image_info` reads its header (axes, shape,
dtype, channel names), :func:`read_image` its pixels. Gray images are ``YX``; RGB(A) images
are ``YXS`` (the samples become channels named red, green, blue(, alpha)); 16-bit PNGs keep
their 16 bits; palette images are read as their indices; bilevel images as uint8 0/1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import UserError

__all__ = ["IMAGE_FILE_SUFFIXES", "is_image_file", "image_info", "read_image"]

IMAGE_FILE_SUFFIXES = (".png", ".jpg", ".jpeg")
_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")
_GRAY = {"L": "uint8", "P": "uint8", "1": "uint8", "I;16": "uint16", "I;16B": "uint16", "I;16L": "uint16",
         "I": "int32", "F": "float32"}
_SAMPLES = {"RGB": 3, "RGBA": 4, "LA": 2}


def is_image_file(path: Path) -> bool:
    """Does the file at ``path`` start with a PNG or JPEG signature?"""
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError:
        return False
    return any(head.startswith(m) for m in _MAGIC)


def _open(path):
    from PIL import Image

    try:
        return Image.open(str(path))
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError...
        raise UserError(f"{str(path)!r} is not a readable PNG/JPEG file ({exc}); check the file.") from None


def image_info(path) -> tuple[str, tuple[int, ...], str, tuple[str, ...]]:
    """``(letters, shape, dtype, channel_names)`` of a PNG/JPEG file, from its header."""
    with _open(path) as img:
        w, h = img.size
        mode = img.mode
    if mode in _GRAY:
        return "YX", (h, w), _GRAY[mode], ()
    if mode in _SAMPLES:
        n = _SAMPLES[mode]
        names = ("gray", "alpha") if mode == "LA" else ("red", "green", "blue", "alpha")[:n]
        return "YXS", (h, w, n), "uint8", names
    raise UserError(f"{str(path)!r} is a {mode} image, which fastunet does not read; save it as a gray or RGB "
                    "PNG or TIFF.")


def read_image(path) -> np.ndarray:
    """The pixels of a PNG/JPEG file, ``(Y, X)`` or ``(Y, X, S)``, as :func:`image_info` says."""
    with _open(path) as img:
        if img.mode == "1":
            img = img.convert("L")
            return (np.asarray(img) > 0).astype(np.uint8)
        try:
            data = np.asarray(img)
        except Exception as exc:
            raise UserError(f"{str(path)!r} cannot be decoded ({exc}); the file is damaged.") from None
    if data.dtype.byteorder == ">":
        data = data.astype(data.dtype.newbyteorder("="))
    return data
