"""Training data: images paired with their instance labels, normalized slices, the validation split.

* :func:`load_pairs` reads images and labels (TIFF files, folders of TIFFs, zarr arrays or
  groups, OME-Zarr, numpy arrays) and pairs them; stacks ``(Z, H, W)`` are sets of 2D slices.
  :func:`fastunet.train.train` and :func:`fastunet.evaluate.evaluate` both read through it.
* :func:`normalized_slices` normalizes each image with the
  :class:`~fastunet.normalization.Normalization` the model will carry, over the same scope
  inference uses (the whole volume, or each slice); :func:`normalized_volume` keeps a stack
  whole, for 3D training.
* :func:`validation_split` holds out whole images (or the bottom rows of a single one).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..errors import UserError
from ..normalization import Normalization, normalization_stats
from .config import TrainConfig

__all__ = ["TrainingPair", "load_pairs", "normalized_slices", "normalized_volume", "validation_split", "voxel_size"]

_TIFF = (".tif", ".tiff")


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
    from ..io import open_volume

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
            "channel. If these are Z slices, pass axes=\"ZYX\"."
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


def _instances_from(labels: np.ndarray, name: str, volumes: bool = False) -> tuple[np.ndarray, bool]:
    """int32 instance labels; 0/1 labels become connected components per 2D slice (in 3D
    with ``volumes``)."""
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
    if fg.ndim == 2 or volumes:
        return ndi.label(fg)[0].astype(np.int32), True
    return np.stack([ndi.label(plane)[0] for plane in fg]).astype(np.int32), True


def load_pairs(images, labels, *, axes: str | None = None, volumes: bool = False) -> list[TrainingPair]:
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
    volumes : bool
        The data of a 3D network: every image must be a stack ``(Z, H, W)``, and semantic
        labels become 3D connected components (objects span slices).

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
        if volumes and (image.ndim != 3 or image.shape[0] < 2):
            raise UserError(f"Image {iname!r} has shape {image.shape}, but a 3D network trains on stacks (Z, H, W) of "
                            "2 or more slices; train a 2D network on 2D images.")
        if image.shape != label.shape:
            raise UserError(
                f"Image {iname!r} has shape {image.shape} but its labels {lname!r} have shape {label.shape}; "
                "they must match pixel for pixel."
            )
        if not (np.issubdtype(image.dtype, np.number) or image.dtype == bool):
            raise UserError(f"Image {iname!r} has dtype {image.dtype}; expected numbers.")
        instances, semantic = _instances_from(label, lname, volumes)
        pairs.append(TrainingPair(name=iname, image=image, labels=instances, semantic=semantic))
    if not pairs:
        raise UserError("No training images were given.")
    if not any(p.labels.any() for p in pairs):
        raise UserError("The labels contain no objects (all pixels are 0); label at least one object to train on.")
    return pairs


def normalized_slices(pair: TrainingPair, normalization: Normalization) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The slices of a pair, each image normalized as inference will normalize it.

    The constants come from :func:`fastunet.normalization.normalization_stats` (the same
    sample of the same volume, or of each slice for ``scope="slice"``), so a training image and
    the same image at inference are normalized identically.

    Parameters
    ----------
    pair : TrainingPair
        A 2D image or a stack with its instance labels.
    normalization : Normalization
        The normalization the model will carry.

    Returns
    -------
    list of (str, ndarray, ndarray)
        ``(name, image (1, H, W) float32, instances (H, W))`` per slice.
    """
    from ..io import open_volume

    stack = pair.image.ndim == 3
    stats = normalization_stats(open_volume(pair.image, axes="ZYX" if stack else "YX"), normalization)
    volume = pair.image if stack else pair.image[None]
    labels = pair.labels if stack else pair.labels[None]
    offsets = np.broadcast_to(stats.offset[0], (len(volume),))  # (Z,) per slice, or one per volume
    scales = np.broadcast_to(stats.scale[0], (len(volume),))
    planes = [Normalization.apply(plane, o, s) for plane, o, s in zip(volume, offsets, scales)]
    names = [f"{pair.name}[z={z}]" for z in range(len(volume))] if stack else [pair.name]
    return [(n, p[None], lab) for n, p, lab in zip(names, planes, labels)]


def voxel_size(images, axes: str | None = None) -> tuple[float, float, float] | None:
    """The ``(z, y, x)`` voxel size recorded in the first image file (OME, ImageJ metadata),
    or None when the images are arrays, not stacks, or record none."""
    from ..io import open_volume, pixel_size

    if not isinstance(images, (str, os.PathLike)):
        return None
    path = Path(images)
    if path.is_dir() and not any((path / m).exists() for m in ("zarr.json", ".zarray", ".zgroup")):
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in _TIFF and p.is_file())
        if not files:
            return None
        path = files[0]
    try:
        size = pixel_size(open_volume(path, axes=axes or None))
    except (UserError, OSError, ValueError):
        return None
    if not size.known or size.axes != "ZYX":
        return None
    return tuple(float(v) for v in size.size)  # type: ignore[return-value]


def normalized_volume(pair: TrainingPair, normalization: Normalization) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """A stack normalized as inference will normalize it, kept whole (3D training):
    ``[(name, image (1, Z, H, W) float32, instances (Z, H, W))]`` (slice-scope constants per
    slice, as :func:`normalized_slices`)."""
    planes = normalized_slices(pair, normalization)
    return [(pair.name, np.stack([p[1][0] for p in planes])[None], pair.labels)]


def _normalized(pair: TrainingPair, config: TrainConfig) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """The training items of a pair: its slices (2D network) or the whole stack (3D)."""
    if config.spatial_dims == 3:
        return normalized_volume(pair, config.normalization)
    return normalized_slices(pair, config.normalization)


_WHOLE_IMAGES_FROM = 4  # with fewer images, validation takes the bottom rows of each


def validation_split(pairs: list[TrainingPair], config: TrainConfig):
    """Training slices (normalized) and validation images (raw, whole), split by image.

    With four or more images, ``round(val_fraction * n)`` of them (at least one, at most
    ``n - 1``, drawn with ``config.seed``) are held out; with fewer (one or two annotated
    images, say) the bottom ``val_fraction`` of the rows of each, so that training sees every
    image.

    Parameters
    ----------
    pairs : list of TrainingPair
        The data, from :func:`load_pairs`.
    config : TrainConfig
        Gives ``val_fraction``, ``seed`` and ``normalization``.

    Returns
    -------
    train : list of (str, ndarray, ndarray)
        ``(name, image (1, H, W) float32, instances (H, W))`` per training slice.
    val : list of (str, ndarray, ndarray)
        ``(name, image, instances)`` with the image as loaded (2D or a stack), which
        validation segments exactly as inference would.
    description : str
        How the data were split, in words.
    """
    if config.val_fraction == 0:
        return [s for p in pairs for s in _normalized(p, config)], [], "none held out"
    if len(pairs) >= _WHOLE_IMAGES_FROM:
        n_val = min(max(1, round(config.val_fraction * len(pairs))), len(pairs) - 1)
        order = np.random.default_rng(config.seed).permutation(len(pairs))
        val_ids = set(order[:n_val].tolist())
        train = [s for i, p in enumerate(pairs) if i not in val_ids for s in _normalized(p, config)]
        val = [(p.name, p.image, p.labels) for i, p in enumerate(pairs) if i in val_ids]
        return train, val, f"{n_val} of {len(pairs)} images held out for validation"
    train, val, what = [], [], []
    for pair in pairs:
        top, bottom, rows = _split_rows(pair, config.val_fraction)
        train += _normalized(top, config)
        val.append(bottom)
        what.append(rows)
    if len(pairs) == 1:
        stack = pairs[0].image.ndim == 3
        where = f"of every slice of the single stack ({pairs[0].image.shape[0]} slices)" if stack else "of the single image"
        return train, val, f"the bottom {what[0]} rows {where} held out for validation"
    return train, val, f"the bottom rows of each of the {len(pairs)} images ({', '.join(what)}) held out for validation"


def _split_rows(pair: TrainingPair, fraction: float):
    """The top part of a pair (a TrainingPair), its bottom ``fraction`` of rows (a validation
    image) and ``"k of H"`` in words. Of a stack, the same rows of every slice: neighbouring
    slices are alike, so holding out whole slices would validate on near-copies of training data."""
    height = pair.image.shape[-2]
    cut = height - max(1, round(fraction * height))
    if cut < 1:
        raise UserError(f"Image {pair.name!r} is too small to hold out a validation part; use val_fraction=0.")
    top = TrainingPair(f"{pair.name}[:{cut}]", pair.image[..., :cut, :], pair.labels[..., :cut, :], pair.semantic)
    bottom = (f"{pair.name}[{cut}:]", pair.image[..., cut:, :], pair.labels[..., cut:, :])
    return top, bottom, f"{height - cut} of {height}"
