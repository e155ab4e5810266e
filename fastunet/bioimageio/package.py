"""Read a bioimage.io package written by ``fastunet export`` back into a model, without
unpickling anything and without bioimageio installed.

The package carries the fastunet model file (``model.safetensors``: weights, config and
normalization); that is what is read. A package without it (e.g. re-packed by other tools)
falls back to its ``pytorch_state_dict`` weights through ``torch.load(weights_only=True)``,
PyTorch's restricted loader that builds tensors only and runs no code, with the config and
normalization from the description's ``config.fastunet`` (which needs a YAML reader).
"""

from __future__ import annotations

import io
import json
import os
import zipfile
from pathlib import Path

from ..errors import ModelFileError, UserError
from ..modelfile import ModelBundle

__all__ = ["read_package"]

_MAX_MEMBER = 4 << 30  # bytes: a model larger than this in a package is refused


def _member(zf: zipfile.ZipFile, name: str, path: Path) -> bytes:
    info = zf.getinfo(name)
    if info.file_size > _MAX_MEMBER:
        raise ModelFileError(f"{str(path)!r}: {name} claims {info.file_size} bytes; refused as larger than any model.")
    return zf.read(info)


def read_package(path: str | os.PathLike) -> ModelBundle:
    """The :class:`~fastunet.modelfile.ModelBundle` of a bioimage.io package (``.zip``).

    Raises :class:`~fastunet.errors.ModelFileError` for a missing or foreign file.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"Model package {str(path)!r} does not exist; check the path.")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise ModelFileError(f"{str(path)!r} is not a readable zip file ({exc}); pass a bioimage.io package "
                             "written by fastunet export, or a .safetensors model.") from None
    with zf:
        names = set(zf.namelist())
        if "rdf.yaml" not in names and "bioimageio.yaml" not in names:
            raise ModelFileError(f"{str(path)!r} is a zip file but no bioimage.io package (no rdf.yaml).")
        if "model.safetensors" in names:
            return _from_model_file(_member(zf, "model.safetensors", path), path)
        return _from_state_dict(zf, names, path)


def _from_model_file(data: bytes, path: Path) -> ModelBundle:
    """The fastunet model file inside the package, read as any model file (safetensors:
    no code can run), from a temporary copy."""
    import tempfile

    from ..modelfile import read_model

    with tempfile.TemporaryDirectory(prefix="fastunet-bmz-") as tmp:
        copy = Path(tmp) / "model.safetensors"
        copy.write_bytes(data)
        try:
            bundle = read_model(copy)
        except ModelFileError as exc:
            raise ModelFileError(f"{str(path)!r}: its model.safetensors is not a fastunet model ({exc}).") from None
    return ModelBundle(bundle.module, bundle.normalization, {**bundle.extra, "bioimageio_package": str(path)})


def _from_state_dict(zf: zipfile.ZipFile, names: set, path: Path) -> ModelBundle:
    """The fallback: ``pytorch_state_dict`` weights through ``torch.load(weights_only=True)``."""
    import torch

    from ..model import ReferenceUNet, UNetConfig
    from ..normalization import Normalization

    rdf = _yaml(_member(zf, "rdf.yaml" if "rdf.yaml" in names else "bioimageio.yaml", path), path)
    ours = (rdf.get("config") or {}).get("fastunet")
    weights = ((rdf.get("weights") or {}).get("pytorch_state_dict") or {}).get("source")
    if not isinstance(ours, dict) or not weights or weights not in names:
        raise ModelFileError(f"{str(path)!r} is a bioimage.io package but not one of fastunet's (no "
                             "config.fastunet, or no pytorch_state_dict weights in it); export the model with "
                             "fastunet export.")
    try:
        config = UNetConfig.from_dict(ours["config"])
        normalization = Normalization.from_dict(ours.get("normalization", {}))
        state = torch.load(io.BytesIO(_member(zf, weights, path)), map_location="cpu", weights_only=True)
        model = ReferenceUNet(config)
        model.load_state_dict(state)
    except Exception as exc:  # torch's restricted unpickler raises several types
        raise ModelFileError(f"{str(path)!r}: its weights do not load into its fastunet config ({exc}).") from None
    return ModelBundle(model.eval(), normalization, {"bioimageio_package": str(path)})


def _yaml(data: bytes, path: Path) -> dict:
    try:
        import yaml
    except ImportError:
        try:
            return json.loads(data)  # JSON is YAML: some writers emit it
        except ValueError:
            raise UserError(f"Reading {str(path)!r} without its model.safetensors needs a YAML reader: "
                            "pip install pyyaml (or 'fastunet[bioimageio]').") from None
    return yaml.safe_load(data) or {}
