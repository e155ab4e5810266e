"""The bundled model under OpenVINO (bf16 where the CPU has bf16 units) on tiles of several
shapes: seconds per megapixel of output the engine keeps.

Each shape ``HxW`` (input tile) runs as the engine runs it (:class:`~fastunet.engine.openvino_backend.OpenVINOPredictor`,
batches of 2, one tile per stream) on enough random tiles for about 2 Mpx of kept output (the
output's edges rounded down to the max-pool grid, as the engine's tile grid steps), in
``--rounds`` interleaved rounds (the order alternating); medians.

    python benchmarks/openvino_tiles.py --shapes 604x604,604x1116,1116x1116 --out openvino-tiles

The result is a JSON file in ``--out`` to copy to ``benchmarks/results/``. A CPU measurement on
whatever else the machine is doing: only the ratios of one run compare.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="604x604,604x1116")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--out", default="openvino-tiles")
    args = parser.parse_args(argv)
    from fastunet import geometry
    from fastunet.bench.results import print_result, write_result
    from fastunet.devices import resolve_dtype
    from fastunet.engine.handle import ModelHandle
    from fastunet.engine.openvino_backend import OpenVINOPredictor
    from fastunet.modelfile import default_model_path

    handle = ModelHandle.from_path(default_model_path())
    dtype = resolve_dtype(None if args.dtype == "auto" else args.dtype, "cpu", "openvino")
    predictor = OpenVINOPredictor(handle, "cpu", dtype)
    depth, grid = handle.config.depth, geometry.grid_step(handle.config.depth)
    shapes = [tuple(int(e) for e in s.split("x")) for s in args.shapes.split(",")]
    kept, tiles = {}, {}
    rng = np.random.default_rng(0)
    for shape in shapes:
        out = [geometry.output_size(e, depth) for e in shape]
        kept[shape] = int(np.prod([o - o % grid for o in out]))
        count = max(2, round(2 * 1024**2 / kept[shape] / 2) * 2)
        tiles[shape] = rng.random((count, handle.config.in_channels, *shape), dtype=np.float32)
        predictor.prepare(shape)
        predictor.predict(tiles[shape][:2])  # the first inference of a shape
    seconds: dict = {s: [] for s in shapes}
    for r in range(args.rounds):
        for shape in (shapes if r % 2 == 0 else shapes[::-1]):
            x = tiles[shape]
            start = time.perf_counter()
            for i in range(0, len(x), 2):
                predictor.predict(x[i:i + 2])
            seconds[shape].append((time.perf_counter() - start) / (len(x) * kept[shape] / 1e6))
    figures, ratios = {"dtype": dtype}, {}
    first = "x".join(map(str, shapes[0]))
    for shape in shapes:
        name = "x".join(map(str, shape))
        figures[f"{name}.s_per_kept_mpx"] = statistics.median(seconds[shape])
        figures[f"{name}.kept_fraction"] = kept[shape] / (shape[0] * shape[1])
        if name != first:
            ratios[f"{name}_vs_{first}"] = statistics.median(seconds[shapes[0]]) / statistics.median(seconds[shape])
    path = write_result("openvino-tiles", figures, ratios, out_dir=Path(args.out), extra={"rounds": args.rounds})
    print_result(figures, ratios, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
