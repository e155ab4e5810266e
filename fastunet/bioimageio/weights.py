"""The package's network in the weight formats other tools run, and a check that each gives
the same probabilities.

* ``pytorch_state_dict`` (``weights.pt``): the parameters, with the architecture as a source
  file (:mod:`~fastunet.bioimageio.architecture`); bioimageio.core, ilastik and other Python
  consumers build the network from it;
* ``torchscript`` (``weights_torchscript.pt``): :class:`~fastunet.bioimageio.architecture.FastUNetSameSize`
  compiled with ``torch.jit.script``, which runs without Python (deepImageJ and QuPath through
  libtorch). Scripted, not traced: a trace would freeze the mirror widths and the valid
  convolutions' crop offsets to the example's size;
* ``onnx`` (``weights.onnx``): exported with PyTorch's TorchScript-based exporter
  (``dynamo=False``, opset :data:`ONNX_OPSET`), present in torch 2.11 to 2.14 and needing
  nothing beyond torch to write; the input's batch, height and width are dynamic axes, so the
  size arithmetic of the wrapper is recorded as graph operations (the module's control flow has
  no branch on sizes, see ``architecture._mirror``). The dynamo exporter (``dynamo=True``) needs
  onnxscript and fails on the mirror's symbolic remainder in torch 2.13.

Running the TorchScript or ONNX file as a consumer does (:func:`predict_with`) needs torch, or
onnxruntime for ONNX.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from .architecture import FastUNetSameSize

__all__ = ["WEIGHT_FORMATS", "WEIGHT_FILES", "ONNX_OPSET", "write_weights", "predict_with", "parse_formats"]

WEIGHT_FORMATS = ("pytorch_state_dict", "torchscript", "onnx")
WEIGHT_FILES = {"pytorch_state_dict": "weights.pt", "torchscript": "weights_torchscript.pt", "onnx": "weights.onnx"}
ONNX_OPSET = 17  # onnxruntime >= 1.11 (2022) runs it
INPUT_NAME, OUTPUT_NAME = "raw", "probabilities"  # the description's tensor ids


def parse_formats(formats) -> tuple[str, ...]:
    """The weight formats to write, ``pytorch_state_dict`` first (bioimage.io's parent of the
    others); ``None`` means all of :data:`WEIGHT_FORMATS`."""
    if formats is None:
        return WEIGHT_FORMATS
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    unknown = [f for f in formats if f not in WEIGHT_FORMATS]
    if unknown or not formats:
        raise ValueError(f"Expected weight formats among {', '.join(WEIGHT_FORMATS)} (comma-separated); got "
                         f"{', '.join(map(str, unknown or formats)) or 'none'}.")
    return tuple(f for f in WEIGHT_FORMATS if f == "pytorch_state_dict" or f in formats)


def write_weights(net: FastUNetSameSize, folder: str | os.PathLike, formats, example: torch.Tensor) -> dict[str, Path]:
    """Write ``net`` (in eval mode, on the CPU) in each of ``formats`` into ``folder``.

    ``example`` is a ``(B, C, H, W)`` input the ONNX exporter runs once; the files do not
    depend on its size. Returns the path of each format's file.
    """
    folder = Path(folder)
    paths = {fmt: folder / WEIGHT_FILES[fmt] for fmt in parse_formats(formats)}
    for fmt, path in paths.items():
        if fmt == "pytorch_state_dict":
            state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in net.state_dict().items()}
            torch.save(state, path)
        elif fmt == "torchscript":
            with _jit_not_deprecated():
                torch.jit.save(torch.jit.script(net), str(path))
        else:
            _write_onnx(net, path, example)
    return paths


@contextlib.contextmanager
def _jit_not_deprecated():
    """torch >= 2.13 calls TorchScript deprecated; it is what libtorch consumers (deepImageJ,
    QuPath) load, so that warning is not passed on to fastunet's users."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=DeprecationWarning, message=r".*torch\.jit")
        yield


def _write_onnx(net: FastUNetSameSize, path: Path, example: torch.Tensor) -> None:
    dynamic = {0: "batch", 2: "y", 3: "x"}
    with warnings.catch_warnings():
        # the TorchScript-based exporter warns that it is deprecated (torch >= 2.9) and that
        # shape arithmetic is traced: the dynamic axes keep that arithmetic in the graph.
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          dynamic_axes={INPUT_NAME: dynamic, OUTPUT_NAME: dynamic})


def predict_with(fmt: str, path: str | os.PathLike, x: np.ndarray) -> np.ndarray:
    """Run the ``torchscript`` or ``onnx`` weights at ``path`` on a normalized ``(B, C, H, W)``
    image as a consumer would: ``torch.jit.load``, or onnxruntime on the CPU."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if fmt == "onnx":
        try:
            import onnxruntime
        except ImportError as exc:
            raise ImportError(f"Running ONNX weights needs onnxruntime ({exc}): pip install onnxruntime") from None
        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return session.run([OUTPUT_NAME], {INPUT_NAME: x})[0]
    if fmt != "torchscript":
        raise ValueError(f"Expected the weight format 'torchscript' or 'onnx'; got {fmt!r}.")
    with _jit_not_deprecated():
        module = torch.jit.load(str(path), map_location="cpu")
    with torch.no_grad():
        return module.eval()(torch.from_numpy(x)).numpy()
