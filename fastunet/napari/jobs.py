"""What the napari widgets run, without Qt: a layer's axes, and a segmentation that reports
its progress (a generator, so napari's worker threads can pass each step to the GUI).

Progress is counted in dask tasks: :func:`fastunet.segment` returns lazy dask arrays, computed
here with dask's threaded scheduler and callbacks passed to that one computation (the
``(start, start_state, pretask, posttask, finish)`` tuple of ``dask.local.get_async``), not
registered globally, so that other dask work in napari is not counted.
"""

from __future__ import annotations

import concurrent.futures
import importlib.util
import sys
import threading
from pathlib import Path

import numpy as np

from ..errors import UserError

__all__ = ["layer_axes", "layer_array", "segment_steps", "labels_placement", "train_model", "triton_clash"]

_LETTERS = "TCZYX"
BLOCK = 512  # Y and X of the blocks computed one by one (what the progress bar counts)


def layer_array(layer):
    """The array to segment of an Image layer: level 0 of a multiscale one."""
    return layer.data[0] if getattr(layer, "multiscale", False) else layer.data


def layer_axes(layer) -> str:
    """fastunet's axes for an Image layer: its ``axis_labels`` when they are letters from
    ``TCZYX`` (``("z", "y", "x")``), else ``YX`` for 2D and ``ZYX`` for 3D.

    Raises :class:`~fastunet.errors.UserError` for RGB images and for other dimensions
    without such labels.
    """
    name, ndim = getattr(layer, "name", "image"), layer_array(layer).ndim
    if getattr(layer, "rgb", False):
        raise UserError(f"Layer {name!r} is an RGB image; fastunet segments one channel: split it "
                        "(Layers > Split RGB) and pick the nuclear channel.")
    labels = [str(a).upper() for a in getattr(layer, "axis_labels", ()) or ()]
    if len(labels) == ndim and all(a in _LETTERS for a in labels) and len(set(labels)) == ndim:
        return "".join(labels)
    if ndim in (2, 3):
        return "YX" if ndim == 2 else "ZYX"
    raise UserError(f"Layer {name!r} has {ndim} dimensions; fastunet takes YX and ZYX images (or name the "
                    "axes: layer.axis_labels = ('t', 'z', 'y', 'x')).")


def labels_placement(layer, axes: str) -> dict:
    """``scale``, ``translate`` (and ``units``) of the labels of ``layer``: the layer's, less
    the channel axis the segmentation drops."""
    keep = [i for i, a in enumerate(axes) if a != "C"]
    meta = {"scale": tuple(float(layer.scale[i]) for i in keep),
            "translate": tuple(float(layer.translate[i]) for i in keep)}
    units = getattr(layer, "units", None)
    if units is not None:
        meta["units"] = tuple(str(units[i]) for i in keep)
    return meta


def triton_clash(maps: str | None = None) -> str | None:
    """Why triton cannot be loaded into this process now, or None when it can.

    triton carries its own LLVM; loaded after Mesa's software OpenGL (llvmpipe: virtual
    machines, remote desktops, Xvfb), which napari's canvas has already brought in with
    ``libLLVM``, it crashes the process (a segmentation fault in its import). Training always
    loads it when it is installed (``torch.optim`` imports ``torch._dynamo``, which imports
    triton), and so does segmenting on CUDA with the Triton kernels. ``maps`` is the text of
    ``/proc/self/maps`` (read when None; no clash is assumed where it cannot be read).
    """
    if "triton" in sys.modules or importlib.util.find_spec("triton") is None:
        return None
    if maps is None:
        try:
            maps = Path("/proc/self/maps").read_text()
        except OSError:
            return None
    if "libLLVM" not in maps:
        return None
    return ("triton (fastunet[gpu]) cannot be loaded after napari's software OpenGL (Mesa's LLVM is in this "
            "process; loading both crashes it): start napari with triton loaded first, python -c \"import triton, "
            "napari; napari.run()\", or use the fastunet command line.")


class _TaskCounter:
    """dask callbacks counting the tasks of one computation (thread-safe reads)."""

    def __init__(self) -> None:
        self.total, self.done = 0, 0
        self._lock = threading.Lock()
        self.callbacks = (None, self._start, None, self._posttask, None)

    def _start(self, dsk, state) -> None:
        with self._lock:
            self.total = len(state["ready"]) + len(state["waiting"]) + len(state["running"])

    def _posttask(self, key, result, dsk, state, worker_id) -> None:
        with self._lock:
            self.done += 1

    @property
    def fraction(self) -> float:
        with self._lock:
            return self.done / self.total if self.total else 0.0


def segment_steps(data, *, model=None, axes: str | None = None, object_size=None, poll: float = 0.2):
    """Segment ``data`` (numpy, dask or zarr array) with :func:`fastunet.segment`: a generator
    that yields the fraction of the work done (0 to 1) every ``poll`` seconds and returns the
    object ids as a numpy array (``StopIteration.value``, napari's worker ``returned``).

    ``model`` is a model file (``.safetensors`` or a bioimage.io ``.zip``) or None for the
    bundled model; ``object_size`` the objects' diameter in pixels (None: as trained).
    """
    from ..segmentation import segment

    spatial = [n for a, n in zip(axes or "ZYX"[-np.ndim(data):], np.shape(data)) if a in "ZYX"]
    block = tuple(min(n, BLOCK) if i >= len(spatial) - 2 else 1 for i, n in enumerate(spatial))  # YX planes
    lazy = segment(data, model, None, axes=axes, progress=False, object_size=object_size, block=block, lazy=True,
                   chunks=block)
    yield 0.0
    counter = _TaskCounter()
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="fastunet-napari") as pool:
        future = pool.submit(lazy.compute, scheduler="threads", callbacks=[counter.callbacks])
        while True:
            try:
                labels = future.result(timeout=poll)
                break
            except concurrent.futures.TimeoutError:
                yield counter.fraction
    yield 1.0
    return np.asarray(labels)


FINE_TUNE_LR = 3e-4  # fine-tuning's learning rate (measured: README, "Fine-tuning the default model")


def train_model(image, labels, output, *, axes: str | None = None, iterations: int = 2000, device=None,
                fine_tune: bool = False):
    """Train on one image and its labels with the bundled model's recipe
    (:func:`fastunet.default_model.recipe_config`: base 16, depth 3) for ``iterations`` steps
    (the learning rate's cosine over those steps) and save the model at ``output``; returns its
    path. ``fine_tune``: start from the bundled model's weights (``fastunet train --init 2d``)
    at a learning rate of :data:`FINE_TUNE_LR`. No progress bar (napari shows a busy one): the
    loss curve is written beside the model."""
    import dataclasses

    from ..default_model import recipe_config
    from ..train import train

    # fp32, as fastunet train's default: the recipe's bf16 autocast needs a CPU with bf16 units;
    # the cosine schedule over this run's steps, as the recipe's is over its own
    changes = {"iterations": int(iterations), "lr_period": int(iterations), "device": device or "auto", "amp": "none"}
    if fine_tune:
        changes["lr"] = FINE_TUNE_LR
    config = dataclasses.replace(recipe_config(), **changes)
    result = train(np.asarray(image), np.asarray(labels), output, config=config, progress=False, axes=axes,
                   init="2d" if fine_tune else None)
    return result.output
