"""Training from one or two annotated images: what ``fastunet train``'s defaults reach, and in how long.

For each count N (default 1 and 2) the script draws N synthetic 512 x 512 images of one style
(seeds 3000.., never used by the default model's recipe nor by ``fastunet evaluate``), trains
a model on them with the defaults of ``fastunet train`` (no option but ``--device``), and
scores it on freshly drawn images of the same style that it never saw (``fastunet evaluate
--synthetic``, seeds 2026..), next to the bundled default model on the same images. It records
the wall time and the CPU time of each training run (validation and checkpoints included).
With ``--init MODEL`` each run fine-tunes that model instead (``fastunet train --init``: its
network and normalization, its weights to start from).

    python benchmarks/few_images.py --out few-images            # styles textured, counts 1 and 2
    python benchmarks/few_images.py --style classic --counts 1 --eval-images 4
    python benchmarks/few_images.py --style elongated --init 2d --lr 3e-4 --iterations 1000   # fine-tuning
    python benchmarks/few_images.py --counts 1 --amp bf16   # bf16 autocast (a CPU with bf16 units, or CUDA)

The result is a JSON file in ``--out`` (its ``figures`` as the results table of
``benchmarks/README.md`` shows them; copy it to ``benchmarks/results/``) and a Markdown table
on standard output. A CPU
measurement on whatever else the machine is doing: the times say what this machine did.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

FIRST_SEED = 3000  # training images: outside the default model's 10000.. and evaluate's 2026..


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


def run_count(count: int, *, style: str, out: Path, device: str, eval_images: int, iterations: int | None,
              init: str | None = None, lr: float | None = None, amp: str | None = None) -> dict:
    """Draw ``count`` images, train with the defaults (fine-tune ``init`` if given), score on
    fresh images of ``style``."""
    import torch

    from fastunet.evaluate import evaluate_synthetic
    from fastunet.synthetic_styles import write_style_images
    from fastunet.train import TrainConfig, fine_tune_config, train

    folder = out / f"{style}-{count}{'-init' if init else ''}"
    images, labels = write_style_images(folder, range(FIRST_SEED, FIRST_SEED + count), style)
    options = {"device": device, **({} if iterations is None else {"iterations": iterations}),
               **({} if lr is None else {"lr": lr}), **({} if amp is None else {"amp": amp})}
    config = fine_tune_config(init, **options) if init else TrainConfig(**options)
    wall, cpu = time.perf_counter(), _cpu_seconds()
    result = train(images, labels, folder / "model.safetensors", config=config, progress=False, overwrite=True,
                   init=init)
    wall, cpu = time.perf_counter() - wall, _cpu_seconds() - cpu
    scores = evaluate_synthetic(result.output, n_images=eval_images, style=style, device=device)
    return {
        "images": count, "style": style, "seeds": [FIRST_SEED, FIRST_SEED + count - 1], "init": init, "lr": lr, "amp": amp,
        "steps": result.steps, "best_step": result.best_step, "val": result.val,
        "train_wall_s": round(wall, 1), "train_cpu_s": round(cpu, 1), "torch_threads": torch.get_num_threads(),
        "test": scores.to_dict(), "model": os.path.relpath(result.output, out),
    }


def figures(rows: list[dict], default: dict) -> dict:
    """The record's headline numbers, named as the results table of benchmarks/README.md shows them."""
    out = {}
    for r in rows:
        key = f"{r['images']}img" + ("_finetuned" if r.get("init") else "")
        out.update({f"{key}.test_fg_iou": round(r["test"]["foreground_iou"], 4),
                    f"{key}.test_instance_f1": round(r["test"]["instance_f1"], 4),
                    f"{key}.train_wall_min": round(r["train_wall_s"] / 60, 2),
                    f"{key}.train_cpu_min": round(r["train_cpu_s"] / 60, 2)})
    out.update({"default_model.test_fg_iou": round(default["foreground_iou"], 4),
                "default_model.test_instance_f1": round(default["instance_f1"], 4)})
    return out


def describe(style: str, init: str | None, lr: float | None, iterations: int | None, amp: str | None = None) -> str:
    """The run in a line (the results table's note): style, from scratch or fine-tuned, settings."""
    how = f"fine-tuning {init}" if init else "from scratch"
    settings = ", ".join(f"{k} {v:g}" for k, v in (("lr", lr), ("steps", iterations)) if v is not None)
    settings = ", ".join(s for s in (settings, f"amp {amp}" if amp else "") if s)
    return f"{style}: {how}" + (f" ({settings})" if settings else " (fastunet train's defaults)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="few-images", help="folder for the images, models and the JSON")
    parser.add_argument("--style", default="textured", help="synthetic style (fastunet/synthetic_styles.py)")
    parser.add_argument("--counts", default="1,2", help="numbers of training images, e.g. 1,2")
    parser.add_argument("--eval-images", type=int, default=8, help="fresh test images of the style")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--iterations", type=int, help="training steps (default: fastunet train's; for a smoke run)")
    parser.add_argument("--init", metavar="MODEL", help="fine-tune this model (2d: the default model) instead")
    parser.add_argument("--lr", type=float, help="learning rate (default: fastunet train's)")
    parser.add_argument("--amp", choices=("none", "bf16"), help="bf16 autocast (default: fastunet train's, none)")
    args = parser.parse_args(argv)

    from fastunet import __version__
    from fastunet.evaluate import evaluate_synthetic

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [run_count(int(n), style=args.style, out=out, device=args.device, eval_images=args.eval_images,
                      iterations=args.iterations, init=args.init, lr=args.lr, amp=args.amp)
            for n in args.counts.split(",")]
    default = evaluate_synthetic(n_images=args.eval_images, style=args.style, device=args.device).to_dict()
    record = {"benchmark": "few-images", "note": describe(args.style, args.init, args.lr, args.iterations, args.amp),
              "version": __version__, "machine": platform.machine(),
              "cpus": os.cpu_count(), "device": f"{args.device} ({os.cpu_count()} cores)",
              "date": time.strftime("%Y-%m-%dT%H:%M:%S"), "style": args.style, "iterations": args.iterations,
              "init": args.init, "lr": args.lr, "amp": args.amp,
              "eval_images": args.eval_images, "figures": figures(rows, default), "rows": rows,
              "default_model": default}
    path = out / f"few-images-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(record, indent=2))
    what = f"fine-tuning {args.init} on" if args.init else "training images"
    print(f"| {what} ({args.style}) | steps (best) | train wall / CPU | fg IoU | instance F1 |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        t = r["test"]
        print(f"| {r['images']} | {r['steps']} ({r['best_step']}) | {r['train_wall_s'] / 60:.1f} / "
              f"{r['train_cpu_s'] / 60:.1f} min | {t['foreground_iou']:.4f} | {t['instance_f1']:.4f} |")
    print(f"| bundled default model | | | {default['foreground_iou']:.4f} | {default['instance_f1']:.4f} |")
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
