"""bioimage.io model packages: write one from a fastunet model (``fastunet export``), and read
one back (``--model model.bmz.zip``).

* :func:`export_package` writes a bioimage.io 0.5 package (:mod:`~fastunet.bioimageio.export`,
  the description in :mod:`~fastunet.bioimageio.description`); needs the
  ``fastunet[bioimageio]`` extra, imported only then;
* :func:`read_package` reads such a package into a :class:`~fastunet.modelfile.ModelBundle`
  (:mod:`~fastunet.bioimageio.package`), never unpickling anything, without bioimageio;
* :mod:`~fastunet.bioimageio.architecture` is the network as the package ships it (torch
  only): the same-size wrapper with mirrored borders.
"""

from __future__ import annotations

from .export import ExportResult, export_package
from .package import read_package

__all__ = ["ExportResult", "export_package", "read_package"]
