"""Training cases: phantom folders read once, block-averaged to the coarse grid and cached.

Cached arrays per case (axes x, y, z on the coarse grid):
``ct`` float32 mean HU; ``fractions`` uint8 [K, X, Y, Z], 255 x the fraction of each block that
belongs to each output channel (soft targets keep sub-voxel boundary positions); ``ignore``
uint8, 255 x the fraction of the block to leave out of the loss; ``disagreement`` uint8, 255 x the
fraction of the block where the simulated annotators do not all agree.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from inference.structures import BY_NAME
from inference.training.tasks import TaskSpec

log = logging.getLogger(__name__)


@dataclass
class Case:
    name: str
    ct: np.ndarray
    fractions: np.ndarray
    ignore: np.ndarray
    disagreement: np.ndarray
    #: Voxel size of the coarse grid (source spacing x block factor).
    spacing_mm: float = 0.63
    #: Per output channel: does this scan's annotation cover it? (channel 0 always True)
    labelled: np.ndarray | None = None
    #: Filled by training on first use: coarse voxel indices per foreground channel.
    class_voxels: dict[int, np.ndarray] | None = field(default=None, repr=False)


def block_mean(array: np.ndarray, f: int) -> np.ndarray:
    """Mean over f x f x f blocks (trailing voxels that do not fill a block are dropped)."""
    x, y, z = (s // f * f for s in array.shape)
    a = array[:x, :y, :z].astype(np.float32)
    return a.reshape(x // f, f, y // f, f, z // f, f).mean(axis=(1, 3, 5))


def _load(path: Path) -> np.ndarray:
    return np.asanyarray(nib.as_closest_canonical(nib.load(str(path))).dataobj)


def find_cases(root: Path) -> list[Path]:
    """Phantom case folders (flat layout) under ``root``, sorted by name."""
    return sorted(p.parent for p in root.glob("*/labels.nii.gz"))


def labelled_channels(folder: Path, spec: TaskSpec) -> np.ndarray:
    """Which output channels the case's annotation covers.

    A case folder may carry ``meta.json`` with ``"labelled_structures": [names]`` (a lab's scan
    where only some organs were drawn); channels not listed are left out of the loss rather than
    taught as background. Without that list every channel counts as labelled.
    """
    flags = np.ones(len(spec.structures), dtype=bool)
    meta_path = folder / "meta.json"
    if meta_path.exists():
        names = json.loads(meta_path.read_text()).get("labelled_structures")
        if isinstance(names, list):
            ids = {BY_NAME[n].id for n in names}
            flags = np.array([sid == 0 or sid in ids for sid in spec.structures])
    return flags


def prepare_case(folder: Path, spec: TaskSpec) -> Case:
    image = nib.as_closest_canonical(nib.load(str(folder / "labels.nii.gz")))
    labels = np.asanyarray(image.dataobj)
    source_mm = float(np.sqrt((image.affine[:3, 0] ** 2).sum()))
    ct = _load(folder / "ct.nii.gz")
    f = spec.factor
    fractions = np.stack([block_mean(labels == sid, f) for sid in spec.structures])
    # Structures this task does not segment (e.g. organs for the tumor model) are background.
    fractions[0] = 1.0 - fractions[1:].sum(axis=0)
    ignore = np.zeros(fractions.shape[1:], np.float32)
    for sid in spec.ignore:
        ignore += block_mean(labels == sid, f)
    fractions[0] -= ignore
    np.clip(fractions, 0.0, 1.0, out=fractions)
    annotators = [_load(p) for p in sorted(folder.glob("annotator_*.nii.gz"))]
    if len(annotators) >= 2:
        differ = np.zeros(labels.shape, bool)
        for other in annotators[1:]:
            differ |= other != annotators[0]
        disagreement = block_mean(differ, f)
    else:
        disagreement = np.zeros(fractions.shape[1:], np.float32)
    return Case(
        name=folder.name,
        ct=block_mean(ct, f),
        fractions=np.rint(fractions * 255).astype(np.uint8),
        ignore=np.rint(ignore * 255).astype(np.uint8),
        disagreement=np.rint(disagreement * 255).astype(np.uint8),
        spacing_mm=round(source_mm * f, 6),
        labelled=labelled_channels(folder, spec),
    )


def load_cases(root: Path, spec: TaskSpec) -> list[Case]:
    """All cases under ``root``, prepared once and cached in ``root/.cache/<task>-f<factor>/`` (the
    block factor is in the name so that a task moved to another spacing never reads stale arrays)."""
    cache = root / ".cache" / f"{spec.task}-f{spec.factor}"
    cache.mkdir(parents=True, exist_ok=True)
    cases = []
    for folder in find_cases(root):
        path = cache / f"{folder.name}.npz"
        if path.exists():
            with np.load(path) as z:
                spacing = float(z["spacing_mm"]) if "spacing_mm" in z else 0.21 * spec.factor
                cases.append(
                    Case(
                        folder.name,
                        z["ct"],
                        z["fractions"],
                        z["ignore"],
                        z["disagreement"],
                        spacing,
                        labelled_channels(folder, spec),
                    )
                )
            continue
        case = prepare_case(folder, spec)
        np.savez(
            path,
            ct=case.ct,
            fractions=case.fractions,
            ignore=case.ignore,
            disagreement=case.disagreement,
            spacing_mm=case.spacing_mm,
        )
        log.info("cached %s", path)
        cases.append(case)
    if not cases:
        raise FileNotFoundError(f"no phantom cases (folders with labels.nii.gz) under {root}")
    return cases


def case_from_arrays(
    name: str,
    spec: TaskSpec,
    ct: np.ndarray,
    fractions: np.ndarray,
    labelled_ids: np.ndarray,
    *,
    ignore: np.ndarray | None = None,
    disagreement: np.ndarray | None = None,
    spacing_mm: float = 0.63,
) -> Case:
    """A training case from coarse arrays that carry every canonical id.

    ``fractions`` uint8 [16, X, Y, Z] (channel = canonical id, 255 = whole voxel), ``labelled_ids``
    bool [16] (does the source label that id), ``ignore`` / ``disagreement`` uint8 [X, Y, Z] or
    None. Structures the task does not segment become background, the task's ``ignore`` ids are
    left out of the loss (as ``prepare_case`` does for the phantoms' own folders).
    """
    share = fractions.astype(np.float32) / 255.0
    out = np.stack([share[sid] for sid in spec.structures])
    out[0] = 1.0 - out[1:].sum(axis=0)
    skip = np.zeros(out.shape[1:], np.float32) if ignore is None else ignore.astype(np.float32) / 255.0
    for sid in spec.ignore:
        skip = skip + share[sid]
    skip = np.clip(skip, 0.0, 1.0)
    out[0] -= skip
    np.clip(out, 0.0, 1.0, out=out)
    flags = np.array([sid == 0 or bool(labelled_ids[sid]) for sid in spec.structures])
    return Case(
        name=name,
        ct=ct.astype(np.float32, copy=False),
        fractions=np.rint(out * 255).astype(np.uint8),
        ignore=np.rint(skip * 255).astype(np.uint8),
        disagreement=(
            np.zeros(out.shape[1:], np.uint8) if disagreement is None else disagreement.astype(np.uint8)
        ),
        spacing_mm=spacing_mm,
        labelled=flags,
    )
