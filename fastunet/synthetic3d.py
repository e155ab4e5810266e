"""Synthetic 3D volumes of nuclei with instance labels: ellipsoids in a stack, seen in 3D.

:func:`fastunet.synthetic.synthetic_volume` cuts ellipsoids plane by plane and gives each
plane the 2D microscope; here the microscope is three-dimensional, as a confocal or
light-sheet stack is:

* **objects**: the ellipsoids of :mod:`fastunet.synthetic` (sizes, elongation, brightness, dim
  nuclei, irregular outlines, touching clusters: :class:`fastunet.synthetic.Shapes`), placed
  in a volume ``Z * z_step`` pixels deep; each voxel goes to the object of smallest
  normalized distance, so touching nuclei share a face; an object is one 6-connected piece
  of at least ``min_volume`` voxels;
* **stain**: :func:`fastunet.synthetic_optics.stain` (thickness profile, chromatin texture,
  foci, nucleoli), in 3D;
* **optics**: an anisotropic Gaussian point-spread function (``psf_sigma`` in the plane,
  ``psf_sigma_z`` along Z, in pixels: the axial blur of a microscope is 2-4x the lateral
  one), optional out-of-focus haze, a smooth background, and a **z-dependent attenuation**:
  deeper planes lose a fraction ``attenuation`` of their signal by the bottom of the stack
  (scattering and absorption);
* **camera**: Poisson shot noise, read noise, offset and bit depth
  (:func:`fastunet.synthetic_optics.finish`).

Named styles (:data:`STYLES_3D`) extend the 2D styles' optics in Z; :func:`style_volume`
draws one volume of a style. The default 3D model trains on the styles not held out.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from .instances import relabel_sequential
from .synthetic import Shapes, _keep_largest_pieces, _place_objects
from .synthetic_optics import Optics, background, finish, stain

__all__ = ["synthetic_nuclei_3d", "Style3D", "STYLES_3D", "style_volume", "style_names_3d"]


def _rasterize(objects, shape: tuple[int, int, int], z_step: float) -> tuple[np.ndarray, np.ndarray]:
    """Labels (object index + 1) and the normalized squared distance ``q`` (below 1 inside)
    of ellipsoids in a ``(Z, H, W)`` volume whose planes are ``z_step`` pixels apart."""
    depth, height, width = shape
    labels = np.zeros(shape, np.int32)
    best = np.full(shape, np.inf, np.float32)
    for k in range(len(objects)):
        a, b, c = (float(v) for v in (objects.a[k], objects.b[k], objects.c[k]))
        cz, cy, cx, phi = (float(v) for v in (objects.cz[k], objects.cy[k], objects.cx[k], objects.phi[k]))
        r = max(a, b) * (1.0 + objects.amp[k].sum()) + 1
        box = (max(int((cz - c) / z_step), 0), min(int((cz + c) / z_step) + 2, depth),
               max(int(cy - r), 0), min(int(cy + r) + 2, height), max(int(cx - r), 0), min(int(cx + r) + 2, width))
        z0, z1, y0, y1, x0, x1 = box
        if z0 >= z1 or y0 >= y1 or x0 >= x1:
            continue
        zz = (np.arange(z0, z1, dtype=np.float32) * np.float32(z_step) - np.float32(cz))[:, None, None]
        yy = np.arange(y0, y1, dtype=np.float32)[None, :, None] - np.float32(cy)
        xx = np.arange(x0, x1, dtype=np.float32)[None, None, :] - np.float32(cx)
        cos, sin = np.float32(np.cos(phi)), np.float32(np.sin(phi))
        u, v = xx * cos + yy * sin, -xx * sin + yy * cos
        q = (u / np.float32(a)) ** 2 + (v / np.float32(b)) ** 2
        if objects.amp[k].any():  # an irregular outline: the radial harmonics of the 2D generator
            theta = np.arctan2(v / np.float32(b), u / np.float32(a))
            outline = np.ones_like(theta)
            for j, (amp, phase) in enumerate(zip(objects.amp[k], objects.phase[k])):
                outline += np.float32(amp) * np.cos((j + 2) * theta + np.float32(phase))
            q = q / np.maximum(outline, np.float32(0.3)) ** 2
        q = q + (zz / np.float32(c)) ** 2
        window = best[z0:z1, y0:y1, x0:x1]
        claim = (q < 1.0) & (q < window)
        window[claim] = q[claim]
        labels[z0:z1, y0:y1, x0:x1][claim] = k + 1
    return labels, best


def _clean(labels: np.ndarray, min_volume: int) -> np.ndarray:
    """Each object's largest 6-connected piece, objects of fewer than ``min_volume`` voxels dropped."""
    labels = _keep_largest_pieces(labels)  # face connectivity in 3D as in 2D
    sizes = np.bincount(labels.ravel())
    labels[(sizes < min_volume)[labels] & (labels > 0)] = 0
    return labels


def synthetic_nuclei_3d(
    shape: tuple[int, int, int] = (24, 128, 128),
    *,
    seed: int | None = None,
    rng: np.random.Generator | None = None,
    z_step: float = 2.0,
    psf_sigma_z: float = 3.0,
    attenuation: float = 0.0,
    n_objects: int | None = None,
    density: float = 200.0,
    min_volume: int = 60,
    dtype: str = "float32",
    **options,
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic 3D stack of nuclei and its instance labels.

    Parameters
    ----------
    shape : (Z, H, W)
        Volume size in voxels.
    seed, rng : int or numpy.random.Generator, optional
        Source of randomness (one or the other).
    z_step : float
        Distance between planes in pixels (the voxel is ``z_step x 1 x 1`` pixels).
    psf_sigma_z : float
        Axial standard deviation of the Gaussian point-spread function, in pixels.
    attenuation : float
        Fraction (0..1) of the signal lost at the bottom plane relative to the top one.
    n_objects : int, optional
        Nuclei to draw; by default ``density`` per 100 x 100 x 100 cubic pixels.
    min_volume : int
        Objects (or remnants cut by the border) of fewer voxels are dropped.
    dtype : {"float32", "uint16", "uint12", "uint8"}
    **options
        Those of :class:`fastunet.synthetic.Shapes` (``radius``, ``aspect``, ``touching``,
        ``irregularity``, ...) and :class:`fastunet.synthetic_optics.Optics` (``photons``,
        ``psf_sigma``, ``background_level``, ``texture``, ``haze``, ...). Default radius 5-9
        px: nuclei about 10-18 px across.

    Returns
    -------
    image : ndarray (Z, H, W)
    instances : ndarray (Z, H, W), int32
        0 background, objects 1..n, each one 6-connected piece; touching nuclei share a face.
    """
    unknown = sorted(set(options) - set(Shapes.__dataclass_fields__) - set(Optics.__dataclass_fields__))
    if unknown:
        raise TypeError(f"synthetic_nuclei_3d() got unexpected keyword argument(s) {', '.join(unknown)}.")
    options = {"radius": (5.0, 9.0), **options}
    shapes = Shapes(**{k: v for k, v in options.items() if k in Shapes.__dataclass_fields__})
    optics = Optics(**{k: v for k, v in options.items() if k in Optics.__dataclass_fields__})
    depth, height, width = (int(n) for n in shape)
    if min(depth, height, width) < 1 or len(shape) != 3:
        raise ValueError(f"Expected a shape (Z, H, W) of positive integers; got {shape!r}.")
    if not (z_step > 0 and psf_sigma_z > 0 and 0.0 <= attenuation < 1.0):
        raise ValueError(f"Expected z_step > 0, psf_sigma_z > 0 and 0 <= attenuation < 1; got {z_step}, "
                         f"{psf_sigma_z}, {attenuation}.")
    gen = rng if rng is not None else np.random.default_rng(seed)
    extent = max((depth - 1) * z_step, 1e-6)
    n = int(n_objects) if n_objects is not None else int(round(density * height * width * depth * z_step / 1e6))
    objects = _place_objects(gen, height, width, extent, n, shapes)
    labels, q = _rasterize(objects, (depth, height, width), z_step)
    labels = _clean(labels, min_volume)
    brightness = np.concatenate([[0.0], objects.brightness]).astype(np.float32)
    signal = stain(gen, labels, q, brightness, optics, float(np.mean(shapes.radius)))
    psf = (psf_sigma_z / z_step, optics.psf_sigma, optics.psf_sigma)
    expected = ndi.gaussian_filter(signal, psf)
    if optics.haze > 0:  # light from out of focus: the nuclei blurred far more
        wide = 3.0 * float(np.mean(shapes.radius))
        expected = expected + optics.haze * ndi.gaussian_filter(signal, ((wide + psf_sigma_z) / z_step, wide, wide))
    if attenuation > 0:
        fall = (1.0 - attenuation) ** (np.arange(depth, dtype=np.float32) / max(depth - 1, 1))
        expected = expected * fall[:, None, None].astype(np.float32)
    expected = expected + optics.background_level * background(gen, height, width)[None]
    counts = gen.poisson(np.clip(optics.photons * expected, 0.0, None)).astype(np.float32)
    image = counts + gen.normal(optics.camera_offset, optics.read_noise, counts.shape).astype(np.float32)
    return finish(image, dtype), relabel_sequential(labels, dtype=np.int32)


@dataclass(frozen=True)
class Style3D:
    """A named kind of 3D stack: fixed options of :func:`synthetic_nuclei_3d` and the ranges
    some of them are drawn from, per volume."""

    name: str
    description: str
    options: dict = field(default_factory=dict)
    photons: tuple[float, float] = (150.0, 600.0)
    held_out: bool = False


STYLES_3D: dict[str, Style3D] = {s.name: s for s in (
    Style3D("confocal", "point-scanning confocal: Z step 2 px, axial PSF 2.5 px, 30 % attenuation with depth",
            {"z_step": 2.0, "psf_sigma": 1.0, "psf_sigma_z": 2.5, "attenuation": 0.3, "read_noise": 2.0,
             "background_level": 0.05, "texture": 0.25, "touching": 0.6}, (120.0, 400.0)),
    Style3D("lightsheet", "light-sheet: Z step 1.5 px, thin sheet (axial PSF 2 px), bright, little attenuation",
            {"z_step": 1.5, "psf_sigma": 1.2, "psf_sigma_z": 2.0, "attenuation": 0.1, "read_noise": 3.0,
             "background_level": 0.08, "texture": 0.3, "foci": 0.3, "touching": 0.6}, (300.0, 900.0)),
    Style3D("widefield", "widefield stack: Z step 3 px, long axial PSF (5 px), out-of-focus haze",
            {"z_step": 3.0, "psf_sigma": 1.5, "psf_sigma_z": 5.0, "haze": 0.3, "attenuation": 0.15,
             "read_noise": 3.0, "background_level": 0.1, "touching": 0.6}, (200.0, 600.0)),
    Style3D("deep", "held out: a dim, deep confocal stack (60 % attenuation, few photons, nucleoli)",
            {"z_step": 2.0, "psf_sigma": 1.2, "psf_sigma_z": 3.0, "attenuation": 0.6, "read_noise": 4.0,
             "background_level": 0.1, "nucleoli": 0.5, "touching": 0.7}, (50.0, 150.0), held_out=True),
)}


def style_names_3d(*, held_out: bool | None = None) -> list[str]:
    """The 3D style names (only the held-out ones, or only the training ones, when asked)."""
    return [n for n, s in STYLES_3D.items() if held_out is None or s.held_out == held_out]


def style_volume(style: str | Style3D, shape: tuple[int, int, int] = (24, 128, 128), *,
                 seed: int, **overrides) -> tuple[np.ndarray, np.ndarray, float]:
    """One volume of a style: ``(image, instances, z_step)``; the photons drawn log-uniformly
    in the style's range from ``seed``; ``overrides`` replace the style's options."""
    if isinstance(style, str):
        if style not in STYLES_3D:
            raise ValueError(f"Unknown 3D style {style!r}; expected one of {', '.join(STYLES_3D)}.")
        style = STYLES_3D[style]
    rng = np.random.default_rng(seed)
    lo, hi = style.photons
    options = {**style.options, "photons": float(np.exp(rng.uniform(np.log(lo), np.log(hi)))), **overrides}
    image, labels = synthetic_nuclei_3d(shape, rng=rng, dtype="uint16", **options)
    return image, labels, float(options["z_step"])
