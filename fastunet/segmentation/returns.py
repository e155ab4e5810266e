"""What ``output=None`` returns: what came in.

The engine makes lazy dask arrays (:func:`fastunet.engine.scheduling.lazy_arrays`); the caller
gets numpy arrays for a numpy input (computed here, on threads), dask arrays for a dask input
(or any other, unless ``lazy=False``), and for an xarray ``DataArray`` a ``DataArray`` of either
with the input's dims (less the channel dim; probabilities get a ``class`` dim), the
coordinates along those dims and the input's attrs. A time series stacks its time points
along a leading axis. xarray is imported only when an xarray input came.
"""

from __future__ import annotations

import numpy as np

from ..errors import UserError

__all__ = ["wants_lazy", "returned", "stack_time", "is_lazy"]


def _is_xarray(obj) -> bool:
    return type(obj).__name__ == "DataArray" and type(obj).__module__.startswith("xarray")


def wants_lazy(source, lazy: bool | None) -> bool:
    """``lazy=`` as given, else: dask arrays for everything but numpy (and numpy-backed xarray) inputs."""
    if lazy is not None:
        if not isinstance(lazy, bool):
            raise UserError(f"lazy= expects True (dask arrays) or False (numpy arrays); got {lazy!r}.")
        return lazy
    data = source.data if _is_xarray(source) else source
    return not isinstance(data, np.ndarray)


def is_lazy(result) -> bool:
    """Does ``result`` (an array, a tuple, a plate's dict of them) hold a dask graph still to compute?"""
    if isinstance(result, dict):
        return any(is_lazy(r) for r in result.values())
    if isinstance(result, tuple):
        return any(is_lazy(r) for r in result)
    graph = getattr(result, "__dask_graph__", None)
    return graph is not None and graph() is not None


def stack_time(results: list, kinds: tuple[str, ...]):
    """The lazy results of each time point as one result with a leading time axis."""
    import dask.array as da

    if len(kinds) == 1:
        return da.stack(results, axis=0)
    return tuple(da.stack([r[i] for r in results], axis=0) for i in range(len(kinds)))


def returned(result, source, vol, kinds: tuple[str, ...], *, lazy: bool, threads: int | None = None):
    """The lazy ``result`` (one dask array or a tuple, in the order of ``kinds``) as the
    caller gets it (see the module)."""
    arrays = result if isinstance(result, tuple) else (result,)
    if not lazy:
        import dask

        arrays = dask.compute(*arrays, scheduler="threads", num_workers=threads)  # shared tasks run once
    if _is_xarray(source):
        arrays = tuple(_as_xarray(a, kind, source, vol) for a, kind in zip(arrays, kinds))
    return arrays if len(kinds) > 1 else arrays[0]


def _as_xarray(array, kind: str, source, vol):
    """``array`` as a DataArray with ``source``'s dims (canonical order), coordinates and attrs."""
    import xarray as xr

    native = vol.native_axes or vol.axes
    by_letter = {letter: str(dim) for letter, dim in zip(native, source.dims) if letter in "TZYX"}
    dims = [by_letter[a] for a in "TZYX" if a in by_letter]
    if kind == "probs":
        dims.insert(1 if "T" in by_letter else 0, "class")
    coords = {name: c for name, c in source.coords.items() if set(c.dims) <= set(dims)}
    return xr.DataArray(array, dims=dims, coords=coords, attrs=dict(source.attrs), name=kind)
