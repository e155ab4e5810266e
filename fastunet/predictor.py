"""Backends that run a U-Net on a batch of tiles: one interface for the engine and the CLI.

``make_predictor(model, backend=..., device=..., dtype=...)`` returns a :class:`Predictor`
whose :meth:`Predictor.predict` maps a batch of normalized input tiles ``(N, C, H, W)`` to
class probabilities and/or labels for the ``(H - 2c, W - 2c)`` output tiles.

Backends:

``torch``
    the plain-PyTorch :class:`~fastunet.model.ReferenceUNet` (any device; autocast for
    bf16/fp16 on CUDA).
``triton``
    the fused Triton network (``fastunet.fused``); on a CPU machine the kernels run under the
    Triton interpreter (slow, but the whole path can be checked without a GPU).
``auto``
    ``triton`` on CUDA, ``torch`` otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .devices import default_dtype
from .model import ReferenceUNet

__all__ = ["Predictor", "TorchPredictor", "make_predictor", "DTYPES", "resolve_backend"]

DTYPES = ("fp32", "tf32", "bf16", "fp16")
OUTPUTS = ("labels", "probs", "both")


@dataclass
class Prediction:
    """Output of :meth:`Predictor.predict`: ``probs`` (N, C, h, w) float16/float32 and/or
    ``labels`` (N, h, w) uint8; the one not asked for is None."""

    probs: torch.Tensor | None
    labels: torch.Tensor | None


class Predictor:
    """Runs a network on batches of tiles. Subclasses implement :meth:`logits`."""

    backend = "abstract"

    def __init__(self, model: ReferenceUNet, device: torch.device, dtype: str) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}; got {dtype!r}.")
        self.config = model.config
        self.device = torch.device(device)
        self.dtype = dtype

    def logits(self, tiles: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    @torch.no_grad()
    def predict(self, tiles: torch.Tensor, output: str = "labels") -> Prediction:
        """Probabilities (softmax over classes) and/or labels (argmax) for a batch of tiles."""
        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}; got {output!r}.")
        scores = self.logits(tiles).float()
        probs = torch.softmax(scores, dim=1) if output in ("probs", "both") else None
        labels = scores.argmax(dim=1).to(torch.uint8) if output in ("labels", "both") else None
        if probs is not None:
            probs = probs.to(torch.float16)
        return Prediction(probs=probs, labels=labels)


class TorchPredictor(Predictor):
    """The reference network in PyTorch (the CPU path, and the baseline on CUDA)."""

    backend = "torch"

    def __init__(self, model: ReferenceUNet, device="cpu", dtype: str = "fp32") -> None:
        super().__init__(model, device, dtype)
        self.model = model.to(self.device).eval()
        self._autocast = None
        if self.device.type == "cuda" and dtype in ("bf16", "fp16"):
            self._autocast = torch.bfloat16 if dtype == "bf16" else torch.float16
        elif self.device.type == "cpu" and dtype == "bf16":
            self._autocast = torch.bfloat16

    @torch.no_grad()
    def logits(self, tiles: torch.Tensor) -> torch.Tensor:
        tiles = tiles.to(self.device, torch.float32, non_blocking=True)
        if self.device.type == "cuda":
            allow = self.dtype == "tf32"
            prev = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = allow
            try:
                with torch.autocast("cuda", dtype=self._autocast, enabled=self._autocast is not None):
                    return self.model(tiles)
            finally:
                torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self._autocast is not None):
            return self.model(tiles)


def resolve_backend(backend: str, device: torch.device | str) -> str:
    """``auto`` -> ``triton`` on CUDA, ``torch`` elsewhere; checks the name."""
    if backend not in ("auto", "triton", "torch"):
        raise ValueError(f"backend must be 'auto', 'triton' or 'torch'; got {backend!r}.")
    if backend == "auto":
        return "triton" if torch.device(device).type == "cuda" else "torch"
    return backend


def make_predictor(model: ReferenceUNet, backend: str = "auto", device="cpu", dtype: str | None = None) -> Predictor:
    """A :class:`Predictor` for ``model`` on ``device``.

    ``dtype`` defaults to ``bf16`` on CUDA and ``fp32`` on the CPU.
    """
    device = torch.device(device)
    if dtype is None:
        dtype = default_dtype(device)
    backend = resolve_backend(backend, device)
    if backend == "triton":
        from .fused import FusedPredictor

        return FusedPredictor(model, device=device, dtype=dtype)
    return TorchPredictor(model, device=device, dtype=dtype)
