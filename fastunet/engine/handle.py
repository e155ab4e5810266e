"""A picklable handle to a network's weights (:class:`ModelHandle`): what every block task
carries, and what a backend builds its network from. No PyTorch at import, nor to read and
check a model file: only :meth:`ModelHandle.load` builds the PyTorch network.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..netconfig import UNetConfig
from ..normalization import Normalization

if TYPE_CHECKING:
    from ..model import ReferenceUNet

__all__ = ["ModelHandle"]


class ModelHandle:
    """A picklable reference to a network: a model file, or the weights as safetensors bytes.

    ``key`` identifies the weights (sha256 of the file or of the bytes); ``extra`` is the model's
    free-form metadata (the file's, or the bundle's; ``{}`` for a bare network). The loaded module
    (``module``) stays in the process that made the handle and is never pickled; a worker
    loads the weights from the path or bytes instead (never unpickling anything). A handle made
    from a path checks the file (:func:`~fastunet.modelfile.read_weights`) without building the
    network, and keeps the arrays it read: :meth:`weights` gives them (OpenVINO keys its cache
    by them) and :meth:`load` builds the network from them when a backend needs it (OpenVINO,
    with its converted model cached, never does), so the file is read and checked once.
    """

    def __init__(self, *, config: UNetConfig, normalization: Normalization, key: str,
                 path: str | None = None, data: bytes | None = None, module: ReferenceUNet | None = None,
                 extra: dict | None = None):
        if (path is None) == (data is None):
            raise ValueError("A ModelHandle needs exactly one of path or data.")
        self.config = config
        self.normalization = normalization
        self.key = key
        self.path = path
        self.data = data
        self.module = module
        self.extra = dict(extra or {})
        self._weights: dict[str, np.ndarray] | None = None  # the arrays from_path read, until load() uses them

    @classmethod
    def from_path(cls, path) -> "ModelHandle":
        """Load a model file (raises :class:`~fastunet.errors.ModelFileError` when broken)."""
        from ..modelfile import read_weights

        path = Path(path).expanduser().resolve()
        config, normalization, extra, weights = read_weights(path)  # every check, no network built
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 24), b""):
                digest.update(chunk)
        handle = cls(config=config, normalization=normalization, key=digest.hexdigest(), path=str(path),
                     extra=extra)
        handle._weights = weights
        return handle

    @classmethod
    def from_module(cls, model) -> "ModelHandle":
        """Wrap an in-memory :class:`~fastunet.modelfile.ModelBundle` or :class:`ReferenceUNet`
        (percentile normalization); the weights travel as safetensors bytes."""
        import torch
        from safetensors.torch import save

        from ..model import ReferenceUNet
        from ..modelfile import ModelBundle

        if isinstance(model, ReferenceUNet):
            model = ModelBundle(model)
        if not isinstance(model, ModelBundle):
            raise TypeError(
                "model= expects a fastunet model file path, a ModelBundle or a ReferenceUNet (or None for the "
                f"bundled model); got {type(model).__module__}.{type(model).__qualname__}."
            )
        tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.module.state_dict().items()}
        bad = [k for k, v in tensors.items() if not torch.isfinite(v).all()]
        if bad:
            from ..errors import UserError

            raise UserError(f"The network's weights {', '.join(bad[:3])} hold NaN or Inf values (the training "
                            "diverged?); segmenting with them would give nothing but background.")
        data = save(tensors)
        return cls(config=model.config, normalization=model.normalization, key=hashlib.sha256(data).hexdigest(),
                   data=data, module=model.module, extra=model.extra)

    def load(self) -> ReferenceUNet:
        """The network on the CPU, in eval mode (the in-process module when there is one, else
        built once from :meth:`weights` and kept in this process)."""
        if self.module is None:
            from ..modelfile import network_from_weights

            self.module = network_from_weights(self.config, self.weights())
            self._weights = None  # the module holds them now
        return self.module

    def weights(self) -> dict[str, np.ndarray]:
        """The weights as float32 numpy arrays by name (:func:`~fastunet.netconfig.parameter_shapes`'
        order): from the module when there is one, else those :meth:`from_path` read, else read
        without PyTorch from the file (every check of :func:`~fastunet.modelfile.read_weights`)
        or the bytes."""
        from ..netconfig import parameter_shapes

        if self.module is not None:
            state = self.module.state_dict()
            return {k: state[k].detach().to("cpu").float().numpy() for k in parameter_shapes(self.config)}
        if self._weights is not None:
            found = self._weights
        elif self.path is not None:
            from ..modelfile import read_weights

            found = read_weights(self.path)[3]
        else:
            from safetensors.numpy import load

            found = load(self.data)
        return {k: np.asarray(found[k], np.float32) for k in parameter_shapes(self.config)}

    def __getstate__(self):
        state = dict(self.__dict__)
        state["module"] = state["_weights"] = None
        return state
