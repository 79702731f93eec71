"""The model registry in the database follows the model folders, and never silently replaces weights."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command

from segmentation import services
from segmentation.models import ModelVersion

from .tiny import write_tiny_models

pytestmark = pytest.mark.django_db


def test_sync_registers_every_model_folder_and_a_default_per_task(tiny_models_root: Path) -> None:
    report = services.sync_models(root=tiny_models_root)

    assert sorted(report.created) == ["tiny-lesions@1.0.0", "tiny-organs@1.0.0"]
    organs = ModelVersion.objects.get(name="tiny-organs", version="1.0.0")
    card = json.loads((tiny_models_root / "tiny-organs" / "1.0.0" / "model.json").read_text())
    assert organs.task == "organs"
    assert organs.sha256 == card["sha256"]
    assert organs.structures == card["structures"]
    assert organs.card == card
    assert organs.is_default
    assert report.defaults == {"organs": "tiny-organs@1.0.0", "tumor": "tiny-lesions@1.0.0"}


def test_syncing_again_changes_nothing(tiny_models_root: Path) -> None:
    services.sync_models(root=tiny_models_root)
    before = list(ModelVersion.objects.order_by("pk").values())

    report = services.sync_models(root=tiny_models_root)

    assert report.created == []
    assert sorted(report.unchanged) == ["tiny-lesions@1.0.0", "tiny-organs@1.0.0"]
    assert list(ModelVersion.objects.order_by("pk").values()) == before


def test_new_weights_under_an_old_version_are_refused(tmp_path: Path, tiny_models_root: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(tiny_models_root, root)
    services.sync_models(root=root)
    registered = ModelVersion.objects.get(name="tiny-organs").sha256
    # Retrain in place: other weights, same name and version, a card that matches the new weights.
    folder = root / "tiny-organs" / "1.0.0"
    onnx_bytes = (folder / "model.onnx").read_bytes() + b"\0"
    (folder / "model.onnx").write_bytes(onnx_bytes)
    card = json.loads((folder / "model.json").read_text())
    card["sha256"] = hashlib.sha256(onnx_bytes).hexdigest()
    (folder / "model.json").write_text(json.dumps(card))

    with pytest.raises(services.ModelSyncError, match="new version"):
        services.sync_models(root=root)
    with pytest.raises(CommandError, match="tiny-organs@1.0.0"):
        call_command("sync_models", root=root)

    assert ModelVersion.objects.get(name="tiny-organs").sha256 == registered


def test_a_newer_version_becomes_the_default(tmp_path: Path, tiny_models_root: Path, capsys: Any) -> None:
    root = tmp_path / "models"
    shutil.copytree(tiny_models_root, root)
    call_command("sync_models", root=root)
    write_tiny_models(root, version="1.1.0")

    call_command("sync_models", root=root)

    defaults = {mv.task: mv.label for mv in ModelVersion.objects.filter(is_default=True)}
    assert defaults == {"organs": "tiny-organs@1.1.0", "tumor": "tiny-lesions@1.1.0"}
    assert ModelVersion.objects.filter(name__startswith="tiny-").count() == 4
    assert "registered tiny-organs@1.1.0" in capsys.readouterr().out
