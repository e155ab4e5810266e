"""A U-Net's hyper-parameters (:class:`UNetConfig`) and what follows from them alone: the
parameter count and the FLOPs of a forward pass. Plain Python (no torch): a model file's
config is read and checked, and a cached converted network is run, without importing PyTorch
(:mod:`fastunet.model` builds the network itself).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from . import geometry

__all__ = ["UNetConfig", "forward_flops", "parameter_count", "parameter_shapes"]


@dataclass(frozen=True)
class UNetConfig:
    """Hyper-parameters of a U-Net.

    Parameters
    ----------
    in_channels : int
        Channels of the input image (1 for a gray-value microscopy image).
    num_classes : int
        Number of output classes (2 in the paper: background and cell).
    base_channels : int
        Feature channels of the first level; level ``i`` has ``base_channels * 2**i``.
    depth : int
        Number of 2x2 max-pools (4 in the paper).
    dropout : float
        Drop-out probability at the end of the contracting path, active in training only.
    spatial_dims : {2, 3}
        2: the paper's network on ``(N, C, H, W)`` tiles; 3: the 3D U-Net of Cicek et al.
        (2016) on ``(N, C, D, H, W)`` tiles, 3x3x3 convolutions.
    pools : tuple of (int, int, int), optional
        3D only: the pool factor per level and axis ``(fz, fy, fx)``, each 1 or 2, e.g.
        ``((1, 2, 2), (2, 2, 2))`` for stacks whose Z step is about twice the pixel
        (:func:`fastunet.geometry.pools_for_spacing`). None: 2 along every axis at every level.
    """

    in_channels: int = 1
    num_classes: int = 2
    base_channels: int = 64
    depth: int = 4
    dropout: float = 0.5
    spatial_dims: int = 2
    pools: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self) -> None:
        for name in ("in_channels", "num_classes", "base_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"UNetConfig.{name} must be a positive integer; got {value!r}.")
        if not isinstance(self.depth, int) or isinstance(self.depth, bool) or self.depth < 0:
            raise ValueError(f"UNetConfig.depth must be an integer >= 0; got {self.depth!r}.")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"UNetConfig.dropout must lie in [0, 1); got {self.dropout!r}.")
        if self.spatial_dims not in (2, 3) or isinstance(self.spatial_dims, bool):
            raise ValueError(f"UNetConfig.spatial_dims must be 2 or 3; got {self.spatial_dims!r}.")
        if self.pools is not None:
            object.__setattr__(self, "pools", self._check_pools(self.pools))

    def _check_pools(self, pools) -> tuple[tuple[int, ...], ...] | None:
        example = "pools=((1, 2, 2), (2, 2, 2))"
        if self.spatial_dims != 3:
            raise ValueError(f"UNetConfig.pools is for 3D networks (spatial_dims=3); got pools={pools!r} in 2D.")
        try:
            levels = tuple(tuple(int(f) for f in level) for level in pools)
            ok = all(len(level) == 3 and all(f in (1, 2) for f in level) for level in levels)
            exact = all(float(f) == g for a, b in zip(pools, levels) for f, g in zip(a, b))
        except (TypeError, ValueError):
            ok = exact = False
        if not ok or not exact or len(levels) != self.depth:
            raise ValueError(
                f"UNetConfig.pools must give (fz, fy, fx) factors of 1 or 2 for each of the {self.depth} levels, "
                f"e.g. {example}; got {pools!r}."
            )
        return None if all(level == (2, 2, 2) for level in levels) else levels

    @property
    def widths(self) -> tuple[int, ...]:
        """Feature channels per level, from the top (level 0) to the bottom (level ``depth``)."""
        return tuple(self.base_channels * 2**i for i in range(self.depth + 1))

    @property
    def pool_factors(self) -> tuple[tuple[int, ...], ...]:
        """The pool factor per level and spatial axis: ``(2, 2)`` (2D) or ``(fz, fy, fx)``."""
        if self.pools is not None:
            return self.pools
        return ((2,) * self.spatial_dims,) * self.depth

    @property
    def axis_pools(self) -> tuple:
        """Per spatial axis, what :mod:`fastunet.geometry` takes as its ``depth``: the int
        ``depth`` where the axis is pooled by 2 at every level, else its per-level factors."""
        per_axis = zip(*self.pool_factors) if self.depth else [()] * self.spatial_dims
        return tuple(self.depth if all(f == 2 for f in axis) else tuple(axis) for axis in per_axis)

    @property
    def grid(self) -> tuple[int, ...]:
        """The max-pool grid per spatial axis (``2**depth``, or less along an axis pooled by 1)."""
        return tuple(geometry.grid_step(p) for p in self.axis_pools)

    @property
    def num_conv_layers(self) -> int:
        """Convolution layers, counting up-convolutions and the 1x1 head (23 for the paper)."""
        return 2 * self.depth + 2 + 3 * self.depth + 1

    def to_dict(self) -> dict:
        """Plain JSON values. A 2D config gives the five fields every model file has held (so
        2D files read in any fastunet version); a 3D one adds ``spatial_dims`` and ``pools``."""
        out = asdict(self)
        if self.spatial_dims == 2:
            del out["spatial_dims"], out["pools"]
        else:
            out["pools"] = [list(level) for level in self.pool_factors]
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "UNetConfig":
        if not isinstance(data, dict):
            raise TypeError(f"Expected a dict for UNetConfig; got {type(data).__name__}.")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown UNetConfig fields {unknown}; expected some of {sorted(known)}.")
        return cls(**data)

    def describe(self) -> str:
        """The network in words, e.g. ``"3D U-Net, depth 3, base 16, pools 1x2x2, 2x2x2, 2x2x2"``."""
        text = f"{self.spatial_dims}D U-Net, depth {self.depth}, base {self.base_channels}"
        if self.spatial_dims == 3 and self.depth:
            text += ", pools " + ", ".join("x".join(map(str, level)) for level in self.pool_factors)
        return text


def forward_flops(config: UNetConfig, *tile: int) -> int:
    """Floating-point operations (2 per multiply-add) of one forward pass on a tile.

    Counts the convolutions, up-convolutions and the head (bias, ReLU and pooling are
    negligible and left out), from :func:`fastunet.geometry.layer_shapes`. ``tile`` is
    ``height, width`` (``depth, height, width`` for a 3D network), valid input sizes; divide
    by the output area (volume) for FLOPs per output pixel.
    """
    return sum(layer.flops for layer in geometry.layer_shapes(config, tuple(tile)))


def parameter_shapes(config: UNetConfig) -> dict[str, tuple[int, ...]]:
    """The name and shape of every weight and bias of the network ``config`` describes, in the
    order of ``ReferenceUNet(config).state_dict()`` (a test holds them equal): what a model
    file's tensors are checked against, without building the network (or importing torch)."""
    widths, dims = config.widths, config.spatial_dims
    kernel3, kernel1 = (3,) * dims, (1,) * dims
    shapes: dict[str, tuple[int, ...]] = {}

    def double(name: str, c_in: int, c_out: int) -> None:
        for conv, c in (("conv1", c_in), ("conv2", c_out)):
            shapes[f"{name}.{conv}.weight"] = (c_out, c, *kernel3)
            shapes[f"{name}.{conv}.bias"] = (c_out,)

    channels = config.in_channels
    for i in range(config.depth):
        double(f"down.{i}", channels, widths[i])
        channels = widths[i]
    double("bottom", channels, widths[config.depth])
    levels = list(reversed(range(config.depth)))  # self.up / self.dec: the deepest level first
    for j, i in enumerate(levels):
        factor = (2,) * dims if dims == 2 else tuple(config.pool_factors[i])
        shapes[f"up.{j}.weight"] = (widths[i + 1], widths[i], *factor)
        shapes[f"up.{j}.bias"] = (widths[i],)
    for j, i in enumerate(levels):
        double(f"dec.{j}", 2 * widths[i], widths[i])
    shapes["head.weight"] = (config.num_classes, widths[0], *kernel1)
    shapes["head.bias"] = (config.num_classes,)
    return shapes


def parameter_count(config: UNetConfig) -> int:
    """Number of weights and biases of the network ``config`` describes (nothing is built or
    allocated): equal to ``count_parameters(ReferenceUNet(config))``."""
    return sum(math.prod(shape) for shape in parameter_shapes(config).values())
