"""The model registry reads self-describing model folders and refuses broken ones."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from inference.registry import ModelCardError, default_model, discover_models, find_model, load_card
from inference.structures import ORGAN_NAMES
from tests.inference.pipeline.tiny_models import write_threshold_model


def test_load_card_reads_every_field(tmp_path: Path) -> None:
    card = write_threshold_model(tmp_path / "m" / "1.0.0", version="1.0.0", spacing_mm=(0.2, 0.3, 0.4))

    assert card.key == "tiny-organs@1.0.0"
    assert card.structures == (0, 4, 12)
    assert card.input_spacing_mm == (0.2, 0.3, 0.4)
    assert card.logits_name == "logits"
    assert card.disagreement_name == "disagreement"
    assert card.onnx_path.is_file()
    assert len(card.sha256) == 64


def test_it_refuses_weights_that_do_not_match_the_recorded_sha256(tmp_path: Path) -> None:
    folder = tmp_path / "m" / "1"
    write_threshold_model(folder)
    with (folder / "model.onnx").open("ab") as handle:
        handle.write(b"\0")

    with pytest.raises(ModelCardError, match="sha256"):
        load_card(folder)


def test_it_refuses_structure_ids_outside_the_canonical_table(tmp_path: Path) -> None:
    folder = tmp_path / "m" / "1"
    write_threshold_model(folder)
    raw = json.loads((folder / "model.json").read_text())
    raw["structures"] = [0, 4, 99]
    (folder / "model.json").write_text(json.dumps(raw))

    with pytest.raises(ModelCardError, match="unknown structure ids \\[99\\]"):
        load_card(folder)


@pytest.mark.parametrize("extension", [-1.0, 50.0, "far", True])
def test_it_refuses_a_cut_face_extension_that_is_no_length(tmp_path: Path, extension: object) -> None:
    folder = tmp_path / "m" / "1"
    assert write_threshold_model(folder).cut_face_extension_mm == 0.0
    raw = json.loads((folder / "model.json").read_text())
    raw["layout"]["extend_cut_faces_mm"] = 2.0
    (folder / "model.json").write_text(json.dumps(raw))
    assert load_card(folder).cut_face_extension_mm == 2.0
    raw["layout"]["extend_cut_faces_mm"] = extension
    (folder / "model.json").write_text(json.dumps(raw))

    with pytest.raises(ModelCardError, match="extend_cut_faces_mm' must be a length in mm from 0 to 20"):
        load_card(folder)


def test_an_edited_card_is_read_afresh_and_a_cached_one_is_still_checked(tmp_path: Path) -> None:
    # Cards are parsed once per content (a worker reads the registry for every scan): an edit of
    # the same length, within one clock tick, must still be seen, and the weights still checked.
    folder = tmp_path / "m" / "1"
    write_threshold_model(folder, version="1.0.0")
    assert load_card(folder).version == "1.0.0"
    text = (folder / "model.json").read_text()
    (folder / "model.json").write_text(text.replace('"1.0.0"', '"1.0.1"'))
    assert load_card(folder).version == "1.0.1"
    (folder / "model.json").write_text(text)
    assert load_card(folder).version == "1.0.0"
    with (folder / "model.onnx").open("ab") as handle:
        handle.write(b"\0")

    with pytest.raises(ModelCardError, match="sha256"):
        load_card(folder)


@pytest.mark.parametrize("text", ["[1, 2]", '"model"', "{not json", "\udcff"])
def test_it_refuses_a_card_that_is_no_json_object(tmp_path: Path, text: str) -> None:
    folder = tmp_path / "m" / "1"
    write_threshold_model(folder)
    (folder / "model.json").write_bytes(text.encode("utf-8", "surrogateescape"))

    with pytest.raises(ModelCardError, match="model.json is not (valid JSON|a JSON object)"):
        load_card(folder)


def test_it_names_missing_fields(tmp_path: Path) -> None:
    folder = tmp_path / "m" / "1"
    write_threshold_model(folder)
    raw = json.loads((folder / "model.json").read_text())
    del raw["input_spacing_mm"]
    (folder / "model.json").write_text(json.dumps(raw))

    with pytest.raises(ModelCardError, match="lacks input_spacing_mm"):
        load_card(folder)


def test_default_model_prefers_the_flagged_card_then_the_newest_version(tmp_path: Path) -> None:
    write_threshold_model(tmp_path / "a" / "1.9.0", name="a", version="1.9.0")
    write_threshold_model(tmp_path / "a" / "1.10.0", name="a", version="1.10.0")
    write_threshold_model(
        tmp_path / "t" / "0.1", name="t", version="0.1", task="tumor", structures=(0, 14), thresholds=(0.5,)
    )

    assert [c.key for c in discover_models(tmp_path)] == ["a@1.9.0", "a@1.10.0", "t@0.1"]
    assert default_model("organs", tmp_path).key == "a@1.10.0"
    assert find_model("a", root=tmp_path).version == "1.10.0"

    write_threshold_model(tmp_path / "b" / "0.5", name="b", version="0.5", default=True)
    assert default_model("organs", tmp_path).key == "b@0.5"


def test_default_model_explains_an_empty_registry(tmp_path: Path) -> None:
    with pytest.raises(ModelCardError, match="no model for the tumor task"):
        default_model("tumor", tmp_path)


def test_a_card_says_where_its_model_looks_for_metastases(tmp_path: Path) -> None:
    organs_only = write_threshold_model(tmp_path / "o" / "1")
    shipped_tumor = find_model("mouse-tumor")
    base = dataclasses.replace(organs_only, structures=(0, 14, 15))

    assert organs_only.metastasis_organs == ()  # no metastasis output
    assert shipped_tumor.metastasis_organs and set(shipped_tumor.metastasis_organs) <= set(ORGAN_NAMES)
    assert base.metastasis_organs == tuple(ORGAN_NAMES)  # the network's own output, everywhere
    lungs_rule = {"detect": [{"structure": 15, "hosts": [2, 3]}]}
    assert dataclasses.replace(base, postprocess=lungs_rule).metastasis_organs == ("lung_left", "lung_right")
    named = {**lungs_rule, "metastases_assessed_in": ["liver"]}
    assert dataclasses.replace(base, postprocess=named).metastasis_organs == ("liver",)


def test_a_card_says_from_what_size_its_model_finds_metastases(tmp_path: Path) -> None:
    # The served lung rule was measured on the held-out test phantoms: lung metastases of 0.5 mm
    # or more 11 of 12 found, smaller 0 of 7 (the model card, "Thick slices").
    assert find_model("mouse-tumor").metastases_found_from_mm == {"lung_left": 0.5, "lung_right": 0.5}
    base = dataclasses.replace(write_threshold_model(tmp_path / "o" / "1"), structures=(0, 14, 15))
    assert base.metastases_found_from_mm == {}  # not measured: nothing is claimed
    unmeasured = {"detect": [{"structure": 15, "hosts": [2, 3]}]}
    assert dataclasses.replace(base, postprocess=unmeasured).metastases_found_from_mm == {}


def test_a_negative_smallest_metastasis_is_refused(tmp_path: Path) -> None:
    folder = tmp_path / "lesions" / "1"
    write_threshold_model(folder, task="tumor", structures=(0, 14, 15))
    card = json.loads((folder / "model.json").read_text())
    rule = {"structure": 15, "hosts": [2], "min_hu": -150, "found_from_mm": -0.5}
    card["postprocess"] = {"detect": [rule]}
    (folder / "model.json").write_text(json.dumps(card))

    with pytest.raises(ModelCardError, match="found_from_mm"):
        load_card(folder)
