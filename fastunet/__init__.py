"""fastunet: the U-Net of Ronneberger et al. (2015) for huge biomedical images.

Public API::

    from fastunet import UNetConfig, ReferenceUNet, save_model, load_model, geometry
    from fastunet import segment, Segmenter     # overlap-tile segmentation of volumes

``import fastunet`` is light: PyTorch, SciPy, zarr and dask are imported when a name that
needs them is first used (``fastunet.ReferenceUNet``, ``fastunet.segment``, ...), so that a
run on OpenVINO's CPU runtime never imports PyTorch (see :mod:`fastunet.engine.openvino_backend`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from . import command_start, geometry  # noqa: F401 - command_start first: Ctrl-C while the command loads
from .errors import ModelFileError, UserError
from .netconfig import UNetConfig
from .normalization import Normalization

if TYPE_CHECKING:
    from .model import ReferenceUNet, count_parameters
    from .modelfile import ModelBundle, load_model, read_model, read_model_metadata, save_model
    from .segmentation import Segmenter, segment

__version__ = "0.1.0"

# name -> the module that defines it, imported on first use (PEP 562)
_LAZY = {
    "ReferenceUNet": ".model",
    "count_parameters": ".model",
    "ModelBundle": ".modelfile",
    "load_model": ".modelfile",
    "read_model": ".modelfile",
    "read_model_metadata": ".modelfile",
    "save_model": ".modelfile",
    "Segmenter": ".segmentation",
    "segment": ".segmentation",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fastunet' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
