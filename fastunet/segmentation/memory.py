"""How much memory a tile needs, and the largest tile step that fits a device."""

from __future__ import annotations

import torch

from .. import geometry

__all__ = ["activation_bytes", "default_max_step"]


def activation_bytes(config, tile: int, *, dtype: str = "fp32") -> int:
    """Upper bound of the activation memory of one ``tile x tile`` forward (bytes): the input,
    every layer's output (:func:`fastunet.geometry.layer_shapes`; an eager forward frees some
    of them earlier), the concatenation after each up-convolution and the softmax and argmax
    beside the scores."""
    size = 2 if dtype in ("bf16", "fp16") else 4
    total = config.in_channels * tile * tile
    for layer in geometry.layer_shapes(config, tile):
        total += layer.out_values
        if layer.kind == "upconv":  # torch.cat([crop(skip), up]): twice the up-conv's output
            total += 2 * layer.out_values
        elif layer.kind == "head":  # softmax and argmax
            total += 2 * layer.out_values
    return int(total * size)


def default_max_step(config, device: torch.device, *, dtype: str, batch_size: int) -> int:
    """Largest tile step (output edge, about) the default tile may use.

    CPU: 512 (moderate tiles, a forward of a few seconds for the paper's network). CUDA: the
    largest step up to 2048 whose ``batch_size`` tiles need at most half of the free device
    memory by :func:`activation_bytes`.
    """
    q = 2**config.depth
    if device.type != "cuda":
        return 512
    free, _ = torch.cuda.mem_get_info(device)
    best = q
    for step in range(q, 2049, q):
        tile = geometry.input_size_for_output(step, config.depth)
        if batch_size * activation_bytes(config, tile, dtype=dtype) <= free // 2:
            best = step
    return best
