"""Intensity normalisation exactly as a model's ``model.json`` asks.

Array contract: any float array (typically the resampled canonical volume ``[x, y, z]``) in the
scan's units (Hounsfield units for CT); returns float32 of the same shape.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np


def normalise(volume: np.ndarray, spec: Mapping[str, Any]) -> np.ndarray:
    """``{"kind": "window", "low_hu": L, "high_hu": H}``: clip to [L, H] and scale to 0..1;
    ``{"kind": "zscore"}``: subtract the volume's mean and divide by its standard deviation."""
    kind = spec.get("kind")
    data = np.asarray(volume, dtype=np.float32)
    if kind == "window":
        low, high = float(spec["low_hu"]), float(spec["high_hu"])
        result = np.clip(data, low, high)
        result -= low
        result *= 1.0 / (high - low)
        return result
    if kind == "zscore":
        mean = float(np.mean(data, dtype=np.float64))
        std = float(np.std(data, dtype=np.float64))
        # A constant volume (std 0) becomes all zeros rather than NaN.
        return ((data - mean) / (std if std > 1e-6 else 1.0)).astype(np.float32, copy=False)
    raise ValueError(f"unknown normalisation kind {kind!r}; expected 'window' or 'zscore'")


def pad_value(spec: Mapping[str, Any], normalised: np.ndarray) -> float:
    """The value that stands for "nothing here" (air) when a volume is padded for the network."""
    if spec.get("kind") == "window":
        return 0.0
    return float(normalised.min()) if normalised.size else 0.0
