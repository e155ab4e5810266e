"""The settings of a training run (:class:`TrainConfig`), stored in checkpoints and model files."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields

from .. import geometry
from ..model import UNetConfig
from ..normalization import Normalization
from .augment import AugmentConfig

__all__ = ["TrainConfig", "default_augment", "parse_zoom", "LR_FLOOR"]

_OPTIMIZERS = ("sgd", "adam")
_AMP = ("none", "bf16")
_SCHEDULES = ("cosine", "constant")
LR_FLOOR = 0.01  # the cosine schedule's lowest learning rate, relative to lr
# Measured (compact U-Net, base 16, depth 3, 316 tiles, synthetic nuclei, 1200 steps): SGD with
# momentum 0.99 oscillated at lr 1e-2 and hardly learned at 3e-3; 1e-3 was the best of
# 1e-2/3e-3/1e-3/3e-4 (loss 0.61 -> 0.41). Adam at 1e-3 went much further (0.43 -> 0.12).
_DEFAULT_LR = {"sgd": 1e-3, "adam": 1e-3}


def default_augment(zoom: tuple[float, float] = (0.8, 1.25)) -> AugmentConfig:
    """The paper's augmentation plus a random rescale by ``zoom`` (objects appear 0.8-1.25 times
    their size by default: :class:`TrainConfig`'s default)."""
    return AugmentConfig(scale=zoom)


def parse_zoom(text: str) -> tuple[float, float]:
    """``"LO,HI"`` (``fastunet train --zoom``) as the rescale range of :func:`default_augment`."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--zoom expects two numbers LO,HI, e.g. 0.8,1.25; got {text!r}.") from None
    if not 0 < lo <= hi:
        raise ValueError(f"--zoom expects 0 < LO <= HI; got {text!r}.")
    return lo, hi


def _positive_int(name: str, value, *, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"TrainConfig.{name} must be an integer >= {minimum}; got {value!r}.")
    return value


@dataclass(frozen=True)
class TrainConfig:
    """Everything that defines a training run (stored in checkpoints and in the model file).

    Parameters
    ----------
    base_channels, depth, dropout : int, int, float
        The network (:class:`~fastunet.model.UNetConfig`); two classes, one input channel.
    tile : int
        Edge of the square input tile (a valid size for ``depth``, see
        :mod:`fastunet.geometry`); the loss covers its ``output_size(tile, depth)`` center.
    batch_size : int
        Tiles per step (the paper: one large tile).
    optimizer : {"adam", "sgd"}
        Adam (the default: it converges much faster on nuclei images, from one image as from
        many) or SGD with ``momentum`` (0.99 in the paper).
    lr : float, optional
        Learning rate; default 1e-3 for either (SGD with momentum 0.99 and the mean-reduced
        loss oscillates at 1e-2).
    lr_schedule : {"cosine", "constant"}
        ``cosine``: the learning rate falls from ``lr`` to ``lr / 100`` along a half cosine over
        ``lr_period`` steps, then starts again (warm restarts, Loshchilov & Hutter 2017); it
        depends on the step only, so a resumed or lengthened run follows the same schedule.
        ``constant``: ``lr`` throughout.
    lr_period : int
        Steps of one cosine cycle (default 2000, the default length: one cycle).
    momentum, weight_decay : float
        SGD momentum; L2 weight decay for either optimizer.
    amp : {"none", "bf16"}
        bf16 autocast of the forward pass (the weights and the optimizer stay fp32): on CUDA,
        or on a CPU with bf16 matrix units (AMX or AVX512-BF16; refused on other CPUs, where
        it would be slower than fp32).
    iterations : int
        Optimizer steps; ignored when ``epochs`` is given.
    epochs : float, optional
        Training length in passes over the training pixels: one epoch is as many output
        tiles as cover all training slices once.
    val_fraction : float
        Fraction held out for validation: of four or more images, whole images (at least
        one); of fewer, the bottom part of each image (of a stack, of every slice).
    val_every : int
        Steps between validations (and at the end). The model file keeps the weights of the
        best validation (highest foreground IoU + instance F1); without validation, the last.
    w0, sigma, balance : float, float, bool
        Weight map of the paper, eq. (2) (:func:`fastunet.train.weightmap.weight_map`).
    augment : AugmentConfig
        Random deformations, rescaling and gray-value changes of the training tiles (default
        :func:`default_augment`).
    normalization : Normalization
        Input normalization, stored in the model file; inference applies the same.
    seed : int
        Seeds the validation split, the initial weights, the tiles and dropout.
    checkpoint_every : int
        Steps between checkpoints (and at the end).
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    spatial_dims : {2, 3}
        2: the paper's network, trained on 2D slices (a stack is a set of slices). 3: the 3D
        U-Net (Cicek et al. 2016), trained on 3D tiles of ``(Z, H, W)`` stacks.
    tile_z : int, optional
        3D: the tile's Z edge (a valid size along Z for the network's pools); default the
        smallest whose output spans about as many physical pixels as ``tile``'s.
    spacing : (float, float, float), optional
        3D: the training volumes' voxel edges ``(z, y, x)`` (any unit): the pools are chosen
        from it (:func:`fastunet.geometry.pools_for_spacing`: 1x2x2 where Z is coarse), and
        the weight map's distances and the augmentation are in physical units. Default
        isotropic.
    """

    base_channels: int = 16
    depth: int = 3
    dropout: float = 0.5
    tile: int = 316
    batch_size: int = 1
    optimizer: str = "adam"
    lr: float | None = None
    lr_schedule: str = "cosine"
    lr_period: int = 2000
    momentum: float = 0.99
    weight_decay: float = 0.0
    amp: str = "none"
    iterations: int = 2000
    epochs: float | None = None
    val_fraction: float = 0.2
    val_every: int = 100
    w0: float = 10.0
    sigma: float = 5.0
    balance: bool = True
    augment: AugmentConfig = field(default_factory=default_augment)
    normalization: Normalization = field(default_factory=Normalization)
    seed: int = 0
    checkpoint_every: int = 500
    device: str = "auto"
    spatial_dims: int = 2
    tile_z: int | None = None
    spacing: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        if self.spacing is not None:
            object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        if self.spatial_dims != 3 and (self.tile_z is not None or self.spacing is not None):
            raise ValueError("TrainConfig.tile_z and spacing are for 3D training (spatial_dims=3).")
        self.unet_config()  # validates the network (pools from the spacing included)
        geometry.check_tile_size(self.tile, self.depth)
        if self.spatial_dims == 3:
            z_pools = self.unet_config().axis_pools[0]
            geometry.check_tile_size(self.tile_shape[0], z_pools, "tile_z")
        _positive_int("batch_size", self.batch_size)
        _positive_int("iterations", self.iterations)
        _positive_int("val_every", self.val_every)
        _positive_int("checkpoint_every", self.checkpoint_every)
        _positive_int("lr_period", self.lr_period)
        _positive_int("seed", self.seed, minimum=0)
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer must be one of {_OPTIMIZERS}; got {self.optimizer!r}.")
        if self.lr_schedule not in _SCHEDULES:
            raise ValueError(f"TrainConfig.lr_schedule must be one of {_SCHEDULES}; got {self.lr_schedule!r}.")
        if self.amp not in _AMP:
            raise ValueError(f"TrainConfig.amp must be one of {_AMP}; got {self.amp!r}.")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be positive; got {self.lr!r}.")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"TrainConfig.momentum must lie in [0, 1); got {self.momentum!r}.")
        if not self.weight_decay >= 0:
            raise ValueError(f"TrainConfig.weight_decay must be >= 0; got {self.weight_decay!r}.")
        if self.epochs is not None and not self.epochs > 0:
            raise ValueError(f"TrainConfig.epochs must be positive; got {self.epochs!r}.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"TrainConfig.val_fraction must lie in [0, 1); got {self.val_fraction!r}.")
        if not self.w0 >= 0 or not self.sigma > 0:
            raise ValueError(f"TrainConfig needs w0 >= 0 and sigma > 0; got w0={self.w0!r}, sigma={self.sigma!r}.")
        if not isinstance(self.augment, AugmentConfig):
            raise TypeError(f"TrainConfig.augment must be an AugmentConfig; got {type(self.augment).__name__}.")
        if not isinstance(self.normalization, Normalization):
            raise TypeError(
                f"TrainConfig.normalization must be a Normalization; got {type(self.normalization).__name__}."
            )

    @property
    def learning_rate(self) -> float:
        """``lr``, or the optimizer's default."""
        return float(self.lr) if self.lr is not None else _DEFAULT_LR[self.optimizer]

    def lr_at(self, step: int) -> float:
        """The learning rate of the step that follows ``step`` completed steps."""
        lr = self.learning_rate
        if self.lr_schedule == "constant":
            return lr
        phase = (step % self.lr_period) / self.lr_period
        return lr * (LR_FLOOR + (1.0 - LR_FLOOR) * 0.5 * (1.0 + math.cos(math.pi * phase)))

    @property
    def out_tile(self) -> int:
        """Edge of the output tile (the part of a sample the loss sees; in-plane in 3D)."""
        return geometry.output_size(self.tile, self.depth)

    @property
    def tile_shape(self) -> tuple[int, ...]:
        """The input tile per axis: ``(tile, tile)``, or ``(tile_z, tile, tile)`` in 3D."""
        if self.spatial_dims == 2:
            return (self.tile, self.tile)
        if self.tile_z is not None:
            return (int(self.tile_z), self.tile, self.tile)
        z_pools = self.unet_config().axis_pools[0]
        ratio = self.spacing[0] / self.spacing[-1] if self.spacing else 1.0
        out_z = max(geometry.grid_step(z_pools), round(self.out_tile / ratio))
        return (geometry.input_size_for_output(out_z, z_pools), self.tile, self.tile)

    @property
    def out_shape(self) -> tuple[int, ...]:
        """The output tile per axis (what the loss sees)."""
        pools = self.unet_config().axis_pools
        return tuple(geometry.output_size(t, p) for t, p in zip(self.tile_shape, pools))

    def unet_config(self, in_channels: int = 1) -> UNetConfig:
        pools = None
        if self.spatial_dims == 3:
            pools = geometry.pools_for_spacing(self.spacing or (1.0, 1.0, 1.0), self.depth)
        return UNetConfig(
            in_channels=in_channels,
            num_classes=2,
            base_channels=self.base_channels,
            depth=self.depth,
            dropout=self.dropout,
            spatial_dims=self.spatial_dims,
            pools=pools,
        )

    def to_dict(self) -> dict:
        """Plain JSON values; a 2D run's dict has no 3D fields (as before 3D training existed)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        if self.spatial_dims == 2:
            for name in ("spatial_dims", "tile_z", "spacing"):
                del out[name]
        out["augment"] = self.augment.to_dict()
        out["normalization"] = self.normalization.to_dict()
        return json.loads(json.dumps(out))  # tuples -> lists: plain JSON values

    @classmethod
    def from_dict(cls, data: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown TrainConfig fields {unknown}; expected some of {sorted(known)}.")
        data = dict(data)
        if isinstance(data.get("augment"), dict):
            data["augment"] = AugmentConfig(**data["augment"])
        if isinstance(data.get("normalization"), dict):
            data["normalization"] = Normalization.from_dict(data["normalization"])
        return cls(**data)
