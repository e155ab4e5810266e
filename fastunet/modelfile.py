"""Model files: safetensors weights with the config and normalization in the metadata.

A model file is never unpickled: safetensors stores raw tensors and a JSON header, so a
user's weights file cannot run code. The header's ``__metadata__`` holds::

    format          "fastunet"
    format_version  "1"
    config          JSON of UNetConfig
    normalization   JSON of Normalization
    extra           JSON object (free-form: training command, metrics, ...)

A model in memory is a :class:`ModelBundle`: the network with the normalization it expects
and the file's free-form metadata. :func:`read_model` gives one; :func:`load_model` gives
only the network.

Reading a file checks it before anything is allocated: the config against limits
(:data:`LIMITS`: a hostile header cannot ask for terabytes), then every tensor's name and
shape in the header against the config (:func:`fastunet.netconfig.parameter_shapes`), then
the weights for NaN/Inf. :func:`read_weights` does all of that without PyTorch (numpy
arrays: what OpenVINO's CPU path needs); :func:`read_model` builds the network from them.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors import SafetensorError, safe_open

from .devices import check_visible, resolve_device
from .errors import ModelFileError, UserError
from .netconfig import UNetConfig, parameter_count, parameter_shapes
from .normalization import Normalization

if TYPE_CHECKING:
    import torch

    from .model import ReferenceUNet

__all__ = [
    "ModelBundle",
    "save_model",
    "load_model",
    "read_model",
    "read_model_metadata",
    "read_weights",
    "network_from_weights",
    "default_model_path",
    "bundled_model",
    "BUNDLED_MODELS",
    "FORMAT_VERSION",
    "LIMITS",
]

FORMAT_NAME = "fastunet"
FORMAT_VERSION = "1"
_MAX_HEADER = 100 * 1024 * 1024
# Largest configs a model file may claim (the paper's network: depth 4, base 64, widest 1024).
LIMITS = {"depth": 8, "base_channels": 1024, "widest": 16384, "in_channels": 1024, "num_classes": 65536}
DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "default.safetensors"
DEFAULT_MODEL_3D = Path(__file__).resolve().parent / "models" / "default3d.safetensors"
# model="2d" / model="3d" (--model 3d): the bundled models by name.
BUNDLED_MODELS = {"2d": DEFAULT_MODEL, "3d": DEFAULT_MODEL_3D}


@dataclass(frozen=True)
class ModelBundle:
    """A network and what using it needs: how its inputs are normalized, and the metadata
    of its file (the training command, metrics, ...).

    Parameters
    ----------
    module : ReferenceUNet
    normalization : Normalization
        What inference applies to the input (training recorded it); percentile by default.
    extra : dict
        The model file's free-form ``extra`` metadata.
    """

    module: ReferenceUNet
    normalization: Normalization = field(default_factory=Normalization)
    extra: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        from .model import ReferenceUNet

        if not isinstance(self.module, ReferenceUNet):
            raise TypeError(f"ModelBundle.module must be a ReferenceUNet; got {type(self.module).__name__}.")
        if not isinstance(self.normalization, Normalization):
            raise TypeError(
                f"ModelBundle.normalization must be a Normalization; got {type(self.normalization).__name__}."
            )

    @property
    def config(self) -> UNetConfig:
        """The network's :class:`~fastunet.model.UNetConfig`."""
        return self.module.config


def default_model_path() -> Path:
    """The model bundled with fastunet (used when no ``--model`` is given).

    Raises :class:`ModelFileError` when this installation has none.
    """
    if not DEFAULT_MODEL.is_file():
        raise ModelFileError(
            f"No default model is bundled with this installation (expected {str(DEFAULT_MODEL)!r}); "
            'pass a model file, e.g. model="unet.safetensors".'
        )
    return DEFAULT_MODEL


def bundled_model(model):
    """``model`` itself, or the bundled model a name stands for: ``"2d"`` (the default
    model) or ``"3d"`` (the default 3D model, for volumes), unless a file of that name exists."""
    if isinstance(model, str) and model.lower() in BUNDLED_MODELS and not Path(model).exists():
        path = BUNDLED_MODELS[model.lower()]
        if not path.is_file():
            raise ModelFileError(f"No bundled {model.lower()} model in this installation (expected {str(path)!r}); "
                                 'pass a model file, e.g. model="unet.safetensors".')
        return path
    return model


def _umask() -> int:
    """The process's umask, read without changing it where Linux tells (``/proc/self/status``);
    elsewhere set and reset at once (``os.umask`` has no getter)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_safetensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write a safetensors file atomically: a temporary file beside ``path``, then a rename,
    so an interrupted write never leaves a half-written file under the final name.

    safetensors creates its file ``-rw-------``; the file gets the mode an ordinary new file
    would have (``0o666 & ~umask``) before the rename, as model files are meant to be shared.
    """
    from safetensors.torch import save_file

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)
    return path


def save_model(
    path: str | os.PathLike,
    model: ReferenceUNet | ModelBundle,
    normalization: Normalization | None = None,
    extra: dict | None = None,
) -> Path:
    """Write ``model`` to ``path`` as a ``.safetensors`` model file.

    Parameters
    ----------
    path : path-like
        Destination; written to a temporary file first and renamed, so an interrupted save
        never leaves a half-written model under the final name. The file's mode is that of
        an ordinary new file, ``0o666 & ~umask`` (:func:`write_safetensors`).
    model : ReferenceUNet or ModelBundle
        The network (any device or dtype; stored as float32 on the CPU).
    normalization : Normalization, optional
        How inputs were normalized in training. Defaults to the bundle's, else percentile
        normalization.
    extra : dict, optional
        JSON-serialisable information stored beside the config; defaults to the bundle's.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise UserError(f"Cannot save the model to {str(path)!r}: the folder {str(path.parent)!r} does not exist.")
    if isinstance(model, ModelBundle):
        normalization = normalization if normalization is not None else model.normalization
        extra = extra if extra is not None else model.extra
        model = model.module
    if normalization is None:
        normalization = Normalization()
    import torch

    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    metadata = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(model.config.to_dict()),
        "normalization": json.dumps(normalization.to_dict()),
        "extra": json.dumps(extra or {}),
    }
    return write_safetensors(path, tensors, metadata)


def _check_header(path: Path) -> None:
    """Reject files that are not safetensors before any library reads them."""
    if not path.exists():
        raise ModelFileError(f"Model file {str(path)!r} does not exist; check the path.")
    if path.is_dir():
        raise ModelFileError(f"Model path {str(path)!r} is a folder; pass the .safetensors model file itself.")
    if not path.is_file():
        raise ModelFileError(f"Model path {str(path)!r} is not a regular file; pass a .safetensors model file.")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) < 9:
        raise ModelFileError(f"{str(path)!r} is not a fastunet model file: it is only {size} bytes.")
    (header_len,) = struct.unpack("<Q", head[:8])
    if head[8:9] != b"{" or header_len > _MAX_HEADER:
        raise ModelFileError(
            f"{str(path)!r} is not a safetensors file (fastunet model files are .safetensors; "
            "pickled PyTorch checkpoints are refused because loading them can run code)."
        )
    if 8 + header_len > size:
        raise ModelFileError(f"{str(path)!r} is truncated: its header claims more bytes than the file has.")


def read_model_metadata(path: str | os.PathLike) -> tuple[UNetConfig, Normalization, dict]:
    """The ``(config, normalization, extra)`` stored in a model file, without loading weights."""
    path = Path(path)
    _check_header(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFileError(f"{str(path)!r} is not a readable safetensors file: {exc}") from None
    if meta.get("format") != FORMAT_NAME:
        raise ModelFileError(
            f"{str(path)!r} is a safetensors file but not a fastunet model (no 'format: fastunet' "
            "metadata); save models with fastunet.save_model."
        )
    if meta.get("format_version") != FORMAT_VERSION:
        raise ModelFileError(
            f"{str(path)!r} has model format version {meta.get('format_version')!r}; this fastunet "
            f"reads version {FORMAT_VERSION}."
        )
    try:
        config = UNetConfig.from_dict(json.loads(meta["config"]))
        normalization = Normalization.from_dict(json.loads(meta.get("normalization", "{}")))
        extra = json.loads(meta.get("extra", "{}"))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelFileError(f"{str(path)!r} has broken fastunet metadata: {exc}") from None
    _check_limits(path, config)
    return config, normalization, extra


def _check_limits(path: Path, config: UNetConfig) -> None:
    """Refuse a config beyond :data:`LIMITS` (before any network is built)."""
    values = {"depth": config.depth, "base_channels": config.base_channels, "in_channels": config.in_channels,
              "num_classes": config.num_classes, "widest": config.base_channels * 2**config.depth}
    over = [f"{k} {v} (at most {LIMITS[k]})" for k, v in values.items() if v > LIMITS[k]]
    if over:
        raise ModelFileError(
            f"{str(path)!r} claims a network beyond fastunet's limits: {', '.join(over)}; the file is damaged or "
            "not made by fastunet."
        )


def _check_weight_count(path: Path, config: UNetConfig, f) -> None:
    """The number of weights in the header against the config's, before a network is built
    (so a small file that claims a huge network allocates nothing)."""
    need = parameter_count(config)
    have = sum(math.prod(f.get_slice(key).get_shape()) for key in f.keys())
    if have != need:
        raise ModelFileError(
            f"{str(path)!r}: its tensors' shapes do not match its config {config} (they hold {have:,} weights, the "
            f"config needs {need:,}); the file is damaged or its metadata do not describe it."
        )


def _check_tensors(path: Path, expected: dict, shapes: dict, config: UNetConfig) -> None:
    """The tensors' names and shapes (``shapes``) against the network's (``expected``), both name -> shape."""
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        raise ModelFileError(
            f"{str(path)!r} does not match its own config {config}: missing {missing[:4]}, "
            f"unexpected {unexpected[:4]}."
        )
    for key, shape in shapes.items():
        if shape != tuple(expected[key]):
            raise ModelFileError(
                f"{str(path)!r}: tensor {key!r} has shape {shape}, the config needs {tuple(expected[key])}."
            )


def _numpy_tensors(path: Path, f) -> dict[str, np.ndarray]:
    """The file's tensors as numpy arrays; bf16 (which numpy has no type for) read through
    PyTorch and widened to float32."""
    dtypes = {key: f.get_slice(key).get_dtype() for key in f.keys()}
    if "BF16" not in dtypes.values():
        return {key: f.get_tensor(key) for key in f.keys()}
    with safe_open(str(path), framework="pt", device="cpu") as pt:
        return {key: (pt.get_tensor(key).float().numpy() if dtype == "BF16" else f.get_tensor(key))
                for key, dtype in dtypes.items()}


def read_weights(path: str | os.PathLike) -> tuple[UNetConfig, Normalization, dict, dict[str, np.ndarray]]:
    """A model file's ``(config, normalization, extra, weights)``, the weights as numpy arrays
    by name, every check of :func:`read_model` done (header, limits, names and shapes against
    the config, NaN/Inf), without PyTorch.

    Raises :class:`ModelFileError` for a missing, truncated, foreign or inconsistent file;
    never unpickles anything.
    """
    path = Path(path)
    config, normalization, extra = read_model_metadata(path)
    try:
        with safe_open(str(path), framework="numpy") as f:
            _check_weight_count(path, config, f)  # before anything is allocated
            shapes = {key: tuple(f.get_slice(key).get_shape()) for key in f.keys()}
            _check_tensors(path, parameter_shapes(config), shapes, config)
            tensors = _numpy_tensors(path, f)
    except ModelFileError:
        raise
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as exc:
        raise ModelFileError(f"{str(path)!r} could not be read (truncated or corrupt?): {exc}") from None
    floats = [value.reshape(-1) for value in tensors.values() if value.dtype.kind == "f"]
    bad = []  # one check of all the weights at once (one call per tensor took 40-80 ms on a busy CPU)
    if floats and not np.isfinite(np.concatenate(floats)).all():
        bad = [key for key, value in tensors.items() if value.dtype.kind == "f" and not np.isfinite(value).all()]
    if bad:
        raise ModelFileError(
            f"{str(path)!r}: the weights {', '.join(bad[:3])}{' ...' if len(bad) > 3 else ''} hold NaN or Inf values "
            "(the training diverged, or the file is damaged); retrain, or use another model file."
        )
    return config, normalization, extra, {key: tensors[key] for key in parameter_shapes(config)}


def read_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> ModelBundle:
    """Read a model file into a :class:`ModelBundle`: the network in eval mode on ``device``,
    its normalization and its metadata.

    Raises :class:`ModelFileError` for a missing, truncated, foreign or inconsistent file
    (a config beyond :data:`LIMITS`, tensors that do not match it, NaN/Inf weights), and
    :class:`UserError` for a device this machine does not have; never unpickles anything.
    """
    device = check_visible(resolve_device(device))
    config, normalization, extra, weights = read_weights(path)
    return ModelBundle(network_from_weights(config, weights).to(device).eval(), normalization, extra)


def network_from_weights(config: UNetConfig, weights: dict[str, np.ndarray]) -> ReferenceUNet:
    """The :class:`~fastunet.model.ReferenceUNet` of ``config`` with ``weights`` (numpy arrays by
    name, as :func:`read_weights` gives them), on the CPU in eval mode."""
    import torch

    from .model import ReferenceUNet

    model = ReferenceUNet(config)
    model.load_state_dict({key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in weights.items()})
    return model.eval()


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> ReferenceUNet:
    """Read a model file's network, a :class:`ReferenceUNet` in eval mode on ``device``.

    Its normalization and metadata: :func:`read_model` (or :func:`read_model_metadata`).
    Raises :class:`ModelFileError` for a missing, truncated, foreign or inconsistent file;
    never unpickles anything.
    """
    return read_model(path, device).module
