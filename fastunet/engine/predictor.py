"""The interface of a network on a batch of tiles, and its plain-PyTorch implementation.

A :class:`Predictor`'s :meth:`Predictor.predict` maps a batch of normalized input tiles
``(N, C, H, W)`` to class probabilities and/or labels for the ``(H - 2c, W - 2c)`` output
tiles. :class:`TorchPredictor` runs the reference network; the fused Triton network is
:class:`fastunet.engine.fused.FusedPredictor`; :func:`fastunet.engine.backends.make_predictor`
picks one.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..devices import DTYPES, FLOAT_DTYPES, resolve_device

if TYPE_CHECKING:
    import torch

    from ..model import ReferenceUNet

__all__ = ["Prediction", "Predictor", "TorchPredictor", "DTYPES", "OUTPUTS", "CONFIDENCE_SCALE", "as_numpy", "class_labels", "tiles_for"]

OUTPUTS = ("labels", "probs", "both")
# A predictor's optional "confidence" output (OpenVINO's, fastunet.engine.openvino_head): the
# labels and each voxel's object probability p as round(CONFIDENCE_SCALE * p), uint8
CONFIDENCE_SCALE = 255


@dataclass
class Prediction:
    """Output of :meth:`Predictor.predict`: ``probs`` (N, C, h, w) float16/float32 and/or
    ``labels`` (N, h, w) uint8; the one not asked for is None. torch tensors for torch
    tiles; numpy arrays where the predictor was given numpy tiles (OpenVINO, :func:`as_numpy`)."""

    probs: Any
    labels: Any


def as_numpy(x) -> np.ndarray:
    """A prediction's array as numpy (a torch tensor copied to the CPU; numpy as it is)."""
    return x if isinstance(x, np.ndarray) else x.cpu().numpy()


def tiles_for(predictor, tiles: np.ndarray):
    """Numpy ``tiles`` as ``predictor`` takes them: as they are where it takes numpy
    (``takes_numpy``: OpenVINO, which then needs no PyTorch), else a torch tensor sharing
    their memory."""
    if getattr(predictor, "takes_numpy", False):
        return tiles
    import torch

    return torch.from_numpy(tiles)


def class_labels(scores: np.ndarray) -> np.ndarray:
    """``scores.argmax(axis=1)`` as uint8 for scores ``(N, K, ...)``, the same values (the first
    largest class), in a pass or two per class: numpy's argmax along a leading axis copies the
    scores with the classes last (6.5 ms against 0.1 ms for two 2-class 516 x 516 tiles,
    measured here). Scores with a NaN go to numpy's argmax (its rule: the first NaN)."""
    if np.isnan(scores).any():
        return scores.argmax(axis=1).astype(np.uint8)
    if scores.shape[1] == 2:
        return np.greater(scores[:, 1], scores[:, 0]).view(np.uint8)
    labels = np.zeros((scores.shape[0], *scores.shape[2:]), np.uint8)
    best = scores[:, 0].copy()
    for k in range(1, scores.shape[1]):
        labels[scores[:, k] > best] = k
        np.maximum(best, scores[:, k], out=best)
    return labels


class Predictor:
    """Runs a network on batches of tiles. Subclasses implement :meth:`logits`."""

    backend = "abstract"
    dtypes = FLOAT_DTYPES  # what this backend runs in
    outputs = OUTPUTS  # what predict() computes (OpenVINO's also "confidence")
    takes_numpy = False  # torch tensors in and out (OpenVINO's: numpy; see tiles_for)

    def __init__(self, model: Any, device, dtype: str) -> None:
        if dtype not in self.dtypes:
            raise ValueError(f"dtype must be one of {self.dtypes} on backend {self.backend!r}; got {dtype!r}.")
        self.config = model.config
        self.device = resolve_device(device)
        self.dtype = dtype

    def logits(self, tiles: torch.Tensor) -> torch.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def predict(self, tiles: torch.Tensor, output: str = "labels") -> Prediction:
        """Probabilities (softmax over classes) and/or labels (argmax) for a batch of tiles."""
        import torch

        if output not in OUTPUTS:
            raise ValueError(f"output must be one of {OUTPUTS}; got {output!r}.")
        with torch.no_grad():
            scores = self.logits(tiles).float()
        probs = torch.softmax(scores, dim=1) if output in ("probs", "both") else None
        labels = scores.argmax(dim=1).to(torch.uint8) if output in ("labels", "both") else None
        if probs is not None:
            probs = probs.to(torch.float16)
        return Prediction(probs=probs, labels=labels)


def check_tf32_setting(dtype: str) -> None:
    """PyTorch's CUDA convolutions use TF32 while ``torch.backends.cudnn.allow_tf32`` is True
    (its default). fastunet never changes that process-wide setting; on CUDA the torch
    backend checks that it matches the dtype asked for (``fp32``: off, ``tf32``: on) and
    says how to set it otherwise. (The ``fastunet`` command sets it from ``--dtype``.)"""
    import torch

    if dtype not in ("fp32", "tf32") or torch.backends.cudnn.allow_tf32 == (dtype == "tf32"):
        return
    from ..errors import UserError

    want = dtype == "tf32"
    raise UserError(
        f'dtype="{dtype}" with backend="torch" on CUDA needs torch.backends.cudnn.allow_tf32 = {want} '
        f"(it is {not want} in this process); set it before segmenting, or ask for "
        f'dtype="{"fp32" if not want else "tf32"}".'
    )


class TorchPredictor(Predictor):
    """The reference network in PyTorch (the CPU path, and the baseline on CUDA).

    On CUDA bf16 and fp16 run under autocast; fp32 and tf32 run with PyTorch's TF32 setting,
    which must match the dtype (:func:`check_tf32_setting`). On the CPU the network runs on a
    copy of the module in the channels-last memory format (oneDNN's fast convolutions:
    measured about 2x faster than contiguous NCHW here), its weights cast once to bf16 for
    ``dtype="bf16"`` (rather than by autocast on every call); fp16, tf32 and fp32 run in
    fp32 there, one tile per call. The caller's module is left as it is."""

    backend = "torch"

    def __init__(self, model: ReferenceUNet, device="cpu", dtype: str = "fp32") -> None:
        import torch

        super().__init__(model, device, dtype)
        self._autocast = None
        self._input_dtype = torch.float32
        self._memory_format = torch.contiguous_format
        if self.device.type == "cuda":
            if dtype in ("bf16", "fp16"):
                self._autocast = torch.bfloat16 if dtype == "bf16" else torch.float16
            check_tf32_setting(dtype)
            self.model = model.to(self.device).eval()
        else:
            self._input_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
            self._memory_format = torch.channels_last if model.config.spatial_dims == 2 else torch.channels_last_3d
            self.model = copy.deepcopy(model).eval().to(self.device, self._input_dtype,
                                                        memory_format=self._memory_format)

    def logits(self, tiles: torch.Tensor) -> torch.Tensor:
        import torch

        tiles = tiles.to(self.device, self._input_dtype, non_blocking=True, memory_format=self._memory_format)
        with torch.no_grad():
            if self.device.type == "cuda":
                check_tf32_setting(self.dtype)  # the setting is the process's: it may have changed
                with torch.autocast("cuda", dtype=self._autocast, enabled=self._autocast is not None):
                    return self.model(tiles)
            # One tile per call on the CPU: oneDNN may pick another kernel for another batch size
            # (fp32 results then differ in the last bits), and the runner's batches mix tiles of
            # whichever blocks are waiting; so a tile's result depends on nothing but the tile.
            return torch.cat([self.model(tiles[i:i + 1]) for i in range(tiles.shape[0])])
