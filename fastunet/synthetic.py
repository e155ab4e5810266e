"""Synthetic fluorescence-microscopy nuclei with instance labels.

The generator imitates a widefield image of stained nuclei (DAPI/Hoechst-like):

* **objects**: ellipses (2D) or ellipsoids sliced at each plane (3D) of varied size
  (semi-axes ``radius`` px), elongation (``aspect``), orientation and brightness, a fraction of
  them dim; optionally irregular outlines (a few random radial harmonics, ``irregularity``)
  and small, bright, compact bodies (mitotic figures and apoptotic fragments, ``bodies``);
  mitotic figures (``mitoses``: bright bars of condensed chromosomes, metaphase plates alone
  and anaphase pairs side by side) and fragmented, apoptotic nuclei (``fragments``: a cluster
  of 3-6 round pieces, each an object); a fraction of them out of focus (``defocus``: blurred
  more than the rest, still objects). About ``touching`` of them are placed against an earlier one so that they touch or
  overlap slightly, forming clusters. Where objects overlap, each pixel goes to the object
  whose normalised distance is smallest (a watershed-like split along the line where the two
  shapes meet), so touching nuclei share a border and every instance stays one connected
  piece.
* **stain, optics and camera** (:mod:`fastunet.synthetic_optics`): a thickness profile,
  chromatin texture of a given grain with optional foci and nucleoli, Gaussian PSF blur,
  optional out-of-focus haze, a smooth background with a gradient, optional vignetting,
  Poisson shot noise, Gaussian read noise, a camera offset and the file's bit depth
  (``float32``, ``uint16``, ``uint12`` in uint16, ``uint8``); optionally what real images
  hold besides the nuclei (:mod:`fastunet.synthetic_clutter`: autofluorescent background and
  cytoplasm, out-of-focus ghosts, debris, fibers, bright specks) and the camera's defects
  (pattern noise, hot pixels, saturated nuclei).

Named parameter distributions ("styles": sizes from about 8 to 100 px, textures, noise,
bit depths) are in :mod:`fastunet.synthetic_styles`. With the default options the images
are those of earlier fastunet versions, seed for seed.

Everything is vectorised with numpy / scipy.ndimage except one small loop over objects
that works on each object's bounding box (a 1024x1024 image with ~600 nuclei takes a
fraction of a second). :func:`fastunet.figures.save_preview` draws an image beside its labels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .instances import relabel_sequential
from .synthetic_optics import Optics, background, finish, render
from .synthetic_shapes import Shapes, draw_objects, partner_offset

__all__ = ["Shapes", "SyntheticImage", "synthetic_nuclei", "synthetic_image", "synthetic_volume", "touching_pairs"]

_HARMONICS = 4  # radial harmonics 2..5 of an irregular outline


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
    amp: np.ndarray  # (n, _HARMONICS) relative amplitudes of the outline's radial harmonics
    phase: np.ndarray  # (n, _HARMONICS) their phases
    defocused: np.ndarray  # out of focus (blurred more)
    nucleus: np.ndarray  # a nucleus (not a body, a mitotic bar or a fragment)

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
    rng: np.random.Generator, height: int, width: int, depth_px: float, n: int, shapes: Shapes
) -> _Objects:
    """Draw up to ``n`` objects (plus the bodies); a fraction ``touching`` is placed against an
    earlier object.

    Two objects may overlap only a little: along the line joining their centers, the
    center distance must be at least ``_MIN_GAP`` times the sum of their radii in that
    direction (so no nucleus swallows another). A candidate that breaks this is redrawn a
    few times, then skipped.
    """
    rmin = shapes.radius[0]
    drawn = draw_objects(rng, n, shapes)
    major, minor, phi = drawn.major, drawn.minor, drawn.phi
    total = len(major)
    c = np.full(total, np.inf) if depth_px <= 0 else rng.uniform(0.8, 1.2, total) * major
    center = np.zeros((total, 3))  # (y, x, z)
    placed = np.zeros(total, bool)
    attach = rng.random(total) < shapes.touching
    grid = _Grid(2.02 * float(major.max(initial=1.0)))
    for i in range(total):
        for _ in range(_ATTEMPTS):
            done = np.flatnonzero(placed)
            p = drawn.partner[i]
            if p >= 0 and placed[p]:
                candidate = center[p] + partner_offset(rng, drawn, i, p)
            elif attach[i] and len(done):
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
            if _fits(candidate, i, grid.near(candidate), center, major, minor, c, phi):
                center[i] = candidate
                placed[i] = True
                grid.add(i, candidate)
                break
    amp = np.zeros((total, _HARMONICS))
    phase = np.zeros((total, _HARMONICS))
    if shapes.irregularity > 0:  # harmonics 2..5 with amplitudes falling as 1/order
        amp = shapes.irregularity * rng.uniform(0.3, 1.0, (total, _HARMONICS)) / np.arange(1, _HARMONICS + 1)
        phase = rng.uniform(0.0, 2 * np.pi, (total, _HARMONICS))
    defocused = rng.random(total) < shapes.defocus if shapes.defocus > 0 else np.zeros(total, bool)
    objects = _Objects(cy=center[:, 0], cx=center[:, 1], cz=center[:, 2], a=major, b=minor, c=c, phi=phi,
                       brightness=drawn.brightness, amp=amp, phase=phase, defocused=defocused,
                       nucleus=np.arange(total) < n)
    return objects.subset(placed)


_MIN_GAP = 0.8
_ATTEMPTS = 12


class _Grid:
    """Placed objects by square cells of ``cell`` px (at least the largest interaction
    distance), so that a candidate is checked against its neighbours only."""

    def __init__(self, cell: float):
        self.cell = cell
        self.cells: dict[tuple[int, int], list[int]] = {}

    def _key(self, point) -> tuple[int, int]:
        return int(np.floor(point[0] / self.cell)), int(np.floor(point[1] / self.cell))

    def add(self, index: int, point) -> None:
        self.cells.setdefault(self._key(point), []).append(index)

    def near(self, point) -> np.ndarray:
        """The placed objects in the 3 x 3 cells around ``point`` (sorted indices)."""
        ky, kx = self._key(point)
        found = [i for dy in (-1, 0, 1) for dx in (-1, 0, 1) for i in self.cells.get((ky + dy, kx + dx), ())]
        return np.array(sorted(found), dtype=np.intp)


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


def _outline(objects: _Objects, k: int, u: np.ndarray, v: np.ndarray, a: float, b: float) -> np.ndarray | None:
    """The relative radius ``r(theta)`` of object ``k``'s irregular outline (None for an ellipse)."""
    amp = objects.amp[k]
    if not amp.any():
        return None
    theta = np.arctan2(v / np.float32(b), u / np.float32(a))
    r = np.ones_like(theta)
    for j in range(_HARMONICS):
        r += np.float32(amp[j]) * np.cos((j + 2) * theta + np.float32(objects.phase[k, j]))
    return np.maximum(r, np.float32(0.3))


def _rasterize(objects: _Objects, height: int, width: int, z: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Label image (object index + 1, 0 = background) and the normalised squared distance.

    ``q = ((u/a)^2 + (v/b)^2) / r(theta)^2 (+ ((z - cz)/c)^2)`` is below 1 inside an object
    (``r = 1`` for an ellipse, a sum of radial harmonics for an irregular outline); each pixel
    goes to the object of smallest ``q``. Works on each object's bounding box only.
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
        r = max(a, b) * (1.0 + objects.amp[k].sum()) + 1
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
        outline = _outline(objects, k, u, v, a, b)
        if outline is not None:
            q = q / outline**2
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


def _object_count(n_objects, density, height, width) -> int:
    if n_objects is not None:
        if int(n_objects) < 0:
            raise ValueError(f"n_objects must be >= 0; got {n_objects}.")
        return int(n_objects)
    if not density >= 0:
        raise ValueError(f"density must be >= 0 (objects per 100x100 px); got {density}.")
    return int(round(density * height * width / 1e4))


def _specs(options: dict) -> tuple[Shapes, Optics, int, str]:
    """The :class:`Shapes`, :class:`~fastunet.synthetic_optics.Optics`, ``min_area`` and
    ``dtype`` of the generators' keyword options (checked)."""
    from .synthetic_optics import DTYPES

    dtype = options.pop("dtype")
    name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
    if name not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}; got {dtype}.")
    min_area = int(options.pop("min_area"))
    shapes = Shapes(**{k: options.pop(k) for k in Shapes.__dataclass_fields__})
    return shapes, Optics(**options), min_area, name


def _plane(gen, objects: _Objects, height: int, width: int, z: float | None, back: np.ndarray, optics: Optics,
           min_area: int, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """One plane's labels (object index + 1; pieces and objects below ``min_area`` dropped) and image."""
    labels, q = _rasterize(objects, height, width, z)
    labels = _keep_largest_pieces(labels)
    areas = np.bincount(labels.ravel(), minlength=len(objects) + 1)
    labels[(areas < min_area)[labels]] = 0  # dropped before rendering: they become background
    brightness = np.concatenate([[0.0], objects.brightness]).astype(np.float32)
    defocused = np.concatenate([[False], objects.defocused]) if objects.defocused.any() else None
    return labels, render(gen, labels, q, brightness, back, optics, radius=radius, defocused=defocused)


def synthetic_nuclei(
    shape: tuple[int, int] = (512, 512),
    *,
    seed: int | None = None,
    rng: np.random.Generator | None = None,
    n_objects: int | None = None,
    density: float = 5.0,
    radius: tuple[float, float] = (6.0, 20.0),
    aspect: tuple[float, float] = (1.0, 1.6),
    irregularity: float = 0.0,
    touching: float = 0.5,
    dim_fraction: float = 0.15,
    dim_level: tuple[float, float] = (0.15, 0.35),
    brightness_sigma: float = 0.3,
    bodies: float = 0.0,
    body_radius: tuple[float, float] = (1.5, 4.0),
    photons: float = 300.0,
    background_level: float = 0.08,
    psf_sigma: float = 1.5,
    read_noise: float = 3.0,
    camera_offset: float = 100.0,
    texture: float = 0.25,
    texture_scale: float = 1.5,
    foci: float = 0.0,
    nucleoli: float = 0.0,
    illumination: float = 0.0,
    haze: float = 0.0,
    mitoses: float = 0.0,
    fragments: float = 0.0,
    defocus: float = 0.0,
    autofluorescence: float = 0.0,
    cytoplasm: float = 0.0,
    ghosts: float = 0.0,
    debris: float = 0.0,
    fibers: float = 0.0,
    specks: float = 0.0,
    hot_pixels: float = 0.0,
    pattern_noise: float = 0.0,
    saturation: float = 0.0,
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
        Number of nuclei to draw; by default ``density`` per 100x100 px.
    density : float
        Nuclei per 100x100 px when ``n_objects`` is not given (5 covers about a quarter
        of the image with the default radii).
    radius : (min, max)
        Range of the major semi-axis in px (uniform).
    aspect : (min, max)
        Range of the ratio major / minor semi-axis (elongation).
    irregularity : float
        Amplitude (0..0.3) of the random radial harmonics (orders 2-5) that make outlines
        irregular; 0 gives ellipses.
    touching : float
        Fraction of objects placed against an earlier one (touching or overlapping it a
        little), which makes clusters.
    dim_fraction, dim_level : float, (min, max)
        Fraction of nuclei drawn dim, at ``dim_level`` of the typical brightness.
    brightness_sigma : float
        Spread (lognormal sigma) of the other nuclei's brightness.
    bodies, body_radius : float, (min, max)
        Small, compact, bright bodies (mitotic figures, apoptotic fragments) added, as a
        fraction of the nuclei, with major semi-axes in ``body_radius`` px, 2-4x as bright.
    photons : float
        Expected photons at the middle of a typical nucleus (sets the shot noise).
    background_level : float
        Background relative to a typical nucleus (before the smooth spatial variation).
    psf_sigma : float
        Standard deviation of the Gaussian PSF in px.
    read_noise, camera_offset : float
        Gaussian read noise (standard deviation) and the camera's constant offset, in counts.
    texture, texture_scale : float
        Strength and grain (correlation length, px) of the smooth chromatin texture.
    foci, nucleoli : float
        Strength of bright chromatin foci and of dark nucleoli (0..1); 0: none.
    illumination : float
        Vignetting: the illumination falls by this fraction (0..1) towards the far corner.
    haze : float
        Out-of-focus light: the nuclei blurred far more, relative to the in-focus signal.
    mitoses, fragments : float
        Mitotic figures (bright bars, half of them anaphase pairs) and fragmented nuclei (3-6
        round pieces each), as a fraction of the nuclei; each bar and piece is an object.
    defocus : float
        Fraction of the objects out of focus (blurred more; still objects).
    autofluorescence, cytoplasm : float
        A textured autofluorescent background, and dim cytoplasm around the nuclei, relative
        to a typical nucleus (not objects).
    ghosts : float
        Out-of-focus nuclei of other planes (dim blurred blobs, not objects) per nucleus.
    debris, fibers, specks : float
        Irregular particles, thin threads and bright point sources per 100x100 px (not objects).
    hot_pixels : float
        Fraction of the pixels that are hot (far brighter than any nucleus).
    pattern_noise : float
        Column (and half as strong row) offsets of the camera, in units of the read noise.
    saturation : float
        Fraction of the nuclei whose brightest pixels the camera clips.
    min_area : int
        Objects smaller than this (cut by the border or by neighbours) are dropped.
    dtype : {"float32", "uint16", "uint12", "uint8"}
        Type of the returned image: camera counts (float32, or uint16 clipped to 16 or 12 bits),
        or an 8-bit export (uint8, stretched between the 0.5th and 99.9th percentiles).

    Returns
    -------
    image : ndarray (H, W), float32, uint16 or uint8
    instances : ndarray (H, W), int32
        0 for background, objects numbered 1..n; each is one 4-connected piece, and
        objects that touch share a border.
    """
    options = {k: v for k, v in locals().items() if k not in ("shape", "seed", "rng", "n_objects", "density")}
    drawn = _generate(shape, _rng(seed, rng), n_objects, density, options)
    return drawn.image, drawn.labels


@dataclass(frozen=True)
class SyntheticImage:
    """A synthetic image, its instance labels, and how many of them are nuclei: labels
    ``1..nuclei`` are nuclei, the later ones small bodies, mitotic bars and fragments."""

    image: np.ndarray
    labels: np.ndarray
    nuclei: int


def synthetic_image(shape: tuple[int, int] = (512, 512), *, seed: int | None = None,
                    rng: np.random.Generator | None = None, n_objects: int | None = None, density: float = 5.0,
                    **options) -> SyntheticImage:
    """:func:`synthetic_nuclei` (the same options, the same image for the same seed), saying
    which objects are nuclei (:class:`SyntheticImage`)."""
    defaults = {k: v for k, v in synthetic_nuclei.__kwdefaults__.items()
                if k not in ("seed", "rng", "n_objects", "density")}
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise TypeError(f"synthetic_image() got unexpected keyword argument(s) {', '.join(unknown)}.")
    return _generate(shape, _rng(seed, rng), n_objects, density, {**defaults, **options})


def _generate(shape, gen: np.random.Generator, n_objects, density, options: dict) -> SyntheticImage:
    shapes, optics, min_area, dtype = _specs(dict(options))
    height, width = _check_shape(shape, 2)
    n = _object_count(n_objects, density, height, width)
    objects = _place_objects(gen, height, width, 0.0, n, shapes)
    back = background(gen, height, width)
    labels, image = _plane(gen, objects, height, width, None, back, optics, min_area, float(np.mean(shapes.radius)))
    kept = np.unique(labels)
    nuclei = int(objects.nucleus[kept[kept > 0] - 1].sum())
    return SyntheticImage(finish(image, dtype), relabel_sequential(labels, dtype=np.int32), nuclei)


def synthetic_volume(
    shape: tuple[int, int, int] = (8, 256, 256),
    *,
    seed: int | None = None,
    rng: np.random.Generator | None = None,
    z_step: float = 2.0,
    n_objects: int | None = None,
    density: float = 5.0,
    min_area: int = 20,
    dtype="float32",
    **options,
) -> tuple[np.ndarray, np.ndarray]:
    """A synthetic stack of nuclei: ellipsoids cut by ``Z`` planes ``z_step`` px apart.

    The planes vary slowly (each ellipsoid's cross-section grows and shrinks from plane to
    plane) and every plane looks like :func:`synthetic_nuclei`. The other keyword options
    (``radius``, ``touching``, ``photons``, ...) are those of :func:`synthetic_nuclei`;
    ``density`` counts objects per 100x100 px over the stack.

    Returns
    -------
    image : ndarray (Z, H, W), float32, uint16 or uint8
    instances : ndarray (Z, H, W), int32
        One id per ellipsoid across planes (numbered 1..n over the stack); in each plane an
        object is one 4-connected piece of at least ``min_area`` px.
    """
    unknown = sorted(set(options) - set(Shapes.__dataclass_fields__) - set(Optics.__dataclass_fields__))
    if unknown:
        raise TypeError(f"synthetic_volume() got unexpected keyword argument(s) {', '.join(unknown)}.")
    defaults = {**Shapes().__dict__, **Optics().__dict__}
    shapes, optics, min_area, dtype = _specs({**defaults, **options, "min_area": min_area, "dtype": dtype})
    depth, height, width = _check_shape(shape, 3)
    gen = _rng(seed, rng)
    if not z_step > 0:
        raise ValueError(f"z_step must be positive; got {z_step}.")
    n = _object_count(n_objects, density, height, width)
    extent = max((depth - 1) * z_step, 1e-6)
    objects = _place_objects(gen, height, width, extent, n, shapes)
    back = background(gen, height, width)
    images = np.empty((depth, height, width), np.float32)
    labels = np.empty((depth, height, width), np.int32)
    radius = float(np.mean(shapes.radius))
    for z in range(depth):
        labels[z], images[z] = _plane(gen, objects, height, width, z * z_step, back, optics, min_area, radius)
    return finish(images, dtype), relabel_sequential(labels, dtype=np.int32)

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
