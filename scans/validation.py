"""Validation of uploaded NIfTI files, before anything is stored.

Every check that can be made from the header is made before a single voxel is read, so that a
file claiming 100000^3 voxels or a small ``.nii.gz`` that inflates to gigabytes is refused before
it fills memory or disk. The voxel data are then read once, as a bounded stream of whole z-slabs
(never the whole volume in memory, never more bytes than the header declares plus a small margin),
which both proves the file is readable to the end and yields the intensity statistics.

Array contract: NIfTI stores voxels in Fortran order, so a slab of ``nz`` consecutive z-slices is
``raw.reshape((X, Y, nz), order="F")`` with axes in the file's own (i, j, k) order.

Every refusal is a :class:`ScanRejected` with a message a researcher can act on and the HTTP
status the API answers with (400 bad file, 409 duplicate, 413 too large).
"""

from __future__ import annotations

import gzip
import math
import re
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, cast

import nibabel as nib
import numpy as np
from django.conf import settings

from inference.formats import convert_hint
from labseg.refusals import Refused

GZIP_MAGIC = b"\x1f\x8b"
NIFTI1_HEADER_BYTES = 348
NIFTI2_HEADER_BYTES = 540
#: Voxel types a scan may use. Complex and RGB types are refused: no model reads them.
SUPPORTED_DTYPES = frozenset(
    np.dtype(name) for name in ("uint8", "int8", "uint16", "int16", "uint32", "int32", "int64", "uint64")
) | frozenset(np.dtype(name) for name in ("float32", "float64"))
#: Largest header + extensions block accepted (extensions are read into memory by nibabel).
MAX_VOX_OFFSET_BYTES = 64 * 1024**2
#: Voxels per slab when streaming the data (keeps the float64 working copy near 16 MB).
SLAB_VOXELS = 2_000_000
#: Bytes a gzip stream may hold beyond what the header declares before it is refused as a bomb.
TRAILING_BYTES_ALLOWED = 1024**2
#: Longest side of the downsampled volume kept for the projection thumbnail.
THUMBNAIL_MAX_SIDE = 128
#: A label map has at most this many distinct values.
MAX_LABEL_VALUES = 256


class ScanRejected(Refused):
    """An upload refused with a plain-words reason; ``status`` is the HTTP status to answer."""


@dataclass
class VolumeHeader:
    """What the header says, as nibabel reads it. ``shape`` is the 3D grid (a trailing 1 dropped)."""

    nifti_version: int
    compressed: bool
    shape: tuple[int, int, int]
    file_shape: tuple[int, ...]
    dtype: np.dtype
    spacing_mm: tuple[float, float, float]
    affine: np.ndarray
    orientation: str
    vox_offset: int
    slope: float | None
    inter: float | None

    @property
    def data_bytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * self.dtype.itemsize


@dataclass
class VolumeStats:
    """Intensity statistics over finite voxels (after the header's scaling), and the label values."""

    minimum: float
    maximum: float
    mean: float
    std: float
    finite_voxels: int
    label_values: set[int] = field(default_factory=set)
    #: Downsampled float32 volume (X, Y, Z file order) and its spacing, for the thumbnail.
    preview: np.ndarray | None = None
    preview_spacing_mm: tuple[float, float, float] | None = None


def nifti_suffix(filename: str) -> str:
    """``.nii`` or ``.nii.gz`` for a NIfTI file name; refuses anything else, saying how to convert
    the formats scanners and tools export (``inference.formats.convert_hint``)."""
    lower = filename.lower()
    if lower.endswith(".nii.gz"):
        return ".nii.gz"
    if lower.endswith(".nii"):
        return ".nii"
    message = (
        f"{filename!r} is not a NIfTI file name: labseg accepts single-file NIfTI scans ending in "
        ".nii or .nii.gz"
    )
    hint = convert_hint(filename)
    raise ScanRejected(f"{message}; {hint}" if hint else message)


def _open_stream(path: Path, compressed: bool) -> BinaryIO:
    if compressed:
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return path.open("rb")


def _read_exactly(stream: BinaryIO, count: int, what: str) -> bytes:
    """Read ``count`` bytes, turning damaged or short gzip streams into a clear refusal."""
    try:
        data = stream.read(count)
    except EOFError:
        raise ScanRejected(
            f"the compressed file ends early while reading the {what}: the upload is truncated or the "
            "file is damaged"
        ) from None
    except (gzip.BadGzipFile, zlib.error, OSError) as error:
        raise ScanRejected(
            f"the file is named .nii.gz but its gzip data are damaged ({error}); compress it again"
        ) from None
    return data


def read_header(path: Path, original_filename: str) -> VolumeHeader:
    """Check the header alone (no voxel read) against the limits in settings.

    Refuses: empty files, wrong names, gzip mismatches, wrong magic, analyze pairs, 2D images,
    4D files with several volumes, oversized grids, unsupported types, bad spacing.
    """
    size_bytes = path.stat().st_size
    if size_bytes == 0:
        raise ScanRejected("the file is empty (0 bytes): nothing was uploaded")
    suffix = nifti_suffix(original_filename)
    with path.open("rb") as raw:
        compressed = raw.read(2) == GZIP_MAGIC
    if suffix == ".nii.gz" and not compressed:
        raise ScanRejected(
            "the file is named .nii.gz but is not gzip-compressed: it is damaged or not a NIfTI scan"
        )
    if suffix == ".nii" and compressed:
        raise ScanRejected("the file is gzip-compressed but named .nii: rename it to end in .nii.gz")

    with _open_stream(path, compressed) as stream:
        block = _read_exactly(stream, NIFTI2_HEADER_BYTES, "header")
    if len(block) < NIFTI1_HEADER_BYTES:
        raise ScanRejected(
            f"the file holds only {len(block)} bytes, too few for a NIfTI header (348 bytes): "
            "it is truncated or not a NIfTI file"
        )
    header = _parse_header_block(block)
    _check_header(header, size_bytes, compressed)
    return _header_as_nibabel_reads_it(path, suffix, header, compressed)


def _parse_header_block(block: bytes) -> nib.Nifti1Header | nib.Nifti2Header:
    for endian in ("<", ">"):
        (sizeof_hdr,) = struct.unpack(endian + "i", block[:4])
        if sizeof_hdr == NIFTI1_HEADER_BYTES:
            magic = block[344:348]
            if magic == b"ni1\x00":
                raise ScanRejected(
                    "this is the header of a NIfTI .hdr/.img pair: convert it to a single .nii or "
                    ".nii.gz file"
                )
            if magic != b"n+1\x00":
                raise ScanRejected(
                    f"the NIfTI-1 magic string is wrong ({magic!r} instead of 'n+1'): the file is not a "
                    "NIfTI scan (an old Analyze file?) or it is damaged"
                )
            return nib.Nifti1Header(binaryblock=block[:NIFTI1_HEADER_BYTES], check=False)
        if sizeof_hdr == NIFTI2_HEADER_BYTES:
            if len(block) < NIFTI2_HEADER_BYTES:
                raise ScanRejected("the file is too short to hold its NIfTI-2 header: it is truncated")
            magic = block[4:8]
            if magic != b"n+2\x00":
                raise ScanRejected(
                    f"the NIfTI-2 magic string is wrong ({magic!r} instead of 'n+2'): the file is not a "
                    "single-file NIfTI-2 scan or it is damaged"
                )
            return nib.Nifti2Header(binaryblock=block[:NIFTI2_HEADER_BYTES], check=False)
    raise ScanRejected(
        "the file does not start with a NIfTI header (the header size field is neither 348 nor 540): "
        "it is not a NIfTI scan"
    )


#: The largest intensity scaling (scl_slope, scl_inter) taken as meant: 16-bit CT stored with a
#: slope of 1000 already spans any tissue; beyond that the header is damaged, not a scan.
MAX_SCALING = 1e6


def _check_scaling(slope: float, inter: float) -> None:
    """Refuse scl_slope/scl_inter that are not finite, or so large that no scanner wrote them."""
    if not (math.isfinite(slope) and math.isfinite(inter)):
        raise ScanRejected(
            f"the header's intensity scaling (scl_slope {slope}, scl_inter {inter}) is not a number: "
            "the file is damaged; export it again"
        )
    if slope == 0 or abs(slope) > MAX_SCALING or abs(inter) > MAX_SCALING:
        raise ScanRejected(
            f"the header's intensity scaling (scl_slope {slope:g}, scl_inter {inter:g}) is not one a "
            "scanner writes: the file is damaged; export it again"
        )


def _check_header(header: nib.Nifti1Header, size_bytes: int, compressed: bool) -> None:
    # The header's own fields: NIfTI reads a slope of 0 or NaN as "unscaled" (nibabel then drops
    # both), but an infinite or huge one is damage that nibabel would pass on.
    raw_slope, raw_inter = float(header["scl_slope"]), float(header["scl_inter"])
    if raw_slope != 0 and not math.isnan(raw_slope):
        _check_scaling(raw_slope, 0.0 if math.isnan(raw_inter) else raw_inter)
    dim = [int(d) for d in header["dim"]]
    ndim = dim[0]
    if not 1 <= ndim <= 7:
        raise ScanRejected(f"the header declares {ndim} dimensions; a NIfTI scan has 1 to 7")
    file_shape = dim[1 : ndim + 1]
    if any(d < 1 for d in file_shape):
        raise ScanRejected(f"the header declares an empty grid {tuple(file_shape)}")
    if ndim < 3 or min(file_shape[:3]) < 2:
        raise ScanRejected(
            f"the image is 2D (grid {' x '.join(map(str, file_shape))}): labseg needs a 3D volume"
        )
    volumes = math.prod(file_shape[3:])
    if volumes > 1:
        raise ScanRejected(
            f"the file holds {volumes} volumes (grid {' x '.join(map(str, file_shape))}): upload one 3D "
            "volume per file"
        )
    max_dim = settings.LABSEG_MAX_DIM
    if max(file_shape[:3]) > max_dim:
        raise ScanRejected(
            f"the grid {' x '.join(map(str, file_shape[:3]))} has a side over the limit of {max_dim} voxels",
            status=413,
        )
    voxels = math.prod(file_shape[:3])
    if voxels > settings.LABSEG_MAX_VOXELS:
        raise ScanRejected(
            f"the grid {' x '.join(map(str, file_shape[:3]))} holds {voxels:,} voxels, over the limit "
            f"of {settings.LABSEG_MAX_VOXELS:,}",
            status=413,
        )
    code = int(header["datatype"])
    try:
        dtype = header.get_data_dtype()
    except (KeyError, nib.spatialimages.HeaderDataError):
        raise ScanRejected(
            f"the header declares an unknown voxel type (NIfTI datatype code {code})"
        ) from None
    if dtype.newbyteorder("=") not in SUPPORTED_DTYPES:
        names = ", ".join(sorted(str(d) for d in SUPPORTED_DTYPES))
        raise ScanRejected(f"voxels of type {dtype.name or dtype} are not supported; use one of {names}")
    vox_offset = int(header["vox_offset"])
    if vox_offset > MAX_VOX_OFFSET_BYTES or vox_offset < header.sizeof_hdr:
        raise ScanRejected(
            f"the header places the voxel data at byte {vox_offset}, outside the accepted range: the "
            "file is damaged"
        )
    decompressed = vox_offset + voxels * dtype.itemsize
    if decompressed > settings.LABSEG_MAX_DECOMPRESSED_BYTES:
        raise ScanRejected(
            f"the volume would take {decompressed / 1024**3:.1f} GiB once decompressed, over the limit "
            f"of {settings.LABSEG_MAX_DECOMPRESSED_BYTES / 1024**3:.1f} GiB",
            status=413,
        )
    if not compressed and size_bytes < decompressed:
        raise ScanRejected(
            f"the file ends early: the header declares {decompressed:,} bytes but the file holds only "
            f"{size_bytes:,} (the upload is truncated)"
        )
    pixdim = [float(p) for p in header["pixdim"][1:4]]
    for axis, value in zip("xyz", pixdim, strict=True):
        if not math.isfinite(value):
            raise ScanRejected(f"the voxel spacing along {axis} is not a number ({value}): fix the header")
        if value <= 0:
            raise ScanRejected(
                f"the voxel spacing along {axis} is {value} mm; spacing must be positive: fix the header"
            )


def _header_as_nibabel_reads_it(
    path: Path, suffix: str, header: nib.Nifti1Header, compressed: bool
) -> VolumeHeader:
    # nibabel picks the reader from the file name, so point it at a name with the right suffix.
    # The header and extensions are read; the voxel data are not (the image is a lazy proxy).
    link = path.with_name(path.name + ".probe" + suffix)
    link.symlink_to(path.name)
    try:
        # A ".nii"/".nii.gz" name whose header parsed as NIfTI: nibabel returns a Nifti1Image or
        # a Nifti2Image (its subclass).
        image = cast(nib.Nifti1Image, nib.load(str(link)))
        affine = np.asarray(image.affine, dtype=np.float64)
        full_header = image.header
        zooms = full_header.get_zooms()[:3]
        # The loaded image's header is a copy with offset and scaling reset; the data proxy keeps
        # the values nibabel applies when it reads the voxels.
        proxy = cast(nib.arrayproxy.ArrayProxy, image.dataobj)  # a lazy proxy: nothing read yet
        slope, inter = float(proxy.slope), float(proxy.inter)
    except (nib.filebasedimages.ImageFileError, nib.spatialimages.HeaderDataError, ValueError) as error:
        # nibabel's own message names our temporary file; the researcher needs the cause instead.
        reason = "truncated" if "work out file type" in str(error) else str(error).split(" of ")[0]
        raise ScanRejected(
            f"nibabel cannot read the header and its extensions ({reason}): the file is truncated or damaged"
        ) from None
    finally:
        link.unlink()
    _check_scaling(slope, inter)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise ScanRejected(
            "the voxel-to-world matrix in the header is not usable (not finite or flat): fix the "
            "qform/sform of the file"
        )
    file_shape = tuple(int(d) for d in full_header.get_data_shape())
    return VolumeHeader(
        nifti_version=2 if isinstance(full_header, nib.Nifti2Header) else 1,
        compressed=compressed,
        shape=(file_shape[0], file_shape[1], file_shape[2]),
        file_shape=file_shape,
        dtype=full_header.get_data_dtype(),
        spacing_mm=(float(zooms[0]), float(zooms[1]), float(zooms[2])),
        affine=affine,
        orientation="".join(nib.aff2axcodes(affine)),
        vox_offset=int(proxy.offset),
        slope=None if (slope, inter) == (1.0, 0.0) else slope,
        inter=None if (slope, inter) == (1.0, 0.0) else inter,
    )


def iter_slabs(path: Path, header: VolumeHeader) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(z0, slab)`` with ``slab`` of shape (X, Y, nz) in the file's dtype, z0 the first slice.

    Reads exactly the declared bytes in bounded pieces, then proves the stream ends soon after:
    a gzip stream holding far more than the header declares is refused as a bomb, and a short
    stream is refused as truncated.
    """
    nx, ny, nz = header.shape
    slice_bytes = nx * ny * header.dtype.itemsize
    slices_per_slab = max(1, SLAB_VOXELS // (nx * ny))
    with _open_stream(path, header.compressed) as stream:
        _skip(stream, header.vox_offset)
        z0 = 0
        while z0 < nz:
            count = min(slices_per_slab, nz - z0)
            block = _read_exactly(stream, count * slice_bytes, "voxel data")
            if len(block) < count * slice_bytes:
                present = z0 * slice_bytes + len(block)
                raise ScanRejected(
                    f"the file ends early: the header declares {header.data_bytes:,} bytes of voxel "
                    f"data but only {present:,} are present (the upload is truncated)"
                )
            slab = np.frombuffer(block, dtype=header.dtype).reshape((nx, ny, count), order="F")
            yield z0, slab
            z0 += count
        if header.compressed:
            # Reading to the end also makes gzip verify its CRC; the bound stops a bomb early.
            trailing = _read_exactly(stream, TRAILING_BYTES_ALLOWED + 1, "end of the file")
            if len(trailing) > TRAILING_BYTES_ALLOWED:
                raise ScanRejected(
                    "the compressed file holds far more data than its header declares (a possible gzip "
                    "bomb): it was refused before being unpacked"
                )


def _skip(stream: BinaryIO, count: int) -> None:
    remaining = count
    while remaining > 0:
        piece = _read_exactly(stream, min(remaining, 1024**2), "header extensions")
        if not piece:
            raise ScanRejected("the file ends inside its header: the upload is truncated")
        remaining -= len(piece)


class _RunningStats:
    """Min, max, mean and variance merged slab by slab (Chan et al.), in float64."""

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0
        self.minimum = math.inf
        self.maximum = -math.inf

    def add(self, values: np.ndarray) -> None:
        if values.size == 0:
            return
        as_float = values.astype(np.float64, copy=False)
        n = as_float.size
        slab_mean = float(as_float.mean())
        slab_m2 = float(np.square(as_float - slab_mean).sum())
        delta = slab_mean - self.mean
        total = self.count + n
        self.mean += delta * n / total
        self.m2 += slab_m2 + delta * delta * self.count * n / total
        self.count = total
        self.minimum = min(self.minimum, float(as_float.min()))
        self.maximum = max(self.maximum, float(as_float.max()))


class _Histogram:
    """Exact statistics for 8- and 16-bit integer voxels from a histogram of all 2^8 / 2^16 values.

    ``np.bincount`` over the unsigned view of a slab is about twice as fast as a float64 pass and
    gives min, max, mean, std and the distinct label values exactly.
    """

    def __init__(self, dtype: np.dtype) -> None:
        self.unsigned = np.dtype(f"u{dtype.itemsize}").newbyteorder(dtype.byteorder)
        bins = 2 ** (8 * dtype.itemsize)
        self.values = np.arange(bins, dtype=np.int64)
        if dtype.kind == "i":
            self.values = np.where(self.values >= bins // 2, self.values - bins, self.values)
        self.counts = np.zeros(bins, dtype=np.int64)

    def add(self, slab: np.ndarray) -> None:
        raw = slab.ravel(order="K").view(self.unsigned)
        if not raw.dtype.isnative:
            raw = raw.astype(raw.dtype.newbyteorder("="))
        self.counts += np.bincount(raw, minlength=self.counts.size)

    def running(self) -> _RunningStats:
        present = self.counts > 0
        values = self.values[present].astype(np.float64)
        counts = self.counts[present].astype(np.float64)
        stats = _RunningStats()
        stats.count = int(self.counts.sum())
        stats.mean = float(np.dot(values, counts) / stats.count)
        stats.m2 = float(np.dot(np.square(values - stats.mean), counts))
        stats.minimum, stats.maximum = float(values.min()), float(values.max())
        return stats

    def label_values(self) -> set[int]:
        return {int(v) for v in self.values[self.counts > 0]}


class _IntegerSums:
    """Exact statistics of 8- and 16-bit integer voxels from integer sums (no float copy).

    Per slab: min, max, sum and sum of squares in int64 (a 16-bit square times the voxels of one
    slab cannot overflow), accumulated across slabs in Python integers. About twice as fast as a
    histogram and four times as fast as a float64 pass.
    """

    def __init__(self) -> None:
        self.count = 0
        self.total = 0
        self.squares = 0
        self.minimum: int | None = None
        self.maximum: int | None = None

    def add(self, slab: np.ndarray) -> None:
        flat = slab.ravel(order="K")
        if not flat.dtype.isnative:
            flat = flat.astype(flat.dtype.newbyteorder("="))
        low, high = int(flat.min()), int(flat.max())
        self.minimum = low if self.minimum is None else min(self.minimum, low)
        self.maximum = high if self.maximum is None else max(self.maximum, high)
        self.count += flat.size
        self.total += int(np.add.reduce(flat, dtype=np.int64))
        self.squares += int(np.einsum("i,i->", flat, flat, dtype=np.int64, casting="safe"))

    def running(self) -> _RunningStats:
        stats = _RunningStats()
        stats.count = self.count
        stats.mean = self.total / self.count
        # Exact in integers, then one rounding: n * variance = sum(x^2) - sum(x)^2 / n.
        stats.m2 = (self.squares * self.count - self.total * self.total) / self.count
        stats.minimum, stats.maximum = float(self.minimum or 0), float(self.maximum or 0)
        return stats


def read_volume(
    path: Path, header: VolumeHeader, *, labels: bool = False, preview: bool = False
) -> VolumeStats:
    """Read every voxel once, in slabs; refuse unreadable, all-NaN or constant data.

    ``labels=True`` also requires integer values and collects the distinct label values.
    ``preview=True`` keeps a strided float32 copy (longest side <= 128) for the thumbnail.
    """
    running = _RunningStats()
    label_values: set[int] = set()
    is_float = header.dtype.kind == "f"
    small_integers = header.dtype.kind in "ui" and header.dtype.itemsize <= 2
    # Label maps need their distinct values (a histogram); scans only need the sums.
    integer_stats: _Histogram | _IntegerSums | None = None
    if small_integers:
        integer_stats = _Histogram(header.dtype) if labels else _IntegerSums()
    stride = max(1, math.ceil(max(header.shape) / THUMBNAIL_MAX_SIDE))
    preview_slabs: list[np.ndarray] = []
    for z0, slab in iter_slabs(path, header):
        if integer_stats is not None:
            integer_stats.add(slab)
        else:
            finite = slab[np.isfinite(slab)] if is_float else slab.ravel(order="K")
            running.add(finite)
            if labels:
                _collect_labels(slab, finite, is_float, label_values)
        if preview:
            keep = [z - z0 for z in range(z0, z0 + slab.shape[2]) if z % stride == 0]
            if keep:
                preview_slabs.append(slab[::stride, ::stride, keep].astype(np.float32))
    if integer_stats is not None:
        running = integer_stats.running()
        if isinstance(integer_stats, _Histogram):
            label_values = integer_stats.label_values()
            _check_label_count(label_values)
    if running.count == 0:
        raise ScanRejected("every voxel is NaN or infinite: the volume holds no image")
    if running.minimum == running.maximum and not labels:
        raise ScanRejected(
            f"every voxel has the same value ({running.minimum:g}): the volume is blank, not a scan"
        )
    stats = _scaled(running, header)
    stats.label_values = label_values
    if preview and preview_slabs:
        volume = np.concatenate(preview_slabs, axis=2)
        if header.slope is not None:
            volume = volume * np.float32(header.slope) + np.float32(header.inter or 0.0)
        stats.preview = volume
        stats.preview_spacing_mm = tuple(s * stride for s in header.spacing_mm)  # type: ignore[assignment]
    return stats


def _collect_labels(slab: np.ndarray, finite: np.ndarray, is_float: bool, label_values: set[int]) -> None:
    if is_float:
        if finite.size != slab.size:
            raise ScanRejected("the label file holds NaN or infinite values: a label map must be integers")
        if not np.array_equal(finite, np.round(finite)):
            raise ScanRejected(
                "the label file holds non-integer values (such as probabilities): a label map must hold "
                "whole numbers, one per structure"
            )
    label_values.update(int(v) for v in np.unique(finite))
    _check_label_count(label_values)


def _check_label_count(label_values: set[int]) -> None:
    if len(label_values) > MAX_LABEL_VALUES:
        raise ScanRejected(
            f"the label file holds more than {MAX_LABEL_VALUES} distinct values: it looks like an image, "
            "not a label map"
        )


def _scaled(running: _RunningStats, header: VolumeHeader) -> VolumeStats:
    slope = header.slope if header.slope is not None else 1.0
    inter = header.inter if header.inter is not None else 0.0
    low, high = slope * running.minimum + inter, slope * running.maximum + inter
    std = math.sqrt(running.m2 / running.count) if running.count else 0.0
    return VolumeStats(
        minimum=min(low, high),
        maximum=max(low, high),
        mean=slope * running.mean + inter,
        std=abs(slope) * std,
        finite_voxels=running.count,
    )


def check_same_grid(annotation: VolumeHeader, scan_shape: tuple[int, ...], scan_affine: np.ndarray) -> None:
    """Refuse an annotation whose grid differs from its scan's (shape, or affine beyond tolerance)."""
    if tuple(annotation.shape) != tuple(scan_shape):
        raise ScanRejected(
            f"the annotation grid {' x '.join(map(str, annotation.shape))} differs from the scan grid "
            f"{' x '.join(map(str, scan_shape))}: an annotation must be drawn on its scan's voxels"
        )
    tolerance = settings.LABSEG_ANNOTATION_AFFINE_TOLERANCE_MM
    difference = float(np.max(np.abs(annotation.affine - np.asarray(scan_affine, dtype=np.float64))))
    if difference > tolerance:
        raise ScanRejected(
            f"the annotation is not aligned with the scan: its voxel-to-world matrix differs by up to "
            f"{difference:.4g} mm (tolerance {tolerance:g} mm); save it on the scan's own grid"
        )


#: File names that say "label map" in the layouts labs export (tumor database ground truths and
#: STAPLE merges, Slicer/ITK-SNAP segmentations).
LABEL_MAP_NAME = re.compile(
    r"(^groundtruth[_-]|^staple[_-]|[_-]seg(?:mentation)?(?:[_.-]|$)|label)", re.IGNORECASE
)
#: A scan whose voxels hold at most this many distinct whole numbers, most of them 0, is a label map.
LABEL_MAP_MAX_VALUES = 64
LABEL_MAP_MIN_ZERO_FRACTION = 0.5
#: ... and is piecewise constant: most labelled voxels equal their neighbour (organs are regions),
#: where a CT's noise makes neighbours differ (measured on the strided preview: the real atlas label
#: maps 0.80-0.82, real 8-bit head CT 0.10-0.15).
LABEL_MAP_MIN_SAME_NEIGHBOUR = 0.6


def _same_neighbour_fraction(volume: np.ndarray) -> float:
    """Of the non-zero voxels, the fraction equal to their neighbour along the first axis."""
    if volume.shape[0] < 2:
        return 0.0
    labelled = volume[:-1] != 0
    if not labelled.any():
        return 0.0
    return float((volume[:-1] == volume[1:])[labelled].mean())


def check_not_label_map(stats: VolumeStats, original_filename: str) -> None:
    """Refuse, as a scan, a file that is a label map (an annotation).

    Read from the preview (every voxel of a strided grid): a label map holds few whole-number
    values, mostly 0, in regions of equal value. Its name alone (``GroundTruth_*``, ``STAPLE_*``,
    ``*_seg*``, ``*label*``) is enough when its values are also whole numbers and few (256 at
    most). A CT, even an 8-bit one, has noise: neighbouring voxels differ.
    """
    if stats.preview is None:
        return
    sample = stats.preview[np.isfinite(stats.preview)]
    if sample.size == 0 or not np.all(sample == np.round(sample)):
        return
    values, counts = np.unique(sample, return_counts=True)
    zero_fraction = float(counts[values == 0].sum()) / sample.size
    by_content = (
        values.size <= LABEL_MAP_MAX_VALUES
        and zero_fraction >= LABEL_MAP_MIN_ZERO_FRACTION
        and _same_neighbour_fraction(stats.preview) >= LABEL_MAP_MIN_SAME_NEIGHBOUR
    )
    by_name = LABEL_MAP_NAME.search(Path(original_filename).name) is not None and values.size <= 256
    if not (by_content or by_name):
        return
    why = (
        f"it holds only {values.size} distinct whole-number values and {100 * zero_fraction:.0f} % of its "
        "voxels are 0"
        if by_content
        else "its name says it is a label map and its voxels are a few whole numbers"
    )
    raise ScanRejected(
        f"{original_filename} looks like a label map (an annotation), not a CT scan: {why}. Store it as an "
        "annotation of its scan instead: on the upload page it is attached to the scan of the same mouse "
        "and time point, and through the API with POST /api/scans/{scan id}/annotations/."
    )
