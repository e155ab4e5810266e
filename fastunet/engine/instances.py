"""Instance labels across blocks: connected components of the class map, one id per object
over the whole volume, whatever the block and tile sizes.

Three steps, each streamed over blocks:

1. :func:`label_block` labels one block's foreground (per class: each class ``1..K-1`` is
   labelled on its own, class 0 is background) as :func:`scipy.ndimage.label` would, all
   classes at once by runs (:func:`fastunet.engine.connectivity.label_runs`), and records
   for each of its local objects the global linear index of its first voxel (C order), its
   size and its class, plus the block's face planes (:func:`face_planes`).
2. :func:`merge` joins the local objects that touch across block faces (the pairs of equal
   positions on two adjacent faces, same class: a union-find over those pairs, computed as
   the connected components of their graph (:func:`components`),
   as dask-image's ``label`` merges its chunks), drops objects below ``min_size`` and numbers
   the rest by their first voxel in C order. That numbering is what
   :func:`scipy.ndimage.label` gives the whole image (for a two-class model without
   ``min_size``), and it depends on nothing but the class map.
3. :meth:`Merge.block_lut` maps one block's local ids to the final ids (the relabel pass).

The clean-up (:class:`InstanceOptions`) happens in the merge, so it sees whole objects and
holes whatever the blocks: ``min_size="auto"`` removes objects smaller than a fraction of the
volume's typical object (:func:`fastunet.objectsize.auto_min_size`), ``min_confidence``
removes objects whose mean object probability (one minus the background's, from the
network's probabilities: each block sums it over its pieces of each object) is lower, and
``fill_holes`` fills the background enclosed by one object. For the holes each block also
labels its background (class 0, ids among its objects' ids, recorded with class 0), marks the
pieces that touch the volume's border (``edge``) and lists which of its pieces touch
(``adj``); the merge joins the background pieces across faces like objects, and a background
region (with the objects removed inside it) that touches no border and only one kept object
becomes that object. An object's first voxel comes before any voxel of its holes, so the
numbering stays that of :func:`scipy.ndimage.label` of the cleaned image.

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
from .connectivity import components, key_pairs, label_runs, pair_keys
from .predictor import CONFIDENCE_SCALE

__all__ = ["InstanceOptions", "BlockLabels", "Merge", "label_block", "merge", "merge_tables", "instance_dtype",
           "SPLITS"]

SPLITS = (None, "watershed")
_UINT32_MAX = np.iinfo(np.uint32).max


@dataclass(frozen=True)
class InstanceOptions:
    """How objects are made from the class map.

    Parameters
    ----------
    min_size : int or "auto"
        Objects of fewer voxels are removed (0 keeps every object); ``"auto"``: fewer than
        :func:`fastunet.objectsize.auto_min_size` of the volume's objects (a fraction of the
        typical object's size; ``typical_size`` when the volume has too few objects).
    split : {None, "watershed"}
        ``"watershed"`` splits touching objects of one block by a seeded watershed on the
        distance transform (see :mod:`fastunet.engine.split`).
    connect_z : bool
        ``ZYX`` stacks: join objects across slices (3-D connectivity) instead of labelling
        each slice on its own.
    fill_holes : bool
        Fill the background that one object encloses (in each slice, or in 3-D with
        ``connect_z``) with that object.
    min_confidence : float
        Objects whose mean object probability (over their voxels: one minus the network's
        background probability) is lower are removed; 0 keeps every object (and the blocks
        need no probabilities). In ``[0, 1)``.
    typical_size : float, optional
        The objects' expected diameter in pixels on the input grid (the model's training
        object size, rescaled), for ``min_size="auto"`` on a volume with too few objects.
    """

    min_size: int | str = 0
    split: str | None = None
    connect_z: bool = False
    fill_holes: bool = False
    min_confidence: float = 0.0
    typical_size: float | None = None

    def __post_init__(self) -> None:
        from ..objectsize import check_min_size

        try:
            object.__setattr__(self, "min_size", check_min_size(self.min_size))
        except ValueError as exc:
            raise UserError(str(exc)) from None
        if self.split not in SPLITS:
            raise UserError(f'split= expects None or "watershed"; got {self.split!r}.')
        for name in ("connect_z", "fill_holes"):
            if not isinstance(getattr(self, name), bool):
                raise UserError(f"{name}= expects True or False; got {getattr(self, name)!r}.")
        value = self.min_confidence
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
            raise UserError(f"min_confidence= expects a mean object probability in [0, 1) (0 keeps every object); "
                            f"got {value!r}.")
        object.__setattr__(self, "min_confidence", float(value))

    @property
    def confidence(self) -> bool:
        """Whether the blocks must sum their objects' probabilities (``min_confidence > 0``)."""
        return self.min_confidence > 0

    def to_dict(self) -> dict:
        return {"min_size": self.min_size, "split": self.split, "connect_z": self.connect_z,
                "fill_holes": self.fill_holes, "min_confidence": self.min_confidence}


def instance_dtype(count: int) -> np.dtype:
    """uint32 ids, uint64 when ``count`` objects need more."""
    return np.dtype(np.uint32 if count <= _UINT32_MAX else np.uint64)


# ------------------------------------------------------------------------ one block


@dataclass
class BlockLabels:
    """One block's local objects: ``ids`` ``(bz, by, bx)`` uint32 (0 background, ``1..n``:
    class by class, each class's objects in the order of their first voxel; the merge numbers
    the final objects by their first voxels, not by these ids), and per object ``first``
    (global C-order linear index of its first voxel), ``size`` (voxels) and ``cls`` (class);
    with probabilities ``conf``, the sum of its voxels' object probabilities. With
    ``fill_holes`` the background pieces are among them (class 0, so no id is 0), ``edge`` says
    which pieces touch the volume's border and ``adj`` ``(m, 2)`` lists the pairs of pieces
    that touch."""

    ids: np.ndarray
    first: np.ndarray
    size: np.ndarray
    cls: np.ndarray
    edge: np.ndarray | None = None
    adj: np.ndarray | None = None
    conf: np.ndarray | None = None

    @property
    def n(self) -> int:
        return int(self.first.size)

    def arrays(self, faces: dict) -> dict:
        """Everything a record keeps: the tables, the ids and the face planes."""
        holes = {} if self.edge is None else {"edge": self.edge, "adj": self.adj}
        conf = {} if self.conf is None else {"conf": self.conf}
        return {"ids": self.ids, "first": self.first, "size": self.size, "cls": self.cls, **holes, **conf, **faces}


def merge_axes(ndim: int, connect_z: bool) -> tuple[int, ...]:
    """Spatial axes (of a ``(Z,) Y, X`` layout) across whose block faces objects join."""
    return tuple(range(ndim)) if ndim == 2 or connect_z else (1, 2)


def _structure(ndim: int, connect_z: bool) -> np.ndarray:
    """scipy's default (face) connectivity on ``(bz, by, bx)`` arrays (what
    ``scipy.ndimage.generate_binary_structure(3, 1)`` gives); no Z links unless ``connect_z``
    on a ZYX layout."""
    s = np.zeros((3, 3, 3), bool)
    s[1, 1, :] = s[1, :, 1] = s[:, 1, 1] = True
    if ndim == 2 or not connect_z:
        s[0] = s[2] = False
    return s


def label_block(classes: np.ndarray, origin: tuple[int, ...], shape: tuple[int, ...], num_classes: int,
                options: InstanceOptions, probs: np.ndarray | None = None) -> BlockLabels:
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
    probs : ndarray, ``(K, bz, by, bx)`` or ``(1, bz, by, bx)`` uint8, optional
        The block's class probabilities, or its object probabilities as the network's
        ``"confidence"`` output gives them; needed (and only used) with ``options.confidence``,
        for each object's sum of object probabilities (``conf``).
    """
    ndim = len(shape)
    lo, hi = (0 if options.fill_holes else 1), max(2, int(num_classes))
    if options.confidence and probs is None:
        raise ValueError("min_confidence needs the block's probabilities (probs=).")
    # the "confidence" output's uint8 steps are summed with the runs (exactly); float class
    # probabilities by ids, over the objects' voxels only (_confidence_sums)
    steps = probs[0] if options.confidence and probs.dtype == np.uint8 else None
    sums = None
    if options.split is None:  # every class at once, by runs (fastunet.engine.connectivity)
        ids, first_local, size, cls, adj, sums = label_runs(classes, classes_from=lo, classes_to=hi,
                                                            link_z=ndim == 3 and options.connect_z,
                                                            adjacency=options.fill_holes, weights=steps)
        count = int(cls.size)
    else:
        structure = _structure(ndim, options.connect_z)
        ids, count, cls = _split_block(classes, lo, hi, structure)
        flat = ids.ravel()
        first_local = _first_positions(flat)
        size = np.bincount(flat, minlength=count + 1)[1:].astype(np.int64)
        adj = _touching(ids, structure) if options.fill_holes else None
    coords = np.unravel_index(first_local, ids.shape)
    if ndim == 2:
        coords = coords[1:]
    coords = tuple(c + o for c, o in zip(coords, origin))
    first = np.ravel_multi_index(coords, shape).astype(np.int64) if count else np.zeros(0, np.int64)
    found = BlockLabels(ids=ids, first=first, size=size, cls=cls, adj=adj)
    if options.confidence:
        found.conf = (_confidence_sums(ids, cls, probs) if sums is None
                      else np.where(cls > 0, sums, 0.0) / CONFIDENCE_SCALE)  # background pieces: 0
    if options.fill_holes:
        box = tuple((o, o + n) for o, n in zip(origin, ids.shape[3 - ndim:]))
        found.edge = _edge_pieces(ids, box, shape, options.connect_z, count)
    return found


def _confidence_sums(ids: np.ndarray, cls: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Per local piece, the sum over its voxels of the object probability, float64; 0 for
    background pieces. Only object voxels are read. ``probs``: the class probabilities
    ``(K, ...)`` (float; one minus the background's), or the network's ``"confidence"`` output
    ``(1, ...)`` uint8 (steps of 1/:data:`~fastunet.engine.predictor.CONFIDENCE_SCALE`)."""
    flat = ids.ravel()
    is_object = np.concatenate([[False], cls > 0])  # by id: 0 and the background pieces are not
    inside = np.flatnonzero(is_object[flat])
    values = probs[0].ravel()[inside]
    if values.dtype == np.uint8:
        return np.bincount(flat[inside], weights=values, minlength=cls.size + 1)[1:] / CONFIDENCE_SCALE
    return np.bincount(flat[inside], weights=1.0 - values.astype(np.float64), minlength=cls.size + 1)[1:]


def _split_block(classes: np.ndarray, lo: int, hi: int, structure: np.ndarray) -> tuple[np.ndarray, int, np.ndarray]:
    """``split="watershed"``: the ids of classes ``lo .. hi - 1`` (objects split at their necks,
    :mod:`fastunet.engine.split`; the background by :func:`scipy.ndimage.label`), numbered class
    by class in order of first occurrence, their count and their classes."""
    from scipy import ndimage

    from .split import split_objects

    ids = np.zeros(classes.shape, np.uint32)
    cls_list = []
    count = 0
    for c in range(lo, hi):
        mask = classes == c
        local, n = split_objects(mask, structure) if c > 0 else ndimage.label(mask, structure=structure,
                                                                               output=np.uint32)
        if n:
            ids[mask] = local[mask] + np.uint32(count)
            cls_list.append(np.full(n, c, np.uint8))
            count += n
    ids, cls = _by_first_occurrence(ids, count, cls_list)
    return ids, count, cls


def _edge_pieces(ids: np.ndarray, box, shape: tuple[int, ...], connect_z: bool, count: int) -> np.ndarray:
    """Per local piece: does it touch the volume's border (along the axes objects join across)?"""
    edge = np.zeros(count, bool)
    offset = 3 - len(shape)
    for a in merge_axes(len(shape), connect_z):
        start, stop = box[a]
        for at, index in ((start == 0, 0), (stop == shape[a], ids.shape[a + offset] - 1)):
            if at:
                edge[np.unique(np.take(ids, index, axis=a + offset)) - 1] = True
    return edge


def _touching(ids: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """``(m, 2)`` pairs ``i < j`` of local pieces that touch (the connectivity of ``structure``),
    by comparing the ids of neighbours on the flattened array: along an axis of stride ``s``,
    voxel ``i`` and ``i + s`` (the split blocks'; :func:`label_runs` finds the others' on runs)."""
    flat_ids = ids.reshape(-1)
    links = (structure[0, 1, 1], structure[1, 0, 1], structure[1, 1, 0])
    pairs, stride = [], 1
    for axis in (2, 1, 0):
        n = ids.shape[axis]
        if links[axis] and n > 1:
            at = np.flatnonzero(flat_ids[:-stride] != flat_ids[stride:])
            if stride * n < flat_ids.size:  # axes outside this one: a row's last voxel has no neighbour after it
                at = at[(at // stride) % n != n - 1]
            a, b = flat_ids[at], flat_ids[at + stride]
            pairs.append(np.unique(pair_keys(np.minimum(a, b), np.maximum(a, b))))
        stride *= n
    codes = np.unique(np.concatenate(pairs)) if pairs else np.zeros(0, np.uint64)
    return key_pairs(codes, np.uint32)


def _first_positions(flat: np.ndarray) -> np.ndarray:
    """Where each id of ``flat`` (numbered ``1..n`` by first occurrence) first occurs: the
    running maximum steps up by one at each new id. An id first occurs where a run of equal
    values starts, so the running maximum is taken over the run starts only (a tenth of a
    block's voxels or fewer: 1.5 ms against 5.8 ms for a 1024 x 1024 block, measured here)."""
    if flat.size == 0:
        return np.zeros(0, np.intp)
    starts = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate([np.zeros(1, starts.dtype), starts])
    values = flat[starts]
    return starts[np.flatnonzero(np.diff(np.maximum.accumulate(values), prepend=values.dtype.type(0)))]


def _by_first_occurrence(ids: np.ndarray, count: int, cls_list: list) -> tuple[np.ndarray, np.ndarray]:
    """Renumber ``ids`` ``1..count`` in order of first occurrence (C order); with their classes."""
    flat = ids.ravel()
    values, index = np.unique(flat, return_index=True)
    if values.size and values[0] == 0:
        values, index = values[1:], index[1:]
    order = values[np.argsort(index, kind="stable")]  # old ids in order of first occurrence
    lut = np.zeros(count + 1, np.uint32)
    lut[order] = np.arange(1, order.size + 1, dtype=np.uint32)
    cls_old = np.concatenate(cls_list) if cls_list else np.zeros(0, np.uint8)
    return lut[ids], cls_old[order - 1] if order.size else np.zeros(0, np.uint8)


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
    object ``i`` of block ``b`` (C order of the block grid), 0 when removed (or background).

    ``min_size`` is the option as given (a number or ``"auto"``), ``min_size_used`` the number
    of voxels it came to; ``removed`` objects were removed (smaller, or of a mean object
    probability under ``min_confidence``: ``unsure`` of them, by that rule alone), ``holes``
    holes were filled."""

    lut: np.ndarray
    offsets: np.ndarray
    count: int
    largest: int
    min_size: int | str
    min_size_used: int = 0
    removed: int = 0
    holes: int = 0
    min_confidence: float = 0.0
    unsure: int = 0

    def block_lut(self, b: int) -> np.ndarray:
        """Local id -> final id for block ``b`` (entry 0: background)."""
        start, stop = int(self.offsets[b]), int(self.offsets[b + 1])
        out = np.zeros(stop - start + 1, self.lut.dtype)
        out[1:] = self.lut[start:stop]
        return out

    def summary(self) -> dict:
        """What a run reports of the clean-up."""
        return {"min_size_used": self.min_size_used, "objects_removed": self.removed, "holes_filled": self.holes,
                "objects_unsure": self.unsure}


def _face_edges(hi: np.ndarray, lo: np.ndarray, off_a: int, off_b: int, cls: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Provisional global id pairs that touch across one face: ``(m, 2)`` of the same class
    (one piece), and ``(k, 2)`` of different classes (neighbours)."""
    both = (hi > 0) & (lo > 0)
    if not both.any():
        return np.zeros((0, 2), np.int64), np.zeros((0, 2), np.int64)
    u = hi[both].astype(np.int64) + (off_a - 1)
    v = lo[both].astype(np.int64) + (off_b - 1)
    same = cls[u] == cls[v]
    pairs = np.stack([u, v], axis=1)
    return _unique_rows(pairs[same]), _unique_rows(pairs[~same])


def _unique_rows(pairs: np.ndarray) -> np.ndarray:
    """The distinct rows of ``(m, 2)`` non-negative integer pairs, sorted (``np.unique(axis=0)``'s
    result), through one 64-bit key per row where both fit in 32 bits (a sort of integers: a
    tenth of the time of numpy's row sort, which compares the rows as records)."""
    if not len(pairs):
        return pairs.reshape(0, 2)
    if pairs.min() < 0 or pairs.max() >= 2**32:
        return np.unique(pairs, axis=0)
    return key_pairs(np.unique(pair_keys(pairs[:, 0], pairs[:, 1])), pairs.dtype)


def merge_tables(options: InstanceOptions) -> tuple[str, ...]:
    """The names of the per-object tables :func:`merge` takes from each block (its ``tables``),
    in that order (keys of :meth:`BlockLabels.arrays`)."""
    holes = ("edge", "adj") if options.fill_holes else ()
    return ("first", "size", "cls", *holes, *(("conf",) if options.confidence else ()))


def merge(grid: tuple[int, ...], tables: Callable[[int], tuple], faces: Callable[[int, str], np.ndarray], *,
          ndim: int, options: InstanceOptions) -> Merge:
    """Join the blocks' local objects into the final ids.

    Parameters
    ----------
    grid : tuple of int
        The block grid (blocks numbered in its C order).
    tables : callable
        ``tables(b)``: block ``b``'s tables named by :func:`merge_tables` (``first, size,
        cls``; ``edge, adj`` with ``fill_holes``; ``conf`` last with ``options.confidence``;
        see :class:`BlockLabels`).
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
    from ..objectsize import auto_min_size

    nblocks = int(np.prod(grid))
    parts = [tables(b) for b in range(nblocks)]
    offsets = np.zeros(nblocks + 1, np.int64)
    offsets[1:] = np.cumsum([p[0].size for p in parts])
    total = int(offsets[-1])
    first = np.concatenate([p[0] for p in parts]) if total else np.zeros(0, np.int64)
    size = np.concatenate([p[1] for p in parts]) if total else np.zeros(0, np.int64)
    cls = np.concatenate([p[2] for p in parts]) if total else np.zeros(0, np.uint8)
    same, touch = _joins(grid, faces, offsets, cls, ndim, options.connect_z)
    ncomp, comp = components(same, total)
    comp_cls = np.zeros(ncomp, np.uint8)
    comp_cls[comp] = cls
    objsize = np.bincount(comp, weights=size, minlength=ncomp).astype(np.int64)
    objects = comp_cls > 0
    key = np.full(ncomp, np.iinfo(np.int64).max, np.int64)
    np.minimum.at(key, comp, first)
    if options.min_size == "auto":
        min_size = auto_min_size(objsize[objects], options.typical_size, ndim=ndim if options.connect_z else 2)
    else:
        min_size = int(options.min_size)
    large = objects & (objsize >= max(1, min_size))
    sure = large
    if options.confidence:
        conf = np.concatenate([p[-1] for p in parts]) if total else np.zeros(0)
        mean = np.bincount(comp, weights=conf, minlength=ncomp) / np.maximum(objsize, 1)
        sure = large & (mean >= options.min_confidence)
    kept = np.flatnonzero(sure)
    largest = int(objsize[objects].max()) if objects.any() else 0
    if objects.any() and not large.any():
        raise UserError(
            f"min_size={min_size} removes every object: the largest has {largest} voxels; choose "
            f"min_size={largest} or less (0 keeps every object)."
        )
    count = int(kept.size)
    final = np.zeros(ncomp, instance_dtype(count))
    final[kept[np.argsort(key[kept], kind="stable")]] = np.arange(1, count + 1, dtype=final.dtype)
    holes = 0
    if options.fill_holes and total:
        adj = [p[4].astype(np.int64) + (offsets[b] - 1) for b, p in enumerate(parts) if len(p[4])]
        edge = np.concatenate([p[3] for p in parts]).astype(bool)
        holes = _fill_holes(final, comp, np.concatenate([touch, *adj]), edge, ncomp)
    del parts
    return Merge(lut=final[comp], offsets=offsets, count=count, largest=largest, min_size=options.min_size,
                 min_size_used=min_size, removed=int(objects.sum()) - count, holes=holes,
                 min_confidence=options.min_confidence, unsure=int(large.sum()) - count)


def _joins(grid, faces, offsets, cls, ndim: int, connect_z: bool) -> tuple[np.ndarray, np.ndarray]:
    """The pairs of provisional ids that touch across block faces: same class, other class."""
    same, touch = [np.zeros((0, 2), np.int64)], [np.zeros((0, 2), np.int64)]
    for b, index in enumerate(np.ndindex(*grid)):
        for a in merge_axes(ndim, connect_z):
            if index[a] + 1 >= grid[a]:
                continue
            nxt = list(index)
            nxt[a] += 1
            n = int(np.ravel_multi_index(nxt, grid))
            if offsets[b + 1] > offsets[b] and offsets[n + 1] > offsets[n]:
                s, t = _face_edges(faces(b, f"hi{a}"), faces(n, f"lo{a}"), int(offsets[b]), int(offsets[n]), cls)
                same.append(s)
                touch.append(t)
    return np.concatenate(same), np.concatenate(touch)


def _fill_holes(final: np.ndarray, comp: np.ndarray, touching: np.ndarray, edge: np.ndarray, ncomp: int) -> int:
    """Give the pieces of each hole the id of the object around it (in ``final``, in place);
    returns the number of holes filled.

    The void is everything ``final`` leaves at 0 (background and removed objects); its
    regions are its pieces joined where they touch. A region that touches no border and
    touches one kept object only is a hole of that object.
    """
    pairs = comp[touching] if len(touching) else np.zeros((0, 2), np.int64)
    void = final == 0
    inside = void[pairs[:, 0]] & void[pairs[:, 1]]
    _, region = components(pairs[inside], ncomp)
    at_edge = np.zeros(ncomp, bool)
    np.logical_or.at(at_edge, region[comp], edge)
    # (region of the void side, final id of the object side) of every void-object contact
    one = void[pairs[:, 0]] & ~void[pairs[:, 1]]
    other = void[pairs[:, 1]] & ~void[pairs[:, 0]]
    contact = np.concatenate([np.stack([region[pairs[one, 0]], final[pairs[one, 1]].astype(np.int64)], axis=1),
                              np.stack([region[pairs[other, 1]], final[pairs[other, 0]].astype(np.int64)], axis=1)])
    contact = _unique_rows(contact)
    regions, counts = np.unique(contact[:, 0], return_counts=True)
    single = regions[(counts == 1) & ~at_edge[regions]]
    if not single.size:
        return 0
    fill = np.zeros(ncomp, final.dtype)
    lookup = contact[np.isin(contact[:, 0], single)]
    fill[lookup[:, 0]] = lookup[:, 1]
    final[void] = fill[region[void]]
    return int(single.size)
