"""The networks see the animal and the air near it (infer.content_box): what they draw does not change."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import inference.pipeline.predict as predict
from inference.phantom import generate_phantom
from inference.pipeline.infer import content_box, cut_faces, run_model
from inference.pipeline.runtime import get_session
from inference.registry import ModelCard, default_model, load_card
from inference.structures import BY_NAME
from tests.inference.pipeline.tiny_models import write_threshold_model


def test_the_box_holds_every_dense_voxel_with_its_margin_on_the_networks_multiple() -> None:
    hu = np.full((64, 64, 100), -1000.0, dtype=np.float32)
    hu[10:20, 5:30, 40:50] = 40.0
    hu[30, 31, 45] = 900.0  # a bright speck apart from the block: kept in view too

    box = content_box(hu, margin=4, multiple=8)

    assert box is not None
    lengths = [s.stop - s.start for s in box]
    assert all(n % 8 == 0 for n in lengths)
    assert box[0].start <= 10 - 4 and box[0].stop >= 31 + 4
    assert box[1].start == 0 and box[1].stop >= 32 + 4  # the margin reaches the array's edge
    assert box[2].start <= 40 - 4 and box[2].stop >= 50 + 4
    assert all(0 <= s.start < s.stop <= n for s, n in zip(box, hu.shape, strict=True))


def test_no_box_for_air_alone_or_for_an_animal_filling_the_view() -> None:
    air = np.full((40, 40, 40), -1000.0, dtype=np.float32)
    filled = air.copy()
    filled[2:38, 2:38, 2:38] = 40.0

    assert content_box(air, margin=4) is None
    assert content_box(filled, margin=4) is None


def test_a_wider_field_of_view_gives_the_same_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without the box the networks' answer moves with the air around the mouse (heart Dice 0.992,
    # spleen 0.981 between these two fields of view); with it they see the same input either way.
    phantom = generate_phantom(9002, spacing_mm=0.42, n_annotators=0)
    cards = [default_model("organs"), default_model("tumor")]
    boxes: list[tuple[slice, ...] | None] = []

    def recorded(*args: object, **kwargs: object) -> tuple[slice, ...] | None:
        boxes.append(content_box(*args, **kwargs))  # type: ignore[arg-type]
        return boxes[-1]

    monkeypatch.setattr(predict, "content_box", recorded)
    labels = {}
    for pad in (30, 60):  # multiples of 3 voxels (1.26 mm): the model grid stays aligned
        widths = ((pad, pad), (pad, pad), (0, 0))
        ct = np.pad(phantom.ct, widths, constant_values=-1000)
        out = predict.predict_volume(ct, phantom.affine, cards, threads=2)
        labels[pad] = out.labels[pad:-pad, pad:-pad]
        assert not out.labels[:pad].any() and not out.labels[-pad:].any()

    assert len(boxes) == 4 and all(box is not None for box in boxes)
    assert np.array_equal(labels[30], labels[60])
    assert (labels[30] == BY_NAME["heart"].id).sum() > 1000


def test_cut_faces_names_the_ends_that_cut_through_the_body() -> None:
    hu = np.full((20, 20, 30), -1000.0, dtype=np.float32)
    hu[5:15, 5:15, 0:20] = 40.0  # a body cut by the caudal end of the field, whole at the cranial
    assert cut_faces(hu, None, 3) == (3, 0)
    assert cut_faces(hu, None, 0) == (0, 0)
    assert cut_faces(hu, (slice(0, 20), slice(0, 20), slice(2, 25)), 3) == (3, 0)
    assert cut_faces(hu[:, :, 1:25], None, 3) == (3, 0)
    hu[:, :, 20:] = -1000.0
    hu[10, 10, 20:] = 40.0  # a tail leaving the field: under 1 % of the end slice
    assert cut_faces(hu, None, 3) == (3, 0)
    assert cut_faces(hu[:, :, 22:], None, 3) == (0, 0)  # only the tail: a slab beyond the body


def _z_sum_model(tmp_path: Path, divisible_by: int) -> ModelCard:
    """A network whose foreground logit is the sum of each voxel and its two z neighbours (zero
    beyond the input), so a test can read what it saw past the last slice."""
    card = write_threshold_model(
        tmp_path, structures=(0, 4), thresholds=(0.5,), disagreement=False, divisible_by=divisible_by
    )
    weight = np.zeros((2, 1, 1, 1, 3), np.float32)
    weight[1] = 1.0
    graph = helper.make_graph(
        [
            helper.make_node(
                "Conv", ["image", "weight"], ["logits"], kernel_shape=[1, 1, 3], pads=[0, 0, 1, 0, 0, 1]
            )
        ],
        "z-sum",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, "X", "Y", "Z"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 2, "X", "Y", "Z"])],
        [numpy_helper.from_array(weight, "weight")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(card.folder / "model.onnx"))
    raw = json.loads((card.folder / "model.json").read_text())
    raw["sha256"] = hashlib.sha256((card.folder / "model.onnx").read_bytes()).hexdigest()
    (card.folder / "model.json").write_text(json.dumps(raw))
    return load_card(card.folder)


@pytest.mark.parametrize("divisible_by", [1, 8])
def test_a_body_cut_by_the_field_runs_on_for_the_network(tmp_path: Path, divisible_by: int) -> None:
    card = _z_sum_model(tmp_path, divisible_by)
    session = get_session(card, threads=1)
    image = np.ones((4, 4, 6), np.float32)
    plain = run_model(session, card, image, pad_value=0.0)
    ran_on = run_model(session, card, image, pad_value=0.0, extend=(0, 1))
    boxed = run_model(
        session,
        card,
        np.pad(image, ((2, 2), (2, 2), (0, 0))),
        pad_value=0.0,
        box=(slice(2, 6), slice(2, 6), slice(0, 6)),
        extend=(1, 1),
    )
    # Past the last slice the plain network sees nothing (or air padding to its multiple);
    # continued, it sees the body go on, and answers for the image's own slices only.
    assert plain.logits.shape == ran_on.logits.shape == (2, 4, 4, 6)
    assert np.allclose(plain.logits[1, :, :, -1], 2.0) and np.allclose(ran_on.logits[1, :, :, -1], 3.0)
    assert np.allclose(ran_on.logits[1, :, :, 0], 2.0)  # not continued below: the first slice as before
    assert np.allclose(boxed.logits[1, 2:6, 2:6], 3.0)
