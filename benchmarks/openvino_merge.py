"""The bundled model under OpenVINO in its two decoder forms: the reference's crop-concat
before each decoder level's first convolution, against that convolution split in two and
summed (:func:`fastunet.model.split_merge`, what the engine converts).

Both forms are converted from the same weights (:func:`fastunet.engine.openvino_backend.convert`)
and compiled as the engine compiles them (bf16 where the CPU has bf16 units, one stream per
thread, one thread each), then run on the same random tiles (``--tile``, the engine's tile for
OpenVINO by default), ``--tiles`` a round over all the streams, in ``--rounds`` interleaved
rounds (the order alternating); medians of the seconds per tile. The two forms' outputs are
compared on the first tile (largest absolute difference of the scores).

    python benchmarks/openvino_merge.py --out openvino-merge

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
    parser.add_argument("--tile", type=int, default=1116)
    parser.add_argument("--tiles", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--out", default="openvino-merge")
    args = parser.parse_args(argv)
    from fastunet.bench.results import print_result, write_result
    from fastunet.devices import cpu_threads, resolve_dtype
    from fastunet.engine import openvino_backend
    from fastunet.modelfile import default_model_path, load_model

    ov = openvino_backend.import_openvino()
    net = load_model(default_model_path(), device="cpu").eval()
    dtype = resolve_dtype(None, "cpu", "openvino")
    threads = cpu_threads()
    config = {"INFERENCE_PRECISION_HINT": openvino_backend.PRECISIONS[dtype], "NUM_STREAMS": threads,
              "INFERENCE_NUM_THREADS": threads}
    core = ov.Core()
    shape = [1, net.config.in_channels, args.tile, args.tile]
    queues = {}
    for form, split in (("concat", False), ("split", True)):
        model = openvino_backend.convert(ov, net, split=split)
        model.reshape(shape)
        queues[form] = ov.AsyncInferQueue(core.compile_model(model, "CPU", config), threads)
    rng = np.random.default_rng(0)
    tiles = [rng.random(shape, dtype=np.float32) for _ in range(args.tiles)]
    outputs = {}
    for form, queue in queues.items():  # each stream's first inference, and the outputs compared
        queue.set_callback(lambda request, i, form=form: outputs.setdefault((form, i), request.get_output_tensor(0).data.copy()))
        for i in range(threads):
            queue.start_async([tiles[i % len(tiles)]], i)
        queue.wait_all()
    largest = float(np.abs(outputs[("split", 0)] - outputs[("concat", 0)]).max())
    seconds: dict = {form: [] for form in queues}
    forms = list(queues)
    for r in range(args.rounds):
        for form in (forms if r % 2 == 0 else forms[::-1]):
            queue = queues[form]
            start = time.perf_counter()
            for i, tile in enumerate(tiles):
                queue.start_async([tile], i)
            queue.wait_all()
            seconds[form].append((time.perf_counter() - start) / len(tiles))
    figures = {"dtype": dtype, "tile": f"{args.tile}x{args.tile}", "streams": threads,
               "largest_score_difference": largest}
    for form in forms:
        figures[f"{form}.s_per_tile"] = statistics.median(seconds[form])
        figures[f"{form}.s_per_tile_all"] = [round(s, 4) for s in seconds[form]]
    ratios = {"split_vs_concat": statistics.median(seconds["concat"]) / statistics.median(seconds["split"])}
    path = write_result("openvino-merge", figures, ratios, out_dir=Path(args.out),
                        extra={"rounds": args.rounds, "tiles_per_round": args.tiles})
    print_result(figures, ratios, path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
