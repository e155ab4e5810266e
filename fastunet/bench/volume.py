"""The data of P4 and P5: the generated benchmark volume, its cache folder, and a model file
with random weights (the speed of a forward does not depend on the weights).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..model import ReferenceUNet, UNetConfig

__all__ = ["VOLUME_ATTR", "bench_volume", "cache_volume_path", "default_cache_dir", "random_model_file"]

VOLUME_ATTR = "fastunet_bench_volume"


def default_cache_dir() -> Path:
    """Where P4 and P5 keep their generated volume and their outputs (several GiB).

    ``$XDG_CACHE_HOME/fastunet/bench``, else ``~/.cache/fastunet/bench``: on a local disk,
    outside the repository (``cache_dir=`` of P4/P5 and :func:`fastunet.bench.run`, or
    ``fastunet bench --cache DIR``, picks another folder).

    Returns
    -------
    pathlib.Path
    """
    root = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(root) / "fastunet" / "bench"


def bench_volume(path, shape=(64, 4096, 4096), *, chunks=(1, 1024, 1024), seed: int = 0, variants: int = 4):
    """A uint16 zarr volume of synthetic nuclei for P4/P5, written once and then reused.

    Drawing a gigavoxel of new nuclei would take long, so ``variants`` planes of
    :func:`fastunet.synthetic.synthetic_nuclei` of one chunk's ``(Y, X)`` size are drawn once, and
    every chunk of the volume is one of them, cyclically shifted by a random offset, plus a
    randomly shifted pattern of uniform noise in ``[0, 16)`` counts (random choices from
    ``seed``: the same arguments give the same volume). Speed does not depend on the
    content beyond its compressibility, which stays that of nuclei images.

    Parameters
    ----------
    path : path-like
        The zarr array folder (zarr v3, default compressor).
    shape, chunks : (Z, Y, X)
    seed, variants : int

    Returns
    -------
    zarr.Array
        The volume, opened read-only.

    Notes
    -----
    An attribute ``fastunet_bench_volume`` records shape, chunks, seed and variants and is
    marked complete last: a volume this function made with the same arguments is reused; a
    partial one, or one made with other arguments, is rewritten; anything else at ``path``
    is refused (:class:`~fastunet.errors.UserError`), never overwritten.
    """
    import zarr

    from ..synthetic import synthetic_nuclei

    shape = tuple(int(n) for n in shape)
    chunks = tuple(int(c) for c in chunks)
    if len(shape) != 3 or len(chunks) != 3 or min(shape) < 1 or min(chunks) < 1:
        raise ValueError(f"Expected a (Z, Y, X) shape and chunks of positive sizes; got {shape} and {chunks}.")
    path = Path(path)
    want = {"shape": list(shape), "chunks": list(chunks), "seed": int(seed), "variants": int(variants), "complete": True}
    if path.exists():
        try:
            meta = dict(zarr.open_array(str(path), mode="r").attrs).get(VOLUME_ATTR)
        except (OSError, ValueError):
            meta = None
        if meta is None:
            raise UserError(
                f"{str(path)!r} exists and is not a fastunet benchmark volume; remove it or choose "
                'another cache folder (cache_dir="DIR").'
            )
        if meta == want:
            return zarr.open_array(str(path), mode="r")
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    _, cy, cx = chunks
    by, bx = max(cy, 64), max(cx, 64)  # nuclei need some room; cropped to the chunk below
    # Tiled 2 x 2, so that a cyclic shift of a plane is a window of it (a view, no copy).
    bases = [np.tile(np.minimum(synthetic_nuclei((by, bx), rng=rng, dtype="uint16")[0], 65535 - 16), (2, 2))
             for _ in range(variants)]
    noise = np.tile(rng.integers(0, 16, size=(by, bx), dtype=np.uint16), (2, 2))
    arr = zarr.create_array(str(path), shape=shape, chunks=chunks, dtype="uint16", fill_value=0, overwrite=True,
                            attributes={VOLUME_ATTR: {**want, "complete": False}})
    depth, height, width = shape
    for z0 in range(0, depth, chunks[0]):
        slab = np.empty((min(chunks[0], depth - z0), height, width), np.uint16)
        for plane in slab:
            for y0 in range(0, height, cy):
                for x0 in range(0, width, cx):
                    ny, nx = min(cy, height - y0), min(cx, width - x0)
                    (sy, sx), (ty, tx) = rng.integers((by, bx), size=(2, 2))
                    base = bases[rng.integers(variants)][sy:sy + ny, sx:sx + nx]
                    np.add(base, noise[ty:ty + ny, tx:tx + nx], out=plane[y0:y0 + ny, x0:x0 + nx])
        arr[z0:z0 + len(slab)] = slab
    arr.update_attributes({VOLUME_ATTR: want})
    return zarr.open_array(str(path), mode="r")


def random_model_file(path, config: UNetConfig | None = None, *, seed: int = 0) -> Path:
    """Save a :class:`ReferenceUNet` with He-initialized random weights (the speed of a
    forward does not depend on the weights) to ``path``; the global RNG is left untouched.

    Parameters
    ----------
    path : path-like
        The ``.safetensors`` file to write.
    config : UNetConfig, optional
        The network (default: the paper's).
    seed : int
        Seed of the weights.

    Returns
    -------
    pathlib.Path
        The file written.
    """
    from ..modelfile import save_model

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = ReferenceUNet(config or UNetConfig())
    return save_model(path, model)


def cache_volume_path(cache: Path, shape) -> Path:
    """The path of the benchmark volume of ``shape`` in the folder ``cache``."""
    return Path(cache) / f"volume-{'x'.join(str(int(n)) for n in shape)}.zarr"
