"""How good is a 3D model on synthetic stacks, and how a 2D model run slice by slice compares.

Each stack of a style of :mod:`fastunet.synthetic3d` (fresh seeds from :data:`SEED_3D`, which
the 3D recipe never trains on) is segmented through the engine (:func:`fastunet.segment`,
overlap tiles with mirrored borders) by

* the **3D model**, the volume as a volume: its objects are the 3D connected components of
  its foreground (what ``output_kind="instances"`` writes);
* a **2D model slice by slice** (the default model unless told otherwise): its objects are
  its per-slice masks joined across Z (3D components, what ``connect_z=True`` writes): the
  objects a user of a 2D model gets for a stack.

Scores (:func:`fastunet.metrics.score`): **3D instance F1** at IoU 0.5 against the true 3D
objects (a nucleus counts once, however many slices it spans), foreground IoU, and the
**per-slice instance F1** (each Z slice scored as a 2D image: how the slices look).
"""

from __future__ import annotations

import numpy as np

from .errors import UserError
from .metrics import Evaluation, score

__all__ = ["SEED_3D", "evaluate_volumes", "compare_styles", "comparison_table"]

SEED_3D = 30_000  # the stacks scored here: outside the 3D recipe's 20000..


def _check_seeds(seeds: range) -> None:
    from .default_model3d import TRAIN_SEEDS_3D

    overlap = sorted(set(seeds) & set(TRAIN_SEEDS_3D))
    if overlap:
        raise UserError(f"Seeds {overlap[0]}..{overlap[-1]} trained the default 3D model; pick seeds outside "
                        f"{TRAIN_SEEDS_3D.start}..{TRAIN_SEEDS_3D.stop - 1} (e.g. {SEED_3D}).")


def evaluate_volumes(model, volumes, **network) -> dict[str, Evaluation]:
    """Score ``model`` on ``volumes`` (``(image, truth)`` stacks): ``{"volume": 3D scores,
    "slices": per-slice scores}``. A 3D network segments each stack as a volume, a 2D one
    slice by slice (its masks joined across Z for the 3D scores). ``network``: the options
    of :class:`fastunet.Segmenter` (device, tile, ...)."""
    from .segmentation import Segmenter

    preds, truths = [], []
    with Segmenter(model, **network) as seg:
        for image, truth in volumes:
            classes = np.asarray(seg.segment(image, None, axes="ZYX", output_kind="labels", progress=False))
            preds.append(classes != 0)
            truths.append(truth)
    return {"volume": score(preds, truths),
            "slices": score([p for v in preds for p in v], [t for v in truths for t in v])}


def compare_styles(model_3d="3d", model_2d=None, *, styles=None, n_volumes: int = 2, seed: int = SEED_3D,
                   shape=(32, 128, 128), touching: float | None = 0.9, density: float | None = 250.0,
                   progress=None, **network) -> dict[str, dict]:
    """The 3D model against the 2D model run slice-wise, per style, on the same fresh stacks.

    Parameters
    ----------
    model_3d, model_2d
        The 3D network (default: the bundled ``"3d"``) and the 2D one (default: the bundled
        default model).
    styles : list of str, optional
        Names of :data:`fastunet.synthetic3d.STYLES_3D` (default all, held out included).
    n_volumes, seed, shape
        ``n_volumes`` stacks of ``shape`` per style, seeds ``seed, seed + 1, ...``.
    touching, density
        Override the styles' clustering (default: 90 % of the nuclei placed against another,
        250 per 100^3 px^3: dense clusters of touching nuclei); None keeps the style's.
    progress : callable, optional
        ``progress(style, row)`` after each style.

    Returns
    -------
    dict
        Per style: ``{"held_out", "z_step", "stacks", "objects", "3d": {...}, "2d": {...}}``,
        each model's ``volume`` and ``slices`` scores as dicts.
    """
    from .synthetic3d import STYLES_3D, style_volume

    names = list(styles or STYLES_3D)
    unknown = [n for n in names if n not in STYLES_3D]
    if unknown:
        raise UserError(f"Unknown 3D style {', '.join(unknown)}; expected some of {', '.join(STYLES_3D)}.")
    seeds = range(seed, seed + n_volumes)
    _check_seeds(seeds)
    overrides = {k: v for k, v in (("touching", touching), ("density", density)) if v is not None}
    rows = {}
    for name in names:
        drawn = [style_volume(name, tuple(shape), seed=s, **overrides) for s in seeds]
        volumes = [(image, truth) for image, truth, _ in drawn]
        row = {"held_out": STYLES_3D[name].held_out, "z_step": drawn[0][2], "stacks": len(volumes),
               "objects": int(sum(t.max() for _, t in volumes))}
        for key, model in (("3d", model_3d), ("2d", model_2d)):
            result = evaluate_volumes(model, volumes, **network)
            row[key] = {part: r.to_dict() for part, r in result.items()}
        rows[name] = row
        if progress is not None:
            progress(name, row)
    return rows


def comparison_table(rows: dict[str, dict]) -> str:
    """A Markdown table: per style, the 3D model's and the 2D model's 3D instance F1,
    foreground IoU and per-slice F1."""
    lines = ["| style | held out | Z step (px) | stacks | objects | 3D F1, 3D model | 3D F1, 2D slice-wise | "
             "fg IoU 3D / 2D | slice F1 3D / 2D |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in rows.items():
        a, b = r["3d"], r["2d"]
        lines.append(
            f"| {name} | {'yes' if r['held_out'] else 'no'} | {r['z_step']:g} | {r['stacks']} | {r['objects']} | "
            f"{a['volume']['instance_f1']:.3f} | {b['volume']['instance_f1']:.3f} | "
            f"{a['volume']['foreground_iou']:.3f} / {b['volume']['foreground_iou']:.3f} | "
            f"{a['slices']['instance_f1']:.3f} / {b['slices']['instance_f1']:.3f} |")
    return "\n".join(lines)
