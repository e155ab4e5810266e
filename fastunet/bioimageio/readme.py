"""The documentation of a bioimage.io package (its ``README.md``), with the "Validation"
section bioimage.io asks for: what the package was checked against when it was written."""

from __future__ import annotations

import torch

from ..modelfile import ModelBundle
from . import architecture
from .description import ARCHITECTURE_FILE, CITATION, UNET_DOI, halo_size
from .weights import ONNX_OPSET, WEIGHT_FILES

__all__ = ["package_readme", "validation_section"]

_FORMAT_LINES = {
    "pytorch_state_dict": "PyTorch state dict, with the architecture as the source file `{arch}` (torch only)",
    "torchscript": "TorchScript (`torch.jit.script`: every input size; deepImageJ, QuPath and other libtorch users)",
    "onnx": "ONNX, opset {opset}, batch, y and x dynamic (onnxruntime and other ONNX runtimes)",
}


def package_readme(bundle: ModelBundle, name: str, description: str, validation: str, formats) -> str:
    """The package's README: the network, its input, its weights, its training record, the
    ``validation`` section (:func:`validation_section`) and the citation."""
    cfg, norm = bundle.config, bundle.normalization
    c = architecture.context(cfg.depth)
    extra = "".join(f"- {key}: {value}\n" for key, value in bundle.extra.items() if key != "card")
    extra = extra or "- (no training record in the model file)\n"
    formats = "\n".join(f"- `{WEIGHT_FILES[f]}`: " + _FORMAT_LINES[f].format(arch=ARCHITECTURE_FILE, opset=ONNX_OPSET)
                        for f in formats)
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

## Weights

{formats}

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
{validation}
## Citation

{CITATION} doi:{UNET_DOI}
"""


def validation_section(bundle: ModelBundle, test_shape, max_abs_diff: dict, *, tested: bool) -> str:
    """The "Validation" section: the weight formats' agreement on the test image (measured at
    export: ``max_abs_diff`` per format), whether bioimageio.core's test passed, and the
    segmentation quality the model file records (its training's held-out images), if any."""
    from .. import __version__

    agree = "".join(f"- `{fmt}`: largest absolute difference {diff:.2g} from the state dict's probabilities\n"
                    for fmt, diff in max_abs_diff.items()) or "- (only the state dict was written)\n"
    test = ("bioimageio.core's `test_model` passed on the package for every weight format: each reproduced the test "
            "output and ran at three sizes with batch sizes 1 and 2." if tested else
            "bioimageio.core's `test_model` was not run at export (`--no-test`): run `bioimageio test` on the package.")
    metrics = bundle.extra.get("val_metrics")
    held_out = (bundle.extra.get("training_data") or {}).get("val") if isinstance(bundle.extra.get("training_data"),
                                                                                 dict) else None
    if isinstance(metrics, dict) and metrics:
        quality = ", ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in metrics.items())
        where = f" ({len(held_out)} images held out of training)" if held_out else ""
        quality = f"Segmentation quality recorded by training on its validation images{where}: {quality}."
    else:
        quality = "The model file records no validation metrics."
    return f"""## Validation

Written by fastunet {__version__} with torch {torch.__version__.split("+")[0]}. The test image
(`test_input.npy`, {test_shape[0]} x {test_shape[1]}, a synthetic nuclei image) was normalized and run
through each weight format; `test_output.npy` is the state dict's output:

{agree}
{test} fastunet's test suite checks that `FastUNetSameSize` gives fastunet's reference network
on the mirrored image and the probabilities of its overlap-tile engine.

{quality} Measure it on your own annotated images with `fastunet evaluate`.
"""
