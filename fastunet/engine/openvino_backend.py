"""The network under OpenVINO's CPU runtime: ``backend="openvino"`` (``pip install 'fastunet[openvino]'``).

The reference network (:class:`~fastunet.model.ReferenceUNet`) is traced once by
``torch.jit.trace`` on the smallest valid tile and converted by ``openvino.convert_model``;
the trace records the crops from the tensors' sizes, so the one converted model serves every
tile shape. It is kept in OpenVINO's IR format in a disk cache (:func:`cache_dir`; the
:data:`CACHE_ENTRIES` most recently used models), keyed by the weights and the versions of
torch and OpenVINO, so that later processes skip the conversion (seconds) and only compile
it (a fraction of a second). Each tile shape is compiled once per process for the CPU plugin
with the dtype as its inference precision (``bf16``, or ``f32`` for fp32/tf32; weights
prepacked once, at compile time), one stream on torch's intra-op threads (the engine calls
the network from one thread at a time).

OpenVINO is imported only here, when this backend is made (``import fastunet`` stays light).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
import warnings
from pathlib import Path

import numpy as np
import torch

from .. import geometry
from ..errors import UserError
from ..model import ReferenceUNet
from .predictor import Predictor

__all__ = ["OpenVINOPredictor", "import_openvino", "available", "picked_by_auto", "cache_dir", "PRECISIONS"]

# fastunet's dtype -> the CPU plugin's inference precision
PRECISIONS = {"bf16": "bf16", "fp32": "f32", "tf32": "f32"}
CACHE_ENTRIES = 8  # converted models kept on disk (the most recently used)


def available() -> bool:
    """Whether the openvino package is installed (without importing it)."""
    from importlib.util import find_spec

    return find_spec("openvino") is not None


def picked_by_auto() -> bool:
    """Whether ``backend="auto"`` runs the CPU on OpenVINO: when it is installed, unless the
    environment says ``FASTUNET_OPENVINO=0`` (PyTorch then, e.g. for a test suite whose
    references are PyTorch's, or to compare)."""
    return os.environ.get("FASTUNET_OPENVINO", "").strip() != "0" and available()


def import_openvino():
    """The ``openvino`` module, or a :class:`~fastunet.errors.UserError` that says how to install it."""
    try:
        import openvino
    except ImportError as exc:
        raise UserError(f'backend="openvino" needs the openvino package, which cannot be imported here ({exc}): '
                        "pip install 'fastunet[openvino]', or use backend=\"torch\".") from None
    return openvino


def cache_dir() -> Path:
    """The folder of the converted models: ``$FASTUNET_CACHE/openvino``, else
    ``$XDG_CACHE_HOME/fastunet/openvino``, else ``~/.cache/fastunet/openvino``."""
    root = os.environ.get("FASTUNET_CACHE")
    if root:
        return Path(root) / "openvino"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fastunet" / "openvino"


class _Layers(torch.nn.Module):
    """The network's forward without its input checks (they would fix the tile size in the trace)."""

    def __init__(self, model: ReferenceUNet):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model._layers(x)


def _model_key(model: ReferenceUNet, ov_version: str) -> str:
    """A digest of the weights, the config and the versions that make the converted model."""
    digest = hashlib.sha256()
    digest.update(repr((model.config.to_dict(), torch.__version__, ov_version)).encode())
    for name, value in model.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:32]


def _convert(ov, model: ReferenceUNet):
    """``openvino.convert_model`` of the network traced on the smallest valid tile (every
    tile size runs on the result: the trace keeps the crops' sizes symbolic)."""
    edge = geometry.min_input_size(model.config.depth)
    example = torch.zeros(1, model.config.in_channels, edge, edge)
    module = _Layers(model).eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the crop's size checks, traced as constants
        # torch.jit.trace is deprecated from torch 2.13 (still there in 2.14); torch.export
        # specializes the crops to the example's size, so one conversion would not serve every tile
        warnings.simplefilter("ignore", DeprecationWarning)
        traced = torch.jit.trace(module, example, check_trace=False)
        return ov.convert_model(traced, example_input=example)


def converted_model(ov, core, model: ReferenceUNet, folder: Path | None):
    """The converted network: read from ``folder`` when it is there, else converted (and
    saved there, when the folder can be written; a failed save only costs the next process
    the conversion)."""
    if folder is None:
        return _convert(ov, model)
    path = folder / f"unet-{_model_key(model, ov.get_version())}.xml"
    if path.exists() and path.with_suffix(".bin").exists():
        try:
            found = core.read_model(str(path))
            os.utime(path)  # used now: the last entry the pruning removes
            return found
        except (RuntimeError, OSError):  # a damaged entry: convert again, and replace it below
            pass
    converted = _convert(ov, model)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=".tmp-") as tmp:
            ov.save_model(converted, str(Path(tmp) / path.name), compress_to_fp16=False)
            os.replace(Path(tmp) / path.with_suffix(".bin").name, path.with_suffix(".bin"))
            os.replace(Path(tmp) / path.name, path)  # the .xml last: the mark of a complete entry
        _prune(folder)
    except OSError:
        pass
    return converted


def _prune(folder: Path, keep: int = CACHE_ENTRIES) -> None:
    """Keep the ``keep`` most recently used converted models in ``folder`` (each new set of
    weights, e.g. a model in training, adds one)."""
    entries = sorted(folder.glob("unet-*.xml"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        for part in (old, old.with_suffix(".bin")):
            part.unlink(missing_ok=True)


class OpenVINOPredictor(Predictor):
    """The network on the CPU through OpenVINO (see the module's docstring).

    Parameters
    ----------
    model : ReferenceUNet
    device : str or torch.device
        The CPU (OpenVINO's CPU plugin).
    dtype : {"bf16", "fp32", "tf32"}
        The inference precision (tf32 runs as fp32).
    cache : path-like, None or False
        The folder of converted models (default :func:`cache_dir`); False: no disk cache.
    """

    backend = "openvino"

    def __init__(self, model: ReferenceUNet, device="cpu", dtype: str = "fp32", *, cache=None) -> None:
        super().__init__(model, device, dtype)
        if self.device.type != "cpu":
            raise UserError(f'backend="openvino" runs on the CPU; got device="{self.device}" (use backend="auto").')
        if dtype not in PRECISIONS:
            raise UserError(f'backend="openvino" runs in {", ".join(PRECISIONS)}; got dtype="{dtype}".')
        ov = import_openvino()
        self._core = ov.Core()
        folder = None if cache is False else Path(cache) if cache is not None else cache_dir()
        self._model = converted_model(ov, self._core, model.eval(), folder)
        self._config = {"INFERENCE_PRECISION_HINT": PRECISIONS[dtype], "PERFORMANCE_HINT": "LATENCY",
                        "INFERENCE_NUM_THREADS": torch.get_num_threads()}
        self._compiled: dict = {}
        self._lock = threading.Lock()

    def _request(self, shape: tuple):
        """The infer request of one input shape ``(1, C, H, W)``, compiled on first use."""
        with self._lock:
            request = self._compiled.get(shape)
            if request is None:
                model = self._model.clone()
                model.reshape(list(shape))
                request = self._compiled[shape] = self._core.compile_model(model, "CPU", self._config) \
                    .create_infer_request()
            return request

    @torch.no_grad()
    def logits(self, tiles: torch.Tensor) -> torch.Tensor:
        """Scores ``(N, K, h, w)`` float32 of ``tiles`` ``(N, C, H, W)``, one tile per call (the
        tiles are large: a batch adds nothing on the CPU, and one compiled shape serves all)."""
        x = np.ascontiguousarray(tiles.to("cpu", torch.float32).numpy())
        request = self._request((1, *x.shape[1:]))
        out = None
        for i in range(x.shape[0]):
            scores = request.infer([x[i:i + 1]])[0]
            if out is None:
                out = np.empty((x.shape[0], *scores.shape[1:]), np.float32)
            out[i] = scores[0]
        return torch.from_numpy(out)
