"""Data augmentation of the U-Net paper, on the tensor's device.

Ronneberger et al. (2015), section 3.1: shifts, rotations, gray-value variations and, above
all, elastic deformations: "random displacement vectors on a coarse 3 by 3 grid ... sampled from
a Gaussian distribution with 10 pixels standard deviation. Per-pixel displacements are then
computed using bicubic interpolation."

One training sample (:func:`sample_tile`) is drawn through a single sampling grid that maps each
pixel of the input tile to a point of the source image::

    source = center + flip(rotate((u + elastic(u)) / zoom))

where ``u`` is the pixel's offset from the tile centre, ``elastic`` the displacement field of
:func:`elastic_field` over the input tile, ``zoom`` a random isotropic rescale (objects appear
``zoom`` times larger; drawn log-uniformly from ``AugmentConfig.scale``, 1 by default: a model
then sees the object sizes of its training data and a range around them), ``rotate`` a rotation
by a random angle and ``flip`` random mirrorings of either axis. Shifts come from the random
tile centre. The image is sampled
bicubically, the weight map bilinearly and the target by nearest neighbour, the labels on the
central ``out_size x out_size`` part of the same grid, so input and labels stay aligned exactly
as the valid-convolution network sees them. Gray-value variations then act on the image only.

Target tiles are uint8 (classes 0..255; an ignore label, if any, must be one of those values,
e.g. 255 with ``ignore_index=255``): the fused loss reads one byte a pixel and, with PyTorch's
default ``ignore_index=-100`` (which a uint8 target cannot hold), needs no pass that counts
the ignored pixels.

Conventions
-----------
- Coordinates are ``(y, x)`` in pixels, pixel centres at integers.
- A positive rotation angle turns the image content counter-clockwise as displayed (row 0 at
  the top), like ``torch.rot90(tile, 1, dims=(-2, -1))``.
- Beyond the image border the source is mirrored without repeating the edge pixel, as
  ``np.pad(mode="reflect")`` (``grid_sample(padding_mode="reflection", align_corners=True)``
  reflects about the centres of the border pixels; ``align_corners=False`` would give
  ``"symmetric"``). The target uses the same reflection, applied to integer indices.
- Random numbers come from ``generator`` (the global torch RNG when None) on the generator's own
  device; results are reproducible for a fixed seed. A CPU generator works for tensors on any
  device (the few random parameters and the noise are drawn on the CPU and moved).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch
import torch.nn.functional as F

from ..geometry import reflect_index

__all__ = ["AugmentConfig", "augment_batch", "elastic_field", "random_center", "sample_tile"]


def _parse_range(name: str, value, *, minimum: float | None = None) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a (low, high) pair of numbers; got {value!r}.") from None
    if not lo <= hi:
        raise ValueError(f"{name} must have low <= high; got {value!r}.")
    if minimum is not None and lo < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value!r}.")
    return lo, hi


@dataclass(frozen=True)
class AugmentConfig:
    """What :func:`sample_tile` varies, and by how much.

    Parameters
    ----------
    elastic_sigma : float
        Standard deviation (pixels) of the displacements on the coarse grid (10 in the paper);
        0 disables the elastic deformation.
    elastic_grid : int
        Nodes per side of the coarse displacement grid (3 in the paper), >= 2.
    rotation : (float, float)
        Range of the rotation angle in degrees, drawn uniformly (full circle by default).
    flip : bool
        Mirror each axis with probability 1/2.
    gamma : (float, float)
        Range of the gamma exponent, applied to the tile rescaled to [0, 1] by its per-channel
        minimum and maximum, then scaled back.
    contrast : (float, float)
        Range of the factor by which the deviations from the tile's per-channel mean are scaled.
    brightness : (float, float)
        Range of the offset added to all intensities (in normalized intensity units).
    noise_std : float
        Standard deviation of additive Gaussian noise (normalized intensity units).
    scale : (float, float)
        Range of the random isotropic rescale of the tile (objects appear this many times
        larger), drawn log-uniformly; ``(1, 1)`` (the default) draws nothing. Beyond the
        image the rescaled tile is mirrored like the rest.
    """

    elastic_sigma: float = 10.0
    elastic_grid: int = 3
    rotation: tuple[float, float] = (-180.0, 180.0)
    flip: bool = True
    gamma: tuple[float, float] = (0.8, 1.25)
    contrast: tuple[float, float] = (0.85, 1.15)
    brightness: tuple[float, float] = (-0.1, 0.1)
    noise_std: float = 0.02
    scale: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        if not self.elastic_sigma >= 0:
            raise ValueError(f"elastic_sigma must be >= 0; got {self.elastic_sigma!r}.")
        if not isinstance(self.elastic_grid, int) or self.elastic_grid < 2:
            raise ValueError(f"elastic_grid must be an integer >= 2; got {self.elastic_grid!r}.")
        if not isinstance(self.flip, bool):
            raise TypeError(f"flip must be a bool; got {self.flip!r}.")
        if not self.noise_std >= 0:
            raise ValueError(f"noise_std must be >= 0; got {self.noise_std!r}.")
        object.__setattr__(self, "rotation", _parse_range("rotation", self.rotation))
        gamma = _parse_range("gamma", self.gamma)
        if gamma[0] <= 0:
            raise ValueError(f"gamma must be > 0; got {self.gamma!r}.")
        object.__setattr__(self, "gamma", gamma)
        object.__setattr__(self, "contrast", _parse_range("contrast", self.contrast, minimum=0.0))
        object.__setattr__(self, "brightness", _parse_range("brightness", self.brightness))
        scale = _parse_range("scale", self.scale)
        if scale[0] <= 0:
            raise ValueError(f"scale must be > 0; got {self.scale!r}.")
        object.__setattr__(self, "scale", scale)

    @classmethod
    def none(cls) -> AugmentConfig:
        """The identity: :func:`sample_tile` returns plain (mirrored) crops."""
        return cls(
            elastic_sigma=0.0,
            rotation=(0.0, 0.0),
            flip=False,
            gamma=(1.0, 1.0),
            contrast=(1.0, 1.0),
            brightness=(0.0, 0.0),
            noise_std=0.0,
            scale=(1.0, 1.0),
        )

    def to_dict(self) -> dict:
        """Plain JSON-able values (for logs and model metadata)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return torch.device("cpu") if generator is None else generator.device


def _uniform(generator: torch.Generator | None, lo: float, hi: float) -> float:
    """A uniform draw in [lo, hi]; no draw at all for an empty range."""
    if lo == hi:
        return lo
    u = torch.rand((), generator=generator, device=_gen_device(generator)).item()
    return lo + (hi - lo) * u


def elastic_field(
    size: tuple[int, int],
    *,
    grid: int = 3,
    sigma: float = 10.0,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A smooth random displacement field, as in the paper.

    Displacements are drawn from N(0, sigma^2) on a ``grid x grid`` lattice whose outer nodes
    lie on the corner pixels, then upsampled to every pixel by bicubic interpolation
    (``F.interpolate(mode="bicubic", align_corners=True)``), so the field equals the drawn
    values on the lattice nodes.

    Parameters
    ----------
    size : (int, int)
        ``(H, W)`` of the field.
    grid : int
        Lattice nodes per side (3 in the paper).
    sigma : float
        Standard deviation of the node displacements in pixels (10 in the paper).
    generator : torch.Generator, optional
        Source of randomness (global RNG when None); draws happen on its device.
    device : torch.device or str, optional
        Device of the result (the generator's device when None).

    Returns
    -------
    Tensor (2, H, W), float32
        ``[0]`` the y (row) and ``[1]`` the x (column) displacement in pixels.
    """
    height, width = (int(s) for s in size)
    if height < 1 or width < 1:
        raise ValueError(f"size must be two positive integers; got {size!r}.")
    if not isinstance(grid, int) or grid < 2:
        raise ValueError(f"grid must be an integer >= 2; got {grid!r}.")
    device = _gen_device(generator) if device is None else torch.device(device)
    nodes = torch.randn((1, 2, grid, grid), generator=generator, device=_gen_device(generator)) * sigma
    field = F.interpolate(nodes.to(device), size=(height, width), mode="bicubic", align_corners=True)
    return field[0]


def _check_sample(image, target, weight, in_size, out_size) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or not image.is_floating_point():
        raise ValueError(f"image must be a float tensor (C, H, W); got {getattr(image, 'shape', type(image))}.")
    hw = tuple(image.shape[1:])
    for name, t in (("target", target), ("weight", weight)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != hw:
            got = getattr(t, "shape", type(t))
            raise ValueError(f"{name} must be a tensor of shape {hw} (the image's H, W); got {got}.")
        if t.device != image.device:
            raise ValueError(f"{name} is on {t.device} but the image is on {image.device}; put them on one device.")
    if target.dtype.is_floating_point or target.dtype.is_complex:
        raise ValueError(f"target must hold integer classes (uint8 best); got {target.dtype}.")
    if min(hw) < 2:
        raise ValueError(f"The image must be at least 2 x 2 pixels; got {hw}.")
    if not (isinstance(in_size, int) and isinstance(out_size, int) and in_size >= out_size >= 1):
        raise ValueError(f"Expected integers in_size >= out_size >= 1; got {in_size!r}, {out_size!r}.")
    if (in_size - out_size) % 2:
        raise ValueError(
            "in_size - out_size must be even (the output tile is the centre of the input tile);"
            f" got {in_size} - {out_size}."
        )


def _uint8_target(tile: torch.Tensor) -> torch.Tensor:
    """The target tile as uint8; labels of a wider dtype are checked to fit (one host sync,
    none for uint8 or bool targets)."""
    if tile.dtype == torch.uint8:
        return tile
    if tile.dtype != torch.bool and tile.numel() and bool((tile.min() < 0) | (tile.max() > 255)):
        raise ValueError(
            f"Target tiles are uint8 (classes 0..255) but the {tile.dtype} target holds labels "
            f"{int(tile.min())}..{int(tile.max())}; mark ignored pixels with a label in 0..255, e.g. 255, "
            "and pass ignore_index=255 to the loss (PyTorch's default -100 does not fit)."
        )
    return tile.to(torch.uint8)


def _vary_gray(image: torch.Tensor, config: AugmentConfig, generator: torch.Generator | None) -> torch.Tensor:
    gamma = _uniform(generator, *config.gamma)
    contrast = _uniform(generator, *config.contrast)
    brightness = _uniform(generator, *config.brightness)
    spatial = tuple(range(1, image.ndim))  # (C, H, W), or (C, D, H, W) for a 3D tile
    if gamma != 1.0:
        lo = image.amin(dim=spatial, keepdim=True)
        span = image.amax(dim=spatial, keepdim=True) - lo
        safe = torch.where(span > 0, span, torch.ones_like(span))
        unit = ((image - lo) / safe).clamp(0.0, 1.0)
        image = torch.where(span > 0, lo + span * unit.pow(gamma), image)
    if contrast != 1.0:
        mean = image.mean(dim=spatial, keepdim=True)
        image = mean + contrast * (image - mean)
    if brightness != 0.0:
        image = image + brightness
    if config.noise_std > 0:
        noise = torch.randn(image.shape, generator=generator, device=_gen_device(generator))
        image = image + config.noise_std * noise.to(image.device)
    return image


def sample_tile(
    image: torch.Tensor,
    target: torch.Tensor,
    weight: torch.Tensor,
    *,
    center: tuple[float, float],
    in_size: int,
    out_size: int,
    config: AugmentConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One augmented training sample for overlap-tile training.

    Parameters
    ----------
    image : Tensor (C, H, W), float
        Normalized training image.
    target : Tensor (H, W), integer
        Class per pixel in 0..255 (e.g. :func:`fastunet.train.weightmap.semantic_target`, uint8);
        a target of a wider dtype is checked per tile (a ``ValueError`` for labels outside
        0..255, such as -100).
    weight : Tensor (H, W), float
        Weight map (e.g. :func:`fastunet.train.weightmap.weight_map`). All three on one device.
    center : (float, float)
        Source-image point ``(y, x)`` that the tile centre maps to; with the identity config and
        ``center - (in_size - 1) / 2`` integer the tile is the crop starting at that offset.
    in_size, out_size : int
        Network input and output tile edges; ``in_size - out_size`` must be even.
    config : AugmentConfig
        What to vary; :meth:`AugmentConfig.none` gives plain crops.
    generator : torch.Generator, optional
        Source of randomness (global RNG when None).

    Returns
    -------
    image_tile : Tensor (C, in_size, in_size), float32
    target_tile : Tensor (out_size, out_size), uint8
        The target on the central part of the same sampling grid (nearest neighbour).
    weight_tile : Tensor (out_size, out_size), float32
        The weight map there (bilinear).
    """
    _check_sample(image, target, weight, in_size, out_size)
    device = image.device
    height, width = image.shape[1:]
    cy, cx = (float(c) for c in center)

    # Offsets of the tile pixels from the tile centre, then elastic, rotation, flips.
    offsets = torch.arange(in_size, device=device, dtype=torch.float32) - (in_size - 1) / 2
    uy = offsets.view(-1, 1).expand(in_size, in_size)
    ux = offsets.view(1, -1).expand(in_size, in_size)
    if config.elastic_sigma > 0:
        field = elastic_field(
            (in_size, in_size), grid=config.elastic_grid, sigma=config.elastic_sigma, generator=generator, device=device
        )
        uy, ux = uy + field[0], ux + field[1]
    angle = math.radians(_uniform(generator, *config.rotation))
    cos, sin = math.cos(angle), math.sin(angle)
    sy, sx = cos * uy + sin * ux, cos * ux - sin * uy
    if config.flip:
        if _uniform(generator, 0.0, 1.0) < 0.5:
            sy = -sy
        if _uniform(generator, 0.0, 1.0) < 0.5:
            sx = -sx
    if config.scale[0] != config.scale[1]:  # log-uniform zoom; (1, 1) draws nothing
        zoom = math.exp(_uniform(generator, math.log(config.scale[0]), math.log(config.scale[1])))
        sy, sx = sy / zoom, sx / zoom
    elif config.scale[0] != 1.0:
        sy, sx = sy / config.scale[0], sx / config.scale[0]

    # grid_sample's normalized coordinates (align_corners=True: -1 and 1 are the centres of the
    # border pixels); the large part (the centre) is normalized in double precision.
    gx = (2 * cx / (width - 1) - 1) + sx * (2 / (width - 1))
    gy = (2 * cy / (height - 1) - 1) + sy * (2 / (height - 1))
    grid = torch.stack((gx, gy), dim=-1).unsqueeze(0)  # (1, S, S, 2), x first
    image_tile = F.grid_sample(
        image[None].float(), grid, mode="bicubic", padding_mode="reflection", align_corners=True
    )[0]

    lo = (in_size - out_size) // 2
    inner = grid[:, lo : lo + out_size, lo : lo + out_size]
    weight_tile = F.grid_sample(
        weight[None, None].float(), inner, mode="bilinear", padding_mode="reflection", align_corners=True
    )[0, 0]
    rows = reflect_index(torch.round(cy + sy[lo : lo + out_size, lo : lo + out_size].double()).long(), height)
    cols = reflect_index(torch.round(cx + sx[lo : lo + out_size, lo : lo + out_size].double()).long(), width)
    target_tile = _uint8_target(target[rows, cols])

    image_tile = _vary_gray(image_tile, config, generator)
    return image_tile.contiguous(), target_tile, weight_tile.contiguous()


def random_center(
    shape: tuple[int, ...], out_size: int | tuple[int, ...], *, generator: torch.Generator | None = None
) -> tuple[float, ...]:
    """A random tile centre whose output tile lies inside an image of ``shape`` (H, W), or
    ``(D, H, W)`` with one output edge per axis (a 3D tile).

    The output tile's top-left corner is uniform over the integer positions that keep it inside
    the image (centred where the image is smaller than the tile), so with the identity config
    the tiles are plain crops on the pixel grid.
    """
    center = []
    edges = (out_size,) * len(shape) if isinstance(out_size, int) else tuple(out_size)
    for size, out_size in zip(shape, edges):
        if size >= out_size:
            origin = int(torch.randint(0, size - out_size + 1, (), generator=generator, device=_gen_device(generator)))
        else:
            origin = (size - out_size) // 2
        center.append(origin + (out_size - 1) / 2)
    return tuple(center)


def augment_batch(
    samples: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]],
    n: int,
    *,
    in_size: int,
    out_size: int,
    config: AugmentConfig,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of ``n`` augmented tiles from random images at random centres.

    Each tile picks an image with probability proportional to its area (so every pixel of the
    training set is equally likely to be covered), a centre by :func:`random_center`, and the
    augmentation by :func:`sample_tile`.

    Parameters
    ----------
    samples : sequence of (image (C, H, W), target (H, W), weight (H, W))
        Training images with their targets and weight maps; same C and device throughout.
    n : int
        Batch size.
    in_size, out_size, config, generator
        As in :func:`sample_tile`.

    Returns
    -------
    images : Tensor (n, C, in_size, in_size), float32
    targets : Tensor (n, out_size, out_size), uint8
    weights : Tensor (n, out_size, out_size), float32
    """
    if len(samples) == 0:
        raise ValueError("samples is empty; give at least one (image, target, weight) triple.")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1; got {n!r}.")
    areas = torch.tensor([float(s[0].shape[-2] * s[0].shape[-1]) for s in samples], dtype=torch.float64)
    cumulative = torch.cumsum(areas / areas.sum(), dim=0)
    images, targets, weights = [], [], []
    for _ in range(n):
        u = torch.tensor(_uniform(generator, 0.0, 1.0), dtype=torch.float64)
        index = min(int(torch.searchsorted(cumulative, u, right=True)), len(samples) - 1)
        image, target, weight = samples[index]
        center = random_center(tuple(image.shape[-2:]), out_size, generator=generator)
        tile = sample_tile(
            image, target, weight, center=center, in_size=in_size, out_size=out_size, config=config, generator=generator
        )
        images.append(tile[0])
        targets.append(tile[1])
        weights.append(tile[2])
    return torch.stack(images), torch.stack(targets), torch.stack(weights)
