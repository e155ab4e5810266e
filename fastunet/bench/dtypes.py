"""The CPU's dtype policy checked: how far bf16 moves the default model's results from fp32.

:func:`compare_dtypes` segments the same images (or volumes) in fp32 and in bf16
(``Segmenter`` on the CPU, one backend) and measures what the auto dtype must keep: the
probabilities' largest and mean difference, the share of identical class labels, and the
instance F1 of each against the true objects. :func:`style_agreement` does it on synthetic
images of every style (P7 records it; a test checks the tolerances below on a small image),
:func:`volume_agreement` with the bundled 3D model on synthetic volumes of every 3D style.
"""

from __future__ import annotations

import numpy as np

__all__ = ["compare_dtypes", "style_agreement", "volume_agreement", "worst_of", "TOLERANCES", "INT8_TOLERANCES"]

# What bf16 may change against fp32 (the auto dtype's promise on CPUs with bf16 units):
# probabilities within MAX_PROB (any pixel) and MEAN_PROB (on average), at least LABELS of the
# class labels identical, instance F1 within F1 of fp32's.
TOLERANCES = {"max_prob": 0.1, "mean_prob": 0.005, "labels": 0.995, "f1": 0.01}
# What int8 (dtype="int8": quantized after training, OpenVINO) keeps against fp32: looser than
# bf16's, which is why dtype="auto" never picks it. Single pixels near an object's edge, where
# the class is a close call, may flip (any probability difference); at least 99 % of the labels
# identical, probabilities within 0.01 on average, instance F1 within 0.02.
INT8_TOLERANCES = {"max_prob": 1.0, "mean_prob": 0.01, "labels": 0.99, "f1": 0.02}


def compare_dtypes(images, truths, *, model=None, backend: str = "torch", dtype: str = "bf16",
                   axes: str = "YX") -> dict:
    """``dtype`` against fp32 on ``images`` (2-D arrays, or volumes with ``axes="ZYX"`` and a 3D
    model: scored as 3D objects) with instance labels ``truths``.

    Parameters
    ----------
    images, truths : sequences of numpy.ndarray
    model : optional
        As for :class:`~fastunet.segmentation.Segmenter` (default: the bundled model).
    backend : str
        The backend of both runs (``"torch"`` or ``"openvino"``).
    dtype : str
        The dtype compared with fp32.
    axes : str
        The images' axes (``"YX"``, or ``"ZYX"``).

    Returns
    -------
    dict
        ``max_prob_diff``, ``mean_prob_diff``, ``labels_identical`` (a fraction), ``f1_fp32``,
        ``f1_<dtype>`` and ``f1_diff`` (the absolute difference), ``pixels``.
    """
    from ..metrics import score
    from ..segmentation import Segmenter

    runs = {}
    for name in ("fp32", dtype):
        with Segmenter(model, device="cpu", backend=backend, dtype=name) as seg:
            results = [seg.segment(np.asarray(image), None, axes=axes, output_kind=("instances", "probs"),
                                   progress=False) for image in images]
            runs[name] = [(np.asarray(ids), np.asarray(probs, np.float32)) for ids, probs in results]
    diffs = [np.abs(a[1] - b[1]) for a, b in zip(runs["fp32"], runs[dtype])]
    same = sum(int((a[1].argmax(0) == b[1].argmax(0)).sum()) for a, b in zip(runs["fp32"], runs[dtype]))
    pixels = sum(int(np.prod(t.shape)) for t in truths)
    f1 = {name: score([ids for ids, _ in runs[name]], list(truths)).instance_f1 for name in runs}
    return {"max_prob_diff": float(max(d.max() for d in diffs)),
            "mean_prob_diff": float(sum(d.sum() for d in diffs) / sum(d.size for d in diffs)),
            "labels_identical": same / pixels, "f1_fp32": f1["fp32"], f"f1_{dtype}": f1[dtype],
            "f1_diff": abs(f1[dtype] - f1["fp32"]), "pixels": pixels}


def worst_of(results) -> dict:
    """The worst of several :func:`compare_dtypes` results (e.g. one per style): the largest
    probability differences and F1 difference, the smallest share of identical labels."""
    results = list(results)
    return {"max_prob_diff": max(r["max_prob_diff"] for r in results),
            "mean_prob_diff": max(r["mean_prob_diff"] for r in results),
            "labels_identical": min(r["labels_identical"] for r in results),
            "f1_diff": max(r["f1_diff"] for r in results)}


def style_agreement(*, styles=None, images: int = 2, shape=(512, 512), seed: int = 2026,
                    backends=("torch",), dtype: str = "bf16") -> dict:
    """:func:`compare_dtypes` (``dtype`` vs fp32, the bundled model) on ``images`` synthetic
    images of each style (default: all of :mod:`fastunet.synthetic_styles`, drawn from
    ``seed``...), for each backend; ``{backend: {style: result}}``."""
    from ..synthetic_styles import style_image, style_names

    out = {}
    for backend in backends:
        out[backend] = {}
        for style in styles or style_names():
            drawn = [style_image(style, tuple(shape), seed=seed + i) for i in range(images)]
            out[backend][style] = compare_dtypes([d.image for d in drawn], [d.labels for d in drawn], backend=backend,
                                                 dtype=dtype)
    return out


def volume_agreement(*, styles=None, volumes: int = 2, shape=(32, 128, 128), seed: int = 31_000,
                     backend: str = "torch", dtype: str = "bf16") -> dict:
    """:func:`compare_dtypes` (``dtype`` vs fp32) of the bundled 3D model on ``volumes``
    synthetic volumes of each 3D style (default: all of :mod:`fastunet.synthetic3d`'s, the
    held-out ``deep`` too, drawn from ``seed``...; not the model's training seeds);
    ``{style: result}``."""
    from ..synthetic3d import style_names_3d, style_volume

    out = {}
    for style in styles or style_names_3d():
        drawn = [style_volume(style, tuple(shape), seed=seed + i) for i in range(volumes)]
        out[style] = compare_dtypes([image for image, _, _ in drawn], [labels for _, labels, _ in drawn], model="3d",
                                    backend=backend, dtype=dtype, axes="ZYX")
    return out
