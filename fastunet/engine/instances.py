"""Instance labels across blocks: connected components of the class map, one id per object
over the whole volume, whatever the block and tile sizes.

Three steps, each streamed over blocks:

1. :func:`label_block` labels one block's foreground (per class: each class ``1..K-1`` is
   labelled on its own, class 0 is background) with :func:`scipy.ndimage.label`, and records
   for each of its local objects the global linear index of its first voxel (C order), its
   size and its class, plus the block's face planes (:func:`face_planes`).
2. :func:`merge` joins the local objects that touch across block faces (the pairs of equal
   positions on two adjacent faces, same class: a union-find over those pairs, computed as
   the connected components of their graph with :func:`scipy.sparse.csgraph.connected_components`,
   as dask-image's ``label`` merges its chunks), drops objects below ``min_size`` and numbers
   the rest by their first voxel in C order. That numbering is what
   :func:`scipy.ndimage.label` gives the whole image (for a two-class model without
   ``min_size``), and it depends on nothing but the class map.
3. :meth:`Merge.block_lut` maps one block's local ids to the final ids (the relabel pass).

Connectivity is the face connectivity of :func:`scipy.ndimage.label`'s default structure.
A ``ZYX`` stack is labelled slice by slice (objects never join across Z; ids are still
unique in the whole stack) unless ``connect_z=True``.

Only face planes and per-object tables reach the merge: memory is bounded by one block's
pixels plus a few numbers per object.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..errors import UserError

__all__ = ["InstanceOptions", "BlockLabels", "Merge", "label_block", "merge", "instance_dtype", "SPLITS"]

SPLITS = (None, "watershed")
_UINT32_MAX = np.iinfo(np.uint32).max


@dataclass(frozen=True)
class InstanceOptions:
    """How objects are made from the class map.

    Parameters
    ----------
    min_size : int
        Objects of fewer voxels are removed (0 keeps every object).
    split : {None, "watershed"}
        ``"watershed"`` splits touching objects of one block by a seeded watershed on the
        distance transform (see :mod:`fastunet.engine.split`).
    connect_z : bool
        ``ZYX`` stacks: join objects across slices (3-D connectivity) instead of labelling
        each slice on its own.
    """

    min_size: int = 0
    split: str | None = None
    connect_z: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.min_size, bool) or not isinstance(self.min_size, (int, np.integer)) or self.min_size < 0:
            raise UserError(f"min_size= expects a number of voxels >= 0 (0 keeps every object); got {self.min_size!r}.")
        if self.split not in SPLITS:
            raise UserError(f'split= expects None or "watershed"; got {self.split!r}.')
        if not isinstance(self.connect_z, bool):
            raise UserError(f"connect_z= expects True or False; got {self.connect_z!r}.")

    def to_dict(self) -> dict:
        return {"min_size": int(self.min_size), "split": self.split, "connect_z": self.connect_z}


def instance_dtype(count: int) -> np.dtype:
    """uint32 ids, uint64 when ``count`` objects need more."""
    return np.dtype(np.uint32 if count <= _UINT32_MAX else np.uint64)


# ------------------------------------------------------------------------ one block


@dataclass
class BlockLabels:
    """One block's local objects: ``ids`` ``(bz, by, bx)`` uint32 (0 background, ``1..n``),
    and per object ``first`` (global C-order linear index of its first voxel), ``size``
    (voxels) and ``cls`` (class)."""

    ids: np.ndarray
    first: np.ndarray
    size: np.ndarray
    cls: np.ndarray

    @property
    def n(self) -> int:
        return int(self.first.size)

    def arrays(self, faces: dict) -> dict:
        """Everything a record keeps: the tables, the ids and the face planes."""
        return {"ids": self.ids, "first": self.first, "size": self.size, "cls": self.cls, **faces}


def merge_axes(ndim: int, connect_z: bool) -> tuple[int, ...]:
    """Spatial axes (of a ``(Z,) Y, X`` layout) across whose block faces objects join."""
    return tuple(range(ndim)) if ndim == 2 or connect_z else (1, 2)


def _structure(ndim: int, connect_z: bool) -> np.ndarray:
    """scipy's default (face) connectivity on ``(bz, by, bx)`` arrays; no Z links unless
    ``connect_z`` on a ZYX layout."""
    from scipy import ndimage

    s = ndimage.generate_binary_structure(3, 1)
    if ndim == 2 or not connect_z:
        s[0] = s[2] = False
    return s


def label_block(classes: np.ndarray, origin: tuple[int, ...], shape: tuple[int, ...], num_classes: int,
                options: InstanceOptions) -> BlockLabels:
    """Local objects of one block.

    Parameters
    ----------
    classes : ndarray, uint8, ``(bz, by, bx)``
        The block's class map (``bz = 1`` for a YX layout).
    origin : tuple of int
        The block's start in the ``(Z,) Y, X`` volume.
    shape : tuple of int
        The volume's spatial shape ``(Z,) Y, X``.
    num_classes : int
        K; classes ``1..K-1`` are objects, each labelled on its own.
    options : InstanceOptions
    """
    from scipy import ndimage

    ndim = len(shape)
    structure = _structure(ndim, options.connect_z)
    ids = np.zeros(classes.shape, np.uint32)
    cls_list = []
    count = 0
    for c in range(1, max(2, int(num_classes))):
        mask = classes == c
        if options.split == "watershed":
            from .split import split_objects

            local, n = split_objects(mask, structure)
        else:
            local, n = ndimage.label(mask, structure=structure, output=np.uint32)
        if n:
            if count == 0 and options.split is None and local.dtype == np.uint32:
                ids = local  # the first class with objects: its labels are the ids (0 outside its mask)
            else:
                ids[mask] = local[mask] + np.uint32(count)
            cls_list.append(np.full(n, c, np.uint8))
            count += n
    flat = ids.ravel()
    if num_classes > 2 or options.split is not None:  # renumber by first occurrence
        ids, flat, cls_list = _by_first_occurrence(ids, count, cls_list)
    # ids are numbered by first occurrence: the running maximum steps up by one at each new id
    steps = np.diff(np.maximum.accumulate(flat), prepend=np.uint32(0))
    first_local = np.flatnonzero(steps)
    coords = np.unravel_index(first_local, ids.shape)
    if ndim == 2:
        coords = coords[1:]
    coords = tuple(c + o for c, o in zip(coords, origin))
    first = np.ravel_multi_index(coords, shape).astype(np.int64) if count else np.zeros(0, np.int64)
    size = np.bincount(flat, minlength=count + 1)[1:].astype(np.int64)
    cls = np.concatenate(cls_list) if cls_list else np.zeros(0, np.uint8)
    return BlockLabels(ids=ids, first=first, size=size, cls=cls)


def _by_first_occurrence(ids: np.ndarray, count: int, cls_list: list) -> tuple:
    """Renumber ``ids`` ``1..count`` in order of first occurrence (C order), with their classes."""
    flat = ids.ravel()
    values, index = np.unique(flat, return_index=True)
    if values.size and values[0] == 0:
        values, index = values[1:], index[1:]
    order = values[np.argsort(index, kind="stable")]  # old ids in order of first occurrence
    lut = np.zeros(count + 1, np.uint32)
    lut[order] = np.arange(1, order.size + 1, dtype=np.uint32)
    cls_old = np.concatenate(cls_list) if cls_list else np.zeros(0, np.uint8)
    ids = lut[ids]
    return ids, ids.ravel(), [cls_old[order - 1]] if order.size else []


def face_planes(ids: np.ndarray, box: tuple[tuple[int, int], ...], shape: tuple[int, ...],
                connect_z: bool) -> dict[str, np.ndarray]:
    """The id planes a merge needs: ``lo<a>`` (first plane) where the block has a neighbour
    before it along spatial axis ``a``, ``hi<a>`` (last plane) where it has one after it."""
    ndim = len(shape)
    offset = 3 - ndim
    faces = {}
    for a in merge_axes(ndim, connect_z):
        start, stop = box[a]
        axis = a + offset
        if start > 0:
            faces[f"lo{a}"] = np.take(ids, 0, axis=axis)
        if stop < shape[a]:
            faces[f"hi{a}"] = np.take(ids, ids.shape[axis] - 1, axis=axis)
    return faces


# ------------------------------------------------------------------------------ merge


@dataclass
class Merge:
    """The result of :func:`merge`: ``lut[offsets[b] + i - 1]`` is the final id of local
    object ``i`` of block ``b`` (C order of the block grid), 0 when removed."""

    lut: np.ndarray
    offsets: np.ndarray
    count: int
    largest: int
    min_size: int

    def block_lut(self, b: int) -> np.ndarray:
        """Local id -> final id for block ``b`` (entry 0: background)."""
        start, stop = int(self.offsets[b]), int(self.offsets[b + 1])
        out = np.zeros(stop - start + 1, self.lut.dtype)
        out[1:] = self.lut[start:stop]
        return out


def _face_edges(hi: np.ndarray, lo: np.ndarray, off_a: int, off_b: int, cls: np.ndarray) -> np.ndarray:
    """``(m, 2)`` provisional global id pairs that touch across one face (same class)."""
    both = (hi > 0) & (lo > 0)
    if not both.any():
        return np.zeros((0, 2), np.int64)
    u = hi[both].astype(np.int64) + (off_a - 1)
    v = lo[both].astype(np.int64) + (off_b - 1)
    same = cls[u] == cls[v]
    pairs = np.stack([u[same], v[same]], axis=1)
    return np.unique(pairs, axis=0) if len(pairs) else pairs


def merge(grid: tuple[int, ...], tables: Callable[[int], tuple], faces: Callable[[int, str], np.ndarray], *,
          ndim: int, options: InstanceOptions) -> Merge:
    """Join the blocks' local objects into the final ids.

    Parameters
    ----------
    grid : tuple of int
        The block grid (blocks numbered in its C order).
    tables : callable
        ``tables(b) -> (first, size, cls)`` of block ``b`` (see :class:`BlockLabels`).
    faces : callable
        ``faces(b, key) -> plane`` for the keys of :func:`face_planes`.
    ndim : int
        2 or 3 (the layout's spatial dimensions).
    options : InstanceOptions

    Raises
    ------
    UserError
        ``min_size`` removes every object of a volume that has some.
    """
    from scipy import sparse
    from scipy.sparse import csgraph

    nblocks = int(np.prod(grid))
    parts = [tables(b) for b in range(nblocks)]
    offsets = np.zeros(nblocks + 1, np.int64)
    offsets[1:] = np.cumsum([p[0].size for p in parts])
    total = int(offsets[-1])
    first = np.concatenate([p[0] for p in parts]) if total else np.zeros(0, np.int64)
    size = np.concatenate([p[1] for p in parts]) if total else np.zeros(0, np.int64)
    cls = np.concatenate([p[2] for p in parts]) if total else np.zeros(0, np.uint8)
    del parts
    edges = [np.zeros((0, 2), np.int64)]
    for b, index in enumerate(np.ndindex(*grid)):
        for a in merge_axes(ndim, options.connect_z):
            if index[a] + 1 >= grid[a]:
                continue
            nxt = list(index)
            nxt[a] += 1
            n = int(np.ravel_multi_index(nxt, grid))
            if offsets[b + 1] > offsets[b] and offsets[n + 1] > offsets[n]:
                edges.append(_face_edges(faces(b, f"hi{a}"), faces(n, f"lo{a}"), int(offsets[b]), int(offsets[n]),
                                         cls))
    pairs = np.concatenate(edges)
    graph = sparse.coo_matrix((np.ones(len(pairs), np.int8), (pairs[:, 0], pairs[:, 1])), shape=(total, total))
    ncomp, comp = csgraph.connected_components(graph, directed=False)
    objsize = np.bincount(comp, weights=size, minlength=ncomp).astype(np.int64)
    key = np.full(ncomp, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(key, comp, first)
    kept = np.flatnonzero(objsize >= max(1, options.min_size))
    largest = int(objsize.max()) if ncomp else 0
    if ncomp and not kept.size:
        raise UserError(
            f"min_size={options.min_size} removes every object: the largest has {largest} voxels; choose "
            f"min_size={largest} or less (0 keeps every object)."
        )
    count = int(kept.size)
    final = np.zeros(ncomp, instance_dtype(count))
    final[kept[np.argsort(key[kept], kind="stable")]] = np.arange(1, count + 1, dtype=final.dtype)
    return Merge(lut=final[comp], offsets=offsets, count=count, largest=largest, min_size=int(options.min_size))
