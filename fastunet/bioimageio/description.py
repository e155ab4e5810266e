"""The bioimage.io 0.5 model description of a fastunet model (bioimageio.spec objects)."""

from __future__ import annotations

import torch

from ..modelfile import ModelBundle
from . import architecture

__all__ = ["describe", "preprocessing", "postprocessing", "halo_size", "INPUT_ID", "OUTPUT_ID", "ARCHITECTURE_FILE", "CITATION", "UNET_DOI"]

ARCHITECTURE_FILE = "fastunet_unet.py"  # architecture.py, as the package names it
CITATION = ("Ronneberger, O., Fischer, P., Brox, T. (2015). U-Net: Convolutional Networks for Biomedical "
            "Image Segmentation. MICCAI 2015, LNCS 9351, 234-241.")
UNET_DOI = "10.1007/978-3-319-24574-4_28"
INPUT_ID = "raw"
OUTPUT_ID = "probabilities"
EPS = 1e-6  # bioimage.io's default; fastunet divides by the range or std itself (1 when ~0)


def preprocessing(bundle: ModelBundle) -> list:
    """The model's normalization as bioimage.io preprocessing, per image and channel."""
    from bioimageio.spec.model import v0_5 as bmz

    norm = bundle.normalization
    steps = [bmz.EnsureDtypeDescr(kwargs=bmz.EnsureDtypeKwargs(dtype="float32"))]
    axes = [bmz.AxisId("y"), bmz.AxisId("x")]
    if norm.mode == "percentile":
        steps.append(bmz.ScaleRangeDescr(kwargs=bmz.ScaleRangeKwargs(
            axes=axes, min_percentile=norm.low, max_percentile=norm.high, eps=EPS)))
    elif norm.mode == "meanstd":
        steps.append(bmz.ZeroMeanUnitVarianceDescr(kwargs=bmz.ZeroMeanUnitVarianceKwargs(axes=axes, eps=EPS)))
    elif norm.mode == "fixed":
        steps.append(bmz.ScaleLinearDescr(kwargs=bmz.ScaleLinearKwargs(
            gain=1.0 / norm.scale, offset=-norm.offset / norm.scale)))
    return steps


def postprocessing(bundle: ModelBundle) -> dict:
    """fastunet's clean-up of the objects (what ``segment`` does by default), as the package's
    ``config.fastunet.postprocessing`` records it: bioimage.io's named postprocessing operations
    (binarize, clip, scale_*, sigmoid, softmax, ...) cannot label objects, remove small ones
    or fill holes, so the package's output stays the class probabilities."""
    from ..objectsize import AUTO_MIN_FRACTION, model_min_confidence, model_object_size

    return {"objects": "connected components of the argmax class map (each class on its own)",
            "min_size": "auto", "min_size_fraction": AUTO_MIN_FRACTION,
            "min_size_rule": "remove objects smaller than min_size_fraction of the typical object's area (the "
                             "population of objects holding the most foreground; the training object size "
                             "below when an image has fewer than 5 objects)",
            "training_object_size": model_object_size(bundle.extra), "fill_holes": True,
            "min_confidence": model_min_confidence(bundle.extra),
            "min_confidence_rule": "remove objects whose mean object probability (1 - the background class's "
                                   "probability, over the object's pixels) is below min_confidence (0: none)"}


def halo_size(depth: int) -> int:
    """The outputs' halo: the pixels beyond its own that an output pixel depends on, on the
    max-pool grid (``2**depth``): ``context + 2**depth - 1`` rounded up to that grid.

    The reach is the context plus up to ``2**depth - 1`` pixels, because the max-pool cells an
    output pixel falls in are aligned to the grid, not centred on it (with the context alone
    rounded up, the wrapper's own mirror at the padded edge leaked into the last pixels of
    off-grid inputs: up to 0.013 in probability). A consumer pads (or cuts) inputs by the halo
    and crops it from the outputs; on the grid, the tiles' max-pools line up with one pass
    over the whole image, so the result is the same (as fastunet's overlap-tile engine gives)
    whatever the tiling.
    """
    step = 2**depth
    return -(-(architecture.context(depth) + step - 1) // step) * step


def _class_names(k: int) -> list[str]:
    return ["background", "foreground"] if k == 2 else [f"class{i}" for i in range(k)]


def _tensors(bundle: ModelBundle, files: dict, min_size: int):
    from bioimageio.spec.model import v0_5 as bmz

    cfg = bundle.config
    size = bmz.ParameterizedSize(min=min_size, step=2**cfg.depth)
    inputs = bmz.InputTensorDescr(
        id=bmz.TensorId(INPUT_ID),
        description="the image, any gray values (normalized by the preprocessing)",
        axes=[bmz.BatchAxis(),
              bmz.ChannelAxis(channel_names=[bmz.Identifier(f"channel{i}") for i in range(cfg.in_channels)]),
              bmz.SpaceInputAxis(id=bmz.AxisId("y"), size=size),
              bmz.SpaceInputAxis(id=bmz.AxisId("x"), size=size)],
        test_tensor=bmz.FileDescr(source=files["test_input.npy"]),
        sample_tensor=bmz.FileDescr(source=files["sample_input.tif"]),  # the test image, as a TIFF to look at
        pad=bmz.ReflectPadding(mode="reflect"),  # the halo mirrored as the network mirrors (numpy reflect);
        # mode given: bioimageio.spec writes no unset field, and {} reads back as constant padding
        preprocessing=preprocessing(bundle),
    )
    halo = halo_size(cfg.depth)
    outputs = bmz.OutputTensorDescr(
        id=bmz.TensorId(OUTPUT_ID),
        description="class probabilities (softmax), the input's size; channel 0 is the background",
        axes=[bmz.BatchAxis(),
              bmz.ChannelAxis(channel_names=[bmz.Identifier(n) for n in _class_names(cfg.num_classes)]),
              *[bmz.SpaceOutputAxisWithHalo(id=bmz.AxisId(a), halo=halo, size=bmz.SizeReference(
                  tensor_id=bmz.TensorId(INPUT_ID), axis_id=bmz.AxisId(a))) for a in ("y", "x")]],
        test_tensor=bmz.FileDescr(source=files["test_output.npy"]),
        sample_tensor=bmz.FileDescr(source=files["sample_output.tif"]),
        data=bmz.IntervalOrRatioDataDescr(type="float32", range=(0.0, 1.0)),
    )
    return inputs, outputs


def _weights(bundle: ModelBundle, files: dict, formats):
    """The weights entry: the state dict, and TorchScript and ONNX converted from it (their parent)."""
    from bioimageio.spec.model import v0_5 as bmz

    from .weights import ONNX_OPSET, WEIGHT_FILES

    version = bmz.Version(torch.__version__.split("+")[0])
    arch = bmz.ArchitectureFromFileDescr(source=files[ARCHITECTURE_FILE], callable=bmz.Identifier("FastUNetSameSize"),
                                         kwargs=bundle.config.to_dict())
    source = {fmt: files[WEIGHT_FILES[fmt]] for fmt in formats}
    parent = "pytorch_state_dict"
    return bmz.WeightsDescr(
        pytorch_state_dict=bmz.PytorchStateDictWeightsDescr(source=source[parent], architecture=arch,
                                                            pytorch_version=version),
        torchscript=bmz.TorchscriptWeightsDescr(source=source["torchscript"], pytorch_version=version, parent=parent)
        if "torchscript" in source else None,
        onnx=bmz.OnnxWeightsDescr(source=source["onnx"], opset_version=ONNX_OPSET, parent=parent)
        if "onnx" in source else None,
    )


def describe(bundle: ModelBundle, files: dict, *, name: str, description: str, authors, license: str,
             min_size: int, weight_formats=("pytorch_state_dict",)):
    """The :class:`bioimageio.spec.model.v0_5.ModelDescr` of ``bundle`` whose files are ``files``
    (by file name), with the weights in ``weight_formats``."""
    from bioimageio.spec.model import v0_5 as bmz

    from .. import __version__

    cfg = bundle.config
    inputs, outputs = _tensors(bundle, files, min_size)
    return bmz.ModelDescr(
        name=name,
        description=description,
        authors=[bmz.Author(name=a) for a in (authors or ["the fastunet developers"])],
        cite=[bmz.CiteEntry(text=CITATION, doi=bmz.Doi(UNET_DOI))],
        license=bmz.LicenseId(license),
        tags=["fastunet", "unet", "segmentation", "2d", "pytorch", *(["torchscript"] if "torchscript" in weight_formats
                                                                   else []), *(["onnx"] if "onnx" in weight_formats else [])],
        covers=[bmz.FileDescr(source=files["cover.png"])],
        documentation=bmz.FileDescr(source=files["README.md"]),
        inputs=[inputs],
        outputs=[outputs],
        weights=_weights(bundle, files, weight_formats),
        attachments=[bmz.FileDescr(source=files["model.safetensors"])],
        config=bmz.Config(fastunet={"version": __version__, "config": cfg.to_dict(),
                                    "normalization": bundle.normalization.to_dict(),
                                    "model_file": "model.safetensors", "postprocessing": postprocessing(bundle)}),
    )
