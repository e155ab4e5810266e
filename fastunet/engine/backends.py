"""Which implementation runs the network: the backends behind ``backend=``.

``torch``
    the plain-PyTorch :class:`~fastunet.model.ReferenceUNet` (any device; autocast for
    bf16/fp16) through :class:`~fastunet.engine.predictor.TorchPredictor`.
``triton``
    the fused Triton network (:class:`~fastunet.engine.fused.FusedPredictor`); on a CPU the
    kernels run under the Triton interpreter (slow, but the whole path can be checked
    without a GPU).
``openvino``
    the network (2D or 3D) converted for OpenVINO's CPU runtime
    (:class:`~fastunet.engine.openvino_backend.OpenVINOPredictor`; the CPU only).
``auto``
    ``triton`` on CUDA when the triton package is installed (``fastunet[gpu]``); ``openvino``
    on the CPU when the openvino package is installed (``fastunet[openvino]``: measured
    faster than PyTorch on the CPU at the same accuracy, see benchmarks P7) unless
    ``FASTUNET_OPENVINO=0`` is set; ``torch`` otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .. import kernels
from ..devices import resolve_device, resolve_dtype
from ..errors import UserError
from . import openvino_backend
from .predictor import Predictor

if TYPE_CHECKING:
    import torch

    from ..model import ReferenceUNet
    from .handle import ModelHandle

__all__ = ["BACKENDS", "resolve_backend", "make_predictor", "backend_outputs"]

BACKENDS = ("auto", "triton", "torch", "openvino")


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """``auto`` -> ``triton`` on CUDA when triton is installed, ``openvino`` on the CPU when
    openvino is installed (:func:`~fastunet.engine.openvino_backend.picked_by_auto`; 2D and 3D
    networks alike), ``torch`` elsewhere; checks the name, that triton or openvino
    is there when named, and that openvino is asked for on the CPU (ValueError naming the fix
    otherwise)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(repr(b) for b in BACKENDS)}; got {backend!r}.")
    cuda = resolve_device(device).type == "cuda"
    if backend == "auto":
        if cuda:
            return "triton" if kernels.available() else "torch"
        return "openvino" if openvino_backend.picked_by_auto() else "torch"
    if backend == "triton" and not kernels.available():
        raise ValueError('backend="triton" needs the triton package, which is not installed: pip install '
                         "'fastunet[gpu]' (Linux), or use backend=\"torch\".")
    if backend == "openvino":
        if cuda:
            raise ValueError('backend="openvino" runs on the CPU; use device="cpu", or backend="auto" on CUDA.')
        if not openvino_backend.available():
            raise ValueError('backend="openvino" needs the openvino package, which is not installed: pip install '
                             "'fastunet[openvino]', or use backend=\"torch\".")
    return backend


def backend_outputs(backend: str) -> tuple[str, ...]:
    """What a resolved backend's predictor computes (:attr:`Predictor.outputs`; OpenVINO's has
    also ``"confidence"``), known without loading it."""
    return openvino_backend.OpenVINOPredictor.outputs if backend == "openvino" else Predictor.outputs


def make_predictor(model: ReferenceUNet | ModelHandle, backend: str = "auto", device="cpu", dtype: str | None = None,
                   *, cuda_graph: bool = False, batch_size: int | None = None,
                   threads: int | None = None) -> Predictor:
    """A :class:`Predictor` for ``model`` (a network, or a
    :class:`~fastunet.engine.handle.ModelHandle`: OpenVINO then builds the PyTorch network only
    when its converted model is not in its cache, and PyTorch is not imported otherwise) on
    ``device``.

    ``dtype`` (None or ``"auto"``: :func:`fastunet.devices.resolve_dtype`) is bf16 on CUDA and
    on CPUs with bf16 matrix units, fp32 on other CPUs. ``cuda_graph``: the fused
    network (``triton`` on CUDA) captures its forward of each input shape in a CUDA graph
    (for callers whose batches keep one shape, like the padded batches of
    :class:`~fastunet.engine.runner.DeviceRunner`); the ``torch`` backend ignores it.
    ``batch_size``: OpenVINO runs that many tiles side by side (its streams, each on its share
    of its threads); the other backends ignore it. ``threads``: OpenVINO's threads (default
    :func:`fastunet.devices.cpu_threads`); the other backends use torch's intra-op threads.
    """
    device = resolve_device(device)
    backend = resolve_backend(backend, device)
    dtype = resolve_dtype(dtype, device, backend)
    if dtype == "int8" and backend != "openvino":
        raise UserError(f'dtype="int8" runs on the OpenVINO backend (the network quantized after training), not '
                        f'on backend="{backend}": on the CPU, pip install \'fastunet[openvino]\' and use backend="auto" '
                        'or "openvino"; or use dtype="bf16" or "fp32".')
    if dtype == "int8" and model.config.spatial_dims != 2:
        raise UserError('dtype="int8" is calibrated on 2D images of nuclei; this network is 3D: use dtype="bf16" or '
                        '"fp32" (or "auto").')
    if backend == "openvino":
        return openvino_backend.OpenVINOPredictor(model, device=device, dtype=dtype, streams=batch_size,
                                                  threads=threads)
    from .handle import ModelHandle

    if isinstance(model, ModelHandle):  # the other backends run the PyTorch network
        model = model.load()
    if backend == "triton":
        from .fused import FusedPredictor  # imports the Triton kernels: only when asked for

        if model.config.spatial_dims == 3:  # the 3D network on the 3x3x3 kernels
            from .fused3d import FusedPredictor3D

            return FusedPredictor3D(model, device=device, dtype=dtype, cuda_graph=cuda_graph)
        return FusedPredictor(model, device=device, dtype=dtype, cuda_graph=cuda_graph)
    from .predictor import TorchPredictor

    return TorchPredictor(model, device=device, dtype=dtype)
