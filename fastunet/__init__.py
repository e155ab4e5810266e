"""fastunet: the U-Net of Ronneberger et al. (2015) for huge biomedical images.

Public API::

    from fastunet import UNetConfig, ReferenceUNet, save_model, load_model, geometry
    from fastunet import segment, Segmenter     # overlap-tile segmentation of volumes
"""

from __future__ import annotations

from . import command_start, geometry  # noqa: F401 - command_start first: Ctrl-C while the command loads
from .errors import ModelFileError, UserError
from .model import ReferenceUNet, UNetConfig, count_parameters
from .modelfile import ModelBundle, load_model, read_model, read_model_metadata, save_model
from .normalization import Normalization

# Light: dask, zarr and tifffile are imported when segment() runs.
from .segmentation import Segmenter, segment

__version__ = "0.1.0"

__all__ = [
    "ModelBundle",
    "ModelFileError",
    "Normalization",
    "ReferenceUNet",
    "Segmenter",
    "UNetConfig",
    "UserError",
    "count_parameters",
    "geometry",
    "load_model",
    "read_model",
    "read_model_metadata",
    "save_model",
    "segment",
]
