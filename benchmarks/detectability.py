"""Which nuclei could be found at all: each true nucleus's contrast-to-noise ratio against
whether the model found it, per synthetic style.

    python benchmarks/detectability.py measure --images 4 --out card   # ~3 min on 2 cores
    python benchmarks/detectability.py readme                          # the README's table

``measure`` segments ``--images`` images of every style (seeds from 2026, the card's: an
analysis of the card's scores, nothing is tuned on it) with the bundled model and its
defaults, and for every true nucleus takes

* its contrast: its mean intensity less the median of a ring around it (pixels 3 to 6 px
  out, away from every nucleus);
* the image's noise: the robust standard deviation (1.4826 MAD) of the background (pixels
  10 px or more from every nucleus) less its 31 x 31 median;
* its integrated contrast-to-noise ratio, ``CNR = contrast / noise * sqrt(area)``: what a
  detector that knew the nucleus's outline could reach. Below about 5 (the Rose criterion) a
  nucleus cannot be told from noise at all; outlining it at IoU 0.5 needs more.

A nucleus is found when a predicted object overlaps it at IoU > 0.5 (the card's F1 match).
The JSON (to ``--out``; copy it to ``benchmarks/results/``) holds, per style and CNR band,
the nuclei and the share found; ``readme`` renders the newest one into the README.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
MARKERS = ("<!-- detectability:begin -->", "<!-- detectability:end -->")
BANDS = (0.0, 5.0, 10.0, 20.0, 40.0)  # lower edges of the CNR bands; the last is open


def nucleus_cnr(image: np.ndarray, labels: np.ndarray, nuclei: int | None = None) -> np.ndarray:
    """Integrated contrast-to-noise ratio of each true object ``1..n`` of ``labels`` (see the
    module); NaN for an object without a usable ring."""
    from scipy import ndimage as ndi

    img = np.asarray(image, np.float64)
    n = int(labels.max()) if nuclei is None else int(nuclei)
    ids = np.arange(1, n + 1)
    objects = labels > 0
    background = ~ndi.binary_dilation(objects, iterations=10)
    residual = (img - ndi.median_filter(img, size=31))[background]
    noise = 1.4826 * float(np.median(np.abs(residual - np.median(residual))))
    near = ndi.binary_dilation(objects, iterations=3)
    rings = np.where(near, 0, ndi.grey_dilation(np.where(labels <= n, labels, 0), size=(13, 13)))
    area = ndi.sum_labels(np.ones_like(img), labels, ids)
    contrast = np.asarray(ndi.mean(img, labels, ids)) - np.asarray(ndi.median(img, rings, ids), np.float64)
    return contrast / max(noise, np.finfo(np.float64).tiny) * np.sqrt(area)


def found(pred: np.ndarray, labels: np.ndarray, nuclei: int | None = None) -> np.ndarray:
    """Per true object ``1..n``: does a predicted object overlap it at IoU > 0.5?"""
    from fastunet.metrics import as_instances, iou_matrix

    true = as_instances(np.asarray(labels))
    iou = iou_matrix(true, as_instances(np.asarray(pred)))
    hit = iou.max(axis=1, initial=0.0) > 0.5
    n = int(true.max()) if nuclei is None else int(nuclei)
    return hit[:n]


def measure(args) -> dict:
    from fastunet import __version__
    from fastunet.evaluate import parse_styles
    from fastunet.segmentation import Segmenter
    from fastunet.synthetic_styles import STYLES, style_image

    record = {"benchmark": "detectability", "version": __version__, "machine": platform.machine(),
              "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "images": args.images,
              "seed": args.seed, "bands": list(BANDS), "styles": {}}
    with Segmenter(args.model) as seg:
        for name in parse_styles(args.styles):
            cnr, hit = [], []
            for seed in range(args.seed, args.seed + args.images):
                drawn = style_image(name, (512, 512), seed=seed)
                labels = np.asarray(drawn.labels)
                pred = np.asarray(seg.segment(drawn.image, None, progress=False))
                cnr.append(nucleus_cnr(drawn.image, labels, drawn.nuclei))
                hit.append(found(pred, labels, drawn.nuclei))
            c, h = np.concatenate(cnr), np.concatenate(hit)
            usable = np.isfinite(c)
            c, h = c[usable], h[usable]
            edges = [*BANDS, np.inf]
            bands = []
            for lo, hi in zip(edges[:-1], edges[1:]):
                inside = (c >= lo) & (c < hi) if lo > 0 else c < hi
                bands.append({"nuclei": int(inside.sum()), "found": int(h[inside].sum())})
            record["styles"][name] = {"held_out": STYLES[name].held_out, "nuclei": int(c.size),
                                      "found": int(h.sum()), "bands": bands,
                                      "median_cnr": round(float(np.median(c)), 2) if c.size else None}
            print(f"{name:<15} nuclei {c.size:5d} found {h.mean() if h.size else 0:.3f} "
                  + " ".join(f"{b['nuclei']}:{b['found']}" for b in bands), file=sys.stderr, flush=True)
    return record


def render(record: dict) -> str:
    """Per style: the share of nuclei in each CNR band, and how many of them the model found."""
    edges = record["bands"]
    names = [f"CNR < {edges[1]:g}"] + [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[1:-1], edges[2:])] + [f">= {edges[-1]:g}"]
    lines = ["| style | | nuclei | found | " + " | ".join(names) + " |",
             "| --- | --- | --- | --- |" + " --- |" * len(names)]
    for name, row in record["styles"].items():
        cells = []
        for band in row["bands"]:
            share = band["nuclei"] / max(row["nuclei"], 1)
            cells.append("-" if not band["nuclei"] else f"{share:.0%}: {band['found'] / band['nuclei']:.2f}")
        lines.append(f"| `{name}` | {'held out' if row['held_out'] else 'training'} | {row['nuclei']} | "
                     f"{row['found'] / max(row['nuclei'], 1):.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def readme(args) -> None:
    sys.path.insert(0, str(HERE))
    from model_card import publish

    publish(args.readme, "detectability", render, MARKERS, script="detectability.py")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("measure")
    p.add_argument("--model", help="model file (default: the bundled one)")
    p.add_argument("--images", type=int, default=4, help="images per style (default 4)")
    p.add_argument("--seed", type=int, default=2026, help="first seed (default 2026: the card's images)")
    p.add_argument("--styles", help="all (default), held-out, train or names separated by commas")
    p.add_argument("--out", default="model-card", help="folder for the JSON file")
    sys.path.insert(0, str(HERE))
    from model_card import parse_with_readme, write_record

    args = parse_with_readme(parser, sub, argv)
    if args.command == "readme":
        readme(args)
        return 0
    record = measure(args)
    write_record(args.out, record, render(record))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
