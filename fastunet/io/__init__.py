"""Reading input volumes and writing segmentation outputs for ``fastunet segment``.

=================  ==========================================================================
module             what it holds
=================  ==========================================================================
``axes``           :func:`parse_axes`, the planning of stored axes into canonical ``CZYX``
                   order, shape and dtype checks, TIFF axis letters
``ome``            OME-Zarr (NGFF) metadata: axes and transforms of inputs, ``multiscales``
                   and ``image-label`` metadata of outputs
``inputs``         :class:`VolumeSource` and :func:`open_volume` (zarr, OME-Zarr level 0,
                   TIFF / OME-TIFF, in-memory arrays)
``fingerprint``    :func:`input_fingerprint`, recorded in an output so that a resume on
                   another input is refused; :class:`InputMovedWarning`
``outputs``        :func:`check_output`, :func:`create_output`, :func:`open_output`,
                   :func:`discard_output` and :class:`SegmentationStore` (zarr outputs and
                   their resume records)
``tiff``           :func:`write_tiff` (TIFF outputs)
``stores``         local paths and URLs (fsspec, ``upath``): the zarr store of a location
``retry``          transient storage errors retried (bounded, logged), full disks and refused
                   writes as one line: :class:`~fastunet.io.retry.RetryingStore`
``lock``           one writer per output: a file lock, or a lease object in an object store
=================  ==========================================================================

Inputs (:func:`open_volume`) are presented in canonical axes, a subsequence of ``"CZYX"``,
through a picklable :class:`VolumeSource` that reads boxes lazily and never writes. Outputs
are zarr groups holding ``labels`` and/or ``probs`` with ``attrs["fastunet"]`` describing the
run, or TIFF files for results that fit in memory. Each module imports only those above it
in the table's order (axes, ome, inputs, fingerprint, outputs, tiff); ``stores``, ``retry`` and
``lock`` import none of those (``inputs`` and ``outputs`` import them).
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
from .ome import LABEL_NAME
from .outputs import TIFF_SUFFIXES as TIFF_SUFFIXES
from .outputs import SegmentationStore, check_output, create_output, discard_output, open_output
from .tiff import write_tiff

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
]
