"""Synthetic fluorescence-microscopy nuclei with instance labels.

The generator imitates a widefield image of stained nuclei (DAPI/Hoechst-like):

* **objects**: ellipses (2D) or ellipsoids sliced at each plane (3D) of varied size
  (semi-axes ``radius`` px), orientation and brightness, a fraction of them dim; about
  ``touching`` of them are placed against an earlier one so that they touch or overlap
  slightly, forming clusters. Where objects overlap, each pixel goes to the object whose
  normalised ellipse distance is smallest (a watershed-like split along the line where the
  two shapes meet), so touching nuclei share a border and every instance stays one
  connected piece.
* **intensity**: a projected-thickness profile (brighter in the middle, dimmer at the rim,
  as for a flattened ellipsoid), multiplied by a smooth random texture (chromatin);
* **optics and camera**: Gaussian PSF blur, a smooth background with a gradient and an
  offset, Poisson shot noise, Gaussian read noise and a camera offset.

Everything is vectorised with numpy / scipy.ndimage except one small loop over objects
that works on each object's bounding box (a 1024x1024 image with ~600 nuclei takes a
fraction of a second). :func:`fastunet.figures.save_preview` draws an image beside its labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .instances import relabel_sequential

__all__ = ["synthetic_nuclei", "synthetic_volume", "touching_pairs"]


@dataclass(frozen=True)
class _Objects:
    """Object parameters, one entry per object (arrays of equal length)."""

    cy: np.ndarray  # center row (px)
    cx: np.ndarray  # center column (px)
    cz: np.ndarray  # center plane (in units of the lateral pixel; 0 for 2D)
    a: np.ndarray  # semi-axis along the rotated row axis (px)
    b: np.ndarray  # semi-axis along the rotated column axis (px)
    c: np.ndarray  # semi-axis along z (px; inf for 2D)
    phi: np.ndarray  # orientation (rad)
    brightness: np.ndarray  # relative brightness (1 = typical nucleus)

    def __len__(self) -> int:
        return len(self.cy)

    def subset(self, keep: np.ndarray) -> "_Objects":
        return _Objects(**{k: getattr(self, k)[keep] for k in self.__dataclass_fields__})


def _rng(seed, rng) -> np.random.Generator:
    if rng is not None and seed is not None:
        raise TypeError("Pass either seed or rng, not both.")
    if rng is not None:
        if not isinstance(rng, np.random.Generator):
            raise TypeError(f"rng must be a numpy.random.Generator; got {type(rng).__name__}.")
        return rng
    return np.random.default_rng(seed)


def _check_shape(shape, ndim: int) -> tuple[int, ...]:
    try:
        shape = tuple(int(s) for s in shape)
    except TypeError:
        raise TypeError(f"Expected a shape tuple of {ndim} integers; got {shape!r}.") from None
    if len(shape) != ndim or min(shape) < 1:
        raise ValueError(f"Expected a shape of {ndim} positive integers; got {shape!r}.")
    return shape


def _radius_along(a, b, c, phi, dy, dx, dz):
    """Distance from an ellipsoid's center to its surface along the unit vector (dy, dx, dz)."""
    cos, sin = np.cos(phi), np.sin(phi)
    u = dx * cos + dy * sin
    v = -dx * sin + dy * cos
    return 1.0 / np.sqrt((u / a) ** 2 + (v / b) ** 2 + (dz / c) ** 2)


def _place_objects(
    rng: np.random.Generator,
    height: int,
    width: int,
    depth_px: float,
    n: int,
    radius: tuple[float, float],
    touching: float,
    dim_fraction: float,
) -> _Objects:
    """Draw up to ``n`` objects; a fraction ``touching`` is placed against an earlier object.

    Two objects may overlap only a little: along the line joining their centers, the
    center distance must be at least ``_MIN_GAP`` times the sum of their radii in that
    direction (so no nucleus swallows another). A candidate that breaks this is redrawn a
    few times, then skipped.
    """
    rmin, rmax = radius
    # Sizes: the major semi-axis uniform in [rmin, rmax], aspect ratio 1..1.6.
    major = rng.uniform(rmin, rmax, n)
    minor = np.maximum(major / rng.uniform(1.0, 1.6, n), rmin * 0.8)
    phi = rng.uniform(0.0, np.pi, n)
    brightness = rng.lognormal(0.0, 0.3, n)
    dim = rng.random(n) < dim_fraction
    brightness[dim] = rng.uniform(0.15, 0.35, dim.sum())
    c = np.full(n, np.inf) if depth_px <= 0 else rng.uniform(0.8, 1.2, n) * major
    center = np.zeros((n, 3))  # (y, x, z)
    placed = np.zeros(n, bool)
    attach = rng.random(n) < touching
    for i in range(n):
        for _ in range(_ATTEMPTS):
            done = np.flatnonzero(placed)
            if attach[i] and len(done):
                j = done[rng.integers(0, len(done))]
                direction = rng.normal(size=3)
                if depth_px <= 0:
                    direction[2] = 0.0
                else:
                    direction[2] *= 0.3  # mostly side by side, as nuclei in a monolayer
                direction /= np.linalg.norm(direction)
                reach = _radius_along(major[j], minor[j], c[j], phi[j], *direction)
                reach += _radius_along(major[i], minor[i], c[i], phi[i], *direction)
                # Slightly closer than edge-to-edge, so the two share a border.
                candidate = center[j] + direction * reach * rng.uniform(_MIN_GAP + 0.02, 0.97)
            else:
                candidate = np.array([
                    rng.uniform(-rmin, height + rmin),
                    rng.uniform(-rmin, width + rmin),
                    rng.uniform(-0.5 * c[i], depth_px + 0.5 * c[i]) if depth_px > 0 else 0.0,
                ])  # fmt: skip
            if _fits(candidate, i, done, center, major, minor, c, phi):
                center[i] = candidate
                placed[i] = True
                break
    objects = _Objects(
        cy=center[:, 0], cx=center[:, 1], cz=center[:, 2], a=major, b=minor, c=c, phi=phi, brightness=brightness
    )
    return objects.subset(placed)


_MIN_GAP = 0.8
_ATTEMPTS = 12


def _fits(candidate, i, done, center, major, minor, c, phi) -> bool:
    """True when object ``i`` at ``candidate`` overlaps no placed object by much."""
    if not len(done):
        return True
    delta = center[done] - candidate
    dist = np.sqrt((delta**2).sum(axis=1))
    near = dist < (major[done] + major[i]) * 1.01
    if not near.any():
        return True
    if (dist[near] < 1e-6).any():
        return False
    unit = delta[near] / dist[near, None]
    dy, dx, dz = unit[:, 0], unit[:, 1], unit[:, 2]
    k = done[near]
    reach = _radius_along(major[k], minor[k], c[k], phi[k], dy, dx, dz)
    reach = reach + _radius_along(major[i], minor[i], c[i], phi[i], dy, dx, dz)
    return bool((dist[near] >= _MIN_GAP * reach).all())


def _rasterize(objects: _Objects, height: int, width: int, z: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Label image (object index + 1, 0 = background) and the normalised squared distance.

    ``q = (u/a)^2 + (v/b)^2 (+ ((z - cz)/c)^2)`` is below 1 inside an object; each pixel goes
    to the object of smallest ``q``. Works on each object's bounding box only.
    """
    labels = np.zeros((height, width), np.int32)
    best = np.full((height, width), np.inf, np.float32)
    for k in range(len(objects)):
        dz2 = 0.0 if z is None else ((z - objects.cz[k]) / objects.c[k]) ** 2
        if dz2 >= 1.0:
            continue
        shrink = np.sqrt(1.0 - dz2)  # the ellipsoid's cross-section at this plane
        a, b = objects.a[k] * shrink, objects.b[k] * shrink
        cy, cx, phi = objects.cy[k], objects.cx[k], objects.phi[k]
        r = max(a, b) + 1
        y0, y1 = max(int(cy - r), 0), min(int(cy + r) + 2, height)
        x0, x1 = max(int(cx - r), 0), min(int(cx + r) + 2, width)
        if y0 >= y1 or x0 >= x1:
            continue
        yy = np.arange(y0, y1, dtype=np.float32)[:, None] - np.float32(cy)
        xx = np.arange(x0, x1, dtype=np.float32)[None, :] - np.float32(cx)
        cos, sin = np.float32(np.cos(phi)), np.float32(np.sin(phi))
        u = xx * cos + yy * sin
        v = -xx * sin + yy * cos
        q = (u / np.float32(a)) ** 2 + (v / np.float32(b)) ** 2
        q = q * np.float32(1.0 - dz2) + np.float32(dz2)  # back to the 3D normalised distance
        window = best[y0:y1, x0:x1]
        claim = (q < 1.0) & (q < window)
        window[claim] = q[claim]
        labels[y0:y1, x0:x1][claim] = k + 1
    return labels, best


def _keep_largest_pieces(labels: np.ndarray) -> np.ndarray:
    """Keep each label's largest 4-connected piece; stray slivers become background."""
    for index, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        own = labels[box] == index
        pieces, count = ndi.label(own)
        if count > 1:
            sizes = np.bincount(pieces.ravel())
            sizes[0] = 0
            labels[box][own & (pieces != sizes.argmax())] = 0
    return labels


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-variance Gaussian random field with correlation length ``sigma``."""
    field = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma, mode="wrap")
    return field / max(float(field.std()), 1e-6)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Smooth background: a linear gradient plus a coarse random field (upsampled, cheap)."""
    gy, gx = rng.normal(0.0, 0.5, 2)
    yy = np.linspace(-0.5, 0.5, height, dtype=np.float32)[:, None]
    xx = np.linspace(-0.5, 0.5, width, dtype=np.float32)[None, :]
    coarse = rng.normal(0.0, 0.3, (4, 4)).astype(np.float32)
    blobs = ndi.zoom(coarse, (height / 4, width / 4), order=3, mode="nearest", grid_mode=True)[:height, :width]
    return np.clip(1.0 + gy * yy + gx * xx + blobs, 0.2, None)


def _render(
    rng: np.random.Generator,
    labels: np.ndarray,
    q: np.ndarray,
    brightness: np.ndarray,
    background: np.ndarray,
    *,
    photons: float,
    background_level: float,
    psf_sigma: float,
    read_noise: float,
    camera_offset: float,
    texture: float,
) -> np.ndarray:
    """Expected photons -> blur -> Poisson + read noise + offset, for one plane."""
    inside = labels > 0
    # Projected thickness of an ellipsoid is proportional to sqrt(1 - q): bright middle, dim rim.
    profile = np.zeros(labels.shape, np.float32)
    profile[inside] = 0.35 + 0.65 * np.sqrt(1.0 - q[inside])
    chromatin = 1.0 + texture * (0.7 * _smooth_noise(rng, labels.shape, 1.5) + 0.3 * _smooth_noise(rng, labels.shape, 4.0))
    signal = profile * np.clip(chromatin, 0.2, None) * brightness[labels]
    expected = photons * (ndi.gaussian_filter(signal, psf_sigma) + background_level * background)
    counts = rng.poisson(np.clip(expected, 0.0, None)).astype(np.float32)
    return counts + rng.normal(camera_offset, read_noise, labels.shape).astype(np.float32)


def _finish(image: np.ndarray, dtype) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype == np.uint16:
        return np.clip(np.rint(image), 0, 65535).astype(np.uint16)
    if dtype == np.float32:
        return image.astype(np.float32, copy=False)
    raise ValueError(f"dtype must be float32 or uint16; got {dtype}.")


def _object_count(n_objects, density, height, width) -> int:
    if n_objects is not None:
        if int(n_objects) < 0:
            raise ValueError(f"n_objects must be >= 0; got {n_objects}.")
        return int(n_objects)
    if not density >= 0:
        raise ValueError(f"density must be >= 0 (objects per 100x100 px); got {density}.")
    return int(round(density * height * width / 1e4))


def _check_options(radius, touching, dim_fraction) -> tuple[float, float]:
    rmin, rmax = (float(r) for r in radius)
    if not 1.0 <= rmin <= rmax:
        raise ValueError(f"radius must be (min, max) with 1 <= min <= max; got {radius!r}.")
    for name, value in (("touching", touching), ("dim_fraction", dim_fraction)):
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1]; got {value}.")
    return rmin, rmax


def synthetic_nuclei(
    shape: tuple[int, int] = (512, 512),
    *,
    seed: int | None = None,
    rng: np.random.Generator | None = None,
    n_objects: int | None = None,
    density: float = 5.0,
    radius: tuple[float, float] = (6.0, 20.0),
    touching: float = 0.5,
    dim_fraction: float = 0.15,
    photons: float = 300.0,
    background_level: float = 0.08,
    psf_sigma: float = 1.5,
    read_noise: float = 3.0,
    camera_offset: float = 100.0,
    texture: float = 0.25,
    min_area: int = 20,
    dtype="float32",
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic 2D fluorescence image of nuclei and its instance labels.

    Parameters
    ----------
    shape : (H, W)
        Image size.
    seed, rng : int or numpy.random.Generator, optional
        Source of randomness (one or the other); the same seed gives the same image.
    n_objects : int, optional
        Number of objects to draw; by default ``density`` per 100x100 px.
    density : float
        Objects per 100x100 px when ``n_objects`` is not given (5 covers about a quarter
        of the image).
    radius : (min, max)
        Range of the major semi-axis in px; the minor one is 1 to 1.6 times shorter.
    touching : float
        Fraction of objects placed against an earlier one (touching or overlapping it a
        little), which makes clusters.
    dim_fraction : float
        Fraction of objects at 15-35 % of the typical brightness.
    photons : float
        Expected photons at the middle of a typical nucleus (sets the shot noise).
    background_level : float
        Background relative to a typical nucleus (before the smooth spatial variation).
    psf_sigma : float
        Standard deviation of the Gaussian PSF in px.
    read_noise, camera_offset : float
        Gaussian read noise (standard deviation) and the camera's constant offset, in counts.
    texture : float
        Strength of the smooth intensity texture inside nuclei.
    min_area : int
        Objects smaller than this (cut by the border or by neighbours) are dropped.
    dtype : {"float32", "uint16"}
        Type of the returned image (camera counts either way).

    Returns
    -------
    image : ndarray (H, W), float32 or uint16
    instances : ndarray (H, W), int32
        0 for background, objects numbered 1..n; each is one 4-connected piece, and
        objects that touch share a border.
    """
    height, width = _check_shape(shape, 2)
    gen = _rng(seed, rng)
    rmin, rmax = _check_options(radius, touching, dim_fraction)
    n = _object_count(n_objects, density, height, width)
    objects = _place_objects(gen, height, width, 0.0, n, (rmin, rmax), touching, dim_fraction)
    labels, q = _rasterize(objects, height, width, None)
    labels = _keep_largest_pieces(labels)
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    labels[(areas < min_area)[labels]] = 0  # dropped before rendering: they become background
    brightness = np.concatenate([[0.0], objects.brightness]).astype(np.float32)
    image = _render(
        gen, labels, q, brightness, _background(gen, height, width),
        photons=photons, background_level=background_level, psf_sigma=psf_sigma,
        read_noise=read_noise, camera_offset=camera_offset, texture=texture,
    )  # fmt: skip
    return _finish(image, dtype), relabel_sequential(labels, dtype=np.int32)


def synthetic_volume(
    shape: tuple[int, int, int] = (8, 256, 256),
    *,
    seed: int | None = None,
    rng: np.random.Generator | None = None,
    z_step: float = 2.0,
    n_objects: int | None = None,
    density: float = 5.0,
    radius: tuple[float, float] = (6.0, 20.0),
    touching: float = 0.5,
    dim_fraction: float = 0.15,
    photons: float = 300.0,
    background_level: float = 0.08,
    psf_sigma: float = 1.5,
    read_noise: float = 3.0,
    camera_offset: float = 100.0,
    texture: float = 0.25,
    min_area: int = 20,
    dtype="float32",
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic stack of nuclei: ellipsoids cut by ``Z`` planes ``z_step`` px apart.

    The planes vary slowly (each ellipsoid's cross-section grows and shrinks from plane to
    plane) and every plane looks like :func:`synthetic_nuclei`. Parameters are those of
    :func:`synthetic_nuclei`; ``density`` counts objects per 100x100 px over the stack.

    Returns
    -------
    image : ndarray (Z, H, W), float32 or uint16
    instances : ndarray (Z, H, W), int32
        One id per ellipsoid across planes (numbered 1..n over the stack); in each plane an
        object is one 4-connected piece of at least ``min_area`` px.
    """
    depth, height, width = _check_shape(shape, 3)
    gen = _rng(seed, rng)
    rmin, rmax = _check_options(radius, touching, dim_fraction)
    if not z_step > 0:
        raise ValueError(f"z_step must be positive; got {z_step}.")
    n = _object_count(n_objects, density, height, width)
    extent = max((depth - 1) * z_step, 1e-6)
    objects = _place_objects(gen, height, width, extent, n, (rmin, rmax), touching, dim_fraction)
    brightness = np.concatenate([[0.0], objects.brightness]).astype(np.float32)
    background = _background(gen, height, width)
    images = np.empty((depth, height, width), np.float32)
    labels = np.empty((depth, height, width), np.int32)
    for z in range(depth):
        plane, q = _rasterize(objects, height, width, z * z_step)
        plane = _keep_largest_pieces(plane)
        areas = np.bincount(plane.ravel(), minlength=n + 1)
        plane[(areas < min_area)[plane]] = 0
        labels[z] = plane
        images[z] = _render(
            gen, plane, q, brightness, background,
            photons=photons, background_level=background_level, psf_sigma=psf_sigma,
            read_noise=read_noise, camera_offset=camera_offset, texture=texture,
        )  # fmt: skip
    return _finish(images, dtype), relabel_sequential(labels, dtype=np.int32)


def touching_pairs(instances: np.ndarray) -> np.ndarray:
    """Pairs ``(i, j)``, ``i < j``, of objects that are 4-adjacent somewhere (sorted, unique).

    Works on a 2D label image, or on each plane of a stack.
    """
    labels = np.asarray(instances)
    pairs = []
    for axis in range(labels.ndim - 2, labels.ndim):
        n = labels.shape[axis]
        a = np.take(labels, np.arange(n - 1), axis=axis).ravel()
        b = np.take(labels, np.arange(1, n), axis=axis).ravel()
        edge = (a != b) & (a > 0) & (b > 0)
        pairs.append(np.stack([np.minimum(a[edge], b[edge]), np.maximum(a[edge], b[edge])], axis=1))
    both = np.concatenate(pairs)
    return np.unique(both, axis=0) if len(both) else both.reshape(0, 2)
