"""The overlap-tile engine: networks on devices, block tasks, and their scheduling.

Modules, from the network outwards:

* :mod:`~fastunet.engine.predictor` the interface of a network on a batch of tiles and its
  PyTorch implementation; :mod:`~fastunet.engine.fused` the fused Triton network;
  :mod:`~fastunet.engine.backends` picks one (``backend=``);
* :mod:`~fastunet.engine.handle` the picklable model handle; :mod:`~fastunet.engine.runtime`
  the network loaded once per process; :mod:`~fastunet.engine.runner` batches tiles of many
  blocks onto a device;
* :mod:`~fastunet.engine.tiling` the global tile grid, blocks and mirrored reads;
* :mod:`~fastunet.engine.blocks` one block task: read, normalize, predict, assemble, write;
* :mod:`~fastunet.engine.scheduling` runs the block tasks on threads or a dask.distributed
  cluster, or builds lazy dask arrays of them.

Importing this package imports no dask, zarr, Triton or PyTorch.
"""

from __future__ import annotations

from .backends import make_predictor, resolve_backend
from .blocks import Job, compute_block, run_block
from .handle import ModelHandle
from .predictor import DTYPES, Prediction, Predictor, TorchPredictor
from .runner import DeviceRunner
from .runtime import LoadedNetwork, cached_network
from .scheduling import (
    SCHEDULER_TIMEOUT,
    active_client,
    check_scheduler,
    describe_scheduler,
    execute,
    gpu_worker_specs,
    lazy_arrays,
    open_cluster,
    parse_gpus,
)
from .tiling import Block, Layout, plan_layout, read_mirrored

__all__ = [
    "DTYPES",
    "SCHEDULER_TIMEOUT",
    "Block",
    "DeviceRunner",
    "Job",
    "Layout",
    "LoadedNetwork",
    "ModelHandle",
    "Prediction",
    "Predictor",
    "TorchPredictor",
    "active_client",
    "cached_network",
    "check_scheduler",
    "compute_block",
    "describe_scheduler",
    "execute",
    "gpu_worker_specs",
    "lazy_arrays",
    "make_predictor",
    "open_cluster",
    "parse_gpus",
    "plan_layout",
    "read_mirrored",
    "resolve_backend",
    "run_block",
]
