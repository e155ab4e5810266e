"""Fine-tuning: a training run that starts from a model file's weights instead of random ones.

A biologist whose images differ from the default model's training data (another microscope,
stain or magnification) annotates a few of them and trains further from the default model
(or any fastunet model) rather than from scratch::

    fastunet train images/ labels/ -o mine.safetensors --init 2d --lr 3e-4 --iterations 1000

The network keeps the file's shape (base channels, depth, pools), its weights as the file
holds them (a calibrated model's shifted head bias included: the training moves it again) and
the file's input normalization (what its weights were trained on); the optimizer, the
schedule, the augmentation and the data are the run's own.

* :func:`fine_tune_config` builds a :class:`~fastunet.train.TrainConfig` whose network and
  normalization are the file's (what ``fastunet train --init`` does with its flags);
* :func:`initial_weights` checks a run's config against the file and reads the weights
  (every check of :func:`fastunet.modelfile.read_weights`; nothing unpickled), with the
  record that the checkpoint and the new model file keep (``extra["init"]``: the file's
  name, SHA-256 and training command).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..modelfile import bundled_model, read_model_metadata, read_weights
from .config import TrainConfig

__all__ = ["InitialWeights", "initial_weights", "fine_tune_config", "init_file"]


@dataclass(frozen=True)
class InitialWeights:
    """The weights a fine-tuning run starts from.

    Attributes
    ----------
    path : Path
        The model file.
    in_channels : int
        The image channels its network takes.
    weights : dict
        Parameter name -> numpy array (``ReferenceUNet.state_dict`` names).
    record : dict
        ``name``, ``sha256`` (of the file) and ``trained_with`` (its training command, if
        recorded): kept in the checkpoint and the new model file.
    """

    path: Path
    in_channels: int
    weights: dict
    record: dict

    def check_channels(self, in_channels: int) -> None:
        """Refuse training data whose images have another number of channels than the network takes."""
        if in_channels != self.in_channels:
            raise UserError(f"The init model {self.path.name!r} takes images of {self.in_channels} channel(s); the "
                            f"training images have {in_channels}: fine-tune a model made for such images, or train "
                            "from scratch (without init).")

    def state_dict(self) -> dict:
        """The weights as CPU tensors, for ``ReferenceUNet.load_state_dict``."""
        import torch

        return {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in self.weights.items()}


def init_file(init) -> Path:
    """The model file ``init`` names (``\"2d\"``: the bundled model's)."""
    return Path(bundled_model(os.fspath(init) if isinstance(init, os.PathLike) else init))


def fine_tune_config(init, **options) -> TrainConfig:
    """A :class:`TrainConfig` of ``options`` whose network (base channels, depth, spatial
    dimensions) and normalization are those of the model file ``init`` (``"2d"``: the bundled
    model); an option that sets one of them otherwise is refused (the weights would not fit)."""
    path = init_file(init)
    network, normalization, _ = read_model_metadata(path)
    own = {"base_channels": network.base_channels, "depth": network.depth, "spatial_dims": network.spatial_dims,
           "normalization": normalization}
    clash = [f"{name}={options[name]!r} (the file's: {own[name]!r})" for name in own
             if options.get(name) is not None and options[name] != own[name]]
    if clash:
        raise UserError(f"Fine-tuning keeps the init model's network and normalization; {', '.join(clash)}: leave "
                        "them out (or train from scratch without init).")
    try:
        return TrainConfig(**{**options, **own})
    except (TypeError, ValueError) as exc:
        raise UserError(f"Fine-tuning {path.name!r} (base {network.base_channels}, depth {network.depth}): {exc}") from None


def initial_weights(init, config: TrainConfig) -> InitialWeights:
    """The weights of the model file ``init`` (``"2d"``: the bundled model) for a run of
    ``config``, whose network and normalization must be the file's (:func:`fine_tune_config`
    makes such a config); read with every check of a model file, before any training work."""
    path = init_file(init)
    network, normalization, extra, weights = read_weights(path)
    if network.num_classes != 2:
        raise UserError(f"The init model {path.name!r} has {network.num_classes} classes; training fits two "
                        "(background and objects): fine-tune a two-class model.")
    wanted = dataclasses.replace(config.unet_config(network.in_channels), dropout=network.dropout)
    differ = [name for name in ("base_channels", "depth", "spatial_dims", "pools")
              if getattr(wanted, name) != getattr(network, name)]
    if config.normalization != normalization:
        differ.append("normalization")
    if differ:
        raise UserError(f"The training config differs from the init model {path.name!r} in {', '.join(differ)}; "
                        "fine-tuning keeps the file's network and normalization (fastunet.train.fine_tune_config "
                        "builds such a config; on the command line leave those flags out, and give a 3D model's voxel size).")
    with open(path, "rb") as f:
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    record = {"name": path.name, "sha256": digest, "trained_with": extra.get("trained_with")}
    return InitialWeights(path=path, in_channels=network.in_channels, weights=weights, record=record)
