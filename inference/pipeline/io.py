"""Reading scans and writing label maps as NIfTI.

A scan is read with its own dtype (no float64 copy of a 19 M voxel volume) and its header, so that the
label and uncertainty maps can be written with the scan's exact qform/sform: they open on the same
grid in any viewer.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from inference.formats import convert_hint

try:  # ISA-L's gzip: the same files, two to four times faster to read and write than zlib's.
    from isal import igzip as fast_gzip
except ImportError:  # pragma: no cover - optional speed-up
    fast_gzip = None  # type: ignore[assignment]

#: gzip level of written maps: label maps are mostly zeros, a higher level saves little.
COMPRESS_LEVEL = 1


class ScanReadError(ValueError):
    """A file that is not a readable 3D NIfTI volume."""


@dataclass
class LoadedScan:
    """Voxel data ``[i, j, k]`` in the file's axis order, its affine (mm) and its header."""

    data: np.ndarray
    affine: np.ndarray
    header: nib.Nifti1Header


def load_scan(path: Path) -> LoadedScan:
    """Read a 3D NIfTI (a 4D file with one volume is accepted)."""
    path = Path(path)
    if not path.is_file():
        raise ScanReadError(f"no such file: {path}")
    hint = convert_hint(path.name)
    if hint is not None:
        raise ScanReadError(f"{path.name} is not a NIfTI file (.nii or .nii.gz): {hint}")
    try:
        image = _read(path)
        if not isinstance(image, nib.Nifti1Image | nib.Nifti2Image):
            raise ScanReadError(f"{path.name} is not a NIfTI file")
        data = np.asanyarray(image.dataobj)
    except ScanReadError:
        raise
    except Exception as error:  # nibabel raises many types for damaged files
        raise ScanReadError(f"{path.name} could not be read as NIfTI: {error}") from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ScanReadError(f"{path.name} has shape {data.shape}; a 3D volume is needed")
    if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
        raise ScanReadError(f"{path.name} holds {data.dtype} values; numbers are needed")
    return LoadedScan(data=data, affine=np.asarray(image.affine, dtype=np.float64), header=image.header)


def _read(path: Path) -> nib.filebasedimages.FileBasedImage:
    if fast_gzip is not None and path.name.endswith(".nii.gz"):
        try:
            raw = fast_gzip.decompress(path.read_bytes())
            # sizeof_hdr is 540 for NIfTI-2, 348 for NIfTI-1.
            image_class = nib.Nifti2Image if raw[:4] == (540).to_bytes(4, "little") else nib.Nifti1Image
            return image_class.from_bytes(raw)
        except Exception:  # anything unusual: let nibabel read it (or explain why it cannot)
            pass
    return nib.load(str(path))


def _write(image: nib.Nifti1Image, path: Path) -> None:
    if fast_gzip is not None and path.name.endswith(".gz"):
        path.write_bytes(fast_gzip.compress(image.to_bytes(), compresslevel=COMPRESS_LEVEL))
    else:
        nib.save(image, str(path))


def save_map(
    path: Path, data: np.ndarray, affine: np.ndarray, header: nib.Nifti1Header | None = None
) -> Path:
    """Write ``data`` (uint8) as NIfTI. With the scan's ``header`` its qform/sform are copied as
    they are, so the written affine is bit-identical to the scan's; otherwise ``affine`` is used."""
    path = Path(path)
    data = np.asarray(data, dtype=np.uint8)
    if header is not None:
        new_header = header.copy()
        new_header.set_data_dtype(np.uint8)
        new_header.set_slope_inter(1.0, 0.0)
        new_header["cal_min"] = 0
        new_header["cal_max"] = 0
        image = nib.Nifti1Image(data, None, header=new_header)
        if not np.allclose(new_header.get_best_affine(), affine, atol=1e-5):
            image = nib.Nifti1Image(data, affine)
    else:
        image = nib.Nifti1Image(data, affine)
    image.header.set_data_dtype(np.uint8)
    _write(image, path)
    return path


def load_label_map(path: Path) -> LoadedScan:
    """Read a label map; values must be whole numbers 0-255."""
    scan = load_scan(path)
    data = scan.data
    if not np.issubdtype(data.dtype, np.integer) and not np.all(np.equal(np.mod(data, 1), 0)):
        raise ScanReadError(f"{Path(path).name} holds fractional values; a label map holds whole numbers")
    if data.size and (data.min() < 0 or data.max() > 255):
        raise ScanReadError(f"{Path(path).name} holds values outside 0-255; not a label map")
    return LoadedScan(data=data.astype(np.uint8, copy=False), affine=scan.affine, header=scan.header)
