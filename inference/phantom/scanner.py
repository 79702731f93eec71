"""What the scanner adds: animal bed, scanner blur, low-frequency bias and quantum noise.

Arrays are (x, y, z) in Hounsfield units, float32, modified in place where noted.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def paint_bed(hu: np.ndarray, spacing_mm: float, ventral_y_mm: float, rng: np.random.Generator) -> None:
    """A curved plastic cradle just below (ventral to) the animal, across the whole field of view."""
    nx, ny, _ = hu.shape
    x = np.arange(nx) * spacing_mm
    y = np.arange(ny) * spacing_mm
    curve = 0.012 * (x - x.mean()) ** 2
    top = ventral_y_mm + float(rng.uniform(0.1, 0.6)) - curve
    thickness = float(rng.uniform(0.8, 1.6))
    inside = (y[None, :] >= top[:, None]) & (y[None, :] < top[:, None] + thickness)
    hu[inside, :] = np.maximum(hu[inside, :], float(rng.uniform(60.0, 140.0)))


def acquire(hu: np.ndarray, spacing_mm: float, rng: np.random.Generator) -> dict[str, float]:
    """Blur, bias and noise, in place; returns the settings used (recorded in meta.json)."""
    blur_mm = float(rng.uniform(0.1, 0.19))
    ndimage.gaussian_filter(hu, sigma=blur_mm / spacing_mm, output=hu, truncate=3.0)
    nx, ny, nz = hu.shape
    bias_hu = float(rng.uniform(5.0, 30.0))
    fx, fy, fz = rng.uniform(0.5, 1.5, size=3) * np.pi
    px, py, pz = rng.uniform(0, 2 * np.pi, size=3)
    bx = np.cos(fx * np.linspace(0, 1, nx) + px).astype(np.float32)
    by = np.cos(fy * np.linspace(0, 1, ny) + py).astype(np.float32)
    bz = np.cos(fz * np.linspace(0, 1, nz) + pz).astype(np.float32)
    # Bias only where there is matter: air stays near -1000 as on real scanners.
    matter = hu > -700
    field = bias_hu * bx[:, None, None] * by[None, :, None] * bz[None, None, :]
    hu += np.where(matter, field, np.float32(0))
    noise_hu = float(rng.uniform(12.0, 40.0))
    hu += rng.standard_normal(size=hu.shape, dtype=np.float32) * np.float32(noise_hu)
    return {"blur_mm": round(blur_mm, 4), "bias_hu": round(bias_hu, 2), "noise_hu": round(noise_hu, 2)}
