"""The default 3D model against the default 2D model run slice by slice, on synthetic stacks
of touching nuclei: instance F1 of 3D objects, per style (:mod:`fastunet.evaluate3d`).

For each style of :mod:`fastunet.synthetic3d` (the three the 3D model trains on and the
held-out ``deep``), ``--stacks`` fresh stacks (seeds 30000.., never trained on) with dense
clusters of touching nuclei (90 % of them placed against another, 250 per 100^3 px^3) are
segmented through the engine by both models on the CPU; the 3D objects of each (3D connected
components of its foreground; for the 2D model its per-slice masks joined across Z) are
matched with the true ones at IoU 0.5::

    python benchmarks/volumes3d.py --out benchmarks/results              # 2 stacks of 32 x 128 x 128 per style
    python benchmarks/volumes3d.py --stacks 1 --shape 16,64,64 --out /tmp  # a smoke run

writes ``volumes3d-<date>.json`` (``figures``: each style's 3D instance F1 of both models, as
the results table of ``benchmarks/README.md`` shows them; ``rows``: every score) and prints
the Markdown table of the README.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path


def figures(rows: dict) -> dict:
    """The headline numbers: per style, both models' 3D instance F1 and foreground IoU."""
    out = {}
    for name, r in rows.items():
        for key in ("3d", "2d"):
            out[f"{name}.{key}_model.instance_f1_3d"] = round(r[key]["volume"]["instance_f1"], 4)
            out[f"{name}.{key}_model.fg_iou"] = round(r[key]["volume"]["foreground_iou"], 4)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stacks", type=int, default=2, help="fresh stacks per style (default 2)")
    parser.add_argument("--shape", default="32,128,128", help="Z,Y,X of each stack (default 32,128,128)")
    parser.add_argument("--model-3d", default="3d", help='the 3D model (default "3d": the bundled one)')
    parser.add_argument("--model-2d", default=None, help="the 2D model (default: the bundled default model)")
    parser.add_argument("--styles", help="comma-separated 3D styles (default: all)")
    parser.add_argument("--out", default=".", help="folder of the JSON file")
    args = parser.parse_args(argv)

    from fastunet import __version__
    from fastunet.evaluate3d import SEED_3D, compare_styles, comparison_table

    shape = tuple(int(v) for v in args.shape.split(","))
    start = time.perf_counter()
    rows = compare_styles(args.model_3d, args.model_2d, styles=args.styles.split(",") if args.styles else None,
                          n_volumes=args.stacks, shape=shape, device="cpu",
                          progress=lambda name, row: print(f"{name}: 3D F1 {row['3d']['volume']['instance_f1']:.3f}, "
                                                           f"2D slice-wise {row['2d']['volume']['instance_f1']:.3f}",
                                                           flush=True))
    record = {"benchmark": "volumes3d", "version": __version__, "machine": platform.machine(),
              "cpus": os.cpu_count(), "device": f"cpu ({os.cpu_count()} cores, shared)",
              "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "stacks_per_style": args.stacks, "shape": list(shape),
              "seeds": [SEED_3D, SEED_3D + args.stacks - 1], "touching": 0.9, "density": 250.0,
              "model_3d": args.model_3d, "model_2d": args.model_2d or "default", "seconds":
              round(time.perf_counter() - start, 1), "figures": figures(rows), "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"volumes3d-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(record, indent=2))
    print(comparison_table(rows))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
