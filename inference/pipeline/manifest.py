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
    return {
        "name": card.name,
        "version": card.version,
        "task": card.task,
        "sha256": card.sha256,
        "structures": list(card.structures),
        "input_spacing_mm": list(card.input_spacing_mm),
    }


def build_manifest(
    *,
    cards: Sequence[ModelCard],
    providers: Mapping[str, str],
    device: str,
    threads: int,
    seconds: Mapping[str, float],
    geometry: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A JSON-ready record of one run; ``providers`` maps model key to its execution provider."""
    return {
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        "host": platform.node(),
        "models": [{**model_entry(card), "provider": providers.get(card.key, "")} for card in cards],
        "provider": ", ".join(sorted(set(providers.values()))),
        "device": device,
        "threads": threads,
        "seconds": {stage: round(float(value), 4) for stage, value in seconds.items()},
        "input_geometry": dict(geometry),
        **(dict(extra) if extra else {}),
    }
