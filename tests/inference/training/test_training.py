"""Training smoke run on tiny phantoms, and the export round trip (torch against ONNX Runtime)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from inference.phantom.writer import write_dataset
from inference.pipeline import predict_volume
from inference.registry import load_card
from inference.training.data import load_cases
from inference.training.export import export_model
from inference.training.losses import partial_label_loss
from inference.training.network import UNet3D
from inference.training.tasks import ORGANS
from inference.training.train import TrainConfig, sample_batch, train
from inference.training.warm_start import WarmStartError, load_exported

# Tiny: 1.26 mm phantoms block-averaged by 2 to 2.52 mm, 4 base channels; seconds on one core.
TINY = dataclasses.replace(ORGANS, factor=2, base_channels=4, crop=(16, 16, 24))


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    write_dataset(root, n=2, seed=40, spacing_mm=1.26)
    return root


@pytest.fixture(scope="module")
def tiny_model(tiny_data: Path) -> UNet3D:
    cases = load_cases(tiny_data, TINY)
    return train(TINY, cases, TrainConfig(epochs=1, batch=2, threads=1))


def test_cases_are_cached_with_soft_targets(tiny_data: Path) -> None:
    [case, _] = load_cases(tiny_data, TINY)
    assert (tiny_data / ".cache" / f"organs-f{TINY.factor}" / f"{case.name}.npz").exists()
    assert case.fractions.shape[0] == len(TINY.structures)
    assert case.fractions.shape[1:] == case.ct.shape
    total = case.fractions.astype(int).sum(axis=0) + case.ignore
    assert np.all(np.abs(total - 255) <= len(TINY.structures))
    assert case.spacing_mm == pytest.approx(2.52)


def test_one_epoch_of_training_runs_and_records_its_loss(tiny_data: Path) -> None:
    config = TrainConfig(epochs=1, batch=2, threads=1)
    model = train(TINY, load_cases(tiny_data, TINY), config)
    assert len(config.history) == 1
    assert np.isfinite(config.history[0]["loss"])
    assert not model.training


def test_extra_noise_augmentation_follows_noise_hu(tiny_data: Path) -> None:
    cases = load_cases(tiny_data, TINY)

    def images(noise_hu: float) -> torch.Tensor:
        return sample_batch(cases, TINY, TrainConfig(batch=2, noise_hu=noise_hu), np.random.default_rng(5))[0]

    quiet, noisy = images(0.0), images(300.0)
    assert torch.equal(quiet, images(0.0))
    # Same crops and draws; only the added noise differs (windowed to 0..1 over 2000 HU).
    assert 0.0 < float((noisy - quiet).abs().mean()) < 0.15


def test_unlabelled_structures_are_not_learnt_as_background() -> None:
    # Given a voxel that is really channel 2, annotated on a scan that does not label channel 2
    target = torch.zeros(1, 3, 1, 1, 1)
    target[0, 0] = 1.0  # it shows up as background in that scan's annotation
    weight = torch.ones(1, 1, 1, 1, 1)
    predicts_2 = torch.tensor([0.0, 0.0, 8.0]).reshape(1, 3, 1, 1, 1)
    predicts_bg = torch.tensor([8.0, 0.0, 0.0]).reshape(1, 3, 1, 1, 1)
    unlabelled = torch.tensor([[True, True, False]])
    labelled = torch.tensor([[True, True, True]])
    # When channel 2 is unlabelled, predicting it costs no more than predicting background
    assert partial_label_loss(predicts_2, target, unlabelled, weight) <= (
        partial_label_loss(predicts_bg, target, unlabelled, weight) + 1e-3
    )
    # Whereas a fully labelled scan penalises it
    assert (
        partial_label_loss(predicts_2, target, labelled, weight)
        > partial_label_loss(predicts_bg, target, labelled, weight) + 1.0
    )


def test_onnx_export_matches_torch_on_the_same_input(tiny_model: UNet3D, tmp_path: Path) -> None:
    export_model(
        tiny_model, TINY, tmp_path, version="0.0.1", training={"data": "tiny"}, input_spacing_mm=2.52
    )
    x = np.random.default_rng(0).random((2, 1, 16, 24, 40), dtype=np.float32)
    with torch.no_grad():
        logits, disagreement = tiny_model(torch.from_numpy(x))
    session = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    ort_logits, ort_disagreement = session.run(["logits", "disagreement"], {"ct": x})
    # Written with its up-convolutions as 1x1x1 convolutions and a reshape (``depth_to_space``).
    ops = {node.op_type for node in onnx.load(str(tmp_path / "model.onnx")).graph.node}
    assert "ConvTranspose" not in ops and {"Conv", "Reshape", "Transpose"} <= ops
    assert ort_logits.shape == (2, len(TINY.structures), 16, 24, 40)
    np.testing.assert_allclose(ort_logits, logits.numpy(), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(ort_disagreement, disagreement.numpy(), rtol=1e-3, atol=1e-3)


def test_exported_folder_is_a_model_the_pipeline_runs(
    tiny_model: UNet3D, tiny_data: Path, tmp_path: Path
) -> None:
    export_model(
        tiny_model, TINY, tmp_path, version="0.0.1", training={"data": "tiny"}, input_spacing_mm=2.52
    )
    card = json.loads((tmp_path / "model.json").read_text())
    assert card["input_spacing_mm"] == [2.52, 2.52, 2.52]
    assert card["layout"]["divisible_by"] == 8
    assert "extend_cut_faces_mm" not in card["layout"]  # TINY's organs-like spec: not continued
    loaded = load_card(tmp_path)
    volume = np.full((24, 24, 64), -1000.0, dtype=np.float32)
    # An all-air volume is no mouse scan: taken as HU unchecked.
    out = predict_volume(volume, np.diag([1.26, 1.26, 1.26, 1.0]), [loaded], threads=1, intensity="hu")
    assert out.labels.shape == volume.shape
    assert out.uncertainty.dtype == np.uint8


def test_the_tumor_task_exports_its_cut_face_extension(tiny_model: UNet3D, tmp_path: Path) -> None:
    from dataclasses import replace

    from inference.training.tasks import TUMOR

    assert TUMOR.extend_cut_faces_mm == 2.0
    export_model(
        tiny_model,
        replace(TINY, extend_cut_faces_mm=TUMOR.extend_cut_faces_mm),
        tmp_path,
        version="0.0.1",
        training={"data": "tiny"},
        input_spacing_mm=2.52,
    )
    assert load_card(tmp_path).cut_face_extension_mm == 2.0


def test_a_scan_that_labels_only_some_organs_marks_the_rest_unlabelled(tiny_data: Path) -> None:
    from inference.training.data import labelled_channels

    case = sorted(p for p in tiny_data.iterdir() if p.is_dir() and not p.name.startswith("."))[0]
    assert labelled_channels(case, TINY).all()
    partial = case.parent / "partial"
    partial.mkdir()
    (partial / "meta.json").write_text(json.dumps({"labelled_structures": ["heart", "liver"]}))
    flags = labelled_channels(partial, TINY)
    labelled_ids = {sid for sid, flag in zip(TINY.structures, flags, strict=True) if flag}
    assert labelled_ids == {0, 1, 4}


def test_training_can_start_from_a_committed_onnx_model(
    tiny_model: UNet3D, tiny_data: Path, tmp_path: Path
) -> None:
    # Given an exported model (BatchNorm folded into its convolutions, no checkpoint beside it)
    export_model(
        tiny_model, TINY, tmp_path, version="0.0.1", training={"data": "tiny"}, input_spacing_mm=2.52
    )
    x = torch.from_numpy(np.random.default_rng(1).random((1, 1, 16, 16, 24), dtype=np.float32))
    # When a fresh network is rebuilt from it
    rebuilt = UNet3D(len(TINY.structures), base=TINY.base_channels)
    diff = load_exported(rebuilt, tmp_path / "model.onnx", [x])
    # Then it computes what ONNX Runtime computes, and stays trainable (BatchNorm kept)
    assert diff < 1e-3
    assert rebuilt.training
    assert any(isinstance(m, torch.nn.BatchNorm3d) for m in rebuilt.modules())
    rebuilt.eval()
    with torch.no_grad():
        np.testing.assert_allclose(rebuilt(x)[0].numpy(), tiny_model(x)[0].numpy(), atol=1e-3)
    # And training continues from it
    config = TrainConfig(epochs=1, batch=2, threads=1, lr=1e-3)
    tuned = train(TINY, load_cases(tiny_data, TINY), config, init=tmp_path / "model.onnx")
    assert np.isfinite(config.history[0]["loss"])
    assert not tuned.training


def test_a_model_of_another_width_is_refused_with_the_reason(tiny_model: UNet3D, tmp_path: Path) -> None:
    export_model(
        tiny_model, TINY, tmp_path, version="0.0.1", training={"data": "tiny"}, input_spacing_mm=2.52
    )
    wider = UNet3D(len(TINY.structures), base=TINY.base_channels * 2)
    with pytest.raises(WarmStartError, match="other base channels"):
        load_exported(wider, tmp_path / "model.onnx", [torch.zeros(1, 1, 16, 16, 24)])


def test_make_models_refuses_one_init_for_two_tasks(capsys: pytest.CaptureFixture[str]) -> None:
    from inference.training.make_models import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--init", "inference/models/mouse-organs/1.9.0/model.onnx"])
    assert exit_info.value.code == 2
    assert "--init continues one model" in capsys.readouterr().err


def test_a_warm_start_without_images_is_refused_before_touching_the_network(
    tiny_model: UNet3D, tmp_path: Path
) -> None:
    export_model(
        tiny_model, TINY, tmp_path, version="0.0.1", training={"data": "tiny"}, input_spacing_mm=2.52
    )
    fresh = UNet3D(len(TINY.structures), base=TINY.base_channels)
    before = {k: v.clone() for k, v in fresh.state_dict().items()}
    with pytest.raises(WarmStartError, match="at least one batch"):
        load_exported(fresh, tmp_path / "model.onnx", [])
    assert all(torch.equal(before[k], v) for k, v in fresh.state_dict().items())
