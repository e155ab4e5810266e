"""The auto dtype's bf16 promise for the bundled 3D model: bf16 against fp32 on synthetic volumes.

On a CPU with bf16 units ``dtype="auto"`` runs the 3D network in bf16, as it does the 2D one
(whose agreement P7 measures). This runs :func:`fastunet.bench.dtypes.volume_agreement`: the
bundled 3D model through ``Segmenter`` in fp32 and in bf16 on ``--volumes`` synthetic volumes
of each 3D style (the held-out ``deep`` too; seeds 31000.., not the model's training seeds),
and records per style and for the worst style the probabilities' largest and mean difference,
the share of identical class labels and the 3D instance F1 of both, against
:data:`fastunet.bench.dtypes.TOLERANCES`. On a CPU without bf16 units PyTorch emulates bf16
(the same rounding of inputs and weights, fp32 accumulation; many times slower), so the
figures hold there too; OpenVINO refuses bf16 on such a CPU (it would compute fp32)::

    python benchmarks/dtypes3d.py --out benchmarks/results           # 2 volumes of 32 x 128 x 128 per style
    python benchmarks/dtypes3d.py --volumes 1 --shape 16,64,64 --out /tmp   # a smoke run

writes ``dtypes3d-<date>.json`` (its ``figures`` as the results table of
``benchmarks/README.md`` shows them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--volumes", type=int, default=2, help="volumes per style (default 2)")
    parser.add_argument("--shape", default="32,128,128", help="Z,Y,X of each volume (default 32,128,128)")
    parser.add_argument("--backend", default="torch", choices=("torch", "openvino"),
                        help="the backend of both runs (default torch: bf16 runs, emulated where the CPU has no units)")
    parser.add_argument("--out", default=".", help="folder of the JSON file")
    args = parser.parse_args(argv)
    from fastunet import __version__
    from fastunet.bench.dtypes import TOLERANCES, volume_agreement, worst_of
    from fastunet.devices import cpu_bf16_units

    shape = tuple(int(v) for v in args.shape.split(","))
    start = time.perf_counter()
    rows = volume_agreement(volumes=args.volumes, shape=shape, backend=args.backend)
    worst = worst_of(rows.values())
    figures = {f"3D.bf16_worst_{key}": round(value, 6) for key, value in worst.items()}
    for style, r in rows.items():
        figures[f"3D.bf16_{style}_labels_identical"] = round(r["labels_identical"], 6)
        figures[f"3D.bf16_{style}_f1_fp32"] = round(r["f1_fp32"], 4)
        figures[f"3D.bf16_{style}_f1_bf16"] = round(r["f1_bf16"], 4)
    within = (worst["max_prob_diff"] <= TOLERANCES["max_prob"] and worst["mean_prob_diff"] <= TOLERANCES["mean_prob"]
              and worst["labels_identical"] >= TOLERANCES["labels"] and worst["f1_diff"] <= TOLERANCES["f1"])
    record = {"benchmark": "dtypes3d", "version": __version__, "machine": platform.machine(), "cpus": os.cpu_count(),
              "device": f"cpu ({os.cpu_count()} cores, shared)", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "cpu_bf16_units": cpu_bf16_units(), "backend": args.backend, "shape": list(shape),
              "volumes_per_style": args.volumes, "seconds": round(time.perf_counter() - start, 1),
              "tolerances": TOLERANCES, "within_tolerances": within, "styles": rows, "figures": figures}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"dtypes3d-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(record, indent=2))
    print(f"worst style: probabilities within {worst['max_prob_diff']:.4f} (mean {worst['mean_prob_diff']:.5f}), "
          f"{100 * worst['labels_identical']:.2f} % of the labels identical, 3D F1 within {worst['f1_diff']:.4f}; "
          f"{'within' if within else 'OUTSIDE'} the tolerances")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
