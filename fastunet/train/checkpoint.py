"""Training checkpoints: resumable state in safetensors (no pickle), beside the model file.

A checkpoint holds the model weights, the optimizer state, the random-number generators'
states, the loss and validation history, the config and a description of the data (names,
shapes and a digest of the images' and labels' contents, :func:`data_digest`); a run resumes
only with the same settings and data (:func:`check_resume`). Before a run starts,
:func:`check_train_outputs` checks every file it will write, and refuses to start over an
interrupted run's checkpoint unless told to resume or overwrite.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import fields
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from ..modelfile import write_safetensors
from .config import TrainConfig

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_VERSION",
    "check_model_name",
    "checkpoint_path",
    "save_checkpoint",
    "load_checkpoint",
    "check_resume",
    "check_train_outputs",
    "data_digest",
]

CHECKPOINT_FORMAT = "fastunet-checkpoint"
CHECKPOINT_VERSION = "1"
# Fields that may change between a run and its resumption (how long and how it reports).
_RESUMABLE_CHANGES = ("iterations", "epochs", "checkpoint_every", "val_every", "device")


def check_model_name(output: str | Path) -> Path:
    """``output`` as a Path; a :class:`UserError` unless its name ends in ``.safetensors``."""
    output = Path(output)
    if not output.name.endswith(".safetensors"):
        fix = output.with_name(output.stem + ".safetensors")
        raise UserError(
            f"The model file {str(output)!r} would hold safetensors, not a pickled PyTorch file: give it a "
            f".safetensors name, e.g. {str(fix)!r}."
        )
    return output


def checkpoint_path(output: str | os.PathLike) -> Path:
    """Where :func:`fastunet.train.train` keeps the checkpoint of a run writing ``output``."""
    output = Path(output)
    stem = output.name[: -len(".safetensors")] if output.name.endswith(".safetensors") else output.name
    return output.with_name(stem + ".checkpoint.safetensors")


def save_checkpoint(
    path: str | os.PathLike,
    *,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    step: int,
    config: TrainConfig,
    history: dict,
    rng: dict[str, torch.Tensor],
    data: dict,
    best: dict[str, torch.Tensor] | None = None,
    best_step: int | None = None,
) -> Path:
    """Write a resumable checkpoint atomically (temporary file, then rename), with the mode
    of an ordinary new file (``0o666 & ~umask``, :func:`fastunet.modelfile.write_safetensors`).

    Tensors: the model weights (``model/<name>``), the optimizer state (momentum buffers or
    Adam moments, ``optim/<param index>/<key>``), the RNG states (``rng/<name>``, uint8) and the
    loss history (``history/loss``), and the best validation's weights (``best/<name>``) when
    given. JSON metadata: the step, the config, the optimizer's hyper-parameters, the
    validation history, a description of the data and the best validation's step.
    """
    path = Path(path)
    tensors = {f"model/{k}": v.detach().to("cpu", torch.float32).contiguous() for k, v in model.state_dict().items()}
    opt = optimizer.state_dict()
    scalars = {}
    for index, state in opt["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{index}/{key}"] = value.detach().to("cpu").contiguous()
            else:
                scalars[f"{index}/{key}"] = value
    for name, state in rng.items():
        tensors[f"rng/{name}"] = state.to("cpu").contiguous()
    tensors["history/loss"] = torch.tensor(history["loss"], dtype=torch.float32)
    for k, v in (best or {}).items():
        tensors[f"best/{k}"] = v.detach().to("cpu", torch.float32).contiguous()
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "format_version": CHECKPOINT_VERSION,
        "step": str(int(step)),
        "config": json.dumps(config.to_dict()),
        "param_groups": json.dumps(opt["param_groups"]),
        "optim_scalars": json.dumps(scalars),
        "val_history": json.dumps(history["val"]),
        "data": json.dumps(data),
        "best_step": json.dumps(best_step),
    }
    return write_safetensors(path, tensors, metadata)


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Read a checkpoint written by :func:`save_checkpoint` (never unpickles anything).

    Returns a dict with ``step``, ``config`` (TrainConfig), ``model`` (state dict), ``optimizer``
    (state dict for ``Optimizer.load_state_dict``), ``rng`` (name -> uint8 tensor),
    ``history`` ({"loss": [...], "val": [...]}), ``data``, and ``best`` (the best validation's
    state dict, or None) with ``best_step``.
    """
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise UserError(f"No checkpoint at {str(path)!r}; start without resume=True.")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise UserError(f"{str(path)!r} is not a readable checkpoint: {exc}") from None
    if meta.get("format") != CHECKPOINT_FORMAT or meta.get("format_version") != CHECKPOINT_VERSION:
        raise UserError(f"{str(path)!r} is not a fastunet training checkpoint (version {CHECKPOINT_VERSION}).")
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim/"):
            _, index, name = key.split("/", 2)
            state.setdefault(int(index), {})[name] = value
    for key, value in json.loads(meta["optim_scalars"]).items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    return {
        "step": int(meta["step"]),
        "config": TrainConfig.from_dict(json.loads(meta["config"])),
        "model": {k[len("model/") :]: v for k, v in tensors.items() if k.startswith("model/")},
        "optimizer": {"state": state, "param_groups": json.loads(meta["param_groups"])},
        "rng": {k[len("rng/") :]: v for k, v in tensors.items() if k.startswith("rng/")},
        "history": {"loss": tensors["history/loss"].tolist(), "val": json.loads(meta["val_history"])},
        "data": json.loads(meta["data"]),
        "best": {k[len("best/") :]: v for k, v in tensors.items() if k.startswith("best/")} or None,
        "best_step": json.loads(meta.get("best_step", "null")),
    }


def check_resume(saved: TrainConfig, config: TrainConfig, saved_data: dict, data: dict, path: Path) -> None:
    """Refuse to resume from a checkpoint made with other settings or other data.

    Parameters
    ----------
    saved, config : TrainConfig
        The checkpoint's settings and this run's; only the length, the reporting periods and
        the device may differ.
    saved_data, data : dict
        The checkpoint's description of its training data and this run's.
    path : Path
        The checkpoint, named in the error.

    Raises
    ------
    UserError
        When the settings or the data differ.
    """
    differ = [
        f.name
        for f in fields(TrainConfig)
        if f.name not in _RESUMABLE_CHANGES and getattr(saved, f.name) != getattr(config, f.name)
    ]
    if differ:
        raise UserError(
            f"The checkpoint {str(path)!r} was made with other settings ({', '.join(differ)}); resume with the "
            "same settings, or start afresh without resume=True."
        )
    if saved_data.get("init") != data.get("init"):  # fine-tuning: the weights it started from
        raise UserError(
            f"The checkpoint {str(path)!r} started from {_start(saved_data)}, this run from {_start(data)}; resume "
            "with the same init, or start afresh without resume=True."
        )
    common = [k for k in data if k in saved_data]  # a checkpoint of an older fastunet has no digest
    if any(saved_data[k] != data[k] for k in common):
        what = "other training data" if saved_data.get("train") != data.get("train") or saved_data.get(
            "val") != data.get("val") else "other training data (same names and shapes, other contents)"
        raise UserError(
            f"The checkpoint {str(path)!r} was made with {what}; resume with the same images and labels, or "
            "start afresh without resume=True."
        )


def _start(data: dict) -> str:
    """What a run's weights started from, in words (its data description's ``init``)."""
    init = data.get("init")
    return "random weights" if init is None else f"the model file {init['name']!r} (sha256 {init['sha256'][:12]}...)"


def data_digest(*groups) -> str:
    """A digest of the contents of training data: ``groups`` of ``(name, image, labels)``
    (images and labels as numpy arrays), in order."""
    digest = hashlib.sha256()
    for group in groups:
        for name, image, labels in group:
            digest.update(str(name).encode())
            for a in (image, labels):
                a = np.ascontiguousarray(a)
                digest.update(f"{a.dtype.str}{a.shape}".encode())
                digest.update(a.tobytes())
    return digest.hexdigest()[:32]


def check_train_outputs(output: Path, *, curve: Path, weight_figure, inputs, resume: bool,
                        overwrite: bool) -> None:
    """Check every file a training run writes, before it starts (:func:`fastunet.paths.check_output_file`).

    The model file, its checkpoint, the curve and the weight figure: the right extension,
    not a folder, not an input, not each other, a writable folder. Without ``resume`` or
    ``overwrite``, an existing model file or checkpoint (an interrupted run) is refused; with
    ``resume`` the run's own files are replaced.
    """
    from ..paths import check_output_file

    if resume and overwrite:
        raise UserError("resume=True and overwrite=True contradict each other; pass one of them.")
    ckpt = checkpoint_path(output)
    if not (resume or overwrite):
        if output.exists():
            raise UserError(f"{str(output)!r} already exists; pass overwrite=True to replace it (or resume=True "
                            "to continue).")
        if ckpt.exists():  # a run that was killed before it wrote the model
            raise UserError(
                f"{str(ckpt)!r} holds the checkpoint of an earlier run; pass resume=True to continue it, or "
                "overwrite=True to start over (and replace it)."
            )
    mine = resume or overwrite
    check_output_file(output, what="model file", suffixes=(".safetensors",), inputs=inputs, own=mine)
    check_output_file(ckpt, what="checkpoint", suffixes=(".safetensors",), inputs=inputs, own=mine)
    check_output_file(curve, what="curve=", suffixes=(".png",), inputs=inputs, own=mine,
                      others={"model file": output, "checkpoint": ckpt})
    if weight_figure is not None:
        check_output_file(weight_figure, what="weight_figure=", suffixes=(".png",), inputs=inputs, own=mine,
                          others={"model file": output, "checkpoint": ckpt, "curve": curve})
