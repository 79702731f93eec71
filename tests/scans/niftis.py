"""Builders of small NIfTI files, good and deliberately broken, as bytes."""

from __future__ import annotations

import gzip
import io
import struct
import zlib
from collections.abc import Iterator

import nibabel as nib
import numpy as np

SPACING_MM = (0.2, 0.2, 0.25)


def affine_for(spacing_mm: tuple[float, float, float] = SPACING_MM) -> np.ndarray:
    return np.diag([*spacing_mm, 1.0])


def volume(shape: tuple[int, ...] = (24, 20, 16), seed: int = 0, dtype: str = "int16") -> np.ndarray:
    """A scan-like volume: a bright ellipsoid in noise, so it is neither blank nor constant."""
    rng = np.random.default_rng(seed)
    grid = np.indices(shape[:3]).astype(np.float32)
    centre = np.array(shape[:3], dtype=np.float32)[:, None, None, None] / 2
    inside = (((grid - centre) / (centre * 0.6)) ** 2).sum(axis=0) < 1
    data = rng.normal(-500, 30, size=shape[:3]) + inside * 800
    return data.astype(dtype).reshape(shape)


def labels_for(data: np.ndarray, value: int = 14) -> np.ndarray:
    """A label map on ``data``'s grid: ``value`` where the ellipsoid is."""
    return np.where(data > 0, value, 0).astype(np.uint8)


def nifti_bytes(
    data: np.ndarray,
    *,
    affine: np.ndarray | None = None,
    compressed: bool = True,
    version: int = 1,
    pixdim: tuple[float, float, float] | None = None,
) -> bytes:
    """Serialise ``data`` (array axes = voxel i, j, k) as a single-file NIfTI, gzip when ``compressed``.

    ``pixdim`` overwrites the spacing fields after writing (NIfTI-1 only), to forge bad headers.
    """
    klass = nib.Nifti2Image if version == 2 else nib.Nifti1Image
    image = klass(data, affine if affine is not None else affine_for())
    buffer = io.BytesIO()
    image.to_file_map({"image": nib.FileHolder(fileobj=buffer)})
    raw = bytearray(buffer.getvalue())
    if pixdim is not None:
        # NIfTI-1 pixdim is float32[8] at byte 76; pixdim[1:4] are the voxel sizes.
        struct.pack_into("<3f", raw, 80, *pixdim)
    return gzip.compress(bytes(raw), compresslevel=1) if compressed else bytes(raw)


def header_only(shape: tuple[int, ...], dtype: str = "uint8", version: int = 1) -> bytes:
    """A NIfTI header block (with the 4-byte extension flag) declaring ``shape`` and ``dtype``.

    NIfTI-1 stores dimensions as int16, so grids beyond 32767 need ``version=2``.
    """
    header = nib.Nifti2Header() if version == 2 else nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(np.dtype(dtype))
    header.set_zooms((0.2,) * len(shape))
    header.set_qform(affine_for(), code=1)
    header.set_sform(affine_for(), code=1)
    header["vox_offset"] = header.sizeof_hdr + 4
    return header.binaryblock + b"\x00" * 4


def gzip_stream(prefix: bytes, zero_bytes: int) -> bytes:
    """gzip of ``prefix`` followed by ``zero_bytes`` zeros, built without holding the zeros in memory."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    parts = [compressor.compress(prefix)]
    piece = bytes(8 * 1024**2)
    remaining = zero_bytes
    while remaining > 0:
        take = min(remaining, len(piece))
        parts.append(compressor.compress(piece[:take]))
        remaining -= take
    parts.append(compressor.flush())
    return b"".join(parts)


def iter_files(root) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Every file below ``root`` (relative paths), the way "storage unchanged" is checked."""
    for path in sorted(root.rglob("*")):
        if path.is_file():
            yield str(path.relative_to(root))
