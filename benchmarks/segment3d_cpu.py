"""CPU: fastunet's 3D ``segment`` against MONAI's 3D sliding window with the same widths.

Both sides run one 3D network (the weights of a model file, by default the bundled 3D model)
on the same synthetic stack held in memory, in fp32 with the same number of torch threads,
and give uint8 labels:

* **fastunet**: ``fastunet.segment(volume, model, None, axes="ZYX", output_kind="labels")``:
  the valid-convolution network on overlap tiles of the engine's default 3D tile (or
  ``--tile``), on the 3D max-pool grid with a mirrored context; the labels equal one pass
  over the whole mirrored volume. On ``--backend`` (default ``auto``: OpenVINO where it is
  installed, as ``segment`` runs); when that is not PyTorch, the PyTorch backend is timed too
  (``fastunet_torch``), in the same rounds.
* **MONAI**: ``sliding_window_inference`` (overlap 0.25, gaussian blending) of
  :class:`fastunet.bench.SamePaddedUNet` (the same widths, layers and weights, every 3x3x3
  convolution padded by 1, as MONAI-style U-Nets are), windows of ``roi`` = per axis the
  largest multiple of the max-pool grid not above fastunet's output tile on PyTorch (one
  tile at a time on every thread, as MONAI's windows run), the same batch, then argmax.

Each side's time includes the normalization statistics (the same lattice sample), the
network, blending or assembling, and the argmax; neither includes loading the model. The
runs alternate (fastunet, [fastunet on PyTorch,] MONAI, fastunet, ...) after one untimed
warm-up of each, and the medians are recorded. A CPU measurement on whatever else the
machine is doing (only the ratios of one run compare)::

    python benchmarks/segment3d_cpu.py --out benchmarks/results            # 48 x 192 x 192, 3 repeats
    python benchmarks/segment3d_cpu.py --shape 24,96,96 --repeats 1 --out /tmp   # a smoke run

writes ``segment3d-cpu-<date>.json`` (its ``figures`` as the results table of
``benchmarks/README.md`` shows them) and prints a Markdown line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from pathlib import Path


def _monai_side(net, volume, normalization, *, roi, batch, sliding_window):
    import numpy as np
    import torch

    from fastunet.io import open_volume
    from fastunet.normalization import normalization_stats

    stats = normalization_stats(open_volume(volume, axes="ZYX"), normalization)
    offset, scale = (torch.as_tensor(np.asarray(v, np.float32)).reshape(-1) for v in (stats.offset, stats.scale))
    x = (torch.from_numpy(volume.astype(np.float32))[None, None] - offset[0]) / scale[0]
    counts = {"windows": 0}

    def predictor(windows):
        counts["windows"] += windows.shape[0]
        return net(windows)

    with torch.no_grad():
        scores = sliding_window(x, roi, batch, predictor, overlap=0.25, mode="gaussian")
    return scores.argmax(dim=1)[0].to(torch.uint8).numpy(), counts["windows"]


def run(shape, *, model, tile, batch: int, repeats: int, threads: int, seed: int, backend: str = "auto") -> dict:
    import numpy as np
    import torch

    from fastunet import Segmenter, read_model
    from fastunet.bench import SamePaddedUNet, import_monai, same_padded_flops
    from fastunet.engine import resolve_backend
    from fastunet.engine.openvino_backend import stream_count
    from fastunet.engine.tiling import plan_layout
    from fastunet.model import forward_flops
    from fastunet.modelfile import bundled_model
    from fastunet.segmentation.memory import default_max_step
    from fastunet.synthetic3d import style_volume

    sliding_window = import_monai()
    torch.set_num_threads(threads)
    bundle = read_model(bundled_model(model))
    config = bundle.config
    volume, _, z_step = style_volume("confocal", tuple(shape), seed=seed)
    # The engine's default tile for this volume on this CPU (what segment() plans without tile=).
    backend = resolve_backend(backend, "cpu")
    # the backend asked for, and PyTorch beside it when that is another one; each on the tile
    # segment() plans for it without tile= (OpenVINO's split for its streams)
    backends = {"fastunet": backend, **({"fastunet_torch": "torch"} if backend != "torch" else {})}
    layouts = {name: plan_layout(tuple(shape), config.depth, source_chunks=tuple(shape), tile=tile,
                                 max_step=default_max_step(config, torch.device("cpu"), dtype="fp32", batch_size=batch,
                                                           backend=b),
                                 max_block_voxels=1024 * 1024, pools=config.axis_pools,
                                 side_by_side=stream_count(batch)[0] if b == "openvino" else 1)
               for name, b in backends.items()}
    segmenters = {name: Segmenter(bundle, tile=layouts[name].tile, batch_size=batch, device="cpu", backend=b,
                                  dtype="fp32") for name, b in backends.items()}

    def ours(seg):
        return lambda: np.asarray(seg.segment(volume, None, axes="ZYX", output_kind="labels", progress=False))

    sides = {name: ours(seg) for name, seg in segmenters.items()}
    for side in sides.values():
        side()  # warm-up, untimed
    layout = layouts["fastunet"]
    # MONAI's windows from the tile of one tile at a time (PyTorch's; a window runs on every thread)
    roi = tuple(max(q, o - o % q) for o, q in zip(layouts.get("fastunet_torch", layout).out, config.grid))
    net = SamePaddedUNet(config)
    net.load_state_dict(bundle.module.state_dict())
    net.eval()

    def theirs():
        return _monai_side(net, volume, bundle.normalization, roi=roi, batch=batch, sliding_window=sliding_window)

    theirs()  # warm-up, untimed
    sides["monai"] = theirs
    times: dict[str, list[float]] = {name: [] for name in sides}
    results: dict = {}
    for _ in range(repeats):
        for name, side in sides.items():
            start = time.perf_counter()
            results[name] = side()
            times[name].append(time.perf_counter() - start)
    for seg in segmenters.values():
        seg.close()
    labels_ours, (labels_monai, windows) = results["fastunet"], results["monai"]
    voxels = math.prod(shape)
    tiles = layout.tile_count()
    ours_s, monai_s = statistics.median(times["fastunet"]), statistics.median(times["monai"])
    agree = float((labels_ours == labels_monai).mean())
    extra_figures, extra_ratios = {}, {}
    if "fastunet_torch" in times:
        torch_s = statistics.median(times["fastunet_torch"])
        same = float((labels_ours == results["fastunet_torch"]).mean())
        extra_figures = {"3D.cpu.fastunet_torch_s": round(torch_s, 3), "3D.cpu.backend_label_agreement": round(same, 6),
                         "3D.cpu.fastunet_torch_tiles": layouts["fastunet_torch"].tile_count()}
        extra_ratios = {f"3D.cpu.{backend}_vs_torch_backend": round(torch_s / ours_s, 3)}
    return {
        "shape": list(shape), "z_step": z_step, "model": str(model), "network": config.describe(),
        "backend": backend, "threads": threads, "repeats": repeats, "times": times,
        "fastunet_tile": list(layout.tile), "fastunet_tiles": tiles,
        "fastunet_torch_tile": list(layouts["fastunet_torch"].tile) if "fastunet_torch" in layouts else None,
        "monai_roi": list(roi), "monai_windows": windows, "batch": batch,
        "figures": {
            "3D.cpu.fastunet_s": round(ours_s, 3), "3D.cpu.monai_s": round(monai_s, 3),
            "3D.cpu.fastunet_mvox_s": round(voxels / ours_s / 1e6, 4),
            "3D.cpu.monai_mvox_s": round(voxels / monai_s / 1e6, 4),
            "3D.cpu.fastunet_flops_per_voxel": round(forward_flops(config, *layout.tile) * tiles / voxels),
            "3D.cpu.monai_flops_per_voxel": round(same_padded_flops(config, *roi) * windows / voxels),
            "3D.cpu.label_agreement": round(agree, 4),
            **extra_figures,
        },
        "ratios": {"3D.cpu.fastunet_vs_monai": round(monai_s / ours_s, 3), **extra_ratios},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="48,192,192", help="the stack's Z,Y,X (default 48,192,192)")
    parser.add_argument("--model", default="3d", help='a 3D model file, or "3d" (the bundled one, the default)')
    parser.add_argument("--tile", help="fastunet's tile: an edge or Z,Y,X (default: the engine's)")
    parser.add_argument("--batch", type=int, default=2, help="tiles / windows per network call (default 2)")
    parser.add_argument("--backend", default="auto", choices=("auto", "torch", "openvino"),
                        help="fastunet's backend (default auto: OpenVINO where installed; PyTorch is timed beside it)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--seed", type=int, default=31_000)
    parser.add_argument("--out", default=".", help="folder of the JSON file")
    args = parser.parse_args(argv)
    from fastunet import __version__

    shape = tuple(int(v) for v in args.shape.split(","))
    tile = None if args.tile is None else tuple(int(v) for v in args.tile.split(","))
    tile = tile[0] if tile is not None and len(tile) == 1 else tile
    row = run(shape, model=args.model, tile=tile, batch=args.batch, repeats=args.repeats, threads=args.threads,
              seed=args.seed, backend=args.backend)
    record = {"benchmark": "segment3d-cpu", "version": __version__, "machine": platform.machine(),
              "cpus": os.cpu_count(), "device": f"cpu ({os.cpu_count()} cores, shared)",
              "date": time.strftime("%Y-%m-%dT%H:%M:%S"), **row}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"segment3d-cpu-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(record, indent=2))
    f = row["figures"]
    print(f"| {args.shape} | fastunet {f['3D.cpu.fastunet_s']} s (tile {row['fastunet_tile']}) | MONAI "
          f"{f['3D.cpu.monai_s']} s (roi {row['monai_roi']}) | ratio {row['ratios']['3D.cpu.fastunet_vs_monai']} |")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
