"""The fastunet U-Net for bioimage.io consumers: one file, nothing but torch.

This file travels inside the bioimage.io packages that ``fastunet export`` writes (the
``architecture`` of their ``pytorch_state_dict`` weights), so it imports nothing from
fastunet: a consumer (bioimageio.core, deepImageJ's Python bridge, ilastik, ...) builds
:class:`FastUNetSameSize` from it and loads the weights into it.

The network is the U-Net of Ronneberger, Fischer & Brox (2015) with the parameter names
of ``fastunet.ReferenceUNet`` (a test checks that both give the same scores): valid 3x3
convolutions, so its raw output is smaller than its input by the context ``c`` on each
side. :class:`FastUNetSameSize` gives consumers an output of the input's size, as the
paper's overlap-tile strategy does: the input is mirrored by ``c`` pixels on every side
(and a few more at the bottom and right, up to a size the max-pools take), the network
runs once, and the class probabilities (softmax) are cropped to the input's size.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["FastUNetSameSize", "context", "valid_size"]


def context(depth: int) -> int:
    """Pixels the valid convolutions consume on each side (92 for depth 4)."""
    return 6 * (1 << depth) - 4  # integer arithmetic: TorchScript's 2**depth is a float


def valid_size(output: int, depth: int) -> int:
    """The smallest input edge the network takes whose output covers ``output >= 1`` pixels.

    The valid input edges are ``2**depth * m - 4`` (every max-pool sees an even size), and an
    input edge ``n`` gives ``n - 2 * context`` output pixels, so the answer is
    ``output + 2 * context`` rounded up to that grid (``fastunet.geometry.input_size_for_output``
    in closed form: no loop, so TorchScript and ONNX keep it a function of the input's size).
    """
    return output + 2 * context(depth) + (4 - output) % (1 << depth)


def _mirror(x: torch.Tensor, dim: int, before: int, after: int) -> torch.Tensor:
    """Pad ``dim`` by mirroring at the edges (numpy's ``reflect``: the edge pixel is not
    repeated), as wide as needed (the mirror repeats with period ``2 (n - 1)``; 1 for ``n = 1``,
    written ``+ 1 // n`` rather than as a branch, so that an exported graph keeps it)."""
    n = x.shape[dim]
    idx = torch.arange(-before, n + after, device=x.device)
    m = idx % (2 * (n - 1) + 1 // n)
    idx = m - 2 * (m - (n - 1)).clamp(min=0)
    return x.index_select(dim, idx)


class _DoubleConv(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, kernel_size=3)
        self.conv2 = nn.Conv2d(out_channels, out_channels, kernel_size=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv2(torch.relu(self.conv1(x))))


class FastUNetSameSize(nn.Module):
    """The U-Net with an output of its input's size: ``(B, in_channels, H, W)`` normalized
    images to ``(B, num_classes, H, W)`` class probabilities.

    Parameters
    ----------
    in_channels, num_classes, base_channels, depth
        The architecture (``fastunet.UNetConfig``): level ``i`` has ``base_channels * 2**i``
        feature channels, ``depth`` 2x2 max-pools.
    dropout
        Unused at inference; accepted so that the whole config can be passed.
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, base_channels: int = 64, depth: int = 4,
                 dropout: float = 0.5) -> None:
        super().__init__()
        self.depth = int(depth)
        widths = [base_channels * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList()
        channels = in_channels
        for i in range(depth):
            self.down.append(_DoubleConv(channels, widths[i]))
            channels = widths[i]
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.bottom = _DoubleConv(channels, widths[depth])
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for i in reversed(range(depth)):
            self.up.append(nn.ConvTranspose2d(widths[i + 1], widths[i], kernel_size=2, stride=2))
            self.dec.append(_DoubleConv(2 * widths[i], widths[i]))
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """The valid network: class scores of the center, ``context`` smaller on each side."""
        skips: list[torch.Tensor] = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottom(x)
        for up, dec in zip(self.up, self.dec):  # from the deepest level up
            skip = skips.pop()
            x = up(x)
            top = (skip.shape[-2] - x.shape[-2]) // 2
            left = (skip.shape[-1] - x.shape[-1]) // 2
            skip = skip[..., top : top + x.shape[-2], left : left + x.shape[-1]]
            x = dec(torch.cat([skip, x], dim=1))
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        c = context(self.depth)
        x = _mirror(x, -2, c, valid_size(h, self.depth) - h - c)
        x = _mirror(x, -1, c, valid_size(w, self.depth) - w - c)
        return torch.softmax(self.scores(x)[..., :h, :w], dim=1)
