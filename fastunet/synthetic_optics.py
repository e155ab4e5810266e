"""How the synthetic nuclei of :mod:`fastunet.synthetic` look through a widefield microscope.

From a label image and each object's brightness to camera counts, for one plane:

* **stain** (:func:`stain`): a projected-thickness profile (bright middle, dim rim), a smooth
  random chromatin texture of a given grain, optionally bright chromatin foci and dark
  nucleoli;
* **optics** (:func:`render`): Gaussian PSF blur, optional out-of-focus haze (the nuclei
  blurred far more, as light from other planes), a smooth background with a gradient, and an
  uneven illumination (vignetting) multiplying everything;
* **unlabelled light** (:mod:`fastunet.synthetic_clutter`): autofluorescent textured
  background and cytoplasm, out-of-focus ghosts of other planes, debris, fibers, bright specks;
  nuclei out of focus (``defocused``) blurred more than the others;
* **camera**: Poisson shot noise, Gaussian read noise, a constant offset, optionally column
  and row pattern noise, hot pixels and saturation (the brightest nuclei clipped), and the bit
  depth of the file (:func:`finish`: 8-bit exports, 12-bit cameras in uint16, 16-bit, float).

Every optional effect draws random numbers only when it is switched on, so the defaults give
the same image for the same seed as before the effects existed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .synthetic_clutter import clutter, smooth_noise

__all__ = ["DTYPES", "Optics", "background", "finish", "render"]

DTYPES = ("float32", "uint16", "uint12", "uint8")


@dataclass(frozen=True)
class Optics:
    """Stain, microscope and camera settings of one synthetic image (see :func:`render`)."""

    photons: float = 300.0
    background_level: float = 0.08
    psf_sigma: float = 1.5
    read_noise: float = 3.0
    camera_offset: float = 100.0
    texture: float = 0.25
    texture_scale: float = 1.5
    foci: float = 0.0
    nucleoli: float = 0.0
    illumination: float = 0.0
    haze: float = 0.0
    autofluorescence: float = 0.0
    cytoplasm: float = 0.0
    ghosts: float = 0.0
    debris: float = 0.0
    fibers: float = 0.0
    specks: float = 0.0
    hot_pixels: float = 0.0
    pattern_noise: float = 0.0
    saturation: float = 0.0

    def __post_init__(self) -> None:
        for name in ("photons", "psf_sigma", "texture_scale"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive; got {getattr(self, name)}.")
        for name in ("background_level", "read_noise", "camera_offset", "texture", "foci", "haze", "autofluorescence",
                     "cytoplasm", "ghosts", "debris", "fibers", "specks", "pattern_noise"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}.")
        if not 0.0 <= self.hot_pixels <= 0.01:
            raise ValueError(f"hot_pixels must lie in [0, 0.01] (a fraction of the pixels); got {self.hot_pixels}.")
        if not 0.0 <= self.saturation < 1.0:
            raise ValueError(f"saturation must lie in [0, 1) (a fraction of the nuclei); got {self.saturation}.")
        for name in ("nucleoli", "illumination"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]; got {getattr(self, name)}.")


def _spots(rng: np.random.Generator, shape: tuple[int, int], per_pixel: float, sigma: float) -> np.ndarray:
    """Gaussian spots of width ``sigma`` at random points (``per_pixel`` of them per pixel), peak 1."""
    points = (rng.random(shape) < per_pixel).astype(np.float32)
    return ndi.gaussian_filter(points, sigma, mode="wrap") * np.float32(2 * np.pi * sigma**2)


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth background: a linear gradient plus a coarse random field (upsampled, cheap)."""
    gy, gx = rng.normal(0.0, 0.5, 2)
    yy = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]
    xx = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
    coarse = rng.normal(0.0, 0.3, (4, 4)).astype(np.float32)
    blobs = ndi.zoom(coarse, (height / 4, width / 4), order=3, mode="nearest", grid_mode=True)[:height, :width]
    return np.clip(1.0 + gy * yy + gx * xx + blobs, 0.2, None)


def _illumination(rng: np.random.Generator, shape: tuple[int, int], strength: float) -> np.ndarray:
    """Vignetting: 1 at a random point near the middle, falling to ``1 - strength`` at the far corner."""
    height, width = shape
    cy, cx = rng.uniform(0.3, 0.7, 2) * (height, width)
    yy = (np.arange(height, dtype=np.float32)[:, None] - np.float32(cy)) / np.float32(max(height, width))
    xx = (np.arange(width, dtype=np.float32)[None, :] - np.float32(cx)) / np.float32(max(height, width))
    r2 = yy**2 + xx**2
    return 1.0 - np.float32(strength) * r2 / max(float(r2.max()), 1e-6)


def stain(rng: np.random.Generator, labels: np.ndarray, q: np.ndarray, brightness: np.ndarray, optics: Optics,
          radius: float) -> np.ndarray:
    """The dye's density per pixel: thickness profile x chromatin texture x brightness.

    ``q`` is each pixel's normalised squared distance from its object's centre (below 1
    inside), ``brightness`` the brightness per label (index 0 is the background, 0), ``radius``
    the typical object radius (sets the size of the nucleoli).
    """
    inside = labels > 0
    # Projected thickness of an ellipsoid is proportional to sqrt(1 - q): bright middle, dim rim.
    profile = np.zeros(labels.shape, np.float32)
    profile[inside] = 0.35 + 0.65 * np.sqrt(np.clip(1.0 - q[inside], 0.0, 1.0))
    fine, coarse = optics.texture_scale, optics.texture_scale * 4.0 / 1.5
    chromatin = 1.0 + optics.texture * (0.7 * smooth_noise(rng, labels.shape, fine)
                                        + 0.3 * smooth_noise(rng, labels.shape, coarse))
    if optics.foci > 0:  # bright heterochromatin foci, about one per 40 px^2
        chromatin = chromatin * (1.0 + optics.foci * _spots(rng, labels.shape, 1 / 40, 0.8))
    if optics.nucleoli > 0:  # dark nucleoli, about two per nucleus
        sigma = max(0.8, 0.18 * radius)
        holes = _spots(rng, labels.shape, 2.0 / (np.pi * radius**2), sigma)
        chromatin = chromatin * np.clip(1.0 - optics.nucleoli * holes, 0.05, None)
    return profile * np.clip(chromatin, 0.2, None) * brightness[labels]


def render(rng: np.random.Generator, labels: np.ndarray, q: np.ndarray, brightness: np.ndarray,
           back: np.ndarray, optics: Optics, *, radius: float, defocused: np.ndarray | None = None) -> np.ndarray:
    """Expected photons -> blur (+ haze) -> illumination -> Poisson + read noise + offset (+ the
    camera's defects), for one plane.

    ``defocused`` (per label, index 0 the background) marks the nuclei out of focus: they are
    blurred by a further 1.5 to ``1.5 + 0.3 radius`` px.
    """
    signal = stain(rng, labels, q, brightness, optics, radius)
    extra = clutter(rng, labels, optics, radius)
    sharp = signal if extra is None else signal + extra
    if defocused is not None and defocused.any():
        away = defocused[labels]
        sharp = np.where(away, np.float32(0), sharp)
        sigma = float(np.hypot(optics.psf_sigma, rng.uniform(1.5, 1.5 + 0.3 * radius)))
        blurred = ndi.gaussian_filter(np.where(away, signal, np.float32(0)), sigma)
    else:
        blurred = 0.0
    expected = ndi.gaussian_filter(sharp, optics.psf_sigma) + blurred + optics.background_level * back
    if optics.haze > 0:
        expected = expected + optics.haze * ndi.gaussian_filter(signal, 3.0 * radius + optics.psf_sigma)
    if optics.illumination > 0:
        expected = expected * _illumination(rng, labels.shape, optics.illumination)
    counts = rng.poisson(np.clip(optics.photons * expected, 0.0, None)).astype(np.float32)
    counts = counts + rng.normal(optics.camera_offset, optics.read_noise, labels.shape).astype(np.float32)
    return _camera_defects(rng, counts, labels, optics)


def _camera_defects(rng: np.random.Generator, counts: np.ndarray, labels: np.ndarray, optics: Optics) -> np.ndarray:
    """Column and row pattern noise, hot pixels, and saturation: the counts clipped at the peak
    of all but the brightest ``saturation`` of the nuclei."""
    if optics.pattern_noise > 0:
        level = optics.pattern_noise * max(optics.read_noise, 1.0)
        counts = counts + rng.normal(0.0, level, counts.shape[1]).astype(np.float32)[None, :]
        counts = counts + rng.normal(0.0, 0.5 * level, counts.shape[0]).astype(np.float32)[:, None]
    if optics.hot_pixels > 0:
        hot = rng.random(counts.shape) < optics.hot_pixels
        size = int(hot.sum())
        counts[hot] += np.float32(optics.photons) * np.exp(rng.uniform(0.0, np.log(20.0), size)).astype(np.float32)
    if optics.saturation > 0 and labels.any():
        n = int(labels.max())
        peaks = ndi.maximum(counts, labels, np.arange(1, n + 1))
        ceiling = np.float32(np.quantile(np.asarray(peaks, np.float64), 1.0 - optics.saturation))
        counts = np.minimum(counts, ceiling)
    return counts


def finish(image: np.ndarray, dtype) -> np.ndarray:
    """Camera counts as the file stores them.

    ``float32`` the counts; ``uint16`` rounded and clipped to 0..65535; ``uint12`` a 12-bit
    camera in uint16 (clipped to 0..4095: bright nuclei may saturate); ``uint8`` an 8-bit
    export, stretched so that the 0.5th percentile maps to 10 and the 99.9th to 245.
    """
    name = str(dtype) if isinstance(dtype, str) else np.dtype(dtype).name
    if name == "uint16":
        return np.clip(np.rint(image), 0, 65535).astype(np.uint16)
    if name == "uint12":
        return np.clip(np.rint(image), 0, 4095).astype(np.uint16)
    if name == "float32":
        return image.astype(np.float32, copy=False)
    if name == "uint8":
        lo, hi = np.percentile(image, [0.5, 99.9])
        scaled = (image - lo) * (235.0 / max(hi - lo, 1e-6)) + 10.0
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype}.")
