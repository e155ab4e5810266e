"""Write a fastunet model as a bioimage.io 0.5 model package (``fastunet export``).

The package holds:

* ``weights.pt``: the ``pytorch_state_dict`` weights, with the architecture as a source file
  (``fastunet_unet.py``, :mod:`fastunet.bioimageio.architecture`: torch only) whose
  :class:`~fastunet.bioimageio.architecture.FastUNetSameSize` mirrors the borders as the paper
  does, so consumers get class probabilities of the input's size;
* the same network as ``torchscript`` (``weights_torchscript.pt``) and ``onnx``
  (``weights.onnx``) weights (:mod:`~fastunet.bioimageio.weights`), which deepImageJ, QuPath
  and other tools run without Python; each is run on the test image at export and its largest
  difference from the state dict's output written into the documentation's Validation section;
* ``model.safetensors``: the fastunet model file itself (config and normalization in its
  metadata), what ``--model PACKAGE`` reads back without unpickling
  (:func:`fastunet.bioimageio.read_package`);
* the normalization as preprocessing (``scale_range`` for percentiles,
  ``zero_mean_unit_variance``, ``scale_linear``), per image and channel;
* test input and output tensors (a synthetic nuclei image and what the network gives), the
  same as ImageJ TIFF sample tensors for people to look at, a cover image and a README.

bioimageio.spec and bioimageio.core (the ``fastunet[bioimageio]`` extra) are imported here
only, when a package is written.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..modelfile import ModelBundle, read_model
from . import architecture
from .description import ARCHITECTURE_FILE, describe, halo_size
from .readme import package_readme, validation_section
from .weights import parse_formats, predict_with, write_weights

__all__ = ["export_package", "ExportResult", "FORMAT_VERSION"]

FORMAT_VERSION = "0.5"


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`export_package` wrote: the package ``path``, its ``size`` in bytes, whether
    bioimageio.core's ``test_model`` passed on it for every weight format (``tested``; False
    when skipped), the ``weight_formats`` in it, and for each besides the state dict the largest
    absolute difference of its probabilities from the state dict's on the test image
    (``max_abs_diff``), and bioimageio.core's report (``test_summary``, a ``ValidationSummary``;
    None when not tested)."""

    path: Path
    size: int
    tested: bool
    format_version: str = FORMAT_VERSION
    weight_formats: tuple[str, ...] = ("pytorch_state_dict",)
    max_abs_diff: dict = dataclasses.field(default_factory=dict)
    test_summary: object = dataclasses.field(default=None, repr=False, compare=False)


def _import_bioimageio():
    try:
        import bioimageio.core  # noqa: F401
        import bioimageio.spec  # noqa: F401
    except ImportError as exc:
        raise UserError(f"Writing bioimage.io packages needs bioimageio.core ({exc}): pip install "
                        "'fastunet[bioimageio]'.") from None


def _check_output(output: Path, overwrite: bool) -> None:
    if not output.name.lower().endswith(".zip"):
        raise UserError(f"A bioimage.io package is a .zip file; got {str(output)!r} (e.g. output=\"model.bmz.zip\").")
    if not output.parent.is_dir():
        raise UserError(f"The folder of {str(output)!r} does not exist; create it first.")
    if output.exists() and not overwrite:
        raise UserError(f"{str(output)!r} already exists; pass overwrite=True to replace it.")


def _test_shape(depth: int, test_shape) -> tuple[int, int]:
    """A (Y, X) test size on the input's size grid: at least the smallest, about 256."""
    low, step = _min_size(depth), 2**depth
    if test_shape is None:
        test_shape = (256, 256)
    if len(test_shape) != 2 or min(test_shape) < 1:
        raise UserError(f"test_shape= expects two sizes Y,X, e.g. test_shape=\"256,256\"; got {test_shape!r}.")
    return tuple(low + max(0, -(-(int(n) - low) // step)) * step for n in test_shape)


def _min_size(depth: int) -> int:
    # Tiles of at least twice the halo plus one max-pool step, so that a consumer's tiles keep
    # a center on the max-pool grid.
    return 2 * halo_size(depth) + 2**depth


def _test_image(shape: tuple[int, int], channels: int, seed: int = 2026) -> np.ndarray:
    """(1, C, Y, X) float32: a synthetic nuclei image (one per channel, other seeds)."""
    from ..synthetic import synthetic_nuclei

    planes = [synthetic_nuclei(shape, seed=seed + c, dtype="uint16")[0] for c in range(channels)]
    return np.stack(planes)[None].astype(np.float32)


def _normalized(image: np.ndarray, bundle: ModelBundle) -> np.ndarray:
    """The image normalized per channel over the whole image, as the preprocessing does."""
    norm = bundle.normalization
    out = np.empty_like(image)
    for c in range(image.shape[1]):
        offset, scale = norm.stats(image[0, c])
        out[0, c] = norm.apply(image[0, c], offset, scale)
    return out


def same_size_network(bundle: ModelBundle) -> architecture.FastUNetSameSize:
    """The package's network (:class:`~fastunet.bioimageio.architecture.FastUNetSameSize`)
    with the bundle's weights, in eval mode on the CPU."""
    net = architecture.FastUNetSameSize(**bundle.config.to_dict())
    net.load_state_dict(bundle.module.state_dict())
    return net.eval()


def _write_files(folder: Path, model_path: Path, bundle: ModelBundle, test_shape, formats=None) -> dict:
    """Everything the description points to, written into ``folder``; returns the paths, by
    file name, and the weights' largest differences from the state dict's test output."""
    import tifffile

    from .figures import cover_figure

    names = (ARCHITECTURE_FILE, "model.safetensors", "test_input.npy", "test_output.npy", "sample_input.tif",
             "sample_output.tif", "cover.png", "README.md")
    files = {name: folder / name for name in names}
    shutil.copyfile(Path(architecture.__file__), files[ARCHITECTURE_FILE])
    shutil.copyfile(model_path, files["model.safetensors"])
    image = _test_image(test_shape, bundle.config.in_channels)
    net, normalized = same_size_network(bundle), torch.from_numpy(_normalized(image, bundle))
    with torch.no_grad():
        probs = net(normalized).numpy()
    weights = write_weights(net, folder, formats, normalized)
    files.update({path.name: path for path in weights.values()})
    diffs = {fmt: float(np.abs(predict_with(fmt, path, normalized.numpy()) - probs).max())
             for fmt, path in weights.items() if fmt != "pytorch_state_dict"}
    np.save(files["test_input.npy"], image)
    np.save(files["test_output.npy"], probs)
    for name, data in (("sample_input.tif", image[0]), ("sample_output.tif", probs[0])):
        tifffile.imwrite(files[name], data, imagej=True, metadata={"axes": "CYX"})
    cover_figure(files["cover.png"], image[0, 0], probs[0])
    return files, diffs


def export_package(model, output, *, name: str | None = None, description: str | None = None,
                   authors=None, license: str = "BSD-3-Clause", test_shape=None, test: bool = True,
                   weight_formats=None, overwrite: bool = False) -> ExportResult:
    """Write ``model`` as a bioimage.io 0.5 model package.

    Parameters
    ----------
    model : path-like
        A fastunet ``.safetensors`` model file.
    output : path-like
        The package to write, a ``.zip`` (``model.bmz.zip``); written beside under a
        temporary name and renamed once complete (and tested).
    name, description : str, optional
        The model's name (default: from the file name) and one sentence on what it segments.
    authors : list of str, optional
        Author names (default: the fastunet developers).
    license : str
        SPDX identifier of the weights' license.
    test_shape : (Y, X), optional
        Size of the test image (rounded up to the sizes the package declares; default ~256).
    test : bool
        Run bioimageio.core's ``test_model`` on the package, for every weight format; a failure
        raises RuntimeError with its report and leaves no package.
    weight_formats : sequence of str or str, optional
        Among ``pytorch_state_dict``, ``torchscript``, ``onnx`` (default: all three; the state
        dict is always written, as the others' parent). ONNX needs the ``onnx`` package to
        write and onnxruntime to check (both in the ``fastunet[bioimageio]`` extra).
    overwrite : bool
        Replace an existing ``output``.
    """
    output, model_path = Path(output), Path(model)
    _check_output(output, overwrite)
    bundle = read_model(model_path)  # a bad model file is said before bioimageio is looked for
    if bundle.config.spatial_dims != 2:
        raise UserError(f"{str(model_path)!r} holds a 3D network ({bundle.config.describe()}); fastunet exports 2D "
                        "models to bioimage.io so far. Segment volumes with fastunet itself (--model).")
    _import_bioimageio()
    from bioimageio.spec import save_bioimageio_package

    formats = _weight_formats(weight_formats)
    shape = _test_shape(bundle.config.depth, test_shape)
    with tempfile.TemporaryDirectory(prefix="fastunet-export-") as tmp:
        files, diffs = _write_files(Path(tmp), model_path, bundle, shape, formats)
        name = name or "fastunet " + model_path.name.removesuffix(".safetensors").replace("_", " ").replace("-", " ")
        description = description or _default_description(bundle)
        files["README.md"].write_text(package_readme(bundle, name, description, validation_section(
            bundle, shape, diffs, tested=test), formats))
        descr = describe(bundle, files, name=name, description=description, authors=authors, license=license,
                         min_size=_min_size(bundle.config.depth), weight_formats=formats)
        package = Path(tmp) / "package.zip"
        save_bioimageio_package(descr, output_path=package)
        summary = _run_test_model(package) if test else None  # the zip, as consumers get it
        partial = output.with_name(output.name + ".partial")
        shutil.copyfile(package, partial)
        os.replace(partial, output)
    return ExportResult(path=output, size=output.stat().st_size, tested=test, weight_formats=formats,
                        max_abs_diff=diffs, test_summary=summary)


def _weight_formats(weight_formats) -> tuple[str, ...]:
    """The formats to write, after checking that what writes and runs them is installed."""
    try:
        formats = parse_formats(weight_formats)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if "onnx" in formats:
        missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
        if missing:
            raise UserError(f"ONNX weights need {' and '.join(missing)} (to write and to check them): pip install "
                            "'fastunet[bioimageio]', or leave ONNX out (weight_formats=\"pytorch_state_dict,"
                            "torchscript\").")
    return formats


def _default_description(bundle: ModelBundle) -> str:
    cfg = bundle.config
    return (f"A U-Net (Ronneberger et al. 2015; depth {cfg.depth}, {cfg.base_channels} base channels) for "
            f"{cfg.num_classes}-class segmentation, trained with fastunet.")


def _run_test_model(package: Path):
    from bioimageio.core import test_model

    summary = test_model(str(package))  # every weight format in the description
    if summary.status != "passed":
        failures = [f"{d.name}: {e.msg}" for d in summary.details for e in d.errors]
        raise RuntimeError("bioimageio.core's test_model failed on the package: " + "; ".join(failures[:5]))
    return summary
