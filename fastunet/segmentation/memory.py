"""How much memory a tile needs, and the largest tile step that fits a device.

Before a run the tile and batch are checked against the memory free on the device (the
CPU's available RAM, or the GPU's free memory): a tile whose batch cannot fit is refused with
the largest one that does (:func:`check_tile_memory`), instead of running out of memory
minutes later. (On a GPU an out-of-memory error that happens anyway halves the batch, then
the tile: :class:`fastunet.engine.oom.OOMBackoff`.)
"""

from __future__ import annotations

import math

from .. import geometry
from ..devices import resolve_device
from ..errors import UserError

__all__ = ["activation_bytes", "default_max_step", "available_bytes", "check_tile_memory", "training_bytes",
           "check_train_memory"]


def activation_bytes(config, tile, *, dtype: str = "fp32") -> int:
    """Upper bound of the activation memory of one ``tile x tile`` forward (bytes): the input,
    every layer's output (:func:`fastunet.geometry.layer_shapes`; an eager forward frees some
    of them earlier), the concatenation after each up-convolution and the softmax and argmax
    beside the scores. ``tile``: an edge (square, or a cube for a 3D network) or one edge per
    spatial axis."""
    size = 2 if dtype in ("bf16", "fp16") else 4
    total = config.in_channels * math.prod(geometry.tile_edges(config, tile))
    for layer in geometry.layer_shapes(config, tile):
        total += layer.out_values
        if layer.kind == "upconv":  # torch.cat([crop(skip), up]): twice the up-conv's output
            total += 2 * layer.out_values
        elif layer.kind == "head":  # softmax and argmax
            total += 2 * layer.out_values
    return int(total * size)


def tile_for_step(config, step: int) -> tuple[int, ...]:
    """The input tile whose output is about ``step`` along every spatial axis: per axis the
    smallest valid edge whose output reaches ``step`` rounded down to the axis's max-pool grid."""
    return tuple(geometry.input_size_for_output(max(q, step - step % q), p)
                 for p, q in zip(_pools(config), _grid(config)))


def _pools(config) -> tuple:
    return tuple(getattr(config, "axis_pools", (config.depth, config.depth)))


def _grid(config) -> tuple[int, ...]:
    return tuple(geometry.grid_step(p) for p in _pools(config))


def default_max_step(config, device, *, dtype: str, batch_size: int, backend: str | None = None) -> int:
    """Largest tile step (output edge, about) the default tile may use.

    CPU: up to 512 (moderate tiles, a forward of a few seconds for the paper's network; 128
    for a 3D network), up to 1024 for a 2D network under OpenVINO (``backend="openvino"``:
    the default model's 1116 x 1116 tiles computed 8.6 % more of the output a second than its
    604 x 604 ones, ``benchmarks/results/2026-12-07T103139Z-openvino-tiles.json``, and the warm
    engine took 1.74 s for the P7 volume against 1.85-1.94 s on smaller tiles, P7 ``104746Z``
    against ``092323Z``-``100700Z``, once the runner queued each tile as a stream came free). Not under
    PyTorch: its channels-last convolutions ran 604 x 1116 tiles at 0.57 of the bf16 matrix
    product's rate against 0.78 for 604 x 604 (P7 ``2026-12-07T094010Z`` against ``092323Z``).
    CUDA: up to 2048 (256 in 3D). Either: the largest step whose ``batch_size`` tiles need at
    most half of the free memory (:func:`available_bytes`) by :func:`activation_bytes`.
    """
    q = max(_grid(config))
    device = resolve_device(device)
    free = available_bytes(device)
    three_d = getattr(config, "spatial_dims", 2) == 3
    if device.type == "cuda":
        top = 256 if three_d else 2048
    else:
        top = 128 if three_d else (1024 if backend == "openvino" else 512)
    # The memory grows with the step: the first step that fits, from the top down, is the
    # largest (usually the top itself: one evaluation instead of one per step).
    for step in range(top - top % q, q, -q):
        if batch_size * activation_bytes(config, tile_for_step(config, step), dtype=dtype) <= free // 2:
            return step
    return q


def available_bytes(device) -> int:
    """Memory free for the network on ``device``: the GPU's free memory, or the RAM available
    to new allocations (``psutil.virtual_memory().available``) on the CPU."""
    device = resolve_device(device)
    if device.type == "cuda":
        import torch

        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    import psutil

    return int(psutil.virtual_memory().available)


def check_tile_memory(config, tile, *, device, dtype: str, batch_size: int, available: int | None = None) -> None:
    """Refuse a tile whose ``batch_size`` tiles need more memory than ``device`` has free.

    Parameters
    ----------
    config : UNetConfig
    tile : int or (int, int)
        The input tile edge(s).
    device : str or torch.device
    dtype : str
        The compute dtype (bf16/fp16 halve the activations).
    batch_size : int
    available : int, optional
        Free bytes (default :func:`available_bytes`).

    Raises
    ------
    UserError
        Naming the memory needed and free, and the largest tile that fits.
    """
    edges = geometry.tile_edges(config, tile)
    need = batch_size * activation_bytes(config, edges, dtype=dtype)
    free = available_bytes(device) if available is None else int(available)
    if need <= free:
        return
    if len(edges) == 2:
        fits = [t for t in geometry.valid_input_sizes(config.depth, max_size=max(edges))
                if geometry.output_size(t, config.depth) >= 2**config.depth
                and batch_size * activation_bytes(config, t, dtype=dtype) <= free]
        hint = f"use tile={fits[-1]} or smaller" if fits else "free some memory or use a smaller model"
    else:
        steps = [s for s in range(max(_grid(config)), max(edges) + 1, max(_grid(config)))
                 if batch_size * activation_bytes(config, tile_for_step(config, s), dtype=dtype) <= free]
        hint = (f"use tile={','.join(map(str, tile_for_step(config, steps[-1])))} or smaller" if steps
                else "free some memory or use a smaller model")
    gib = 1024**3
    shown = max(edges) if len(set(edges)) == 1 or len(edges) == 2 else ",".join(map(str, edges))
    raise UserError(
        f"tile={shown} with batch_size={batch_size} needs about {need / gib:.1f} GiB for the network's "
        f"activations on {resolve_device(device)}, but {free / gib:.1f} GiB are free; {hint}"
        f"{', or batch_size=1' if batch_size > 1 else ''}."
    )


def training_bytes(config, tile: int, batch_size: int, *, optimizer: str = "sgd") -> int:
    """About how much memory training needs: the weights, their gradients and the optimizer's
    state (one buffer for SGD with momentum, two for Adam), and the activations of a batch of
    tiles, kept for the backward pass (with their gradients, twice :func:`activation_bytes`).
    The parameters are counted from the layer table: nothing is allocated."""
    from ..model import parameter_count

    params = parameter_count(config)
    buffers = 4 if optimizer == "adam" else 3
    return int(4 * params * buffers + 2 * batch_size * activation_bytes(config, tile))


def check_train_memory(config, tile: int, batch_size: int, *, device, optimizer: str = "sgd",
                       available: int | None = None) -> None:
    """Refuse a training run whose network cannot fit ``device`` (:func:`training_bytes`),
    naming the memory it would need."""
    need = training_bytes(config, tile, batch_size, optimizer=optimizer)
    free = available_bytes(device) if available is None else int(available)
    if need <= free:
        return
    gib = 1024**3
    raise UserError(
        f"Training base_channels={config.base_channels}, depth={config.depth} on tiles of {tile} (batch_size="
        f"{batch_size}) needs about {need / gib:,.1f} GiB (weights, gradients, optimizer state, activations), but "
        f"{free / gib:.1f} GiB are free on {resolve_device(device)}; use a smaller base_channels=, depth=, tile= or "
        "batch_size= (the paper: base_channels=64, depth=4)."
    )
