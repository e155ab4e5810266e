"""The reference U-Net of Ronneberger, Fischer & Brox (2015) in plain PyTorch.

This module is the ground truth: every Triton kernel and the fused network are validated
against :class:`ReferenceUNet`. It uses nothing but ``nn.Conv2d`` without padding,
``nn.MaxPool2d``, ``nn.ConvTranspose2d``, a center crop and ``torch.cat``.

Layout of the network for ``depth = D`` (the paper has ``D = 4``, ``base_channels = 64``)::

    encoder level i (i < D): conv3x3 -> ReLU -> conv3x3 -> ReLU  (widths base * 2**i)
                              then 2x2 max-pool
    bottom (level D):        conv3x3 -> ReLU -> conv3x3 -> ReLU -> dropout (training only)
    decoder level i (i < D): 2x2 stride-2 up-conv (halves the channels), center-crop the
                              skip of level i, cat([skip, up]), conv3x3 -> ReLU, conv3x3 -> ReLU
    head:                    1x1 conv to num_classes scores

That gives ``2*D + 2 + 3*D + 1`` convolution layers: 23 for the paper's network.
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
    """

    in_channels: int = 1
    num_classes: int = 2
    base_channels: int = 64
    depth: int = 4
    dropout: float = 0.5

    def __post_init__(self) -> None:
        for name in ("in_channels", "num_classes", "base_channels"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"UNetConfig.{name} must be a positive integer; got {value!r}.")
        if not isinstance(self.depth, int) or isinstance(self.depth, bool) or self.depth < 0:
            raise ValueError(f"UNetConfig.depth must be an integer >= 0; got {self.depth!r}.")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"UNetConfig.dropout must lie in [0, 1); got {self.dropout!r}.")

    @property
    def widths(self) -> tuple[int, ...]:
        """Feature channels per level, from the top (level 0) to the bottom (level ``depth``)."""
        return tuple(self.base_channels * 2**i for i in range(self.depth + 1))

    @property
    def num_conv_layers(self) -> int:
        """Convolution layers, counting up-convolutions and the 1x1 head (23 for the paper)."""
        return 2 * self.depth + 2 + 3 * self.depth + 1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "UNetConfig":
        if not isinstance(data, dict):
            raise TypeError(f"Expected a dict for UNetConfig; got {type(data).__name__}.")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown UNetConfig fields {unknown}; expected some of {sorted(known)}.")
        return cls(**data)


def center_crop(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop the last two axes of ``x`` to ``(height, width)`` around the center.

    With the valid convolutions of the U-Net the size difference is always even, so the
    crop is symmetric; an odd difference puts the extra pixel at the bottom/right.
    """
    h, w = x.shape[-2:]
    if height > h or width > w:
        raise ValueError(f"Cannot center-crop {h}x{w} to the larger {height}x{width}.")
    top = (h - height) // 2
    left = (w - width) // 2
    return x[..., top : top + height, left : left + width]


def _he_normal_(conv: nn.Module) -> None:
    """He et al. (2015) init as in the paper: std sqrt(2 / N), N the incoming nodes of one neuron.

    For a convolution that is ``k * k * in_channels`` (9 * in for the 3x3 convs, in for the
    1x1 head). A 2x2 stride-2 up-convolution's windows do not overlap: each output pixel
    receives one input pixel, so N = in_channels there (not 4 * in_channels, and not
    PyTorch's ``fan_in`` of a transposed conv, which counts output channels).
    """
    weight = conv.weight
    if isinstance(conv, nn.ConvTranspose2d):
        fan_in = weight.shape[0]  # (in, out, kh, kw), stride == kernel: one input pixel per output
    else:
        fan_in = weight.shape[1] * weight.shape[2] * weight.shape[3]  # (out, in, kh, kw)
    nn.init.normal_(weight, mean=0.0, std=math.sqrt(2.0 / fan_in))
    nn.init.zeros_(conv.bias)


class DoubleConv(nn.Module):
    """Two valid 3x3 convolutions, each followed by a ReLU (shrinks the size by 4)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=0)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3, padding=0)

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
    being the context the network consumes per side (92 for the paper's network).
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
        self.down = nn.ModuleList()
        channels = config.in_channels
        for i in range(depth):
            self.down.append(DoubleConv(channels, widths[i]))
            channels = widths[i]
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.bottom = DoubleConv(channels, widths[depth])
        self.dropout = nn.Dropout(config.dropout)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in reversed(range(depth)):
            self.up.append(nn.ConvTranspose2d(widths[i + 1], widths[i], kernel_size=2, stride=2))
            self.dec.append(DoubleConv(2 * widths[i], widths[i]))
        self.head = nn.Conv2d(widths[0], config.num_classes, kernel_size=1)
        for module in self.modules():
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                _he_normal_(module)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"Expected input of shape (N, {self.config.in_channels}, H, W); got {tuple(x.shape)}."
            )
        # an invalid size would be floored by a max-pool, silently
        geometry.check_tile_size(int(x.shape[-2]), self.config.depth, "tile height")
        geometry.check_tile_size(int(x.shape[-1]), self.config.depth, "tile width")
        return self._layers(x)

    def _layers(self, x: torch.Tensor) -> torch.Tensor:
        """The forward pass proper, without the input checks."""
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottom(x))
        # self.up / self.dec run from the deepest decoder level to the top one.
        for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
            x = up(x)
            x = torch.cat([center_crop(skip, x.shape[-2], x.shape[-1]), x], dim=1)
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


def forward_flops(config: UNetConfig, height: int, width: int) -> int:
    """Floating-point operations (2 per multiply-add) of one forward pass on a tile.

    Counts the convolutions, up-convolutions and the head (bias, ReLU and pooling are
    negligible and left out), from :func:`fastunet.geometry.layer_shapes`. ``height`` and
    ``width`` must be valid input sizes; divide by the output area for FLOPs per output pixel.
    """
    return sum(layer.flops for layer in geometry.layer_shapes(config, (height, width)))


def parameter_count(config: UNetConfig) -> int:
    """Number of weights and biases of the network ``config`` describes, computed from
    :func:`fastunet.geometry.layer_shapes` (nothing is built or allocated): equal to
    ``count_parameters(ReferenceUNet(config))``."""
    taps = {"conv3x3": 9, "upconv": 4, "head": 1}
    layers = geometry.layer_shapes(config, geometry.min_input_size(config.depth))
    return sum(taps[ly.kind] * ly.c_in * ly.c_out + ly.c_out for ly in layers if ly.kind in taps)
