"""``dtype="int8"`` on the OpenVINO backend: the converted network quantized after training.

NNCF's post-training quantization (``nncf.quantize``: 8-bit weights per output channel and
8-bit activations, their ranges from calibration tiles, then a bias correction) turns the
converted network (:func:`fastunet.engine.openvino_backend.converted_model`) into one whose
convolutions OpenVINO's CPU plugin runs on the CPU's int8 dot-product units (AVX512-VNNI,
AVX-VNNI, AMX-INT8); what stays in floating point runs in bf16 where the CPU has bf16 units.
The first convolution (the image itself, whose bright specks would set the 8-bit range of
everything dimmer) and the 1x1 head stay in floating point, and activations are quantized
asymmetrically (NNCF's ``MIXED`` preset): on the bundled model's hardest styles (``debris``,
``dim``, ``autofluorescent``, ``clumped``, ``mitotic``, 2 images each) that moved 0.2-0.7 % of
the class labels against fp32 where quantizing everything moved up to 1.3 %, for a network
1.66x as fast as bf16 instead of 1.8x (measured here while choosing; P7 has the figures).

The calibration tiles (:func:`calibration_tiles`) are synthetic nuclei of the bundled model's
training styles (:mod:`fastunet.synthetic_styles`, seeds of their own), normalized as the
engine normalizes an input (percentile, 1-99.8 %): the domain the bundled model was made for
and where its int8 results are checked (P7). A model of other images should be checked with
``fastunet evaluate`` before it is trusted in int8. The backend keeps the quantized network
beside the converted ones, so NNCF runs (seconds) once per model and machine, and is
imported only then.
"""

from __future__ import annotations

import numpy as np

from .. import geometry
from ..errors import UserError

__all__ = ["quantize", "calibration_tiles", "CALIBRATION_TILES", "CALIBRATION_VERSION"]

CALIBRATION_TILES = 24  # one tile of each calibration image, two of each style
CALIBRATION_VERSION = "2"  # part of the cache key: another calibration or recipe quantizes again
_STYLES = ("classic", "small", "textured", "clumped", "mitotic", "widefield", "large", "debris", "autofluorescent",
           "saturated", "dividing", "dim")
_SEED = 31_000  # the calibration images' first seed (not the training seeds 10000.., nor the scores' 2026..)


def calibration_tiles(config, *, count: int = CALIBRATION_TILES) -> list[np.ndarray]:
    """``count`` normalized ``(1, C, T, T)`` float32 tiles of synthetic nuclei, T the smallest
    valid tile of at least 316 px for ``config``'s depth (every channel gets the image)."""
    from ..normalization import Normalization
    from ..synthetic_styles import style_image

    edge = next(t for t in geometry.valid_input_sizes(config.depth, max_size=4096) if t >= 316)
    norm = Normalization()
    tiles = []
    for i in range(count):
        image = style_image(_STYLES[i % len(_STYLES)], (edge, edge), seed=_SEED + i).image.astype(np.float64)
        offset, scale = norm.stats(image)
        x = ((image - offset) / scale).astype(np.float32)
        tiles.append(np.repeat(x[None, None], config.in_channels, axis=1))
    return tiles


def quantize(converted, config):
    """The int8 network of ``converted`` (an OpenVINO model of a network of ``config``)."""
    try:
        import nncf
    except ImportError as exc:
        raise UserError(f'dtype="int8" quantizes the network with NNCF, which cannot be imported here ({exc}): '
                        "pip install 'fastunet[openvino]', or use dtype=\"bf16\" or \"fp32\".") from None
    convs = [op.get_friendly_name() for op in converted.get_ordered_ops() if op.get_type_name() == "Convolution"]
    tiles = calibration_tiles(config)
    return nncf.quantize(converted, nncf.Dataset(tiles), subset_size=len(tiles), preset=nncf.QuantizationPreset.MIXED,
                         ignored_scope=nncf.IgnoredScope(names=[convs[0], convs[-1]]))
