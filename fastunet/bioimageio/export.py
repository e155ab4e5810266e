"""Write a fastunet model as a bioimage.io 0.5 model package (``fastunet export``).

The package holds:

* ``weights.pt``: the ``pytorch_state_dict`` weights, with the architecture as a source file
  (``fastunet_unet.py``, :mod:`fastunet.bioimageio.architecture`: torch only) whose
  :class:`~fastunet.bioimageio.architecture.FastUNetSameSize` mirrors the borders as the paper
  does, so consumers get class probabilities of the input's size;
* ``model.safetensors``: the fastunet model file itself (config and normalization in its
  metadata), what ``--model PACKAGE`` reads back without unpickling
  (:func:`fastunet.bioimageio.read_package`);
* the normalization as preprocessing (``scale_range`` for percentiles,
  ``zero_mean_unit_variance``, ``scale_linear``), per image and channel;
* test input and output tensors (a synthetic nuclei image and what the network gives),
  a cover image and a README.

bioimageio.spec and bioimageio.core (the ``fastunet[bioimageio]`` extra) are imported here
only, when a package is written.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..modelfile import ModelBundle, read_model
from . import architecture
from .description import ARCHITECTURE_FILE, CITATION, UNET_DOI, describe, halo_size

__all__ = ["export_package", "ExportResult", "FORMAT_VERSION"]

FORMAT_VERSION = "0.5"


@dataclasses.dataclass(frozen=True)
class ExportResult:
    """What :func:`export_package` wrote: the package ``path``, its ``size`` in bytes, and
    whether bioimageio.core's ``test_model`` passed on it (``tested``; False when skipped)."""

    path: Path
    size: int
    tested: bool
    format_version: str = FORMAT_VERSION


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


def _write_files(folder: Path, model_path: Path, bundle: ModelBundle, test_shape) -> dict:
    """Everything the description points to, written into ``folder``; returns the paths."""
    from .figures import cover_figure

    files = {name: folder / name for name in ("weights.pt", ARCHITECTURE_FILE, "model.safetensors",
                                              "test_input.npy", "test_output.npy", "cover.png", "README.md")}
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in bundle.module.state_dict().items()}
    torch.save(state, files["weights.pt"])
    shutil.copyfile(Path(architecture.__file__), files[ARCHITECTURE_FILE])
    shutil.copyfile(model_path, files["model.safetensors"])
    image = _test_image(test_shape, bundle.config.in_channels)
    with torch.no_grad():
        probs = same_size_network(bundle)(torch.from_numpy(_normalized(image, bundle))).numpy()
    np.save(files["test_input.npy"], image)
    np.save(files["test_output.npy"], probs)
    cover_figure(files["cover.png"], image[0, 0], probs[0])
    return files


def export_package(model, output, *, name: str | None = None, description: str | None = None,
                   authors=None, license: str = "BSD-3-Clause", test_shape=None, test: bool = True,
                   overwrite: bool = False) -> ExportResult:
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
        Run bioimageio.core's ``test_model`` on the package; a failure raises RuntimeError
        with its report and leaves no package.
    overwrite : bool
        Replace an existing ``output``.
    """
    output, model_path = Path(output), Path(model)
    _check_output(output, overwrite)
    bundle = read_model(model_path)  # a bad model file is said before bioimageio is looked for
    _import_bioimageio()
    from bioimageio.spec import save_bioimageio_package

    shape = _test_shape(bundle.config.depth, test_shape)
    with tempfile.TemporaryDirectory(prefix="fastunet-export-") as tmp:
        files = _write_files(Path(tmp), model_path, bundle, shape)
        name = name or "fastunet " + model_path.name.removesuffix(".safetensors").replace("_", " ").replace("-", " ")
        description = description or _default_description(bundle)
        files["README.md"].write_text(_readme(bundle, name, description))
        descr = describe(bundle, files, name=name, description=description, authors=authors, license=license,
                         min_size=_min_size(bundle.config.depth))
        tested = False
        if test:
            _run_test_model(descr)
            tested = True
        partial = output.with_name(output.name + ".partial")
        save_bioimageio_package(descr, output_path=partial)
        os.replace(partial, output)
    return ExportResult(path=output, size=output.stat().st_size, tested=tested)


def _default_description(bundle: ModelBundle) -> str:
    cfg = bundle.config
    return (f"A U-Net (Ronneberger et al. 2015; depth {cfg.depth}, {cfg.base_channels} base channels) for "
            f"{cfg.num_classes}-class segmentation, trained with fastunet.")


def _run_test_model(descr) -> None:
    from bioimageio.core import test_model

    summary = test_model(descr, weight_format="pytorch_state_dict")
    if summary.status != "passed":
        failures = [f"{d.name}: {e.msg}" for d in summary.details for e in d.errors]
        raise RuntimeError("bioimageio.core's test_model failed on the package: " + "; ".join(failures[:5]))


def _readme(bundle: ModelBundle, name: str, description: str) -> str:
    cfg, norm = bundle.config, bundle.normalization
    c = architecture.context(cfg.depth)
    extra = "".join(f"- {key}: {value}\n" for key, value in bundle.extra.items() if key != "card")
    extra = extra or "- (no training record in the model file)\n"
    return f"""# {name}

{description}

## Network

The U-Net of Ronneberger, Fischer & Brox (2015), trained with fastunet: valid 3x3
convolutions, {cfg.depth} 2x2 max-pools, {cfg.base_channels} feature channels at the first level,
{cfg.in_channels} input channel(s), {cfg.num_classes} classes. Its valid convolutions consume {c} pixels
of context on each side; `FastUNetSameSize` (in `{ARCHITECTURE_FILE}`) mirrors the input by that
much (and up to a size the max-pools take), as in the paper's overlap-tile strategy, so the
output has the input's size: class probabilities (softmax), channel 0 the background.

Tiled prediction: the outputs declare a halo of {halo_size(cfg.depth)} pixels (the context plus one max-pool
cell, on the max-pool grid of {2**cfg.depth} pixels) and the input a `reflect` padding: tiles cut with that halo
see real neighbours, the image's borders are mirrored as the network mirrors them, and the
max-pools of every tile line up with those of one pass over the whole image, so tiled and
whole predictions agree (and agree with fastunet's overlap-tile engine).

## Input and preprocessing

Normalization as in training ({norm.mode}; fastunet settings {norm.to_dict()}), per image and
channel. fastunet itself takes the statistics once per volume (`scope` volume) when it segments
stacks; here each image is one sample.

## Use with fastunet

    fastunet segment stack.zarr -o labels.zarr --model this-package.bmz.zip

reads `model.safetensors` from the package (never unpickling anything) and runs the
overlap-tile engine over volumes of any size.

## Post-processing

The package's output is the class probabilities. fastunet makes objects of them and cleans
them up by default: the connected components of the argmax, objects smaller than 1/16 of the
typical object's area removed (specks), holes filled (`config.fastunet.postprocessing` records
the rule). bioimage.io's named postprocessing operations cannot label objects, remove small
ones or fill holes, so a bioimage.io consumer gets the probabilities and does this itself (or
runs fastunet on the package, as above).

## Training

{extra}
## Citation

{CITATION} doi:{UNET_DOI}
"""
