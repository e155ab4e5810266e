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
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from . import geometry
from .netconfig import UNetConfig, forward_flops, parameter_count

__all__ = [
    "UNetConfig",
    "DoubleConv",
    "ReferenceUNet",
    "center_crop",
    "count_parameters",
    "parameter_count",
    "forward_flops",
]


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


def split_merge(dec: DoubleConv, skip: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``dec(cat([skip, x], dim=1))`` with its first convolution split in two, one over each
    part, summed: the same values (up to the order of the sums) without the concatenated copy.
    OpenVINO's CPU plugin fuses the sum into the second convolution and runs the default
    model's 1116 x 1116 tile 1.043x as fast as with the crop-concat
    (``benchmarks/openvino_merge.py``, ``benchmarks/results/2026-12-07T112557Z-openvino-merge.json``)."""
    conv = F.conv2d if dec.conv1.weight.dim() == 4 else F.conv3d
    c = skip.shape[1]
    weight = dec.conv1.weight
    y = conv(skip, weight[:, :c]) + conv(x, weight[:, c:], dec.conv1.bias)
    return torch.relu(dec.conv2(torch.relu(y)))


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

    def _layers(self, x: torch.Tensor, merge=None) -> torch.Tensor:
        """The forward pass proper, without the input checks. ``merge(dec, skip, x)``, where
        given, replaces each decoder level's ``dec(cat([skip, x]))`` (``skip`` already cropped;
        the OpenVINO conversion passes :func:`split_merge`)."""
        skips = []
        for level, block in enumerate(self.down):
            x = block(x)
            skips.append(x)
            x = self._pool(level, x)
        x = self.dropout(self.bottom(x))
        # self.up / self.dec run from the deepest decoder level to the top one.
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = up(x)
            skip = center_crop(skip, *x.shape[2:])
            x = dec(torch.cat([skip, x], dim=1)) if merge is None else merge(dec, skip, x)
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
