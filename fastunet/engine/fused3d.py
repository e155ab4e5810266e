"""The 3D U-Net forward on fastunet's Triton kernels (:mod:`fastunet.kernels.conv3d`,
:mod:`fastunet.kernels.upconv3d`).

:class:`FusedUNet3D` is :class:`~fastunet.engine.fused.FusedUNet` for a network of
``UNetConfig(spatial_dims=3)``: the same forward, plan of buffers (one per layer of
:func:`fastunet.geometry.layer_shapes`, allocated once per input shape), CUDA-graph capture
and outputs, with its operations on NDHWC activations:

* encoder level: ``conv3x3x3`` -> ``conv3x3x3`` with the level's max-pool (2x2x2, or 1x2x2
  where the network keeps Z) in its epilogue;
* bottom: two ``conv3x3x3``;
* decoder level: ``upconv3d`` (2x2x2 or 1x2x2), then a ``conv3x3x3`` reading the
  center-cropped skip and the up-convolution output as two sources, then ``conv3x3x3``;
* head: fused into the last decoder conv (``conv3x3x3_head``) when its channels fit one tile,
  else the 2D head kernel on the ``(N, D * H, W, C)`` view of the features.
"""

from __future__ import annotations

import torch

from ..model import ReferenceUNet
from .fused import FusedPredictor, FusedUNet, _Plan

__all__ = ["FusedUNet3D", "FusedPredictor3D"]


class FusedUNet3D(FusedUNet):
    """A 3D U-Net forward on the Triton kernels, checked against :class:`ReferenceUNet`.

    Parameters are those of :class:`~fastunet.engine.fused.FusedUNet`; the model must be a
    3D network, the tiles ``(N, C, D, H, W)``.
    """

    def __init__(self, model, device="cuda", dtype: str = "bf16", *, cuda_graph: bool = False, max_plans: int = 2):
        if not isinstance(model, ReferenceUNet):
            from ..modelfile import load_model

            model = load_model(model)
        if model.config.spatial_dims != 3:
            raise ValueError(f"FusedUNet3D runs 3D networks; got {model.config.describe()} (use FusedUNet).")
        from ..kernels import load

        self.conv3d, self.upconv3d = load(torch.device(device), "conv3d", "upconv3d")
        super().__init__(model, device, dtype, cuda_graph=cuda_graph, max_plans=max_plans)
        self.fuse_head = self.conv3d.can_fuse_head(model.config.widths[0], model.config.num_classes)

    # -- weights -------------------------------------------------------------------------
    def _pack(self, model: ReferenceUNet) -> None:
        dev, st = self.device, self.storage

        def conv(layer):
            return (self.conv3d.pack_weight(layer.weight.to(dev), st),
                    layer.bias.detach().to(dev, torch.float32).contiguous())

        self.enc = [(conv(b.conv1), conv(b.conv2)) for b in model.down]
        self.bottom = (conv(model.bottom.conv1), conv(model.bottom.conv2))
        self.ups = [(self.upconv3d.pack_weight(u.weight.to(dev), st), u.bias.detach().to(dev, torch.float32).contiguous())
                    for u in model.up]
        self.dec = [(conv(d.conv1), conv(d.conv2)) for d in model.dec]
        self.head_w = self.head.pack_weight(model.head.weight[..., 0].to(dev), st)  # (K, C, 1, 1, 1) as 1x1 2D
        self.head_b = model.head.bias.detach().to(dev, torch.float32).contiguous()
        self.pools = model.config.pool_factors  # per level (fd, 2, 2): the pools and up-convolutions

    # -- the network's operations on the 3D kernels (FusedUNet._run calls them) ------------
    def _conv(self, x, w, b, **options) -> None:
        self.conv3d.conv3x3x3(x, w, b, dtype=self.dtype, **options)

    def _pool(self, level: int):
        return self.pools[level]  # (2, 2, 2) or (1, 2, 2)

    def _upconv(self, x, w, b, level: int, out) -> None:
        self.upconv3d.upconv3d(x, w, b, factor=self.pools[level], out=out, dtype=self.dtype)

    def _conv_head(self, x, w, b, **outputs) -> None:
        self.conv3d.conv3x3x3_head(x, w, b, self.head_w, self.head_b, dtype=self.dtype, **outputs)

    def _head(self, x, **outputs) -> None:
        """The 2D head on the ``(N, D * H, W, C)`` view: a 1x1x1 conv is a 1x1 conv of it."""
        flat = {k: None if v is None else v.flatten(-3, -2) for k, v in outputs.items()}
        self.head.head(x.flatten(1, 2), self.head_w, self.head_b, dtype=self.dtype, **flat)

    def _forward(self, tiles: torch.Tensor, output: str) -> _Plan:
        if tiles.ndim != 5 or tiles.shape[1] != self.config.in_channels:
            raise ValueError(f"Expected tiles (N, {self.config.in_channels}, D, H, W); got {tuple(tiles.shape)}.")
        plan = self._plan(tiles.shape[0], *tiles.shape[2:])
        plan.x.copy_(tiles.permute(0, 2, 3, 4, 1))  # NCDHW float32 -> NDHWC storage dtype, one pass
        return self._replay(plan, output)


class FusedPredictor3D(FusedPredictor):
    """The ``triton`` backend for a 3D network (:func:`fastunet.engine.backends.make_predictor`)."""

    network = FusedUNet3D
