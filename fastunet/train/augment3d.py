"""The paper's augmentation for 3D tiles (Cicek et al. 2016 train the 3D U-Net so): elastic
deformation, rotation, flips, zoom and gray-value changes of ``(C, D, H, W)`` volumes.

As :mod:`fastunet.train.augment` does in 2D, one sampling grid maps each voxel of the input
tile to a point of the source volume; it is built in physical units (in-plane pixels: a Z step
of ``spacing[0] / spacing[-1]`` of them), so a deformation or a zoom has the same size along
every axis of an anisotropic stack::

    source = center + flip(rotate_z((u + elastic(u)) / zoom))

``u`` is the voxel's offset from the tile centre, ``elastic`` a smooth random displacement
field (normal node displacements of ``elastic_sigma`` pixels on a ``grid x grid x grid``
lattice, interpolated trilinearly: PyTorch has no tricubic mode), ``rotate_z`` a rotation in
the plane (about Z: the optics of a stack differ along Z, so Z stays Z), ``flip`` random
mirrorings of each axis, ``zoom`` as in 2D. The image and the weight map are sampled
trilinearly (``grid_sample`` of a 5-D input), the target by the nearest voxel; beyond the
border the volume is mirrored without repeating the edge voxel (``np.pad(mode="reflect")``,
:func:`fastunet.geometry.reflect_index`). Gray values vary as in 2D.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from ..geometry import reflect_index
from .augment import AugmentConfig, _gen_device, _uint8_target, _uniform, _vary_gray, random_center

__all__ = ["elastic_field_3d", "sample_tile_3d", "augment_batch_3d"]


def elastic_field_3d(size: tuple[int, int, int], *, grid: int = 3, sigma: float = 10.0,
                     generator: torch.Generator | None = None, device=None) -> torch.Tensor:
    """A smooth random displacement field ``(3, D, H, W)`` (z, y, x components, in the units
    of ``sigma``): N(0, sigma^2) on a ``grid``-node lattice whose outer nodes lie on the corner
    voxels, interpolated trilinearly (``align_corners=True``)."""
    if not isinstance(grid, int) or grid < 2:
        raise ValueError(f"grid must be an integer >= 2; got {grid!r}.")
    device = _gen_device(generator) if device is None else torch.device(device)
    nodes = torch.randn((1, 3, grid, grid, grid), generator=generator, device=_gen_device(generator)) * sigma
    return F.interpolate(nodes.to(device), size=tuple(int(s) for s in size), mode="trilinear", align_corners=True)[0]


def _check(image, target, weight, in_size, out_size) -> None:
    if not isinstance(image, torch.Tensor) or image.ndim != 4 or not image.is_floating_point():
        raise ValueError(f"image must be a float tensor (C, D, H, W); got {getattr(image, 'shape', type(image))}.")
    shape = tuple(image.shape[1:])
    for name, t in (("target", target), ("weight", weight)):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != shape:
            raise ValueError(f"{name} must be a tensor of shape {shape} (the image's D, H, W); got "
                             f"{getattr(t, 'shape', type(t))}.")
    if min(shape) < 2:
        raise ValueError(f"The volume must be at least 2 voxels along each axis; got {shape}.")
    if len(in_size) != 3 or len(out_size) != 3 or any((i - o) % 2 or o < 1 for i, o in zip(in_size, out_size)):
        raise ValueError(f"Expected three input and output edges, each difference even; got {in_size}, {out_size}.")


def sample_tile_3d(image: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, *,
                   center: tuple[float, float, float], in_size: tuple[int, int, int],
                   out_size: tuple[int, int, int], config: AugmentConfig, spacing=(1.0, 1.0, 1.0),
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One augmented 3D training sample.

    Parameters
    ----------
    image : Tensor (C, D, H, W), float
    target : Tensor (D, H, W), integer (classes 0..255)
    weight : Tensor (D, H, W), float
    center : (float, float, float)
        The source voxel ``(z, y, x)`` the tile centre maps to.
    in_size, out_size : (int, int, int)
        The network's input and output tile edges.
    config : AugmentConfig
        As in 2D; ``elastic_sigma`` in in-plane pixels, ``rotation`` about Z.
    spacing : (float, float, float)
        The voxel edges ``(z, y, x)`` (any unit); only their ratios matter.
    generator : torch.Generator, optional

    Returns
    -------
    image_tile (C, *in_size) float32, target_tile (*out_size) uint8, weight_tile (*out_size) float32
    """
    in_size, out_size = tuple(int(s) for s in in_size), tuple(int(s) for s in out_size)
    _check(image, target, weight, in_size, out_size)
    device = image.device
    shape = tuple(image.shape[1:])
    rel = [float(s) / float(spacing[-1]) for s in spacing]  # voxel edges in in-plane pixels
    axes = [(torch.arange(n, device=device, dtype=torch.float32) - (n - 1) / 2) * e for n, e in zip(in_size, rel)]
    uz, uy, ux = torch.meshgrid(*axes, indexing="ij")
    if config.elastic_sigma > 0:
        field = elastic_field_3d(in_size, grid=config.elastic_grid, sigma=config.elastic_sigma, generator=generator,
                                 device=device)
        uz, uy, ux = uz + field[0], uy + field[1], ux + field[2]
    angle = math.radians(_uniform(generator, *config.rotation))
    cos, sin = math.cos(angle), math.sin(angle)
    sy, sx, sz = cos * uy + sin * ux, cos * ux - sin * uy, uz
    if config.flip:
        flips = [_uniform(generator, 0.0, 1.0) < 0.5 for _ in range(3)]
        sz, sy, sx = (-v if f else v for v, f in zip((sz, sy, sx), flips))
    lo, hi = config.scale
    zoom = math.exp(_uniform(generator, math.log(lo), math.log(hi))) if lo != hi else lo
    source = [c + v / (zoom * e) for c, v, e in zip(center, (sz, sy, sx), rel)]  # voxel coordinates
    normalized = [2 * v / (n - 1) - 1 for v, n in zip(source, shape)]
    grid = torch.stack(normalized[::-1], dim=-1).unsqueeze(0)  # (1, D, H, W, 3), x first
    image_tile = F.grid_sample(image[None].float(), grid, mode="bilinear", padding_mode="reflection",
                               align_corners=True)[0]
    inner = tuple(slice((i - o) // 2, (i - o) // 2 + o) for i, o in zip(in_size, out_size))
    weight_tile = F.grid_sample(weight[None, None].float(), grid[(slice(None), *inner)], mode="bilinear",
                                padding_mode="reflection", align_corners=True)[0, 0]
    index = [reflect_index(torch.round(v[inner].double()).long(), n) for v, n in zip(source, shape)]
    target_tile = _uint8_target(target[index[0], index[1], index[2]])
    image_tile = _vary_gray(image_tile, config, generator)
    return image_tile.contiguous(), target_tile, weight_tile.contiguous()


def augment_batch_3d(samples: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], n: int, *,
                     in_size: tuple[int, int, int], out_size: tuple[int, int, int], config: AugmentConfig,
                     spacing=(1.0, 1.0, 1.0),
                     generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch of ``n`` augmented 3D tiles: each picks a volume with probability proportional
    to its voxels, a centre by :func:`fastunet.train.augment.random_center` and the
    augmentation by :func:`sample_tile_3d`. Returns images ``(n, C, *in_size)``, targets and
    weights ``(n, *out_size)``."""
    if len(samples) == 0:
        raise ValueError("samples is empty; give at least one (image, target, weight) triple.")
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be an integer >= 1; got {n!r}.")
    sizes = torch.tensor([float(s[0][0].numel()) for s in samples], dtype=torch.float64)
    cumulative = torch.cumsum(sizes / sizes.sum(), dim=0)
    tiles = []
    for _ in range(n):
        u = torch.tensor(_uniform(generator, 0.0, 1.0), dtype=torch.float64)
        image, target, weight = samples[min(int(torch.searchsorted(cumulative, u, right=True)), len(samples) - 1)]
        center = random_center(tuple(image.shape[-3:]), tuple(out_size), generator=generator)
        tiles.append(sample_tile_3d(image, target, weight, center=center, in_size=in_size, out_size=out_size,
                                    config=config, spacing=spacing, generator=generator))
    return tuple(torch.stack(parts) for parts in zip(*tiles))  # type: ignore[return-value]
