"""What real fluorescence images of nuclei hold besides the nuclei: unlabelled light.

Everything here adds to the dye's density before the optics blur it
(:func:`fastunet.synthetic_optics.render`), and nothing here is an object of the ground truth:

* **autofluorescence** (:func:`autofluorescence`): a textured background (the dish, the
  medium, the tissue: smooth random fields at a fine and a coarse scale), and the cytoplasm
  around each nucleus, dimly fluorescent with a grain of its own;
* **ghosts** (:func:`ghosts`): nuclei of other focal planes, so blurred that only a dim blob
  of their light is left (unlabelled, as an annotator leaves them);
* **debris** (:func:`debris`): small irregular particles with sharp edges, dim or bright;
* **fibers**: thin curved threads (lint, scratches), a pixel wide, tens of pixels long;
* **specks**: bright point sources (dye precipitate, dust) that the PSF alone shapes.

Each effect draws random numbers only when it is switched on (see
:mod:`fastunet.synthetic_optics`).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

__all__ = ["smooth_noise", "autofluorescence", "ghosts", "debris", "clutter"]


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ``sigma``."""
    field = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return field / max(float(field.std()), 1e-6)


def autofluorescence(rng: np.random.Generator, labels: np.ndarray, level: float, cytoplasm: float,
                     radius: float) -> np.ndarray:
    """A textured background of mean ``level`` plus cytoplasm of mean ``cytoplasm`` around each
    nucleus (relative to a typical nucleus' brightness), reaching 0.4-1.0 ``radius`` beyond it."""
    shape = labels.shape
    out = np.zeros(shape, np.float32)
    if level > 0:
        texture = 1.0 + 0.5 * smooth_noise(rng, shape, 1.5) + 0.35 * smooth_noise(rng, shape, max(4.0, radius))
        out += np.float32(level) * np.clip(texture, 0.0, None)
    if cytoplasm > 0 and labels.any():
        reach = float(rng.uniform(0.4, 1.0)) * radius
        distance = ndi.distance_transform_edt(labels == 0).astype(np.float32)
        # a soft edge 1.5 px wide at ``reach`` from the nearest nucleus, uneven along its length
        edge = np.float32(reach) * (1.0 + 0.3 * smooth_noise(rng, shape, max(2.0, 0.5 * radius)))
        with np.errstate(over="ignore"):  # far from every nucleus exp overflows to inf: body 0, as meant
            body = 1.0 / (1.0 + np.exp((distance - edge) / np.float32(1.5)))
        grain = np.clip(1.0 + 0.5 * smooth_noise(rng, shape, 1.2), 0.0, None)
        out += np.float32(cytoplasm) * body * grain * (labels == 0)
    return out


def ghosts(rng: np.random.Generator, shape: tuple[int, int], count: int, radius: float) -> np.ndarray:
    """``count`` out-of-focus nuclei: Gaussian blobs of width ``radius`` and peak 0.05-0.3."""
    if count <= 0:
        return np.zeros(shape, np.float32)
    field = np.zeros(shape, np.float32)
    ys = rng.integers(0, shape[0], count)
    xs = rng.integers(0, shape[1], count)
    sigma = radius
    np.add.at(field, (ys, xs), rng.uniform(0.05, 0.3, count).astype(np.float32) * np.float32(2 * np.pi * sigma**2))
    return ndi.gaussian_filter(field, sigma, mode="wrap")


def debris(rng: np.random.Generator, shape: tuple[int, int], count: int, radius: float) -> np.ndarray:
    """``count`` irregular particles of 1.5 to ``0.2 radius`` px (at least 2.5), flat, sharp-edged,
    0.3-3x a nucleus' brightness."""
    field = np.zeros(shape, np.float32)
    if count <= 0:
        return field
    height, width = shape
    rough = smooth_noise(rng, shape, 1.2)
    sizes = rng.uniform(1.5, max(2.5, 0.2 * radius), count)
    levels = np.exp(rng.uniform(np.log(0.3), np.log(3.0), count)).astype(np.float32)
    for cy, cx, r, level in zip(rng.uniform(0, height, count), rng.uniform(0, width, count), sizes, levels):
        reach = int(np.ceil(1.6 * r)) + 1
        y0, y1 = max(int(cy) - reach, 0), min(int(cy) + reach + 1, height)
        x0, x1 = max(int(cx) - reach, 0), min(int(cx) + reach + 1, width)
        yy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
        xx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
        inside = np.sqrt(yy**2 + xx**2) / np.float32(r) < 1.0 + 0.45 * rough[y0:y1, x0:x1]
        window = field[y0:y1, x0:x1]
        np.maximum(window, np.where(inside, level, np.float32(0)), out=window)
    return field


def _fibers(rng: np.random.Generator, shape: tuple[int, int], count: int, radius: float) -> np.ndarray:
    """``count`` threads: random walks of 1 px steps whose heading drifts, 10 to ``6 radius`` px long."""
    field = np.zeros(shape, np.float32)
    for _ in range(count):
        length = int(rng.uniform(10.0, max(12.0, 6.0 * radius)))
        heading = rng.uniform(0, 2 * np.pi) + np.cumsum(rng.normal(0.0, 0.12, length))
        y = rng.uniform(0, shape[0]) + np.cumsum(np.sin(heading))
        x = rng.uniform(0, shape[1]) + np.cumsum(np.cos(heading))
        keep = (y >= 0) & (y < shape[0] - 0.5) & (x >= 0) & (x < shape[1] - 0.5)
        level = np.float32(np.exp(rng.uniform(np.log(0.3), np.log(2.0))))
        field[np.rint(y[keep]).astype(np.intp), np.rint(x[keep]).astype(np.intp)] = level
    return field


def _specks(rng: np.random.Generator, shape: tuple[int, int], count: int, psf_sigma: float) -> np.ndarray:
    """``count`` point sources whose peak after the PSF is 0.5-6x a nucleus' brightness."""
    field = np.zeros(shape, np.float32)
    if count:
        ys, xs = rng.integers(0, shape[0], count), rng.integers(0, shape[1], count)
        peak = np.exp(rng.uniform(np.log(0.5), np.log(6.0), count)).astype(np.float32)
        np.add.at(field, (ys, xs), peak * np.float32(2 * np.pi * max(psf_sigma, 0.5) ** 2))
    return field


def clutter(rng: np.random.Generator, labels: np.ndarray, optics, radius: float) -> np.ndarray | None:
    """All the unlabelled light of :class:`~fastunet.synthetic_optics.Optics` (None when there is none).

    The counts of ghosts are per nucleus of the image, those of debris, fibers and specks per
    100 x 100 px.
    """
    shape = labels.shape
    per_area = shape[0] * shape[1] / 1e4
    parts = []
    if optics.autofluorescence > 0 or optics.cytoplasm > 0:
        parts.append(autofluorescence(rng, labels, optics.autofluorescence, optics.cytoplasm, radius))
    if optics.ghosts > 0:
        nuclei = int(labels.max())
        parts.append(ghosts(rng, shape, int(rng.poisson(optics.ghosts * max(nuclei, 1))), radius))
    if optics.debris > 0:
        parts.append(debris(rng, shape, int(rng.poisson(optics.debris * per_area)), radius))
    if optics.fibers > 0:
        parts.append(_fibers(rng, shape, int(rng.poisson(optics.fibers * per_area)), radius))
    if optics.specks > 0:
        parts.append(_specks(rng, shape, int(rng.poisson(optics.specks * per_area)), optics.psf_sigma))
    return sum(parts[1:], parts[0]) if parts else None
