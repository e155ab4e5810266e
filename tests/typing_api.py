"""Calls of the public API that a type checker must accept (checked by mypy in CI, see
[tool.mypy] in pyproject.toml; not a pytest module)."""

from __future__ import annotations

from typing import assert_type

import numpy as np

from fastunet import Segmenter, segment
from fastunet.io import VolumeSource, open_volume
from fastunet.segmentation.options import SegmentOptions, SegmentResult

image = np.zeros((2, 64, 64), np.float32)
result = segment(image, None, None, axes="CYX", channels="DAPI", lazy=False, output_kind=("instances", "probs"))
assert_type(result, SegmentResult)
options: SegmentOptions = {"resume": True, "object_size": "auto", "channels": [0, 1], "series": 2}
with Segmenter("model.safetensors", device="cpu", tile=572) as seg:
    seg.segment("plate.ome.zarr", "plate.ome.zarr/labels/nuclei", **options)
    seg.segment("movie.tif", "movie_seg.tif", split="watershed", min_size=20, block=(1, 512, 512))
volume = open_volume("cells.ome.zarr", channels=1, series=0, timepoints=True)
assert_type(volume, VolumeSource)
assert_type(volume.at_time(0).channel_names, tuple[str, ...])
