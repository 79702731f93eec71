"""The viewer's resolution levels of a scan: how coarse each preview grid is.

Both the scan viewer (``frontend/layers.py``) and the review page (``review/views.py``) load a
scan coarsest level first; the factors live here, beside the scan, so that neither page's app
imports the other's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import TYPE_CHECKING

from django.conf import settings

if TYPE_CHECKING:  # the factor itself is plain arithmetic, used by frontend/previews.py too
    from scans.models import Scan

#: The viewer's levels, coarsest first: the first frame's grid, then the preview it refines to.
LEVELS = ("first", "preview")


def preview_factor(shape: Iterable[int], *, max_voxels: int) -> int:
    """The smallest integer factor per axis that brings ``shape`` to at most ``max_voxels`` voxels."""
    dims = [int(s) for s in shape][:3]
    voxels = math.prod(dims)
    if voxels <= max_voxels:
        return 1
    factor = max(1, math.ceil((voxels / max_voxels) ** (1 / 3)))
    while math.prod(max(1, d // factor) for d in dims) > max_voxels:
        factor += 1
    return factor


def preview_max_voxels() -> int:
    """Voxel budget of the viewer's first view (software WebGL draws about 2M voxels in ~1 s);
    ``settings.LABSEG_PREVIEW_MAX_VOXELS``, 2.5 million by default (a 192x192x520 scan at half
    resolution per axis)."""
    return int(settings.LABSEG_PREVIEW_MAX_VOXELS)


def first_max_voxels() -> int:
    """Voxel budget of the first frame's grid (``settings.LABSEG_PREVIEW_FIRST_VOXELS``, 400 000 by
    default): software WebGL draws it with its overlays in well under a second, and the viewer then
    refines to the ``preview`` grid and, for scans up to ``LABSEG_VIEWER_AUTO_FULL_VOXELS``, to full
    resolution."""
    return min(int(settings.LABSEG_PREVIEW_FIRST_VOXELS), preview_max_voxels())


def level_factor(scan: Scan, level: str) -> int:
    """The preview factor per axis of ``scan`` at ``level`` (one of ``LEVELS``)."""
    budget = first_max_voxels() if level == "first" else preview_max_voxels()
    return preview_factor(scan.shape, max_voxels=budget)
