"""Training as in Ronneberger, Fischer & Brox (2015).

* **data** (:mod:`~fastunet.train.datasets`): pairs of images and instance labels
  (:func:`load_pairs`: TIFF files, folders of TIFFs, zarr arrays or groups, or numpy arrays);
  stacks ``(Z, H, W)`` are sets of 2D slices. Each image is normalized with the
  :class:`~fastunet.normalization.Normalization` the model will carry, over the same scope
  inference uses (the whole volume, or each slice).
* **targets** (:mod:`~fastunet.train.weightmap`): per training slice, once, the two-class
  target with background on the borders where objects touch and the paper's weight map.
* **samples** (:mod:`~fastunet.train.augment`): random tiles with elastic deformation,
  rotation, flips and gray-value changes, input tiles of the valid size ``tile`` whose labels
  cover the network's output.
* **optimisation** (:mod:`~fastunet.train.loss`, :mod:`~fastunet.train.loop`): the
  pixel-weighted softmax cross-entropy, SGD with momentum 0.99 on large tiles with small
  batches (the paper) or Adam; dropout at the end of the contracting path is active in
  training mode; optional bf16 autocast on CUDA.
* **bookkeeping**: validation foreground IoU (and instance F1) on held-out images, a tqdm
  progress bar, resumable checkpoints (:mod:`~fastunet.train.checkpoint`: safetensors, no
  pickle), a training-curve PNG (:func:`fastunet.figures.write_curve`) and the final model
  file with its normalization.
* **fine-tuning** (:mod:`~fastunet.train.finetune`): ``train(..., init=model_file)`` starts
  from a model's weights (the bundled default model: ``init="2d"``) with
  :func:`fine_tune_config`'s config (the file's network and normalization).

``import fastunet`` does not import this package.
"""

from __future__ import annotations

from .augment import AugmentConfig, augment_batch
from .checkpoint import check_model_name, checkpoint_path, load_checkpoint, save_checkpoint
from .config import TrainConfig
from .datasets import TrainingPair, load_pairs
from .finetune import fine_tune_config
from .loop import TrainResult, train
from .loss import weighted_cross_entropy
from .weightmap import prepare, weight_map

__all__ = [
    "AugmentConfig",
    "TrainConfig",
    "TrainResult",
    "TrainingPair",
    "augment_batch",
    "check_model_name",
    "checkpoint_path",
    "fine_tune_config",
    "load_checkpoint",
    "load_pairs",
    "prepare",
    "save_checkpoint",
    "train",
    "weight_map",
    "weighted_cross_entropy",
]
