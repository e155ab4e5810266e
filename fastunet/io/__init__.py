"""Reading input volumes and writing segmentation outputs for ``fastunet segment``.

=================  ==========================================================================
module             what it holds
=================  ==========================================================================
``retry``          transient storage errors retried (bounded, logged), full disks and refused
                   writes as one line: :class:`~fastunet.io.retry.RetryingStore`
``stores``         local paths and URLs (fsspec, ``upath``): the zarr store of a location
``lock``           one writer per output: a file lock, or a lease object in an object store
``axes``           :func:`parse_axes`, the planning of stored axes into canonical ``CZYX``
                   order, shape and dtype checks, TIFF axis letters
``ome``            OME-Zarr (NGFF) metadata: axes and transforms of inputs, ``multiscales``
                   and ``image-label`` metadata of outputs
``channels``       ``channels=``: picking channels by index or name
``images``         PNG and JPEG files (Pillow)
``inputs``         :class:`VolumeSource` and :func:`open_volume` (zarr, OME-Zarr level 0,
                   TIFF / OME-TIFF (multi-series), PNG/JPEG, in-memory arrays (numpy,
                   dask, xarray); local paths and URLs; time series on request)
``plates``         :func:`plate_fields`: the field images of an OME-Zarr HCS plate or well
``fingerprint``    :func:`input_fingerprint`, recorded in an output so that a resume on
                   another input is refused; :class:`InputMovedWarning`
``physical``       :func:`pixel_size`: the physical pixel size of an input (OME-Zarr,
                   OME-TIFF, ImageJ and plain TIFF metadata)
``pyramid``        resolution levels of outputs: the input's pyramid, a block's share of
                   every level
``output_layout``  what a zarr output holds: plain, OME-Zarr image, or a label image in
                   the input's own labels group
``store``          :class:`SegmentationStore`: an open zarr output, its arrays and the
                   records that make a run resumable
``outputs``        :func:`check_output`, :func:`create_output`, :func:`open_output`,
                   :func:`discard_output` (zarr outputs)
``instance_records`` the instance labelling's per-block records in a zarr output
``tiff``           :func:`write_tiff` (TIFF outputs: ImageJ, OME-TIFF)
=================  ==========================================================================

Inputs (:func:`open_volume`) are presented in canonical axes, a subsequence of ``"CZYX"``,
through a picklable :class:`VolumeSource` that reads boxes lazily and never writes. Outputs
are zarr groups holding ``instances``, ``labels`` and/or ``probs`` with ``attrs["fastunet"]``
describing the run (OME-Zarr images with label images where asked or where the input is
one), or TIFF files for results that fit in memory. Each module imports only modules above
it in the table.
"""

from __future__ import annotations

# The public names of the former single module; its constants (``X as X``) stay importable too.
from .axes import AXES_LETTERS as AXES_LETTERS
from .axes import CANONICAL as CANONICAL
from .axes import SUPPORTED_DTYPES, parse_axes
from .fingerprint import FINGERPRINT_POINTS as FINGERPRINT_POINTS
from .fingerprint import InputMovedWarning, input_fingerprint
from .inputs import DONE_DIR as DONE_DIR
from .inputs import VolumeSource, open_volume
from .instance_records import InstanceRecords
from .ome import LABEL_NAME
from .outputs import TIFF_SUFFIXES as TIFF_SUFFIXES
from .outputs import (
    check_output,
    create_output,
    discard_output,
    labels_of_input,
    open_output,
    tiff_paths,
)
from .physical import PixelSize, pixel_size
from .plates import plate_fields
from .store import SegmentationStore
from .tiff import is_ome_tiff_name, write_tiff

__all__ = [
    "VolumeSource",
    "open_volume",
    "parse_axes",
    "check_output",
    "create_output",
    "discard_output",
    "input_fingerprint",
    "InputMovedWarning",
    "open_output",
    "SegmentationStore",
    "write_tiff",
    "SUPPORTED_DTYPES",
    "LABEL_NAME",
    "InstanceRecords",
    "PixelSize",
    "pixel_size",
    "labels_of_input",
    "tiff_paths",
    "is_ome_tiff_name",
    "plate_fields",
]
