"""The objects of a synthetic image: what they look like (:class:`Shapes`) and the draw of
their sizes, orientations and brightnesses (:func:`draw_objects`), before
:mod:`fastunet.synthetic` places and rasterizes them.

Besides the nuclei: small bright compact bodies, mitotic figures (bars of condensed
chromosomes; anaphase pairs placed side by side) and fragmented nuclei (a cluster of round
pieces). Objects that must go next to another carry a partner (:class:`Drawn`,
:func:`partner_offset`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Shapes", "Drawn", "draw_objects", "partner_offset"]


@dataclass(frozen=True)
class Shapes:
    """What the objects of a synthetic image look like (see :func:`fastunet.synthetic.synthetic_nuclei`)."""

    radius: tuple[float, float] = (6.0, 20.0)
    aspect: tuple[float, float] = (1.0, 1.6)
    irregularity: float = 0.0
    touching: float = 0.5
    dim_fraction: float = 0.15
    dim_level: tuple[float, float] = (0.15, 0.35)
    brightness_sigma: float = 0.3
    bodies: float = 0.0
    body_radius: tuple[float, float] = (1.5, 4.0)
    mitoses: float = 0.0
    fragments: float = 0.0
    defocus: float = 0.0

    def __post_init__(self) -> None:
        for name in ("radius", "body_radius"):
            lo, hi = (float(r) for r in getattr(self, name))
            if not 1.0 <= lo <= hi:
                raise ValueError(f"{name} must be (min, max) with 1 <= min <= max; got {getattr(self, name)!r}.")
            object.__setattr__(self, name, (lo, hi))
        lo, hi = (float(r) for r in self.aspect)
        if not 1.0 <= lo <= hi:
            raise ValueError(f"aspect must be (min, max) with 1 <= min <= max; got {self.aspect!r}.")
        object.__setattr__(self, "aspect", (lo, hi))
        lo, hi = (float(r) for r in self.dim_level)
        if not 0.0 < lo <= hi:
            raise ValueError(f"dim_level must be (min, max) with 0 < min <= max; got {self.dim_level!r}.")
        object.__setattr__(self, "dim_level", (lo, hi))
        for name in ("touching", "dim_fraction", "bodies", "mitoses", "fragments", "defocus"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1]; got {getattr(self, name)}.")
        if not 0.0 <= self.irregularity <= 0.3:
            raise ValueError(f"irregularity must lie in [0, 0.3]; got {self.irregularity}.")
        if not self.brightness_sigma >= 0:
            raise ValueError(f"brightness_sigma must be >= 0; got {self.brightness_sigma}.")


@dataclass
class Drawn:
    """Sizes, orientations and brightnesses of the objects to place, and where some must go:
    ``partner[i] >= 0`` places object ``i`` at distance ``gap[i]`` from object ``partner[i]``,
    along that one's minor axis (``beside[i]``: an anaphase pair) or in any direction."""

    major: np.ndarray
    minor: np.ndarray
    phi: np.ndarray
    brightness: np.ndarray
    partner: np.ndarray
    gap: np.ndarray
    beside: np.ndarray

    def extend(self, major, minor, phi, brightness, partner=None, gap=None, beside=None) -> None:
        n = len(major)
        self.major = np.concatenate([self.major, major])
        self.minor = np.concatenate([self.minor, minor])
        self.phi = np.concatenate([self.phi, phi])
        self.brightness = np.concatenate([self.brightness, brightness])
        self.partner = np.concatenate([self.partner, np.full(n, -1, np.intp) if partner is None else partner])
        self.gap = np.concatenate([self.gap, np.zeros(n) if gap is None else gap])
        self.beside = np.concatenate([self.beside, np.zeros(n, bool) if beside is None else beside])


def draw_objects(rng: np.random.Generator, n: int, shapes: Shapes) -> Drawn:
    """``n`` nuclei plus ``bodies * n`` small bright bodies, ``mitoses * n`` mitotic figures and
    ``fragments * n`` fragmented nuclei."""
    rmin, rmax = shapes.radius
    # Sizes: the major semi-axis uniform in [rmin, rmax], the minor one ``aspect`` times shorter.
    major = rng.uniform(rmin, rmax, n)
    floor = rmin * 0.8 if shapes.aspect[1] <= 1.6 else max(1.0, rmin * 0.8 * 1.6 / shapes.aspect[1])
    minor = np.maximum(major / rng.uniform(*shapes.aspect, n), floor)
    phi = rng.uniform(0.0, np.pi, n)
    brightness = rng.lognormal(0.0, shapes.brightness_sigma, n)
    dim = rng.random(n) < shapes.dim_fraction
    brightness[dim] = rng.uniform(*shapes.dim_level, dim.sum())
    drawn = Drawn(major, minor, phi, brightness, np.full(n, -1, np.intp), np.zeros(n), np.zeros(n, bool))
    n_bodies = int(round(shapes.bodies * n))
    if n_bodies:  # mitotic figures (elongated) and apoptotic fragments: small, compact, bright
        body = rng.uniform(*shapes.body_radius, n_bodies)
        drawn.extend(body, np.maximum(body / rng.uniform(1.0, 2.5, n_bodies), 1.0),
                     rng.uniform(0.0, np.pi, n_bodies), rng.uniform(2.0, 4.0, n_bodies))
    typical = 0.5 * (rmin + rmax)
    if shapes.mitoses > 0:
        _draw_mitoses(rng, drawn, int(round(shapes.mitoses * n)), typical)
    if shapes.fragments > 0:
        _draw_fragments(rng, drawn, int(round(shapes.fragments * n)), typical)
    return drawn


def _draw_mitoses(rng: np.random.Generator, drawn: Drawn, count: int, radius: float) -> None:
    """``count`` mitotic figures: bars 1-1.6 ``radius`` long, 2.5-4.5 times thinner, 1.5-3x as
    bright as a nucleus; half of them with a parallel partner beside them (anaphase)."""
    if count <= 0:
        return
    major = rng.uniform(0.5, 0.8, count) * radius
    minor = np.maximum(major / rng.uniform(2.5, 4.5, count), 1.0)
    phi = rng.uniform(0.0, np.pi, count)
    drawn.extend(major, minor, phi, rng.uniform(1.5, 3.0, count))
    pairs = np.flatnonzero(rng.random(count) < 0.5)
    if pairs.size:
        first = len(drawn.major) - count + pairs
        drawn.extend(major[pairs] * rng.uniform(0.85, 1.15, pairs.size), minor[pairs], phi[pairs],
                     rng.uniform(1.5, 3.0, pairs.size), partner=first,
                     gap=2.0 * minor[pairs] + rng.uniform(0.3, 0.9, pairs.size) * radius,
                     beside=np.ones(pairs.size, bool))


def _draw_fragments(rng: np.random.Generator, drawn: Drawn, count: int, radius: float) -> None:
    """``count`` fragmented nuclei: 3-6 round pieces of 0.25-0.45 ``radius``, 1.2-2.5x as bright,
    around the first piece of each."""
    for _ in range(count):
        k = int(rng.integers(3, 7))
        size = rng.uniform(0.25, 0.45, k) * radius
        size = np.maximum(size, 1.5)
        first = len(drawn.major)
        partner = np.full(k, first, np.intp)
        partner[0] = -1
        gap = (size + size[0]) * rng.uniform(1.2, 2.0, k)
        drawn.extend(size, np.maximum(size / rng.uniform(1.0, 1.3, k), 1.0), rng.uniform(0.0, np.pi, k),
                     rng.uniform(1.2, 2.5, k), partner=partner, gap=gap)


def partner_offset(rng: np.random.Generator, drawn: Drawn, i: int, p: int) -> np.ndarray:
    """Where object ``i`` goes relative to its partner ``p``: ``gap[i]`` px along ``p``'s minor
    axis, either side (``beside``), or in a random direction in the plane."""
    if drawn.beside[i]:
        angle = drawn.phi[p] + np.pi / 2 + (np.pi if rng.random() < 0.5 else 0.0)
    else:
        angle = rng.uniform(0.0, 2 * np.pi)
    # the major axis points along (sin phi, cos phi) in (y, x): see fastunet.synthetic._rasterize
    return drawn.gap[i] * np.array([np.sin(angle), np.cos(angle), 0.0])
