"""The synthetic seeds the default model's recipe draws (:mod:`fastunet.default_model`): its
training images and the validation images its decision threshold is chosen on. Evaluations
(:func:`fastunet.evaluate.evaluate_synthetic`, the model card's seeds 2026..) keep clear of
the training seeds; this module imports nothing of fastunet, so that both sides can read it.
"""

from __future__ import annotations

__all__ = ["TRAIN_SEEDS", "CALIBRATION_SEEDS"]

TRAIN_SEEDS = range(10_000, 10_240)  # 240 synthetic images, 20 per style: 216 for training, 24 for validation
CALIBRATION_SEEDS = range(70_000, 70_008)  # 8 validation images a training style: neither trained on nor the card's
