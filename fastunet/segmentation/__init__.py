"""Segmentation of volumes, as users call it: ``fastunet.segment`` and ``fastunet.Segmenter``.

* :mod:`~fastunet.segmentation.segmenter` the call: plan, sink, run;
* :mod:`~fastunet.segmentation.sinks` where results go (zarr with resume, TIFF), each with
  its own rule for what a failure leaves behind;
* :mod:`~fastunet.segmentation.memory` how large a tile the device takes;
* :mod:`~fastunet.segmentation.progress` the progress bar or log lines, and the summary line.

Importing it imports no dask, zarr or tifffile (``import fastunet`` stays light).
"""

from __future__ import annotations

from .memory import activation_bytes, default_max_step
from .progress import summary_line
from .segmenter import OUTPUT_KINDS, NonFiniteWarning, Segmenter, segment

__all__ = [
    "OUTPUT_KINDS",
    "NonFiniteWarning",
    "Segmenter",
    "activation_bytes",
    "default_max_step",
    "segment",
    "summary_line",
]
