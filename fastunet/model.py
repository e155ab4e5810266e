"""The reference U-Net of Ronneberger, Fischer & Brox (2015) in plain PyTorch, and its 3D
form (Cicek et al. 2016).

This module is the ground truth: every Triton kernel and the fused network are validated
against :class:`ReferenceUNet`. It uses nothing but ``nn.Conv2d`` without padding,
``nn.MaxPool2d``, ``nn.ConvTranspose2d``, a center crop and ``torch.cat`` (``nn.Conv3d``,
``nn.MaxPool3d`` and ``nn.ConvTranspose3d`` for ``spatial_dims=3``).

Layout of the network for ``depth = D`` (the paper has ``D = 4``, ``base_channels = 64``)::

    encoder level i (i < D): conv3x3 -> ReLU -> conv3x3 -> ReLU  (widths base * 2**i)
                              then 2x2 max-pool
    bottom (level D):        conv3x3 -> ReLU -> conv3x3 -> ReLU -> dropout (training only)
    decoder level i (i < D): 2x2 stride-2 up-conv (halves the channels), center-crop the
                              skip of level i, cat([skip, up]), conv3x3 -> ReLU, conv3x3 -> ReLU
    head:                    1x1 conv to num_classes scores

That gives ``2*D + 2 + 3*D + 1`` convolution layers: 23 for the paper's network.

The 3D network (``UNetConfig(spatial_dims=3)``) is the same configuration with 3x3x3
convolutions; its pools (and up-convolutions) are 2x2x2, or 1x2x2 at the levels where Z is
coarse (``pools=``, chosen from the voxel size by :func:`fastunet.geometry.pools_for_spacing`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from . import geometry

__all__ = [
    "UNetConfig",
    "DoubleConv",
    "ReferenceUNet",
    "center_crop",
    "count_parameters",
    "parameter_count",
    "forward_flops",
]


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


def center_crop(x: torch.Tensor, *size: int) -> torch.Tensor:
    """Crop the last ``len(size)`` axes of ``x`` to ``size`` around the center:
    ``center_crop(x, height, width)``, or ``center_crop(x, depth, height, width)``.

    With the valid convolutions of the U-Net the size difference is always even, so the
    crop is symmetric; an odd difference puts the extra pixel at the bottom/right.
    """
    have = tuple(x.shape[-len(size):])
    if any(n > h for n, h in zip(size, have)):
        raise ValueError(f"Cannot center-crop {'x'.join(map(str, have))} to the larger {'x'.join(map(str, size))}.")
    index = tuple(slice((h - n) // 2, (h - n) // 2 + n) for n, h in zip(size, have))
    return x[(..., *index)]


def _he_normal_(conv: nn.Module) -> None:
    """He et al. (2015) init as in the paper: std sqrt(2 / N), N the incoming nodes of one neuron.

    For a convolution that is ``k * k * in_channels`` (9 * in for the 3x3 convs, in for the
    1x1 head). A 2x2 stride-2 up-convolution's windows do not overlap: each output pixel
    receives one input pixel, so N = in_channels there (not 4 * in_channels, and not
    PyTorch's ``fan_in`` of a transposed conv, which counts output channels).
    """
    weight = conv.weight
    if isinstance(conv, (nn.ConvTranspose2d, nn.ConvTranspose3d)):
        fan_in = weight.shape[0]  # (in, out, kh, kw), stride == kernel: one input pixel per output
    else:
        fan_in = weight.shape[1] * math.prod(weight.shape[2:])  # (out, in, (kd,) kh, kw)
    nn.init.normal_(weight, mean=0.0, std=math.sqrt(2.0 / fan_in))
    nn.init.zeros_(conv.bias)


class DoubleConv(nn.Module):
    """Two valid 3x3 (3x3x3) convolutions, each followed by a ReLU (shrinks the size by 4)."""

    def __init__(self, in_channels: int, out_channels: int, spatial_dims: int = 2) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        self.conv1 = conv(in_channels, out_channels, kernel_size=3, padding=0)
        self.conv2 = conv(out_channels, out_channels, kernel_size=3, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))))


class ReferenceUNet(nn.Module):
    """The U-Net exactly as in the paper, in plain PyTorch (the ground truth).

    Parameters
    ----------
    config : UNetConfig
        The architecture. ``ReferenceUNet(UNetConfig())`` is the paper's network.

    The forward takes ``(N, in_channels, H, W)`` with ``H, W`` valid tile sizes (see
    :mod:`fastunet.geometry`) and returns ``(N, num_classes, H - 2c, W - 2c)`` scores, ``c``
    being the context the network consumes per side (92 for the paper's network). A 3D
    network takes ``(N, in_channels, D, H, W)``, each edge valid along its axis.
    """

    def __init__(self, config: UNetConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        if config is None:
            config = UNetConfig(**kwargs)
        elif kwargs:
            raise TypeError("Pass either a UNetConfig or keyword arguments, not both.")
        self.config = config
        widths = config.widths
        depth = config.depth
        dims = config.spatial_dims
        factors = config.pool_factors
        self.down = nn.ModuleList()
        channels = config.in_channels
        for i in range(depth):
            self.down.append(DoubleConv(channels, widths[i], dims))
            channels = widths[i]
        if dims == 2:
            self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        else:  # one pool per level: 2x2x2, or 1x2x2 where Z is kept
            self.pools = nn.ModuleList(nn.MaxPool3d(kernel_size=f, stride=f) for f in factors)
        self.bottom = DoubleConv(channels, widths[depth], dims)
        self.dropout = nn.Dropout(config.dropout)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        up_conv = nn.ConvTranspose3d if dims == 3 else nn.ConvTranspose2d
        for i in reversed(range(depth)):
            f = 2 if dims == 2 else factors[i]
            self.up.append(up_conv(widths[i + 1], widths[i], kernel_size=f, stride=f))
            self.dec.append(DoubleConv(2 * widths[i], widths[i], dims))
        self.head = (nn.Conv3d if dims == 3 else nn.Conv2d)(widths[0], config.num_classes, kernel_size=1)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Conv3d, nn.ConvTranspose3d)):
                _he_normal_(module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        config = self.config
        dims = config.spatial_dims
        if x.ndim != 2 + dims or x.shape[1] != config.in_channels:
            axes = "H, W" if dims == 2 else "D, H, W"
            raise ValueError(f"Expected input of shape (N, {config.in_channels}, {axes}); got {tuple(x.shape)}.")
        # an invalid size would be floored by a max-pool, silently
        names = ("tile depth", "tile height", "tile width")[3 - dims:]
        for size, axis_depth, what in zip(x.shape[2:], config.axis_pools, names):
            geometry.check_tile_size(int(size), axis_depth, what)
        return self._layers(x)

    def _pool(self, level: int, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x) if self.config.spatial_dims == 2 else self.pools[level](x)

    def _layers(self, x: torch.Tensor) -> torch.Tensor:
        """The forward pass proper, without the input checks."""
        skips = []
        for level, block in enumerate(self.down):
            x = block(x)
            skips.append(x)
            x = self._pool(level, x)
        x = self.dropout(self.bottom(x))
        # self.up / self.dec run from the deepest decoder level to the top one.
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = up(x)
            x = torch.cat([center_crop(skip, *x.shape[2:]), x], dim=1)
            x = dec(x)
        return self.head(x)

    def conv_layers(self) -> list[nn.Module]:
        """All convolution layers in forward order, up-convolutions and the head included."""
        layers: list[nn.Module] = []
        for block in self.down:
            layers += [block.conv1, block.conv2]
        layers += [self.bottom.conv1, self.bottom.conv2]
        for up, dec in zip(self.up, self.dec):
            layers += [up, dec.conv1, dec.conv2]
        layers.append(self.head)
        return layers


def count_parameters(module: nn.Module) -> int:
    """Number of trainable parameters of ``module``."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def forward_flops(config: UNetConfig, *tile: int) -> int:
    """Floating-point operations (2 per multiply-add) of one forward pass on a tile.

    Counts the convolutions, up-convolutions and the head (bias, ReLU and pooling are
    negligible and left out), from :func:`fastunet.geometry.layer_shapes`. ``tile`` is
    ``height, width`` (``depth, height, width`` for a 3D network), valid input sizes; divide
    by the output area (volume) for FLOPs per output pixel.
    """
    return sum(layer.flops for layer in geometry.layer_shapes(config, tuple(tile)))


def parameter_count(config: UNetConfig) -> int:
    """Number of weights and biases of the network ``config`` describes, computed from
    :func:`fastunet.geometry.layer_shapes` (nothing is built or allocated): equal to
    ``count_parameters(ReferenceUNet(config))``."""
    layers = geometry.layer_shapes(config, tuple(geometry.min_input_size(p) for p in config.axis_pools))
    return sum(ly.taps * ly.c_in * ly.c_out + ly.c_out for ly in layers if ly.kind != "pool")
