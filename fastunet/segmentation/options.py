"""The options of a segmentation call (:class:`SegmentOptions`) and what it returns
(:data:`SegmentResult`), typed once for :func:`fastunet.segment` and
:meth:`fastunet.Segmenter.segment` (a type checker reads ``**options`` key by key).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, TypedDict, Union

if TYPE_CHECKING:
    import dask.array
    import numpy
    import xarray
    import zarr

    from ..io.channels import ChannelSpec

__all__ = ["SegmentOptions", "SegmentResult", "ResultArray", "Source", "OutputKind"]

ResultArray: TypeAlias = "numpy.ndarray | dask.array.Array | zarr.Array | xarray.DataArray"
"""One returned array: written zarr arrays (a zarr output), numpy arrays (a TIFF output, or
``output=None`` with a numpy input), dask arrays (``output=None``, lazy) or xarray
``DataArray`` objects (``output=None`` with an xarray input)."""

SegmentResult: TypeAlias = "ResultArray | tuple[ResultArray | None, ...] | dict[str, Any] | None"
"""What a segmentation returns: one array, a tuple of them (several kinds, in the order
instances, labels, probs), or for an HCS plate a dict of those by field path."""

Source: TypeAlias = Union[str, os.PathLike, Any]
"""An input: a path or URL, or an array object (numpy, dask, zarr, xarray; see :func:`fastunet.segment`)."""

OutputKind: TypeAlias = Union[str, Sequence[str], None]


class SegmentOptions(TypedDict, total=False):
    """The keyword options of :func:`fastunet.segment` and :meth:`fastunet.Segmenter.segment`.

    Input
        axes : str
            Axes of a plain array or zarr array without metadata, e.g. ``"ZYX"``, ``"CYX"``,
            ``"TYX"`` (an xarray ``DataArray``'s dims are its axes).
        channels : int, str or a sequence of them
            The channels the model reads, by index (0 first) or by name (OME-Zarr ``omero``
            labels, OME-TIFF channel names, an xarray ``c`` coordinate, ``red``/``green``/
            ``blue`` of RGB images); several for a multi-channel model, in its order. Default:
            every channel (as many as the model expects).
        series : int
            The image of a multi-series TIFF or a bioformats2raw OME-Zarr (default 0).
        storage_options : dict
            Options of the file system of URL inputs and outputs (fsspec), e.g.
            ``{"endpoint_url": "http://127.0.0.1:9000"}`` or ``{"anon": True}``; credentials
            otherwise come from the usual environment variables (``AWS_ACCESS_KEY_ID``,
            ``AWS_SECRET_ACCESS_KEY``, ``AWS_ENDPOINT_URL``, ``GOOGLE_APPLICATION_CREDENTIALS``...).

    What is written or returned
        output_kind : str or sequence of str
            ``"instances"`` (object ids: the connected components of the foreground, unique
            in the whole volume, uint32 or uint64), ``"labels"`` (the uint8 argmax class map),
            ``"probs"`` (float16 class probabilities ``(K, ...)``), ``"both"`` (labels and
            probs), or several (``"instances,probs"``, a tuple). Default: instances for
            two-class models, labels otherwise (see :mod:`fastunet.kinds`).
        lazy : bool
            With ``output=None``: True returns dask arrays (computed when they are), False
            computes them (numpy). Default: what came in: numpy (and numpy-backed xarray)
            inputs give numpy, anything else dask.
        zarr_format : {3, 2}
            Default: the OME-Zarr input's format (NGFF 0.4 on v2, 0.5 on v3), else 3.
        label_name : str
            Name of the label image under ``labels/`` of an OME-Zarr output (default
            ``"segmentation"``).
        into_input : bool
            With ``output=None``: write the label image into the OME-Zarr input's own labels
            group (``<input>/labels/<label_name>``; an HCS plate: every field's), as
            ``output="<input>/labels/NAME"`` does.
        chunks, block : tuple of int
            Output chunk and block shapes ``((Z,) Y, X)``; by default along the input's chunks.
        max_tiff_bytes : int
            The largest result a TIFF output assembles in memory (default 4 GiB).

    Resuming and replacing
        resume : bool
            Continue an interrupted run into the same output, skipping recorded blocks (and the
            finished time points of a time series). Refused unless the input is the recorded
            one (path, array, axes, shape, dtype, channels, and a fingerprint: zarr metadata
            and sampled values, or a TIFF's size and contents).
        overwrite : bool
            Replace an existing fastunet output.
        break_lock : bool
            Take the output's lock from another run that holds it (one whose process is gone):
            one run at a time writes a zarr output (:mod:`fastunet.io.lock`).

    Where it runs
        scheduler, workers, gpus
            Run on dask.distributed: a ``distributed.Client`` (left open), a Cluster such as
            ``LocalCluster``, or a scheduler address to join; ``workers`` local worker
            processes; or one worker process per GPU (``"0,1"``). Default: the active Client
            for a file output when there is one (``distributed.default_client()``), else
            threads here.
        threads : int
            Threads of the threaded scheduler (or per worker).
        progress : bool or None
            Progress bar on a terminal; when stderr is not a terminal (a batch job's log), a
            plain line (blocks done/total, Mpx/s, ETA) every ``progress_interval`` seconds.
            False: neither.
        progress_interval : float
            Seconds between the plain progress lines (default 30).

    Objects
        min_size : int or "auto"
            Instances: objects of fewer voxels are removed; ``"auto"`` (the default): those
            smaller than 1/16 of the volume's typical object (a quarter of its diameter;
            :func:`fastunet.objectsize.auto_min_size`; the model's training object size when the
            volume has fewer than 5 objects), 0: none. Specks, not nuclei: the run's summary says
            how many were removed (``objects_removed``, ``min_size_used``).
        fill_holes : bool
            Instances: fill the background that one object encloses with that object (default
            True; ``holes_filled`` in the summary). ``min_size=0, fill_holes=False,
            min_confidence=0`` gives the connected components of the class map as they are.
        min_confidence : float or "auto"
            Instances: objects whose mean object probability (over their voxels, one minus the
            network's background probability) is lower are removed: what the network found but
            is unsure of, such as shapes in noise (``objects_unsure`` in the summary). ``"auto"``
            (the default): the value the model file records (the bundled model's was chosen on
            validation images, see its card; 0 for a model that records none); 0: none.
        split : {None, "watershed"}
            Instances: split touching objects by a seeded watershed on the distance transform.
        connect_z : bool
            Instances of ``ZYX`` stacks: join objects across slices (default: each slice on its own).
        object_size : float or "auto"
            The typical object diameter in the input, in pixels (like cellpose's diameter): the
            input is rescaled so that its objects match the size the model was trained on (its
            file records it, ``extra["object_size"]``) and the results are mapped back to the
            input grid, block by block (:mod:`fastunet.engine.rescale`). ``"auto"`` estimates
            it from a first pass over a central crop (:mod:`fastunet.segmentation.scaling`).
            Default: the input's own scale. A model that records no training object size
            refuses it.
    """

    axes: str | None
    channels: ChannelSpec
    series: int | None
    storage_options: dict | None
    output_kind: OutputKind
    lazy: bool | None
    zarr_format: int | None
    label_name: str | None
    into_input: bool
    chunks: Sequence[int] | None
    block: Sequence[int] | None
    max_tiff_bytes: int
    resume: bool
    overwrite: bool
    break_lock: bool
    scheduler: Any
    workers: int | None
    gpus: str | Sequence[int | str] | None
    threads: int | None
    progress: bool | None
    progress_interval: float
    min_size: int | Literal["auto"]
    fill_holes: bool
    min_confidence: float | Literal["auto"]
    split: Literal["watershed"] | None
    connect_z: bool
    object_size: float | Literal["auto"] | None
