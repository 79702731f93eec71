"""The run manifest: what made a result, where, and how long each stage took."""

from __future__ import annotations

import platform
import tomllib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import nibabel
import numpy
import onnxruntime
import scipy

from inference.pipeline.orientation import OrientationFinding
from inference.registry import ModelCard

_PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def labseg_version() -> str:
    """The project's version (pyproject.toml in a checkout, else the installed distribution)."""
    try:
        return str(tomllib.loads(_PYPROJECT.read_text())["project"]["version"])
    except (OSError, KeyError, tomllib.TOMLDecodeError):
        try:
            return metadata.version("labseg")
        except metadata.PackageNotFoundError:
            return "unknown"


def versions() -> dict[str, str]:
    return {
        "labseg": labseg_version(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "nibabel": nibabel.__version__,
        "onnxruntime": onnxruntime.__version__,
    }


def model_entry(card: ModelCard) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "name": card.name,
        "version": card.version,
        "task": card.task,
        "sha256": card.sha256,
        "structures": list(card.structures),
        "input_spacing_mm": list(card.input_spacing_mm),
    }
    if card.shifted_passes:
        # How the network read the scan: the plain pass and these shifts, averaged.
        entry["shifted_passes"] = [list(shift) for shift in card.shifted_passes]
        if card.shifted_passes_over:
            entry["shifted_passes_over"] = sorted(card.shifted_passes_over)
    if card.size_pass is not None:
        size = card.size_pass
        entry["size_pass"] = {
            "reference_mm3": size.reference_mm3,
            "structures": sorted(size.structures),
            "weight": size.weight,
            "min_scale": size.min_scale,
            "kept": sorted(size.kept),
        }
    return entry


def orientation_entry(finding: OrientationFinding | None, header_axcodes: Sequence[str]) -> dict[str, Any]:
    """The manifest's ``orientation``: what the header said, what the anatomy says, the turn
    applied, whether they agree (None when the anatomy is too unsure to say), confidence, and
    the findings in plain words (the summary also says when an oblique mouse was straightened);
    ``{"mode": "header"}`` when the anatomy was not consulted."""
    if finding is None:
        return {
            "mode": "header",
            "header": "".join(header_axcodes),
            "summary": "The header's orientation was used as it is (the anatomy was not consulted).",
        }
    entry = finding.as_json(header_axcodes)
    if finding.agrees_with_header is False:
        summary = f"Header and anatomy disagree. {finding.findings[-1]}"
    elif finding.agrees_with_header:
        summary = "Header and anatomy agree."
    else:
        summary = "The anatomy could not confirm the header's orientation; the header was used."
    if finding.straightening is not None:
        summary = f"{summary} {finding.straightening.finding}"
    return {"mode": "anatomy", "summary": summary, **entry}


def build_manifest(
    *,
    cards: Sequence[ModelCard],
    providers: Mapping[str, str],
    device: str,
    threads: int,
    seconds: Mapping[str, float],
    geometry: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
    size_scales: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """A JSON-ready record of one run; ``providers`` maps model key to its execution provider,
    ``size_scales`` to the scale its size pass read the scan at (1.0: the mouse was not drawn
    larger than the reference, and no size pass ran) for models that have one."""
    scales = dict(size_scales or {})

    def read_at(card: ModelCard) -> dict[str, Any]:
        return {"size_scale": round(float(scales[card.key]), 3)} if card.key in scales else {}

    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        "host": platform.node(),
        "models": [
            {**model_entry(card), "provider": providers.get(card.key, ""), **read_at(card)} for card in cards
        ],
        "provider": ", ".join(sorted(set(providers.values()))),
        "device": device,
        "threads": threads,
        "seconds": {stage: round(float(value), 4) for stage, value in seconds.items()},
        "input_geometry": dict(geometry),
        **(dict(extra) if extra else {}),
    }
