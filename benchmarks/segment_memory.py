"""Peak memory of ``fastunet segment`` while the volume grows 1x, 4x, 16x (CPU).

Each size runs in a fresh Python process that segments a synthetic zarr volume (float32,
``--slices`` slices of ``edge x edge``, chunks 1 x 256 x 256) with a tiny model and reports
its resident memory after a warm-up run on a small volume (imports and first allocations
done) and its peak resident memory (``VmHWM`` of ``/proc/self/status``, reset after the
warm-up) during the run.
The same process then times the raw network on the same number of tiles of the same shape
(pre-normalized, in memory, the same predictor, one call at a time as the engine's device
runner makes them, in calls of at most the batch size), ``--repeats`` times, and keeps the
median: segment Mpx/s next to raw network Mpx/s shows what reading, normalizing, cutting,
assembling and writing cost on top of the network. The network runs with the engine's
defaults (``--backend auto --dtype auto``: bf16 on CPUs with bf16 units, OpenVINO when
installed) unless asked otherwise.

Every row uses the same tile (``--tile``; by default the tile of the engine's CPU default
512-pixel step for large images, whatever the image size; the engine's own default would
pick a smaller tile for a small image and make the rows incomparable); the table shows it
per row.

    python benchmarks/segment_memory.py                     # 512^2, 1024^2, 2048^2 x 8 slices
    python benchmarks/segment_memory.py --base 1024 --slices 4 --block default
    python benchmarks/segment_memory.py --base 256 --slices 2 --factors 1,4   # a smoke check

A CPU measurement on whatever else the machine is doing: numbers are not GPU results and
are not written to benchmarks/results/.

glibc keeps freed buffers of up to 32 MiB in per-thread heaps once it has seen such frees,
so the resident peak also holds what the network's activations once used on each thread.
Run with ``MALLOC_MMAP_THRESHOLD_=131072`` (passed on to the child processes) to return
large buffers to the system at once and see the engine's live memory alone (slower: every
large allocation is then a fresh mapping).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _vm(field: str) -> float:
    """A ``/proc/self/status`` memory field in MiB (VmRSS, VmHWM)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status (this script needs Linux)")


def child(args) -> None:
    """Segment one volume and time the raw network; print one JSON line."""
    import numpy as np
    import torch

    from fastunet.segmentation import Segmenter

    block = None if args.block == "default" else tuple(int(v) for v in args.block.split(","))
    seg = Segmenter(args.model, tile=args.tile, device="cpu", backend=args.backend, dtype=args.dtype)
    # Warm up on a small volume (imports, the first forward's allocations), then reset the
    # peak (Linux: writing 5 to clear_refs sets VmHWM to the current RSS).
    warm = np.random.default_rng(1).normal(size=(1, 300, 300)).astype(np.float32)
    seg.segment(warm, args.output[:-len(".zarr")] + "-warm.zarr", axes="ZYX", progress=False)
    before = _vm("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    t0 = time.perf_counter()
    seg.segment(args.input, args.output, axes="ZYX", progress=False, block=block)
    seconds = time.perf_counter() - t0
    peak = _vm("VmHWM")
    summary = seg.last_summary

    # The raw network on the same tiles: same count, shape and batch calls (the engine sends
    # each block's tiles in calls of at most batch_size), already in memory.
    from fastunet.engine.tiling import Layout
    from fastunet.io import SegmentationStore

    meta = SegmentationStore(args.output, mode="r").attrs
    layout = Layout(shape=tuple(meta["shape"]), depth=seg.config.depth, tile=tuple(meta["tile"]),
                    chunks=tuple(meta["chunks"]), block=tuple(meta["block"]))
    ntiles = sum(b.shape[0] * len(layout.block_tiles(b)) for b in layout.blocks())
    bs = seg.batch_size
    rng = np.random.default_rng(0)
    batch = torch.from_numpy(rng.normal(size=(bs, 1, *layout.tile)).astype(np.float32))
    predictor = seg.network.predictor
    predictor.predict(batch, "labels")  # warm-up

    # One call at a time, as the engine's device runner calls the network (on all the cores).
    raw_threads = 1
    raw_times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for i in range(0, ntiles, bs):
            predictor.predict(batch[: min(bs, ntiles - i)], "labels")
        raw_times.append(time.perf_counter() - t0)
    raw_seconds = statistics.median(raw_times)
    voxels = math.prod(layout.shape)
    input_mib = voxels * 4 / 2**20  # float32
    print(json.dumps({
        "shape": list(layout.shape), "input_mib": input_mib, "rss_before_mib": before,
        "peak_rss_mib": peak, "seconds": seconds, "segment_mpx_s": voxels / 1e6 / seconds,
        "raw_mpx_s": voxels / 1e6 / raw_seconds, "raw_repeats": len(raw_times),
        "raw_spread": (max(raw_times) - min(raw_times)) / raw_seconds, "tiles": ntiles, "tile": summary["tile"],
        "block": summary["block"], "blocks": summary["blocks"], "batch_size": bs, "raw_threads": raw_threads,
        "torch_threads": torch.get_num_threads(), "backend": summary["backend"], "dtype": summary["dtype"],
    }))


def make_volume(path: Path, slices: int, edge: int, seed: int) -> None:
    """A synthetic float32 zarr volume (smooth blobs plus noise), written slice by slice."""
    import numpy as np
    import zarr
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    arr = zarr.create_array(str(path), shape=(slices, edge, edge), chunks=(1, 256, 256), dtype="float32")
    for z in range(slices):
        blobs = ndi.gaussian_filter(rng.random((edge, edge), dtype=np.float32), 4)
        arr[z] = (blobs * 50 + rng.normal(100, 5, (edge, edge))).astype(np.float32)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", type=int, default=512, help="edge of the 1x volume's slices (default 512)")
    p.add_argument("--slices", type=int, default=8, help="slices per volume (default 8)")
    p.add_argument("--factors", default="1,4,16", help="volume growth factors (default 1,4,16)")
    p.add_argument("--tile", type=int, help="network input tile, the same for every size (default: the tile of "
                   "a 512-pixel output step, the engine's CPU default for large images)")
    p.add_argument("--repeats", type=int, default=5, help="raw-network timings per size; the median is shown "
                   "(default 5)")
    p.add_argument("--block", default="1,512,512",
                   help="output block shape Z,Y,X, or 'default' for the engine's (about 8 Mvoxels)")
    p.add_argument("--backend", default="auto", help="the engine's backend (default auto)")
    p.add_argument("--dtype", default="auto", help="the engine's dtype (default auto)")
    p.add_argument("--base-channels", type=int, default=8)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--child", nargs=3, metavar=("INPUT", "MODEL", "OUTPUT"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.child:
        args.input, args.model, args.output = args.child
        child(args)
        return
    if args.tile is None:
        from fastunet import geometry

        args.tile = geometry.input_size_for_output(512, args.depth)

    import torch

    from fastunet import Normalization, ReferenceUNet, UNetConfig, save_model

    torch.manual_seed(0)
    rows = []
    with tempfile.TemporaryDirectory(prefix="fastunet-mem-") as tmp:
        tmp = Path(tmp)
        net = ReferenceUNet(UNetConfig(base_channels=args.base_channels, depth=args.depth))
        model = save_model(tmp / "tiny.safetensors", net, Normalization(mode="percentile"))
        for f in (int(v) for v in args.factors.split(",")):
            edge = int(round(args.base * math.sqrt(f)))
            vol = tmp / f"v{f}.zarr"
            make_volume(vol, args.slices, edge, seed=f)
            cmd = [sys.executable, __file__, "--block", args.block, "--tile", str(args.tile), "--repeats",
                   str(args.repeats), "--backend", args.backend, "--dtype", args.dtype,
                   "--child", str(vol), str(model), str(tmp / f"o{f}.zarr")]
            env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode:
                sys.exit(f"size {f}x failed:\n{out.stderr}")
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["factor"] = f
            rows.append(row)
            print(f"  {f}x done: {row['shape']} in {row['seconds']:.1f} s", file=sys.stderr)
    r0 = rows[0]
    malloc = os.environ.get("MALLOC_MMAP_THRESHOLD_")
    print(f"tiny U-Net (base_channels {args.base_channels}, depth {args.depth}), CPU, {r0['backend']} {r0['dtype']}, "
          f"batch {r0['batch_size']}, block {args.block}, {r0['torch_threads']} torch threads, raw net: median of "
          f"{args.repeats}, one call at a time (as the engine's runner), "
          + (f"MALLOC_MMAP_THRESHOLD_={malloc}" if malloc else "default glibc malloc"))
    head = ("size", "volume (Z,Y,X)", "tile", "input MiB", "RSS before MiB", "peak RSS MiB", "peak - before",
            "blocks", "tiles", "segment Mpx/s", "raw net Mpx/s", "raw spread", "segment/raw")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print(f"| {r['factor']}x | {'x'.join(map(str, r['shape']))} | {'x'.join(map(str, r['tile']))} | "
              f"{r['input_mib']:.0f} | {r['rss_before_mib']:.0f} | {r['peak_rss_mib']:.0f} | "
              f"{r['peak_rss_mib'] - r['rss_before_mib']:.0f} | {r['blocks']} | {r['tiles']} | "
              f"{r['segment_mpx_s']:.2f} | {r['raw_mpx_s']:.2f} | {100 * r['raw_spread']:.0f}% | "
              f"{r['segment_mpx_s'] / r['raw_mpx_s']:.2f} |")
    if len({tuple(r["tile"]) for r in rows}) > 1:
        print("note: the rows used different tiles; they are not comparable", file=sys.stderr)


if __name__ == "__main__":
    main()
