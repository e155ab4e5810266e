"""The default model's card: its scores per synthetic style, and the object-size estimate against the truth.

Three commands, each a CPU measurement on whatever else the machine is doing:

    python benchmarks/model_card.py scores --previous old.safetensors --out card   # ~15 min on 2 cores
    python benchmarks/model_card.py sizes --out card                                # ~10 min
    python benchmarks/model_card.py readme                                           # the README's tables

``scores`` segments ``--images`` fresh images of every style of ``fastunet/synthetic_styles.py``
(seeds 2026.., never used in training) with the model (default: the bundled one) and, with
``--previous``, an earlier model, and scores each with the objects cleaned up as ``segment``
writes them and as the network made them (``fastunet evaluate``: instance F1 at IoU 0.5,
precision, recall, foreground IoU, and the specks: predicted objects smaller than a quarter
of the smallest true object of their image). ``sizes`` runs the ``object_size="auto"``
estimate on ``--images`` images of every style, as drawn and degraded in each way of
:data:`fastunet.synthetic_styles.DEGRADATIONS`, against each image's true median diameter.
Each writes a JSON file to ``--out`` (copy it to ``benchmarks/results/``); ``readme`` rewrites
the README's tables between their markers from the newest of those in ``benchmarks/results/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCORES = ("<!-- model-card-scores:begin -->", "<!-- model-card-scores:end -->")
SIZES = ("<!-- model-card-sizes:begin -->", "<!-- model-card-sizes:end -->")
TOLERANCE = 0.25  # an estimate is right within this fraction of the true diameter


def _header(kind: str, args) -> dict:
    from fastunet import __version__

    return {"benchmark": kind, "version": __version__, "machine": platform.machine(), "cpus": os.cpu_count(),
            "device": f"cpu ({os.cpu_count()} cores, shared)", "date": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "images": args.images, "seed": args.seed}


def _model_record(path) -> dict:
    import hashlib

    from fastunet.modelfile import default_model_path

    path = Path(path or default_model_path())
    return {"file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def scores(args) -> dict:
    """Every style, each model, cleaned up and raw."""
    from fastunet.evaluate import evaluate_synthetic
    from fastunet.synthetic_styles import STYLES

    models = {"new": args.model, **({"previous": args.previous} if args.previous else {})}
    record = {**_header("model-card", args), "models": {k: _model_record(v) for k, v in models.items()}, "styles": {}}
    reused = _reused(args, record["models"].get("previous"))
    for name in _styles(args):
        style = STYLES[name]
        row = {"held_out": style.held_out, "description": style.description}
        for key, path in models.items():
            if key == "previous" and name in reused:
                row[key] = reused[name]
                continue
            t0 = time.perf_counter()
            result = evaluate_synthetic(path, style=name, n_images=args.images, seed=args.seed)
            row[key] = {"on": {k: v for k, v in result.to_dict().items() if k != "raw"}, "off": result.raw,
                        "seconds": round(time.perf_counter() - t0, 1)}
            if key == "new" and args.auto:  # object_size="auto": the estimate, then the run at its size
                auto = evaluate_synthetic(path, style=name, n_images=args.images, seed=args.seed, object_size="auto")
                row[key]["auto"] = {k: v for k, v in auto.to_dict().items() if k != "raw"}
            print(f"{name:<15} {key:<8} F1 {result.instance_f1:.4f} (raw {result.raw['instance_f1']:.4f}) "
                  f"specks {result.specks} (raw {result.raw['specks']})", file=sys.stderr, flush=True)
        row["nuclei"] = row["new"]["on"]["tp"] + row["new"]["on"]["fn"]
        record["styles"][name] = row
    record["figures"] = _score_figures(record)
    return record


def _reused(args, previous: dict | None) -> dict:
    """The previous model's rows of an earlier ``scores`` run of that model on the same images
    (``--reuse FILE``: its ``new`` or its ``previous`` model must be this ``--previous``, by
    content)."""
    if not getattr(args, "reuse", None) or previous is None:
        return {}
    earlier = json.loads(Path(args.reuse).read_text())
    key = next((k for k, m in earlier["models"].items() if m["sha256"] == previous["sha256"]), None)
    if key is None or (earlier["images"], earlier["seed"]) != (args.images, args.seed):
        raise SystemExit(f"{args.reuse} scored another model or other images than --previous on these")
    previous["reused_from"] = f"{Path(args.reuse).name} ({key})"
    return {name: row[key] for name, row in earlier["styles"].items() if key in row}


def _styles(args) -> list[str]:
    from fastunet.evaluate import parse_styles

    return parse_styles(args.styles)


def _speck_rate(r: dict) -> float:
    return r["specks"] / max(r["tp"] + r["fp"], 1)


def _score_figures(record: dict) -> dict:
    rows = record["styles"].values()
    train = [r["new"]["on"]["instance_f1"] for r in rows if not r["held_out"]]
    held = [r["new"]["on"]["instance_f1"] for r in rows if r["held_out"]]
    figures = {"min_f1_training_styles": round(min(train), 4), "min_f1_held_out_styles": round(min(held), 4),
               "max_speck_rate": round(max(_speck_rate(r["new"]["on"]) for r in rows), 4)}
    if all("previous" in r for r in rows):
        figures["styles_below_previous"] = sum(r["new"]["on"]["instance_f1"] < r["previous"]["on"]["instance_f1"]
                                               for r in rows)
    return figures


def sizes(args) -> dict:
    """The estimate on every style and degradation, against the truth."""
    from fastunet.io import open_volume
    from fastunet.segmentation import Segmenter
    from fastunet.synthetic_styles import DEGRADATIONS, degrade, style_image

    record = {**_header("object-size", args), "model": _model_record(args.model), "tolerance": TOLERANCE,
              "degradations": DEGRADATIONS, "rows": []}
    with Segmenter(args.model) as seg:
        record["model_object_size"] = seg.model_object_size
        for name in _styles(args):
            for seed in range(args.seed, args.seed + args.images):
                drawn = style_image(name, (512, 512), seed=seed)
                for how in DEGRADATIONS:
                    image = degrade(drawn, how, seed=seed)
                    measure = seg.estimate_object_size(open_volume(image.image, axes="YX"))
                    error = None if measure.size is None else measure.size / image.object_size - 1
                    record["rows"].append({"style": name, "seed": seed, "degradation": how,
                                           "truth": round(image.object_size, 3),
                                           "estimate": None if measure.size is None else round(measure.size, 3),
                                           "error": None if error is None else round(error, 4),
                                           "reason": measure.reason,
                                           "rounds": [None if r is None else round(r, 3) for r in measure.rounds]})
                    print(f"{name:<15} {seed} {how:<9} truth {image.object_size:6.1f} estimate "
                          f"{measure.size or float('nan'):6.1f} {measure.reason}", file=sys.stderr, flush=True)
    record["figures"] = _size_figures(record["rows"])
    return record


def _size_summary(rows: list[dict]) -> dict:
    import numpy as np

    errors = np.array([abs(r["error"]) for r in rows if r["error"] is not None])
    return {"n": len(rows), "refused": sum(r["error"] is None for r in rows),
            "median_abs_error": round(float(np.median(errors)), 4) if errors.size else None,
            "max_abs_error": round(float(errors.max()), 4) if errors.size else None,
            "wrong": int((errors > TOLERANCE).sum())}


def _size_figures(rows: list[dict]) -> dict:
    s = _size_summary(rows)
    return {"estimates": s["n"], "refused": s["refused"], "wrong_beyond_25pct": s["wrong"],
            "median_abs_error": s["median_abs_error"], "max_abs_error": s["max_abs_error"]}


# ------------------------------------------------------------------------------------ README
def _f(value: float) -> str:
    return f"{value:.3f}"


def render_scores(record: dict) -> str:
    """The README's score table: both models, cleaned up and raw, per style."""
    prev = "previous" in next(iter(record["styles"].values()))
    auto = "auto" in next(iter(record["styles"].values()))["new"]
    head = "| style | | nuclei | fg IoU | instance F1 | precision | recall | specks | F1 raw | specks raw |"
    if auto:
        head += " F1 `--object-size auto` |"
    if prev:
        head += " previous F1 | previous F1 raw |"
    lines = [head, "| " + " | ".join(["---"] * (head.count("|") - 1)) + " |"]
    for name, r in record["styles"].items():
        on, off = r["new"]["on"], r["new"]["off"]
        cells = [f"`{name}`", "held out" if r["held_out"] else "training", str(r["nuclei"]), _f(on["foreground_iou"]),
                 f"**{_f(on['instance_f1'])}**", _f(on["precision"]), _f(on["recall"]), f"{_speck_rate(on):.1%}",
                 _f(off["instance_f1"]), f"{_speck_rate(off):.1%}"]
        if auto:
            cells.append(_f(r["new"]["auto"]["instance_f1"]))
        if prev:
            cells += [_f(r["previous"]["on"]["instance_f1"]), _f(r["previous"]["off"]["instance_f1"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_sizes(record: dict) -> str:
    """The README's size table: per style (rows) and degradation (columns), the median error
    of the estimates and how many were refused."""
    rows = record["rows"]
    styles = list(dict.fromkeys(r["style"] for r in rows))
    ways = list(record["degradations"])
    lines = ["| style | " + " | ".join(ways) + " | all |", "| --- |" + " --- |" * (len(ways) + 1)]

    def cell(subset):
        s = _size_summary(subset)
        err = "-" if s["median_abs_error"] is None else f"{s['median_abs_error']:.0%}"
        refused = f", {s['refused']}/{s['n']} unsure" if s["refused"] else ""
        wrong = f", **{s['wrong']} off by > 25 %**" if s["wrong"] else ""
        return f"{err}{refused}{wrong}"

    for name in styles:
        mine = [r for r in rows if r["style"] == name]
        lines.append(f"| `{name}` | " + " | ".join(cell([r for r in mine if r["degradation"] == w]) for w in ways)
                     + f" | {cell(mine)} |")
    lines.append("| all | " + " | ".join(cell([r for r in rows if r["degradation"] == w]) for w in ways)
                 + f" | {cell(rows)} |")
    return "\n".join(lines)


def _newest(prefix: str) -> tuple[Path, dict]:
    paths = sorted((HERE / "results").glob(f"{prefix}-*.json"))
    if not paths:
        raise SystemExit(f"no benchmarks/results/{prefix}-*.json: run this script's {prefix} command first")
    return paths[-1], json.loads(paths[-1].read_text())


def publish(readme_path, prefix: str, render, markers: tuple[str, str], script: str = "model_card.py") -> None:
    """Render the newest ``benchmarks/results/<prefix>-*.json`` between ``markers`` of the
    README's "The default model" section, with a note naming the file."""
    sys.path.insert(0, str(HERE))
    from report import update_readme

    path, record = _newest(prefix)
    note = (f"<!-- generated by python benchmarks/{script} readme from benchmarks/results/{path.name}: "
            f"{record['images']} images per style, seeds {record['seed']}.., {record['date']} -->")
    update_readme(Path(readme_path), f"{note}\n{render(record)}", begin=markers[0], end=markers[1],
                  heading="The default model")
    print(f"{readme_path}: {prefix} table from {path.name}")


def readme(args) -> None:
    for prefix, render, markers in (("model-card", render_scores, SCORES), ("object-size", render_sizes, SIZES)):
        publish(args.readme, prefix, render, markers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, images in (("scores", 16), ("sizes", 3)):
        p = sub.add_parser(name)
        p.add_argument("--model", help="model file (default: the bundled one)")
        p.add_argument("--images", type=int, default=images, help=f"images per style (default {images})")
        p.add_argument("--seed", type=int, default=2026, help="first seed (default 2026, never used in training)")
        p.add_argument("--out", default="model-card", help="folder for the JSON file")
        p.add_argument("--styles", help="all (default), held-out, train or names separated by commas")
        if name == "scores":
            p.add_argument("--previous", help="an earlier model file to score on the same images")
            p.add_argument("--reuse", help="an earlier scores JSON in which the --previous model was scored (as "
                           "--model or --previous) on the same images: its rows are taken instead of scoring it again")
            p.add_argument("--auto", action="store_true", help="also score the model with object_size=auto")
    args = parse_with_readme(parser, sub, argv)
    if args.command == "readme":
        readme(args)
        return 0
    record = (scores if args.command == "scores" else sizes)(args)
    write_record(args.out, record, render_scores(record) if args.command == "scores" else render_sizes(record))
    return 0


def parse_with_readme(parser, sub, argv: list[str] | None):
    """Add the ``readme`` command (``--readme`` path) to ``sub`` and parse ``argv``."""
    p = sub.add_parser("readme")
    p.add_argument("--readme", default=str(HERE.parent / "README.md"))
    return parser.parse_args(argv)


def write_record(out: str, record: dict, table: str) -> Path:
    """Write ``record`` to ``<out>/<benchmark>-<date-time>.json``; print ``table`` and the path."""
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{record['benchmark']}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(record, indent=1))
    print(table)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    raise SystemExit(main())
