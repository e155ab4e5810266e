"""Training as in Ronneberger, Fischer & Brox (2015).

* **data**: pairs of images and instance labels (:func:`load_pairs`: TIFF files, folders of
  TIFFs, zarr arrays or groups, or numpy arrays); stacks ``(Z, H, W)`` are sets of 2D slices.
  Each image is normalized with the :class:`~fastunet.normalization.Normalization` the model
  will carry, over the same scope inference uses (the whole volume, or each slice).
* **targets**: per training slice, once, the two-class target with background on the borders
  where objects touch and the paper's weight map (:func:`fastunet.weightmap.prepare`).
* **samples**: random tiles with elastic deformation, rotation, flips and gray-value changes
  (:func:`fastunet.augment.augment_batch`), input tiles of the valid size ``tile`` whose
  labels cover the network's output.
* **optimisation**: the pixel-weighted softmax cross-entropy
  (:func:`fastunet.loss.weighted_cross_entropy`), SGD with momentum 0.99 on large tiles with
  small batches (the paper) or Adam; dropout at the end of the contracting path is active in
  training mode; optional bf16 autocast on CUDA.
* **bookkeeping**: validation foreground IoU (and instance F1) on held-out images, a tqdm
  progress bar, resumable checkpoints (safetensors, no pickle), a training-curve PNG and the
  final model file with its normalization.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from . import geometry
from .augment import AugmentConfig, augment_batch
from .devices import check_visible, resolve_device
from .errors import UserError
from .loss import weighted_cross_entropy
from .evaluate import score
from .model import ReferenceUNet, UNetConfig
from .normalization import Normalization

__all__ = [
    "TrainConfig",
    "TrainResult",
    "TrainingPair",
    "load_pairs",
    "train",
    "checkpoint_path",
    "save_checkpoint",
    "load_checkpoint",
    "write_curve",
    "check_model_name",
]

_OPTIMIZERS = ("sgd", "adam")
_AMP = ("none", "bf16")
# Measured (compact U-Net, base 16, depth 3, 316 tiles, synthetic nuclei, 1200 steps): SGD with
# momentum 0.99 oscillated at lr 1e-2 and hardly learned at 3e-3; 1e-3 was the best of
# 1e-2/3e-3/1e-3/3e-4 (loss 0.61 -> 0.41). Adam at 1e-3 went much further (0.43 -> 0.12).
_DEFAULT_LR = {"sgd": 1e-3, "adam": 1e-3}
_TIFF = (".tif", ".tiff")
CHECKPOINT_FORMAT = "fastunet-checkpoint"
CHECKPOINT_VERSION = "1"
# Fields that may change between a run and its resumption (how long and how it reports).
_RESUMABLE_CHANGES = ("iterations", "epochs", "checkpoint_every", "val_every", "device")


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
    optimizer : {"sgd", "adam"}
        SGD with ``momentum`` (0.99 in the paper) or Adam.
    lr : float, optional
        Learning rate; default 1e-3 for either (SGD with momentum 0.99 and the mean-reduced
        loss oscillates at 1e-2). Adam converges much faster on the synthetic nuclei.
    momentum, weight_decay : float
        SGD momentum; L2 weight decay for either optimizer.
    amp : {"none", "bf16"}
        bf16 autocast of the forward pass (CUDA only).
    iterations : int
        Optimizer steps; ignored when ``epochs`` is given.
    epochs : float, optional
        Training length in passes over the training pixels: one epoch is as many output
        tiles as cover all training slices once.
    val_fraction : float
        Fraction of the images held out for validation (at least one when > 0 and there are
        two or more images; with a single image, its bottom part is held out, of a single
        stack the bottom part of every slice).
    val_every : int
        Steps between validations (and at the end).
    w0, sigma, balance : float, float, bool
        Weight map of the paper, eq. (2) (:func:`fastunet.weightmap.weight_map`).
    augment : AugmentConfig
        Random deformations and gray-value changes of the training tiles.
    normalization : Normalization
        Input normalization, stored in the model file; inference applies the same.
    seed : int
        Seeds the validation split, the initial weights, the tiles and dropout.
    checkpoint_every : int
        Steps between checkpoints (and at the end).
    device : str
        ``"auto"`` (CUDA when available), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
    """

    base_channels: int = 16
    depth: int = 3
    dropout: float = 0.5
    tile: int = 316
    batch_size: int = 1
    optimizer: str = "sgd"
    lr: float | None = None
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
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    normalization: Normalization = field(default_factory=Normalization)
    seed: int = 0
    checkpoint_every: int = 500
    device: str = "auto"

    def __post_init__(self) -> None:
        UNetConfig(base_channels=self.base_channels, depth=self.depth, dropout=self.dropout)  # validates
        geometry.check_tile_size(self.tile, self.depth)
        _positive_int("batch_size", self.batch_size)
        _positive_int("iterations", self.iterations)
        _positive_int("val_every", self.val_every)
        _positive_int("checkpoint_every", self.checkpoint_every)
        _positive_int("seed", self.seed, minimum=0)
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(f"TrainConfig.optimizer must be one of {_OPTIMIZERS}; got {self.optimizer!r}.")
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

    @property
    def out_tile(self) -> int:
        """Edge of the output tile (the part of a sample the loss sees)."""
        return geometry.output_size(self.tile, self.depth)

    def unet_config(self, in_channels: int = 1) -> UNetConfig:
        return UNetConfig(
            in_channels=in_channels,
            num_classes=2,
            base_channels=self.base_channels,
            depth=self.depth,
            dropout=self.dropout,
        )

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
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


# --- data ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingPair:
    """One image (``(H, W)`` or a stack ``(Z, H, W)``) with its instance labels (int32)."""

    name: str
    image: np.ndarray
    labels: np.ndarray
    semantic: bool = False  # labels were 0/1 and became connected components


def _read_volume(path: Path, axes: str | None) -> np.ndarray:
    """A whole TIFF / zarr / OME-Zarr volume through :func:`fastunet.io.open_volume`, as
    ``(H, W)`` or ``(Z, H, W)`` (training takes one gray-value channel)."""
    from .io import open_volume

    try:
        source = open_volume(path, axes=axes)
    except UserError as first:
        if axes is not None:
            raise
        try:  # one channel only: a 3D array without axes metadata is a stack of slices
            source = open_volume(path, axes="ZYX")
        except UserError:
            raise first from None
    if "C" in source.axes:
        raise UserError(
            f"{str(path)!r} has {source.channels} channels (axes {source.axes}); training takes one gray-value "
            "channel. If these are Z slices, pass --axes ZYX (axes=\"ZYX\")."
        )
    return source.read(tuple(slice(0, n) for n in source.shape))


def _zarr_group_arrays(path: Path) -> list[str] | None:
    """Names of the arrays of a plain zarr group with several of them (paired by name), else None."""
    import zarr

    if not any((path / m).exists() for m in ("zarr.json", ".zgroup")):
        return None
    try:
        node = zarr.open(store=str(path), mode="r")
    except Exception:  # not a group after all: open_volume will say what it is
        return None
    if not isinstance(node, zarr.Group) or "multiscales" in node.attrs or "ome" in node.attrs:
        return None
    arrays = sorted(node.array_keys())
    return arrays if len(arrays) > 1 else None


def _read_path(path, axes: str | None) -> list[tuple[str, np.ndarray]]:
    """``(name, array)`` per image of a TIFF file, a folder of TIFFs, a zarr array, an
    OME-Zarr image or a zarr group of several arrays."""
    path = Path(path)
    if not path.exists():
        raise UserError(f"{str(path)!r} does not exist; give a TIFF file, a folder of TIFFs or a zarr array.")
    arrays = _zarr_group_arrays(path) if path.is_dir() else None
    if arrays:
        return [(f"{path.name}/{name}", _read_volume(path / name, axes)) for name in arrays]
    is_store = any((path / m).exists() for m in ("zarr.json", ".zarray", ".zgroup"))
    if path.is_dir() and not is_store:
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _TIFF and p.is_file())
        if not files:
            raise UserError(f"The folder {str(path)!r} holds no .tif/.tiff files and is not a zarr store.")
        return [(p.name, _read_volume(p, axes)) for p in files]
    return [(path.name, _read_volume(path, axes))]


def _as_items(source, what: str, axes: str | None) -> list[tuple[str, np.ndarray]]:
    if isinstance(source, (str, os.PathLike)):
        return _read_path(source, axes)
    if isinstance(source, np.ndarray):
        return [(f"{what}[0]", source)]
    if isinstance(source, (list, tuple)) and all(isinstance(a, np.ndarray) for a in source):
        return [(f"{what}[{i}]", a) for i, a in enumerate(source)]
    raise TypeError(f"{what} must be a path, a numpy array or a list of numpy arrays; got {type(source).__name__}.")


def _stem(name: str) -> str:
    name = name.rsplit("/", 1)[-1]
    for suffix in _TIFF:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _names_correspond(a: str, b: str) -> bool:
    """Same name, or one is the other plus a suffix (``img1`` ~ ``img1_labels``)."""
    a, b = _stem(a).lower(), _stem(b).lower()
    return a.startswith(b) or b.startswith(a)


def _instances_from(labels: np.ndarray, name: str) -> tuple[np.ndarray, bool]:
    """int32 instance labels; 0/1 labels become connected components per 2D slice."""
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if not np.issubdtype(labels.dtype, np.integer):
        if not np.issubdtype(labels.dtype, np.floating) or not np.array_equal(labels, np.round(labels)):
            raise UserError(f"Labels {name!r} must hold integers (0 = background); got {labels.dtype} values.")
    if labels.size and labels.min() < 0:
        raise UserError(f"Labels {name!r} have negative values; expected 0 = background and k > 0 = object k.")
    if labels.size and labels.max() > np.iinfo(np.int32).max:
        raise UserError(f"Labels {name!r} have ids beyond int32; renumber them 1..n.")
    if labels.size == 0 or labels.max() > 1:
        return labels.astype(np.int32), False
    fg = labels.astype(bool)
    if fg.ndim == 2:
        return ndi.label(fg)[0].astype(np.int32), True
    return np.stack([ndi.label(plane)[0] for plane in fg]).astype(np.int32), True


def load_pairs(images, labels, *, axes: str | None = None) -> list[TrainingPair]:
    """Read images and their labels and pair them.

    Parameters
    ----------
    images, labels : path, ndarray or list of ndarray
        A TIFF / OME-TIFF file, a folder of TIFF files (paired by sorted name), a zarr array,
        an OME-Zarr image, a zarr group of several arrays (paired by sorted name), a numpy
        array or a list of arrays (read by :func:`fastunet.io.open_volume`). Images are 2D
        ``(H, W)`` or stacks ``(Z, H, W)`` of one gray-value channel; labels have the same
        shape. Labels with values above 1 are instance labels (0 = background); labels
        holding only 0 and 1 are semantic, and their connected components (per 2D slice)
        become the instances (``TrainingPair.semantic`` says so: touching objects in such
        labels cannot be taught apart).
    axes : str, optional
        Axes of files whose metadata do not say or say otherwise (e.g. ``"ZYX"`` for a TIFF
        stack of 3 slices that tifffile takes for RGB); a 3D array without axes metadata is
        read as ``ZYX``.

    Returns
    -------
    list of TrainingPair

    Raises
    ------
    UserError
        Missing paths, different counts, names or shapes, unsupported dimensions, labels that
        are not integers, or labels without a single object.
    """
    image_items = _as_items(images, "images", axes)
    label_items = _as_items(labels, "labels", axes)
    if len(image_items) != len(label_items):
        raise UserError(
            f"Found {len(image_items)} image(s) but {len(label_items)} label image(s); "
            "give one label image per image (paired by sorted name)."
        )
    pairs = []
    for (iname, image), (lname, label) in zip(image_items, label_items):
        if isinstance(images, (str, os.PathLike)) and isinstance(labels, (str, os.PathLike)) and len(image_items) > 1:
            if not _names_correspond(iname, lname):
                raise UserError(
                    f"Image {iname!r} is paired with label {lname!r} by sorted name, but the names differ; "
                    "name each label file like its image (a suffix such as '_labels' is fine)."
                )
        image = np.asarray(image)
        label = np.asarray(label)
        if image.ndim == 3 and image.shape[-1] in (3, 4) and label.shape == image.shape[:2]:
            raise UserError(f"Image {iname!r} has shape {image.shape} (RGB?); expected one gray-value channel.")
        if image.ndim not in (2, 3):
            raise UserError(f"Image {iname!r} has shape {image.shape}; expected 2D (H, W) or a stack (Z, H, W).")
        if image.shape != label.shape:
            raise UserError(
                f"Image {iname!r} has shape {image.shape} but its labels {lname!r} have shape {label.shape}; "
                "they must match pixel for pixel."
            )
        if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool):
            raise UserError(f"Image {iname!r} has dtype {image.dtype}; expected numbers.")
        instances, semantic = _instances_from(label, lname)
        pairs.append(TrainingPair(name=iname, image=image, labels=instances, semantic=semantic))
    if not pairs:
        raise UserError("No training images were given.")
    if not any(p.labels.any() for p in pairs):
        raise UserError("The labels contain no objects (all pixels are 0); label at least one object to train on.")
    return pairs


def _normalized_slices(pair: TrainingPair, normalization: Normalization) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, image (1, H, W) float32, instances (H, W))`` per slice, normalized as inference will.

    The constants come from :func:`fastunet.normalization.normalization_stats` (the same
    sample of the same volume, or of each slice for ``scope="slice"``), so a training image and
    the same image at inference are normalized identically.
    """
    from .io import open_volume
    from .normalization import normalization_stats

    stack = pair.image.ndim == 3
    stats = normalization_stats(open_volume(pair.image, axes="ZYX" if stack else "YX"), normalization)
    volume = pair.image if stack else pair.image[None]
    labels = pair.labels if stack else pair.labels[None]
    offsets = np.broadcast_to(stats.offset[0], (len(volume),))  # (Z,) per slice, or one per volume
    scales = np.broadcast_to(stats.scale[0], (len(volume),))
    planes = [Normalization.apply(plane, o, s) for plane, o, s in zip(volume, offsets, scales)]
    names = [f"{pair.name}[z={z}]" for z in range(len(volume))] if stack else [pair.name]
    return [(n, p[None], lab) for n, p, lab in zip(names, planes, labels)]


def _split(pairs: list[TrainingPair], config: TrainConfig):
    """Training slices (normalized) and validation images (raw, whole), split by image.

    Returns ``(train, val, description)``: ``train`` holds ``(name, image (1, H, W) float32,
    instances (H, W))`` per slice; ``val`` holds ``(name, image, instances)`` with the image as
    loaded (2D or a stack), which validation segments exactly as inference would.
    """
    if config.val_fraction == 0:
        return [s for p in pairs for s in _normalized_slices(p, config.normalization)], [], "none held out"
    if len(pairs) >= 2:
        n_val = min(max(1, round(config.val_fraction * len(pairs))), len(pairs) - 1)
        order = np.random.default_rng(config.seed).permutation(len(pairs))
        val_ids = set(order[:n_val].tolist())
        train = [s for i, p in enumerate(pairs) if i not in val_ids for s in _normalized_slices(p, config.normalization)]
        val = [(p.name, p.image, p.labels) for i, p in enumerate(pairs) if i in val_ids]
        return train, val, f"{n_val} of {len(pairs)} images held out for validation"
    # A single image (or stack): hold out its bottom rows.
    (pair,) = pairs
    height = pair.image.shape[-2]
    cut = height - max(1, round(config.val_fraction * height))
    if cut < 1:
        raise UserError(f"Image {pair.name!r} is too small to hold out a validation part; use --val-fraction 0.")
    top = TrainingPair(f"{pair.name}[:{cut}]", pair.image[..., :cut, :], pair.labels[..., :cut, :], pair.semantic)
    val = [(f"{pair.name}[{cut}:]", pair.image[..., cut:, :], pair.labels[..., cut:, :])]
    # Of a stack, the same rows of every slice: neighbouring slices are alike, so holding out
    # whole slices would validate on near-copies of training data.
    stack = pair.image.ndim == 3
    what = f"of every slice of the single stack ({pair.image.shape[0]} slices)" if stack else "of the single image"
    description = f"the bottom {height - cut} of {height} rows {what} held out for validation"
    return _normalized_slices(top, config.normalization), val, description


# --- validation -----------------------------------------------------------------------------


def _validate(model: ReferenceUNet, val, config: TrainConfig, device: torch.device) -> dict:
    """Foreground IoU and instance F1 (IoU 0.5) on the validation images.

    Each image is segmented by the inference engine (:func:`fastunet.segmentation.segment`:
    normalization over the same scope, overlap tiles with mirrored borders) with a copy of
    the network as it is now.

    Validation leaves the training's random streams alone: the snapshot's construction (which
    draws initial weights) and inference run inside ``torch.random.fork_rng`` over the CPU
    and the training device, so the dropout masks of the following steps do not depend on
    ``val_every``. (The tiles come from the trainer's own generator, and neither training nor
    validation uses numpy's global RNG.)
    """
    from .modelfile import ModelBundle
    from .segmentation import segment

    preds, truths = [], []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        snapshot = ReferenceUNet(model.config)
        snapshot.load_state_dict(model.state_dict())
        snapshot = ModelBundle(snapshot, config.normalization)
        for _, image, labels in val:
            axes = "ZYX" if image.ndim == 3 else "YX"
            classes = segment(image, snapshot, None, axes=axes, tile=config.tile, device=str(device), progress=False)
            classes = np.asarray(classes)
            preds += list(classes == 1) if image.ndim == 3 else [classes == 1]
            truths += list(labels) if labels.ndim == 3 else [labels]
    scores = score(preds, truths)
    return {"foreground_iou": float(scores.foreground_iou), "instance_f1": float(scores.instance_f1)}


# --- checkpoints ----------------------------------------------------------------------------


def check_model_name(output: str | Path) -> Path:
    """``output`` as a Path; a :class:`UserError` unless its name ends in ``.safetensors``."""
    output = Path(output)
    if not output.name.endswith(".safetensors"):
        fix = output.with_name(output.stem + ".safetensors")
        raise UserError(
            f"The model file {str(output)!r} would hold safetensors, not a pickled PyTorch file: give it a "
            f".safetensors name, e.g. {str(fix)!r}."
        )
    return output


def checkpoint_path(output: str | os.PathLike) -> Path:
    """Where :func:`train` keeps the checkpoint of a run writing ``output``."""
    output = Path(output)
    stem = output.name[: -len(".safetensors")] if output.name.endswith(".safetensors") else output.name
    return output.with_name(stem + ".checkpoint.safetensors")


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    config: TrainConfig,
    history: dict,
    rng: dict[str, torch.Tensor],
    data: dict,
) -> Path:
    """Write a resumable checkpoint atomically (temporary file, then rename), with the mode
    of an ordinary new file (``0o666 & ~umask``, :func:`fastunet.modelfile.write_safetensors`).

    Tensors: the model weights (``model/<name>``), the optimizer state (momentum buffers or
    Adam moments, ``optim/<param index>/<key>``), the RNG states (``rng/<name>``, uint8) and the
    loss history (``history/loss``). JSON metadata: the step, the config, the optimizer's
    hyper-parameters, the validation history and a description of the data.
    """
    from .modelfile import write_safetensors

    path = Path(path)
    tensors = {f"model/{k}": v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars = {}
    for index, state in opt["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{index}/{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{index}/{key}"] = value
    for name, state in rng.items():
        tensors[f"rng/{name}"] = state.to("cpu").contiguous()
    tensors["history/loss"] = torch.tensor(history["loss"], dtype=torch.float32)
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "step": str(int(step)),
        "config": json.dumps(config.to_dict()),
        "param_groups": json.dumps(opt["param_groups"]),
        "optim_scalars": json.dumps(scalars),
        "val_history": json.dumps(history["val"]),
        "data": json.dumps(data),
    }
    return write_safetensors(path, tensors, metadata)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (never unpickles anything).

    Returns a dict with ``step``, ``config`` (TrainConfig), ``model`` (state dict), ``optimizer``
    (state dict for ``Optimizer.load_state_dict``), ``rng`` (name -> uint8 tensor),
    ``history`` ({"loss": [...], "val": [...]}) and ``data``.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"No checkpoint at {str(path)!r}; start without --resume.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{str(path)!r} is not a readable checkpoint: {exc}") from None
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("format_version") != CHECKPOINT_VERSION:
        raise UserError(f"{str(path)!r} is not a fastunet training checkpoint (version {CHECKPOINT_VERSION}).")
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in json.loads(meta["optim_scalars"]).items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    return {
        "step": int(meta["step"]),
        "config": TrainConfig.from_dict(json.loads(meta["config"])),
        "model": {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")},
        "optimizer": {"state": state, "param_groups": json.loads(meta["param_groups"])},
        "rng": {k[len("rng/") :]: v for k, v in tensors.items() if k.startswith("rng/")},
        "history": {"loss": tensors["history/loss"].tolist(), "val": json.loads(meta["val_history"])},
        "data": json.loads(meta["data"]),
    }


# --- curve ----------------------------------------------------------------------------------


def write_curve(path: str | os.PathLike, history: dict, *, title: str | None = None) -> Path:
    """A PNG of the training loss (per step, and its running mean over ``len // 20`` steps,
    at most 100, from 40 steps on) and the validation scores vs step."""
    from matplotlib.figure import Figure  # no pyplot: no global figure state, Agg canvas

    path = Path(path)
    loss = np.asarray(history["loss"], np.float64)
    steps = np.arange(1, len(loss) + 1)
    fig = Figure(figsize=(9, 4.5), layout="constrained")
    ax = fig.subplots()
    if len(loss):
        ax.plot(steps, loss, color="tab:blue", alpha=0.25, lw=0.8, label="loss")
        k = min(len(loss) // 20, 100)
        if k > 1:  # a mean of one step would redraw the loss line
            smooth = np.convolve(loss, np.ones(k) / k, mode="valid")
            ax.plot(steps[k - 1 :], smooth, color="tab:blue", lw=1.8, label=f"loss (mean of {k})")
        ax.set_yscale("log")
    ax.set_xlabel("iteration")
    ax.set_ylabel("weighted cross-entropy")
    val = history.get("val") or []
    if val:
        ax2 = ax.twinx()
        vs = [v["step"] for v in val]
        ax2.plot(vs, [v["foreground_iou"] for v in val], "o-", color="tab:red", label="val foreground IoU")
        ax2.plot(vs, [v["instance_f1"] for v in val], "s--", color="tab:green", label="val instance F1")
        ax2.set_ylim(0, 1)
        ax2.set_ylabel("validation score")
        ax2.legend(loc="lower right")
    ax.legend(loc="lower left")
    if title:
        ax.set_title(title)
    fig.savefig(path, dpi=100)
    return path


# --- training -------------------------------------------------------------------------------


@dataclass
class TrainResult:
    """What :func:`train` did: the trained model (eval mode) and where it wrote things.

    ``seconds`` is the wall time of this call's training loop (validation and checkpoints
    included); ``tiles_per_second`` counts the training steps only (sampling, forward,
    backward, update).
    """

    model: ReferenceUNet
    output: Path
    checkpoint: Path
    curve: Path | None
    steps: int
    history: dict
    val: dict | None
    seconds: float
    tiles_per_second: float
    notes: list[str]


def _make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)


def _iterations(config: TrainConfig, train_slices) -> int:
    if config.epochs is None:
        return config.iterations
    pixels = sum(image.shape[1] * image.shape[2] for _, image, _ in train_slices)
    per_epoch = math.ceil(pixels / config.out_tile**2 / config.batch_size)
    return max(1, math.ceil(config.epochs * per_epoch))


def _check_resume(saved: TrainConfig, config: TrainConfig, saved_data: dict, data: dict, path: Path) -> None:
    differ = [
        f.name
        for f in fields(TrainConfig)
        if f.name not in _RESUMABLE_CHANGES and getattr(saved, f.name) != getattr(config, f.name)
    ]
    if differ:
        raise UserError(
            f"The checkpoint {str(path)!r} was made with other settings ({', '.join(differ)}); resume with the "
            "same settings, or start afresh without --resume."
        )
    if saved_data != data:
        raise UserError(
            f"The checkpoint {str(path)!r} was made with other training data; resume with the same images and "
            "labels, or start afresh without --resume."
        )


@contextlib.contextmanager
def _flush_denormals(device: torch.device):
    """Flush denormal floats to zero while training on the CPU.

    Early in training denormals made CPU steps 10-20x slower (measured: 0.5-2 s instead of
    ~85 ms per step for base 8, depth 3, 316 tiles, Adam). PyTorch has no getter for this
    setting, so it returns to PyTorch's default (off) afterwards.
    """
    active = device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if active:
            torch.set_flush_denormal(False)


def _samples(train_slices, config: TrainConfig, device: torch.device, weight_figure) -> list[tuple]:
    """``(image, target, weight)`` tensors on ``device`` per training slice: the two-class target
    and the paper's weight map, computed once; optionally the figure of the first one."""
    from .weightmap import prepare, weight_map_figure

    samples = []
    for index, (_, image, instances) in enumerate(train_slices):
        target, weight = prepare(instances, w0=config.w0, sigma=config.sigma, balance=config.balance)
        if index == 0 and weight_figure is not None:
            weight_map_figure(weight_figure, image[0], target, weight, instances=instances)
        samples.append(tuple(torch.from_numpy(a).to(device) for a in (image, target, weight)))
    return samples


def train(
    images,
    labels,
    output: str | os.PathLike,
    *,
    config: TrainConfig = TrainConfig(),
    resume: bool = False,
    progress: bool = True,
    curve: str | os.PathLike | None = None,
    weight_figure: str | os.PathLike | None = None,
    axes: str | None = None,
    command: str | None = None,
) -> TrainResult:
    """Train a U-Net on images with instance (or semantic) labels and save it.

    Parameters
    ----------
    images, labels
        Anything :func:`load_pairs` takes (TIFF files or folders, zarr, numpy arrays).
    output : path-like
        The model file to write; its name must end in ``.safetensors`` (a ``UserError``
        otherwise, raised before any work). The checkpoint goes beside it
        (:func:`checkpoint_path`).
    config : TrainConfig
        The run's settings.
    resume : bool
        Continue from the checkpoint beside ``output`` (same settings and data; only the
        length, the reporting periods and the device may change).
    progress : bool
        Show a tqdm progress bar (loss, validation IoU, tiles/s) and notes on stderr.
    curve : path-like, optional
        The training-curve PNG; default ``<output stem>.curve.png`` beside ``output``.
    weight_figure : path-like, optional
        Write image, target and weight map of the first training slice as a PNG (the
        paper's figure 3).
    axes : str, optional
        Axes of the image and label files, see :func:`load_pairs`.
    command : str, optional
        The command line that started the run, stored in the model file.

    Returns
    -------
    TrainResult
    """
    from tqdm.auto import tqdm

    from .modelfile import save_model

    output = check_model_name(output)
    ckpt = checkpoint_path(output)
    if curve is None:
        curve = output.with_name(output.name[: -len(".safetensors")] + ".curve.png")
    curve = Path(curve)
    device = check_visible(resolve_device(config.device))
    amp = config.amp == "bf16"
    if amp and device.type != "cuda":
        raise UserError("amp='bf16' needs a CUDA device; train in fp32 on the CPU (amp='none').")
    notes: list[str] = []

    def note(message: str) -> None:
        notes.append(message)
        if progress:
            tqdm.write(f"note: {message}")

    pairs = load_pairs(images, labels, axes=axes)
    for p in pairs:
        if p.semantic:
            note(f"labels of {p.name} hold only 0 and 1: their connected components are the instances")
    train_slices, val_images, split = _split(pairs, config)
    note(f"{len(train_slices)} training slice(s), {len(val_images)} validation image(s): {split}")
    data = {
        "train": [[n, list(im.shape)] for n, im, _ in train_slices],
        "val": [[n, list(im.shape)] for n, im, _ in val_images],
    }

    samples = _samples(train_slices, config, device, weight_figure)
    total = _iterations(config, train_slices)
    in_channels = train_slices[0][1].shape[0]

    fork_devices = [device] if device.type == "cuda" else []
    # fork_rng: dropout draws from torch's global RNG; the caller's state stays untouched.
    with torch.random.fork_rng(devices=fork_devices), _flush_denormals(device):
        torch.manual_seed(config.seed)
        model = ReferenceUNet(config.unet_config(in_channels)).to(device)
        optimizer = _make_optimizer(model, config)
        generator = torch.Generator().manual_seed(config.seed)  # tiles and augmentation (CPU)
        history: dict = {"loss": [], "val": []}
        step = 0
        if resume:
            saved = load_checkpoint(ckpt)
            _check_resume(saved["config"], config, saved["data"], data, ckpt)
            model.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            generator.set_state(saved["rng"]["augment"])
            torch.set_rng_state(saved["rng"]["torch_cpu"])
            if device.type == "cuda" and "torch_cuda" in saved["rng"]:
                torch.cuda.set_rng_state(saved["rng"]["torch_cuda"], device)
            step, history = saved["step"], saved["history"]
            note(f"resumed from {ckpt} at step {step}")

        def rng_state() -> dict:
            state = {"augment": generator.get_state(), "torch_cpu": torch.get_rng_state()}
            if device.type == "cuda":
                state["torch_cuda"] = torch.cuda.get_rng_state(device)
            return state

        def checkpoint() -> None:
            save_checkpoint(
                ckpt, model=model, optimizer=optimizer, step=step, config=config, history=history,
                rng=rng_state(), data=data,
            )  # fmt: skip

        model.train()
        bar = tqdm(total=total, initial=min(step, total), disable=not progress, unit="it", dynamic_ncols=True)
        start, start_step, ema, busy = time.perf_counter(), step, None, 0.0
        val_now = history["val"][-1] if history["val"] else None
        consistent = True  # model, optimizer, RNGs and history all describe the same step
        try:
            while step < total:
                tick = time.perf_counter()
                x, target, weight = augment_batch(
                    samples, config.batch_size, in_size=config.tile, out_size=config.out_tile,
                    config=config.augment, generator=generator,
                )  # fmt: skip
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    logits = model(x)
                # On CUDA this is the fused Triton loss (one pass over the logits for loss and
                # gradient; the uint8 target cannot hold ignore_index -100, so no count pass);
                # the backward through the convolutions is PyTorch's autograd for now.
                loss = weighted_cross_entropy(logits, target, weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                consistent = False
                optimizer.step()
                value = float(loss.detach())
                if not math.isfinite(value):
                    raise UserError(
                        f"The loss became {value} at step {step + 1}; lower the learning rate "
                        f"(now {config.learning_rate:g})."
                    )
                step += 1
                history["loss"].append(value)
                consistent = True
                busy += time.perf_counter() - tick
                ema = value if ema is None else 0.95 * ema + 0.05 * value
                if val_images and (step % config.val_every == 0 or step == total):
                    val_now = {"step": step, **_validate(model, val_images, config, device)}
                    history["val"].append(val_now)
                if step % config.checkpoint_every == 0 or step == total:
                    checkpoint()
                postfix = {"loss": f"{ema:.4f}", "tiles/s": f"{(step - start_step) * config.batch_size / busy:.2f}"}
                if val_now:
                    postfix["val_iou"] = f"{val_now['foreground_iou']:.3f}"
                bar.set_postfix(postfix, refresh=False)
                bar.update(1)
        except KeyboardInterrupt:
            if consistent and step > start_step:
                checkpoint()  # so that --resume continues from here
                note(f"interrupted: checkpoint at step {step} written to {ckpt}")
            raise
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        if step == start_step and val_images and not history["val"]:
            history["val"].append({"step": step, **_validate(model, val_images, config, device)})

    model.eval()
    val = {k: v for k, v in history["val"][-1].items() if k != "step"} if history["val"] else None
    extra = {
        "trained_with": command or "fastunet.training.train",
        "training_config": config.to_dict(),
        "training_steps": step,
        "training_data": {"train": [n for n, _ in data["train"]], "val": [n for n, _ in data["val"]]},
    }
    if val:
        extra["val_metrics"] = val
    save_model(output, model, normalization=config.normalization, extra=extra)
    curve_path = write_curve(curve, history, title=f"{output.name}: {step} steps")
    tiles_per_second = (step - start_step) * config.batch_size / busy if busy > 0 else 0.0
    return TrainResult(
        model=model,
        output=output,
        checkpoint=ckpt,
        curve=curve_path,
        steps=step,
        history=history,
        val=val,
        seconds=seconds,
        tiles_per_second=tiles_per_second,
        notes=notes,
    )
