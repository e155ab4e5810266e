"""P5: ``segment`` against MONAI's ``sliding_window_inference``, both disk to disk.

P5  ``segment`` vs MONAI ``sliding_window_inference`` (overlap 0.25, gaussian blending)
    running :class:`SamePaddedUNet` (the same widths and weights, 3x3 convs padded by 1) in
    bf16 autocast, channels_last, on the same volume and GPU; both sides disk to disk (see
    :func:`bench_vs_monai` for what each side's time includes). MONAI is a benchmark-only
    dependency (``pip install 'fastunet[bench]'``), imported when P5 runs.
"""

from __future__ import annotations

import dataclasses
import math
import shutil
import statistics
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from .. import geometry
from ..errors import UserError
from ..model import ReferenceUNet, UNetConfig, forward_flops
from . import timing
from .pipeline import engine_tile_count, time_segment
from .volume import bench_volume, cache_volume_path, default_cache_dir, random_model_file

__all__ = ["SamePaddedUNet", "bench_vs_monai", "import_monai", "monai_segment", "same_padded_flops"]


def import_monai():
    """MONAI's ``sliding_window_inference`` (a benchmark-only dependency), or a
    :class:`~fastunet.errors.UserError` that says how to install it.

    Returns
    -------
    callable
        ``monai.inferers.sliding_window_inference``.
    """
    try:
        from monai.inferers import sliding_window_inference
    except ImportError as exc:
        raise UserError(
            f"P5 compares fastunet with MONAI, which cannot be imported here ({exc}); "
            "pip install monai (or pip install 'fastunet[bench]')."
        ) from None
    return sliding_window_inference


class SamePaddedUNet(ReferenceUNet):
    """The U-Net with every 3x3 convolution padded by 1 ("same"), as MONAI-style U-Nets are.

    Per level two 3x3 conv (padding 1) + ReLU, a 2x2 max-pool, 2x2 stride-2 up-convolutions,
    the skip concatenated (uncropped: it has the up-conv's size), a 1x1 head. Widths,
    layers and parameters are those of :class:`ReferenceUNet` for the same config (its
    ``state_dict`` loads as is); only the padding differs, so the output has the input's
    size. Inputs must be multiples of ``2**depth``. This is P5's baseline network (built
    here rather than with ``monai.networks.nets``, whose U-Nets do not have these widths
    and layers exactly).
    """

    def __init__(self, config: UNetConfig | None = None, **kwargs) -> None:
        super().__init__(config, **kwargs)
        for block in (*self.down, self.bottom, *self.dec):
            block.conv1.padding = block.conv2.padding = (1,) * self.config.spatial_dims

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grid, dims = self.config.grid, self.config.spatial_dims  # 2**depth per axis (less where a 3D net keeps Z)
        if x.ndim != 2 + dims or x.shape[1] != self.config.in_channels:
            axes = "H, W" if dims == 2 else "D, H, W"
            raise ValueError(f"Expected input of shape (N, {self.config.in_channels}, {axes}); got {tuple(x.shape)}.")
        if any(n % q for n, q in zip(x.shape[2:], grid)):
            raise ValueError(f"Expected sizes that are multiples of {' x '.join(map(str, grid))} (the pools per axis); "
                             f"got {' x '.join(map(str, x.shape[2:]))}.")
        return self._layers(x)  # not super().forward: its valid-convolution size check does not apply


def same_padded_flops(config: UNetConfig, *window: int) -> int:
    """FLOPs (2 per multiply-add) of one :class:`SamePaddedUNet` forward on a window
    (``height, width``, or ``depth, height, width`` for a 3D network): the 3x3 convs,
    up-convolutions and the head, as :func:`forward_flops` counts them for the valid network.

    The layers and channels are those of :func:`fastunet.geometry.layer_shapes`; only the
    sizes differ: padded by 1, every layer of level ``l`` puts out the window divided by
    the pools above it (``(height >> l, width >> l)`` in 2D).

    Parameters
    ----------
    config : UNetConfig
    *window : int
        The window, multiples of the max-pool grid (``2**depth``) along each axis.

    Returns
    -------
    int
    """
    if any(n % q for n, q in zip(window, config.grid)):
        raise ValueError(f"Expected a window whose sizes are multiples of {config.grid}; got {window}.")
    smallest = tuple(geometry.min_input_size(p) for p in config.axis_pools)
    valid = geometry.layer_shapes(config, smallest)  # the channels of each layer
    scale = [tuple(math.prod(f[a] for f in config.pool_factors[:level]) for a in range(len(window)))
             for level in range(config.depth + 1)]  # each level's size divisor per axis
    return sum(dataclasses.replace(layer, out_size=tuple(n // s for n, s in zip(window, scale[layer.level]))).flops
               for layer in valid)


def monai_segment(volume_path, out_path, net, *, normalization, roi: int, sw_batch_size: int, slices_per_call: int,
                  overlap: float, device, autocast_dtype, sliding_window) -> dict:
    """The MONAI side of P5, disk to disk: labels of a zarr (Z, Y, X) volume into a new zarr.

    The normalization statistics come from the same fixed lattice sample as fastunet's
    (:func:`fastunet.normalization.normalization_stats`). Then for each group of
    ``slices_per_call`` slices: read them (one reader thread, a group ahead), copy them to
    ``device``, normalize, ``sliding_window(x, (roi, roi), sw_batch_size, predictor,
    overlap=overlap, mode="gaussian")`` under autocast, argmax to uint8 on the device, copy
    back and write (one writer thread, zarr default compressor, the input's chunks).

    Parameters
    ----------
    volume_path, out_path : path-like
        The input zarr array (Z, Y, X) and the output zarr array (overwritten).
    net : torch.nn.Module
        The same-padded network, on ``device``.
    normalization : fastunet.normalization.Normalization
        The model's input normalization.
    roi, sw_batch_size, overlap
        The window edge, windows per network call and their overlap.
    slices_per_call : int
        Slices per sliding-window call.
    device : str or torch.device
    autocast_dtype : torch.dtype or None
        Autocast of the network (None: none).
    sliding_window : callable
        ``monai.inferers.sliding_window_inference`` (or a stand-in with its signature).

    Returns
    -------
    dict
        ``{"windows": windows through the network, "calls": sliding-window calls}``.
    """
    import zarr

    from .. import io
    from ..normalization import normalization_stats

    device = torch.device(device)
    source = zarr.open_array(str(volume_path), mode="r")
    depth = source.shape[0]
    out = zarr.create_array(str(out_path), shape=source.shape, chunks=source.chunks, dtype="uint8", fill_value=0,
                            overwrite=True)
    stats = normalization_stats(io.open_volume(str(volume_path), axes="ZYX"), normalization)
    counts = {"windows": 0, "calls": 0}

    def predictor(windows):
        counts["windows"] += windows.shape[0]
        return net(windows.contiguous(memory_format=torch.channels_last))

    def read(z0):
        return torch.from_numpy(np.asarray(source[z0:z0 + slices_per_call], dtype=np.float32))

    starts = list(range(0, depth, slices_per_call))
    with ThreadPoolExecutor(1) as reader, ThreadPoolExecutor(1) as writer:
        pending = reader.submit(read, starts[0])
        writes = []
        for i, z0 in enumerate(starts):
            slab = pending.result()
            if i + 1 < len(starts):
                pending = reader.submit(read, starts[i + 1])
            z1 = z0 + slab.shape[0]
            offset, scale = (torch.as_tensor(np.asarray(v, np.float32).reshape(-1, 1, 1, 1), device=device)
                             for v in stats.for_slices(z0, z1))  # (1 or Z, 1, 1, 1): one channel
            x = (slab.to(device, non_blocking=True)[:, None] - offset) / scale
            with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype or torch.float32,
                                                 enabled=autocast_dtype is not None):
                scores = sliding_window(x, (roi, roi), sw_batch_size, predictor, overlap=overlap, mode="gaussian")
            counts["calls"] += 1
            labels = scores.argmax(dim=1).to(torch.uint8).cpu().numpy()
            writes.append(writer.submit(out.__setitem__, slice(z0, z1), labels))
        for w in writes:
            w.result()
    return counts


def _time_monai(net, volume, out_path, *, shape, repeats: int, options: dict) -> tuple[list[float], dict]:
    """Wall-clock seconds of ``repeats`` runs of :func:`monai_segment` (and the counts of the
    last), after one warm-up call of the same shape, with cuDNN benchmark mode on (restored
    afterwards, also when a run raises)."""
    sliding_window, roi, batch = options["sliding_window"], options["roi"], options["sw_batch_size"]
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = True
    try:
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            warm = torch.randn(min(options["slices_per_call"], shape[0]), 1, *shape[1:], device="cuda")
            sliding_window(warm, (roi, roi), batch, lambda w: net(w.contiguous(memory_format=torch.channels_last)),
                           overlap=options["overlap"], mode="gaussian")
            del warm
        times = []
        for _ in range(repeats):
            torch.cuda.synchronize()
            start = time.perf_counter()
            counts = monai_segment(volume, out_path, net, **options)
            times.append(time.perf_counter() - start)
    finally:
        torch.backends.cudnn.benchmark = previous
    return times, counts


def bench_vs_monai(*, shape=(64, 4096, 4096), tile: int | None = None, batch: int = 4, slices_per_call: int = 4,
                   overlap: float = 0.25, repeats: int = 1, cache_dir=None) -> tuple[dict, dict]:
    """P5: ``segment`` vs MONAI ``sliding_window_inference`` on the same volume and GPU.

    fastunet: as in P4 (fused network, bf16, the engine's default tile unless ``tile`` is
    given, ``batch`` tiles per call), zarr to zarr. MONAI: :class:`SamePaddedUNet` with the
    same random weights, bf16 autocast, channels_last, cuDNN benchmark mode on (restored
    afterwards), windows of ``roi`` = the largest multiple of ``2**depth`` not above
    fastunet's output tile edge, ``sw_batch_size = batch``, ``overlap`` 0.25, gaussian
    blending, ``slices_per_call`` slices per call, zarr to zarr (:func:`monai_segment`).
    Both times are wall clock and include opening the volume, the normalization statistics,
    reading, normalizing, the network, blending / assembling, argmax and writing uint8
    labels with the same chunks and compressor; both sides were warmed up first (fastunet
    on two slices, MONAI with one call of the same shape). Not included on either side:
    loading the model and building the network. The ratio ``P5.fastunet_vs_monai`` is
    the throughput ratio (the goal is >= 3). FLOPs per output voxel of both sides
    (network FLOPs times tiles or windows, divided by the volume) are recorded beside.

    Parameters
    ----------
    shape : (Z, Y, X)
        The volume's shape.
    tile : int or None
        fastunet's square input tile edge, or None for the engine's default.
    batch : int
        Tiles per call of fastunet, windows per call of MONAI.
    slices_per_call : int
        Slices per MONAI sliding-window call.
    overlap : float
        MONAI's window overlap.
    repeats : int
        Timed runs of each side.
    cache_dir : path-like, optional
        The folder of the volume (default :func:`~fastunet.bench.volume.default_cache_dir`).

    Returns
    -------
    figures, ratios : dict
        Both sides' seconds, Mpx/s, tiles or windows and FLOPs per voxel;
        ``P5.fastunet_vs_monai``.
    """
    sliding_window = import_monai()
    from ..modelfile import read_model

    timing.require_cuda()
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    volume = cache_volume_path(cache, shape)
    bench_volume(volume, shape)
    ours_out, monai_out = cache / "p5-fastunet.zarr", cache / "p5-monai.zarr"
    with tempfile.TemporaryDirectory() as tmp:
        model_path = random_model_file(Path(tmp) / "unet-random.safetensors")
        ours = time_segment(model_path, volume, ours_out, tile=tile, batch=batch, repeats=repeats)
        reference = read_model(model_path)
    shutil.rmtree(ours_out, ignore_errors=True)
    layout, config = ours["layout"], reference.config
    q = 2**config.depth
    roi = min(layout.out) // q * q
    net = SamePaddedUNet(config)
    net.load_state_dict(reference.module.state_dict())
    net = net.cuda().eval().to(memory_format=torch.channels_last)
    options = dict(normalization=reference.normalization, roi=roi, sw_batch_size=batch,
                   slices_per_call=slices_per_call, overlap=overlap, device="cuda",
                   autocast_dtype=torch.bfloat16, sliding_window=sliding_window)
    times, counts = _time_monai(net, volume, monai_out, shape=shape, repeats=repeats, options=options)
    shutil.rmtree(monai_out, ignore_errors=True)
    voxels = math.prod(shape)
    ours_s, monai_s = statistics.median(ours["seconds"]), statistics.median(times)
    tiles = engine_tile_count(layout)
    figures = {
        "P5.volume_voxels": voxels, "P5.repeats": repeats,
        "P5.fastunet_tile": layout.tile[0], "P5.fastunet_batch": batch, "P5.fastunet_tiles": tiles,
        "P5.fastunet_s": ours_s, "P5.fastunet_mpx_s": voxels / ours_s / 1e6,
        "P5.fastunet_flops_per_voxel": forward_flops(config, *layout.tile) * tiles / voxels,
        "P5.monai_roi": roi, "P5.monai_sw_batch": batch, "P5.monai_overlap": overlap,
        "P5.monai_slices_per_call": slices_per_call, "P5.monai_windows": counts["windows"],
        "P5.monai_s": monai_s, "P5.monai_mpx_s": voxels / monai_s / 1e6,
        "P5.monai_flops_per_voxel": same_padded_flops(config, roi, roi) * counts["windows"] / voxels,
    }
    return figures, {"P5.fastunet_vs_monai": monai_s / ours_s}
