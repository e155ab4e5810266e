"""The training loop: :func:`train` and what it returns (:class:`TrainResult`).

One run: read and split the data (:mod:`fastunet.train.datasets`), compute each training
slice's target and weight map once (:mod:`fastunet.train.weightmap`), build the network and
the optimizer (or restore them from the checkpoint, :mod:`fastunet.train.checkpoint`), then
step: augmented tiles (:mod:`fastunet.train.augment`), the weighted loss
(:mod:`fastunet.train.loss`), validation by the inference engine every ``val_every`` steps,
a checkpoint every ``checkpoint_every``; finally the model file and the training curve.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..devices import check_visible, cpu_bf16_units, resolve_device
from ..errors import UserError
from ..figures import weight_map_figure, write_curve
from ..metrics import score
from ..model import ReferenceUNet
from ..segmentation.memory import check_train_memory
from .augment import augment_batch
from .augment3d import augment_batch_3d
from .checkpoint import (
    check_model_name,
    check_resume,
    check_train_outputs,
    checkpoint_path,
    data_digest,
    load_checkpoint,
    save_checkpoint,
)
from .config import TrainConfig
from .datasets import load_pairs, validation_split
from .finetune import init_file, initial_weights
from .loss import weighted_cross_entropy
from .weightmap import prepare

__all__ = ["TrainResult", "train"]


@dataclass
class TrainResult:
    """What :func:`train` did: the trained model (eval mode) and where it wrote things.

    ``model`` is the network after the last step; the model file holds the weights of the
    best validation (``best_step``, whose scores are ``val``), or the last ones when nothing
    was validated (``best_step`` None). ``seconds`` is the wall time of this call's training
    loop (validation and checkpoints included); ``tiles_per_second`` counts the training
    steps only (sampling, forward, backward, update).
    """

    model: ReferenceUNet
    output: Path
    checkpoint: Path
    curve: Path | None
    steps: int
    history: dict
    val: dict | None
    seconds: float
    tiles_per_second: float
    notes: list[str]
    best_step: int | None = None


def _make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(
            model.parameters(), lr=config.learning_rate, momentum=config.momentum, weight_decay=config.weight_decay
        )
    return torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)


def _iterations(config: TrainConfig, train_slices) -> int:
    if config.epochs is None:
        return config.iterations
    pixels = sum(math.prod(image.shape[1:]) for _, image, _ in train_slices)
    per_epoch = math.ceil(pixels / math.prod(config.out_shape) / config.batch_size)
    return max(1, math.ceil(config.epochs * per_epoch))


@contextlib.contextmanager
def _flush_denormals(device: torch.device):
    """Flush denormal floats to zero while training on the CPU.

    Early in training denormals made CPU steps 10-20x slower (measured: 0.5-2 s instead of
    ~85 ms per step for base 8, depth 3, 316 tiles, Adam). PyTorch has no getter for this
    setting, so it returns to PyTorch's default (off) afterwards.
    """
    active = device.type == "cpu" and torch.set_flush_denormal(True)
    try:
        yield
    finally:
        if active:
            torch.set_flush_denormal(False)


def _samples(train_slices, config: TrainConfig, device: torch.device, weight_figure) -> list[tuple]:
    """``(image, target, weight)`` tensors on ``device`` per training slice: the two-class target
    and the paper's weight map, computed once; optionally the figure of the first one."""
    samples = []
    for index, (_, image, instances) in enumerate(train_slices):
        target, weight = prepare(instances, w0=config.w0, sigma=config.sigma, balance=config.balance,
                                 spacing=config.spacing)
        if index == 0 and weight_figure is not None:
            mid = (len(instances) // 2,) if instances.ndim == 3 else ()  # a volume: its middle slice
            weight_map_figure(weight_figure, image[(0, *mid)], target[mid], weight[mid], instances=instances[mid])
        samples.append(tuple(torch.from_numpy(a).to(device) for a in (image, target, weight)))
    return samples


def _validate(model: ReferenceUNet, val, config: TrainConfig, device: torch.device) -> dict:
    """Foreground IoU and instance F1 (IoU 0.5) on the validation images.

    Each image is segmented by the inference engine (:func:`fastunet.segmentation.segment`:
    normalization over the same scope, overlap tiles with mirrored borders) with a copy of
    the network as it is now.

    Validation leaves the training's random streams alone: the snapshot's construction (which
    draws initial weights) and inference run inside ``torch.random.fork_rng`` over the CPU
    and the training device, so the dropout masks of the following steps do not depend on
    ``val_every``. (The tiles come from the trainer's own generator, and neither training nor
    validation uses numpy's global RNG.)
    """
    from ..modelfile import ModelBundle
    from ..segmentation import segment

    preds, truths = [], []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        snapshot = ReferenceUNet(model.config)
        snapshot.load_state_dict(model.state_dict())
        snapshot = ModelBundle(snapshot, config.normalization)
        volumes = config.spatial_dims == 3  # scored as volumes: objects span slices
        tile = config.tile_shape if volumes else config.tile
        for _, image, labels in val:
            axes = "ZYX" if image.ndim == 3 else "YX"
            # On the CPU in fp32 with PyTorch whatever the CPU's bf16 units or extras: the best
            # step a validation picks must not depend on the machine that trains.
            cpu = device.type == "cpu"
            classes = segment(image, snapshot, None, axes=axes, tile=tile, device=str(device), progress=False,
                              output_kind="labels", dtype="fp32" if cpu else None, backend="torch" if cpu else "auto")
            classes = np.asarray(classes)
            preds += list(classes == 1) if image.ndim == 3 and not volumes else [classes == 1]
            truths += list(labels) if labels.ndim == 3 and not volumes else [labels]
    scores = score(preds, truths)
    return {"foreground_iou": float(scores.foreground_iou), "instance_f1": float(scores.instance_f1)}


def _memory_format(config: TrainConfig, device: torch.device) -> torch.memory_format:
    """Channels-last for a 2D network on the CPU (oneDNN's fast layout: a training step of the
    default recipe's network ran 1.09x as fast as contiguous in fp32, and 1.81x under bf16
    autocast against 1.64x contiguous; ``benchmarks/train_cpu.py``,
    ``benchmarks/results/2026-12-07T115111Z-train-cpu.json``), else contiguous."""
    if device.type == "cpu" and config.spatial_dims == 2:
        return torch.channels_last
    return torch.contiguous_format


class _Run:
    """The state of one run: network, optimizer, tile generator, step and history.

    ``consistent`` is False between the backward pass and the end of a step's bookkeeping,
    while the model, the optimizer, the RNGs and the history may describe different steps
    (no checkpoint then).
    """

    def __init__(self, config: TrainConfig, in_channels: int, device: torch.device, ckpt: Path, data: dict,
                 weights: dict | None = None):
        # Call inside torch.random.fork_rng: the initial weights come from torch's global RNG.
        torch.manual_seed(config.seed)
        self.config, self.device, self.ckpt, self.data = config, device, ckpt, data
        self.model = ReferenceUNet(config.unet_config(in_channels))
        if weights is not None:  # fine-tuning: the weights of a model file instead of random ones
            self.model.load_state_dict(weights)
        self.model.to(device, memory_format=_memory_format(config, device))
        self.optimizer = _make_optimizer(self.model, config)
        self.generator = torch.Generator().manual_seed(config.seed)  # tiles and augmentation (CPU)
        self.history: dict = {"loss": [], "val": []}
        self.step = 0
        self.consistent = True
        self.best: dict | None = None  # the best validation's weights (CPU copies) and its step
        self.best_step: int | None = None

    def resume(self) -> None:
        """Continue from the checkpoint (same settings and data, :func:`check_resume`)."""
        saved = load_checkpoint(self.ckpt)
        check_resume(saved["config"], self.config, saved["data"], self.data, self.ckpt)
        self.model.load_state_dict(saved["model"])
        self.optimizer.load_state_dict(saved["optimizer"])
        self.generator.set_state(saved["rng"]["augment"])
        torch.set_rng_state(saved["rng"]["torch_cpu"])
        if self.device.type == "cuda" and "torch_cuda" in saved["rng"]:
            torch.cuda.set_rng_state(saved["rng"]["torch_cuda"], self.device)
        self.step, self.history = saved["step"], saved["history"]
        self.best, self.best_step = saved.get("best"), saved.get("best_step")

    def rng_state(self) -> dict:
        state = {"augment": self.generator.get_state(), "torch_cpu": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["torch_cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def checkpoint(self) -> None:
        save_checkpoint(
            self.ckpt, model=self.model, optimizer=self.optimizer, step=self.step, config=self.config,
            history=self.history, rng=self.rng_state(), data=self.data, best=self.best, best_step=self.best_step,
        )  # fmt: skip

    def validate(self, val_images) -> dict:
        """Score the network now, record it in the history at this step and return it; keep
        a copy of the weights when this is the best validation so far."""
        scores = {"step": self.step, **_validate(self.model, val_images, self.config, self.device)}
        self.history["val"].append(scores)
        best = next((v for v in self.history["val"] if v["step"] == self.best_step), None)
        if best is None or _merit(scores) > _merit(best):
            self.best = {k: v.detach().to("cpu", copy=True) for k, v in self.model.state_dict().items()}
            self.best_step = self.step
        return scores


def _merit(scores: dict) -> float:
    """What "best validation" maximises: foreground IoU + instance F1."""
    return scores["foreground_iou"] + scores["instance_f1"]


def _step(run: _Run, samples: list[tuple], amp: bool) -> float:
    """One optimizer step on a fresh batch of augmented tiles; returns its loss."""
    config = run.config
    if config.spatial_dims == 3:
        x, target, weight = augment_batch_3d(
            samples, config.batch_size, in_size=config.tile_shape, out_size=config.out_shape, config=config.augment,
            spacing=config.spacing or (1.0, 1.0, 1.0), generator=run.generator,
        )  # fmt: skip
    else:
        x, target, weight = augment_batch(
            samples, config.batch_size, in_size=config.tile, out_size=config.out_tile,
            config=config.augment, generator=run.generator,
        )  # fmt: skip
    with torch.autocast(run.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = run.model(x.to(memory_format=_memory_format(config, run.device)))
    # On CUDA this is the fused Triton loss (one pass over the logits for loss and
    # gradient; the uint8 target cannot hold ignore_index -100, so no count pass);
    # the backward through the convolutions is PyTorch's autograd for now.
    loss = weighted_cross_entropy(logits, target, weight)
    run.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    run.consistent = False
    for group in run.optimizer.param_groups:  # the schedule depends on the step only
        group["lr"] = config.lr_at(run.step)
    run.optimizer.step()
    value = float(loss.detach())
    if not math.isfinite(value):
        raise UserError(
            f"The loss became {value} at step {run.step + 1}; lower the learning rate (now {config.learning_rate:g})."
        )
    run.step += 1
    run.history["loss"].append(value)
    run.consistent = True
    return value


def _steps(run: _Run, samples, val_images, total: int, *, amp: bool, progress: bool,
           note: Callable[[str], None]) -> tuple[int, float, float]:
    """Step up to ``total`` with validation and checkpoints on their periods, a progress bar,
    and a checkpoint when interrupted; returns ``(first step, busy seconds, wall seconds)``."""
    from tqdm.auto import tqdm

    config = run.config
    run.model.train()
    bar = tqdm(total=total, initial=min(run.step, total), disable=not progress, unit="it", dynamic_ncols=True)
    start, start_step, ema, busy = time.perf_counter(), run.step, None, 0.0
    val_now = run.history["val"][-1] if run.history["val"] else None
    try:
        while run.step < total:
            tick = time.perf_counter()
            value = _step(run, samples, amp)
            busy += time.perf_counter() - tick
            ema = value if ema is None else 0.95 * ema + 0.05 * value
            if val_images and (run.step % config.val_every == 0 or run.step == total):
                val_now = run.validate(val_images)
            if run.step % config.checkpoint_every == 0 or run.step == total:
                run.checkpoint()
            postfix = {"loss": f"{ema:.4f}", "tiles/s": f"{(run.step - start_step) * config.batch_size / busy:.2f}"}
            if val_now:
                postfix["val_iou"] = f"{val_now['foreground_iou']:.3f}"
            bar.set_postfix(postfix, refresh=False)
            bar.update(1)
    except KeyboardInterrupt:
        if run.consistent and run.step > start_step:
            run.checkpoint()  # so that resume=True continues from here
            note(f"interrupted: checkpoint at step {run.step} written to {run.ckpt}")
        raise
    finally:
        bar.close()
    return start_step, busy, time.perf_counter() - start


def _load_data(images, labels, config: TrainConfig, axes: str | None, note: Callable[[str], None]):
    """Training slices, validation images and the data's description (kept in checkpoints)."""
    pairs = load_pairs(images, labels, axes=axes, volumes=config.spatial_dims == 3)
    for p in pairs:
        if p.semantic:
            note(f"labels of {p.name} hold only 0 and 1: their connected components are the instances")
    train_slices, val_images, split = validation_split(pairs, config)
    items = "volume(s)" if config.spatial_dims == 3 else "slice(s)"
    note(f"{len(train_slices)} training {items}, {len(val_images)} validation image(s): {split}")
    data = {
        "train": [[n, list(im.shape)] for n, im, _ in train_slices],
        "val": [[n, list(im.shape)] for n, im, _ in val_images],
        "digest": data_digest(train_slices, val_images),
    }
    return train_slices, val_images, data


def _save(run: _Run, output: Path, curve: Path, command: str | None,
          object_size: float | None) -> tuple[dict | None, Path]:
    """Write the model file (the best validation's weights, or the last; with the run's config,
    data, scores and training object size) and the curve PNG."""
    import copy

    from ..modelfile import save_model

    history = run.history
    model = run.model
    best = next((v for v in history["val"] if v["step"] == run.best_step), None) if run.best is not None else None
    if best is not None:
        model = copy.deepcopy(run.model)  # no new random weights drawn
        model.load_state_dict(run.best)
    val = {k: v for k, v in best.items() if k != "step"} if best is not None else None
    extra = {
        "trained_with": command or "fastunet.train.train",
        "training_config": run.config.to_dict(),
        "training_steps": run.step,
        "training_data": {"train": [n for n, _ in run.data["train"]], "val": [n for n, _ in run.data["val"]]},
    }
    if "init" in run.data:
        extra["init"] = run.data["init"]
    if val:
        extra["val_metrics"] = val
        extra["best_step"] = run.best_step
    if object_size is not None:
        extra["object_size"] = round(object_size, 2)
    save_model(output, model, normalization=run.config.normalization, extra=extra)
    return val, write_curve(curve, history, title=f"{output.name}: {run.step} steps")


def _training_object_size(train_slices) -> float | None:
    """The training data's typical object diameter: the median over the training slices of
    each slice's median equivalent diameter (:func:`fastunet.objectsize.median_diameter`)."""
    from ..objectsize import median_diameter

    if any(labels.ndim != 2 for _, _, labels in train_slices):
        return None  # volumes: object_size= rescales 2D images only
    sizes = [median_diameter(labels) for _, _, labels in train_slices]
    sizes = [s for s in sizes if np.isfinite(s)]
    return float(np.median(sizes)) if sizes else None


def train(
    images,
    labels,
    output: str | os.PathLike,
    *,
    config: TrainConfig = TrainConfig(),
    resume: bool = False,
    progress: bool = True,
    curve: str | os.PathLike | None = None,
    weight_figure: str | os.PathLike | None = None,
    axes: str | None = None,
    command: str | None = None,
    overwrite: bool = False,
    init: str | os.PathLike | None = None,
) -> TrainResult:
    """Train a U-Net on images with instance (or semantic) labels and save it.

    Parameters
    ----------
    images, labels
        Anything :func:`~fastunet.train.datasets.load_pairs` takes (TIFF files or folders,
        zarr, numpy arrays).
    output : path-like
        The model file to write; its name must end in ``.safetensors`` (a ``UserError``
        otherwise, raised before any work). The checkpoint goes beside it
        (:func:`~fastunet.train.checkpoint.checkpoint_path`).
    config : TrainConfig
        The run's settings.
    resume : bool
        Continue from the checkpoint beside ``output`` (same settings and data; only the
        length, the reporting periods and the device may change).
    progress : bool
        Show a tqdm progress bar (loss, validation IoU, tiles/s) and notes on stderr.
    curve : path-like, optional
        The training-curve PNG; default ``<output stem>.curve.png`` beside ``output``.
    weight_figure : path-like, optional
        Write image, target and weight map of the first training slice as a PNG (the
        paper's figure 3).
    axes : str, optional
        Axes of the image and label files, see :func:`~fastunet.train.datasets.load_pairs`.
    command : str, optional
        The command line that started the run, stored in the model file.
    overwrite : bool
        Start afresh over an existing model file or checkpoint (an earlier run's); without
        it (or ``resume``) they are refused, before any work.
    init : path-like, optional
        Fine-tuning: start from the weights of this model file (``"2d"``: the bundled
        default model) instead of random ones; ``config``'s network and normalization must
        be the file's (:func:`~fastunet.train.finetune.fine_tune_config` makes such a
        config); the optimizer starts afresh. The file's name, SHA-256 and training command
        are recorded in the checkpoint (a resume with another ``init`` is refused) and in
        the new model file (``extra["init"]``).

    Returns
    -------
    TrainResult
    """
    from tqdm.auto import tqdm

    output = check_model_name(output)
    ckpt = checkpoint_path(output)
    curve = Path(output.with_name(output.name[: -len(".safetensors")] + ".curve.png") if curve is None else curve)
    init_path = None if init is None else init_file(init)
    check_train_outputs(output, curve=curve, weight_figure=weight_figure, inputs=(images, labels, init_path),
                        resume=resume, overwrite=overwrite)
    start = None if init_path is None else initial_weights(init_path, config)  # every check, before any work
    device = check_visible(resolve_device(config.device))
    tile = config.tile if config.spatial_dims == 2 else config.tile_shape
    check_train_memory(config.unet_config(), tile, config.batch_size, device=device,
                       optimizer=config.optimizer)  # before anything is read or allocated
    amp = config.amp == "bf16"
    if amp and device.type == "cpu" and not cpu_bf16_units():
        raise UserError("amp='bf16' on the CPU needs bf16 matrix units (AMX or AVX512-BF16), which this CPU lacks "
                        "(bf16 would run slower than fp32 here); train with amp='none'.")
    notes: list[str] = []

    def note(message: str) -> None:
        notes.append(message)
        if progress:
            tqdm.write(f"note: {message}")

    train_slices, val_images, data = _load_data(images, labels, config, axes, note)
    in_channels = train_slices[0][1].shape[0]
    if start is not None:
        start.check_channels(in_channels)
        data["init"] = start.record
    samples = _samples(train_slices, config, device, weight_figure)
    total = _iterations(config, train_slices)
    # fork_rng: dropout draws from torch's global RNG; the caller's state stays untouched.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), _flush_denormals(device):
        run = _Run(config, in_channels, device, ckpt, data, None if start is None or resume else start.state_dict())
        if resume:
            run.resume()
            note(f"resumed from {ckpt} at step {run.step}")
        start_step, busy, seconds = _steps(run, samples, val_images, total, amp=amp, progress=progress, note=note)
        if run.step == start_step and val_images and not run.history["val"]:
            run.validate(val_images)
    run.model.eval()
    val, curve_path = _save(run, output, curve, command, _training_object_size(train_slices))
    return TrainResult(
        model=run.model,
        output=output,
        checkpoint=ckpt,
        curve=curve_path,
        steps=run.step,
        history=run.history,
        val=val,
        seconds=seconds,
        tiles_per_second=(run.step - start_step) * config.batch_size / busy if busy > 0 else 0.0,
        notes=notes,
        best_step=run.best_step if val is not None else None,
    )
