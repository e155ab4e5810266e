"""The converted network with its class scores turned into what the engine keeps, inside
OpenVINO's graph: :func:`labels_and_confidence`.

The engine's default run (object ids, the clean-up by ``min_confidence``) needs per voxel its
class (the scores' argmax) and its object probability (one minus the background's softmax
probability). Computed in numpy from the network's float32 scores, that is a copy of two
float32 channels a voxel and five passes over them in the engine's threads, beside the
network on the same cores; computed by OpenVINO as the network's last operations, it costs
the network's threads a few elementwise passes over one channel, and the engine receives two
bytes a voxel (``benchmarks/results/*-segment-ab.json``, see the README's CPU section).

The object probability comes as ``uint8`` in steps of 1/255 (``round(255 p)``): a mean over
an object's voxels is then within 1/510 of the float one, and it sums without a conversion.
"""

from __future__ import annotations

import importlib

import numpy as np

from .predictor import CONFIDENCE_SCALE

__all__ = ["labels_and_confidence"]


def _opset():
    """OpenVINO's operation factory (``openvino.opset13``; ``openvino.runtime.opset13`` before 2025)."""
    try:
        return importlib.import_module("openvino.opset13")
    except ImportError:
        return importlib.import_module("openvino.runtime.opset13")


def labels_and_confidence(model, num_classes: int):
    """A copy of the converted network ``model`` (one output: scores ``(N, K, h, w)``) whose
    outputs are the labels ``(N, h, w)`` uint8 (``(N, d, h, w)`` for a 3D network), the first largest score's class as
    :func:`~fastunet.engine.predictor.class_labels` gives it, and the object probability
    ``(N, 1, h, w)`` uint8, ``round(255 * (1 - softmax(scores)[:, 0]))``.

    Two classes: both from the difference ``d`` of the scores (class 1 where ``d > 0``; the
    object probability is the logistic of ``d``). More: the first class whose score equals
    the maximum, and the softmax."""
    ops = _opset()
    model = model.clone()
    result = model.get_results()[0]
    scores = result.input_value(0)
    if num_classes == 2:
        background, obj = ops.split(scores, 1, 2).outputs()
        margin = ops.subtract(obj, background)
        labels = ops.squeeze(ops.greater(margin, np.float32(0)), [1])
        probability = ops.sigmoid(margin)
    else:
        best = ops.reduce_max(scores, [1], keep_dims=True)
        spatial = scores.get_partial_shape().rank.get_length() - 2
        index = ops.constant(np.arange(num_classes, dtype=np.int32).reshape(1, -1, *[1] * spatial))
        missing = ops.constant(np.int32(num_classes))
        labels = ops.reduce_min(ops.select(ops.equal(scores, best), index, missing), [1], keep_dims=False)
        background = ops.split(ops.softmax(scores, 1), 1, num_classes).output(0)
        probability = ops.subtract(np.float32(1), background)
    scaled = ops.round(ops.multiply(probability, np.float32(CONFIDENCE_SCALE)), "half_to_even")
    # the network's Result now gives the labels (a new Result beside it would leave the old one
    # hanging from the scores, which OpenVINO cannot serialize for its compiled-model cache)
    result.input(0).replace_source_output(ops.convert(labels, "u8").output(0))
    model.add_results([ops.result(ops.convert(scaled, "u8"))])
    model.validate_nodes_and_infer_types()
    return model
