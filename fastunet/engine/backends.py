"""Which implementation runs the network: the backends behind ``backend=``.

``torch``
    the plain-PyTorch :class:`~fastunet.model.ReferenceUNet` (any device; autocast for
    bf16/fp16) through :class:`~fastunet.engine.predictor.TorchPredictor`.
``triton``
    the fused Triton network (:class:`~fastunet.engine.fused.FusedPredictor`); on a CPU the
    kernels run under the Triton interpreter (slow, but the whole path can be checked
    without a GPU).
``auto``
    ``triton`` on CUDA when the triton package is installed (``fastunet[gpu]``), ``torch``
    otherwise.
"""

from __future__ import annotations

import torch

from .. import kernels
from ..devices import default_dtype
from ..model import ReferenceUNet
from .predictor import Predictor, TorchPredictor

__all__ = ["BACKENDS", "resolve_backend", "make_predictor"]

BACKENDS = ("auto", "triton", "torch")


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """``auto`` -> ``triton`` on CUDA when triton is installed, ``torch`` elsewhere; checks the
    name, and that triton is there for ``triton`` (ValueError naming the fix otherwise)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch'; got {backend!r}.")
    if backend == "auto":
        return "triton" if torch.device(device).type == "cuda" and kernels.available() else "torch"
    if backend == "triton" and not kernels.available():
        raise ValueError('backend="triton" needs the triton package, which is not installed: pip install '
                         "'fastunet[gpu]' (Linux), or use backend=\"torch\".")
    return backend


def make_predictor(model: ReferenceUNet, backend: str = "auto", device="cpu", dtype: str | None = None, *,
                   cuda_graph: bool = False) -> Predictor:
    """A :class:`Predictor` for ``model`` on ``device``.

    ``dtype`` defaults to ``bf16`` on CUDA and ``fp32`` on the CPU. ``cuda_graph``: the fused
    network (``triton`` on CUDA) captures its forward of each input shape in a CUDA graph
    (for callers whose batches keep one shape, like the padded batches of
    :class:`~fastunet.engine.runner.DeviceRunner`); the ``torch`` backend ignores it.
    """
    device = torch.device(device)
    if dtype is None:
        dtype = default_dtype(device)
    backend = resolve_backend(backend, device)
    if backend == "triton":
        from .fused import FusedPredictor  # imports the Triton kernels: only when asked for

        if model.config.spatial_dims == 3:  # the 3D network on the 3x3x3 kernels
            from .fused3d import FusedPredictor3D

            return FusedPredictor3D(model, device=device, dtype=dtype, cuda_graph=cuda_graph)
        return FusedPredictor(model, device=device, dtype=dtype, cuda_graph=cuda_graph)
    return TorchPredictor(model, device=device, dtype=dtype)
