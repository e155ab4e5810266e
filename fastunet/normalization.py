"""How a model expects its input intensities to be normalized.

The statistics are always computed from the data of a whole volume (or of a whole slice,
when ``scope == "slice"``), never per tile, so that tiled inference has no seams. The model
file stores a :class:`Normalization` in its metadata; training and inference share it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["Normalization"]

_MODES = ("percentile", "meanstd", "fixed", "none")
_SCOPES = ("volume", "slice")


@dataclass(frozen=True)
class Normalization:
    """Intensity normalization ``x -> (x - offset) / scale``, per channel.

    Parameters
    ----------
    mode : {"percentile", "meanstd", "fixed", "none"}
        ``percentile``: offset and scale from the ``low``/``high`` percentiles of the data,
        mapping them to 0 and 1. ``meanstd``: the data's mean and standard deviation.
        ``fixed``: the stored ``offset`` and ``scale`` (e.g. 0 and 255 for 8-bit images).
        ``none``: the data as it is.
    low, high : float
        Percentiles for ``mode="percentile"``.
    offset, scale : float
        Constants for ``mode="fixed"``.
    scope : {"volume", "slice"}
        Statistics from the whole volume, or from each 2D slice separately.
    """

    mode: str = "percentile"
    low: float = 1.0
    high: float = 99.8
    offset: float = 0.0
    scale: float = 1.0
    scope: str = "volume"

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise ValueError(f"Normalization mode must be one of {_MODES}; got {self.mode!r}.")
        if self.scope not in _SCOPES:
            raise ValueError(f"Normalization scope must be one of {_SCOPES}; got {self.scope!r}.")
        if self.mode == "percentile" and not 0.0 <= self.low < self.high <= 100.0:
            raise ValueError(
                f"Expected percentiles 0 <= low < high <= 100; got low={self.low}, high={self.high}."
            )
        if self.mode == "fixed" and not self.scale > 0:
            raise ValueError(f"Expected a positive fixed scale; got {self.scale}.")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Normalization":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"Unknown Normalization fields {unknown}; expected some of {sorted(known)}.")
        return cls(**data)

    def stats(self, sample: np.ndarray) -> tuple[float, float]:
        """``(offset, scale)`` for one channel, from a sample of its values.

        ``sample`` holds the values the statistics are taken over (a whole volume or slice,
        or a uniform subsample of one). NaN values are ignored.
        """
        if self.mode == "none":
            return 0.0, 1.0
        if self.mode == "fixed":
            return float(self.offset), float(self.scale)
        values = np.asarray(sample, dtype=np.float64).ravel()
        values = values[np.isfinite(values)]
        if values.size == 0:
            return 0.0, 1.0
        if self.mode == "percentile":
            lo, hi = np.percentile(values, [self.low, self.high])
            offset, scale = float(lo), float(hi - lo)
        else:
            offset, scale = float(values.mean()), float(values.std())
        return offset, (scale if scale > 1e-12 else 1.0)

    @staticmethod
    def apply(x: np.ndarray, offset: float, scale: float) -> np.ndarray:
        """``(x - offset) / scale`` as float32."""
        return ((np.asarray(x, dtype=np.float32) - np.float32(offset)) / np.float32(scale)).astype(
            np.float32, copy=False
        )
