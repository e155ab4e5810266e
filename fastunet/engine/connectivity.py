"""Connected components, in numpy: of a graph (:func:`components`) and of a class map
(:func:`label_runs`), the two the instance labelling is made of (:mod:`fastunet.engine.instances`).

:func:`label_runs` labels every class of a block's class map at once, by runs: a row's
maximal runs of one class are the nodes, and two runs are joined where they are face
neighbours of the same class (along Y, and along Z where Z is linked). Along an axis of
stride ``s`` the pair (run of voxel ``i``, run of voxel ``i + s``) only changes where one of
the two voxels starts a run, so those voxels alone are compared; the runs' graph goes to
:func:`components`. The result is :func:`scipy.ndimage.label`'s for each class with its
default (face) structure, numbering included (a test holds it to that), with each piece's
first voxel, size and (for the holes) neighbours found on the runs: a 1024 x 1024 block's
labelling (:func:`fastunet.engine.instances.label_block`, background included) in 3.9 ms
against 17.6 ms through scipy's labels for 289 pieces, 11-12 ms against 25 ms for about 1900
(``benchmarks/label_runs.py``, ``benchmarks/results/2026-12-07T101047Z-label-runs.json``; the
cost grows with the runs, scipy's with the voxels); and a segment process does not import
:mod:`scipy.ndimage` (0.34 s of CPU a process there: its array-API layer).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["components", "label_runs", "Pieces", "pair_keys", "key_pairs"]


def pair_keys(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """One uint64 key per pair of ids below 2**32, ``a`` in the high half: keys sort as the pairs do."""
    return (a.astype(np.uint64) << np.uint64(32)) | b.astype(np.uint64)


def key_pairs(keys: np.ndarray, dtype) -> np.ndarray:
    """The ``(m, 2)`` pairs of :func:`pair_keys`' ``keys``, as ``dtype``."""
    return np.stack([keys >> np.uint64(32), keys & np.uint64(0xFFFFFFFF)], axis=1).astype(dtype)


def _roots(pairs: np.ndarray, n: int) -> np.ndarray:
    """Each node's root: the smallest node of its component in the undirected graph on ``n``
    nodes with edges ``pairs`` (m, 2).

    Each round hooks every root to the smallest root it has an edge to, then jumps every
    node's pointer to its root: the components with an outside edge at least halve each round,
    so a few numpy passes over the edges (importing ``scipy.sparse.csgraph`` alone took
    0.12-0.19 s of every ``fastunet segment`` process here, for graphs of a few thousand edges)."""
    parent = np.arange(n, dtype=np.int64)
    a = np.asarray(pairs[:, 0], np.int64)
    b = np.asarray(pairs[:, 1], np.int64)
    while len(a):
        ra, rb = parent[a], parent[b]  # roots: every pointer was jumped to its root
        keep = ra != rb
        a, b, ra, rb = a[keep], b[keep], ra[keep], rb[keep]  # edges inside a component are done
        if not len(a):
            break
        np.minimum.at(parent, np.maximum(ra, rb), np.minimum(ra, rb))
        while True:
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped
    return parent


def _numbered(parent: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(roots, labels)`` of :func:`_roots`' result: the roots in increasing order, and each
    node's component numbered by its root's rank."""
    roots = np.flatnonzero(parent == np.arange(parent.size))
    rank = np.zeros(parent.size, np.int32)
    rank[roots] = np.arange(roots.size, dtype=np.int32)
    return roots, rank[parent]


def components(pairs: np.ndarray, n: int) -> tuple[int, np.ndarray]:
    """Connected components of the undirected graph on ``n`` nodes with edges ``pairs`` (m, 2):
    their number and each node's component (int32), numbered in the order of their smallest
    node (the numbering of :func:`scipy.sparse.csgraph.connected_components`, which a test
    holds it to)."""
    roots, labels = _numbered(_roots(pairs, n))
    return int(roots.size), labels


class Pieces(NamedTuple):
    """A class map's connected pieces (see :func:`label_runs`): ``ids`` (the map's shape,
    uint32; 0 where a voxel belongs to no piece), and per piece ``first`` (its first voxel's
    C-order index in the map), ``size`` (voxels), ``cls`` (its class, uint8) and, when asked
    for, ``adj`` ``(m, 2)`` uint32: the pairs ``i < j`` of pieces that touch, and ``sums``
    float64: the sum of ``weights`` over each piece's voxels."""

    ids: np.ndarray
    first: np.ndarray
    size: np.ndarray
    cls: np.ndarray
    adj: np.ndarray | None
    sums: np.ndarray | None = None


def label_runs(classes: np.ndarray, *, classes_from: int, classes_to: int, link_z: bool = False,
               adjacency: bool = False, weights: np.ndarray | None = None) -> Pieces:
    """The connected pieces of each class of ``classes`` ``(bz, by, bx)`` (face connectivity;
    across Z only with ``link_z``), for the classes ``classes_from .. classes_to - 1``.

    The pieces are numbered class by class, each class's pieces in the order of their first
    voxel (C order): :func:`scipy.ndimage.label` of each class's mask in turn, each numbered
    after the pieces of the classes before it. Voxels of other classes get id 0.

    Parameters
    ----------
    classes : ndarray, uint8, ``(bz, by, bx)``
    classes_from, classes_to : int
        The classes labelled (0: the background is labelled too).
    link_z : bool
        Join pieces across Z (3-D face connectivity) instead of labelling each slice on its own.
    adjacency : bool
        Also list which pieces touch (``adj``; pieces of unlabelled classes are not listed).
    weights : ndarray, optional
        Values of ``classes``' shape, summed over each piece (``sums``): by run, then by piece
        (a quarter of the time of a sum over the voxels by their ids, measured here on a
        1024 x 1024 block); integers are summed exactly.
    """
    bz, by, bx = classes.shape
    flat = classes.reshape(-1)
    n = flat.size
    index = np.int32 if n < 2**31 - 1 else np.int64
    if n == 0:
        empty = np.zeros(0, np.int64)
        return Pieces(np.zeros(classes.shape, np.uint32), empty, empty, np.zeros(0, np.uint8),
                      np.zeros((0, 2), np.uint32) if adjacency else None,
                      None if weights is None else np.zeros(0, np.float64))
    start = np.empty(n, bool)  # where a run starts: a new class, or a new row
    start[0] = True
    np.not_equal(flat[1:], flat[:-1], out=start[1:])
    start[::bx] = True
    starts = np.flatnonzero(start)
    runs = starts.size
    lengths = np.diff(starts, append=n)
    # voxel -> its run (np.repeat: a quarter of the time of a cumsum over the voxels)
    run_of = np.repeat(np.arange(runs, dtype=index), lengths)
    run_cls = flat[starts]
    same, other = [], []
    for stride, along_y in ((bx, True), (by * bx, False)):
        if stride >= n or (not along_y and not link_z):
            continue
        at = start[:-stride] | start[stride:]  # where the pair of runs (i, i + stride) may change
        if along_y and bz > 1:  # the last row of a slice has no Y neighbour (the next slice's first row)
            at.reshape(-1, bx)[by - 1::by] = False
        equal = flat[:-stride] == flat[stride:]
        i = np.flatnonzero(at & equal)
        same.append(np.stack([run_of[i], run_of[i + stride]], axis=1))
        if adjacency:
            i = np.flatnonzero(at & ~equal)
            other.append((run_of[i], run_of[i + stride]))
    edges = np.concatenate(same) if same else np.zeros((0, 2), index)
    roots, comp = _numbered(_roots(edges, runs))  # a piece's root is its first run
    comp_cls = run_cls[roots]
    # class by class (each in order of first voxel): the pieces' new numbers
    order = np.concatenate([np.zeros(0, np.intp),
                            *(np.flatnonzero(comp_cls == c) for c in range(classes_from, classes_to))])
    number = np.zeros(roots.size, np.uint32)
    number[order] = np.arange(1, order.size + 1, dtype=np.uint32)
    run_id = number[comp]  # run -> piece id (0: a class not labelled)
    ids = np.repeat(run_id, lengths).reshape(classes.shape)
    size = np.bincount(run_id, weights=lengths, minlength=order.size + 1)[1:].astype(np.int64)
    adj = None
    if adjacency:  # along X: a row's consecutive runs; along Y and Z: the pairs found above
        row_next = np.flatnonzero(starts[1:] % bx != 0)
        a = np.concatenate([run_id[row_next], *(run_id[u] for u, _ in other)])
        b = np.concatenate([run_id[row_next + 1], *(run_id[v] for _, v in other)])
        keep = (a > 0) & (b > 0)
        a, b = a[keep], b[keep]
        adj = key_pairs(np.unique(pair_keys(np.minimum(a, b), np.maximum(a, b))), np.uint32)
    sums = None
    if weights is not None:
        values = weights.reshape(-1)
        exact = np.int64 if values.dtype.kind in "iub" else np.float64
        per_run = np.add.reduceat(values, starts, dtype=exact)
        sums = np.bincount(run_id, weights=per_run, minlength=order.size + 1)[1:]
    return Pieces(ids, starts[roots[order]].astype(np.int64), size, comp_cls[order].astype(np.uint8), adj, sums)
